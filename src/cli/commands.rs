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
};
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
            let config = Config::load(&path)?;
            runtime()?.block_on(async {
                let shutdown = CancellationToken::new();
                agent::cancel_on_signals(shutdown.clone());
                agent::run(
                    config,
                    RunOptions {
                        config_path: Some(path),
                        board: None,
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
    let config = Config::load(path)?;
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
    let outbox = store.call_blocking(|c| crate::uplink::outbox::counts(c))?;
    say!(line
        "\noutbox: {} message(s) waiting ({} KB of {} KB), {} telemetry message(s) dropped when full",
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
    let (_config, store) = open_store(args.config.config.as_deref())?;
    let from = parse_time(args.from.as_deref(), "--from")?;
    let to = parse_time(args.to.as_deref(), "--to")?;
    let machine = args.machine.clone();
    let periods = store.call_blocking(move |c| {
        crate::machine::history::periods(c, machine.as_deref(), from, to)
    })?;
    if args.json {
        for p in &periods {
            say!(line
                "{}",
                serde_json::to_string(&crate::uplink::message::period_message(p).body)?
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = periods
        .iter()
        .map(|p| {
            vec![
                p.machine.clone(),
                match &p.kind {
                    crate::machine::PeriodKind::Interval => "interval".into(),
                    crate::machine::PeriodKind::Shift { name } => format!("shift {name}"),
                },
                p.start.to_rfc3339(),
                p.end.to_rfc3339(),
                format!("{:.0}", p.seconds.running),
                format!("{:.0}", p.seconds.idle),
                format!("{:.0}", p.seconds.down),
                format!("{:.0}", p.seconds.offline),
                p.counts.produced.to_string(),
                table::percent(p.kpi.availability),
                table::percent(p.kpi.oee),
            ]
        })
        .collect();
    say!(text
        "{}",
        table::render(
            &[
                "machine",
                "period",
                "start",
                "end",
                "run s",
                "idle s",
                "down s",
                "offline s",
                "parts",
                "avail",
                "oee"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

fn orders(args: OrdersArgs) -> Result<ExitCode> {
    let (_config, store) = open_store(args.config.config.as_deref())?;
    let machine = args.machine.clone();
    let rows = store.call_blocking(move |c| crate::orders::book::list(c, machine.as_deref()))?;
    if args.json {
        say!(line "{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|o| {
            vec![
                o.order_id.clone(),
                o.revision.to_string(),
                o.machine.clone(),
                o.product.clone(),
                format!("{}/{}", o.progress.produced, o.quantity),
                o.state.to_string(),
                o.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    say!(text
        "{}",
        table::render(
            &["order", "rev", "machine", "product", "produced", "state", "reason"],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
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
    let data_dir = tempfile_dir()?;
    runtime()?.block_on(async {
        let shutdown = CancellationToken::new();
        agent::cancel_on_signals(shutdown.clone());
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
        if let Some(url) = crate::console::url(&config.console) {
            say!(line "console: {url}");
        }
        let board: Board = Default::default();
        let agent_stop = shutdown.child_token();
        let agent = tokio::spawn(agent::run(
            config,
            RunOptions {
                config_path: None,
                board: Some(board.clone()),
            },
            agent_stop.clone(),
        ));
        let until = args
            .seconds
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    if !args.no_table {
                        say!(text "\x1b[2J\x1b[H{}", render_board(&board, &data_dir));
                    }
                    if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
                        break;
                    }
                }
            }
        }
        if !args.no_table {
            say!(text "\x1b[2J\x1b[H{}", render_board(&board, &data_dir));
        }
        agent_stop.cancel();
        shutdown.cancel();
        agent.await.context("agent task")??;
        anyhow::Ok(())
    })?;
    // The demo's store is throwaway: nothing of a real line is in it.
    if let Err(e) = std::fs::remove_dir_all(&data_dir) {
        eprintln!("linegate: could not remove {}: {e}", data_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("linegate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn render_board(board: &Board, data_dir: &Path) -> String {
    let Ok(board) = board.lock() else {
        return String::new();
    };
    let now = chrono::Utc::now();
    let rows: Vec<Vec<String>> = board
        .iter()
        .map(|(id, b)| {
            let values: BTreeMap<&str, &str> = b
                .values
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let shown = ["alarm_code", "mode", "part_count", "spindle_rpm"]
                .iter()
                .filter_map(|k| values.get(k).map(|v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                id.clone(),
                b.state.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                b.since
                    .map(|s| format!("{:.0}s", (now - s).num_milliseconds() as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                b.reason.clone().unwrap_or_default(),
                shown,
                b.last_read
                    .map(|t| format!("{}ms ago", (now - t).num_milliseconds()))
                    .unwrap_or_else(|| "never".into()),
                format!("{}/{}", b.failed_reads, b.reads),
                b.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    format!(
        "linegate demo — simulated line over Modbus TCP on loopback (Ctrl-C to stop)\nstore: {}\n\n{}",
        data_dir.display(),
        table::render(
            &["machine", "state", "for", "reason", "values", "last read", "failed/reads", "error"],
            &rows
        )
    )
}
