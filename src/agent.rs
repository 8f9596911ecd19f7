//! The running agent: wires sources, the state engine, the store, the uplink
//! and order dispatch together with typed channels, and owns their life
//! cycle (start, SIGHUP reload, SIGTERM shutdown). It makes no decisions of
//! its own about machines, messages or orders: it only connects the parts.
//!
//! ```text
//! bus tasks --Sample--> tap --Sample--> engine --MachineEvent--> recorder --> store (+outbox) --wake--> uplink
//!                        |                 |                                                         |
//!                        +--> board        +--MachineView (watch)--> orders <--OrderMessage----------+
//!                                                                     |
//!                                          bus tasks <--WriteRequest--+
//! ```
//!
//! The line console ([`crate::console`]) is started beside them when
//! `[console]` is on: it reads the board, the buses' counters, the
//! uplink's figures, the watchdog ledger and the store, and writes nothing.
//!
//! Shutdown runs in data-flow order: sources stop after their in-flight
//! request; the engine drains what they sent and saves its snapshots; the
//! recorder commits every event; the uplink says `online: false`; the store
//! thread finishes its queue.
//!
//! A SIGHUP reload is a difference, not a restart ([`crate::reload`]): an
//! unchanged config changes nothing; otherwise only the bus tasks, the
//! order task and the uplink that the change touches restart, and the state
//! engine follows the new config in place.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Config, Transport};
use crate::machine::{MachineEvent, MachineState, MachineView};
use crate::source::modbus::WriteRequest;
use crate::source::positions::SignalPositions;
use crate::source::{Sample, SampleContent};
use crate::store::{Store, StoreError};

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("uplink: {0}")]
    Uplink(String),
}

/// What the live table of `linegate demo` (and logs) show of one machine.
#[derive(Debug, Clone, Default)]
pub struct MachineBoard {
    pub state: Option<MachineState>,
    pub since: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    /// Each signal's last reading (a value or why it failed) and when it
    /// was read, sorted by name: look one up with [`MachineBoard::reading`].
    /// Kept as read, not as text: formatting every reading of every poll
    /// for a page nobody may be looking at was a fifth of the agent's
    /// instructions. One vector sized to the machine's signals, names shared
    /// with the source: two maps keyed by copied names took 4 KB a machine.
    pub signals: Vec<(Arc<str>, LastReading)>,
    /// The names table of the last sample, and for each of its positions
    /// the index of that signal in `signals`: a poll of a Modbus machine,
    /// the same table every time, finds its signals without comparing names.
    positions: SignalPositions,
    pub last_read: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub reads: u64,
    pub failed_reads: u64,
    pub produced_total: u64,
    /// Good parts counted since the agent started tracking the machine.
    pub good_total: u64,
}

/// The last reading of a signal on the board, and when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct LastReading {
    pub reading: crate::source::Reading,
    pub at: DateTime<Utc>,
}

impl MachineBoard {
    /// The last reading of `signal`, if it was ever read.
    pub fn reading(&self, signal: &str) -> Option<&LastReading> {
        self.signals
            .binary_search_by(|(name, _)| (**name).cmp(signal))
            .ok()
            .and_then(|i| self.signals.get(i))
            .map(|(_, last)| last)
    }

    /// Notes a sample's readings made at `at`: in place once a signal is
    /// known, so a poll allocates nothing here.
    fn note_readings(&mut self, readings: &crate::source::Readings, at: DateTime<Utc>) {
        // Another table (an MQTT message, or the first poll) is learnt
        // signal by signal.
        self.positions.follow(readings.names());
        for (position, r) in readings.positions() {
            let i = match self.positions.get(position) {
                Some(i) => i,
                None => {
                    let Some(name) = self.positions.table().get(position) else {
                        continue;
                    };
                    let i = match self.signals.binary_search_by(|(n, _)| (**n).cmp(&**name)) {
                        Ok(i) => i,
                        Err(i) => {
                            self.signals.insert(
                                i,
                                (
                                    name.clone(),
                                    LastReading {
                                        reading: r.clone(),
                                        at,
                                    },
                                ),
                            );
                            // The signals after it moved: found again by name.
                            self.positions.forget();
                            i
                        }
                    };
                    self.positions.set(position, i);
                    i
                }
            };
            if let Some((_, last)) = self.signals.get_mut(i) {
                if last.reading != *r {
                    last.reading.clone_from(r);
                }
                last.at = at;
            }
        }
    }
}

/// Shared live view of every machine; the tap and the view watcher write it.
pub type Board = Arc<Mutex<BTreeMap<String, MachineBoard>>>;

/// How the agent is run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The file to reload on SIGHUP (none: reload is refused).
    pub config_path: Option<PathBuf>,
    /// Live table for `demo`.
    pub board: Option<Board>,
    /// The agent is all this process runs (`linegate run`): once started,
    /// it gives back the pages of code and tables that only starting used
    /// ([`crate::memory::release_start_pages`], which must not race another
    /// thread loading a library, as a test harness's threads might).
    pub alone_in_process: bool,
}

/// Run the agent until `shutdown` is cancelled (or SIGTERM/SIGINT arrive, when
/// `handle_signals`). SIGHUP reloads the config file: an invalid new config is
/// refused with its errors logged and the old one keeps running.
pub async fn run(
    config: Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    // One copy of the config, shared by every task that reads it.
    let mut config = Arc::new(config);
    // A full disk does not stop the start: the store opens when it can.
    let store = Store::open_resilient(&config.gateway.data_dir, config.store.reserve_mb)?;
    configure_outbox(&store, &config).await;
    info!(
        gateway = %config.gateway.id,
        store = %store.path().display(),
        machines = config.machine.len(),
        "linegate started"
    );
    let started_at = Utc::now();
    let mut hangup = Hangup::install();
    // The watchdog pets systemd only while every running loop beats; it
    // outlives reloads (each restarted task registers anew).
    let liveness = match crate::systemd::watchdog_interval() {
        Some(interval) => crate::systemd::Liveness::for_watchdog(interval),
        None => crate::systemd::Liveness::new(),
    };
    let watchdog_stop = CancellationToken::new();
    let watchdog = crate::systemd::watchdog_interval().map(|interval| {
        info!(
            interval_ms = interval.as_millis() as u64,
            "systemd watchdog enabled"
        );
        tokio::spawn(crate::systemd::run_watchdog(
            liveness.clone(),
            watchdog_stop.clone(),
        ))
    });
    // Freed heap goes back to the system (after console requests, and
    // once a minute): crate::memory.
    let trims = tokio::spawn(crate::memory::run_trims(watchdog_stop.clone()));
    // The console reads the live board: the agent keeps one when it is on.
    let console_on = matches!(crate::config::console_addr(&config.console), Ok(Some(_)));
    let mut options = options;
    if console_on && options.board.is_none() {
        options.board = Some(Board::default());
    }
    let mut running = Running::start(&config, &store, &options, &liveness, started_at)?;
    let console_stop = CancellationToken::new();
    let console = options.board.clone().and_then(|board| {
        crate::console::start(
            crate::console::Sources {
                config: running.config.subscribe(),
                config_path: options.config_path.clone(),
                store: store.clone(),
                board,
                uplink: running.uplink_stats.clone(),
                liveness: liveness.clone(),
                buses: running.bus_counters.reader(),
                started_at,
            },
            console_stop.clone(),
        )
    });
    if options.alone_in_process {
        // Before this function first awaits: the tasks just spawned have not
        // run, so no thread looks up a host name (and loads a library) yet.
        match crate::memory::release_start_pages() {
            Ok(bytes) => debug!(kb = bytes / 1024, "released the pages only starting used"),
            Err(e) => debug!(error = %e, "cannot release the pages only starting used"),
        }
    }
    crate::systemd::ready();
    loop {
        if !wait_for_stop_or_reload(&shutdown, &mut hangup).await {
            crate::systemd::stopping();
            running.stop().await;
            break;
        }
        crate::systemd::reloading();
        let Some(path) = options.config_path.as_deref() else {
            warn!("SIGHUP: no config file to reload; the running config stays");
            crate::systemd::ready();
            continue;
        };
        info!(file = %path.display(), "SIGHUP: reloading the config");
        match Config::load_with_warnings(path) {
            Ok(crate::config::Loaded {
                config: new,
                warnings,
            }) => {
                for w in &warnings {
                    warn!("{}", w.in_file(path));
                }
                let new = Arc::new(new);
                let plan = crate::reload::plan_reload(&config, &new);
                if new.console != config.console {
                    warn!("console settings changed: the console follows them on a restart");
                }
                if new.gateway.data_dir != config.gateway.data_dir {
                    warn!(
                        store = %store.path().display(),
                        "gateway.data_dir changed: the store moves only on a restart"
                    );
                }
                if plan.is_empty() {
                    info!(file = %path.display(), "config unchanged: nothing restarted");
                } else {
                    running.reload(&new, &plan).await;
                    config = new;
                    info!(
                        file = %path.display(),
                        machines = config.machine.len(),
                        added = plan.machines_added.len(),
                        removed = plan.machines_removed.len(),
                        changed = plan.machines_changed.len(),
                        buses_restarted = plan.buses_started.len(),
                        uplink_restarted = plan.uplink_restarted,
                        "config reloaded"
                    );
                }
                crate::systemd::ready();
                crate::systemd::status("running");
            }
            Err(e) => {
                // One line: the errors name the file and every bad key.
                let errors = e.to_string().replace('\n', "; ");
                error!(
                    file = %path.display(),
                    errors = %errors,
                    "reload refused: the new config is invalid; the running config stays"
                );
                crate::systemd::ready();
                crate::systemd::status("running; last reload refused: invalid config");
            }
        }
    }
    console_stop.cancel();
    if let Some(c) = console {
        let _ = c.await;
    }
    watchdog_stop.cancel();
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    let _ = trims.await;
    info!("linegate stopped");
    Ok(())
}

