//! Living under systemd: readiness and status notifications, the watchdog,
//! and how logs are written when the journal is listening.
//!
//! This module owns the `sd_notify` protocol (through the `sd-notify` crate)
//! and the liveness ledger behind the watchdog. Every long-running loop (a
//! Modbus bus, an MQTT bus, the uplink) registers a [`Heartbeat`] with the
//! one [`Liveness`] and calls [`Heartbeat::beat`] on every turn of its loop,
//! including turns where it only waited. [`run_watchdog`] pets systemd
//! (`WATCHDOG=1`) only while every registered heartbeat has beaten within the
//! watchdog interval: a stuck or dead loop stops the petting and systemd
//! restarts the service. A loop that ends on purpose (shutdown, reload)
//! calls [`Heartbeat::retire`]; a heartbeat that is merely dropped (a task
//! that panicked or returned early) stays registered and silent, so the
//! watchdog notices it.
//!
//! Outside systemd (no `NOTIFY_SOCKET`, no `WATCHDOG_USEC`) every function
//! here does nothing. Notifications are best effort: a failure is logged,
//! never fatal. This module never reads the config and never stops the
//! process itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Tell systemd the service is ready (config loaded, store open, loops started).
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("running")]);
}

/// Tell systemd the service is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Tell systemd a reload (SIGHUP) has started; call [`ready`] when it is done.
pub fn reloading() {
    // systemd >= 253 wants the monotonic time with RELOADING=1; older ones ignore it.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(_) => send(&[NotifyState::Reloading, NotifyState::Status("reloading")]),
    }
}

