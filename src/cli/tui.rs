//! The live screen of `linegate demo` and `linegate top`: one row per
//! machine (state, for how long, reason, the current period's OEE and
//! parts, the order in progress) and a footer with the uplink's state and
//! the outbox backlog.
//!
//! Three parts, kept apart: [`gather`] reads a [`Screen`] from the store (as
//! `status` does, read only) and, for the demo, the agent's live board;
//! [`fit_columns`], [`draw`] and [`plain`] turn a `Screen` into cells or
//! lines (pure, tested at 80×24 on ratatui's `TestBackend`); [`run`] owns
//! the terminal: the alternate screen and raw mode on a terminal (q, Esc and
//! Ctrl-C quit; the terminal is restored on every way out), plain lines
//! without escape codes when stdout is not a terminal. It never writes to
//! the store and never stops the agent itself: quitting cancels the token
//! its caller gave.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::crossterm::{cursor, execute};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;
use tokio_util::sync::CancellationToken;

use crate::agent::MachineBoard;
use crate::config::Config;
use crate::machine::MachineState;
use crate::store::{Store, StoreError};
use crate::uplink::status::Link;

/// One machine's row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MachineLine {
    pub machine: String,
    pub state: Option<MachineState>,
    pub since: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    /// OEE of the current period so far.
    pub oee: Option<f64>,
    /// Parts produced in the current period so far.
    pub parts: Option<u64>,
    /// The order on the machine: `id produced/quantity`.
    pub order: Option<String>,
}

/// The footer: the uplink and the backlog.
#[derive(Debug, Clone, PartialEq)]
pub struct Footer {
    pub link: Link,
    /// The broker's URL, when an uplink is configured.
    pub broker: Option<String>,
    pub last_error: Option<String>,
    /// Messages waiting in the outbox.
    pub backlog: u64,
    /// A URL to show (the web console's, when one runs).
    pub url: Option<String>,
}

/// Everything one refresh shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Screen {
    pub title: String,
    pub at: DateTime<Utc>,
    pub machines: Vec<MachineLine>,
    pub footer: Footer,
    /// Why the store could not be read this time, if it could not.
    pub trouble: Option<String>,
}

/// Read one screen: each machine's state and current period from the
/// store's snapshots, the order on it, the uplink's last copied state and
/// the outbox depth. `board` (the demo's live view) overrides the state,
/// since and reason with what the agent knows this instant.
pub fn gather(
    store: &Store,
    config: &Config,
    board: Option<&BTreeMap<String, MachineBoard>>,
    title: &str,
    url: Option<&str>,
) -> Screen {
    let now = Utc::now();
    let ids: Vec<String> = config.machine.iter().map(|m| m.id.clone()).collect();
    let read = store.call_blocking(move |c| {
        let current = crate::machine::history::current(c)?;
        let mut orders = BTreeMap::new();
        for id in ids {
            if let Some(o) = crate::orders::book::current(c, &id)? {
                orders.insert(id, o);
            }
        }
        let uplink = crate::uplink::status::read(c)?;
        let outbox = crate::uplink::outbox::counts(c)?;
        Ok::<_, StoreError>((current, orders, uplink, outbox))
    });
    let mut screen = Screen {
        title: title.to_string(),
        at: now,
        machines: Vec::new(),
        footer: Footer {
            link: Link::of(config.uplink.is_some(), None, now),
            broker: config.uplink.as_ref().map(|u| u.url.clone()),
            last_error: None,
            backlog: 0,
            url: url.map(str::to_string),
        },
        trouble: None,
    };
    let mut known: BTreeMap<String, MachineLine> = config
        .machine
        .iter()
        .map(|m| {
            let line = MachineLine {
                machine: m.id.clone(),
                ..Default::default()
            };
            (m.id.clone(), line)
        })
        .collect();
    match read {
        Ok((current, orders, uplink, outbox)) => {
            for s in current {
                let Some(line) = known.get_mut(&s.machine) else {
                    continue; // a machine no longer in the config
                };
                line.state = Some(s.state);
                line.since = Some(s.since);
                line.reason = s.reason.clone();
                line.oee = s.period.as_ref().and_then(|p| p.kpi.oee);
                line.parts = s.period.as_ref().map(|p| p.counts.produced);
            }
            // Also on a machine the store has no state for yet.
            for (id, o) in orders {
                if let Some(line) = known.get_mut(&id) {
                    line.order = Some(format!(
                        "{} {}/{}",
                        o.order_id, o.progress.produced, o.quantity
                    ));
                }
            }
            screen.footer.link = Link::of(config.uplink.is_some(), uplink.as_ref(), now);
            screen.footer.last_error = uplink.and_then(|u| u.last_error);
            screen.footer.backlog = outbox.depth;
        }
        Err(e) => screen.trouble = Some(format!("cannot read the store: {e}")),
    }
    if let Some(board) = board {
        for (id, b) in board {
            if let (Some(line), Some(state)) = (known.get_mut(id), b.state) {
                line.state = Some(state);
                line.since = b.since;
                line.reason = b.reason.clone();
            }
        }
    }
    screen.machines = known.into_values().collect();
    screen
}