/// Write the outbox cap; when the store cannot take it now (a full disk),
/// keep trying in the background with backoff: the agent runs meanwhile.
async fn configure_outbox(store: &Store, config: &Config) {
    let policy = crate::uplink::outbox::OutboxPolicy::from_mb(config.store.outbox_max_mb);
    let configure = move |store: Store| async move {
        store
            .call(move |c| crate::uplink::outbox::configure(c, policy))
            .await
    };
    match configure(store.clone()).await {
        Ok(()) => {}
        Err(StoreError::Closed) => {}
        Err(e) => {
            warn!(error = %e, "cannot write the outbox settings now; retrying in the background");
            let store = store.clone();
            tokio::spawn(async move {
                let mut retry = Duration::from_secs(1);
                loop {
                    tokio::time::sleep(retry).await;
                    match configure(store.clone()).await {
                        Ok(()) => {
                            info!("outbox settings written");
                            break;
                        }
                        Err(StoreError::Closed) => break,
                        Err(_) => retry = (retry * 2).min(Duration::from_secs(30)),
                    }
                }
            });
        }
    }
}

/// SIGHUP's handler, installed before READY=1 so an early `systemctl reload`
/// cannot kill the process (SIGHUP's default action).
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGHUP: reload is off");
                    None
                }
            };
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }
}

/// Waits for a stop (false) or a SIGHUP (true).
async fn wait_for_stop_or_reload(shutdown: &CancellationToken, hangup: &mut Hangup) -> bool {
    #[cfg(unix)]
    if let Some(hup) = hangup.signal.as_mut() {
        return tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = hup.recv() => true,
        };
    }
    let _ = hangup;
    shutdown.cancelled().await;
    false
}

/// Cancel `token` on SIGTERM (systemd) or SIGINT (Ctrl-C). The SIGTERM
/// handler is installed before this returns; call it inside the runtime.
pub fn cancel_on_signals(token: CancellationToken) {
    #[cfg(unix)]
    let term = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::terminate())
    };
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => info!("SIGTERM: stopping"),
                        _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        token.cancel();
    });
}

/// The running tasks. A reload changes only the parts its
/// [`ReloadPlan`](crate::reload::ReloadPlan) names: a bus task each, the
/// order task and the uplink restart on their own; the tap, the state
/// engine, the recorder and housekeeping run from start to stop (the engine
/// follows a new config in place, so unchanged machines keep their state,
/// timeline and periods).
struct Running {
    store: Store,
    board: Option<Board>,
    liveness: crate::systemd::Liveness,
    started_at: DateTime<Utc>,
    /// The running config, for the tasks that read it while running
    /// (recorder, housekeeping).
    config: watch::Sender<Arc<Config>>,
    /// What bus tasks send to the tap; the tap (then the engine) ends when
    /// the last clone is gone.
    samples: Option<mpsc::Sender<Sample>>,
    buses: BTreeMap<String, Task>,
    /// Each machine's write channel: that of its bus task.
    writers: HashMap<String, mpsc::Sender<Box<WriteRequest>>>,
    /// Each machine's live view (for the order task).
    views: HashMap<String, watch::Receiver<MachineView>>,
    engine: crate::machine::engine::EngineHandle,
    /// Tap, engine, recorder, housekeeping, board watchers, order forwarder.
    downstream: JoinSet<()>,
    /// Stops housekeeping and the board watchers.
    downstream_stop: CancellationToken,
    /// Order messages of every uplink connection go here...
    order_tx: mpsc::Sender<crate::orders::OrderMessage>,
    /// ... and on to the order task running now.
    order_target: watch::Sender<Option<mpsc::Sender<crate::orders::OrderMessage>>>,
    orders: Option<Task>,
    uplink: Option<Task>,
    wake: Arc<Notify>,
    /// The recorder's committed rows, handed to the uplink in memory.
    fresh: Arc<crate::uplink::FreshRows>,
    /// PUBACKed seqs, whose rows the recorder's next commit deletes.
    acked: Arc<crate::uplink::AckedRows>,
    /// The counters of each running bus task, by bus id, for the task that
    /// copies them into the store for `linegate status`.
    bus_counters: BusCounters,
    /// That copying task: stopped after the buses, it copies once more.
    bus_counters_task: Option<Task>,
    /// The tap's copy of every sample for the Sparkplug edge node, the
    /// receiving end each run of it takes in turn, and the running one.
    sparkplug_tap: crate::sparkplug::SparkplugTap,
    sparkplug_feed: crate::sparkplug::SparkplugFeed,
    sparkplug: Option<Task>,
    /// The uplink's live figures, one for every uplink run (for the console).
    uplink_stats: Arc<crate::uplink::UplinkStats>,
}

/// One task that a reload may stop on its own.
struct Task {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Task {
    fn spawn(
        stop: CancellationToken,
        future: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Task {
        Task {
            stop,
            handle: tokio::spawn(future),
        }
    }

    /// Stop it and wait up to `patience` for it to end; then abort it.
    async fn stop(self, what: &str, patience: Duration) {
        self.stop.cancel();
        let mut handle = self.handle;
        if tokio::time::timeout(patience, &mut handle).await.is_err() {
            warn!("{what} still running after {patience:?}: aborted");
            handle.abort();
        }
    }
}

/// How long a bus task or the order task may take to stop.
const STOP_PATIENCE: Duration = Duration::from_secs(8);

impl Running {
    fn start(
        config: &Arc<Config>,
        store: &Store,
        options: &RunOptions,
        liveness: &crate::systemd::Liveness,
        started_at: DateTime<Utc>,
    ) -> Result<Running, AgentError> {
        let wake = Arc::new(Notify::new());
        let fresh = Arc::new(crate::uplink::FreshRows::default());
        let acked = Arc::new(crate::uplink::AckedRows::default());
        let mut downstream = JoinSet::new();
        let downstream_stop = CancellationToken::new();
        let (config_tx, config_rx) = watch::channel(config.clone());

        let (sample_tx, sample_rx) = mpsc::channel::<Sample>(1024);
        let (engine_tx, engine_rx) = mpsc::channel::<Sample>(1024);
        let (event_tx, event_rx) = mpsc::channel::<MachineEvent>(1024);
        let (order_tx, order_rx) = mpsc::channel(64);
        let (order_target, order_target_rx) = watch::channel(None);

        // The engine stops when the tap has passed on the last sample of the
        // stopped sources, so nothing read is left unaccounted.
        let engine_stop = CancellationToken::new();
        let (sparkplug_tap, sparkplug_feed) = crate::sparkplug::SparkplugTap::new();
        downstream.spawn(tap(
            sample_rx,
            engine_tx,
            options.board.clone(),
            store.clone(),
            engine_stop.clone(),
            sparkplug_tap.clone(),
        ));

        let (views_tx, views_rx) = crate::machine::engine::machine_views(config, Utc::now());
        let (engine, engine_commands) = crate::machine::engine::engine_channel();
        {
            let config = config.clone();
            let store = store.clone();
            let heartbeat = liveness.register("state engine");
            downstream.spawn(async move {
                let resume = match store.call(|c| crate::machine::history::load_snapshots(c)).await {
                    Ok(s) => s,
                    Err(e) => {
                        error!(error = %e, "could not load machine snapshots; open periods start fresh");
                        Vec::new()
                    }
                };
                match crate::machine::engine::run_engine(
                    config,
                    resume,
                    engine_rx,
                    event_tx,
                    views_tx,
                    engine_commands,
                    heartbeat,
                    engine_stop,
                )
                .await
                {
                    Ok(snapshots) => save_snapshots(&store, snapshots).await,
                    Err(e) => error!(error = %e, "state engine stopped"),
                }
            });
        }
        downstream.spawn(housekeeping(
            store.clone(),
            config_rx.clone(),
            downstream_stop.clone(),
        ));
        downstream.spawn(crate::orders::scorecard_task::run_scorecard(
            store.clone(),
            config_rx.clone(),
            wake.clone(),
            downstream_stop.clone(),
        ));
        downstream.spawn(record(
            event_rx,
            store.clone(),
            config_rx,
            wake.clone(),
            fresh.clone(),
            acked.clone(),
        ));
        downstream.spawn(forward_orders(order_rx, order_target_rx));

        let mut running = Running {
            store: store.clone(),
            board: options.board.clone(),
            liveness: liveness.clone(),
            started_at,
            config: config_tx,
            samples: Some(sample_tx),
            buses: BTreeMap::new(),
            writers: HashMap::new(),
            views: HashMap::new(),
            engine,
            downstream,
            downstream_stop,
            order_tx,
            order_target,
            orders: None,
            uplink: None,
            wake,
            fresh,
            acked,
            bus_counters: BusCounters::default(),
            bus_counters_task: None,
            sparkplug_tap,
            sparkplug_feed,
            sparkplug: None,
            uplink_stats: Arc::default(),
        };
        running.add_views(views_rx);
        let stop = CancellationToken::new();
        running.bus_counters_task = Some(Task::spawn(
            stop.clone(),
            copy_bus_counters(store.clone(), running.bus_counters.clone(), stop),
        ));
        for bus in &config.bus {
            running.start_bus(config, &bus.id);
        }
        running.start_orders(config);
        running.start_uplink(config);
        running.start_sparkplug(config);
        Ok(running)
    }