/// A one-line status shown by `systemctl status linegate`.
pub fn status(text: &str) {
    // One line: a newline would end the STATUS= field early.
    let line = text.replace('\n', " ");
    send(&[NotifyState::Status(&line)]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The watchdog interval systemd expects pets within (`WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// One registered loop: its name and when it last beat.
#[derive(Debug)]
struct Slot {
    name: String,
    last_beat: Mutex<Instant>,
}

/// The ledger of every loop the watchdog watches. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Liveness {
    slots: Arc<Mutex<Vec<Arc<Slot>>>>,
    /// How often loops beat when they have nothing else to do.
    beat_every: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            slots: Arc::default(),
            beat_every: DEFAULT_BEAT_EVERY,
        }
    }
}

/// How often an idle loop beats when no watchdog interval says otherwise.
const DEFAULT_BEAT_EVERY: Duration = Duration::from_secs(1);

/// A loop's handle on the ledger. Call [`beat`](Heartbeat::beat) every turn.
#[derive(Debug)]
pub struct Heartbeat {
    slot: Arc<Slot>,
    liveness: Liveness,
}

impl Heartbeat {
    /// This loop is alive now.
    pub fn beat(&self) {
        *lock(&self.slot.last_beat) = Instant::now();
    }

    /// A timer for the loop's `select!`: a loop that waits on traffic (a
    /// quiet broker, silent machines) adds a branch on it and beats when it
    /// fires, so it beats while idle but never while stuck in a branch body.
    /// It ticks on the line's cadence ([`crate::cadence`]), in the same
    /// wake-ups as the polls; missed ticks are skipped, not bunched.
    pub fn ticker(&self) -> tokio::time::Interval {
        crate::cadence::interval(self.liveness.beat_every)
    }

    /// How often the loop must beat while it waits: for a loop that already
    /// wakes on its own timer (a poll schedule) and can bound that wait
    /// instead of adding a [`ticker`](Heartbeat::ticker).
    pub fn beat_every(&self) -> Duration {
        self.liveness.beat_every
    }

    /// The loop ends on purpose: stop watching it.
    pub fn retire(self) {
        lock(&self.liveness.slots).retain(|s| !Arc::ptr_eq(s, &self.slot));
    }

    pub fn name(&self) -> &str {
        &self.slot.name
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these small locks cannot leave bad data behind.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Liveness {
    pub fn new() -> Self {
        Self::default()
    }

    /// A ledger whose loops beat often enough for a watchdog of `interval`
    /// (a quarter of it, between 10 ms and 1 s).
    pub fn for_watchdog(interval: Duration) -> Self {
        Liveness {
            beat_every: (interval / 4).clamp(Duration::from_millis(10), DEFAULT_BEAT_EVERY),
            ..Self::default()
        }
    }

    /// Stop watching every loop, also the silent ones: for a pipeline that
    /// was stopped as a whole (a reload), whose aborted tasks could not
    /// retire their heartbeats.
    pub fn forget_all(&self) {
        lock(&self.slots).clear();
    }

    /// Watch one more loop, e.g. `"bus cell-a"` or `"uplink"`. It counts as
    /// having beaten now.
    pub fn register(&self, name: impl Into<String>) -> Heartbeat {
        let slot = Arc::new(Slot {
            name: name.into(),
            last_beat: Mutex::new(Instant::now()),
        });
        lock(&self.slots).push(slot.clone());
        Heartbeat {
            slot,
            liveness: self.clone(),
        }
    }

    /// Names of the loops that have not beaten within `max_silence` of `now`
    /// (empty = all alive). Pure apart from reading the ledger.
    pub fn silent(&self, now: Instant, max_silence: Duration) -> Vec<String> {
        lock(&self.slots)
            .iter()
            .filter(|s| now.saturating_duration_since(*lock(&s.last_beat)) > max_silence)
            .map(|s| s.name.clone())
            .collect()
    }

    /// Names of all registered loops.
    pub fn registered(&self) -> Vec<String> {
        lock(&self.slots).iter().map(|s| s.name.clone()).collect()
    }
}

/// Pet the systemd watchdog while every heartbeat is alive, until `shutdown`.
///
/// Without `WATCHDOG_USEC` (not under systemd, or no `WatchdogSec=`) it just
/// waits for shutdown. Pets are sent every half interval; a loop counts as
/// silent once it has not beaten for a whole interval, so loops must beat at
/// least every half interval (poll loops beat on each turn of their timer).
pub async fn run_watchdog(liveness: Liveness, shutdown: CancellationToken) {
    match watchdog_interval() {
        Some(interval) => run_watchdog_every(liveness, interval, shutdown).await,
        None => shutdown.cancelled().await,
    }
}

/// [`run_watchdog`] with an explicit interval (what `WATCHDOG_USEC` would say).
pub async fn run_watchdog_every(
    liveness: Liveness,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval((interval / 2).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What was last reported, so a silence is logged once, not every tick.
    let mut was_silent: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let silent = liveness.silent(Instant::now(), interval);
        if silent.is_empty() {
            if !was_silent.is_empty() {
                tracing::info!("every loop beats again; petting the watchdog");
            }
            send(&[NotifyState::Watchdog]);
        } else if silent != was_silent {
            let list = silent.join(", ");
            tracing::error!(silent = %list, "loops stopped beating; no longer petting the watchdog");
            status(&format!("stuck: {list}"));
        }
        was_silent = silent;
    }
}

/// Set up logging to stderr. Under systemd's journal (`JOURNAL_STREAM` names
/// our stderr) lines carry no colours and no timestamps: journald adds its
/// own. `verbosity`: 0 = info, 1 = debug, 2+ = trace; `RUST_LOG` wins when
/// set (`debug`, or per module: `info,linegate::source=debug`); one it cannot
/// read is reported in the log, and the level from `verbosity` applies.
/// Calling it twice keeps the first setup.
pub fn init_logging(verbosity: u8) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let level = match verbosity {
        0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let mut unreadable = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => match text.parse::<Targets>() {
            Ok(targets) => targets,
            Err(e) => {
                unreadable = Some((text, e));
                Targets::new().with_default(level)
            }
        },
        _ => Targets::new().with_default(level),
    };
    // One output, so the filter applies to the whole subscriber: spans it
    // rejects are never made, and entering the ones it keeps (every bus task
    // enters its span on each wake-up) skips per-layer filter bookkeeping.
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let installed = if stderr_is_journal() {
        let layer = layer.with_ansi(false).without_time();
        tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init()
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let layer = layer.with_ansi(ansi);
        tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init()
    };
    if let (Ok(()), Some((text, e))) = (installed, unreadable) {
        tracing::warn!("RUST_LOG={text:?} is not a log filter ({e}); logging at {level}");
    }
}

/// True when `JOURNAL_STREAM` (`<device>:<inode>`) is our stderr, as
/// systemd.exec(5) recommends checking (a child of a service inherits the
/// variable with a different stderr).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        // No /proc: trust the variable.
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_heartbeat_is_alive() {
        let l = Liveness::new();
        let _h = l.register("bus a");
        assert!(l.silent(Instant::now(), Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn a_heartbeat_that_stops_beating_is_named_as_silent() {
        let l = Liveness::new();
        let a = l.register("bus a");
        let _b = l.register("uplink");
        a.beat();
        let later = Instant::now() + Duration::from_secs(5);
        let mut silent = l.silent(later, Duration::from_secs(1));
        silent.sort();
        assert_eq!(silent, vec!["bus a".to_string(), "uplink".to_string()]);
    }

    #[test]
    fn a_dropped_heartbeat_stays_watched_but_a_retired_one_does_not() {
        let l = Liveness::new();
        drop(l.register("crashed loop"));
        l.register("finished loop").retire();
        assert_eq!(l.registered(), vec!["crashed loop".to_string()]);
    }

    #[test]
    fn forgetting_all_heartbeats_leaves_nothing_silent() {
        let l = Liveness::new();
        drop(l.register("aborted loop"));
        l.forget_all();
        let later = Instant::now() + Duration::from_secs(5);
        assert!(l.silent(later, Duration::from_secs(1)).is_empty());
    }

    #[tokio::test]
    async fn loops_beat_four_times_per_watchdog_interval_but_at_least_every_second() {
        let hb = Liveness::for_watchdog(Duration::from_secs(2)).register("bus a");
        assert_eq!(hb.ticker().period(), Duration::from_millis(500));
        let hb = Liveness::for_watchdog(Duration::from_secs(30)).register("bus a");
        assert_eq!(hb.ticker().period(), Duration::from_secs(1));
        assert_eq!(hb.beat_every(), Duration::from_secs(1));
    }
}