/// A column of the machine table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Machine,
    State,
    For,
    Reason,
    Oee,
    Parts,
    Order,
}

impl Column {
    /// Left to right.
    pub const ALL: [Column; 7] = [
        Column::Machine,
        Column::State,
        Column::For,
        Column::Reason,
        Column::Oee,
        Column::Parts,
        Column::Order,
    ];

    /// Dropped first to last when the terminal is too narrow; machine and
    /// state always stay.
    const DROP_ORDER: [Column; 5] = [
        Column::Order,
        Column::Parts,
        Column::Reason,
        Column::For,
        Column::Oee,
    ];

    pub fn header(self) -> &'static str {
        match self {
            Column::Machine => "machine",
            Column::State => "state",
            Column::For => "for",
            Column::Reason => "reason",
            Column::Oee => "oee",
            Column::Parts => "parts",
            Column::Order => "order",
        }
    }

    fn cell(self, m: &MachineLine, now: DateTime<Utc>) -> String {
        match self {
            Column::Machine => m.machine.clone(),
            Column::State => m
                .state
                .map(|s| s.as_str().to_string())
                .unwrap_or("-".into()),
            Column::For => m
                .since
                .map(|s| duration((now - s).num_seconds()))
                .unwrap_or("-".into()),
            Column::Reason => m.reason.clone().unwrap_or_default(),
            Column::Oee => super::table::percent(m.oee),
            Column::Parts => m.parts.map(|p| p.to_string()).unwrap_or("-".into()),
            Column::Order => m.order.clone().unwrap_or_default(),
        }
    }
}

/// Least width a column needs to be worth showing; reason takes what is left.
const REASON_MIN: u16 = 12;

/// The columns that fit in `width` cells, and each one's width. A column
/// is as wide as its widest cell (its header at least); when they do not
/// all fit, columns go in [`Column::DROP_ORDER`]; the reason is cut to the
/// room left.
pub fn fit_columns(width: u16, widest: &BTreeMap<&'static str, u16>) -> Vec<(Column, u16)> {
    let want = |c: Column| -> u16 {
        let w = widest
            .get(c.header())
            .copied()
            .unwrap_or(0)
            .max(c.header().len() as u16);
        if c == Column::Reason {
            w.min(REASON_MIN)
        } else {
            w
        }
    };
    let mut shown: Vec<Column> = Column::ALL.to_vec();
    let total = |shown: &[Column]| -> u16 {
        let cells: u16 = shown.iter().map(|c| want(*c)).sum();
        cells + shown.len().saturating_sub(1) as u16
    };
    for drop in Column::DROP_ORDER {
        if total(&shown) <= width {
            break;
        }
        shown.retain(|c| *c != drop);
    }
    let spare = width.saturating_sub(total(&shown));
    shown
        .into_iter()
        .map(|c| {
            let w = if c == Column::Reason {
                let full = widest.get("reason").copied().unwrap_or(0);
                (want(c) + spare).min(full.max(REASON_MIN))
            } else {
                want(c)
            };
            (c, w)
        })
        .collect()
}

