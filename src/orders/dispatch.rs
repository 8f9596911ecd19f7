//! The order task: takes order messages from the uplink into the book,
//! releases each machine's next order through its bus when the interlock
//! allows, and follows the machine's view to running and completed.
//!
//! It only moves data: decisions are in `command` (what may be written),
//! `level` (in what order) and `book` (what state follows). It never writes
//! a register itself: it hands a [`WriteRequest`] to the machine's bus task,
//! which writes, reads back and compares. Only the registers of the
//! machine's `[machine.orders]` section are ever asked for.
//!
//! Interlock: a machine gets its next order only when its view is `idle` or
//! `setup`, no order is on it (released or running) and no write for it is
//! in flight. Release writes order number, product code, quantity,
//! parameters and, last, start = true; a failed batch is retried with
//! backoff and after the last attempt the order is aborted with the reason.
//! Every write is audited in SQLite before it is made and after it is
//! answered.
//!
//! A message is acknowledged (`committed` fires) only after its answer is
//! committed. When the store cannot write (a full disk with the reserve
//! spent), every change of the book (an order message, a machine view, a
//! write result) is held in memory in order, bounded, and tried again with
//! back-off; its status rows go out once it commits, so the statuses of one
//! order keep their order and a held message is acknowledged only then.
//! Nothing is released while changes are held (the book is not current).
//! Beyond the bound, order messages are left unacknowledged (the broker
//! sends them again on the next connection) and other changes are counted
//! in `lost_events`. A store error never ends the task.
//!
//! While an order is on its machine, its `ideal_cycle_s` (or none: the
//! config's) is handed to the state engine for the performance KPI; when
//! it leaves (completed, held, cancelled) the config's applies again.
//!
//! Every `forecast.every_ms`, and right after an order arrives or is
//! released, each machine's outlook is refreshed (`outlook::refresh`: its
//! forecasts and capacity, published when they are news).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::machine::engine::EngineHandle;
use crate::machine::{MachineState, MachineView};
use crate::orders::book::{self, AuditEntry, Counts, Enqueue, StopRequest};
use crate::orders::command::{self, NamedWrite};
use crate::orders::OrderMessage;
use crate::source::modbus::{WriteError, WriteRequest};
use crate::store::Store;

/// Timing of the order task, and where ideal cycle times go.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// Attempts of one write batch before the order is aborted.
    pub write_attempts: u32,
    /// First pause between attempts; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long to wait for the bus to answer one batch.
    pub write_timeout: Duration,
    /// Least time between two progress-only statuses of a running order.
    pub progress_every: Duration,
    /// How often due dates are checked for `late`.
    pub late_check: Duration,
    /// The state engine, told the ideal cycle time of the order on each
    /// machine (performance KPI). `None`: order cycle times go nowhere.
    pub engine: Option<EngineHandle>,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        Self {
            write_attempts: 4,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            write_timeout: Duration::from_secs(10),
            progress_every: Duration::from_secs(30),
            late_check: Duration::from_secs(5),
            engine: None,
        }
    }
}

/// The order task of the agent: statuses go to the real outbox, order
/// cycle times to the state engine.
#[allow(clippy::too_many_arguments)]
pub async fn run_orders(
    config: Arc<Config>,
    store: Store,
    inbox: mpsc::Receiver<OrderMessage>,
    views: HashMap<String, watch::Receiver<MachineView>>,
    writers: HashMap<String, mpsc::Sender<Box<WriteRequest>>>,
    engine: EngineHandle,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    run_orders_with(
        config,
        store,
        inbox,
        views,
        writers,
        wake,
        shutdown,
        crate::uplink::outbox::enqueue,
        DispatchOptions {
            engine: Some(engine),
            ..DispatchOptions::default()
        },
    )
    .await
}

/// A write batch that finished (or gave up).
#[derive(Debug)]
enum WriteDone {
    Release {
        order_id: String,
        revision: u32,
        machine: String,
        /// Machine totals when the release began (the machine was idle).
        baseline: Counts,
        result: Result<(), String>,
    },
    Stop {
        stop: StopRequest,
        result: Result<(), String>,
    },
    /// Shut down before the batch was made; the order stays as it was.
    Abandoned { machine: String },
}

