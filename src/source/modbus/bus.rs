//! The polling task of one Modbus bus.
//!
//! Owns the schedule of the machines on one bus: each machine is polled on
//! its own `poll_ms`, strictly one request at a time (RS-485 has one master,
//! and a TCP-to-RS485 gateway serialises anyway). A machine that does not
//! answer is sent as [`SampleContent::Unreachable`] and retried on the
//! schedule of [`retry_delay`] (every second for its first minute of
//! silence, then backing off); since a failed request ends its poll at
//! once, a dead device costs its bus neighbours at most one timeout per
//! retry. Work-order writes are served between polls. Exception replies are
//! logged once per change, not every poll. It owns the bus's counters
//! ([`BusStats`]), the one place logs and `linegate status` read them from.
//!
//! It never decides a machine's state and never touches the store: it only
//! sends [`Sample`]s.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::link::{poll_machine, write_verified, Link, LinkError, PollPlan};
use super::plan::plan_reads;
use super::{WriteError, WriteRequest};
use crate::config::{BusConfig, MachineConfig, Transport};
use crate::source::{Sample, SampleContent};
use crate::systemd::Heartbeat;

/// Counters of one bus, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct BusStats {
    pub bus: String,
    /// Requests sent (reads and writes).
    pub requests: AtomicU64,
    /// Requests or connects that failed, replies that did not fit.
    pub errors: AtomicU64,
    /// Of the errors, those that were timeouts.
    pub timeouts: AtomicU64,
    /// Connections opened again after one was dropped.
    pub reconnects: AtomicU64,
    /// Serial buses: bytes heard that answered no request (line noise,
    /// late replies, replies from other units), thrown away.
    pub discarded_bytes: AtomicU64,
    /// How long answered requests took (reply or exception; not timeouts).
    pub latency: ReplyLatency,
    machines: Mutex<BTreeMap<String, MachineHealth>>,
}

/// Upper bounds (seconds) of the [`ReplyLatency`] buckets: Modbus TCP on a
/// LAN answers in about a millisecond, RTU at 9600 baud in tens.
pub const LATENCY_BOUNDS_S: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A histogram of reply times: a count per bucket of [`LATENCY_BOUNDS_S`]
/// (the last one, beyond them all) and the sum, lock-free.
#[derive(Debug, Default)]
pub struct ReplyLatency {
    buckets: [AtomicU64; LATENCY_BOUNDS_S.len() + 1],
    sum_us: AtomicU64,
}

/// A copy of a [`ReplyLatency`]: `buckets[i]` counts replies within
/// `LATENCY_BOUNDS_S[i]` and above the bound before (not cumulative); the
/// last entry counts the slower ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySnapshot {
    pub buckets: Vec<u64>,
    pub sum_s: f64,
    pub count: u64,
}

impl ReplyLatency {
    pub fn observe(&self, took: Duration) {
        let s = took.as_secs_f64();
        let i = LATENCY_BOUNDS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BOUNDS_S.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        LatencySnapshot {
            count: buckets.iter().sum(),
            buckets,
            sum_s: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// How the last polls of one machine went.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MachineHealth {
    pub last_ok: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Failed polls in a row; 0 while the machine answers.
    pub failures: u32,
}

/// A copy of a bus's counters at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BusStatsSnapshot {
    pub bus: String,
    pub requests: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub reconnects: u64,
    pub discarded_bytes: u64,
    pub machines: BTreeMap<String, MachineHealth>,
}

impl BusStats {
    pub fn new(bus: &str) -> Self {
        Self {
            bus: bus.to_owned(),
            ..Self::default()
        }
    }