/// `45s`, `3m05s`, `2h07m`, `3d04h`.
pub fn duration(s: i64) -> String {
    let s = s.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn state_style(s: Option<MachineState>) -> Style {
    let colour = match s {
        Some(MachineState::Running) => Color::Green,
        Some(MachineState::Idle) => Color::Yellow,
        Some(MachineState::Down) => Color::Red,
        Some(MachineState::Setup) => Color::Cyan,
        Some(MachineState::PlannedStop) => Color::Blue,
        Some(MachineState::Offline) => Color::Magenta,
        None => Color::DarkGray,
    };
    Style::default().fg(colour)
}

fn link_style(link: Link) -> Style {
    match link {
        Link::Connected => Style::default().fg(Color::Green),
        Link::NotConfigured => Style::default().fg(Color::DarkGray),
        _ => Style::default().fg(Color::Red),
    }
}

/// The footer's lines: the uplink (and its last error), the backlog, the URL.
fn footer_lines(f: &Footer) -> (String, String) {
    let uplink = match &f.broker {
        Some(b) => format!("uplink {b}: {}", f.link.as_str()),
        None => format!("uplink: {}", f.link.as_str()),
    };
    let uplink = match (&f.last_error, f.link) {
        (Some(e), Link::NotConnected | Link::Stale | Link::Stopped) => {
            format!("{uplink}; last error: {e}")
        }
        _ => uplink,
    };
    let mut second = format!("backlog: {} message(s) in the outbox", f.backlog);
    if let Some(url) = &f.url {
        second.push_str(&format!(" · {url}"));
    }
    (uplink, second)
}

fn widest(screen: &Screen) -> BTreeMap<&'static str, u16> {
    let mut w = BTreeMap::new();
    for c in Column::ALL {
        let most = screen
            .machines
            .iter()
            .map(|m| c.cell(m, screen.at).chars().count() as u16)
            .max()
            .unwrap_or(0);
        w.insert(c.header(), most);
    }
    w
}

/// Draw `screen` into one frame: title, machine table, the uplink (two
/// lines, for its last error), the backlog.
/// Machines beyond the rows there are are counted in the title.
pub fn draw(frame: &mut Frame, screen: &Screen) {
    let area = frame.area();
    let [title_area, table_area, uplink_area, backlog_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(2),
        Constraint::Length(1),
    ])
    .areas(area);
    let room = table_area.height.saturating_sub(1) as usize;
    let mut title = format!("{} · {}", screen.title, screen.at.format("%H:%M:%S UTC"));
    if screen.machines.len() > room {
        title.push_str(&format!(
            " · {} of {} machines shown",
            room,
            screen.machines.len()
        ));
    }
    title.push_str(" · q quits");
    frame.render_widget(
        Paragraph::new(Line::from(Span::styled(
            title,
            Style::default().add_modifier(Modifier::BOLD),
        ))),
        title_area,
    );
    let columns = fit_columns(area.width, &widest(screen));
    let header = Row::new(columns.iter().map(|(c, _)| Cell::from(c.header())))
        .style(Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let rows = screen.machines.iter().take(room).map(|m| {
        Row::new(columns.iter().map(|(c, _)| {
            let text = c.cell(m, screen.at);
            match c {
                Column::State => Cell::from(text).style(state_style(m.state)),
                _ => Cell::from(text),
            }
        }))
    });
    let widths: Vec<Constraint> = columns
        .iter()
        .map(|(_, w)| Constraint::Length(*w))
        .collect();
    frame.render_widget(
        Table::new(rows, widths).header(header).column_spacing(1),
        table_area,
    );
    let (uplink, second) = footer_lines(&screen.footer);
    let second = match &screen.trouble {
        Some(t) => format!("{second} · {t}"),
        None => second,
    };
    // The uplink's line wraps onto a second one for its last error.
    frame.render_widget(
        Paragraph::new(Line::from(Span::styled(
            uplink,
            link_style(screen.footer.link),
        )))
        .wrap(Wrap { trim: true }),
        uplink_area,
    );
    frame.render_widget(Paragraph::new(Line::from(second)), backlog_area);
}

