//! Accounting: attributes every millisecond of a machine's time to exactly
//! one state and one period, and closes periods with their counts and ISO
//! 22400-2 KPIs. Pure: observations in, [`MachineEvent`]s out; no clock, no
//! I/O. The engine feeds it; tests feed it hand-written timelines.
//!
//! Time. All arithmetic is in integer milliseconds on a *timeline*: wall time
//! derived from the monotonic clock, `anchor_wall + (mono - anchor_mono)`.
//! Durations therefore come from the monotonic clock and a small NTP
//! correction creates or destroys no time. The timeline never runs
//! backwards; the clock rule ([`judge_wall_clock`]) compares each read's wall
//! time with it. A wall clock that moved by more than [`CLOCK_STEP_MS`]
//! against the timeline stepped (a gateway without RTC syncing after boot,
//! a manual change), and the step is logged and added to the open periods'
//! `clock_step`:
//! - forward, past the timeline: the open periods close at the last read
//!   before the step and new ones open at the new wall time; the wall time
//!   the clock skipped was never lived and belongs to no period;
//! - backward (or forward but not past the timeline): the timeline does not
//!   follow, it runs on, ahead of the wall clock by the step (`wall_lag_ms`),
//!   so no instant is labelled twice, no period overlaps another and `since`
//!   never goes back. It meets the wall clock again at the next forward
//!   step, or at a restart after the wall clock has passed the last instant
//!   recorded.
//!
//! States. The state seen by a read holds from that read until the read that
//! sees a different one: a change is dated at the read that saw it. A failed
//! read makes the machine `offline` from its last good read. A state seen for
//! less than `min_dwell_ms` is not a state: its time stays with the state
//! before it. The shift calendar turns planned-off time into `planned_stop`
//! at its exact boundaries, below `offline` in precedence
//! (offline > planned_stop > down > setup > running > idle). Time the agent
//! did not run is `offline` (at start-up, and from a snapshot's last
//! committed instant on resume).
//!
//! Commitment. Time is attributed ("committed") only once it is known: up to
//! the last read, or while a new state is waiting out its dwell only up to
//! where that state began. So a period closes when the committed timeline
//! passes its end, normally at the first read after the end; a machine that
//! goes silent is made offline by [`Account::tick`] after its staleness time.
//!
//! Periods. Fixed intervals of `period_minutes` aligned to the site's local
//! wall clock, and, with a calendar, one period per shift. A spell that
//! crosses a boundary is split there. The milliseconds of a period add up to
//! exactly `end - start`; the first period after a fresh start counts the
//! part before the start as offline.
//!
//! Counts. Parts count in the period that holds the read that saw them.
//! Parts the counters could not date (made while the agent was not running
//! or the machine was offline) count only in `produced_unobserved` of that
//! period: performance, quality and OEE use the parts made in the period's
//! observed running time, never those.
//! `stops` and `failures` count in the period where a `down` spell starts;
//! a micro-stop (a `down` spell shorter than `micro_stop_s`) counts in the
//! period that holds its end, when its length is known.

use std::sync::Arc;

use chrono::{DateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::counters::{CountDelta, MachineCounters};
use super::shift::ShiftCalendar;
use super::{
    ClockStep, ClosedPeriod, Kpi, MachineEvent, MachineState, PeriodCounts, PeriodKind,
    StateChange, StateSeconds,
};
use crate::config::{Config, MachineConfig};

/// A wall clock that moves by more than this against the monotonic clock stepped.
pub const CLOCK_STEP_MS: i64 = 2_000;

/// What a read's wall time says about the wall clock ([`judge_wall_clock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WallClock {
    /// Within [`CLOCK_STEP_MS`] of where the timeline expects it.
    Steady,
    /// The wall clock stepped by `by_ms` (negative: backwards); the timeline
    /// moves forward by `jump_ms` (0 unless the wall clock is now ahead of
    /// it) and then runs `lag_ms` ahead of the wall clock.
    Stepped {
        by_ms: i64,
        jump_ms: i64,
        lag_ms: i64,
    },
}

/// The clock rule. `timeline_ms` is the timeline's now, `wall_ms` the wall
/// clock's, `lag_ms` how far the timeline already runs ahead of the wall
/// clock (after an earlier backward step; 0 normally). The timeline never
/// goes back: it follows a step only forward, and only as far as the wall
/// clock is ahead of it.
pub fn judge_wall_clock(timeline_ms: i64, wall_ms: i64, lag_ms: i64) -> WallClock {
    let ahead = wall_ms - timeline_ms;
    let by_ms = ahead + lag_ms;
    if by_ms.abs() <= CLOCK_STEP_MS {
        return WallClock::Steady;
    }
    WallClock::Stepped {
        by_ms,
        jump_ms: ahead.max(0),
        lag_ms: (-ahead).max(0),
    }
}

/// Everything the accounting of one machine needs from the config.
#[derive(Debug, Clone)]
pub struct AccountSettings {
    pub machine: String,
    pub tz: Tz,
    pub period_ms: i64,
    pub micro_stop_ms: i64,
    pub min_dwell_ms: i64,
    /// From `counters.ideal_cycle_s`; an order may override it.
    pub ideal_cycle_s: Option<f64>,
    /// A good counter is configured (else good = produced - scrap).
    pub has_good_counter: bool,
    pub calendar: Option<Arc<ShiftCalendar>>,
}

impl AccountSettings {
    pub fn from_config(
        config: &Config,
        machine: &MachineConfig,
        calendar: Option<Arc<ShiftCalendar>>,
    ) -> Self {
        AccountSettings {
            machine: machine.id.clone(),
            tz: config.gateway.timezone.parse().unwrap_or(chrono_tz::UTC),
            period_ms: i64::from(config.accounting.period_minutes.max(1)) * 60_000,
            micro_stop_ms: i64::try_from(config.accounting.micro_stop_s)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
            min_dwell_ms: machine
                .state
                .as_ref()
                .map_or(0, |s| i64::try_from(s.min_dwell_ms).unwrap_or(i64::MAX)),
            ideal_cycle_s: machine
                .counters
                .as_ref()
                .and_then(|c| c.ideal_cycle_s)
                .filter(|t| t.is_finite() && *t > 0.0),
            has_good_counter: machine.counters.as_ref().is_some_and(|c| c.good.is_some()),
            calendar,
        }
    }
}

/// What one read of a machine said.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// The rules gave a state (running, setup, down or idle).
    State {
        state: MachineState,
        reason: Option<String>,
        fault: bool,
    },
    /// The machine answered but the rules could not decide: nothing changes.
    Unknown,
    /// The read failed: offline from the last good read.
    Offline { reason: String },
}

/// One read, with its wall and monotonic time.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub at: DateTime<Utc>,
    /// Monotonic milliseconds (any fixed origin within one run of the agent).
    pub mono_ms: i64,
    pub observed: Observed,
    pub counts: CountDelta,
}

/// A state as the rules or the link saw it, from `since`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Spell {
    state: MachineState,
    reason: Option<String>,
    fault: bool,
    since: i64,
}

/// The running sums of one open period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeriodAcc {
    pub kind: PeriodKind,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Milliseconds per state, indexed like [`MachineState::ALL`].
    pub ms: [i64; 6],
    pub counts: PeriodCounts,
    /// Sum of good-counter parts (used when a good counter exists).
    pub good_counted: u64,
    /// Ideal seconds of the parts made (ideal cycle time x parts).
    pub ideal_s: f64,
    /// Parts made while no ideal cycle time was known.
    pub parts_without_ideal: u64,
    pub has_good_counter: bool,
    /// Sum of the wall-clock steps seen while the period was open (0: none).
    #[serde(default)]
    pub clock_step_ms: i64,
}

fn idx(s: MachineState) -> usize {
    match s {
        MachineState::Running => 0,
        MachineState::Setup => 1,
        MachineState::Down => 2,
        MachineState::Idle => 3,
        MachineState::PlannedStop => 4,
        MachineState::Offline => 5,
    }
}

/// Milliseconds on the timeline as a UTC time.
pub fn utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn ratio(n: f64, d: f64) -> Option<f64> {
    if d > 0.0 {
        Some(n / d)
    } else {
        None
    }
}

impl PeriodAcc {
    fn open(kind: PeriodKind, start_ms: i64, end_ms: i64, has_good_counter: bool) -> Self {
        PeriodAcc {
            kind,
            start_ms,
            end_ms,
            ms: [0; 6],
            counts: PeriodCounts::default(),
            good_counted: 0,
            ideal_s: 0.0,
            parts_without_ideal: 0,
            has_good_counter,
            clock_step_ms: 0,
        }
    }

    fn add_counts(&mut self, d: &CountDelta, ideal: Option<f64>) {
        self.counts.produced += d.produced;
        self.counts.produced_unobserved += d.produced_unobserved;
        self.counts.scrap += d.scrap;
        self.good_counted += d.good.unwrap_or(0);
        match ideal {
            Some(t) => self.ideal_s += t * d.produced as f64,
            None => self.parts_without_ideal += d.produced,
        }
    }