    /// Start the Sparkplug edge node, if `[sparkplug]` is set.
    fn start_sparkplug(&mut self, config: &Arc<Config>) {
        if config.sparkplug.is_none() {
            return;
        }
        let stop = CancellationToken::new();
        self.sparkplug = Some(Task::spawn(
            stop.clone(),
            crate::sparkplug::run_sparkplug(
                config.clone(),
                self.store.clone(),
                self.sparkplug_feed.clone(),
                self.sparkplug_tap.clone(),
                self.views.clone(),
                self.liveness.register("sparkplug"),
                stop,
            ),
        ));
    }

    /// NDEATH, disconnect; what no host took stays in the store.
    async fn stop_sparkplug(&mut self) {
        if let Some(task) = self.sparkplug.take() {
            task.stop("sparkplug", Duration::from_secs(4)).await;
        }
    }

    fn add_views(&mut self, views: HashMap<String, watch::Receiver<MachineView>>) {
        if let Some(board) = &self.board {
            for rx in views.values() {
                self.downstream.spawn(watch_view(
                    rx.clone(),
                    board.clone(),
                    self.downstream_stop.clone(),
                ));
            }
        }
        self.views.extend(views);
    }

    /// Start the task of bus `id` of `config`, if it has machines.
    fn start_bus(&mut self, config: &Config, id: &str) {
        let Some(bus) = config.bus(id) else { return };
        let machines: Vec<_> = config
            .machine
            .iter()
            .filter(|m| m.bus == bus.id)
            .cloned()
            .collect();
        let Some(samples) = self.samples.clone() else {
            return;
        };
        if machines.is_empty() {
            return;
        }
        let stop = CancellationToken::new();
        let task = match bus.transport {
            Transport::Tcp | Transport::Rtu => {
                let (write_tx, write_rx) = mpsc::channel(16);
                for m in &machines {
                    self.writers.insert(m.id.clone(), write_tx.clone());
                }
                let stats = Arc::new(crate::source::modbus::bus::BusStats::new(&bus.id));
                self.bus_counters
                    .started(&bus.id, bus.transport, Counted::Modbus(stats.clone()));
                Task::spawn(
                    stop.clone(),
                    crate::source::modbus::bus::run_bus(
                        bus.clone(),
                        machines,
                        samples,
                        write_rx,
                        stats,
                        self.liveness.register(format!("modbus bus {}", bus.id)),
                        stop,
                    ),
                )
            }
            Transport::Mqtt => {
                let stats = Arc::new(crate::source::mqtt::MqttBusStats::new(&bus.id));
                self.bus_counters
                    .started(&bus.id, bus.transport, Counted::Mqtt(stats.clone()));
                Task::spawn(
                    stop.clone(),
                    crate::source::mqtt::run_mqtt_bus_with_stats(
                        bus.clone(),
                        machines,
                        samples,
                        stats,
                        self.liveness.register(format!("mqtt bus {}", bus.id)),
                        stop,
                    ),
                )
            }
        };
        self.buses.insert(bus.id.clone(), task);
    }

    /// Stop the task of bus `id` after its request in flight.
    async fn stop_bus(&mut self, id: &str) {
        if let Some(task) = self.buses.remove(id) {
            task.stop(&format!("bus {id}"), STOP_PATIENCE).await;
        }
        // Its machines' write channels closed with it.
        self.writers.retain(|_, w| !w.is_closed());
    }