impl WriteDone {
    fn machine(&self) -> &str {
        match self {
            WriteDone::Release { machine, .. } | WriteDone::Abandoned { machine } => machine,
            WriteDone::Stop { stop, .. } => &stop.machine,
        }
    }
}

/// Everything the task's handlers share.
struct Dispatcher {
    config: Arc<Config>,
    store: Store,
    writers: HashMap<String, mpsc::Sender<Box<WriteRequest>>>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    enqueue: Enqueue,
    options: DispatchOptions,
    /// Latest view of each machine.
    latest: HashMap<String, MachineView>,
    /// Machine → order with a write batch in flight. One batch per machine.
    busy: HashMap<String, String>,
    done_tx: mpsc::Sender<WriteDone>,
    /// Book changes the store has not taken yet (a full disk), in order.
    held: HeldBook,
    /// The shift calendar forecasts walk through (`None`: all time planned).
    calendar: Option<Arc<crate::machine::shift::ShiftCalendar>>,
    outlook: crate::orders::outlook::Settings,
    /// Capacity last published per machine, and when (compared for news).
    capacity: HashMap<String, (crate::orders::capacity::Capacity, chrono::DateTime<Utc>)>,
}

/// The order task with an explicit outbox and timing (tests, embedding).
#[allow(clippy::too_many_arguments)]
pub async fn run_orders_with(
    config: Arc<Config>,
    store: Store,
    mut inbox: mpsc::Receiver<OrderMessage>,
    views: HashMap<String, watch::Receiver<MachineView>>,
    writers: HashMap<String, mpsc::Sender<Box<WriteRequest>>>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    enqueue: Enqueue,
    options: DispatchOptions,
) {
    // Orders still in the book (also of machines whose config no longer
    // takes any: they are aborted with the reason on their first turn).
    let in_book = match store.call(|c| book::machines_with_orders(c)).await {
        Ok(m) => m,
        Err(e) => {
            error!(error = %e, "cannot read the order book");
            Vec::new()
        }
    };
    // One forwarder per machine view, so the loop waits on a single channel.
    // Only machines that take orders (or have some in the book) are
    // followed: the others can never get one, and following them would
    // cost a store query on every change of their view.
    let (view_tx, mut view_rx) = mpsc::channel::<MachineView>(64);
    let views = views.into_iter().filter(|(machine, _)| {
        config.machine(machine).is_some_and(|m| m.orders.is_some()) || in_book.contains(machine)
    });
    for (machine, mut rx) in views {
        let tx = view_tx.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let first = rx.borrow_and_update().clone();
            if tx.send(first).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            debug!(machine = %machine, "machine view closed");
                            return;
                        }
                        let view = rx.borrow_and_update().clone();
                        if tx.send(view).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    drop(view_tx);

    let (done_tx, mut done_rx) = mpsc::channel::<WriteDone>(16);
    let calendar = match crate::machine::engine::calendar(&config) {
        Ok(c) => c,
        Err(e) => {
            // Validated at load; should it still fail, forecasts count all time as planned.
            error!(error = %e, "shift calendar unusable for forecasts; all time counts as planned");
            None
        }
    };
    let outlook = crate::orders::outlook::Settings::of(&config.forecast);
    let forecast_every = Duration::from_millis(config.forecast.every_ms.max(100));
    let mut d = Dispatcher {
        calendar,
        outlook,
        capacity: HashMap::new(),
        config,
        store,
        writers,
        wake,
        shutdown: shutdown.clone(),
        enqueue,
        options,
        latest: HashMap::new(),
        busy: HashMap::new(),
        done_tx,
        held: HeldBook::default(),
    };
    if !in_book.is_empty() {
        info!(machines = ?in_book, "orders reloaded from the store");
        for machine in in_book {
            let id = machine.clone();
            if let Ok(Some(on)) = d.store.call(move |c| book::current(c, &id)).await {
                d.ideal_cycle(&machine, on.ideal_cycle_s).await;
            }
        }
    }
    d.late().await;

    let mut tick = tokio::time::interval(d.options.late_check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut forecast_tick = tokio::time::interval(forecast_every);
    forecast_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inbox_open = true;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = done_rx.recv() => {
                let machine = done.machine().to_owned();
                d.write_done(done).await;
                d.consider(&machine).await;
                d.refresh_outlook(&machine).await;
            }
            Some(view) = view_rx.recv() => {
                let machine = view.machine.clone();
                d.observe(view).await;
                d.consider(&machine).await;
            }
            msg = inbox.recv(), if inbox_open => match msg {
                Some(msg) => {
                    let machines = d.intake(msg).await;
                    for m in machines {
                        d.consider(&m).await;
                        d.refresh_outlook(&m).await;
                    }
                }
                None => inbox_open = false,
            },
            _ = tokio::time::sleep_until(d.held.retry_at), if !d.held.is_empty() => {
                if d.replay_held().await {
                    let machines: Vec<String> = d.latest.keys().cloned().collect();
                    for m in machines {
                        d.consider(&m).await;
                    }
                }
            }
            _ = forecast_tick.tick() => {
                let machines: Vec<String> = d
                    .config
                    .machine
                    .iter()
                    .filter(|m| m.orders.is_some())
                    .map(|m| m.id.clone())
                    .collect();
                for m in machines {
                    d.refresh_outlook(&m).await;
                }
            }
            _ = tick.tick() => {
                d.late().await;
                let machines: Vec<String> = d.latest.keys().cloned().collect();
                for m in machines {
                    d.consider(&m).await;
                }
            }
        }
    }

    // Let batches in flight finish and be recorded: a start bit written but
    // not recorded would release the same order twice after a restart.
    let deadline = tokio::time::Instant::now() + d.options.write_timeout;
    while !d.busy.is_empty() {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(done)) => d.write_done(done).await,
            _ => {
                warn!(
                    writes = d.busy.len(),
                    "order writes still in flight at shutdown"
                );
                break;
            }
        }
    }
    // Book changes still held get one last try; what the store still does
    // not take is lost (counted). Held order messages are not acknowledged:
    // the broker sends them again.
    if !d.held.is_empty() {
        d.replay_held().await;
        let lost = d.held.statuses();
        if lost > 0 {
            d.store.health().count_lost_events(lost);
            error!(
                lost_events = lost,
                "stopping with order changes the store could not take: they are lost (counted in lost_events)"
            );
        }
    }
}