    /// The period as reported, up to `end_ms` (its end when closed).
    pub fn to_period(&self, machine: &str, ideal_known: bool) -> ClosedPeriod {
        let sec = |s: MachineState| self.ms[idx(s)] as f64 / 1000.0;
        let mut counts = self.counts;
        counts.good = if self.has_good_counter {
            self.good_counted
        } else {
            counts.produced.saturating_sub(counts.scrap)
        };
        let ms = |s: MachineState| self.ms[idx(s)] as f64;
        let apt = ms(MachineState::Running);
        let aubt = apt + ms(MachineState::Setup) + ms(MachineState::Down);
        let pbt = aubt + ms(MachineState::Idle);
        let len: f64 = self.ms.iter().map(|&m| m as f64).sum();
        let availability = ratio(apt, pbt);
        let performance = if (ideal_known || self.ideal_s > 0.0) && self.parts_without_ideal == 0 {
            ratio(self.ideal_s * 1000.0, apt)
        } else {
            None
        };
        let quality = ratio(counts.good as f64, counts.produced as f64);
        let oee = match (availability, performance, quality) {
            (Some(a), Some(p), Some(q)) => Some(a * p * q),
            _ => None,
        };
        ClosedPeriod {
            machine: machine.to_string(),
            kind: self.kind.clone(),
            start: utc(self.start_ms),
            end: utc(self.end_ms),
            seconds: StateSeconds {
                running: sec(MachineState::Running),
                setup: sec(MachineState::Setup),
                down: sec(MachineState::Down),
                idle: sec(MachineState::Idle),
                planned_stop: sec(MachineState::PlannedStop),
                offline: sec(MachineState::Offline),
            },
            counts,
            kpi: Kpi {
                availability,
                utilisation_efficiency: ratio(apt, aubt),
                allocation_efficiency: ratio(aubt, pbt),
                performance,
                quality,
                oee,
                coverage: ratio(len - ms(MachineState::Offline), len),
            },
            clock_step: (self.clock_step_ms != 0).then(|| ClockStep {
                by_s: self.clock_step_ms as f64 / 1000.0,
            }),
        }
    }

    /// Total milliseconds attributed so far.
    pub fn total_ms(&self) -> i64 {
        self.ms.iter().sum()
    }
}

/// What the calendar says from `from` until `until`.
#[derive(Debug, Clone)]
struct CalSpan {
    from: i64,
    until: i64,
    planned: bool,
    reason: Option<&'static str>,
    /// (name, start, end) of the shift covering the span.
    shift: Option<(String, i64, i64)>,
}

/// The state the agent reports, as committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reported {
    state: MachineState,
    since: i64,
    reason: Option<String>,
}

/// An open `down` spell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DownSpell {
    since: i64,
}

/// The open period of one machine, saved so that a restart resumes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountSnapshot {
    pub machine: String,
    #[serde(with = "rfc3339")]
    pub saved_at: DateTime<Utc>,
    /// Time is attributed up to here; after it, until the agent runs again, is offline.
    #[serde(with = "rfc3339")]
    pub committed_to: DateTime<Utc>,
    /// The reported state, since when, and why.
    pub state: MachineState,
    #[serde(with = "rfc3339")]
    pub since: DateTime<Utc>,
    pub reason: Option<String>,
    stable: Spell,
    down: Option<DownSpell>,
    pub interval: Option<PeriodAcc>,
    pub shift: Option<PeriodAcc>,
    pending_counts: Vec<(i64, CountDelta)>,
    /// An order's ideal cycle time, overriding the config's.
    #[serde(default)]
    pub ideal_override_s: Option<f64>,
    /// Part counters (last raw values, totals), filled in by the engine.
    #[serde(default)]
    pub counters: Option<MachineCounters>,
    /// The latest "attributed up to" mark saved after this snapshot (filled
    /// in by the store when it loads the snapshot): from `committed_to` to
    /// here the state was `stable`, so a crash turns only the time after the
    /// mark into `offline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_to: Option<DateTime<Utc>>,
}

/// A snapshot's timestamps: the same RFC 3339 text as chrono's own serde,
/// written in one piece. (chrono writes it a character at a time through
/// serde_json's escaping, which was a third of the work of saving the
/// snapshots every few seconds.)
mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }
}

impl AccountSnapshot {
    /// This snapshot as the account would have it at `to` had only time
    /// passed: its reported state holding from `committed_to` to `to`, as a
    /// restart attributes the time up to an "attributed up to" mark
    /// ([`Account::resume`]). `None` when `to` is before `committed_to` or
    /// at or past the end of an open period (a period would have closed).
    pub fn projected(&self, to: DateTime<Utc>) -> Option<AccountSnapshot> {
        let (from, to_ms) = (self.committed_to.timestamp_millis(), to.timestamp_millis());
        if to_ms < from {
            return None;
        }
        let mut p = self.clone();
        for acc in [&mut p.interval, &mut p.shift].into_iter().flatten() {
            if to_ms >= acc.end_ms {
                return None;
            }
            acc.ms[idx(self.state)] += to_ms - from;
        }
        p.committed_to = to;
        Some(p)
    }

    /// Whether `later` says nothing this snapshot and the marks up to
    /// `later.committed_to` do not: it is this one [`projected`] there
    /// (when it was saved aside). The engine does not store such a
    /// snapshot again; a restart or `linegate status` projects the stored
    /// one to the machine's mark instead. A part counted, a state, spell or
    /// counter changed, a period rolled or a clock step: not implied.
    ///
    /// Left out: when each counter was last read (`last_at_ms`), which
    /// moves with every read. After a restart from the stored snapshot the
    /// counter plausibility rule judges the first step over up to
    /// `engine::SNAPSHOT_REFRESH_MS` more time than it would have: that
    /// step spans the agent's absence anyway (time not observed).
    ///
    /// [`projected`]: AccountSnapshot::projected
    pub fn implies(&self, later: &AccountSnapshot) -> bool {
        self.projected(later.committed_to).is_some_and(|mut p| {
            p.saved_at = later.saved_at;
            p.observed_to = later.observed_to;
            if let (Some(mine), Some(theirs)) = (&mut p.counters, &later.counters) {
                mine.take_read_times(theirs);
            }
            p == *later
        })
    }

    /// The open interval period so far (for `linegate status`).
    pub fn interval_so_far(&self) -> Option<ClosedPeriod> {
        self.interval.as_ref().map(|acc| {
            let mut p = acc.to_period(&self.machine, false);
            p.end = self.committed_to;
            p
        })
    }
}

/// The accounting of one machine.
#[derive(Debug, Clone)]
pub struct Account {
    s: AccountSettings,
    anchor_wall: i64,
    anchor_mono: i64,
    /// How far the timeline runs ahead of the wall clock after a backward
    /// step it did not follow (0 normally).
    wall_lag_ms: i64,
    /// Time is attributed up to here.
    committed_to: i64,
    last_obs: i64,
    last_good: i64,
    /// The confirmed observed state (the calendar is applied on commit).
    stable: Spell,
    /// A different state seen but not yet held for `min_dwell_ms`.
    candidate: Option<Spell>,
    reported: Reported,
    down: Option<DownSpell>,
    interval: Option<PeriodAcc>,
    shift: Option<PeriodAcc>,
    /// Parts seen at instants not yet committed.
    pending_counts: Vec<(i64, CountDelta)>,
    cal: Option<CalSpan>,
    /// The next period opened starts at its natural start; the time before
    /// the commit point is offline (fresh start). False: it starts where
    /// the commit is (contiguous, or after a clock step).
    fill_before: bool,
    ideal_override_s: Option<f64>,
    /// A clock step seen by a period that closed empty, for the next one.
    carried_clock_step_ms: i64,
}

impl Account {
    /// A machine seen for the first time: offline (agent not running) until its first read.
    pub fn new(
        s: AccountSettings,
        at: DateTime<Utc>,
        mono_ms: i64,
        out: &mut Vec<MachineEvent>,
    ) -> Self {
        let t = at.timestamp_millis();
        let stable = Spell {
            state: MachineState::Offline,
            reason: Some("agent not running".into()),
            fault: false,
            since: t,
        };
        let reported = Reported {
            state: MachineState::Offline,
            since: t,
            reason: stable.reason.clone(),
        };
        out.push(MachineEvent::State(StateChange {
            machine: s.machine.clone(),
            state: MachineState::Offline,
            prev: None,
            since: utc(t),
            reason: reported.reason.clone(),
        }));
        let mut acc = Account {
            s,
            anchor_wall: t,
            anchor_mono: mono_ms,
            wall_lag_ms: 0,
            committed_to: t,
            last_obs: t,
            last_good: t,
            stable,
            candidate: None,
            reported,
            down: None,
            interval: None,
            shift: None,
            pending_counts: Vec::new(),
            cal: None,
            fill_before: true,
            ideal_override_s: None,
            carried_clock_step_ms: 0,
        };
        acc.roll(t, out);
        acc
    }

    /// Resume from a snapshot. Up to its `observed_to` mark (if any) the
    /// machine was in the snapshot's state: that time is attributed to it.
    /// From there until now, while the agent was not running, it is offline
    /// (closing the periods that ended meanwhile). So the offline spell
    /// starts no earlier than what was recorded, and its `prev` is the state
    /// last reported. A wall clock behind the last recorded instant (a
    /// gateway without RTC, before NTP) does not make time run backwards:
    /// the timeline resumes at that instant and runs ahead of the wall clock
    /// until it is corrected (the clock rule in the module doc).
    pub fn resume(
        s: AccountSettings,
        snap: &AccountSnapshot,
        at: DateTime<Utc>,
        mono_ms: i64,
        out: &mut Vec<MachineEvent>,
    ) -> Self {
        let last = snap.committed_to.timestamp_millis();
        let observed = snap
            .observed_to
            .map_or(last, |m| m.timestamp_millis().max(last));
        let wall = at.timestamp_millis();
        let t = wall.max(observed);
        if t > wall {
            tracing::warn!(
                machine = %s.machine,
                behind_ms = t - wall,
                "wall clock is behind the last recorded instant; resuming there"
            );
        }
        let has_good = s.has_good_counter;
        let mut acc = Account {
            s,
            anchor_wall: t,
            anchor_mono: mono_ms,
            wall_lag_ms: t - wall,
            committed_to: last,
            last_obs: observed,
            last_good: observed,
            stable: snap.stable.clone(),
            candidate: None,
            reported: Reported {
                state: snap.state,
                since: snap.since.timestamp_millis(),
                reason: snap.reason.clone(),
            },
            down: snap.down.clone(),
            interval: snap.interval.clone(),
            shift: snap.shift.clone(),
            pending_counts: snap.pending_counts.clone(),
            cal: None,
            fill_before: false,
            ideal_override_s: snap.ideal_override_s,
            carried_clock_step_ms: 0,
        };
        for p in [&mut acc.interval, &mut acc.shift].into_iter().flatten() {
            p.has_good_counter = has_good;
        }
        // What was attributed after the snapshot, before the agent stopped.
        acc.commit_to(observed, out);
        acc.stable = Spell {
            state: MachineState::Offline,
            reason: Some("agent not running".into()),
            fault: false,
            since: observed,
        };
        acc.last_obs = t;
        acc.commit_to(t, out);
        acc.last_good = t;
        acc
    }

