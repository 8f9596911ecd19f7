//! The state engine task: samples in, [`MachineEvent`]s out. It only moves
//! data; every decision is in the pure parts it drives ([`MachineTracker`]
//! wraps rules, counters and accounting for one machine).
//!
//! - Each sample updates its machine's signal values, derives the state,
//!   counts parts, and feeds the accounting; its good values go out as
//!   telemetry (dropped when the channel is full: telemetry is best effort,
//!   state changes and periods are never dropped, the engine waits for room).
//! - A one-second tick advances every machine without samples: a machine
//!   whose source went silent for its staleness time (Modbus: 3 x `poll_ms`
//!   plus the bus `timeout_ms`; MQTT: the bus `stale_ms`) is offline from
//!   its last good read, and periods close on time.
//! - Each machine's live [`MachineView`] is published on its `watch`.
//! - Snapshots go into the event stream, so the store keeps them in order
//!   with the changes: one right after every state change or period of a
//!   machine, every machine's every [`SNAPSHOT_EVERY_TICKS`] ticks unless
//!   the last one sent implies it (only time passed, which the marks carry;
//!   at least every [`SNAPSHOT_REFRESH_MS`]), and on shutdown (after the
//!   engine attributed time up to each last read). Each
//!   tick, and a sample that moves it by [`MARK_EVERY_MS`], sends the
//!   machine's "attributed up to" mark ([`MachineEvent::Observed`]), so a
//!   crash turns at most about half a second of observed time into offline
//!   (plus the recorder's `MARK_LINGER`, a quarter of a second).
//!   The final snapshots are returned too; pass them back in at the next
//!   start. [`EngineHandle::snapshot`] returns them on request.
//! - [`EngineHandle::reconfigure`] follows a reloaded config without a
//!   restart: a machine that stays keeps its state, timeline and open
//!   periods (its new rules apply from its next read), a removed one ends
//!   `offline` with the given reason, an added one starts. Only a change of
//!   its accounting settings starts a machine again from its snapshot.
//!
//! It never reads devices, writes SQLite or talks MQTT.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::accounting::{Account, AccountSettings, AccountSnapshot, Observation, Observed};
use super::counters::MachineCounters;
use super::rules::{Derived, SignalValues, StateRules};
use super::shift::ShiftCalendar;
use super::{MachineEvent, MachineState, MachineView, Telemetry};
use crate::config::{Config, MachineConfig, Transport};
use crate::source::{Sample, SampleContent};
use crate::systemd::Heartbeat;

/// How often machines without samples are advanced.
pub const TICK_MS: u64 = 1000;

/// A machine's "attributed up to" mark is sent when it moved by this much
/// since the last one (checked on every sample), and on every tick.
pub const MARK_EVERY_MS: i64 = 500;

/// Every machine's snapshot is sent every this many ticks (besides the one
/// after each of its changes and periods).
pub const SNAPSHOT_EVERY_TICKS: u32 = 5;

/// A periodic snapshot that the last one sent implies is skipped, but not
/// when that one is this old (attributed this much earlier): `linegate
/// status` shows when each machine's figures were saved, and a restart's
/// counters judge their first step from it.
pub const SNAPSHOT_REFRESH_MS: i64 = 60_000;

/// Why the engine cannot start (a config that passed validation never fails here).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("machine {machine:?}: state rules: {message}")]
    Rules { machine: String, message: String },
    #[error("`gateway.timezone`: {0:?} is not an IANA time zone")]
    TimeZone(String),
    #[error("shift calendar: {0}")]
    Calendar(#[from] super::shift::ShiftError),
}