impl Dispatcher {
    /// Parse, commit the answer, then acknowledge. Returns the machines whose queue changed.
    async fn intake(&mut self, msg: OrderMessage) -> Vec<String> {
        self.book(BookChange::Intake {
            msg,
            now: Utc::now(),
        })
        .await
    }

    /// Follow the machine's view for the order on it.
    async fn observe(&mut self, view: MachineView) {
        self.latest.insert(view.machine.clone(), view.clone());
        if self.busy.contains_key(&view.machine) {
            // A release or stop is being written; its result sets the baseline.
            return;
        }
        self.book(BookChange::Observe {
            view,
            now: Utc::now(),
        })
        .await;
    }

    /// Make a change of the book, or hold it behind the ones already held
    /// (the statuses of one order go out in order). Returns the machines
    /// whose queue changed.
    async fn book(&mut self, change: BookChange) -> Vec<String> {
        if !self.held.is_empty() {
            self.held.push(change, self.store.health());
            return Vec::new();
        }
        match self.apply(change).await {
            Ok(machines) => machines,
            Err((change, e)) => {
                error!(error = %e, "cannot record an order change; holding it in memory and retrying");
                self.held.push(change, self.store.health());
                self.held.failed();
                Vec::new()
            }
        }
    }

    /// Try the held changes again, oldest first. True when none is left.
    async fn replay_held(&mut self) -> bool {
        while let Some(change) = self.held.work.pop_front() {
            match self.apply(change).await {
                // The caller considers every machine once all are stored.
                Ok(_) => {}
                Err((change, e)) => {
                    self.held.work.push_front(change);
                    if self.held.retry <= HELD_RETRY_MIN * 2 {
                        warn!(error = %e, held = self.held.work.len(), "order changes still not stored; retrying");
                    }
                    self.held.failed();
                    return false;
                }
            }
        }
        info!("order changes stored again");
        self.held.retry = HELD_RETRY_MIN;
        self.held.overflow_logged = false;
        true
    }