    pub fn machine(&self) -> &str {
        &self.s.machine
    }

    pub fn settings(&self) -> &AccountSettings {
        &self.s
    }

    /// An order's own ideal cycle time (wins over the config's); `None` to drop it.
    pub fn set_ideal_cycle_s(&mut self, ideal: Option<f64>) {
        self.ideal_override_s = ideal.filter(|t| t.is_finite() && *t > 0.0);
    }

    fn ideal(&self) -> Option<f64> {
        self.ideal_override_s.or(self.s.ideal_cycle_s)
    }

    /// The reported state, since when and why.
    pub fn state(&self) -> (MachineState, DateTime<Utc>, Option<&str>) {
        (
            self.reported.state,
            utc(self.reported.since),
            self.reported.reason.as_deref(),
        )
    }

    /// Time is attributed up to here.
    pub fn committed_to(&self) -> DateTime<Utc> {
        utc(self.committed_to)
    }

    /// Timeline milliseconds of a monotonic instant.
    fn timeline(&self, mono_ms: i64) -> i64 {
        self.anchor_wall + (mono_ms - self.anchor_mono)
    }

    /// The timeline's "now" for a monotonic instant (for callers without a wall time).
    pub fn now(&self, mono_ms: i64) -> DateTime<Utc> {
        utc(self.timeline(mono_ms))
    }

    /// Take one read.
    pub fn observe(&mut self, obs: Observation, out: &mut Vec<MachineEvent>) {
        let mut t = self.timeline(obs.mono_ms);
        let wall = obs.at.timestamp_millis();
        if let WallClock::Stepped {
            by_ms,
            jump_ms,
            lag_ms,
        } = judge_wall_clock(t, wall, self.wall_lag_ms)
        {
            self.clock_step(by_ms, jump_ms, out);
            self.wall_lag_ms = lag_ms;
            t += jump_ms;
        }
        let t = t.max(self.last_obs);
        let from = self.last_good.max(self.committed_to);
        let seen = match obs.observed {
            Observed::State {
                state,
                reason,
                fault,
            } => {
                self.last_good = t;
                Spell {
                    state,
                    reason,
                    fault,
                    since: t,
                }
            }
            Observed::Unknown => {
                self.last_good = t;
                let mut same = self
                    .candidate
                    .clone()
                    .unwrap_or_else(|| self.stable.clone());
                same.since = t;
                same
            }
            Observed::Offline { reason } => Spell {
                state: MachineState::Offline,
                reason: Some(reason),
                fault: false,
                since: from,
            },
        };
        self.step(seen, t, out);
        self.last_obs = t;
        if !obs.counts.is_zero() {
            self.pending_counts.push((t, obs.counts));
        }
    }

    /// Time passes without a read: a machine silent for longer than
    /// `stale_ms` is offline from its last good read; an offline machine's
    /// time is committed up to now so its periods close on time.
    pub fn tick(&mut self, mono_ms: i64, stale_ms: i64, out: &mut Vec<MachineEvent>) {
        let now = self.timeline(mono_ms).max(self.last_obs);
        let target = self.candidate.as_ref().unwrap_or(&self.stable).state;
        if target == MachineState::Offline {
            let spell = self
                .candidate
                .clone()
                .unwrap_or_else(|| self.stable.clone());
            self.step(spell, now, out);
        } else if now - self.last_obs > stale_ms {
            let silent_s = (now - self.last_obs) as f64 / 1000.0;
            let spell = Spell {
                state: MachineState::Offline,
                reason: Some(format!("no data for {silent_s:.1} s")),
                fault: false,
                since: self.last_good.max(self.committed_to),
            };
            self.step(spell, now, out);
        }
    }

    /// The wall clock at a monotonic instant without a read (the engine's
    /// tick), for a machine silent for longer than `stale_ms`: applies the
    /// clock rule, so a silent machine's periods follow a step too. (A
    /// machine that is read sees the step at its next read; checking it
    /// here could judge a read taken before the step, and still queued, as
    /// a step back.)
    pub fn wall_clock(
        &mut self,
        at: DateTime<Utc>,
        mono_ms: i64,
        stale_ms: i64,
        out: &mut Vec<MachineEvent>,
    ) {
        let t = self.timeline(mono_ms);
        if t - self.last_obs <= stale_ms {
            return;
        }
        if let WallClock::Stepped {
            by_ms,
            jump_ms,
            lag_ms,
        } = judge_wall_clock(t, at.timestamp_millis(), self.wall_lag_ms)
        {
            self.clock_step(by_ms, jump_ms, out);
            self.wall_lag_ms = lag_ms;
        }
    }

    /// A clean stop: attribute time up to the last read (a state still
    /// waiting out its dwell is dropped), so a snapshot holds everything known.
    pub fn stop(&mut self, out: &mut Vec<MachineEvent>) {
        self.candidate = None;
        let last = self.last_obs;
        self.commit_to(last, out);
    }

    /// The open period, to save.
    pub fn snapshot(&self, saved_at: DateTime<Utc>) -> AccountSnapshot {
        AccountSnapshot {
            machine: self.s.machine.clone(),
            saved_at,
            committed_to: utc(self.committed_to),
            state: self.reported.state,
            since: utc(self.reported.since),
            reason: self.reported.reason.clone(),
            stable: self.stable.clone(),
            down: self.down.clone(),
            interval: self.interval.clone(),
            shift: self.shift.clone(),
            pending_counts: self.pending_counts.clone(),
            ideal_override_s: self.ideal_override_s,
            counters: None,
            observed_to: None,
        }
    }

    /// The open interval period so far.
    pub fn interval_so_far(&self) -> Option<ClosedPeriod> {
        let ideal = self.ideal().is_some();
        self.interval.as_ref().map(|acc| {
            let mut p = acc.to_period(&self.s.machine, ideal);
            p.end = utc(self.committed_to);
            p
        })
    }

    /// Heap bytes held (for the memory benchmark), roughly.
    pub fn heap_bytes(&self) -> usize {
        self.s.machine.capacity()
            + self.pending_counts.capacity() * std::mem::size_of::<(i64, CountDelta)>()
            + self.stable.reason.as_ref().map_or(0, |r| r.capacity())
            + self.reported.reason.as_ref().map_or(0, |r| r.capacity())
            + self
                .cal
                .as_ref()
                .and_then(|c| c.shift.as_ref())
                .map_or(0, |s| s.0.capacity())
    }

    /// The wall clock stepped by `by_ms`: the open periods carry the step.
    /// When the timeline moves forward (`jump_ms` > 0) they close at the
    /// last read before the step and the timeline continues `jump_ms` later;
    /// otherwise the timeline runs on as it was.
    fn clock_step(&mut self, by_ms: i64, jump_ms: i64, out: &mut Vec<MachineEvent>) {
        tracing::warn!(
            machine = %self.s.machine,
            step_s = by_ms as f64 / 1000.0,
            timeline_forward_s = jump_ms as f64 / 1000.0,
            "wall clock stepped; {}",
            if jump_ms > 0 {
                "closing the open periods and continuing at the new time"
            } else {
                "the timeline does not go back: it runs on, ahead of the wall clock"
            }
        );
        for p in [&mut self.interval, &mut self.shift].into_iter().flatten() {
            p.clock_step_ms += by_ms;
        }
        if jump_ms <= 0 {
            return;
        }
        self.candidate = None;
        let upto = self.last_obs.max(self.committed_to);
        self.commit_to(upto, out);
        for which in [true, false] {
            self.close(which, upto, out);
        }
        // Later monotonic instants map to the new wall time.
        let delta = jump_ms;
        self.anchor_wall += delta;
        self.committed_to += delta;
        self.last_obs += delta;
        self.last_good += delta;
        if let Some(d) = &mut self.down {
            d.since += delta;
        }
        for (t, _) in &mut self.pending_counts {
            *t += delta;
        }
        self.cal = None;
        self.fill_before = false;
    }

    /// Apply what a read saw at `t`.
    fn step(&mut self, seen: Spell, t: i64, out: &mut Vec<MachineEvent>) {
        let dwell = self.s.min_dwell_ms;
        if seen.state == self.stable.state {
            self.candidate = None;
            self.commit_to(t, out);
            if seen.state == MachineState::Offline
                && seen.reason.is_some()
                && seen.reason != self.stable.reason
            {
                // Still offline, for another cause (at start "agent not
                // running", then the timeout the first read met).
                self.stable.reason = seen.reason;
                self.report_offline_cause(out);
            }
            return;
        }
        match &self.candidate {
            Some(c) if c.state == seen.state => {
                if t - c.since >= dwell {
                    let c = c.clone();
                    self.confirm(c, t, out);
                }
            }
            _ => {
                // A previous candidate that did not last is not a state:
                // its time stays with the stable state.
                self.commit_to(seen.since, out);
                if t - seen.since >= dwell {
                    self.confirm(seen, t, out);
                } else {
                    self.candidate = Some(seen);
                }
            }
        }
    }

    /// Report the offline spell again with its current cause (same state,
    /// same `since`), so the state message and `status` say why now.
    fn report_offline_cause(&mut self, out: &mut Vec<MachineEvent>) {
        if self.reported.state != MachineState::Offline
            || self.reported.reason == self.stable.reason
        {
            return;
        }
        self.reported.reason = self.stable.reason.clone();
        out.push(MachineEvent::State(StateChange {
            machine: self.s.machine.clone(),
            state: MachineState::Offline,
            prev: Some(MachineState::Offline),
            since: utc(self.reported.since),
            reason: self.reported.reason.clone(),
        }));
    }