    fn start_orders(&mut self, config: &Arc<Config>) {
        let (inbox_tx, inbox_rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        self.orders = Some(Task::spawn(
            stop.clone(),
            crate::orders::dispatch::run_orders(
                config.clone(),
                self.store.clone(),
                inbox_rx,
                self.views.clone(),
                self.writers.clone(),
                self.engine.clone(),
                self.wake.clone(),
                stop,
            ),
        ));
        self.order_target.send_replace(Some(inbox_tx));
    }

    async fn stop_orders(&mut self) {
        self.order_target.send_replace(None);
        if let Some(task) = self.orders.take() {
            task.stop("order task", STOP_PATIENCE).await;
        }
    }

    fn start_uplink(&mut self, config: &Config) {
        let Some(u) = &config.uplink else { return };
        let info = crate::uplink::GatewayInfo {
            id: config.gateway.id.clone(),
            prefix: config.topic_prefix(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at,
            machines: config.machine.iter().map(|m| m.id.clone()).collect(),
        };
        let u = u.clone();
        let store = self.store.clone();
        let wake = self.wake.clone();
        let fresh = self.fresh.clone();
        let acked = self.acked.clone();
        let order_tx = self.order_tx.clone();
        let stop = CancellationToken::new();
        let ustop = stop.clone();
        let heartbeat = self.liveness.register("uplink");
        let stats = self.uplink_stats.clone();
        self.uplink = Some(Task::spawn(stop, async move {
            // Copied into the store for `linegate status` and `top`.
            let copy_stop = CancellationToken::new();
            let copy = tokio::spawn(crate::uplink::status::copy_to_store(
                store.clone(),
                stats.clone(),
                copy_stop.clone(),
            ));
            if let Err(e) = crate::uplink::run_uplink(
                u, info, store, wake, fresh, acked, order_tx, stats, heartbeat, ustop,
            )
            .await
            {
                error!(error = %e, "uplink stopped");
            }
            copy_stop.cancel();
            let _ = copy.await;
        }));
    }

    /// Say goodbye upstream and close the connection.
    async fn stop_uplink(&mut self) {
        if let Some(task) = self.uplink.take() {
            task.stop("uplink", Duration::from_secs(3)).await;
        }
    }

    /// Carry out a reload: only what `plan` names is stopped and started.
    async fn reload(&mut self, new: &Arc<Config>, plan: &crate::reload::ReloadPlan) {
        let sparkplug_changed = self.config.borrow().sparkplug != new.sparkplug;
        if plan.other_changed {
            // A store that cannot take them now gets them in the background.
            configure_outbox(&self.store, new).await;
        }
        // Buses first: nothing is read with the old plan of a machine that
        // the engine already follows with the new one.
        for id in &plan.buses_stopped {
            self.stop_bus(id).await;
        }
        if plan.machines_or_buses_changed() || plan.accounting_changed {
            self.stop_orders().await;
        }
        // New machines' saved snapshots (from before they were removed, or
        // from an earlier run), so their open periods resume.
        let resume = if plan.machines_added.is_empty() {
            Vec::new()
        } else {
            let added = plan.machines_added.clone();
            match self
                .store
                .call(|c| crate::machine::history::load_snapshots(c))
                .await
            {
                Ok(all) => all
                    .into_iter()
                    .filter(|(id, _)| added.contains(id))
                    .collect(),
                Err(e) => {
                    error!(error = %e, "could not load machine snapshots; added machines start fresh");
                    Vec::new()
                }
            }
        };
        let (mut views_tx, mut views_rx) = crate::machine::engine::machine_views(new, Utc::now());
        views_tx.retain(|id, _| plan.machines_added.contains(id));
        views_rx.retain(|id, _| plan.machines_added.contains(id));
        let done = self
            .engine
            .reconfigure(crate::machine::engine::Reconfigure {
                config: new.clone(),
                views: views_tx,
                resume,
                removed_reason: crate::reload::REMOVED_REASON.to_string(),
            })
            .await;
        match done {
            Some(done) if done.refused.is_none() => {
                if !done.removed.is_empty() {
                    save_snapshots(&self.store, done.removed).await;
                }
                if !done.restarted.is_empty() {
                    info!(machines = ?done.restarted, "machines restarted from their snapshot (accounting settings changed)");
                }
            }
            Some(_) | None => warn!("the state engine did not take the new config"),
        }
        for id in &plan.machines_removed {
            self.views.remove(id);
        }
        self.add_views(views_rx);
        self.config.send_replace(new.clone());
        for id in &plan.buses_started {
            self.start_bus(new, id);
        }
        // A stopped bus's counters stay until here (and to the end, at a
        // stop, for the last copy); only those of buses not running now go.
        self.bus_counters
            .keep_only(|id| self.buses.contains_key(id));
        if plan.machines_or_buses_changed() || plan.accounting_changed {
            self.start_orders(new);
        }
        if plan.uplink_restarted {
            self.stop_uplink().await;
            self.start_uplink(new);
        }
        // The edge node's births name every machine and metric: any change
        // of them, or of its own section or broker, is a new edge node run.
        if plan.uplink_restarted || plan.machines_or_buses_changed() || sparkplug_changed {
            self.stop_sparkplug().await;
            self.start_sparkplug(new);
        }
    }

    /// Stop in data-flow order: sources after their in-flight request; the
    /// engine drains what they sent and saves its snapshots; the recorder
    /// commits every event; the order task; the uplink says `online: false`.
    async fn stop(mut self) {
        // Every bus stops at once; each is then waited for.
        for task in self.buses.values() {
            task.stop.cancel();
        }
        let ids: Vec<String> = self.buses.keys().cloned().collect();
        for id in ids {
            self.stop_bus(&id).await;
        }
        // After the buses: their last counts are copied once more.
        if let Some(task) = self.bus_counters_task.take() {
            task.stop("bus counters", Duration::from_secs(3)).await;
        }
        // The last sender: the tap ends, then the engine, then the recorder.
        self.samples = None;
        self.downstream_stop.cancel();
        self.stop_orders().await;
        let deadline = STOP_PATIENCE;
        if tokio::time::timeout(deadline, async {
            // The forwarder ends when the uplink's sender is gone: not waited for.
            while self.downstream.len() > 1 {
                if self.downstream.join_next().await.is_none() {
                    break;
                }
            }
        })
        .await
        .is_err()
        {
            warn!(
                downstream = self.downstream.len(),
                "tasks still running after {deadline:?}: aborted"
            );
        }
        self.stop_uplink().await;
        self.stop_sparkplug().await;
        self.downstream.abort_all();
    }
}

/// What one running bus task counts in (the one place its counters live).
#[derive(Clone)]
enum Counted {
    Modbus(Arc<crate::source::modbus::bus::BusStats>),
    Mqtt(Arc<crate::source::mqtt::MqttBusStats>),
}

/// A running bus task's counters and since when it counts.
#[derive(Clone)]
struct CountedBus {
    transport: Transport,
    since: DateTime<Utc>,
    counted: Counted,
}

/// The counters of the running bus tasks, by bus id: a bus task's entry is
/// put in when it starts (replacing that of its previous run) and taken out
/// when a reload leaves the bus stopped.
#[derive(Clone, Default)]
struct BusCounters(Arc<Mutex<BTreeMap<String, CountedBus>>>);

impl BusCounters {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, CountedBus>> {
        // A panic elsewhere cannot leave a map of Arcs half-written.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn started(&self, bus: &str, transport: Transport, counted: Counted) {
        let entry = CountedBus {
            transport,
            since: Utc::now(),
            counted,
        };
        self.lock().insert(bus.to_owned(), entry);
    }

    fn keep_only(&self, running: impl Fn(&str) -> bool) {
        self.lock().retain(|id, _| running(id));
    }

    /// What the console reads: every running bus's counters and, for
    /// Modbus buses, its reply latency, taken when asked.
    fn reader(&self) -> crate::console::BusReader {
        let counters = self.clone();
        Arc::new(move || {
            let latency: BTreeMap<String, _> = counters
                .lock()
                .iter()
                .filter_map(|(bus, c)| match &c.counted {
                    Counted::Modbus(stats) => Some((bus.clone(), stats.latency.snapshot())),
                    Counted::Mqtt(_) => None,
                })
                .collect();
            counters
                .copy(Utc::now())
                .into_iter()
                .map(|counts| crate::console::LiveBus {
                    latency: latency.get(&counts.bus).cloned(),
                    counts,
                })
                .collect()
        })
    }

    /// A copy of every running bus's counters, taken now.
    fn copy(&self, at: DateTime<Utc>) -> Vec<crate::store::bus_stats::BusCounts> {
        self.lock()
            .iter()
            .map(|(bus, c)| {
                let counters: BTreeMap<String, u64> = match &c.counted {
                    Counted::Modbus(stats) => {
                        let s = stats.snapshot();
                        [
                            ("requests", s.requests),
                            ("errors", s.errors),
                            ("timeouts", s.timeouts),
                            ("reconnects", s.reconnects),
                            ("discarded_bytes", s.discarded_bytes),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect()
                    }
                    Counted::Mqtt(stats) => {
                        let s = stats.snapshot();
                        [
                            ("connections", s.connections),
                            ("refused_oversized", s.refused_oversized),
                            ("retained_ignored", s.retained_ignored),
                            ("retained_used", s.retained_used),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect()
                    }
                };
                let transport = match c.transport {
                    Transport::Tcp => "tcp",
                    Transport::Rtu => "rtu",
                    Transport::Mqtt => "mqtt",
                };
                crate::store::bus_stats::BusCounts {
                    bus: bus.clone(),
                    transport: transport.to_owned(),
                    since: c.since,
                    at,
                    counters,
                }
            })
            .collect()
    }
}

/// How often the buses' counters are copied into the store (`linegate
/// status` shows their `as of`). Every 2 s, the copy of a 50-bus line was
/// 6 % of the agent's instructions (BENCHMARKS.md, "Uplink cost", round 6).
const BUS_COUNTERS_EVERY: Duration = Duration::from_secs(5);

/// How long after the polls' instant (the cadence's points) the copies for
/// `linegate status` are written.
const STATUS_COPY_OFFSET: Duration = Duration::from_millis(500);

/// Copies every running bus's counters into the store (`bus_stats`) every
/// [`BUS_COUNTERS_EVERY`], all buses in one transaction, and once more when
/// stopped. A store that cannot take them is said once per outage; the
/// copying goes on.
async fn copy_bus_counters(store: Store, counters: BusCounters, stop: CancellationToken) {
    // Half a second off the polls, as the other copies for `linegate status`.
    let mut tick = crate::cadence::interval_offset(BUS_COUNTERS_EVERY, STATUS_COPY_OFFSET);
    let mut failing = false;
    loop {
        let last = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        // Short of disk space they wait, like the last signal values: the
        // reserve is for state changes, periods and orders.
        if !store.health().accepts_telemetry() {
            if last {
                break;
            }
            continue;
        }
        let rows = counters.copy(Utc::now());
        let result = store
            .call(move |c| crate::store::bus_stats::write_all(c, &rows))
            .await;
        match result {
            Ok(()) if failing => {
                failing = false;
                info!("bus counters are stored again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "could not store the bus counters; `linegate status` shows older ones until the store takes them");
            }
            Err(e) => tracing::debug!(error = %e, "could not store the bus counters"),
        }
        if last {
            break;
        }
    }
}

/// Hands the order messages of every uplink connection to the order task
/// running now. A message that finds none (during a reload) is dropped
/// unacknowledged: the broker sends it again on the next connection.
async fn forward_orders(
    mut inbox: mpsc::Receiver<crate::orders::OrderMessage>,
    target: watch::Receiver<Option<mpsc::Sender<crate::orders::OrderMessage>>>,
) {
    while let Some(message) = inbox.recv().await {
        let to = target.borrow().clone();
        match to {
            Some(tx) => {
                if let Err(e) = tx.send(message).await {
                    drop(e);
                    warn!(
                        "order task gone while reloading: an order message is left unacknowledged"
                    );
                }
            }
            None => warn!("no order task while reloading: an order message is left unacknowledged"),
        }
    }
}

async fn save_snapshots(
    store: &Store,
    snapshots: Vec<(String, crate::machine::accounting::AccountSnapshot)>,
) {
    if let Err(e) = store
        .call(move |c| crate::machine::history::save_snapshots(c, &snapshots))
        .await
    {
        // Retried on the next tick; a store in trouble says so itself, once.
        if store.health().condition() == crate::store::health::Condition::Ok {
            error!(error = %e, "could not save machine snapshots");
        } else {
            tracing::debug!(error = %e, "could not save machine snapshots");
        }
    }
}

/// Applies the retention hourly. (The open periods are saved by the engine
/// through the event stream, with the changes they follow, and an
/// "observed up to" mark about twice a second: see `machine::history`.)
async fn housekeeping(store: Store, config: watch::Receiver<Arc<Config>>, stop: CancellationToken) {
    let mut retention_tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = retention_tick.tick() => {
                let days = config.borrow().store.retention_days;
                let result = store
                    .call(move |c| crate::machine::history::apply_retention(c, Utc::now(), days))
                    .await;
                match result {
                    Ok(0) => {}
                    Ok(n) => info!(rows = n, days, "old history deleted"),
                    Err(e) => warn!(error = %e, "retention failed"),
                }
            }
        }
    }
}

/// Copies what sources read onto the board and the store's last-value table,
/// then hands the sample on to the engine unchanged.
///
/// The last values are written by a task of their own, one flush at a time:
/// a store that is slow to write (another process holding its write lock,
/// which every write waits out for the busy timeout, or a slow disk) must
/// not hold up the samples. Waiting on it here stopped every bus polling
/// (their sample channel full), the engine saw no data and recorded running
/// machines as `offline`, and the bus loops went silent for the watchdog.
/// While a flush is still waiting, the values keep being noted and the next
/// flush takes them.
async fn tap(
    mut samples: mpsc::Receiver<Sample>,
    engine: mpsc::Sender<Sample>,
    board: Option<Board>,
    store: Store,
    engine_stop: CancellationToken,
    sparkplug: crate::sparkplug::SparkplugTap,
) {
    let mut pending = LastValues::default();
    // Half a second off the polls: a flush of every changed value holds the
    // store thread for a while, and a poll's readings would wait behind it.
    let mut flush = crate::cadence::interval_offset(Duration::from_secs(5), STATUS_COPY_OFFSET);
    let mut flushing: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            sample = samples.recv() => {
                let Some(sample) = sample else { break };
                note(&sample, board.as_ref(), &mut pending);
                sparkplug.offer(&sample);
                if engine.send(sample).await.is_err() {
                    break;
                }
            }
            _ = flush.tick() => {
                if flushing.as_ref().is_none_or(|f| f.is_finished()) {
                    let (store, rows) = (store.clone(), pending.take_rows());
                    flushing = Some(tokio::spawn(async move {
                        flush_last_values(&store, rows).await
                    }));
                }
            }
        }
    }
    if let Some(f) = flushing {
        let _ = f.await;
    }
    flush_last_values(&store, pending.take_rows()).await;
    engine_stop.cancel();
}

/// The last reading of every signal, and of every machine's failed polls,
/// as the store's `signal_value` table should have them. Noting a poll
/// overwrites entries in place (no allocation once a signal is known).
/// A flush writes the entries whose value or error changed, and refreshes
/// the read time of unchanged ones every [`UNCHANGED_REFRESH`]: at 50
/// machines x 20 signals, writing every row every flush was a third of the
/// agent's CPU.
#[derive(Default)]
struct LastValues {
    /// Machine → its signals' last readings.
    /// (Looked up for every sample: a fast hash of the machine's id.)
    signals: FxHashMap<String, NotedSignals>,
    /// Machine → why its last poll failed.
    unreachable: FxHashMap<String, Noted<String>>,
}

/// One machine's signals as last noted, in the order first read, column by
/// column. Every poll reads each last reading (has it changed?) and writes
/// each read time, so those two are columns of their own, apart from what
/// only a change or a flush touches: a poll touches a few cache lines of a
/// machine that has gone cold in the second since its last poll
/// (BENCHMARKS.md, "Polling"), not a whole row per signal.
#[derive(Default)]
struct NotedSignals {
    /// The names table of the last sample, and for each of its positions
    /// the column of that signal. A bus hands every poll of a machine the
    /// same table, so a poll finds its columns without comparing, or even
    /// reading, names.
    positions: SignalPositions,
    names: Vec<Arc<str>>,
    at: Vec<DateTime<Utc>>,
    what: Vec<crate::source::Reading>,
    due: Vec<Due>,
}

impl NotedSignals {
    fn note(&mut self, at: DateTime<Utc>, readings: &crate::source::Readings) {
        if self.positions.follow(readings.names()) {
            // Another table (an MQTT message, or the first poll): room for
            // every signal of it, exactly (pushed one by one, the columns
            // would double past it: kept per machine).
            let more = readings.names().len().saturating_sub(self.names.len());
            self.names.reserve_exact(more);
            self.at.reserve_exact(more);
            self.what.reserve_exact(more);
            self.due.reserve_exact(more);
        }
        for (position, r) in readings.positions() {
            // A signal not noted before is found by name, once.
            let names = &self.names;
            let column = self
                .positions
                .get_or_find(position, |name| names.iter().position(|k| k == name));
            match column {
                Some(c) => self.update(c, at, r),
                None => self.add(position, at, r),
            }
        }
    }