    /// One change of the book in its own transaction, and what follows it
    /// once committed. On a store error the change comes back untouched.
    async fn apply(
        &mut self,
        change: BookChange,
    ) -> Result<Vec<String>, (BookChange, crate::store::StoreError)> {
        let enqueue = self.enqueue;
        match change {
            BookChange::Intake { msg, now } => {
                let parsed = command::parse(&msg.payload, &self.config);
                let busy: HashSet<String> = self.busy.values().cloned().collect();
                let result = self
                    .store
                    .call(move |c| book::intake(c, enqueue, parsed, &|id| busy.contains(id), now))
                    .await;
                match result {
                    Ok(outcome) => {
                        // Acknowledge only now: the answer is on disk.
                        let _ = msg.committed.send(());
                        if outcome.statuses > 0 {
                            self.wake.notify_one();
                        }
                        for stop in outcome.stops {
                            self.start_stop(stop);
                        }
                        Ok(outcome.machines)
                    }
                    // `committed` is kept: acknowledged once the answer commits.
                    Err(e) => Err((BookChange::Intake { msg, now }, e)),
                }
            }
            BookChange::Observe { view, now } => {
                let every = chrono::Duration::from_std(self.options.progress_every)
                    .unwrap_or(chrono::Duration::MAX);
                let machine = view.machine.clone();
                let v = view.clone();
                match self
                    .store
                    .call(move |c| book::observe(c, enqueue, &v, every, now))
                    .await
                {
                    Ok(Some(done)) => {
                        info!(machine = %machine, order = %done.order_id, produced = done.progress.produced, "order completed");
                        self.wake.notify_one();
                        self.ideal_cycle(&machine, None).await;
                        Ok(Vec::new())
                    }
                    Ok(None) => {
                        self.wake.notify_one();
                        Ok(Vec::new())
                    }
                    Err(e) => Err((BookChange::Observe { view, now }, e)),
                }
            }
            BookChange::Released {
                order_id,
                revision,
                machine,
                baseline,
                now,
            } => {
                let id = order_id.clone();
                let r = self
                    .store
                    .call(move |c| book::mark_released(c, enqueue, &id, revision, baseline, now))
                    .await;
                match r {
                    Ok(row) => {
                        if let Some(row) = row {
                            self.ideal_cycle(&machine, row.ideal_cycle_s).await;
                        }
                        self.wake.notify_one();
                        Ok(Vec::new())
                    }
                    Err(e) => Err((
                        BookChange::Released {
                            order_id,
                            revision,
                            machine,
                            baseline,
                            now,
                        },
                        e,
                    )),
                }
            }
            BookChange::Aborted {
                order_id,
                revision,
                reason,
                now,
            } => {
                let (id, why) = (order_id.clone(), reason.clone());
                match self
                    .store
                    .call(move |c| book::mark_aborted(c, enqueue, &id, revision, why, now))
                    .await
                {
                    Ok(_) => {
                        self.wake.notify_one();
                        Ok(Vec::new())
                    }
                    Err(e) => Err((
                        BookChange::Aborted {
                            order_id,
                            revision,
                            reason,
                            now,
                        },
                        e,
                    )),
                }
            }
            BookChange::Stopped {
                stop,
                totals,
                result,
                now,
            } => {
                let machine = stop.machine.clone();
                let stopped = result.is_ok();
                let (s, r) = (stop.clone(), result.clone());
                match self
                    .store
                    .call(move |c| book::finish_stop(c, enqueue, &s, totals, r, now))
                    .await
                {
                    Ok(_) => {
                        self.wake.notify_one();
                        if stopped {
                            self.ideal_cycle(&machine, None).await;
                        }
                        Ok(Vec::new())
                    }
                    Err(e) => Err((
                        BookChange::Stopped {
                            stop,
                            totals,
                            result,
                            now,
                        },
                        e,
                    )),
                }
            }
        }
    }