    fn confirm(&mut self, c: Spell, t: i64, out: &mut Vec<MachineEvent>) {
        self.commit_to(c.since, out);
        self.stable = c;
        self.candidate = None;
        self.commit_to(t, out);
    }

    /// What the calendar says at `a` (cached until its next boundary).
    fn cal_at(&mut self, a: i64) -> CalSpan {
        if let Some(c) = &self.cal {
            if c.from <= a && a < c.until {
                return c.clone();
            }
        }
        let span = match &self.s.calendar {
            None => CalSpan {
                from: i64::MIN,
                until: i64::MAX,
                planned: true,
                reason: None,
                shift: None,
            },
            Some(cal) => {
                let s = cal.span_at(utc(a));
                CalSpan {
                    from: a,
                    until: s.until.map_or(i64::MAX, |u| u.timestamp_millis()),
                    planned: s.planned,
                    reason: s.reason,
                    shift: s
                        .shift
                        .map(|i| (i.name, i.start.timestamp_millis(), i.end.timestamp_millis())),
                }
            }
        };
        self.cal = Some(span.clone());
        span
    }

    fn offset_ms(&self, t: i64) -> i64 {
        if self.s.tz == chrono_tz::UTC {
            return 0;
        }
        i64::from(
            self.s
                .tz
                .offset_from_utc_datetime(&utc(t).naive_utc())
                .fix()
                .local_minus_utc(),
        ) * 1000
    }

    /// The fixed interval around `a`, aligned to the local wall clock: local
    /// times that are multiples of the period since local midnight (a day
    /// period on a daylight-saving day is 23 or 25 hours long).
    pub fn interval_bounds(&self, a: i64) -> (i64, i64) {
        let p = self.s.period_ms.max(60_000);
        // By the offset in force at `a`: right unless the offset changes inside the period.
        let off = self.offset_ms(a);
        let naive_start = (a + off).div_euclid(p) * p - off;
        let naive_end = {
            let c = naive_start + p;
            let off2 = self.offset_ms(c);
            let e = (c + off2).div_euclid(p) * p - off2;
            if e > a {
                e
            } else {
                c
            }
        };
        if self.s.tz == chrono_tz::UTC {
            return (naive_start, naive_end);
        }
        // By local date and time, which is right across an offset change.
        let local = utc(a).with_timezone(&self.s.tz).naive_local();
        let midnight = local.date().and_time(chrono::NaiveTime::MIN);
        let since_midnight = (local - midnight).num_milliseconds();
        let floor = midnight + chrono::Duration::milliseconds(since_midnight.div_euclid(p) * p);
        let ceil = floor + chrono::Duration::milliseconds(p);
        let mapped = |n: chrono::NaiveDateTime| -> Vec<i64> {
            match self.s.tz.from_local_datetime(&n) {
                chrono::LocalResult::Single(x) => vec![x.timestamp_millis()],
                chrono::LocalResult::Ambiguous(x, y) => {
                    vec![x.timestamp_millis(), y.timestamp_millis()]
                }
                chrono::LocalResult::None => vec![],
            }
        };
        let start = mapped(floor)
            .into_iter()
            .filter(|&x| x <= a)
            .max()
            .unwrap_or(naive_start);
        let end = mapped(ceil)
            .into_iter()
            .filter(|&x| x > a)
            .min()
            .unwrap_or(naive_end);
        (start, end)
    }

    /// Close the interval (`true`) or shift (`false`) period at `at`.
    fn close(&mut self, interval: bool, at: i64, out: &mut Vec<MachineEvent>) {
        let slot = if interval {
            &mut self.interval
        } else {
            &mut self.shift
        };
        let Some(mut acc) = slot.take() else { return };
        acc.end_ms = at;
        if acc.end_ms <= acc.start_ms {
            // Empty: nothing to report, but a clock step it saw goes on to
            // the next period, so the data still shows it.
            // (The interval and the shift saw the same steps: one of them.)
            if acc.clock_step_ms != 0 {
                self.carried_clock_step_ms = acc.clock_step_ms;
            }
            return;
        }
        debug_assert_eq!(acc.total_ms(), acc.end_ms - acc.start_ms);
        let ideal = self.ideal().is_some();
        out.push(MachineEvent::Period(Box::new(
            acc.to_period(&self.s.machine, ideal),
        )));
    }

    /// Close periods that end at or before `a`, open the ones that cover `a`.
    fn roll(&mut self, a: i64, out: &mut Vec<MachineEvent>) {
        if self.interval.as_ref().is_some_and(|p| p.end_ms <= a) {
            let end = self.interval.as_ref().map_or(a, |p| p.end_ms);
            self.close(true, end, out);
        }
        let span = self.cal_at(a);
        let shift_ok = match (&self.shift, &span.shift) {
            (Some(p), Some((name, start, _))) => {
                p.end_ms > a
                    && p.start_ms <= a
                    && matches!(&p.kind, PeriodKind::Shift { name: n } if n == name)
                    && (p.start_ms == *start || !self.fill_before)
            }
            (None, _) => true,
            (Some(_), None) => false,
        };
        if !shift_ok {
            let end = self.shift.as_ref().map_or(a, |p| p.end_ms.min(a));
            self.close(false, end, out);
        }
        let fill = self.fill_before;
        let has_good = self.s.has_good_counter;
        if self.interval.is_none() {
            let (start, end) = self.interval_bounds(a);
            let start = if fill { start } else { a };
            let mut acc = PeriodAcc::open(PeriodKind::Interval, start, end, has_good);
            acc.ms[idx(MachineState::Offline)] += a - start;
            acc.clock_step_ms += self.carried_clock_step_ms;
            self.interval = Some(acc);
        }
        if self.shift.is_none() {
            if let Some((name, start, end)) = span.shift {
                let start = if fill { start.min(a) } else { a };
                let mut acc = PeriodAcc::open(PeriodKind::Shift { name }, start, end, has_good);
                acc.ms[idx(MachineState::Offline)] += a - start;
                acc.clock_step_ms += self.carried_clock_step_ms;
                self.shift = Some(acc);
            }
        }
        if self.interval.is_some() {
            self.carried_clock_step_ms = 0;
        }
        self.fill_before = false;
    }

    /// Attribute `[committed_to, b)` to the stable state (with the calendar).
    fn commit_to(&mut self, b: i64, out: &mut Vec<MachineEvent>) {
        while self.committed_to < b {
            let a = self.committed_to;
            let (eff, span) = self.enter(a, out);
            let mut end = b.min(span.until);
            for p in [&self.interval, &self.shift].into_iter().flatten() {
                end = end.min(p.end_ms);
            }
            let end = end.max(a + 1).min(b);
            for p in [&mut self.interval, &mut self.shift].into_iter().flatten() {
                p.ms[idx(eff)] += end - a;
            }
            self.committed_to = end;
            self.flush_counts(end);
        }
        // What holds from here on is known too: close periods that end here
        // and report a state that begins here.
        let at = self.committed_to;
        self.enter(at, out);
    }

    /// Enter instant `a` with the stable state: roll periods, report a
    /// change of the effective state (with the calendar), count stops.
    fn enter(&mut self, a: i64, out: &mut Vec<MachineEvent>) -> (MachineState, CalSpan) {
        let span = self.cal_at(a);
        let eff = match self.stable.state {
            MachineState::Offline => MachineState::Offline,
            _ if !span.planned => MachineState::PlannedStop,
            s => s,
        };
        self.roll(a, out);
        if eff != self.reported.state {
            if self.reported.state == MachineState::Down {
                self.end_down(a);
            }
            let reason = match eff {
                MachineState::PlannedStop => span.reason.map(str::to_string),
                _ => self.stable.reason.clone(),
            };
            out.push(MachineEvent::State(StateChange {
                machine: self.s.machine.clone(),
                state: eff,
                prev: Some(self.reported.state),
                since: utc(a),
                reason: reason.clone(),
            }));
            self.reported = Reported {
                state: eff,
                since: a,
                reason,
            };
            if eff == MachineState::Down {
                self.start_down(a);
            }
        }
        (eff, span)
    }

    /// Parts seen before `until` go into the open periods.
    fn flush_counts(&mut self, until: i64) {
        if self.pending_counts.is_empty() {
            return;
        }
        let ideal = self.ideal();
        let (now, later): (Vec<_>, Vec<_>) =
            self.pending_counts.drain(..).partition(|(t, _)| *t < until);
        self.pending_counts = later;
        for (_, d) in now {
            for p in [&mut self.interval, &mut self.shift].into_iter().flatten() {
                p.add_counts(&d, ideal);
            }
        }
    }

    fn start_down(&mut self, a: i64) {
        let fault = self.stable.fault;
        for p in [&mut self.interval, &mut self.shift].into_iter().flatten() {
            p.counts.stops += 1;
            if fault {
                p.counts.failures += 1;
            }
        }
        self.down = Some(DownSpell { since: a });
    }