    pub fn snapshot(&self) -> BusStatsSnapshot {
        BusStatsSnapshot {
            bus: self.bus.clone(),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            discarded_bytes: self.discarded_bytes.load(Ordering::Relaxed),
            machines: self.health().clone(),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, MachineHealth>> {
        // A panic elsewhere cannot leave these plain values half-written.
        self.machines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record_ok(&self, machine: &str, at: DateTime<Utc>) {
        self.update_health(machine, |h| {
            h.last_ok = Some(at);
            h.failures = 0;
        });
    }

    fn record_error(&self, machine: &str, reason: &str, at: DateTime<Utc>) {
        self.update_health(machine, |h| {
            h.last_error = Some(reason.to_owned());
            h.last_error_at = Some(at);
            h.failures = h.failures.saturating_add(1);
        });
    }

    /// Change one machine's health (its entry made on first use; the
    /// machine's id is copied only then, not on every poll).
    fn update_health(&self, machine: &str, change: impl FnOnce(&mut MachineHealth)) {
        let mut all = self.health();
        match all.get_mut(machine) {
            Some(h) => change(h),
            None => change(all.entry(machine.to_owned()).or_default()),
        }
    }
}

/// How long after a failed poll a silent machine is tried again, `silent`
/// being how long it has been failing (from the start of its first failed
/// poll to the start of this one).
///
/// The rule it keeps: a failed poll ends at its first unanswered request, so
/// every retry costs the bus neighbours at most one `timeout_ms`, whatever
/// the interval. The interval only trades that cost against how late a
/// device that answers again is seen:
/// - for the first `steady_ms` of silence (`backoff_after_ms`), a retry
///   `min_ms` (`backoff_min_ms`) after the last one failed: a device back
///   from a short outage (a reboot, a pulled cable) is read again within
///   one timeout plus `min_ms` plus jitter (1.6 s by default);
/// - after that the wait is the silence beyond `steady_ms`, at least `min_ms`
///   and at most `max_ms`: it doubles with each retry, so a device that is
///   switched off for the weekend costs one timeout per `max_ms`.
///
/// `jitter` (0..=1) adds up to a tenth of the wait (spreading the retries
/// of devices that went silent together), never beyond `max_ms`.
pub fn retry_delay(
    silent: Duration,
    min_ms: u64,
    max_ms: u64,
    steady_ms: u64,
    jitter: f64,
) -> Duration {
    let silent_ms = u64::try_from(silent.as_millis()).unwrap_or(u64::MAX);
    let max_ms = max_ms.max(min_ms);
    let base = silent_ms.saturating_sub(steady_ms).clamp(min_ms, max_ms);
    let extra = (base as f64 * 0.1 * jitter.clamp(0.0, 1.0)) as u64;
    Duration::from_millis(base.saturating_add(extra).min(max_ms))
}

/// When a machine polled every `poll` is first polled: the next point of
/// the line's cadence ([`crate::cadence`]) on the grid of its period, or
/// of a second for longer periods (a long one does not keep a new machine
/// unread for that long, and a short one is read again within its period
/// after a reload restarted its bus). Later polls fall on its period's
/// grid ([`next_due`]). Every machine of the line with the same period (or
/// one that divides it) is then read in the same instant: one burst a
/// second at 1 Hz, one wake-up of the agent and one commit for all of
/// them. Spread over the second (four groups until round 8), every group
/// paid its own wake-ups, commit and fsync: about 1.7 times the CPU
/// (BENCHMARKS.md, "Uplink cost").
pub fn first_poll_at(poll: Duration) -> Instant {
    crate::cadence::next_at(poll.min(Duration::from_secs(1)))
}

/// When a machine polled on `poll` and due at `due` is next due, given that
/// its poll ended at `now`: the next point of its period's grid after
/// `due`. A machine that fell behind (a slow bus, a retry) is polled at
/// once instead of catching up with a burst, and is back on the grid
/// after that poll.
pub fn next_due(due: Instant, poll: Duration, now: Instant) -> Instant {
    let next = crate::cadence::next_after(due, poll);
    if next < now {
        now
    } else {
        next
    }
}

/// One machine on the bus and where its schedule stands.
struct Scheduled {
    /// Shared with the config (not a copy per bus).
    config: Arc<MachineConfig>,
    plan: PollPlan,
    poll: Duration,
    /// When its next poll (or retry) is due.
    due: Instant,
    /// Failed polls in a row.
    failures: u32,
    /// When its first failed poll in a row began (`None` while it answers).
    failing_since: Option<Instant>,
    /// Per request: the exception code last seen, so a change is logged once.
    exceptions: Vec<Option<u8>>,
}

/// Poll the machines of one bus until `shutdown`; serve `writes` between
/// polls. Machines of other buses in `machines` are ignored. On shutdown the
/// request in flight is finished, then the task returns.
///
/// `heartbeat` beats on every turn of the loop (each poll, each write, and
/// on its own timer while waiting for the next machine due) and is retired
/// when the task ends.
///
/// What it logs is in a `bus` span. The span is entered only where a log
/// line can come from, not around the whole task: entering it on every
/// wake-up of every bus task was about 3 % of the agent's instructions at
/// 50 machines (BENCHMARKS.md, "Polling").
pub async fn run_bus(
    bus: BusConfig,
    machines: Vec<impl Into<Arc<MachineConfig>>>,
    samples: mpsc::Sender<Sample>,
    mut writes: mpsc::Receiver<Box<WriteRequest>>,
    stats: Arc<BusStats>,
    heartbeat: Heartbeat,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("bus", bus = %bus.id);
    if bus.transport == Transport::Mqtt {
        span.in_scope(|| {
            warn!(
                "bus {} is an mqtt bus; the Modbus poller leaves it alone",
                bus.id
            )
        });
        heartbeat.retire();
        return;
    }
    let mut schedule: Vec<Scheduled> = machines
        .into_iter()
        .map(Into::into)
        .filter(|m: &Arc<MachineConfig>| m.bus == bus.id)
        .map(|m| {
            let plan = PollPlan::new(&m, plan_reads(&m, &bus));
            Scheduled {
                poll: Duration::from_millis(m.poll_ms.max(1)),
                due: first_poll_at(Duration::from_millis(m.poll_ms.max(1))),
                failures: 0,
                failing_since: None,
                exceptions: vec![None; plan.requests().len()],
                plan,
                config: m,
            }
        })
        .collect();
    // Collected through a filter, the vector has room for four machines,
    // each with its config and plan: most buses (every TCP machine) hold one.
    schedule.shrink_to_fit();
    for m in &schedule {
        stats.health().entry(m.config.id.clone()).or_default();
    }
    let mut link = Link::new(bus, stats.clone());
    let mut writes_open = true;
    // One timer, moved on each turn, serves both the schedule and the
    // heartbeat: it fires when the next machine is due, or when the loop
    // must beat if that comes first. (A separate beat timer woke every bus
    // task once more a second, and each turn made a new timer and shutdown
    // listener.)
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);

    loop {
        heartbeat.beat();
        let next = schedule
            .iter()
            .enumerate()
            .min_by_key(|(_, m)| m.due)
            .map(|(i, m)| (i, m.due));
        // On the cadence too, so a bus whose machines are due later beats
        // in the same wake-up as the other loops.
        let beat_at = crate::cadence::next_at(heartbeat.beat_every());
        let wake = next.map_or(beat_at, |(_, due)| due.min(beat_at));
        if timer.deadline() != wake || timer.is_elapsed() {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            request = writes.recv(), if writes_open => match request {
                Some(request) => {
                    serve_writes(&mut link, &schedule, *request).instrument(span.clone()).await
                }
                None => writes_open = false,
            },
            () = &mut timer => {
                // Woken only to beat: nobody is due yet.
                let Some((i, _)) = next.filter(|&(_, due)| due <= wake) else { continue };
                let Some(sample) = poll_once(&mut link, &mut schedule[i], &stats, &span, &shutdown).await else {
                    continue;
                };
                if samples.send(sample).await.is_err() {
                    span.in_scope(|| debug!("sample receiver gone; bus task ends"));
                    break;
                }
            }
        }
    }
    heartbeat.retire();
    span.in_scope(|| debug!("bus task stopped"));
}

/// Poll one machine and move its schedule on; `None` if shutdown cut the
/// poll short. What it logs is logged in `span`.
async fn poll_once(
    link: &mut Link,
    m: &mut Scheduled,
    stats: &BusStats,
    span: &tracing::Span,
    shutdown: &CancellationToken,
) -> Option<Sample> {
    let started = Instant::now();
    let result = poll_machine(link, &m.plan, Some(shutdown)).await;
    let now = Instant::now();
    let at = Utc::now();
    let bus = link.bus();
    span.in_scope(|| settle_poll(m, result, bus, stats, started, now, at))
}

/// The bookkeeping after one poll of `m`: its schedule, its logs, the bus
/// counters, and the sample to send. The poll began at `started` and ended
/// at `now`.
fn settle_poll(
    m: &mut Scheduled,
    result: Result<super::link::Poll, LinkError>,
    bus: &BusConfig,
    stats: &BusStats,
    started: Instant,
    now: Instant,
    at: DateTime<Utc>,
) -> Option<Sample> {
    let id = m.config.id.clone();
    let content = match result {
        Err(LinkError::Cancelled) => return None,
        Ok(poll) => {
            if m.failures > 0 {
                info!(machine = %id, "answering again after {} failed poll(s)", m.failures);
            }
            m.failures = 0;
            m.failing_since = None;
            m.due = next_due(m.due, m.poll, now);
            log_exception_changes(m, &poll.exceptions);
            stats.record_ok(&id, at);
            SampleContent::Signals(poll.readings)
        }
        Err(e) => {
            m.failures = m.failures.saturating_add(1);
            let since = *m.failing_since.get_or_insert(started);
            let jitter: f64 = rand::rng().random_range(0.0..=1.0);
            let delay = retry_delay(
                started.saturating_duration_since(since),
                bus.backoff_min_ms,
                bus.backoff_max_ms,
                bus.backoff_after_ms,
                jitter,
            );
            // Counted from the end of the failed poll, so the neighbours
            // get their turns between two retries; a device that answers
            // again is read at most `timeout_ms` plus this wait later.
            m.due = now + delay.max(m.poll);
            let reason = e.to_string();
            if m.failures == 1 {
                warn!(machine = %id, "not answering: {reason}; retrying with backoff");
            } else {
                debug!(machine = %id, failures = m.failures, "still not answering: {reason}; next try in {delay:?}");
            }
            stats.record_error(&id, &reason, at);
            SampleContent::Unreachable { reason }
        }
    };
    Some(Sample {
        machine: id,
        at,
        mono: now,
        content,
    })
}

/// The requests whose exception changed since the last poll, with the new
/// one (`None`: the exception cleared). Remembers `now` in `last`.
fn exception_changes(last: &mut [Option<u8>], now: &[Option<u8>]) -> Vec<(usize, Option<u8>)> {
    let mut changes = Vec::new();
    for (i, (was, is)) in last.iter_mut().zip(now).enumerate() {
        if was != is {
            changes.push((i, *is));
            *was = *is;
        }
    }
    changes
}

fn log_exception_changes(m: &mut Scheduled, seen: &[Option<u8>]) {
    for (i, code) in exception_changes(&mut m.exceptions, seen) {
        let Some(req) = m.plan.requests().get(i) else {
            continue;
        };
        match code {
            Some(code) => warn!(
                machine = %m.config.id,
                "{req}: modbus exception {code:#04x} ({})",
                super::decode::exception_name(code)
            ),
            None => info!(machine = %m.config.id, "{req}: answers again without exception"),
        }
    }
}

/// Make a batch of writes to one machine, each read back, and answer it.
async fn serve_writes(link: &mut Link, schedule: &[Scheduled], request: WriteRequest) {
    let WriteRequest {
        machine,
        writes,
        reply,
    } = request;
    let result = match schedule.iter().find(|m| m.config.id == machine) {
        None => Err(WriteError::UnknownMachine(machine.clone())),
        Some(m) => write_all(link, &m.config, &writes).await,
    };
    match &result {
        Ok(()) => info!(machine = %machine, "wrote and read back {} value(s)", writes.len()),
        Err(e) => warn!(machine = %machine, "write failed: {e}"),
    }
    // The asker may have given up waiting; the write was still made.
    let _ = reply.send(result);
}

async fn write_all(
    link: &mut Link,
    machine: &MachineConfig,
    writes: &[super::RegisterWrite],
) -> Result<(), WriteError> {
    for write in writes {
        write_verified(link, machine, write).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_line_is_polled_on_whole_seconds_and_back_on_its_grid_after_falling_behind() {
        let second = Duration::from_secs(1);
        let on_grid = |t: Instant, p: Duration| {
            crate::cadence::next_after(t - Duration::from_nanos(1), p) == t
        };
        // A 1 s period starts on the next whole second: the same instant
        // for every machine, and soon even for a long period.
        let now = Instant::now();
        let first = first_poll_at(second);
        assert!(first > now - Duration::from_millis(1) && first <= now + second);
        assert!(on_grid(first, second));
        // Longer periods start on the next whole second too; shorter ones
        // within their period, on their grid.
        assert!(first_poll_at(Duration::from_secs(600)) <= first + second);
        for poll_ms in [1, 200, 250] {
            let poll = Duration::from_millis(poll_ms);
            let at = first_poll_at(poll);
            assert!(
                at <= Instant::now() + poll && on_grid(at, poll),
                "{poll_ms} ms"
            );
        }
        // On time: one period later.
        assert_eq!(
            next_due(first, second, first + Duration::from_millis(30)),
            first + second
        );
        let half = Duration::from_millis(500);
        assert_eq!(
            next_due(first, half, first + Duration::from_millis(30)),
            first + half
        );
        // Behind (the poll ended after its next point): at once, no burst.
        let late = first + Duration::from_millis(1_700);
        assert_eq!(next_due(first, second, late), late);
        // Off the grid (a retry, or that poll at once): back on it.
        let off = first + Duration::from_millis(2_300);
        assert_eq!(
            next_due(off, second, off + Duration::from_millis(5)),
            first + 3 * second
        );
        let ten = Duration::from_secs(10);
        let next = next_due(off, ten, off + Duration::from_millis(5));
        assert!(on_grid(next, ten) && next > off && next <= off + ten);
    }

    fn wait_ms(silent_s: u64, jitter: f64) -> u128 {
        retry_delay(Duration::from_secs(silent_s), 1000, 60_000, 60_000, jitter).as_millis()
    }

    #[test]
    fn a_device_silent_for_less_than_a_minute_is_retried_every_second() {
        for s in [0, 1, 10, 30, 59, 60] {
            assert_eq!(wait_ms(s, 0.0), 1000, "silent {s} s");
        }
        // With jitter, never more than a tenth longer.
        for s in [0, 12, 40, 60] {
            assert_eq!(wait_ms(s, 1.0), 1100, "silent {s} s");
        }
    }

    #[test]
    fn after_the_steady_minute_the_wait_doubles_up_to_the_maximum() {
        // Each retry waits as long as the silence beyond the minute: 1, 2,
        // 4, 8 ... s, so the silence after each retry doubles.
        let mut silent_ms = 61_000u64;
        let mut waits = Vec::new();
        for _ in 0..9 {
            let w = retry_delay(Duration::from_millis(silent_ms), 1000, 60_000, 60_000, 0.0);
            waits.push(w.as_millis());
            silent_ms += w.as_millis() as u64;
        }
        assert_eq!(
            waits,
            vec![1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000]
        );
        assert_eq!(
            retry_delay(Duration::MAX, 1000, 60_000, 60_000, 1.0).as_millis(),
            60_000
        );
    }

    #[test]
    fn without_a_steady_phase_the_backoff_starts_at_once_and_jitter_never_passes_the_maximum() {
        let ms = |silent_ms: u64, j: f64| {
            retry_delay(Duration::from_millis(silent_ms), 500, 5000, 0, j).as_millis()
        };
        assert_eq!(ms(0, 0.0), 500);
        assert_eq!(ms(2000, 0.0), 2000);
        assert_eq!(ms(2000, 1.0), 2200);
        assert_eq!(ms(4800, 1.0), 5000);
        assert_eq!(ms(u64::MAX, 1.0), 5000);
        // A maximum below the minimum: the minimum wins.
        assert_eq!(
            retry_delay(Duration::ZERO, 2000, 1000, 0, 1.0).as_millis(),
            2000
        );
    }

    #[test]
    fn an_exception_is_reported_once_per_change_not_every_poll() {
        let mut last = vec![None, None];
        assert_eq!(
            exception_changes(&mut last, &[Some(2), None]),
            vec![(0, Some(2))]
        );
        assert!(exception_changes(&mut last, &[Some(2), None]).is_empty());
        assert_eq!(
            exception_changes(&mut last, &[Some(4), Some(2)]),
            vec![(0, Some(4)), (1, Some(2))]
        );
        assert_eq!(
            exception_changes(&mut last, &[None, Some(2)]),
            vec![(0, None)]
        );
    }

    #[test]
    fn stats_snapshot_shows_counters_and_machine_health() {
        let stats = BusStats::new("cell-a");
        stats.requests.fetch_add(3, Ordering::Relaxed);
        let at = Utc::now();
        stats.record_error("press07", "no reply", at);
        stats.record_error("press07", "no reply", at);
        stats.record_ok("mill02", at);
        let s = stats.snapshot();
        assert_eq!(s.requests, 3);
        assert_eq!(s.machines["press07"].failures, 2);
        assert_eq!(
            s.machines["press07"].last_error.as_deref(),
            Some("no reply")
        );
        assert_eq!(s.machines["mill02"].last_ok, Some(at));
        assert_eq!(s.machines["press07"].last_error_at, Some(at));
    }
}