    async fn late(&mut self) {
        // Behind held changes the book is not current; the next tick looks again.
        if !self.held.is_empty() {
            return;
        }
        let enqueue = self.enqueue;
        let now = Utc::now();
        match self
            .store
            .call(move |c| book::check_late(c, enqueue, now))
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                info!(orders = n, "orders reported late");
                self.wake.notify_one();
            }
            Err(e) => error!(error = %e, "cannot check orders for lateness"),
        }
    }

    /// The interlock: release the machine's next order if it may have one.
    async fn consider(&mut self, machine: &str) {
        // While changes are held the book is not current: an order released
        // but not yet recorded as such would be released twice.
        if self.shutdown.is_cancelled() || self.busy.contains_key(machine) || !self.held.is_empty()
        {
            return;
        }
        let Some(view) = self.latest.get(machine) else {
            return;
        };
        if !matches!(view.state, MachineState::Idle | MachineState::Setup) {
            return;
        }
        let baseline = Counts::of_view(view);
        let m = machine.to_owned();
        let next = self
            .store
            .call(move |c| {
                if book::current(c, &m)?.is_some() {
                    return Ok(None);
                }
                book::next_to_release(c, &m)
            })
            .await;
        let order = match next {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                error!(machine = %machine, error = %e, "cannot read the order queue");
                return;
            }
        };
        // Values are checked again against the config of this run.
        let writes = command::machine_orders(&self.config, machine).and_then(|regs| {
            let number = command::order_number_for(regs, order.arrival);
            command::release_writes(
                regs,
                number,
                &order.product,
                order.remaining(),
                &order.params,
            )
        });
        let writes = match (writes, self.writers.get(machine)) {
            (Ok(w), Some(_)) => w,
            (Err(e), _) => {
                self.abort(
                    &order.order_id,
                    order.revision,
                    machine,
                    format!("cannot release: {e}"),
                )
                .await;
                return;
            }
            (Ok(_), None) => {
                self.abort(
                    &order.order_id,
                    order.revision,
                    machine,
                    format!("cannot release: no bus serves machine {machine}"),
                )
                .await;
                return;
            }
        };
        info!(machine = %machine, order = %order.order_id, revision = order.revision, "releasing order");
        self.busy.insert(machine.to_owned(), order.order_id.clone());
        let what = "release";
        let job = self.write_job(
            machine,
            Some((order.order_id.clone(), order.revision)),
            what,
            writes,
        );
        let done_tx = self.done_tx.clone();
        let (order_id, revision, machine) = (order.order_id, order.revision, machine.to_owned());
        tokio::spawn(async move {
            let done = match job.await {
                None => WriteDone::Abandoned { machine },
                Some(result) => WriteDone::Release {
                    order_id,
                    revision,
                    machine,
                    baseline,
                    result,
                },
            };
            let _ = done_tx.send(done).await;
        });
    }

    fn start_stop(&mut self, stop: StopRequest) {
        let write =
            command::machine_orders(&self.config, &stop.machine).and_then(command::stop_write);
        let done_tx = self.done_tx.clone();
        let write = match write {
            Ok(w) => w,
            Err(e) => {
                let _ = done_tx.try_send(WriteDone::Stop {
                    stop,
                    result: Err(e),
                });
                return;
            }
        };
        self.busy
            .insert(stop.machine.clone(), stop.order_id.clone());
        let what = if stop.then == book::OrderState::Held {
            "hold"
        } else {
            "cancel"
        };
        let job = self.write_job(
            &stop.machine,
            Some((stop.order_id.clone(), stop.revision)),
            what,
            vec![write],
        );
        tokio::spawn(async move {
            let done = match job.await {
                None => WriteDone::Abandoned {
                    machine: stop.machine.clone(),
                },
                Some(result) => WriteDone::Stop { stop, result },
            };
            let _ = done_tx.send(done).await;
        });
    }

    async fn abort(&mut self, order_id: &str, revision: u32, machine: &str, reason: String) {
        warn!(machine = %machine, order = %order_id, reason = %reason, "order aborted");
        self.book(BookChange::Aborted {
            order_id: order_id.to_owned(),
            revision,
            reason,
            now: Utc::now(),
        })
        .await;
    }

    async fn write_done(&mut self, done: WriteDone) {
        let now = Utc::now();
        self.busy.remove(done.machine());
        match done {
            WriteDone::Abandoned { machine } => {
                debug!(machine = %machine, "order write abandoned at shutdown");
            }
            WriteDone::Release {
                order_id,
                revision,
                machine,
                baseline,
                result: Ok(()),
            } => {
                info!(machine = %machine, order = %order_id, "order released");
                self.book(BookChange::Released {
                    order_id,
                    revision,
                    machine: machine.clone(),
                    baseline,
                    now,
                })
                .await;
                // The machine may already have moved on while we wrote.
                if let Some(view) = self.latest.get(&machine).cloned() {
                    self.observe(view).await;
                }
            }
            WriteDone::Release {
                order_id,
                revision,
                machine,
                result: Err(reason),
                ..
            } => {
                let attempts = self.options.write_attempts;
                self.abort(
                    &order_id,
                    revision,
                    &machine,
                    format!("release failed after {attempts} attempt(s): {reason}"),
                )
                .await;
            }
            WriteDone::Stop { stop, result } => {
                let totals = self.latest.get(&stop.machine).map(Counts::of_view);
                self.book(BookChange::Stopped {
                    stop,
                    totals,
                    result,
                    now,
                })
                .await;
            }
        }
    }

    /// Forecast the machine's orders and capacity; publish what is news.
    /// Skipped while book changes are held (the book is not current).
    async fn refresh_outlook(&mut self, machine: &str) {
        // Without an uplink nothing is reported upstream (as the recorder's
        // telemetry): no capacity messages pile up in the outbox.
        if self.config.uplink.is_none() {
            return;
        }
        if !self.held.is_empty() || self.shutdown.is_cancelled() {
            return;
        }
        let ideal = self
            .config
            .machine(machine)
            .and_then(|m| m.counters.as_ref())
            .and_then(|c| c.ideal_cycle_s);
        let (m, calendar, settings, enqueue) = (
            machine.to_owned(),
            self.calendar.clone(),
            self.outlook.clone(),
            self.enqueue,
        );
        let last = self.capacity.get(machine).cloned();
        let now = Utc::now();
        let result = self
            .store
            .call(move |c| {
                crate::orders::outlook::refresh(
                    c,
                    enqueue,
                    &m,
                    calendar.as_deref(),
                    ideal,
                    &settings,
                    last.as_ref().map(|(cap, at)| (cap, *at)),
                    now,
                )
            })
            .await;
        match result {
            Ok(r) => {
                if r.published > 0 {
                    debug!(machine = %machine, forecasts = r.published, "order forecasts published");
                }
                if r.capacity_published {
                    self.capacity.insert(machine.to_owned(), (r.capacity, now));
                }
            }
            Err(e) => warn!(machine = %machine, error = %e, "cannot refresh the order forecasts"),
        }
    }

    /// Tell the engine the ideal cycle time of the order now on `machine`
    /// (`None`: the config's again).
    async fn ideal_cycle(&self, machine: &str, ideal_cycle_s: Option<f64>) {
        if let Some(engine) = &self.options.engine {
            if !engine.set_ideal_cycle(machine, ideal_cycle_s).await {
                debug!(machine = %machine, "state engine gone; ideal cycle time not passed on");
            }
        }
    }

    /// A write batch with audit, retries and backoff. `None` when shut down
    /// before it could be made.
    fn write_job(
        &self,
        machine: &str,
        order: Option<(String, u32)>,
        what: &'static str,
        writes: Vec<NamedWrite>,
    ) -> impl std::future::Future<Output = Option<Result<(), String>>> + Send + 'static {
        let store = self.store.clone();
        let writer = self.writers.get(machine).cloned();
        let machine = machine.to_owned();
        let options = self.options.clone();
        let shutdown = self.shutdown.clone();
        async move {
            let Some(writer) = writer else {
                return Some(Err(format!("no bus serves machine {machine}")));
            };
            let mut backoff = options.backoff_min;
            let mut last = String::new();
            for attempt in 1..=options.write_attempts.max(1) {
                if attempt > 1 {
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(options.backoff_max);
                }
                let result = attempt_batch(
                    &store,
                    &writer,
                    &machine,
                    order.clone(),
                    what,
                    attempt,
                    &writes,
                    &options,
                )
                .await;
                match result {
                    Ok(()) => return Some(Ok(())),
                    Err(e) => {
                        warn!(machine = %machine, attempt, error = %e, "order write failed");
                        last = e;
                    }
                }
            }
            Some(Err(last))
        }
    }
}