    /// A `down` spell ends at `x`: a short one is a micro-stop, counted in
    /// the periods that hold `x`.
    fn end_down(&mut self, x: i64) {
        let Some(d) = self.down.take() else { return };
        if x - d.since < self.s.micro_stop_ms {
            for p in [&mut self.interval, &mut self.shift].into_iter().flatten() {
                p.counts.micro_stops += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ShiftCalendarConfig, ShiftConfig};

    #[test]
    fn snapshot_timestamps_are_written_as_chrono_writes_them() {
        for text in [
            "2026-11-26T11:21:50.534941956Z",
            "2026-11-26T11:21:49.568Z",
            "2026-11-26T11:21:49.000001Z",
            "2026-11-26T11:21:42Z",
        ] {
            let t: chrono::DateTime<chrono::Utc> = text.parse().unwrap();
            let mut ours = serde_json::Serializer::new(Vec::new());
            rfc3339::serialize(&t, &mut ours).unwrap();
            let ours = String::from_utf8(ours.into_inner()).unwrap();
            assert_eq!(ours, serde_json::to_string(&t).unwrap());
            assert_eq!(ours, format!("{text:?}"));
        }
    }

    const S: i64 = 1000;
    const MIN: i64 = 60 * S;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn settings() -> AccountSettings {
        AccountSettings {
            machine: "press07".into(),
            tz: chrono_tz::UTC,
            period_ms: 15 * MIN,
            micro_stop_ms: 120 * S,
            min_dwell_ms: 0,
            ideal_cycle_s: None,
            has_good_counter: false,
            calendar: None,
        }
    }

    fn state(s: MachineState) -> Observed {
        Observed::State {
            state: s,
            reason: None,
            fault: false,
        }
    }

    fn fault(code: &str) -> Observed {
        Observed::State {
            state: MachineState::Down,
            reason: Some(code.into()),
            fault: true,
        }
    }

    fn offline() -> Observed {
        Observed::Offline {
            reason: "no reply: timeout".into(),
        }
    }

    /// A hand-written timeline: times in ms after `t0`, on both clocks unless told otherwise.
    struct Line {
        acc: Account,
        out: Vec<MachineEvent>,
        t0: DateTime<Utc>,
        /// Wall minus monotonic (a clock step changes it).
        wall_skew: i64,
    }

    impl Line {
        fn start(s: AccountSettings, t0: &str) -> Line {
            let t0 = t(t0);
            let mut out = Vec::new();
            let acc = Account::new(s, t0, 0, &mut out);
            Line {
                acc,
                out,
                t0,
                wall_skew: 0,
            }
        }

        fn wall(&self, ms: i64) -> DateTime<Utc> {
            self.t0 + chrono::Duration::milliseconds(ms + self.wall_skew)
        }

        fn read_counts(&mut self, ms: i64, observed: Observed, counts: CountDelta) {
            let obs = Observation {
                at: self.wall(ms),
                mono_ms: ms,
                observed,
                counts,
            };
            self.acc.observe(obs, &mut self.out);
        }

        fn read(&mut self, ms: i64, observed: Observed) {
            self.read_counts(ms, observed, CountDelta::default());
        }

        /// Reads every `every` ms in `[from, to)`.
        fn hold(&mut self, from: i64, to: i64, every: i64, observed: Observed) {
            let mut x = from;
            while x < to {
                self.read(x, observed.clone());
                x += every;
            }
        }

        fn periods(&self) -> Vec<ClosedPeriod> {
            self.out
                .iter()
                .filter_map(|e| match e {
                    MachineEvent::Period(p) => Some((**p).clone()),
                    _ => None,
                })
                .collect()
        }

        fn intervals(&self) -> Vec<ClosedPeriod> {
            self.periods()
                .into_iter()
                .filter(|p| p.kind == PeriodKind::Interval)
                .collect()
        }

        fn changes(&self) -> Vec<(MachineState, DateTime<Utc>)> {
            self.out
                .iter()
                .filter_map(|e| match e {
                    MachineEvent::State(c) => Some((c.state, c.since)),
                    _ => None,
                })
                .collect()
        }
    }

    fn total_s(p: &ClosedPeriod) -> f64 {
        let s = &p.seconds;
        s.running + s.setup + s.down + s.idle + s.planned_stop + s.offline
    }

    fn len_s(p: &ClosedPeriod) -> f64 {
        (p.end - p.start).num_milliseconds() as f64 / 1000.0
    }

    fn assert_sums(periods: &[ClosedPeriod]) {
        for p in periods {
            let ms = |x: f64| (x * 1000.0).round() as i64;
            let s = &p.seconds;
            let total = ms(s.running)
                + ms(s.setup)
                + ms(s.down)
                + ms(s.idle)
                + ms(s.planned_stop)
                + ms(s.offline);
            assert_eq!(total, (p.end - p.start).num_milliseconds(), "period {p:?}");
        }
    }

    #[test]
    fn a_period_boundary_splits_a_down_spell() {
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, 10 * MIN, S, state(MachineState::Running));
        l.hold(10 * MIN, 20 * MIN, S, fault("alarm 17"));
        l.read(20 * MIN, state(MachineState::Running));
        let p = l.intervals();
        assert_eq!(p.len(), 1, "only [10:00, 10:15) is closed");
        assert_eq!(p[0].start, t("2026-03-02T10:00:00Z"));
        assert_eq!(p[0].end, t("2026-03-02T10:15:00Z"));
        assert_eq!(p[0].seconds.running, 600.0);
        assert_eq!(p[0].seconds.down, 300.0);
        assert_eq!(p[0].counts.stops, 1);
        assert_eq!(p[0].counts.failures, 1);
        assert_eq!(p[0].counts.micro_stops, 0);
        assert_eq!(p[0].kpi.availability, Some(600.0 / 900.0));
        assert_eq!(p[0].kpi.coverage, Some(1.0));
        let so_far = l.acc.interval_so_far().unwrap();
        assert_eq!(
            so_far.seconds.down, 300.0,
            "the rest of the spell is in the next period"
        );
        assert_eq!(so_far.counts.stops, 0, "a stop counts where it starts");
        assert_eq!(
            l.changes(),
            vec![
                (MachineState::Offline, t("2026-03-02T10:00:00Z")),
                (MachineState::Running, t("2026-03-02T10:00:00Z")),
                (MachineState::Down, t("2026-03-02T10:10:00Z")),
                (MachineState::Running, t("2026-03-02T10:20:00Z")),
            ]
        );
        assert_sums(&p);
    }

    #[test]
    fn a_fresh_start_counts_the_time_before_it_as_offline() {
        let mut l = Line::start(settings(), "2026-03-02T10:07:00Z");
        l.hold(0, 9 * MIN, S, state(MachineState::Idle));
        let p = l.intervals();
        assert_eq!(p[0].start, t("2026-03-02T10:00:00Z"));
        assert_eq!(p[0].seconds.offline, 420.0);
        assert_eq!(p[0].seconds.idle, 480.0);
        assert_eq!(p[0].kpi.coverage, Some(1.0 - 420.0 / 900.0));
        assert_sums(&p);
    }

    fn calendar(shift: (&str, &str, &str)) -> Arc<ShiftCalendar> {
        Arc::new(
            ShiftCalendar::from_config(
                &ShiftCalendarConfig {
                    shift: vec![ShiftConfig {
                        name: shift.0.into(),
                        days: vec!["mon".into()],
                        start: shift.1.into(),
                        end: shift.2.into(),
                        breaks: vec![],
                    }],
                    holidays: vec![],
                },
                chrono_tz::UTC,
            )
            .unwrap(),
        )
    }

    #[test]
    fn a_shift_ending_mid_run_turns_the_rest_into_planned_stop() {
        let mut s = settings();
        s.calendar = Some(calendar(("early", "06:00", "14:00")));
        // 2026-03-02 is a Monday.
        let mut l = Line::start(s, "2026-03-02T13:45:00Z");
        l.hold(0, 30 * MIN + S, S, state(MachineState::Running));
        let shifts: Vec<_> = l
            .periods()
            .into_iter()
            .filter(|p| matches!(&p.kind, PeriodKind::Shift { name } if name == "early"))
            .collect();
        assert_eq!(shifts.len(), 1);
        assert_eq!(shifts[0].start, t("2026-03-02T06:00:00Z"));
        assert_eq!(shifts[0].end, t("2026-03-02T14:00:00Z"));
        assert_eq!(shifts[0].seconds.running, 900.0);
        assert_eq!(
            shifts[0].seconds.offline,
            7.0 * 3600.0 + 2700.0,
            "before the agent started"
        );
        let iv = l.intervals();
        assert_eq!(iv[0].seconds.running, 900.0);
        assert_eq!(iv[1].start, t("2026-03-02T14:00:00Z"));
        assert_eq!(iv[1].seconds.planned_stop, 900.0);
        assert_eq!(iv[1].seconds.running, 0.0);
        assert_eq!(
            iv[1].kpi.availability, None,
            "no planned time: null, not NaN"
        );
        assert!(l
            .changes()
            .contains(&(MachineState::PlannedStop, t("2026-03-02T14:00:00Z"))));
        let reason = l.out.iter().find_map(|e| match e {
            MachineEvent::State(c) if c.state == MachineState::PlannedStop => c.reason.clone(),
            _ => None,
        });
        assert_eq!(reason.as_deref(), Some("no shift"));
        assert_sums(&l.periods());
    }

    /// The state reports of the line so far.
    fn reports(l: &Line) -> Vec<StateChange> {
        l.out
            .iter()
            .filter_map(|e| match e {
                MachineEvent::State(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_machine_offline_since_start_reports_the_cause_its_reads_meet() {
        use MachineState::Offline;
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        let cause = |r: &str| Observed::Offline { reason: r.into() };
        let timeout = "no reply from 10.0.0.5:502 within 500 ms";
        let refused = "connection refused";
        l.hold(0, 5 * S, S, cause(timeout));
        l.hold(5 * S, 12 * S, S, cause(refused));
        let start = t("2026-03-02T10:00:00Z");
        let report = |prev: Option<MachineState>, reason: &str| StateChange {
            machine: "press07".into(),
            state: Offline,
            prev,
            since: start,
            reason: Some(reason.into()),
        };
        assert_eq!(
            reports(&l),
            vec![
                report(None, "agent not running"),
                report(Some(Offline), timeout),
                report(Some(Offline), refused),
            ],
            "one report per new cause, the spell still from the start"
        );
        assert_eq!(
            l.acc.state(),
            (Offline, start, Some(refused)),
            "the state holds the current cause"
        );
        // A tick while offline changes nothing.
        let before = l.out.len();
        l.acc.tick(13 * S, 5 * S, &mut l.out);
        assert_eq!(reports(&l).len(), 3, "{:?}", &l.out[before..]);
    }

    #[test]
    fn an_outage_is_offline_from_the_last_good_read() {
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, 5 * MIN + S, S, state(MachineState::Running)); // last good read 10:05:00
        l.hold(5 * MIN + S, 6 * MIN + S, S, offline());
        l.hold(6 * MIN + S, 16 * MIN, S, state(MachineState::Running));
        let p = &l.intervals()[0];
        assert_eq!(p.seconds.offline, 61.0);
        assert_eq!(p.seconds.running, 900.0 - 61.0);
        assert_eq!(p.seconds.down, 0.0, "offline is never down");
        assert_eq!(p.counts.stops, 0);
        assert!(l
            .changes()
            .contains(&(MachineState::Offline, t("2026-03-02T10:05:00Z"))));
        assert!(l
            .changes()
            .contains(&(MachineState::Running, t("2026-03-02T10:06:01Z"))));
        assert_eq!(p.kpi.coverage, Some(1.0 - 61.0 / 900.0));
        assert_eq!(p.kpi.availability, Some(1.0), "offline lies outside PBT");
    }

    #[test]
    fn a_silent_machine_goes_offline_after_its_stale_time_and_periods_still_close() {
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, 2 * MIN + S, S, state(MachineState::Running)); // last read 10:02:00
        let mut x = 2 * MIN + S;
        while x <= 20 * MIN {
            l.acc.tick(x, 5 * S, &mut l.out);
            x += S;
        }
        let p = l.intervals();
        assert_eq!(p.len(), 1, "closed without any read after its end");
        assert_eq!(p[0].seconds.running, 120.0);
        assert_eq!(p[0].seconds.offline, 780.0);
        assert!(l
            .changes()
            .contains(&(MachineState::Offline, t("2026-03-02T10:02:00Z"))));
    }

    #[test]
    fn an_agent_restart_resumes_the_open_period_with_the_gap_offline() {
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, 5 * MIN + S, S, state(MachineState::Running));
        l.acc.stop(&mut l.out);
        let snap = l.acc.snapshot(t("2026-03-02T10:05:00Z"));
        let json = serde_json::to_string(&snap).unwrap();
        let snap: AccountSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(snap.committed_to, t("2026-03-02T10:05:00Z"));

        // The agent comes back at 10:08 with a new monotonic origin.
        let mut out = Vec::new();
        let acc = Account::resume(settings(), &snap, t("2026-03-02T10:08:00Z"), 0, &mut out);
        let mut l2 = Line {
            acc,
            out,
            t0: t("2026-03-02T10:08:00Z"),
            wall_skew: 0,
        };
        l2.hold(0, 8 * MIN, S, state(MachineState::Running));
        let p = l2.intervals();
        assert_eq!(p[0].start, t("2026-03-02T10:00:00Z"));
        assert_eq!(p[0].seconds.running, 300.0 + 420.0);
        assert_eq!(p[0].seconds.offline, 180.0);
        assert!(l2
            .changes()
            .contains(&(MachineState::Offline, t("2026-03-02T10:05:00Z"))));
        assert!(l2
            .changes()
            .contains(&(MachineState::Running, t("2026-03-02T10:08:00Z"))));
        assert_sums(&p);
    }

    #[test]
    fn a_long_agent_outage_closes_every_period_it_covered_as_offline() {
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, 5 * MIN + S, S, state(MachineState::Running));
        l.acc.stop(&mut l.out);
        let snap = l.acc.snapshot(t("2026-03-02T10:05:00Z"));
        let mut out = Vec::new();
        Account::resume(settings(), &snap, t("2026-03-02T11:02:00Z"), 0, &mut out);
        let closed: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                MachineEvent::Period(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(closed.len(), 4, "10:00, 10:15, 10:30, 10:45");
        assert_eq!(closed[1].seconds.offline, 900.0);
        assert_eq!(closed[1].kpi.coverage, Some(0.0));
        assert_eq!(closed[1].kpi.availability, None);
    }

    #[test]
    fn a_wall_clock_jump_creates_no_time() {
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, 3 * MIN, S, state(MachineState::Running));
        // Small NTP corrections do not re-anchor: durations still come from the monotonic clock.
        l.wall_skew = 800;
        l.hold(3 * MIN, 4 * MIN, S, state(MachineState::Running));
        // NTP steps the wall clock forward by an hour.
        l.wall_skew = 3_600_000;
        l.hold(4 * MIN, 40 * MIN, S, state(MachineState::Running));
        let p = l.intervals();
        assert_eq!(p[0].start, t("2026-03-02T10:00:00Z"));
        assert_eq!(
            p[0].end,
            t("2026-03-02T10:03:59Z"),
            "closed at the old timeline's last read"
        );
        assert_eq!(
            p[1].start,
            t("2026-03-02T11:03:59Z"),
            "the last second before the step carries on"
        );
        assert_eq!(p[1].end, t("2026-03-02T11:15:00Z"));
        let observed: f64 = p.iter().map(total_s).sum::<f64>()
            + l.acc.interval_so_far().map_or(0.0, |p| total_s(&p));
        assert_eq!(
            observed, 2399.0,
            "exactly the monotonic time from the first to the last read"
        );
        assert!(p.iter().all(|p| p.seconds.offline == 0.0));
        assert_sums(&p);
        for x in &p {
            assert_eq!(total_s(x), len_s(x));
        }
    }

    #[test]
    fn the_clock_rule_follows_a_step_only_forward_and_only_past_the_timeline() {
        let t = 1_000_000;
        assert_eq!(judge_wall_clock(t, t + 1_500, 0), WallClock::Steady);
        assert_eq!(judge_wall_clock(t, t - 2_000, 0), WallClock::Steady);
        assert_eq!(
            judge_wall_clock(t, t + 180_000, 0),
            WallClock::Stepped {
                by_ms: 180_000,
                jump_ms: 180_000,
                lag_ms: 0
            }
        );
        assert_eq!(
            judge_wall_clock(t, t - 300_000, 0),
            WallClock::Stepped {
                by_ms: -300_000,
                jump_ms: 0,
                lag_ms: 300_000
            },
            "back: the timeline runs on, 300 s ahead"
        );
        assert_eq!(
            judge_wall_clock(t, t - 299_000, 300_000),
            WallClock::Steady,
            "a wall clock that stays behind by the lag is steady"
        );
        assert_eq!(
            judge_wall_clock(t, t - 200_000, 300_000),
            WallClock::Stepped {
                by_ms: 100_000,
                jump_ms: 0,
                lag_ms: 200_000
            },
            "forward, but not past the timeline: it does not move"
        );
        assert_eq!(
            judge_wall_clock(t, t + 50_000, 200_000),
            WallClock::Stepped {
                by_ms: 250_000,
                jump_ms: 50_000,
                lag_ms: 0
            },
            "forward past the timeline: it jumps to the wall clock"
        );
    }

    /// Every closed period and the open one, by start; asserts that no two
    /// share a start or overlap, and that changes never go back.
    fn assert_one_timeline(l: &Line) -> Vec<ClosedPeriod> {
        let mut all = l.intervals();
        all.extend(l.acc.interval_so_far());
        all.sort_by_key(|p| p.start);
        for pair in all.windows(2) {
            assert!(
                pair[0].end <= pair[1].start,
                "periods overlap: {}..{} and {}..{}",
                pair[0].start,
                pair[0].end,
                pair[1].start,
                pair[1].end
            );
        }
        let changes = l.changes();
        for pair in changes.windows(2) {
            assert!(pair[0].1 <= pair[1].1, "a change goes back: {pair:?}");
        }
        all
    }

    #[test]
    fn a_step_forward_then_back_by_minutes_loses_no_time_and_no_period_overlaps() {
        // The case: +180 s, then -300 s while running.
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, 2 * MIN, S, state(MachineState::Running));
        l.wall_skew = 180 * S;
        l.hold(2 * MIN, 5 * MIN, S, state(MachineState::Running));
        l.wall_skew = -120 * S;
        l.hold(5 * MIN, 10 * MIN, S, state(MachineState::Running));
        l.hold(10 * MIN, 10 * MIN + 30 * S, S, state(MachineState::Down));
        l.hold(10 * MIN + 30 * S, 40 * MIN, S, state(MachineState::Running));
        let all = assert_one_timeline(&l);
        let p = l.intervals();
        assert_eq!(
            (p[0].start, p[0].end),
            (t("2026-03-02T10:00:00Z"), t("2026-03-02T10:01:59Z")),
            "closed at the last read before the forward step"
        );
        assert_eq!(p[0].clock_step, Some(ClockStep { by_s: 180.0 }));
        assert_eq!(
            (p[1].start, p[1].end),
            (t("2026-03-02T10:04:59Z"), t("2026-03-02T10:15:00Z")),
            "the backward step is not followed: the period runs on to its end"
        );
        assert_eq!(p[1].clock_step, Some(ClockStep { by_s: -300.0 }));
        assert_eq!(p[1].seconds.down, 30.0);
        assert_eq!(p[2].start, t("2026-03-02T10:15:00Z"));
        assert_eq!(p[2].clock_step, None);
        let observed: f64 = all.iter().map(|p| total_s(p) - p.seconds.offline).sum();
        assert_eq!(
            observed, 2399.0,
            "every monotonic second from the first to the last read, once"
        );
        assert!(all.iter().all(|p| p.seconds.offline == 0.0));
        assert_sums(&p);
    }