    fn update(&mut self, column: usize, at: DateTime<Utc>, r: &crate::source::Reading) {
        if let (Some(t), Some(what), Some(due)) = (
            self.at.get_mut(column),
            self.what.get_mut(column),
            self.due.get_mut(column),
        ) {
            *t = at;
            if what != r {
                *what = r.clone();
                due.changed = true;
            }
        }
    }

    /// A new column for the signal at `position`; its first reading is due.
    fn add(&mut self, position: usize, at: DateTime<Utc>, r: &crate::source::Reading) {
        let Some(name) = self.positions.table().get(position) else {
            return;
        };
        self.names.push(name.clone());
        self.at.push(at);
        self.what.push(r.clone());
        self.due.push(Due::new());
        self.positions.set(position, self.names.len() - 1);
    }
}

/// How stale `signal_value.read_at` may get for a value that does not change.
const UNCHANGED_REFRESH: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Whether a noted value is due to be written.
#[derive(Debug, Clone, Copy)]
struct Due {
    /// The value differs from the row in the store (or there is none).
    changed: bool,
    /// When the row last written goes stale: its read time plus
    /// [`UNCHANGED_REFRESH`] (kept as a deadline, so that a flush compares
    /// times instead of subtracting them for every signal).
    stale_at: Option<DateTime<Utc>>,
}

impl Due {
    fn new() -> Self {
        Due {
            changed: true,
            stale_at: None,
        }
    }

    /// Whether the next flush writes the value read at `at`; if so, it
    /// counts as written.
    fn take(&mut self, at: DateTime<Utc>) -> bool {
        let stale = self.stale_at.is_some_and(|s| at >= s);
        if !(self.changed || stale) {
            return false;
        }
        self.changed = false;
        self.stale_at = at.checked_add_signed(UNCHANGED_REFRESH);
        true
    }
}

/// Something last read at `at`.
struct Noted<T> {
    at: DateTime<Utc>,
    what: T,
    due: Due,
}

impl<T: PartialEq + Clone> Noted<T> {
    fn new(at: DateTime<Utc>, what: &T) -> Self {
        Self {
            at,
            what: what.clone(),
            due: Due::new(),
        }
    }

    fn update(&mut self, at: DateTime<Utc>, what: &T) {
        self.at = at;
        if self.what != *what {
            self.what = what.clone();
            self.due.changed = true;
        }
    }
}

/// One row of `signal_value` to write: machine, signal ("" for the
/// machine's own failed poll), value, error, read at. The names are shared
/// and the value kept as read; the text the table holds is made while the
/// row is written: at 1000 machines a flush of
/// 20,000 rows as text was five strings a row, 10 MB at once.
#[derive(Debug)]
struct SignalRow {
    machine: Arc<str>,
    signal: Arc<str>,
    value: Option<crate::source::Value>,
    error: Option<String>,
    at: DateTime<Utc>,
}

/// A row of `signal_value` as stored: machine, signal, value as JSON,
/// error, read at (RFC 3339, milliseconds).
#[cfg(test)]
type SignalRowText = (String, String, Option<String>, Option<String>, String);

#[cfg(test)]
impl SignalRow {
    fn text(&self) -> SignalRowText {
        (
            self.machine.to_string(),
            self.signal.to_string(),
            self.value
                .as_ref()
                .and_then(|v| serde_json::to_string(v).ok()),
            self.error.clone(),
            self.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
    }
}

impl LastValues {
    fn note(&mut self, sample: &Sample) {
        match &sample.content {
            SampleContent::Signals(readings) => match self.signals.get_mut(&sample.machine) {
                Some(s) => s.note(sample.at, readings),
                None => {
                    let mut s = NotedSignals::default();
                    s.note(sample.at, readings);
                    self.signals.insert(sample.machine.clone(), s);
                }
            },
            SampleContent::Unreachable { reason } => {
                match self.unreachable.get_mut(&sample.machine) {
                    Some(n) => n.update(sample.at, reason),
                    None => {
                        let n = Noted::new(sample.at, reason);
                        self.unreachable.insert(sample.machine.clone(), n);
                    }
                }
            }
        }
    }

    /// [`LastValues::take_rows`] as the table holds them.
    #[cfg(test)]
    fn take_texts(&mut self) -> Vec<SignalRowText> {
        self.take_rows().iter().map(SignalRow::text).collect()
    }