/// One attempt of a batch: audit as pending, hand to the bus, audit the answer.
#[allow(clippy::too_many_arguments)]
async fn attempt_batch(
    store: &Store,
    writer: &mpsc::Sender<Box<WriteRequest>>,
    machine: &str,
    order: Option<(String, u32)>,
    what: &'static str,
    attempt: u32,
    writes: &[NamedWrite],
    options: &DispatchOptions,
) -> Result<(), String> {
    let entries: Vec<AuditEntry> = writes
        .iter()
        .map(|w| AuditEntry {
            register: format!("{} ({} {})", w.name, w.write.area, w.write.address),
            value: w.value.clone(),
        })
        .collect();
    let label = format!("{what} attempt {attempt}");
    let m = machine.to_owned();
    let now = Utc::now();
    let ids = store
        .call(move |c| {
            book::audit_pending(
                c,
                &m,
                order.as_ref().map(|(id, rev)| (id.as_str(), *rev)),
                &label,
                &entries,
                now,
            )
        })
        .await
        .map_err(|e| format!("cannot audit the write, not made: {e}"))?;

    let (reply_tx, reply_rx) = oneshot::channel();
    let request = WriteRequest {
        machine: machine.to_owned(),
        writes: writes.iter().map(|w| w.write.clone()).collect(),
        reply: reply_tx,
    };
    let outcome: Result<(), (Option<WriteError>, String)> =
        if writer.send(Box::new(request)).await.is_err() {
            Err((
                None,
                format!("the bus task of machine {machine} is not running"),
            ))
        } else {
            match tokio::time::timeout(options.write_timeout, reply_rx).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(e))) => {
                    let text = e.to_string();
                    Err((Some(e), text))
                }
                Ok(Err(_)) => Err((
                    None,
                    format!("the bus of machine {machine} dropped the write"),
                )),
                Err(_) => Err((
                    None,
                    format!(
                        "the bus of machine {machine} did not answer within {} ms",
                        options.write_timeout.as_millis()
                    ),
                )),
            }
        };

    // Which register failed: before it written, after it not.
    let failed_at = match &outcome {
        Err((
            Some(
                WriteError::Failed { area, address, .. }
                | WriteError::Mismatch { area, address, .. },
            ),
            _,
        )) => writes
            .iter()
            .position(|w| w.write.area == *area && w.write.address == *address),
        _ => None,
    };
    let results: Vec<(i64, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let r = match (&outcome, failed_at) {
                (Ok(()), _) => "ok".to_string(),
                (Err(_), Some(f)) if i < f => "ok".to_string(),
                (Err((_, e)), Some(f)) if i == f => e.clone(),
                (Err(_), Some(_)) => "not written".to_string(),
                (Err((_, e)), None) => e.clone(),
            };
            (*id, r)
        })
        .collect();
    if let Err(e) = store.call(move |c| book::audit_result(c, &results)).await {
        error!(machine = %machine, error = %e, "cannot record the result of an order write");
    }
    outcome.map_err(|(_, text)| text)
}