/// `screen` as plain lines (no escape codes): the title with the time,
/// every column of every machine, the footer.
pub fn plain(screen: &Screen) -> String {
    let header: Vec<&str> = Column::ALL.iter().map(|c| c.header()).collect();
    let rows: Vec<Vec<String>> = screen
        .machines
        .iter()
        .map(|m| Column::ALL.iter().map(|c| c.cell(m, screen.at)).collect())
        .collect();
    let (uplink, second) = footer_lines(&screen.footer);
    let mut out = format!(
        "{} at {}\n",
        screen.title,
        screen.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    out.push_str(&super::table::render(&header, &rows));
    out.push_str(&uplink);
    out.push('\n');
    out.push_str(&second);
    out.push('\n');
    if let Some(t) = &screen.trouble {
        out.push_str(t);
        out.push('\n');
    }
    out
}

/// Show screens from `next` until `stop` is cancelled or the user quits
/// (which cancels `stop`). On a terminal: the alternate screen, refreshed
/// every `every`, restored on the way out. Otherwise: a plain block every
/// `plain_every`, the last one when stopped; a write that fails (a closed
/// pipe) is the error returned, after `stop` is cancelled.
pub fn run(
    mut next: impl FnMut() -> Screen,
    stop: &CancellationToken,
    every: Duration,
    plain_every: Duration,
) -> std::io::Result<()> {
    let result = if std::io::stdout().is_terminal() {
        run_terminal(&mut next, stop, every)
    } else {
        run_plain(&mut next, stop, plain_every)
    };
    stop.cancel();
    result
}

fn run_plain(
    next: &mut impl FnMut() -> Screen,
    stop: &CancellationToken,
    every: Duration,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut first = true;
    loop {
        let stopping = stop.is_cancelled();
        if !first {
            out.write_all(b"\n")?;
        }
        first = false;
        out.write_all(plain(&next()).as_bytes())?;
        out.flush()?;
        if stopping {
            return Ok(());
        }
        let due = Instant::now() + every;
        while Instant::now() < due && !stop.is_cancelled() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Raw mode and the alternate screen while it lives; the terminal as it was
/// once it is dropped (also when unwinding).
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> std::io::Result<TerminalGuard> {
        enable_raw_mode()?;
        let guard = TerminalGuard;
        execute!(std::io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        // A panic (even with panic = "abort") leaves a usable terminal.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        Ok(guard)
    }
}

fn restore_terminal() {
    let _ = execute!(std::io::stdout(), LeaveAlternateScreen, cursor::Show);
    let _ = disable_raw_mode();
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn run_terminal(
    next: &mut impl FnMut() -> Screen,
    stop: &CancellationToken,
    every: Duration,
) -> std::io::Result<()> {
    let _guard = TerminalGuard::enter()?;
    let backend = ratatui::backend::CrosstermBackend::new(std::io::stdout());
    let mut terminal = ratatui::Terminal::new(backend)?;
    terminal.clear()?;
    let mut screen = Arc::new(next());
    let mut refresh_at = Instant::now();
    while !stop.is_cancelled() {
        if Instant::now() >= refresh_at {
            screen = Arc::new(next());
            refresh_at = Instant::now() + every;
            terminal.draw(|f| draw(f, &screen))?;
        }
        // Short polls, so a stop from elsewhere (a signal) is seen quickly.
        if !event::poll(Duration::from_millis(100))? {
            continue;
        }
        match event::read()? {
            Event::Key(k) if k.kind != KeyEventKind::Release => {
                let ctrl_c =
                    k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c');
                if ctrl_c || matches!(k.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) {
                    break;
                }
            }
            Event::Resize(..) => {
                terminal.draw(|f| draw(f, &screen))?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn line(
        id: &str,
        state: MachineState,
        reason: Option<&str>,
        order: Option<&str>,
    ) -> MachineLine {
        MachineLine {
            machine: id.into(),
            state: Some(state),
            since: Some(t("2026-03-02T05:57:55Z")),
            reason: reason.map(str::to_string),
            oee: Some(0.634),
            parts: Some(118),
            order: order.map(str::to_string),
        }
    }

    fn screen(machines: usize) -> Screen {
        let states = MachineState::ALL;
        Screen {
            title: "linegate top gw-line3".into(),
            at: t("2026-03-02T06:00:00Z"),
            machines: (0..machines)
                .map(|i| {
                    line(
                        &format!("press{:02}", i + 1),
                        states[i % states.len()],
                        Some("alarm 17: spindle overload on the main drive"),
                        Some("WO-2026-0042 118/500"),
                    )
                })
                .collect(),
            footer: Footer {
                link: Link::NotConnected,
                broker: Some("mqtts://central.example:8883".into()),
                last_error: Some("broker central.example:8883: connection refused".into()),
                backlog: 1234,
                url: Some("http://127.0.0.1:8080/".into()),
            },
            trouble: None,
        }
    }

    fn render(screen: &Screen, w: u16, h: u16) -> Vec<String> {
        let mut terminal = ratatui::Terminal::new(TestBackend::new(w, h)).expect("a test terminal");
        terminal.draw(|f| draw(f, screen)).expect("draws");
        let buffer = terminal.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buffer[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    #[test]
    fn durations_read_in_the_two_largest_units() {
        assert_eq!(duration(-3), "0s");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(185), "3m05s");
        assert_eq!(duration(2 * 3600 + 7 * 60 + 9), "2h07m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3d04h");
    }

    #[test]
    fn at_80_columns_every_column_shows_and_the_reason_is_cut() {
        let s = screen(4);
        let rows = render(&s, 80, 24);
        let header = &rows[1];
        for h in ["machine", "state", "for", "reason", "oee", "parts", "order"] {
            assert!(header.contains(h), "{h} in {header:?}");
        }
        let first = &rows[2];
        assert!(first.starts_with("press01 running"), "{first:?}");
        assert!(
            first.contains("2m05s") && first.contains("63.4%"),
            "{first:?}"
        );
        assert!(first.contains("WO-2026-0042 118/500"), "{first:?}");
        assert!(first.contains("alarm 17"), "{first:?}");
        assert!(
            !first.contains("main drive"),
            "the reason is cut: {first:?}"
        );
        // The footer: the uplink and its last error (on two lines), the backlog, the URL.
        assert!(
            rows[21].starts_with("uplink mqtts://central.example:8883: not connected; last error"),
            "{:?}",
            rows[21]
        );
        assert!(rows[22].contains("connection refused"), "{:?}", rows[22]);
        assert!(
            rows[23].contains("backlog: 1234 message(s)")
                && rows[23].contains("http://127.0.0.1:8080/"),
            "{:?}",
            rows[23]
        );
    }

    #[test]
    fn a_narrow_terminal_drops_order_then_parts_then_reason_but_keeps_the_state() {
        let widths = |w: u16| -> Vec<Column> {
            fit_columns(w, &widest(&screen(3)))
                .into_iter()
                .map(|(c, _)| c)
                .collect()
        };
        use Column::*;
        assert_eq!(
            widths(80),
            vec![Machine, State, For, Reason, Oee, Parts, Order]
        );
        assert_eq!(widths(60), vec![Machine, State, For, Reason, Oee, Parts]);
        assert_eq!(widths(45), vec![Machine, State, For, Reason, Oee]);
        assert_eq!(widths(39), vec![Machine, State, For, Oee]);
        assert_eq!(widths(26), vec![Machine, State, Oee]);
        assert_eq!(widths(20), vec![Machine, State]);
        // What is chosen fits.
        for w in [15u16, 20, 26, 39, 45, 60, 80, 120] {
            let cols = fit_columns(w, &widest(&screen(3)));
            let used: u16 = cols.iter().map(|(_, w)| w).sum::<u16>() + cols.len() as u16 - 1;
            assert!(used <= w, "{w}: {cols:?}");
        }
        let rows = render(&screen(3), 40, 24);
        assert!(
            rows[1].contains("oee") && !rows[1].contains("order"),
            "{:?}",
            rows[1]
        );
        assert!(
            rows[2].contains("planned_stop") || rows[2].contains("running"),
            "{:?}",
            rows[2]
        );
    }

    #[test]
    fn more_machines_than_rows_are_counted_in_the_title() {
        let rows = render(&screen(30), 80, 24);
        // 24 rows: title, header, 19 machines, 3 footer lines.
        assert!(rows[0].contains("19 of 30 machines shown"), "{:?}", rows[0]);
        assert!(rows[20].starts_with("press19"), "{:?}", rows[20]);
        assert!(rows[21].starts_with("uplink"), "{:?}", rows[21]);
    }

    #[test]
    fn plain_lines_carry_every_column_and_no_escape_codes() {
        let text = plain(&screen(2));
        assert!(!text.contains('\x1b'), "{text:?}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "linegate top gw-line3 at 2026-03-02T06:00:00Z");
        assert!(lines[1].starts_with("machine  state"), "{text}");
        assert!(
            lines[3].contains("alarm 17: spindle overload on the main drive"),
            "{text}"
        );
        assert!(
            lines[5].starts_with("uplink mqtts://central.example:8883: not connected"),
            "{text}"
        );
        assert_eq!(
            lines[6],
            "backlog: 1234 message(s) in the outbox · http://127.0.0.1:8080/"
        );
    }

    #[test]
    fn a_connected_uplink_does_not_repeat_an_old_error() {
        let mut s = screen(1);
        s.footer.link = Link::Connected;
        s.footer.url = None;
        let (uplink, second) = footer_lines(&s.footer);
        assert_eq!(uplink, "uplink mqtts://central.example:8883: connected");
        assert_eq!(second, "backlog: 1234 message(s) in the outbox");
    }
}