    /// The rows the store should get now.
    fn take_rows(&mut self) -> Vec<SignalRow> {
        let mut rows = Vec::new();
        for (machine, signals) in &mut self.signals {
            let mut shared: Option<Arc<str>> = None;
            let NotedSignals {
                names,
                at,
                what,
                due,
                ..
            } = signals;
            for (((name, at), what), due) in names.iter().zip(&*at).zip(&*what).zip(due) {
                if !due.take(*at) {
                    continue;
                }
                let (value, error) = match what {
                    Ok(v) => (Some(v.clone()), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                let machine = shared
                    .get_or_insert_with(|| Arc::from(machine.as_str()))
                    .clone();
                rows.push(SignalRow {
                    machine,
                    signal: name.clone(),
                    value,
                    error,
                    at: *at,
                });
            }
        }
        for (machine, n) in self.unreachable.iter_mut() {
            if n.due.take(n.at) {
                rows.push(SignalRow {
                    machine: Arc::from(machine.as_str()),
                    signal: Arc::from(""),
                    value: None,
                    error: Some(n.what.clone()),
                    at: n.at,
                });
            }
        }
        rows
    }
}

fn note(sample: &Sample, board: Option<&Board>, pending: &mut LastValues) {
    pending.note(sample);
    let Some(board) = board else { return };
    let Ok(mut board) = board.lock() else { return };
    // Looked up, not entered: an entry would copy the machine's id each poll.
    if !board.contains_key(&sample.machine) {
        board.insert(sample.machine.clone(), MachineBoard::default());
    }
    let Some(b) = board.get_mut(&sample.machine) else {
        return;
    };
    b.reads += 1;
    match &sample.content {
        SampleContent::Signals(readings) => {
            b.last_read = Some(sample.at);
            b.last_error = None;
            if b.signals.is_empty() {
                b.signals.reserve_exact(readings.len());
            }
            b.note_readings(readings, sample.at);
        }
        SampleContent::Unreachable { reason } => {
            b.failed_reads += 1;
            b.last_error = Some(reason.clone());
        }
    }
}

const UPSERT_SIGNAL: &str = "
INSERT INTO signal_value (machine, signal, value, error, read_at) VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (machine, signal) DO UPDATE SET
  value = COALESCE(excluded.value, signal_value.value),
  error = excluded.error, read_at = excluded.read_at";

async fn flush_last_values(store: &Store, rows: Vec<SignalRow>) {
    // Short of disk space the last values wait: they are a convenience for
    // `status`, and their rows must not eat the reserve.
    if rows.is_empty() || !store.health().accepts_telemetry() {
        return;
    }
    let result = store
        .call(move |conn| {
            // A copy for `linegate status`: a power cut may undo the last one.
            crate::store::commit_unsynced(conn, |tx| {
                let mut stmt = tx.prepare_cached(UPSERT_SIGNAL)?;
                for row in &rows {
                    let value = row
                        .value
                        .as_ref()
                        .and_then(|v| serde_json::to_string(v).ok());
                    let at = row.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                    stmt.execute(rusqlite::params![
                        &*row.machine,
                        &*row.signal,
                        value,
                        row.error,
                        at
                    ])?;
                }
                Ok(())
            })
        })
        .await;
    if let Err(e) = result {
        // The store logs its own condition once per change.
        tracing::debug!(error = %e, "could not store last signal values");
    }
}

/// Commits every machine event (with its outbox message) and wakes the uplink.
///
/// A store that cannot write (a full disk), or writes slowly (another process
/// holding its write lock), never blocks the engine: events
/// keep being taken, state changes and periods wait in order in bounded
/// memory ([`MAX_HELD_EVENTS`]) and are committed, with their seqs, once the
/// store takes them again; telemetry is dropped while the store is short of
/// space and counted (`dropped_telemetry`); events beyond the bound are
/// counted in `lost_events`. Both counts are written with the next commit.
async fn record(
    mut events: mpsc::Receiver<MachineEvent>,
    store: Store,
    mut config: watch::Receiver<Arc<Config>>,
    wake: Arc<Notify>,
    fresh: Arc<crate::uplink::FreshRows>,
    acked: Arc<crate::uplink::AckedRows>,
) {
    // Without an uplink nothing would ever drain the outbox: keep the history
    // locally (state changes, periods) and send nothing.
    let telemetry_of = |config: &Config| {
        let heartbeat_s = config.uplink.as_ref().map(|u| u.heartbeat_s).unwrap_or(60);
        let filter = crate::uplink::telemetry::TelemetryFilter::new(
            config.machine.iter().map(|m| &**m),
            heartbeat_s,
        );
        (config.uplink.is_some(), filter)
    };
    let (mut uplink, mut filter) = telemetry_of(&config.borrow_and_update());
    let health = store.health().clone();
    let mut held = Held::default();
    let mut open = true;
    let mut retry = Duration::from_millis(200);
    // Set while a commit failed: when to try again.
    let mut retry_at: Option<tokio::time::Instant> = None;
    // After the events channel closed: how long held events still get.
    let mut give_up_at: Option<tokio::time::Instant> = None;
    // Held marks and snapshots alone: when they are committed anyway.
    let mut linger_until: Option<tokio::time::Instant> = None;
    loop {
        // A reload: the uplink and the telemetry filter follow the new config.
        if config.has_changed().unwrap_or(false) {
            (uplink, filter) = telemetry_of(&config.borrow_and_update());
        }
        if held.is_empty() {
            if !open {
                break;
            }
            match events.recv().await {
                Some(e) => held.take(e, uplink, &mut filter, &health, retry_at.is_none()),
                None => break,
            }
        } else if let Some(at) = retry_at {
            if open {
                tokio::select! {
                    e = events.recv() => match e {
                        Some(e) => held.take(e, uplink, &mut filter, &health, false),
                        None => open = false,
                    },
                    _ = tokio::time::sleep_until(at) => retry_at = None,
                }
            } else {
                let deadline =
                    *give_up_at.get_or_insert_with(|| tokio::time::Instant::now() + SHUTDOWN_HOLD);
                if tokio::time::Instant::now() >= deadline {
                    let n = held.durable();
                    health.count_lost_events(n);
                    error!(
                        lost_events = n,
                        "stopping with state changes or periods the store could not take: they are lost (counted in lost_events, reported once the store works)"
                    );
                    return;
                }
                tokio::time::sleep_until(at.min(deadline)).await;
                retry_at = None;
            }
        }
        // Everything already waiting goes into the same transaction: one
        // fsync per batch, not per event.
        while open {
            match events.try_recv() {
                Ok(e) => held.take(e, uplink, &mut filter, &health, retry_at.is_none()),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        // A state change or period is committed with the snapshot the engine
        // sends right after it, so a crash never leaves a stored change newer
        // than the snapshot the next start resumes from.
        while open && retry_at.is_none() && held.ends_with_change() {
            match events.recv().await {
                Some(e) => held.take(e, uplink, &mut filter, &health, true),
                None => open = false,
            }
        }
        if retry_at.is_some() || held.is_empty() {
            continue;
        }
        // Marks and snapshots alone wait up to MARK_LINGER for company: a
        // line's machines are polled spread over the second, and a commit
        // (with its fsync) for every poll's mark cost more than all the
        // polling. Anything urgent, or the end of the events, commits them.
        if open && !held.is_urgent() {
            let until =
                *linger_until.get_or_insert_with(|| tokio::time::Instant::now() + MARK_LINGER);
            if tokio::time::Instant::now() < until {
                tokio::select! {
                    e = events.recv() => match e {
                        Some(e) => held.take(e, uplink, &mut filter, &health, true),
                        None => open = false,
                    },
                    _ = tokio::time::sleep_until(until) => {}
                }
                continue;
            }
        }
        linger_until = None;
        let n = held.commit_len(MAX_EVENTS_PER_COMMIT);
        let attempt: EventWork = held.work.iter().take(n).cloned().collect();
        let enqueued = attempt.iter().any(|(_, o)| o.is_some());
        let unstored = health.take_unstored();
        // While the store works on the commit (a slow disk, another process
        // holding the write lock for seconds), the engine's events keep being
        // taken: they join the held ones after those being committed, so the
        // engine never waits on the store, and its loop keeps beating.
        let deletions = acked.clone();
        let commit = store.call(move |conn| commit_events(conn, &attempt, unstored, &deletions));
        tokio::pin!(commit);
        let result = loop {
            tokio::select! {
                biased;
                r = &mut commit => break r,
                e = events.recv(), if open => match e {
                    Some(e) => held.take(e, uplink, &mut filter, &health, true),
                    None => open = false,
                },
            }
        };
        match result {
            Ok(committed) => {
                held.work.drain(..n);
                // The rows go to the uplink in memory when it can send them
                // as they are; otherwise it reads them from the store.
                match committed {
                    Some(rows) if !rows.is_empty() => fresh.push(rows),
                    Some(_) => {}
                    None if enqueued => wake.notify_one(),
                    None => {}
                }
                if retry > Duration::from_millis(200) {
                    info!(waiting = held.work.len(), "machine events stored again");
                }
                retry = Duration::from_millis(200);
            }
            Err(StoreError::Closed) => return,
            Err(e) => {
                health.give_back(unstored);
                // The store logs its condition once per change; here only
                // the first failure of a run of them.
                if retry == Duration::from_millis(200) {
                    error!(error = %e, held = held.work.len(), "could not store machine events; holding them in memory and retrying");
                }
                // Telemetry gives way: only state changes and periods wait.
                held.drop_telemetry(&health);
                retry_at = Some(tokio::time::Instant::now() + retry);
                // At most 5 s: held events are committed soon after space returns.
                retry = (retry * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Most state changes and periods held in memory while the store cannot
/// write (a few hundred bytes each): about a day of a 50-machine line.
const MAX_HELD_EVENTS: usize = 50_000;

/// How long marks and snapshots alone wait for other work to share their
/// commit. A crash loses at most this much more observed time to `offline`
/// than the engine's mark interval (`MARK_EVERY_MS`) alone would.
const MARK_LINGER: Duration = Duration::from_millis(250);

/// How long, after the engine stopped, held events still wait for the store.
const SHUTDOWN_HOLD: Duration = Duration::from_secs(5);

/// Events taken from the engine, not yet committed, in order.
#[derive(Default)]
struct Held {
    work: std::collections::VecDeque<(Option<Kept>, Option<crate::uplink::outbox::Outgoing>)>,
    /// Logged the overflow of this run of failures.
    overflow_logged: bool,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.work.is_empty()
    }

    /// State changes and periods held.
    fn durable(&self) -> u64 {
        self.work
            .iter()
            .filter(|(e, _)| e.as_ref().is_some_and(Kept::is_change))
            .count() as u64
    }

    /// Something held is worth a commit at once: a message for the uplink
    /// (every reading's way to the broker waits for its commit), a state
    /// change or a period. Marks and snapshots alone can wait.
    fn is_urgent(&self) -> bool {
        self.work
            .iter()
            .any(|(e, o)| o.is_some() || e.as_ref().is_some_and(Kept::is_change))
    }

    /// The last event held is a state change or period still waiting for
    /// the snapshot the engine sends right after it.
    fn ends_with_change(&self) -> bool {
        self.work
            .back()
            .is_some_and(|(e, _)| e.as_ref().is_some_and(Kept::is_change))
    }

    /// How many held events the next commit takes: at most `most`, but never
    /// a state change or period without the snapshot that follows it.
    fn commit_len(&self, most: usize) -> usize {
        let mut n = self.work.len().min(most);
        while n < self.work.len()
            && self
                .work
                .get(n - 1)
                .is_some_and(|(e, _)| e.as_ref().is_some_and(Kept::is_change))
        {
            n += 1;
        }
        n
    }

    /// Take one event from the engine. `store_well`: the last commit
    /// worked (otherwise telemetry is dropped at once, and counted).
    fn take(
        &mut self,
        event: MachineEvent,
        uplink: bool,
        filter: &mut crate::uplink::telemetry::TelemetryFilter,
        health: &crate::store::health::Health,
        store_well: bool,
    ) {
        if let MachineEvent::State(change) = &event {
            info!(
                machine = %change.machine,
                state = %change.state,
                prev = change.prev.map(|p| p.as_str()),
                reason = change.reason.as_deref(),
                "state change"
            );
        }
        let outgoing = match &event {
            _ if !uplink => None,
            MachineEvent::State(change) => Some(crate::uplink::message::state_message(change)),
            MachineEvent::Period(period) => Some(crate::uplink::message::period_message(period)),
            MachineEvent::Telemetry(t) => filter
                .offer(t, tokio::time::Instant::now())
                .map(|t| crate::uplink::message::telemetry_message(&t)),
            MachineEvent::Snapshot(_) | MachineEvent::Observed { .. } => None,
        };
        // An "observed up to" mark only narrows what a crash costs; while the
        // store fails, the next one after it works will do.
        if matches!(event, MachineEvent::Observed { .. }) && !store_well {
            return;
        }
        let keep = !matches!(event, MachineEvent::Telemetry(_));
        if !keep {
            if outgoing.is_some() {
                if store_well && health.accepts_telemetry() {
                    self.work.push_back((None, outgoing));
                } else {
                    health.count_unstored_telemetry(1);
                }
            }
            return;
        }
        if self.work.len() >= MAX_HELD_EVENTS {
            health.count_lost_events(1);
            if !self.overflow_logged {
                self.overflow_logged = true;
                error!(
                    held = self.work.len(),
                    "the store has not taken machine events for too long: memory is full, new state changes and periods are lost (counted in lost_events)"
                );
            }
            return;
        }
        if self.work.is_empty() {
            self.overflow_logged = false;
        }
        self.work.push_back((Some(Kept::of(event)), outgoing));
    }

    /// Drop the telemetry waiting (counted), keeping events in order.
    fn drop_telemetry(&mut self, health: &crate::store::health::Health) {
        let before = self.work.len();
        self.work.retain(|(e, _)| e.is_some());
        health.count_unstored_telemetry((before - self.work.len()) as u64);
    }
}

/// A held event as its commit stores it.
#[derive(Clone)]
enum Kept {
    Event(MachineEvent),
    /// A snapshot, encoded when taken: the engine's tick sends every
    /// machine's in the wake-up that sends the line's requests, so the
    /// encoding is done while their replies are on their way, and the
    /// commit carrying those readings only binds it.
    Snapshot(crate::machine::history::SnapshotRow),
}

impl Kept {
    fn of(event: MachineEvent) -> Self {
        match event {
            MachineEvent::Snapshot(snap) => match crate::machine::history::SnapshotRow::of(&snap) {
                Ok(row) => Kept::Snapshot(row),
                // Kept as it is: the commit tries again and says why it fails.
                Err(_) => Kept::Event(MachineEvent::Snapshot(snap)),
            },
            e => Kept::Event(e),
        }
    }

    /// A state change or a period (which its snapshot must follow into the store).
    fn is_change(&self) -> bool {
        matches!(
            self,
            Kept::Event(MachineEvent::State(_) | MachineEvent::Period(_))
        )
    }
}

type EventWork = Vec<(Option<Kept>, Option<crate::uplink::outbox::Outgoing>)>;

/// Commit `work`; the outbox rows it enqueued, for `uplink::fresh`, or
/// `None` when one of them is not to be handed over (the uplink then reads
/// the store).
fn commit_events(
    conn: &mut rusqlite::Connection,
    work: &EventWork,
    unstored: crate::store::health::Unstored,
    acked: &crate::uplink::AckedRows,
) -> Result<Option<Vec<crate::uplink::outbox::OutboxRow>>, StoreError> {
    // The rows the broker acknowledged since the last commit are deleted in
    // this one (see `uplink::acked`); given back if it fails.
    let seqs = acked.take();
    let result = commit_events_and_deletions(conn, work, unstored, &seqs);
    match result {
        Ok((rows, deleted)) => {
            if let Some(k) = deleted {
                acked.deleted(k);
            }
            Ok(rows)
        }
        Err(e) => {
            acked.give_back(seqs);
            Err(e)
        }
    }
}

type Committed = (
    Option<Vec<crate::uplink::outbox::OutboxRow>>,
    Option<crate::uplink::outbox::OutboxCounts>,
);

fn commit_events_and_deletions(
    conn: &mut rusqlite::Connection,
    work: &EventWork,
    unstored: crate::store::health::Unstored,
    acked: &[u64],
) -> Result<Committed, StoreError> {
    let tx = conn.transaction()?;
    // Marks go in one statement at the end, in order (each machine's last
    // wins, as one by one): a commit holds one per machine per second.
    let mut marks = Vec::new();
    // The commit's messages are one batch (nothing else here enqueues).
    let rows = crate::uplink::outbox::enqueue_all(&tx, |batch| {
        let mut rows = Some(Vec::new());
        for (event, outgoing) in work {
            // A period closed again from an older snapshot after a crash is
            // already stored (and sent): record() says so, and it is not sent twice.
            let new = match event {
                Some(Kept::Event(MachineEvent::Observed { machine, to })) => {
                    marks.push((machine.as_str(), *to));
                    false
                }
                Some(Kept::Event(e)) => crate::machine::history::record(&tx, e)?,
                Some(Kept::Snapshot(row)) => {
                    crate::machine::history::save_snapshot_row(&tx, row)?;
                    false
                }
                None => true,
            };
            if let (true, Some(out)) = (new, outgoing) {
                let (_, row) = batch.enqueue_row(out)?;
                rows = rows.zip(row).map(|(mut rows, row)| {
                    rows.push(row);
                    rows
                });
            }
        }
        Ok(rows)
    })?;
    crate::machine::history::record_marks(&tx, &marks)?;
    crate::uplink::outbox::count_unstored_telemetry(&tx, unstored.telemetry)?;
    crate::store::health::add_lost_events(&tx, unstored.lost_events)?;
    let deleted = if acked.is_empty() {
        None
    } else {
        Some(crate::uplink::outbox::delete_rows(&tx, acked)?)
    };
    tx.commit()?;
    Ok((rows, deleted))
}

/// Most machine events committed in one transaction.
const MAX_EVENTS_PER_COMMIT: usize = 512;

async fn watch_view(mut rx: watch::Receiver<MachineView>, board: Board, stop: CancellationToken) {
    loop {
        {
            let v = rx.borrow_and_update().clone();
            if let Ok(mut board) = board.lock() {
                let b = board.entry(v.machine.clone()).or_default();
                b.state = Some(v.state);
                b.since = Some(v.since);
                b.reason = v.reason.clone();
                b.produced_total = v.produced_total;
                b.good_total = v.good_total;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = rx.changed() => if changed.is_err() { break },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{SignalError, Value};

    fn telemetry_message(n: usize) -> crate::uplink::outbox::Outgoing {
        crate::uplink::outbox::Outgoing {
            topic_suffix: format!("m/m{n}/telemetry"),
            class: crate::uplink::MessageClass::Telemetry,
            retain: false,
            ts: Utc::now(),
            body: serde_json::Map::new(),
        }
    }

    #[test]
    fn a_recorder_commit_deletes_the_acknowledged_rows_and_gives_them_back_when_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let path = store.path().to_path_buf();
        let acked = crate::uplink::AckedRows::default();
        let none = crate::store::health::Unstored::default();
        // Three messages committed; the broker acknowledges the first two.
        let work: EventWork = (0..3).map(|i| (None, Some(telemetry_message(i)))).collect();
        let mut conn = crate::store::open_connection(&path).unwrap();
        commit_events(&mut conn, &work, none, &acked).unwrap();
        let seqs: Vec<u64> = conn
            .prepare("SELECT seq FROM outbox ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|s| s.unwrap() as u64)
            .collect();
        assert_eq!(seqs.len(), 3);
        acked.push(seqs[0]);
        acked.push(seqs[1]);

        // Another process holds the write lock: the commit fails, and the
        // seqs wait again (their rows are still there).
        conn.busy_timeout(Duration::from_millis(10)).unwrap();
        let other = crate::store::open_connection(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(commit_events(&mut conn, &work[..1].to_vec(), none, &acked).is_err());
        other.execute_batch("ROLLBACK").unwrap();
        let depth = |c: &rusqlite::Connection| crate::uplink::outbox::counts(c).unwrap().depth;
        assert_eq!(depth(&conn), 3);
        assert!(acked.take_counts().is_none());

        // The next commit (a mark alone) deletes them with its own work.
        let mark: EventWork = vec![(
            Some(Kept::Event(MachineEvent::Observed {
                machine: "m0".into(),
                to: Utc::now(),
            })),
            None,
        )];
        commit_events(&mut conn, &mark, none, &acked).unwrap();
        assert_eq!(depth(&conn), 1);
        assert_eq!(acked.take_counts().map(|k| k.depth), Some(1));
        assert!(acked.take().is_empty(), "taken by the commit");
        let left: i64 = conn
            .query_row("SELECT seq FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left as u64, seqs[2]);
    }

    #[test]
    fn the_board_finds_each_signal_by_position_or_name_and_updates_it_in_place() {
        let mut b = MachineBoard::default();
        let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap_or_default();
        // A bus's table: the same `Arc` for every poll.
        let table: crate::source::SignalNames =
            Arc::new(["speed", "count", "alarm"].map(Arc::from).to_vec());
        let poll = |speed: i64, count: u64| {
            let mut r = crate::source::Readings::of_signals(table.clone());
            r.push_at(0, Ok(Value::Int(speed)));
            r.push_at(1, Ok(Value::UInt(count)));
            r.push_at(2, Ok(Value::Bool(false)));
            r
        };
        b.note_readings(&poll(7, 3), at(1));
        let sorted: Vec<&str> = b.signals.iter().map(|(n, _)| &**n).collect();
        assert_eq!(sorted, ["alarm", "count", "speed"]);
        b.note_readings(&poll(8, 3), at(2));
        assert_eq!(b.signals.len(), 3);
        let speed = b.reading("speed").expect("speed was read");
        assert_eq!(speed.reading, Ok(Value::Int(8)));
        assert_eq!(speed.at, at(2));
        assert_eq!(b.reading("count").map(|l| l.at), Some(at(2)));
        assert!(b.reading("temperature").is_none());
        // Another table (an MQTT message): found by name; a new signal goes
        // in its place by name and the bus's positions are learnt again.
        let other: crate::source::Readings = [
            ("temperature", Ok(Value::Float(61.5))),
            ("count", Err(SignalError::BadValue("NaN".into()))),
        ]
        .into_iter()
        .collect();
        b.note_readings(&other, at(3));
        let sorted: Vec<&str> = b.signals.iter().map(|(n, _)| &**n).collect();
        assert_eq!(sorted, ["alarm", "count", "speed", "temperature"]);
        assert!(b.reading("count").unwrap().reading.is_err());
        b.note_readings(&poll(9, 4), at(4));
        assert_eq!(b.reading("speed").unwrap().reading, Ok(Value::Int(9)));
        assert_eq!(b.reading("count").unwrap().reading, Ok(Value::UInt(4)));
        assert_eq!(b.reading("temperature").unwrap().at, at(3));
        assert_eq!(b.signals.len(), 4);
    }

    fn signals(machine: &str, at_s: i64, readings: &[(&str, crate::source::Reading)]) -> Sample {
        Sample {
            machine: machine.into(),
            at: DateTime::from_timestamp(at_s, 0).unwrap(),
            mono: tokio::time::Instant::now(),
            content: SampleContent::Signals(
                readings
                    .iter()
                    .map(|(n, r)| (n.to_string(), r.clone()))
                    .collect(),
            ),
        }
    }

    fn state_change(n: i64) -> MachineEvent {
        MachineEvent::State(crate::machine::StateChange {
            machine: "press07".into(),
            state: MachineState::Running,
            prev: None,
            since: DateTime::from_timestamp(n, 0).unwrap(),
            reason: None,
        })
    }

    fn telemetry(n: i64) -> MachineEvent {
        MachineEvent::Telemetry(crate::machine::Telemetry {
            machine: "press07".into(),
            at: DateTime::from_timestamp(n, 0).unwrap(),
            values: [("count", Value::Int(n))].into_iter().collect(),
        })
    }

    #[test]
    fn held_events_keep_their_order_drop_telemetry_first_and_count_what_overflows() {
        let health = crate::store::health::Health::default();
        let mut filter = crate::uplink::telemetry::TelemetryFilter::new(&[], 60);
        let mut held = Held::default();
        // The store works: telemetry waits with the events.
        held.take(state_change(1), true, &mut filter, &health, true);
        held.take(telemetry(2), true, &mut filter, &health, true);
        assert_eq!(held.work.len(), 2);
        // A commit failed: the telemetry waiting gives way, counted.
        held.drop_telemetry(&health);
        assert_eq!(held.work.len(), 1);
        assert_eq!(health.unstored().telemetry, 1);
        // While it fails, new telemetry is counted, not held.
        held.take(telemetry(3), true, &mut filter, &health, false);
        assert_eq!(health.unstored().telemetry, 2);
        // Events wait in order up to the bound; beyond it they are counted.
        for n in 0..(MAX_HELD_EVENTS as i64 + 2) {
            held.take(state_change(10 + n), true, &mut filter, &health, false);
        }
        assert_eq!(held.work.len(), MAX_HELD_EVENTS);
        assert_eq!(health.unstored().lost_events, 3);
        let sinces: Vec<i64> = held
            .work
            .iter()
            .take(3)
            .map(|(e, _)| match e {
                Some(Kept::Event(MachineEvent::State(c))) => c.since.timestamp(),
                _ => -1,
            })
            .collect();
        assert_eq!(sinces, [1, 10, 11], "oldest first, in the order taken");
        assert_eq!(held.durable(), MAX_HELD_EVENTS as u64);
    }

    #[test]
    fn last_values_follow_a_bus_names_table_by_position_and_other_samples_by_name() {
        use crate::source::{Readings, SignalNames};
        let table: SignalNames = Arc::new(vec!["a".into(), "b".into(), "c".into()]);
        // A bus reads in plan order, not in the table's.
        let poll = |at_s: i64, a: i64, b: i64, c: i64| {
            let mut r = Readings::of_signals(table.clone());
            r.push_at(2, Ok(Value::Int(c)));
            r.push_at(0, Ok(Value::Int(a)));
            r.push_at(1, Ok(Value::Int(b)));
            Sample {
                machine: "m1".into(),
                at: DateTime::from_timestamp(at_s, 0).unwrap(),
                mono: tokio::time::Instant::now(),
                content: SampleContent::Signals(r),
            }
        };
        let at = |s: i64| {
            DateTime::from_timestamp(s, 0)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let row = |name: &str, v: i64, s: i64| -> SignalRowText {
            ("m1".into(), name.into(), Some(v.to_string()), None, at(s))
        };
        let mut last = LastValues::default();
        last.note(&poll(10, 1, 2, 3));
        let mut rows = last.take_texts();
        rows.sort();
        assert_eq!(
            rows,
            vec![row("a", 1, 10), row("b", 2, 10), row("c", 3, 10)]
        );
        last.note(&poll(11, 1, 5, 3));
        assert_eq!(last.take_texts(), vec![row("b", 5, 11)]);
        // A sample with a table of its own (as MQTT sends) finds the
        // signal by name; the bus's next poll still lands in the right place.
        last.note(&signals("m1", 12, &[("c", Ok(Value::Int(9)))]));
        assert_eq!(last.take_texts(), vec![row("c", 9, 12)]);
        last.note(&poll(13, 4, 5, 9));
        assert_eq!(last.take_texts(), vec![row("a", 4, 13)]);
        assert!(last.take_texts().is_empty());
    }

    #[test]
    fn last_values_keep_every_signal_of_partial_updates_and_write_changes_and_stale_rows() {
        let mut last = LastValues::default();
        last.note(&signals(
            "m1",
            10,
            &[("a", Ok(Value::Int(1))), ("b", Ok(Value::Int(2)))],
        ));
        // A partial update (MQTT) of `a` only: `b` must still be flushed.
        last.note(&signals("m1", 11, &[("a", Ok(Value::Int(3)))]));
        last.note(&signals(
            "m2",
            12,
            &[("c", Err(SignalError::BadValue("f32 NaN".into())))],
        ));
        last.note(&Sample {
            machine: "m3".into(),
            at: DateTime::from_timestamp(13, 0).unwrap(),
            mono: tokio::time::Instant::now(),
            content: SampleContent::Unreachable {
                reason: "timeout".into(),
            },
        });
        let mut rows = last.take_texts();
        rows.sort();
        let at = |s: i64| {
            DateTime::from_timestamp(s, 0)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        assert_eq!(
            rows,
            vec![
                ("m1".into(), "a".into(), Some("3".into()), None, at(11)),
                ("m1".into(), "b".into(), Some("2".into()), None, at(10)),
                (
                    "m2".into(),
                    "c".into(),
                    None,
                    Some("bad value: f32 NaN".into()),
                    at(12)
                ),
                ("m3".into(), "".into(), None, Some("timeout".into()), at(13)),
            ]
        );
        // Nothing new: nothing to write.
        assert!(last.take_texts().is_empty());
        // Read again unchanged: not written (yet); changed: written.
        last.note(&signals(
            "m1",
            14,
            &[("a", Ok(Value::Int(3))), ("b", Ok(Value::Int(5)))],
        ));
        assert_eq!(
            last.take_texts(),
            vec![("m1".into(), "b".into(), Some("5".into()), None, at(14))]
        );
        // An unchanged value gets its read time refreshed once it is a minute old.
        last.note(&signals("m1", 70, &[("a", Ok(Value::Int(3)))]));
        assert!(
            last.take_texts().is_empty(),
            "a was written at 11: 59 s ago"
        );
        last.note(&signals("m1", 71, &[("a", Ok(Value::Int(3)))]));
        assert_eq!(
            last.take_texts(),
            vec![("m1".into(), "a".into(), Some("3".into()), None, at(71))]
        );
        assert!(last.take_texts().is_empty());
        // The machine fails again for the same reason: refreshed only after a minute.
        let down = |s: i64| Sample {
            machine: "m3".into(),
            at: DateTime::from_timestamp(s, 0).unwrap(),
            mono: tokio::time::Instant::now(),
            content: SampleContent::Unreachable {
                reason: "timeout".into(),
            },
        };
        last.note(&down(20));
        assert!(last.take_texts().is_empty());
        last.note(&down(80));
        assert_eq!(
            last.take_texts(),
            vec![("m3".into(), "".into(), None, Some("timeout".into()), at(80))]
        );
        // A signal new to the machine, between known ones (MQTT sources
        // send what they have), next to a changed one.
        last.note(&signals(
            "m1",
            90,
            &[("aa", Ok(Value::Int(7))), ("b", Ok(Value::Int(6)))],
        ));
        let mut rows = last.take_texts();
        rows.sort();
        assert_eq!(
            rows,
            vec![
                ("m1".into(), "aa".into(), Some("7".into()), None, at(90)),
                ("m1".into(), "b".into(), Some("6".into()), None, at(90)),
            ]
        );
    }
}