/// First pause before held order changes are tried again; doubles up to
/// [`HELD_RETRY_MAX`].
const HELD_RETRY_MIN: Duration = Duration::from_millis(200);
/// At most this between tries: held changes are stored soon after space returns.
const HELD_RETRY_MAX: Duration = Duration::from_secs(5);
/// Most order changes held in memory while the store cannot write (a
/// machine view, an order message or a write result each, a few hundred
/// bytes): hours of a busy line.
const MAX_HELD_CHANGES: usize = 20_000;

/// A change of the order book with the time it happened, replayed as it
/// was when the store takes it again.
enum BookChange {
    /// An order message; acknowledged only when its answer is committed.
    Intake {
        msg: OrderMessage,
        now: chrono::DateTime<Utc>,
    },
    /// A new view of a machine: progress, running, completed.
    Observe {
        view: MachineView,
        now: chrono::DateTime<Utc>,
    },
    /// A release batch was written: the order is on its machine.
    Released {
        order_id: String,
        revision: u32,
        machine: String,
        baseline: Counts,
        now: chrono::DateTime<Utc>,
    },
    Aborted {
        order_id: String,
        revision: u32,
        reason: String,
        now: chrono::DateTime<Utc>,
    },
    /// A hold or cancel was written (or failed).
    Stopped {
        stop: StopRequest,
        totals: Option<Counts>,
        result: Result<(), String>,
        now: chrono::DateTime<Utc>,
    },
}