/// One machine: its rules, signal values, counters and accounting. Pure.
#[derive(Debug)]
pub struct MachineTracker {
    pub account: Account,
    rules: StateRules,
    /// The last values of the signals the rules read (no others).
    values: SignalValues,
    counters: MachineCounters,
    /// Monotonic time of the last sample with signal values: parts counted
    /// after a longer silence than `stale_ms` were made unobserved.
    last_read_mono: Option<i64>,
    /// The machine was unreachable (or the agent not running) since the
    /// last sample with signal values: the next count is unobserved.
    counting_gap: bool,
    /// Silence longer than this makes the machine offline.
    stale_ms: i64,
    /// Telemetry events are made only when an uplink will send them.
    telemetry: bool,
}

/// Staleness time of a machine: how long without any sample means offline.
pub fn stale_ms(config: &Config, machine: &MachineConfig) -> i64 {
    let ms = match config.bus(&machine.bus) {
        Some(b) if b.transport == Transport::Mqtt => b.stale_ms,
        Some(b) => machine
            .poll_ms
            .saturating_mul(3)
            .saturating_add(b.timeout_ms),
        None => machine.poll_ms.saturating_mul(3),
    };
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The shift calendar of a config, if any.
pub fn calendar(config: &Config) -> Result<Option<Arc<ShiftCalendar>>, EngineError> {
    let tz: chrono_tz::Tz = config
        .gateway
        .timezone
        .parse()
        .map_err(|_| EngineError::TimeZone(config.gateway.timezone.clone()))?;
    Ok(match &config.shifts {
        Some(c) => Some(Arc::new(ShiftCalendar::from_config(c, tz)?)),
        None => None,
    })
}

impl MachineTracker {
    /// Start tracking a machine, resuming its snapshot if there is one.
    pub fn new(
        config: &Config,
        machine: &MachineConfig,
        calendar: Option<Arc<ShiftCalendar>>,
        resume: Option<&AccountSnapshot>,
        at: DateTime<Utc>,
        mono_ms: i64,
        out: &mut Vec<MachineEvent>,
    ) -> Result<Self, EngineError> {
        let rules = StateRules::compile(machine.state.as_ref(), &machine.signal).map_err(|p| {
            EngineError::Rules {
                machine: machine.id.clone(),
                message: p
                    .iter()
                    .map(|p| format!("{}: {}", p.rule, p.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        })?;
        let mut settings = AccountSettings::from_config(config, machine, calendar);
        settings.min_dwell_ms = i64::try_from(rules.min_dwell_ms).unwrap_or(i64::MAX);
        let mut counters =
            MachineCounters::new(&machine.id, machine.counters.as_ref(), &machine.signal);
        let account = match resume {
            Some(snap) => {
                if let Some(c) = &snap.counters {
                    counters.resume_from(c);
                }
                Account::resume(settings, snap, at, mono_ms, out)
            }
            None => Account::new(settings, at, mono_ms, out),
        };
        let values = SignalValues::read_by(&machine.signal, &rules);
        Ok(MachineTracker {
            account,
            values,
            rules,
            counters,
            // After a restart, the parts the first read counts were made
            // while the agent was not running.
            last_read_mono: None,
            counting_gap: true,
            stale_ms: stale_ms(config, machine),
            telemetry: config.uplink.is_some(),
        })
    }

    /// Follow a reloaded config of this machine without losing its state,
    /// timeline or open periods: new rules, signals, counters and staleness
    /// time. Returns false (and changes nothing) when the accounting
    /// settings differ (period length, micro-stop, dwell, ideal cycle time,
    /// good counter, time zone): then the caller starts it again from its
    /// snapshot.
    pub fn reconfigure(
        &mut self,
        config: &Config,
        machine: &MachineConfig,
    ) -> Result<bool, EngineError> {
        let was = self.account.settings();
        let mut now = AccountSettings::from_config(config, machine, was.calendar.clone());
        let rules = StateRules::compile(machine.state.as_ref(), &machine.signal).map_err(|p| {
            EngineError::Rules {
                machine: machine.id.clone(),
                message: p
                    .iter()
                    .map(|p| format!("{}: {}", p.rule, p.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        })?;
        now.min_dwell_ms = i64::try_from(rules.min_dwell_ms).unwrap_or(i64::MAX);
        let same_accounting = now.machine == was.machine
            && now.tz == was.tz
            && now.period_ms == was.period_ms
            && now.micro_stop_ms == was.micro_stop_ms
            && now.min_dwell_ms == was.min_dwell_ms
            && now.ideal_cycle_s == was.ideal_cycle_s
            && now.has_good_counter == was.has_good_counter;
        if !same_accounting {
            return Ok(false);
        }
        let mut counters =
            MachineCounters::new(&machine.id, machine.counters.as_ref(), &machine.signal);
        counters.resume_from(&self.counters);
        self.counters = counters;
        self.values = SignalValues::read_by(&machine.signal, &rules);
        self.rules = rules;
        self.retune(config, machine);
        Ok(true)
    }

    /// Take the staleness time and telemetry setting of a reloaded config.
    pub fn retune(&mut self, config: &Config, machine: &MachineConfig) {
        self.stale_ms = stale_ms(config, machine);
        self.telemetry = config.uplink.is_some();
    }

    /// The machine leaves the config: `offline` with `reason` from its last
    /// good read until `at`, then stopped like a clean shutdown. Returns its
    /// final snapshot.
    pub fn remove(
        &mut self,
        reason: &str,
        at: DateTime<Utc>,
        mono_ms: i64,
        out: &mut Vec<MachineEvent>,
    ) -> AccountSnapshot {
        self.account.observe(
            Observation {
                at,
                mono_ms,
                observed: Observed::Offline {
                    reason: reason.to_string(),
                },
                counts: Default::default(),
            },
            out,
        );
        self.account.stop(out);
        self.snapshot(at)
    }

    /// Take one sample (the machine's, `mono_ms` its monotonic time).
    pub fn on_sample(&mut self, sample: &Sample, mono_ms: i64, out: &mut Vec<MachineEvent>) {
        let (observed, counts) = match &sample.content {
            SampleContent::Unreachable { reason } => {
                self.values.clear();
                self.counting_gap = true;
                (
                    Observed::Offline {
                        reason: reason.clone(),
                    },
                    Default::default(),
                )
            }
            SampleContent::Signals(readings) => {
                if !self.values.is_empty() {
                    for (name, reading) in readings.iter() {
                        self.values.update(name, reading);
                    }
                }
                let first_error = readings
                    .iter()
                    .find_map(|(n, r)| r.as_ref().err().map(|e| (n, e)));
                let all_failed = !readings.is_empty() && readings.values().all(|r| r.is_err());
                let observed = match (all_failed, first_error) {
                    (true, Some((name, e))) => Observed::Offline {
                        reason: format!("{name}: {e}"),
                    },
                    _ => match self.rules.derive(&self.values) {
                        Derived::Known {
                            state,
                            reason,
                            fault,
                        } => Observed::State {
                            state,
                            reason,
                            fault,
                        },
                        Derived::Unknown => Observed::Unknown,
                    },
                };
                if self.telemetry {
                    let mut good =
                        super::TelemetryValues::of(readings.names().clone(), readings.len());
                    for (position, r) in readings.positions() {
                        if let Ok(v) = r {
                            good.push_at(position, v.clone());
                        }
                    }
                    if !good.is_empty() {
                        out.push(MachineEvent::Telemetry(Telemetry {
                            machine: sample.machine.clone(),
                            at: sample.at,
                            values: good,
                        }));
                    }
                }
                let counts = if matches!(observed, Observed::Offline { .. }) {
                    self.counting_gap = true;
                    Default::default()
                } else {
                    let watched = !self.counting_gap
                        && self
                            .last_read_mono
                            .is_some_and(|last| mono_ms - last <= self.stale_ms);
                    self.counting_gap = false;
                    self.last_read_mono = Some(mono_ms);
                    self.counters
                        .observe(readings, sample.at.timestamp_millis(), watched)
                };
                (observed, counts)
            }
        };
        self.account.observe(
            Observation {
                at: sample.at,
                mono_ms,
                observed,
                counts,
            },
            out,
        );
    }

    /// Advance without a sample.
    pub fn tick(&mut self, mono_ms: i64, out: &mut Vec<MachineEvent>) {
        self.account.tick(mono_ms, self.stale_ms, out);
    }

    /// The wall clock at a tick: a machine silent for its staleness time
    /// follows a wall-clock step without waiting for a read.
    pub fn wall_clock(&mut self, at: DateTime<Utc>, mono_ms: i64, out: &mut Vec<MachineEvent>) {
        self.account.wall_clock(at, mono_ms, self.stale_ms, out);
    }

    pub fn view(&self) -> MachineView {
        let (state, since, reason) = self.account.state();
        MachineView {
            machine: self.account.machine().to_string(),
            state,
            since,
            reason: reason.map(str::to_string),
            produced_total: self.counters.produced_total(),
            good_total: self.counters.good_total,
            scrap_total: self.counters.scrap_total(),
        }
    }

    /// Whether `view` is what [`MachineTracker::view`] would return now
    /// (checked on every sample without building a new view).
    pub fn view_is(&self, view: &MachineView) -> bool {
        let (state, since, reason) = self.account.state();
        view.state == state
            && view.since == since
            && view.reason.as_deref() == reason
            && view.produced_total == self.counters.produced_total()
            && view.good_total == self.counters.good_total
            && view.scrap_total == self.counters.scrap_total()
            && view.machine == self.account.machine()
    }

    pub fn snapshot(&self, saved_at: DateTime<Utc>) -> AccountSnapshot {
        let mut s = self.account.snapshot(saved_at);
        s.counters = Some(self.counters.clone());
        s
    }

    /// Heap bytes held, roughly (for the memory benchmark).
    pub fn heap_bytes(&self) -> usize {
        self.account.heap_bytes() + self.values.heap_bytes()
    }
}

/// Requests to a running engine.
#[derive(Debug)]
pub enum EngineCommand {
    /// Every machine's open period, to save.
    Snapshot(oneshot::Sender<Vec<(String, AccountSnapshot)>>),
    /// An order's ideal cycle time for a machine (`None`: back to the config's).
    IdealCycle {
        machine: String,
        ideal_cycle_s: Option<f64>,
    },
    /// A reloaded config (see [`EngineHandle::reconfigure`]).
    Reconfigure(Box<Reconfigure>, oneshot::Sender<Reconfigured>),
}

/// A reloaded config for a running engine.
#[derive(Debug)]
pub struct Reconfigure {
    pub config: Arc<Config>,
    /// The watches of machines new to the engine.
    pub views: HashMap<String, watch::Sender<MachineView>>,
    /// Saved snapshots of machines new to the engine (from an earlier run).
    pub resume: Vec<(String, AccountSnapshot)>,
    /// The final `offline` reason of machines that are gone.
    pub removed_reason: String,
}

/// What a reconfiguration did, by machine.
#[derive(Debug, Default)]
pub struct Reconfigured {
    /// Final snapshots of the machines that left the config, to save.
    pub removed: Vec<(String, AccountSnapshot)>,
    /// Changed machines that follow their new section in place (state,
    /// timeline and periods kept; unchanged ones are not listed).
    pub kept: Vec<String>,
    /// Machines started again from their snapshot (accounting settings changed).
    pub restarted: Vec<String>,
    pub added: Vec<String>,
    /// Why the new config was refused (the engine kept the old one).
    pub refused: Option<String>,
}

/// Talks to a running engine.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<EngineCommand>,
}

/// The handle, and the receiving end to pass to [`run_engine`].
pub fn engine_channel() -> (EngineHandle, mpsc::Receiver<EngineCommand>) {
    let (tx, rx) = mpsc::channel(16);
    (EngineHandle { tx }, rx)
}

impl EngineHandle {
    /// Every machine's open period; `None` when the engine has stopped.
    pub async fn snapshot(&self) -> Option<Vec<(String, AccountSnapshot)>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(EngineCommand::Snapshot(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Follow a reloaded config: machines that stay keep their state,
    /// timeline and open periods; removed ones end offline; new ones start.
    /// `None` when the engine has stopped.
    pub async fn reconfigure(&self, request: Reconfigure) -> Option<Reconfigured> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(EngineCommand::Reconfigure(Box::new(request), tx))
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Use an order's ideal cycle time for performance (`None`: the config's).
    pub async fn set_ideal_cycle(&self, machine: &str, ideal_cycle_s: Option<f64>) -> bool {
        self.tx
            .send(EngineCommand::IdealCycle {
                machine: machine.to_string(),
                ideal_cycle_s,
            })
            .await
            .is_ok()
    }
}

/// One `watch` per machine, starting offline: senders for the engine,
/// receivers for whoever watches (order interlock, status).
#[allow(clippy::type_complexity)]
pub fn machine_views(
    config: &Config,
    now: DateTime<Utc>,
) -> (
    HashMap<String, watch::Sender<MachineView>>,
    HashMap<String, watch::Receiver<MachineView>>,
) {
    let mut senders = HashMap::new();
    let mut receivers = HashMap::new();
    for m in &config.machine {
        let (tx, rx) = watch::channel(MachineView {
            machine: m.id.clone(),
            state: MachineState::Offline,
            since: now,
            reason: Some("agent starting".into()),
            produced_total: 0,
            good_total: 0,
            scrap_total: 0,
        });
        senders.insert(m.id.clone(), tx);
        receivers.insert(m.id.clone(), rx);
    }
    (senders, receivers)
}

/// Monotonic milliseconds since `origin` (negative before it).
fn mono_ms(origin: Instant, at: Instant) -> i64 {
    if at >= origin {
        i64::try_from(at.duration_since(origin).as_millis()).unwrap_or(i64::MAX)
    } else {
        -i64::try_from(origin.duration_since(at).as_millis()).unwrap_or(i64::MAX)
    }
}

struct Machine {
    tracker: MachineTracker,
    view: Option<watch::Sender<MachineView>>,
    span: tracing::Span,
    /// The last "attributed up to" mark sent.
    marked: DateTime<Utc>,
    /// The last snapshot sent (`None` before the first).
    sent: Option<AccountSnapshot>,
}

impl Machine {
    /// After what the tracker added to `out` from `from` on: its snapshot,
    /// when that holds a state change or a period (the store commits them
    /// together), or when `always`.
    fn follow_with_snapshot(&mut self, from: usize, always: bool, out: &mut Vec<MachineEvent>) {
        if always || holds_change(out, from) {
            self.send_snapshot(self.tracker.snapshot(Utc::now()), out);
        }
    }

    /// The periodic snapshot (after what the tracker added from `from`):
    /// not sent when the last one sent implies it (only time passed in the
    /// reported state, which the marks carry: a restart and `linegate
    /// status` project the stored one to the mark), unless that one is
    /// [`SNAPSHOT_REFRESH_MS`] old. On a quiet line this is most of them:
    /// each was a thousand bytes of JSON and a row written every 5 s per
    /// machine.
    fn follow_with_periodic_snapshot(&mut self, from: usize, out: &mut Vec<MachineEvent>) {
        let snap = self.tracker.snapshot(Utc::now());
        let implied = self.sent.as_ref().is_some_and(|sent| {
            (snap.committed_to - sent.committed_to).num_milliseconds() < SNAPSHOT_REFRESH_MS
                && sent.implies(&snap)
        });
        if !implied || holds_change(out, from) {
            self.send_snapshot(snap, out);
        }
    }

    fn send_snapshot(&mut self, snap: AccountSnapshot, out: &mut Vec<MachineEvent>) {
        self.sent = Some(snap.clone());
        out.push(MachineEvent::Snapshot(Box::new(snap)));
    }

    /// The "attributed up to" mark, when it moved by at least `min_ms`.
    fn mark(&mut self, min_ms: i64, out: &mut Vec<MachineEvent>) {
        let to = self.tracker.account.committed_to();
        if to > self.marked && (to - self.marked).num_milliseconds() >= min_ms {
            self.marked = to;
            out.push(MachineEvent::Observed {
                machine: self.tracker.account.machine().to_string(),
                to,
            });
        }
    }
}

/// Whether `out` from `from` on holds a state change or a period (which
/// its machine's snapshot must follow into the store).
fn holds_change(out: &[MachineEvent], from: usize) -> bool {
    out[from.min(out.len())..]
        .iter()
        .any(|e| matches!(e, MachineEvent::State(_) | MachineEvent::Period(_)))
}

/// Send what the trackers produced: state changes and periods wait for
/// room, telemetry is dropped when the channel is full.
async fn deliver(
    events: &mpsc::Sender<MachineEvent>,
    out: &mut Vec<MachineEvent>,
    dropped: &mut u64,
) {
    for ev in out.drain(..) {
        match ev {
            MachineEvent::Telemetry(_) => match events.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    *dropped += 1;
                    if dropped.is_power_of_two() {
                        tracing::warn!(dropped = *dropped, "event channel full: telemetry dropped");
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            },
            other => {
                if events.send(other).await.is_err() {
                    tracing::debug!("event receiver gone; machine event not delivered");
                }
            }
        }
    }
}

fn publish(m: &Machine) {
    if let Some(tx) = &m.view {
        tx.send_if_modified(|v| {
            if m.tracker.view_is(v) {
                false
            } else {
                *v = m.tracker.view();
                true
            }
        });
    }
}

/// Run the state engine until `shutdown`; returns the final snapshots.
/// `heartbeat` beats on every turn of the loop (also while no sample
/// arrives) and is retired when the engine ends cleanly; an engine that
/// failed leaves it silent, so the watchdog notices.
#[allow(clippy::too_many_arguments)]
pub async fn run_engine(
    config: Arc<Config>,
    resume: Vec<(String, AccountSnapshot)>,
    samples: mpsc::Receiver<Sample>,
    events: mpsc::Sender<MachineEvent>,
    views: HashMap<String, watch::Sender<MachineView>>,
    commands: mpsc::Receiver<EngineCommand>,
    heartbeat: Heartbeat,
    shutdown: CancellationToken,
) -> Result<Vec<(String, AccountSnapshot)>, EngineError> {
    let result = run_engine_loop(
        config, resume, samples, events, views, commands, &heartbeat, shutdown,
    )
    .await;
    if result.is_ok() {
        heartbeat.retire();
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_engine_loop(
    config: Arc<Config>,
    resume: Vec<(String, AccountSnapshot)>,
    mut samples: mpsc::Receiver<Sample>,
    events: mpsc::Sender<MachineEvent>,
    mut views: HashMap<String, watch::Sender<MachineView>>,
    mut commands: mpsc::Receiver<EngineCommand>,
    heartbeat: &Heartbeat,
    shutdown: CancellationToken,
) -> Result<Vec<(String, AccountSnapshot)>, EngineError> {
    let mut config = config;
    let origin = Instant::now();
    let started = Utc::now();
    let mut calendar = calendar(&config)?;
    let resume: HashMap<String, AccountSnapshot> = resume.into_iter().collect();
    let mut out = Vec::new();
    // Looked up for every sample; keyed by the config's machine ids.
    let mut machines: rustc_hash::FxHashMap<String, Machine> = Default::default();
    for m in &config.machine {
        let span = tracing::info_span!("machine", machine = %m.id);
        let from = out.len();
        let tracker = {
            let _g = span.enter();
            MachineTracker::new(
                &config,
                m,
                calendar.clone(),
                resume.get(&m.id),
                started,
                0,
                &mut out,
            )?
        };
        let marked = tracker.account.committed_to();
        let mut machine = Machine {
            tracker,
            view: views.remove(&m.id),
            span,
            marked,
            sent: None,
        };
        machine.follow_with_snapshot(from, false, &mut out);
        publish(&machine);
        machines.insert(m.id.clone(), machine);
    }
    let mut dropped = 0u64;
    deliver(&events, &mut out, &mut dropped).await;

    // On the line's cadence: the tick's marks and snapshots come in the
    // wake-up of the polls and ride their commit.
    let mut ticker = crate::cadence::interval(Duration::from_millis(TICK_MS));
    let mut samples_open = true;
    let mut commands_open = true;
    let mut unknown_warned: std::collections::HashSet<String> = Default::default();
    let mut beat = heartbeat.ticker();
    let mut ticks = 0u32;
    loop {
        heartbeat.beat();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = beat.tick() => {}
            sample = samples.recv(), if samples_open => match sample {
                Some(sample) => {
                    let mono = mono_ms(origin, sample.mono);
                    match machines.get_mut(&sample.machine) {
                        Some(m) => {
                            let from = out.len();
                            {
                                let _g = m.span.enter();
                                m.tracker.on_sample(&sample, mono, &mut out);
                            }
                            m.follow_with_snapshot(from, false, &mut out);
                            m.mark(MARK_EVERY_MS, &mut out);
                            publish(m);
                        }
                        None => {
                            if unknown_warned.insert(sample.machine.clone()) {
                                tracing::warn!(machine = %sample.machine, "sample of a machine that is not configured; ignored");
                            }
                        }
                    }
                }
                None => samples_open = false,
            },
            cmd = commands.recv(), if commands_open => match cmd {
                Some(EngineCommand::Snapshot(reply)) => {
                    let now = Utc::now();
                    let _ = reply.send(machines.iter().map(|(id, m)| (id.clone(), m.tracker.snapshot(now))).collect());
                }
                Some(EngineCommand::IdealCycle { machine, ideal_cycle_s }) => {
                    if let Some(m) = machines.get_mut(&machine) {
                        m.tracker.account.set_ideal_cycle_s(ideal_cycle_s);
                    }
                }
                Some(EngineCommand::Reconfigure(request, reply)) => {
                    let mono = mono_ms(origin, Instant::now());
                    let done = reconfigure(&mut config, &mut calendar, &mut machines, *request, mono, &mut out);
                    let _ = reply.send(done);
                }
                None => commands_open = false,
            },
            _ = ticker.tick() => {
                let mono = mono_ms(origin, Instant::now());
                let wall = Utc::now();
                ticks = ticks.wrapping_add(1);
                let all = ticks % SNAPSHOT_EVERY_TICKS == 0;
                for m in machines.values_mut() {
                    let from = out.len();
                    {
                        let _g = m.span.enter();
                        m.tracker.wall_clock(wall, mono, &mut out);
                        m.tracker.tick(mono, &mut out);
                    }
                    if all {
                        m.follow_with_periodic_snapshot(from, &mut out);
                    } else {
                        m.follow_with_snapshot(from, false, &mut out);
                    }
                    m.mark(0, &mut out);
                    publish(m);
                }
            }
        }
        deliver(&events, &mut out, &mut dropped).await;
    }

    let now = Utc::now();
    let mut snapshots = Vec::with_capacity(machines.len());
    for (id, m) in machines.iter_mut() {
        let _g = m.span.enter();
        m.tracker.account.stop(&mut out);
        let snap = m.tracker.snapshot(now);
        // Last in the stream: no older snapshot is stored after it.
        out.push(MachineEvent::Snapshot(Box::new(snap.clone())));
        snapshots.push((id.clone(), snap));
    }
    deliver(&events, &mut out, &mut dropped).await;
    snapshots.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(snapshots)
}

/// Apply a reloaded config to the running machines (see [`EngineHandle::reconfigure`]).
fn reconfigure(
    config: &mut Arc<Config>,
    calendar_now: &mut Option<Arc<ShiftCalendar>>,
    machines: &mut rustc_hash::FxHashMap<String, Machine>,
    request: Reconfigure,
    mono: i64,
    out: &mut Vec<MachineEvent>,
) -> Reconfigured {
    let Reconfigure {
        config: new,
        mut views,
        resume,
        removed_reason,
    } = request;
    let mut done = Reconfigured::default();
    let new_calendar = match calendar(&new) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reloaded config refused by the state engine; the running one stays");
            done.refused = Some(e.to_string());
            return done;
        }
    };
    // A new calendar, zone or period length changes every machine's
    // accounting: each restarts from its snapshot.
    let accounting_changed = new.accounting != config.accounting
        || new.shifts != config.shifts
        || new.gateway.timezone != config.gateway.timezone;
    let now = Utc::now();
    let gone: Vec<String> = machines
        .keys()
        .filter(|id| new.machine(id).is_none())
        .cloned()
        .collect();
    for id in gone {
        if let Some(mut m) = machines.remove(&id) {
            let _g = m.span.enter();
            let snap = m.tracker.remove(&removed_reason, now, mono, out);
            publish(&m);
            done.removed.push((id, snap));
        }
    }
    let resume: HashMap<String, AccountSnapshot> = resume.into_iter().collect();
    for mc in &new.machine {
        let unchanged = config.machine(&mc.id) == Some(mc);
        if let Some(m) = machines.get_mut(&mc.id) {
            let span = m.span.clone();
            let _g = span.enter();
            if !accounting_changed {
                if unchanged {
                    m.tracker.retune(&new, mc);
                    continue;
                }
                match m.tracker.reconfigure(&new, mc) {
                    Ok(true) => {
                        done.kept.push(mc.id.clone());
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        // Validation compiles the rules: not expected.
                        tracing::error!(error = %e, "new state rules refused; the machine keeps its old ones");
                        continue;
                    }
                }
            }
            // Started again from where it stands now: the time from its
            // last read to its first read with the new config is offline.
            m.tracker.account.stop(out);
            let snap = m.tracker.snapshot(now);
            match MachineTracker::new(&new, mc, new_calendar.clone(), Some(&snap), now, mono, out) {
                Ok(t) => {
                    m.tracker = t;
                    m.marked = m.tracker.account.committed_to();
                    m.follow_with_snapshot(out.len(), true, out);
                    done.restarted.push(mc.id.clone());
                }
                Err(e) => {
                    tracing::error!(error = %e, "machine not restarted; it keeps its old config")
                }
            }
            publish(m);
            continue;
        }
        let span = tracing::info_span!("machine", machine = %mc.id);
        let tracker = {
            let _g = span.enter();
            MachineTracker::new(
                &new,
                mc,
                new_calendar.clone(),
                resume.get(&mc.id),
                now,
                mono,
                out,
            )
        };
        match tracker {
            Ok(tracker) => {
                let marked = tracker.account.committed_to();
                let mut machine = Machine {
                    tracker,
                    view: views.remove(&mc.id),
                    span,
                    marked,
                    sent: None,
                };
                // The store keeps its open period from the start, as at a start.
                machine.follow_with_snapshot(out.len(), true, out);
                publish(&machine);
                machines.insert(mc.id.clone(), machine);
                done.added.push(mc.id.clone());
            }
            Err(e) => tracing::error!(machine = %mc.id, error = %e, "added machine not started"),
        }
    }
    *config = new;
    *calendar_now = new_calendar;
    done
}
