//! One function per command. Each loads what it needs, calls the library and
//! prints; none of them holds logic beyond formatting.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use super::{
    table, Cli, Command, DemoArgs, OrdersArgs, ReadArgs, ReportArgs, SimulateArgs, StatusArgs,
    TopArgs,
};
use super::{AnswerArgs, OrderAction, OrderArgs};
use crate::agent::{self, Board, RunOptions};
use crate::config::Config;
use crate::store::Store;

/// `println!` / `print!` for command output. When whoever reads our stdout
/// has gone (`linegate status | head`), the command ends quietly with the
/// status a pipe-killed Unix tool has (141), instead of panicking.
macro_rules! say {
    (@write $w:ident, $($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let result = $w!(out, $($arg)*).and_then(|()| out.flush());
        if let Err(e) = result {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(141);
            }
            return Err(anyhow::Error::from(e).context("cannot write to stdout"));
        }
    }};
    (line $($arg:tt)*) => { say!(@write writeln, $($arg)*) };
    (text $($arg:tt)*) => { say!(@write write, $($arg)*) };
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(c) => {
            share_one_malloc_arena();
            crate::systemd::init_logging(cli.verbose);
            let path = Config::locate(c.config.as_deref());
            let loaded = Config::load_with_warnings(&path)?;
            for w in &loaded.warnings {
                tracing::warn!("{}", w.in_file(&path));
            }
            let config = loaded.config;
            runtime()?.block_on(async {
                let shutdown = CancellationToken::new();
                agent::cancel_on_signals(shutdown.clone());
                agent::run(
                    config,
                    RunOptions {
                        config_path: Some(path),
                        board: None,
                        alone_in_process: true,
                    },
                    shutdown,
                )
                .await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo(args, cli.verbose),
        Command::Simulate(args) => {
            crate::systemd::init_logging(cli.verbose);
            simulate(args)
        }
        Command::CheckConfig(c) => check_config(&Config::locate(c.config.as_deref())),
        Command::Read(args) => {
            crate::systemd::init_logging(cli.verbose);
            read(args)
        }
        Command::Status(args) => status(args),
        Command::Report(args) => report(args),
        Command::Orders(args) => orders(args),
        Command::Order(args) => order(args),
        Command::Completions(args) => super::docs::completions(&args),
        Command::Man(args) => super::docs::man(&args),
        Command::Top(args) => top(args),
    }
}

/// glibc gives every thread that allocates an arena of its own, each
/// keeping freed memory for itself; the agent's threads (async work, the
/// store, the odd DNS lookup) are few and not busy, so they share one.
/// Call before any thread starts.
fn share_one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of glibc's malloc, and no other
    // thread exists yet to race with it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // One thread does all the async work (the store has its own thread).
    // The agent mostly waits: at 50 machines a multi-thread runtime spent
    // its time waking and parking workers, and two more threads cost their
    // stacks and malloc arenas (BENCHMARKS.md, "Polling").
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn check_config(path: &Path) -> Result<ExitCode> {
    let loaded = Config::load_with_warnings(path)?;
    for w in &loaded.warnings {
        eprintln!("{}", w.labelled_in_file(path, "warning: "));
    }
    let config = loaded.config;
    // The files the uplink will read (CA, certificate, key, password): what
    // passes here is what systemd starts, so a missing one is caught now.
    if let Some(u) = &config.uplink {
        let problems = crate::uplink::check(u);
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
            bail!(
                "{}: {} problem(s):\n{}",
                path.display(),
                problems.len(),
                list.join("\n")
            );
        }
        for w in crate::config::uplink_warnings(u) {
            eprintln!("{}: warning: {w}", path.display());
        }
    }
    say!(line "{}: ok", path.display());
    say!(line
        "gateway {} at site {}, {} bus(es), {} machine(s), topics under {}",
        config.gateway.id,
        config.gateway.site,
        config.bus.len(),
        config.machine.len(),
        config.topic_prefix()
    );
    say!(line "read plan:");
    for m in &config.machine {
        let Some(bus) = config.bus(&m.bus) else {
            continue;
        };
        let plan = crate::source::modbus::plan::plan_reads(m, bus);
        say!(line
            "  {}",
            crate::source::modbus::plan::describe_plan(m, &plan).replace('\n', "\n  ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn read(args: ReadArgs) -> Result<ExitCode> {
    let path = Config::locate(args.config.config.as_deref());
    let config = Config::load(&path)?;
    if let Some(id) = &args.machine {
        if config.machine(id).is_none() {
            let known: Vec<&str> = config.machine.iter().map(|m| m.id.as_str()).collect();
            bail!(
                "no machine {id:?} in {} (machines: {})",
                path.display(),
                known.join(", ")
            );
        }
    }
    let readouts = runtime()?.block_on(crate::source::modbus::read_once(
        &config,
        args.machine.as_deref(),
    ))?;
    let failed = readouts.values().any(|r| r.failed());
    say!(line
        "{}",
        serde_json::to_string_pretty(&crate::source::modbus::readouts_to_json(&readouts))?
    );
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn open_store(config_arg: Option<&Path>) -> Result<(Config, Store)> {
    let path = Config::locate(config_arg);
    let config = Config::load(&path)?;
    // Only reads: never creates a folder or a store where there is none.
    let store = Store::open_existing(&config.gateway.data_dir)
        .with_context(|| format!("opening the store of {}", path.display()))?;
    Ok((config, store))
}

fn status(args: StatusArgs) -> Result<ExitCode> {
    let (config, store) = open_store(args.config.config.as_deref())?;
    let rows = store.call_blocking(|c| crate::machine::history::current(c))?;
    let buses = store.call_blocking(|c| crate::store::bus_stats::read_all(c))?;
    if args.buses {
        if args.json {
            let buses: Vec<serde_json::Value> = buses.iter().map(bus_json).collect();
            let all = serde_json::json!({ "buses": buses });
            say!(line "{}", serde_json::to_string_pretty(&all)?);
        } else {
            for bus in &buses {
                say!(line "{}", crate::store::bus_stats::describe(bus));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        let rows: Vec<serde_json::Value> = rows.iter().map(status_json).collect();
        say!(line "{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let presets = preset_lines(&rows);
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.machine.clone(),
                r.state.to_string(),
                r.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                r.reason.clone().unwrap_or_default(),
                r.period
                    .as_ref()
                    .map(|p| format!("{:.0}", p.seconds.running))
                    .unwrap_or_default(),
                r.period
                    .as_ref()
                    .map(|p| p.counts.produced.to_string())
                    .unwrap_or_default(),
                table::percent(r.period.as_ref().and_then(|p| p.kpi.availability)),
                table::percent(r.period.as_ref().and_then(|p| p.kpi.utilisation_efficiency)),
                r.saved_at
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    say!(text
        "{}",
        table::render(
            &[
                "machine",
                "state",
                "since",
                "reason",
                "period run s",
                "parts",
                "availability",
                "utilisation",
                "saved"
            ],
            &rows
        )
    );
    if !presets.is_empty() {
        say!(line "");
    }
    for line in &presets {
        say!(line "{line}");
    }
    if !buses.is_empty() {
        say!(line "");
    }
    for bus in &buses {
        say!(line "{}", crate::store::bus_stats::describe(bus));
    }
    let uplink = store.call_blocking(|c| crate::uplink::status::read(c))?;
    say!(line
        "\n{}",
        crate::uplink::status::describe(
            config.uplink.as_ref().map(|u| u.url.as_str()),
            uplink.as_ref(),
            chrono::Utc::now()
        )
    );
    let outbox = store.call_blocking(|c| crate::uplink::outbox::counts(c))?;
    say!(line
        "outbox: {} message(s) waiting ({} KB of {} KB), {} telemetry message(s) dropped when full",
        outbox.depth,
        outbox.bytes / 1024,
        outbox.max_bytes / 1024,
        outbox.dropped
    );
    let lost = store.call_blocking(|c| crate::store::health::lost_events(c))?;
    let dir = &config.gateway.data_dir;
    let reserve = std::fs::metadata(dir.join(crate::store::health::RESERVE_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    say!(line
        "store: {}; {} state change(s)/period(s) lost to a full disk",
        crate::store::health::describe_disk(
            config.store.reserve_mb,
            reserve,
            crate::store::health::free_bytes(dir)
        ),
        lost
    );
    Ok(ExitCode::SUCCESS)
}

/// One line per counting signal that was preset (counted as zero).
fn preset_lines(rows: &[crate::machine::history::MachineStatus]) -> Vec<String> {
    rows.iter()
        .flat_map(|r| {
            r.counter_presets.iter().map(move |p| {
                format!(
                    "{}: counter {} preset {} time(s), last at {}: {} -> {} (counted as zero)",
                    r.machine,
                    p.signal,
                    p.count,
                    p.last.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    p.last.from,
                    p.last.to
                )
            })
        })
        .collect()
}

/// One machine of `status --json`: its state, and the current period so far
/// in the contract's utilisation shape (`period` {kind, start, end},
/// `seconds`, `counts`, `kpi`; `end` is how far it is attributed).
fn status_json(s: &crate::machine::history::MachineStatus) -> serde_json::Value {
    let ts = |t: chrono::DateTime<chrono::Utc>| crate::machine::history::ts(t);
    let mut row = serde_json::json!({
        "machine": s.machine,
        "state": s.state,
        "since": ts(s.since),
        "reason": s.reason,
        "saved_at": s.saved_at.map(ts),
        "counter_presets": s.counter_presets.iter().map(|p| serde_json::json!({
            "signal": p.signal,
            "count": p.count,
            "last": {"at": ts(p.last.at), "from": p.last.from, "to": p.last.to},
        })).collect::<Vec<_>>(),
    });
    if let (Some(p), Some(obj)) = (&s.period, row.as_object_mut()) {
        let body = crate::uplink::message::period_message(p).body;
        for key in ["period", "seconds", "counts", "kpi"] {
            if let Some(v) = body.get(key) {
                obj.insert(key.into(), v.clone());
            }
        }
    }
    row
}

/// One bus of `status --buses --json`: the last counters the agent copied
/// (`bus`, `transport`, `since`, `at`, `counters` by name).
fn bus_json(b: &crate::store::bus_stats::BusCounts) -> serde_json::Value {
    let ts = |t: chrono::DateTime<chrono::Utc>| crate::machine::history::ts(t);
    serde_json::json!({
        "bus": b.bus,
        "transport": b.transport,
        "since": ts(b.since),
        "at": ts(b.at),
        "counters": b.counters,
    })
}

fn parse_time(s: Option<&str>, flag: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    s.map(|s| {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&chrono::Utc))
            .with_context(|| {
                format!("{flag} {s:?} is not an RFC 3339 time like 2026-11-26T06:00:00Z")
            })
    })
    .transpose()
}

fn report(args: ReportArgs) -> Result<ExitCode> {
    let path = Config::locate(args.config.config.as_deref());
    let (config, store) = open_store(args.config.config.as_deref())?;
    let from = parse_time(args.from.as_deref(), "--from")?;
    let to = parse_time(args.to.as_deref(), "--to")?;
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            bail!(
                "--from {} is after --to {}: no period can end after the first and start before the second",
                f.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
    }
    // Times in the site's zone unless --utc (the JSON stays in UTC, as the contract).
    let zone: chrono_tz::Tz = if args.utc {
        chrono_tz::UTC
    } else {
        config.gateway.timezone.parse().map_err(|e| {
            anyhow::anyhow!(
                "gateway.timezone {:?} of {} is not a time zone: {e}",
                config.gateway.timezone,
                path.display()
            )
        })?
    };
    let machine = args.machine.clone();
    let periods = store.call_blocking(move |c| {
        crate::machine::history::periods(c, machine.as_deref(), from, to)
    })?;
    if let Some(id) = &args.machine {
        // A machine no longer configured still has its history in the store.
        let stored = !periods.is_empty() || {
            let id = id.clone();
            !store
                .call_blocking(move |c| crate::machine::history::periods(c, Some(&id), None, None))?
                .is_empty()
        };
        if config.machine(id).is_none() && !stored {
            let known: Vec<&str> = config.machine.iter().map(|m| m.id.as_str()).collect();
            bail!(
                "no machine {id:?} in {} nor in its store (machines: {})",
                path.display(),
                known.join(", ")
            );
        }
    }
    if args.json {
        for p in &periods {
            say!(line
                "{}",
                serde_json::to_string(&crate::uplink::message::period_message(p).body)?
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let local = |t: chrono::DateTime<chrono::Utc>| {
        t.with_timezone(&zone)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let rows: Vec<Vec<String>> = periods
        .iter()
        .map(|p| {
            vec![
                p.machine.clone(),
                match &p.kind {
                    crate::machine::PeriodKind::Interval => "interval".into(),
                    crate::machine::PeriodKind::Shift { name } => format!("shift {name}"),
                },
                local(p.start),
                local(p.end),
                format!("{:.0}", p.seconds.running),
                format!("{:.0}", p.seconds.setup),
                format!("{:.0}", p.seconds.idle),
                format!("{:.0}", p.seconds.down),
                format!("{:.0}", p.seconds.planned_stop),
                format!("{:.0}", p.seconds.offline),
                p.counts.produced.to_string(),
                table::percent(p.kpi.availability),
                table::percent(p.kpi.oee),
            ]
        })
        .collect();
    say!(line "times in {}", zone.name());
    say!(text
        "{}",
        table::render(
            &[
                "machine",
                "period",
                "start",
                "end",
                "run s",
                "setup s",
                "idle s",
                "down s",
                "planned s",
                "offline s",
                "parts",
                "avail",
                "oee"
            ],
            &rows
        )
    );
    scorecard_section(&config, &store, args.machine.as_deref(), from, to)?;
    Ok(ExitCode::SUCCESS)
}

/// `linegate report`'s delivery scorecard: every shift and day of the range
/// (default the last 7 days) with an order due, per machine and for the
/// gateway, from the order book as it is now (open periods included).
fn scorecard_section(
    config: &Config,
    store: &Store,
    machine: Option<&str>,
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<()> {
    use crate::orders::scorecard::{PeriodKind, Scope};
    let now = chrono::Utc::now();
    let to = to.unwrap_or(now);
    let from = from.unwrap_or(to - chrono::Duration::days(7));
    let calendar = crate::machine::engine::calendar(config)?;
    let tz: chrono_tz::Tz = config.gateway.timezone.parse().unwrap_or(chrono_tz::UTC);
    let cards = store.call_blocking(move |c| {
        crate::orders::scorecard_task::cards_between(c, calendar.as_deref(), tz, from, to)
    })?;
    let rows: Vec<Vec<String>> = cards
        .iter()
        .filter(|c| c.tally.due > 0)
        .filter(|c| match (&c.scope, machine) {
            (Scope::Machine(m), Some(want)) => m == want,
            (Scope::Gateway, Some(_)) => false,
            (_, None) => true,
        })
        .map(|c| {
            let t = &c.tally;
            vec![
                match &c.scope {
                    Scope::Machine(m) => m.clone(),
                    Scope::Gateway => "(gateway)".into(),
                },
                match &c.period.kind {
                    PeriodKind::Shift { name } => format!("shift {name}"),
                    PeriodKind::Day { date } => format!("day {date}"),
                },
                c.period.start.to_rfc3339(),
                if c.period.end <= now {
                    "closed"
                } else {
                    "open"
                }
                .into(),
                t.due.to_string(),
                t.completed_on_time.to_string(),
                t.completed_late.to_string(),
                t.not_completed().to_string(),
                t.in_full.to_string(),
                t.on_time_in_full.to_string(),
                table::percent(t.on_time_in_full_rate()),
                t.mean_lateness_s()
                    .map(|s| format!("{:.0}", s / 60.0))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    say!(line "\ndelivery scorecard (orders by due):");
    if rows.is_empty() {
        say!(line "no order was due in {} .. {}", from.to_rfc3339(), to.to_rfc3339());
        return Ok(());
    }
    say!(text
        "{}",
        table::render(
            &[
                "scope",
                "period",
                "start",
                "status",
                "due",
                "on time",
                "late",
                "open",
                "in full",
                "otif",
                "otif %",
                "mean late min"
            ],
            &rows
        )
    );
    Ok(())
}

fn orders(args: OrdersArgs) -> Result<ExitCode> {
    let (_config, store) = open_store(args.config.config.as_deref())?;
    let machine = args.machine.clone();
    let rows = store.call_blocking(move |c| crate::orders::book::list(c, machine.as_deref()))?;
    // The forecast last published for each open order (none for final ones).
    let keys: Vec<(String, u32, bool)> = rows
        .iter()
        .map(|o| (o.order_id.clone(), o.revision, o.state.is_final()))
        .collect();
    let forecasts = store.call_blocking(move |c| {
        keys.iter()
            .map(|(id, rev, fin)| {
                if *fin {
                    Ok(None)
                } else {
                    crate::orders::outlook::forecast_of(c, id, *rev)
                }
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    if args.json {
        let mut out = Vec::with_capacity(rows.len());
        for (o, f) in rows.iter().zip(&forecasts) {
            let mut v = order_json(o)?;
            if let (serde_json::Value::Object(m), Some((end, at_risk))) = (&mut v, f) {
                m.insert("forecast_end".into(), serde_json::json!(end));
                m.insert("at_risk".into(), serde_json::json!(at_risk));
            }
            out.push(v);
        }
        say!(line "{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let states: BTreeMap<String, crate::machine::MachineState> = store
        .call_blocking(|c| crate::machine::history::current(c))?
        .into_iter()
        .map(|s| (s.machine, s.state))
        .collect();
    let waits = waits_for_column(&rows, &states);
    let rows: Vec<Vec<String>> = rows
        .iter()
        .zip(&forecasts)
        .zip(waits)
        .map(|((o, f), waits)| {
            vec![
                o.order_id.clone(),
                o.revision.to_string(),
                o.machine.clone(),
                o.product.clone(),
                format!("{}/{}", o.progress.produced, o.quantity),
                o.state.to_string(),
                match f {
                    Some((Some(end), _)) => crate::orders::book::ts(*end),
                    Some((None, _)) => "unknown".into(),
                    None => String::new(),
                },
                match f {
                    Some((_, true)) => "AT RISK".into(),
                    _ => String::new(),
                },
                o.reason.clone().unwrap_or_default(),
                waits,
            ]
        })
        .collect();
    say!(text
        "{}",
        table::render(
            &["order", "rev", "machine", "product", "produced", "state", "forecast end", "risk", "reason", "waits for"],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// `linegate order send|hold|resume|cancel`: publish, wait, print the answers.
fn order(args: OrderArgs) -> Result<ExitCode> {
    use crate::orders::command::CommandKind;
    use crate::orders::planner::{self, Expect};
    let (config_arg, payload, expect, wait) = match args.action {
        OrderAction::Send(a) => {
            let file = a.file.display().to_string();
            let payload = std::fs::read(&a.file).with_context(|| format!("cannot read {file}"))?;
            let message: serde_json::Value = serde_json::from_slice(&payload)
                .with_context(|| format!("{file} is not JSON; nothing was sent"))?;
            let expect = Expect::of_message(&message)
                .map_err(|e| anyhow::anyhow!("{file}: {e}; nothing was sent"))?;
            (a.config, payload, expect, a.wait)
        }
        OrderAction::Hold(a) => command_message(a, CommandKind::Hold),
        OrderAction::Resume(a) => command_message(a, CommandKind::Resume),
        OrderAction::Cancel(a) => command_message(a, CommandKind::Cancel),
    };
    let path = Config::locate(config_arg.config.as_deref());
    let config = Config::load(&path)?;
    let timeout = Duration::from_secs(wait.timeout_s.max(1));
    let outcome = runtime()?.block_on(planner::send(
        &config,
        &path.display().to_string(),
        payload,
        expect,
        timeout,
    ))?;
    for answer in &outcome.waiting.answers {
        if wait.json {
            say!(line "{answer}");
        } else {
            say!(line "{}", planner::describe(answer));
        }
    }
    Ok(if outcome.waiting.rejected() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn command_message(
    a: super::OrderIdArgs,
    kind: crate::orders::command::CommandKind,
) -> (
    super::ConfigArg,
    Vec<u8>,
    crate::orders::planner::Expect,
    AnswerArgs,
) {
    let payload = serde_json::json!({"type": kind.as_str(), "order_id": a.order_id}).to_string();
    let expect = crate::orders::planner::Expect::Command {
        kind,
        order_id: a.order_id,
    };
    (a.config, payload.into_bytes(), expect, a.wait)
}

/// `linegate orders`' "waits for" column: rows are in release order per
/// machine (`book::list`), so the queued rows before one are those ahead.
fn waits_for_column(
    rows: &[crate::orders::book::OrderRow],
    states: &BTreeMap<String, crate::machine::MachineState>,
) -> Vec<String> {
    use crate::orders::book::OrderState;
    rows.iter()
        .enumerate()
        .map(|(i, o)| {
            let same = |r: &&crate::orders::book::OrderRow| r.machine == o.machine;
            let on_machine = rows.iter().filter(same).find(|r| r.state.on_machine());
            let ahead: Vec<&crate::orders::book::OrderRow> = rows[..i]
                .iter()
                .filter(same)
                .filter(|r| r.state == OrderState::Queued)
                .collect();
            crate::orders::waiting::waits_for(
                o,
                on_machine,
                &ahead,
                states.get(&o.machine).copied(),
            )
            .unwrap_or_default()
        })
        .collect()
}

/// Fields of the order book's rows that are its own bookkeeping (arrival
/// number, counter baselines, parts of earlier releases, the late report's
/// marks): left out of `orders --json`, whose fields docs/orders.md lists.
const ORDER_BOOKKEEPING: [&str; 6] = [
    "arrival",
    "done",
    "base",
    "started_rank",
    "late_reported",
    "reported_at",
];

/// One order of `orders --json`: the row without its bookkeeping.
fn order_json(o: &crate::orders::book::OrderRow) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(o)?;
    if let Some(obj) = v.as_object_mut() {
        for key in ORDER_BOOKKEEPING {
            obj.remove(key);
        }
    }
    Ok(v)
}

fn simulate(args: SimulateArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let shutdown = CancellationToken::new();
        agent::cancel_on_signals(shutdown.clone());
        let line = crate::sim::serve(
            crate::sim::SimOptions {
                machines: args.machines,
                base_port: args.base_port,
                seed: args.seed,
                speed: args.speed,
                truth: args.truth.clone(),
                honour_orders: true,
            },
            shutdown.clone(),
        )
        .await?;
        for m in &line.machines {
            say!(line "{} modbus tcp {}", m.id, m.addr);
        }
        if let Some(file) = &args.write_config {
            std::fs::write(file, crate::sim::demo_config(&line, &args.data_dir))
                .with_context(|| format!("writing {}", file.display()))?;
            say!(line "config written to {}", file.display());
        }
        match args.seconds {
            Some(s) => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(s)) => shutdown.cancel(),
                }
            }
            None => shutdown.cancelled().await,
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn demo(args: DemoArgs, verbose: u8) -> Result<ExitCode> {
    if args.no_table {
        crate::systemd::init_logging(verbose);
    }
    // Removed when this returns, whichever way: an error, a signal
    // (SIGTERM, SIGINT, SIGHUP all end the demo), or a closed stdout.
    let store_dir = DemoStore::create()?;
    let data_dir = store_dir.0.clone();
    let outcome = runtime()?.block_on(async {
        let shutdown = CancellationToken::new();
        agent::cancel_on_signals(shutdown.clone());
        cancel_on_hangup(shutdown.clone());
        let line = crate::sim::serve(
            crate::sim::SimOptions {
                machines: args.machines,
                base_port: 0,
                seed: args.seed,
                speed: args.speed,
                truth: None,
                honour_orders: true,
            },
            shutdown.clone(),
        )
        .await?;
        let mut text = crate::sim::demo_config(&line, &data_dir);
        if let Some(url) = &args.uplink {
            text.push_str(&format!("\n[uplink]\nurl = {url:?}\n"));
        }
        let mut config = Config::from_toml(&text, Path::new("(demo line)"))?;
        config.accounting.period_minutes = args.period_minutes;
        let config = std::sync::Arc::new(config);
        let board: Board = Default::default();
        let agent_stop = shutdown.child_token();
        let agent = tokio::spawn(agent::run(
            (*config).clone(),
            RunOptions {
                config_path: None,
                board: Some(board.clone()),
                alone_in_process: false,
            },
            agent_stop.clone(),
        ));
        // The console's URL, in the screen's footer (a line printed here
        // would go under the alternate screen, or end the demo on a closed
        // stdout before its store is removed).
        let footer_url: Option<String> = crate::console::url(&config.console);
        let screen = (!args.no_table).then(|| {
            let title = format!("linegate demo ({} simulated machines)", line.machines.len());
            let (config, stop, data_dir) = (config.clone(), shutdown.clone(), data_dir.clone());
            std::thread::spawn(move || {
                // The agent creates the store; until then the rows are empty.
                let mut store: Option<Store> = None;
                let next = || {
                    if store.is_none() {
                        store = Store::open_existing(&data_dir).ok();
                    }
                    let board = board.lock().map(|b| b.clone()).unwrap_or_default();
                    match &store {
                        Some(s) => super::tui::gather(
                            s,
                            &config,
                            Some(&board),
                            &title,
                            footer_url.as_deref(),
                        ),
                        None => super::tui::Screen {
                            title: title.clone(),
                            at: chrono::Utc::now(),
                            machines: Vec::new(),
                            footer: super::tui::Footer {
                                link: crate::uplink::status::Link::Unknown,
                                broker: config.uplink.as_ref().map(|u| u.url.clone()),
                                last_error: None,
                                backlog: 0,
                                url: footer_url.clone(),
                            },
                            trouble: Some("the agent is opening its store".into()),
                        },
                    }
                };
                super::tui::run(
                    next,
                    &stop,
                    Duration::from_millis(500),
                    Duration::from_secs(2),
                )
            })
        });
        if let Some(s) = args.seconds {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(s)) => {}
            }
        } else {
            shutdown.cancelled().await;
        }
        agent_stop.cancel();
        shutdown.cancel();
        let agent_result = agent.await.context("agent task");
        let screen_result = match screen {
            Some(handle) => tokio::task::spawn_blocking(move || handle.join())
                .await
                .ok()
                .and_then(|j| j.ok())
                .unwrap_or(Ok(())),
            None => Ok(()),
        };
        agent_result??;
        anyhow::Ok(screen_result)
    });
    drop(store_dir);
    match outcome? {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::from(141)),
        Err(e) => Err(anyhow::Error::from(e).context("cannot write to stdout")),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// The demo's throwaway store folder: nothing of a real line is in it, and
/// it is removed when this is dropped.
struct DemoStore(std::path::PathBuf);

impl DemoStore {
    fn create() -> Result<DemoStore> {
        let dir = std::env::temp_dir().join(format!("linegate-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(DemoStore(dir))
    }
}

impl Drop for DemoStore {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("linegate: could not remove {}: {e}", self.0.display());
            }
        }
    }
}

/// Cancel `token` on SIGHUP (the terminal closed): the demo and `top` end
/// then, where the agent would reload. Call inside the runtime.
fn cancel_on_hangup(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            tokio::spawn(async move {
                hup.recv().await;
                token.cancel();
            });
        }
    }
    #[cfg(not(unix))]
    let _ = token;
}

fn top(args: TopArgs) -> Result<ExitCode> {
    let (config, store) = open_store(args.config.config.as_deref())?;
    let title = format!("linegate top: gateway {}", config.gateway.id);
    if args.once {
        let screen = super::tui::gather(&store, &config, None, &title, None);
        say!(text "{}", super::tui::plain(&screen));
        return Ok(ExitCode::SUCCESS);
    }
    let every = Duration::from_millis(args.interval_ms.max(100));
    let result = runtime()?.block_on(async {
        let stop = CancellationToken::new();
        agent::cancel_on_signals(stop.clone());
        cancel_on_hangup(stop.clone());
        let thread_stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let next = || super::tui::gather(&store, &config, None, &title, None);
            super::tui::run(next, &thread_stop, every, every)
        })
        .await
        .context("the screen thread")
    })?;
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::from(141)),
        Err(e) => Err(anyhow::Error::from(e).context("cannot write to stdout")),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}