/// Order changes the store did not take, oldest first, and when to try again.
struct HeldBook {
    work: std::collections::VecDeque<BookChange>,
    retry: Duration,
    retry_at: tokio::time::Instant,
    /// Logged the overflow of this run of failures.
    overflow_logged: bool,
}

impl Default for HeldBook {
    fn default() -> Self {
        HeldBook {
            work: std::collections::VecDeque::new(),
            retry: HELD_RETRY_MIN,
            retry_at: tokio::time::Instant::now(),
            overflow_logged: false,
        }
    }
}

impl HeldBook {
    fn is_empty(&self) -> bool {
        self.work.is_empty()
    }

    /// Hold a change; beyond [`MAX_HELD_CHANGES`] it is dropped: an order
    /// message is then left unacknowledged (the broker sends it again), any
    /// other change is counted in `lost_events`.
    fn push(&mut self, change: BookChange, health: &crate::store::health::Health) {
        if self.work.len() < MAX_HELD_CHANGES {
            self.work.push_back(change);
            return;
        }
        if !matches!(change, BookChange::Intake { .. }) {
            health.count_lost_events(1);
        }
        if !self.overflow_logged {
            self.overflow_logged = true;
            error!(
                held = self.work.len(),
                "the store has not taken order changes for too long: memory is full, new order changes are lost (counted in lost_events; order messages are left for the broker to send again)"
            );
        }
    }

    /// A try failed: the next one after the back-off.
    fn failed(&mut self) {
        self.retry_at = tokio::time::Instant::now() + self.retry;
        self.retry = (self.retry * 2).min(HELD_RETRY_MAX);
    }

    /// Held changes that are not order messages (those the broker sends again).
    fn statuses(&self) -> u64 {
        self.work
            .iter()
            .filter(|c| !matches!(c, BookChange::Intake { .. }))
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::health::Health;

    fn view(produced: u64) -> BookChange {
        BookChange::Observe {
            view: MachineView {
                machine: "m1".into(),
                state: MachineState::Running,
                since: Utc::now(),
                reason: None,
                produced_total: produced,
                good_total: produced,
                scrap_total: 0,
            },
            now: Utc::now(),
        }
    }

    #[test]
    fn held_changes_keep_their_order_and_what_overflows_is_counted() {
        let health = Health::default();
        let mut held = HeldBook::default();
        for n in 0..MAX_HELD_CHANGES as u64 {
            held.push(view(n), &health);
        }
        assert_eq!(health.unstored().lost_events, 0);
        // Full: a progress change is lost and counted …
        held.push(view(u64::MAX), &health);
        assert_eq!(health.unstored().lost_events, 1);
        // … an order message is not counted: unacknowledged, the broker
        // sends it again (its `committed` is dropped).
        let (tx, mut rx) = oneshot::channel();
        held.push(
            BookChange::Intake {
                msg: OrderMessage {
                    payload: b"{}".to_vec(),
                    committed: tx,
                },
                now: Utc::now(),
            },
            &health,
        );
        assert_eq!(health.unstored().lost_events, 1);
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert_eq!(held.work.len(), MAX_HELD_CHANGES);
        assert_eq!(held.statuses(), MAX_HELD_CHANGES as u64);
        // Oldest first.
        let produced: Vec<u64> = held
            .work
            .iter()
            .take(3)
            .map(|c| match c {
                BookChange::Observe { view, .. } => view.produced_total,
                _ => u64::MAX,
            })
            .collect();
        assert_eq!(produced, [0, 1, 2]);
    }

    #[test]
    fn the_back_off_doubles_up_to_its_bound() {
        let mut held = HeldBook::default();
        let mut pauses = Vec::new();
        for _ in 0..8 {
            pauses.push(held.retry);
            held.failed();
        }
        assert_eq!(pauses[0], HELD_RETRY_MIN);
        assert_eq!(pauses[1], HELD_RETRY_MIN * 2);
        assert_eq!(*pauses.last().unwrap_or(&Duration::ZERO), HELD_RETRY_MAX);
    }
}