    #[test]
    fn a_start_days_behind_then_a_step_forward_closes_the_period_at_the_step() {
        // A line controller without RTC boots three days in the past; NTP
        // then steps its clock to the right time.
        let mut l = Line::start(settings(), "2026-02-27T10:00:00Z");
        l.hold(0, 90 * S, S, state(MachineState::Idle));
        l.wall_skew = 3 * 24 * 60 * MIN;
        l.hold(90 * S, 20 * MIN, S, state(MachineState::Running));
        let all = assert_one_timeline(&l);
        let p = l.intervals();
        assert_eq!(
            (p[0].start, p[0].end),
            (t("2026-02-27T10:00:00Z"), t("2026-02-27T10:01:29Z"))
        );
        assert_eq!(p[0].clock_step, Some(ClockStep { by_s: 259_200.0 }));
        assert_eq!(p[0].seconds.idle, 89.0);
        assert_eq!(
            (p[1].start, p[1].end),
            (t("2026-03-02T10:01:29Z"), t("2026-03-02T10:15:00Z"))
        );
        assert_eq!(p[1].clock_step, None);
        assert_eq!(
            p[1].seconds.idle, 1.0,
            "the read before the step carries on"
        );
        let observed: f64 = all.iter().map(total_s).sum();
        assert_eq!(observed, 20.0 * 60.0 - 1.0);
        assert_sums(&p);
    }

    #[test]
    fn a_silent_machine_follows_a_step_forward_on_the_tick() {
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, MIN, S, state(MachineState::Running)); // last read 10:00:59
        let mut x = MIN;
        while x <= 3 * MIN {
            l.acc.tick(x, 5 * S, &mut l.out);
            x += S;
        }
        // NTP steps the clock an hour forward; the machine stays silent.
        l.wall_skew = 60 * MIN;
        while x <= 20 * MIN {
            let wall = l.wall(x);
            l.acc.wall_clock(wall, x, 5 * S, &mut l.out);
            l.acc.tick(x, 5 * S, &mut l.out);
            x += S;
        }
        let all = assert_one_timeline(&l);
        let p = l.intervals();
        assert_eq!(
            (p[0].start, p[0].end),
            (t("2026-03-02T10:00:00Z"), t("2026-03-02T10:03:00Z"))
        );
        assert_eq!(p[0].clock_step, Some(ClockStep { by_s: 3600.0 }));
        assert_eq!(p[0].seconds.running, 59.0);
        assert_eq!(p[1].start, t("2026-03-02T11:03:00Z"));
        assert_eq!(p[1].end, t("2026-03-02T11:15:00Z"));
        assert_eq!(p[1].seconds.offline, 720.0);
        let total: f64 = all.iter().map(total_s).sum();
        assert_eq!(total, 20.0 * 60.0, "every monotonic second once");
    }

    #[test]
    fn a_read_machine_does_not_judge_the_clock_on_the_tick() {
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, MIN, S, state(MachineState::Running));
        l.wall_skew = 60 * MIN;
        let wall = l.wall(MIN);
        l.acc.wall_clock(wall, MIN, 5 * S, &mut l.out);
        assert!(l.intervals().is_empty(), "the next read judges it");
        // A read taken before the step, processed after the tick: steady.
        l.wall_skew = 0;
        l.read(MIN, state(MachineState::Running));
        l.wall_skew = 60 * MIN;
        l.hold(MIN + S, 2 * MIN, S, state(MachineState::Running));
        let p = l.intervals();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].clock_step, Some(ClockStep { by_s: 3600.0 }));
    }

    #[test]
    fn a_crash_turns_only_the_time_after_the_last_mark_into_offline() {
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, 2 * MIN, S, state(MachineState::Running));
        l.hold(2 * MIN, 3 * MIN, S, state(MachineState::Down));
        // The snapshot after the change to down; then the marks go on.
        let mut snap = l.acc.snapshot(t("2026-03-02T10:02:00Z"));
        l.hold(3 * MIN, 4 * MIN, S, state(MachineState::Down));
        // Killed here: the last mark says 10:03:59.
        snap.observed_to = Some(l.acc.committed_to());
        assert_eq!(snap.observed_to, Some(t("2026-03-02T10:03:59Z")));
        let published = l.acc.state();
        assert_eq!(published.0, MachineState::Down);

        let mut out = Vec::new();
        let acc = Account::resume(settings(), &snap, t("2026-03-02T10:06:00Z"), 0, &mut out);
        let mut l2 = Line {
            acc,
            out,
            t0: t("2026-03-02T10:06:00Z"),
            wall_skew: 0,
        };
        let first = l2.out.iter().find_map(|e| match e {
            MachineEvent::State(c) => Some(c.clone()),
            _ => None,
        });
        let first = first.expect("a change at the restart");
        assert_eq!(first.state, MachineState::Offline);
        assert_eq!(
            first.prev,
            Some(MachineState::Down),
            "prev: the state last published"
        );
        assert_eq!(first.since, t("2026-03-02T10:03:59Z"), "from the last mark");
        assert!(first.since >= published.1, "since never goes back");
        l2.hold(0, 10 * MIN, S, state(MachineState::Running));
        let p = l2.intervals();
        assert_eq!(p[0].seconds.running, 120.0 + 540.0);
        assert_eq!(p[0].seconds.down, 119.0);
        assert_eq!(p[0].seconds.offline, 121.0);
        assert_sums(&p);
    }

    #[test]
    fn a_later_snapshot_where_only_time_passed_is_implied_and_a_restart_agrees() {
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, 2 * MIN, S, state(MachineState::Running));
        let early = l.acc.snapshot(t("2026-03-02T10:02:00Z"));
        l.hold(2 * MIN, 7 * MIN, S, state(MachineState::Running));
        let later = l.acc.snapshot(t("2026-03-02T10:07:00Z"));
        assert_ne!(early, later);
        assert!(early.implies(&later), "only time passed, running");
        assert!(!later.implies(&early), "time does not go back");
        let p = early.projected(later.committed_to).unwrap();
        assert_eq!(p.interval, later.interval);
        // What a restart from the early snapshot and the later mark
        // attributes before the agent's absence is what the later one holds.
        let mut snap = early.clone();
        snap.observed_to = Some(later.committed_to);
        let mut out = Vec::new();
        let resumed = Account::resume(settings(), &snap, later.committed_to, 0, &mut out);
        let r = resumed.snapshot(later.committed_to);
        assert_eq!(
            r.interval.as_ref().map(|i| i.ms),
            later.interval.as_ref().map(|i| i.ms)
        );

        // A part counted: not implied.
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, MIN, S, state(MachineState::Running));
        let before = l.acc.snapshot(t("2026-03-02T10:01:00Z"));
        let part = CountDelta {
            produced: 1,
            ..Default::default()
        };
        l.read_counts(MIN + S, state(MachineState::Running), part);
        l.hold(MIN + 2 * S, 2 * MIN, S, state(MachineState::Running));
        assert!(!before.implies(&l.acc.snapshot(t("2026-03-02T10:02:00Z"))));

        // Another state (down after running): not implied.
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, MIN, S, state(MachineState::Running));
        let before = l.acc.snapshot(t("2026-03-02T10:01:00Z"));
        l.hold(MIN, 2 * MIN, S, state(MachineState::Down));
        assert!(!before.implies(&l.acc.snapshot(t("2026-03-02T10:02:00Z"))));

        // A clock step in between, the machine running all along: not only
        // time passing. Forward, the period closes at the step (the closed
        // period carries it); backward, the open period carries it.
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, MIN, S, state(MachineState::Running));
        let before = l.acc.snapshot(l.wall(MIN));
        l.wall_skew = 3 * MIN;
        l.hold(MIN, 2 * MIN, S, state(MachineState::Running));
        let after = l.acc.snapshot(l.wall(2 * MIN));
        assert!(!before.implies(&after), "a forward step: {after:?}");
        assert_eq!(l.intervals()[0].clock_step, Some(ClockStep { by_s: 180.0 }));

        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, 2 * MIN, S, state(MachineState::Running));
        let before = l.acc.snapshot(l.wall(2 * MIN));
        l.wall_skew = -MIN;
        l.hold(2 * MIN, 3 * MIN, S, state(MachineState::Running));
        let after = l.acc.snapshot(l.wall(3 * MIN));
        assert!(
            after.interval.as_ref().is_some_and(|i| i.clock_step_ms < 0),
            "the backward step is in the open period: {after:?}"
        );
        assert!(!before.implies(&after), "a backward step: {after:?}");

        // Across the end of the 15-minute interval: a period closed.
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, 14 * MIN, S, state(MachineState::Running));
        let before = l.acc.snapshot(t("2026-03-02T10:14:00Z"));
        l.hold(14 * MIN, 16 * MIN, S, state(MachineState::Running));
        assert!(!before.implies(&l.acc.snapshot(t("2026-03-02T10:16:00Z"))));
        assert!(before.projected(t("2026-03-02T10:15:00Z")).is_none());
        assert!(before.projected(t("2026-03-02T10:14:59.999Z")).is_some());
        assert!(before.projected(t("2026-03-02T10:13:00Z")).is_none());
    }

    #[test]
    fn a_restart_with_the_clock_behind_resumes_at_the_last_mark_and_never_goes_back() {
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, 2 * MIN, S, state(MachineState::Running));
        let mut snap = l.acc.snapshot(t("2026-03-02T10:02:00Z"));
        snap.observed_to = Some(l.acc.committed_to());
        // Power loss; the controller boots in 1970 and the agent starts.
        let mut out = Vec::new();
        let acc = Account::resume(settings(), &snap, t("1970-01-01T00:00:10Z"), 0, &mut out);
        let mut l2 = Line {
            acc,
            out,
            t0: t("1970-01-01T00:00:10Z"),
            wall_skew: 0,
        };
        l2.hold(0, 30 * S, S, state(MachineState::Running));
        // NTP: the right time is 10:05:00 (the wall clock moves 30 s on meanwhile).
        l2.wall_skew = (t("2026-03-02T10:05:00Z") - t("1970-01-01T00:00:40Z")).num_milliseconds();
        l2.hold(30 * S, 11 * MIN, S, state(MachineState::Running));
        let all = assert_one_timeline(&l2);
        assert!(l2
            .changes()
            .iter()
            .all(|(_, at)| *at >= t("2026-03-02T10:00:00Z")));
        let p = l2.intervals();
        assert_eq!(p[0].start, t("2026-03-02T10:00:00Z"));
        assert_eq!(
            p[0].end,
            t("2026-03-02T10:02:28Z"),
            "on from the last mark, to the last read before NTP"
        );
        assert!(p[0].clock_step.is_some_and(|c| c.by_s > 1.0e9));
        assert_eq!(p[1].start, t("2026-03-02T10:04:59Z"));
        let observed: f64 = all.iter().map(|p| total_s(p) - p.seconds.offline).sum();
        assert_eq!(observed, 119.0 + 11.0 * 60.0 - 1.0);
        assert_sums(&p);
    }

    #[test]
    fn a_state_shorter_than_the_dwell_is_not_a_state() {
        let mut s = settings();
        s.min_dwell_ms = 2000;
        let mut l = Line::start(s, "2026-03-02T10:00:00Z");
        l.hold(0, MIN, S, state(MachineState::Running));
        l.read(MIN, fault("alarm 3")); // one read of down: a glitch
        l.hold(MIN + S, 2 * MIN, S, state(MachineState::Running));
        l.hold(2 * MIN, 2 * MIN + 3 * S, S, fault("alarm 3")); // three reads: 2 s held
        l.hold(2 * MIN + 3 * S, 16 * MIN, S, state(MachineState::Running));
        let p = &l.intervals()[0];
        assert_eq!(p.seconds.down, 3.0);
        assert_eq!(p.counts.stops, 1, "the glitch is no stop");
        assert_eq!(p.counts.micro_stops, 1);
        let downs: Vec<_> = l
            .changes()
            .into_iter()
            .filter(|c| c.0 == MachineState::Down)
            .collect();
        assert_eq!(
            downs,
            vec![(MachineState::Down, t("2026-03-02T10:02:00Z"))],
            "dated at the first read that saw it"
        );
    }

    #[test]
    fn micro_stops_are_short_down_spells() {
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, MIN, S, state(MachineState::Running));
        l.hold(MIN, MIN + 30 * S, S, state(MachineState::Down)); // 30 s, no reason
        l.hold(MIN + 30 * S, 5 * MIN, S, state(MachineState::Running));
        l.hold(5 * MIN, 9 * MIN, S, fault("alarm 17")); // 4 min
        l.hold(9 * MIN, 16 * MIN, S, state(MachineState::Running));
        let p = &l.intervals()[0];
        assert_eq!(p.counts.stops, 2);
        assert_eq!(p.counts.micro_stops, 1);
        assert_eq!(p.counts.failures, 1, "only the spell with a fault reason");
        assert_eq!(p.seconds.down, 270.0);
    }

    #[test]
    fn kpis_follow_iso_22400_and_are_null_without_a_denominator() {
        let mut s = settings();
        s.ideal_cycle_s = Some(10.0);
        let mut l = Line::start(s, "2026-03-02T10:00:00Z");
        l.hold(0, 5 * MIN, S, state(MachineState::Setup));
        let mut x = 5 * MIN;
        while x < 11 * MIN {
            // One part every 12 s, one in ten is scrap.
            let n = (x - 5 * MIN) / S;
            let counts = if n % 12 == 0 {
                CountDelta {
                    produced: 1,
                    good: None,
                    scrap: u64::from(n % 120 == 0),
                    produced_unobserved: 0,
                }
            } else {
                CountDelta::default()
            };
            l.read_counts(x, state(MachineState::Running), counts);
            x += S;
        }
        l.hold(11 * MIN, 13 * MIN, S, state(MachineState::Idle));
        l.hold(13 * MIN, 15 * MIN, S, state(MachineState::Down));
        l.read(15 * MIN, state(MachineState::Running));
        let p = &l.intervals()[0];
        assert_eq!(
            (
                p.seconds.setup,
                p.seconds.running,
                p.seconds.idle,
                p.seconds.down
            ),
            (300.0, 360.0, 120.0, 120.0)
        );
        assert_eq!(
            (p.counts.produced, p.counts.scrap, p.counts.good),
            (30, 3, 27)
        );
        let k = p.kpi;
        assert_eq!(k.availability, Some(360.0 / 900.0));
        assert_eq!(k.utilisation_efficiency, Some(360.0 / 780.0));
        assert_eq!(k.allocation_efficiency, Some(780.0 / 900.0));
        assert_eq!(k.performance, Some(300.0 / 360.0));
        assert_eq!(k.quality, Some(27.0 / 30.0));
        assert_eq!(
            k.oee,
            Some((360.0 / 900.0) * (300.0 / 360.0) * (27.0 / 30.0))
        );

        // No ideal cycle time, no parts: performance, quality and OEE are null.
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, 15 * MIN + S, S, state(MachineState::Running));
        let k = l.intervals()[0].kpi;
        assert_eq!((k.performance, k.quality, k.oee), (None, None, None));
        assert_eq!(k.availability, Some(1.0));
    }

    #[test]
    fn parts_count_in_the_period_of_the_read_that_saw_them() {
        let mut l = Line::start(settings(), "2026-03-02T10:00:00Z");
        l.hold(0, 15 * MIN, S, state(MachineState::Running));
        let one = CountDelta {
            produced: 5,
            good: None,
            scrap: 0,
            produced_unobserved: 0,
        };
        l.read_counts(15 * MIN - S, state(MachineState::Running), one);
        l.read_counts(15 * MIN, state(MachineState::Running), one);
        l.read(15 * MIN + S, state(MachineState::Running));
        assert_eq!(l.intervals()[0].counts.produced, 5);
        assert_eq!(l.acc.interval_so_far().unwrap().counts.produced, 5);
    }

    #[test]
    fn parts_made_while_the_agent_was_away_stay_out_of_performance_and_oee() {
        let mut s = settings();
        s.ideal_cycle_s = Some(10.0);
        let part = CountDelta {
            produced: 1,
            good: None,
            scrap: 0,
            produced_unobserved: 0,
        };
        // One part every 10 s (the ideal) from 10:00 to 10:05, then the agent stops.
        let mut l = Line::start(s.clone(), "2026-03-02T10:00:00Z");
        let mut x = 0;
        while x <= 5 * MIN {
            let counts = if x > 0 && x % (10 * S) == 0 {
                part
            } else {
                CountDelta::default()
            };
            l.read_counts(x, state(MachineState::Running), counts);
            x += S;
        }
        l.acc.stop(&mut l.out);
        let snap = l.acc.snapshot(t("2026-03-02T10:05:00Z"));

        // Back at 10:09: the first read counts the 24 parts made meanwhile.
        let mut out = Vec::new();
        let acc = Account::resume(s, &snap, t("2026-03-02T10:09:00Z"), 0, &mut out);
        let mut l = Line {
            acc,
            out,
            t0: t("2026-03-02T10:09:00Z"),
            wall_skew: 0,
        };
        let away = CountDelta {
            produced_unobserved: 24,
            ..CountDelta::default()
        };
        l.read_counts(0, state(MachineState::Running), away);
        let mut x = S;
        while x <= 6 * MIN + S {
            let counts = if x % (10 * S) == 0 {
                part
            } else {
                CountDelta::default()
            };
            l.read_counts(x, state(MachineState::Running), counts);
            x += S;
        }
        let p = &l.intervals()[0];
        assert_eq!(p.seconds.running, 660.0);
        assert_eq!(p.seconds.offline, 240.0);
        // 30 before the stop, 35 after (the part read at 10:15:00 is the next period's).
        assert_eq!(
            p.counts.produced,
            30 + 35,
            "only parts made in observed time"
        );
        assert_eq!(p.counts.produced_unobserved, 24);
        assert_eq!(p.counts.good, 65);
        let performance = 650.0 * 1000.0 / 660_000.0;
        assert_eq!(p.kpi.performance, Some(performance), "not (65 + 24) x 10 s");
        assert_eq!(p.kpi.quality, Some(1.0));
        assert_eq!(p.kpi.oee, Some(performance));
    }

    #[test]
    fn intervals_align_to_the_local_clock_across_a_dst_change() {
        let mut s = settings();
        s.tz = chrono_tz::Europe::Berlin;
        s.period_ms = 1440 * MIN;
        let l = Line::start(s, "2026-03-28T12:00:00Z");
        // The day of 2026-03-29 in Berlin is 23 hours: 23:00 UTC to 22:00 UTC.
        assert_eq!(
            l.acc
                .interval_bounds(t("2026-03-29T10:00:00Z").timestamp_millis()),
            (
                t("2026-03-28T23:00:00Z").timestamp_millis(),
                t("2026-03-29T22:00:00Z").timestamp_millis()
            )
        );
    }

    mod random_timelines {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(32))]
            #[test]
            fn the_seconds_of_every_period_add_up_exactly_to_its_length(
                steps in proptest::collection::vec((0u8..6, 1i64..90_000), 1..300),
                dwell in 0i64..3000,
                period in 1i64..4,
            ) {
                let mut s = settings();
                s.min_dwell_ms = dwell;
                s.period_ms = period * MIN;
                s.calendar = Some(calendar(("early", "10:03", "10:41")));
                let mut l = Line::start(s, "2026-03-02T10:00:07.250Z");
                let mut x = 0;
                for (k, dt) in steps {
                    let observed = match k {
                        0 => state(MachineState::Running),
                        1 => state(MachineState::Setup),
                        2 => fault("alarm 1"),
                        3 => state(MachineState::Idle),
                        4 => offline(),
                        _ => Observed::Unknown,
                    };
                    l.read(x, observed);
                    x += dt;
                    l.acc.tick(x, 10_000, &mut l.out);
                }
                for p in l.periods() {
                    let ms = |v: f64| (v * 1000.0).round() as i64;
                    let s = p.seconds;
                    prop_assert_eq!(
                        ms(s.running) + ms(s.setup) + ms(s.down) + ms(s.idle) + ms(s.planned_stop) + ms(s.offline),
                        (p.end - p.start).num_milliseconds()
                    );
                    for v in [p.kpi.availability, p.kpi.coverage, p.kpi.utilisation_efficiency, p.kpi.allocation_efficiency].into_iter().flatten() {
                        prop_assert!(v.is_finite() && (0.0..=1.0).contains(&v));
                    }
                }
            }
        }
    }
}
