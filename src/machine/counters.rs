//! Part counters: turns the raw values of a machine's counting signals into
//! parts made, across wrap-around, resets and presets, and says which parts
//! were made while nobody was watching.
//!
//! A PLC counter is a 16- or 32-bit register (by the signal's data type) that
//! wraps to 0 after its largest value. A step backwards is a wrap when going
//! forward round the range would explain it with a small count (at most a
//! sixteenth of the range, 4096 parts for 16 bits); otherwise the counter was
//! reset (new order, operator, power cycle): a new run starts and the parts
//! of the new run are its value (counted up from 0). A reset is never a
//! negative count. 64-bit and float counters do not wrap: backwards is a reset.
//! The first value seen is only a baseline. Totals only grow.
//!
//! Plausibility. A counter cannot count faster than its machine makes parts:
//! at most [`CountLimit::most_parts`] in the time since its last good read
//! (`counters.max_parts_per_s`, by default [`PRESET_MARGIN`] parts per ideal
//! cycle, plus [`SLACK_S`] seconds of reading jitter). A step that needs more
//! (a technician writes 4,294,967,200 into the register, a PLC program
//! reload) is a preset: counted as zero, kept in the counter's record for
//! `linegate status`, logged once, and counting goes on from the new value.
//! The same bound applies to a wrap or a reset: a wrap that is too large is a
//! reset, a reset to a value larger than the bound is a preset.
//!
//! Observation. Parts counted across time the agent did not observe (it was
//! not running, the machine did not answer, or its reads stopped for longer
//! than its staleness time) are real but of unknown date: they are
//! [`CountStep::Unobserved`], go into the totals (so orders get them) and
//! into `produced_unobserved`, never into a period's produced, good or scrap.
//! The caller says whether the time since the last read was observed.
//!
//! Pure: values and times in, counts out. The state (last raw values, the
//! time of the last read, totals, presets) survives restarts in the snapshot.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{CountersConfig, DataType, SignalConfig};
use crate::source::{Readings, Value};

/// Default margin over the ideal rate: a machine may run this many times
/// faster than its ideal cycle time before a step is implausible.
pub const PRESET_MARGIN: f64 = 4.0;
/// Parts per second allowed without `max_parts_per_s` or `ideal_cycle_s`.
pub const DEFAULT_MAX_PARTS_PER_S: f64 = 1000.0;
/// Seconds always allowed on top of the time between two reads (when a
/// read is dated, how long it took).
pub const SLACK_S: f64 = 2.0;

/// How fast a machine's counters can plausibly count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CountLimit {
    pub max_parts_per_s: f64,
}

impl Default for CountLimit {
    fn default() -> Self {
        CountLimit {
            max_parts_per_s: DEFAULT_MAX_PARTS_PER_S,
        }
    }
}

impl CountLimit {
    /// `max_parts_per_s`, else [`PRESET_MARGIN`] / `ideal_cycle_s`, else the default.
    pub fn from_config(cfg: &CountersConfig) -> Self {
        let valid = |r: f64| r.is_finite() && r > 0.0;
        let rate = cfg
            .max_parts_per_s
            .filter(|r| valid(*r))
            .or_else(|| {
                cfg.ideal_cycle_s
                    .filter(|t| valid(*t))
                    .map(|t| PRESET_MARGIN / t)
                    .filter(|r| valid(*r))
            })
            .unwrap_or(DEFAULT_MAX_PARTS_PER_S);
        CountLimit {
            max_parts_per_s: rate,
        }
    }

    /// The most parts a counter can count in `elapsed_ms` (negative: none elapsed).
    pub fn most_parts(&self, elapsed_ms: i64) -> u64 {
        let s = elapsed_ms.max(0) as f64 / 1000.0 + SLACK_S;
        let n = (self.max_parts_per_s * s).ceil();
        if n >= u64::MAX as f64 {
            u64::MAX
        } else {
            n as u64
        }
    }
}

/// What one new counter value meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountStep {
    /// The first value: nothing counted yet.
    Baseline,
    /// Counted forward normally.
    Forward(u64),
    /// Wrapped past its largest value.
    Wrapped(u64),
    /// Jumped back further than a wrap explains: a new run of this many parts.
    Reset(u64),
    /// Jumped further than the machine can have made parts since the last
    /// read: the register was written (preset). Counted as zero.
    Preset { from: u64, to: u64 },
    /// A plausible step (forward, wrap or reset) of this many parts across
    /// time that was not observed: real parts, made at unknown times.
    Unobserved(u64),
    /// Not a usable counter value (negative, fractional, text): ignored.
    Ignored,
}

impl CountStep {
    /// Parts this step adds to the totals (observed or not).
    pub fn parts(self) -> u64 {
        match self {
            CountStep::Forward(n)
            | CountStep::Wrapped(n)
            | CountStep::Reset(n)
            | CountStep::Unobserved(n) => n,
            CountStep::Baseline | CountStep::Preset { .. } | CountStep::Ignored => 0,
        }
    }

    /// Parts made in observed time (what a period may count).
    pub fn observed_parts(self) -> u64 {
        match self {
            CountStep::Unobserved(_) => 0,
            other => other.parts(),
        }
    }
}

/// The plausibility rule: what a new raw value `raw` of a counter whose
/// last value was `last` means, given the most parts the machine can have
/// made since (`most`) and whether that time was observed. Pure.
pub fn judge(
    last: Option<u64>,
    raw: u64,
    width_bits: Option<u32>,
    most: u64,
    observed: bool,
) -> CountStep {
    let Some(last) = last else {
        return CountStep::Baseline;
    };
    let preset = CountStep::Preset {
        from: last,
        to: raw,
    };
    let step = if raw >= last {
        let n = raw - last;
        if n > most {
            return preset;
        }
        CountStep::Forward(n)
    } else {
        let wrapped = width_bits.map(|w| {
            let range = 1u64 << w;
            (range - last + raw, range / 16)
        });
        match wrapped {
            Some((n, max_wrap)) if n <= max_wrap && n <= most => CountStep::Wrapped(n),
            _ if raw <= most => CountStep::Reset(raw),
            _ => return preset,
        }
    };
    if observed {
        step
    } else {
        CountStep::Unobserved(step.parts())
    }
}

/// A preset of one counter, as `linegate status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterPreset {
    /// When the read that saw it was taken.
    pub at: DateTime<Utc>,
    /// The value before, and the value written.
    pub from: u64,
    pub to: u64,
}

/// One counting signal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartCounter {
    /// 16 or 32 for registers that wrap; `None` for counters that do not.
    pub width_bits: Option<u32>,
    /// Last raw value, in the counter's unsigned range.
    pub last: Option<u64>,
    /// Wall time (ms) of the read that gave `last`: the plausibility rule's elapsed time.
    #[serde(default)]
    pub last_at_ms: Option<i64>,
    /// Parts counted so far (never goes down).
    pub total: u64,
    /// Presets seen so far, and the latest.
    #[serde(default)]
    pub presets: u64,
    #[serde(default)]
    pub last_preset: Option<CounterPreset>,
}

impl PartCounter {
    pub fn new(data_type: DataType) -> Self {
        let width_bits = match data_type {
            DataType::U16 | DataType::I16 => Some(16),
            DataType::U32 | DataType::I32 => Some(32),
            _ => None,
        };
        PartCounter {
            width_bits,
            ..PartCounter::default()
        }
    }

    /// The value in the counter's unsigned range (an i16 -1 is 65535).
    fn raw(&self, v: &Value) -> Option<u64> {
        let i: i128 = match v {
            Value::Int(i) => i128::from(*i),
            Value::UInt(u) => i128::from(*u),
            Value::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1.8e19 => *f as i128,
            _ => return None,
        };
        match self.width_bits {
            Some(w) => Some((i.rem_euclid(1i128 << w)) as u64),
            None if i >= 0 => u64::try_from(i).ok(),
            None => None,
        }
    }

    /// Take a value read at wall time `at_ms`; `observed`: the time since
    /// the last read was observed (no agent stop, no offline machine).
    pub fn observe(
        &mut self,
        v: &Value,
        at_ms: i64,
        observed: bool,
        limit: CountLimit,
    ) -> CountStep {
        let Some(raw) = self.raw(v) else {
            return CountStep::Ignored;
        };
        // A counter saved before its read times were kept (an older
        // snapshot) has no elapsed time to judge by: any step is plausible.
        let most = self
            .last_at_ms
            .map_or(u64::MAX, |last| limit.most_parts(at_ms - last));
        let step = judge(self.last, raw, self.width_bits, most, observed);
        if let CountStep::Preset { from, to } = step {
            self.presets += 1;
            self.last_preset = Some(CounterPreset {
                at: DateTime::from_timestamp_millis(at_ms).unwrap_or_default(),
                from,
                to,
            });
        }
        self.last = Some(raw);
        self.last_at_ms = Some(at_ms);
        self.total = self.total.saturating_add(step.parts());
        step
    }
}

/// Parts counted by one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountDelta {
    /// Parts made in observed time.
    pub produced: u64,
    /// `Some` only when a good counter is configured.
    pub good: Option<u64>,
    pub scrap: u64,
    /// Parts counted across time that was not observed (not in `produced`).
    #[serde(default)]
    pub produced_unobserved: u64,
}

impl CountDelta {
    pub fn is_zero(&self) -> bool {
        self.produced == 0
            && self.good.unwrap_or(0) == 0
            && self.scrap == 0
            && self.produced_unobserved == 0
    }
}

/// The presets of one counting signal, for `linegate status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalPresets {
    pub signal: String,
    pub count: u64,
    pub last: CounterPreset,
}

/// A machine's counters (produced, and optionally good and scrap).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineCounters {
    signals: Option<(String, Option<String>, Option<String>)>,
    pub produced: PartCounter,
    pub good: Option<PartCounter>,
    pub scrap: Option<PartCounter>,
    /// Good parts so far; without a good counter produced - scrap, never decreasing.
    pub good_total: u64,
    /// The plausibility bound (from the config, not saved).
    #[serde(skip)]
    limit: CountLimit,
    /// For the log line of a preset (from the config, not saved).
    #[serde(skip)]
    machine: String,
}

impl MachineCounters {
    /// Take `other`'s read times (`last_at_ms`), counter by counter: what
    /// [`AccountSnapshot::implies`](super::accounting::AccountSnapshot::implies)
    /// leaves out of its comparison. A read that counted nothing moves only
    /// its read time, and a snapshot is not stored again for that.
    pub fn take_read_times(&mut self, other: &MachineCounters) {
        self.produced.last_at_ms = other.produced.last_at_ms;
        for (mine, theirs) in [
            (&mut self.good, &other.good),
            (&mut self.scrap, &other.scrap),
        ] {
            if let (Some(mine), Some(theirs)) = (mine, theirs) {
                mine.last_at_ms = theirs.last_at_ms;
            }
        }
    }

    pub fn new(machine: &str, cfg: Option<&CountersConfig>, signals: &[SignalConfig]) -> Self {
        let Some(cfg) = cfg else {
            return MachineCounters::default();
        };
        let type_of = |name: &str| {
            signals
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.data_type)
                .unwrap_or(DataType::U64)
        };
        MachineCounters {
            signals: Some((cfg.produced.clone(), cfg.good.clone(), cfg.scrap.clone())),
            produced: PartCounter::new(type_of(&cfg.produced)),
            good: cfg.good.as_deref().map(|g| PartCounter::new(type_of(g))),
            scrap: cfg.scrap.as_deref().map(|s| PartCounter::new(type_of(s))),
            good_total: 0,
            limit: CountLimit::from_config(cfg),
            machine: machine.to_string(),
        }
    }

    /// Keep the running state (last raw values, totals) of an earlier run.
    pub fn resume_from(&mut self, earlier: &MachineCounters) {
        if self.signals == earlier.signals {
            let (limit, machine) = (self.limit, std::mem::take(&mut self.machine));
            *self = earlier.clone();
            self.limit = limit;
            self.machine = machine;
        }
    }

    /// Count what the counting signals in one sample say. `at_ms`: the
    /// sample's wall time; `observed`: the time since the previous sample
    /// was observed (see the module doc).
    pub fn observe(&mut self, readings: &Readings, at_ms: i64, observed: bool) -> CountDelta {
        let Some((p, g, s)) = &self.signals else {
            return CountDelta::default();
        };
        let limit = self.limit;
        let machine = self.machine.as_str();
        let get = |name: &str| readings.get(name).and_then(|r| r.as_ref().ok());
        let take = |name: &str, c: &mut PartCounter| -> CountStep {
            let Some(v) = get(name) else {
                return CountStep::Ignored;
            };
            let step = c.observe(v, at_ms, observed, limit);
            if let CountStep::Preset { from, to } = step {
                tracing::warn!(
                    machine,
                    signal = name,
                    old = from,
                    new = to,
                    max_parts_per_s = limit.max_parts_per_s,
                    "part counter jumped further than the machine can count: a preset, counted as zero"
                );
            }
            step
        };
        let produced = take(p, &mut self.produced);
        let good = match (g, self.good.as_mut()) {
            (Some(name), Some(c)) => Some(take(name, c).observed_parts()),
            _ => None,
        };
        let scrap = match (s, self.scrap.as_mut()) {
            (Some(name), Some(c)) => take(name, c).observed_parts(),
            _ => 0,
        };
        self.good_total = match &self.good {
            Some(c) => c.total,
            None => self
                .good_total
                .max(self.produced.total.saturating_sub(self.scrap_total())),
        };
        CountDelta {
            produced: produced.observed_parts(),
            good,
            scrap,
            produced_unobserved: produced.parts() - produced.observed_parts(),
        }
    }

    pub fn produced_total(&self) -> u64 {
        self.produced.total
    }

    pub fn scrap_total(&self) -> u64 {
        self.scrap.as_ref().map_or(0, |c| c.total)
    }

    /// Each counting signal that has seen a preset: how many, and the latest.
    pub fn presets(&self) -> Vec<SignalPresets> {
        let Some((p, g, s)) = &self.signals else {
            return Vec::new();
        };
        [
            (Some(p), Some(&self.produced)),
            (g.as_ref(), self.good.as_ref()),
            (s.as_ref(), self.scrap.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, c)| {
            let (name, c) = (name?, c?);
            Some(SignalPresets {
                signal: name.clone(),
                count: c.presets,
                last: c.last_preset.clone()?,
            })
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One read a second, with the default limit (1000 parts/s).
    struct Timeline {
        c: PartCounter,
        at_ms: i64,
    }

    impl Timeline {
        fn of(data_type: DataType) -> Self {
            Timeline {
                c: PartCounter::new(data_type),
                at_ms: 1_700_000_000_000,
            }
        }

        /// A read `after_ms` after the previous one.
        fn read_after(&mut self, after_ms: i64, v: Value, observed: bool) -> CountStep {
            self.at_ms += after_ms;
            self.c
                .observe(&v, self.at_ms, observed, CountLimit::default())
        }

        fn read(&mut self, v: i64) -> CountStep {
            self.read_after(1000, Value::Int(v), true)
        }
    }

    #[test]
    fn a_16_bit_counter_wraps_past_65535() {
        let mut c = Timeline::of(DataType::U16);
        assert_eq!(c.read(65_530), CountStep::Baseline);
        assert_eq!(c.read(65_535), CountStep::Forward(5));
        assert_eq!(c.read(3), CountStep::Wrapped(4));
        assert_eq!(c.c.total, 9);
    }

    #[test]
    fn a_32_bit_counter_wraps_past_its_top() {
        let mut c = Timeline::of(DataType::U32);
        c.read(4_294_967_290);
        assert_eq!(c.read(10), CountStep::Wrapped(16));
    }

    #[test]
    fn a_signed_16_bit_counter_wraps_through_negative_values() {
        let mut c = Timeline::of(DataType::I16);
        c.read(32_766);
        assert_eq!(c.read(-32_767), CountStep::Forward(3));
    }

    #[test]
    fn a_counter_that_jumps_back_far_starts_a_new_run() {
        let mut c = Timeline::of(DataType::U16);
        c.read(40_000);
        assert_eq!(c.read(40_010), CountStep::Forward(10));
        assert_eq!(c.read(2), CountStep::Reset(2));
        assert_eq!(c.read(5), CountStep::Forward(3));
        assert_eq!(c.c.total, 15);
    }

    #[test]
    fn a_counter_reset_to_zero_counts_on_from_zero() {
        let mut c = Timeline::of(DataType::U32);
        c.read(123_456);
        assert_eq!(c.read(0), CountStep::Reset(0));
        assert_eq!(c.read(4), CountStep::Forward(4));
        assert_eq!(c.c.total, 4);
        assert_eq!(c.c.presets, 0);
    }

    #[test]
    fn a_64_bit_counter_that_goes_back_is_a_reset() {
        let mut c = Timeline::of(DataType::U64);
        c.read_after(0, Value::UInt(1_000), true);
        assert_eq!(
            c.read_after(1000, Value::UInt(999), true),
            CountStep::Reset(999)
        );
    }

    #[test]
    fn a_32_bit_counter_written_to_near_its_top_is_a_preset_counted_as_zero() {
        let mut c = Timeline::of(DataType::U32);
        c.read(100);
        assert_eq!(c.read(103), CountStep::Forward(3));
        assert_eq!(
            c.read(4_294_967_200),
            CountStep::Preset {
                from: 103,
                to: 4_294_967_200
            }
        );
        assert_eq!(c.c.total, 3, "the preset adds nothing");
        // Counting goes on from the new value, and across the wrap.
        assert_eq!(c.read(4_294_967_210), CountStep::Forward(10));
        assert_eq!(c.read(14), CountStep::Wrapped(100));
        assert_eq!(c.c.total, 113);
        assert_eq!(c.c.presets, 1);
        let p = c.c.last_preset.clone().unwrap();
        assert_eq!((p.from, p.to), (103, 4_294_967_200));
    }

    #[test]
    fn the_bound_grows_with_the_time_since_the_last_read() {
        let limit = CountLimit {
            max_parts_per_s: 2.0,
        };
        // 2 parts/s over 1 s plus 2 s of slack: at most 6 parts.
        assert_eq!(limit.most_parts(1000), 6);
        assert_eq!(
            limit.most_parts(-5000),
            4,
            "a clock going back allows only the slack"
        );
        assert_eq!(
            judge(Some(10), 16, Some(16), 6, true),
            CountStep::Forward(6)
        );
        assert_eq!(
            judge(Some(10), 17, Some(16), 6, true),
            CountStep::Preset { from: 10, to: 17 }
        );
        // After ten minutes away, 1200 parts are plausible.
        let most = limit.most_parts(600_000);
        assert_eq!(most, 1204);
        assert_eq!(
            judge(Some(10), 1210, Some(16), most, false),
            CountStep::Unobserved(1200)
        );
    }

    #[test]
    fn a_wrap_or_reset_larger_than_the_bound_is_a_preset() {
        // A 16-bit wrap of 4000 parts, but only 6 can have been made.
        assert_eq!(
            judge(Some(62_000), 464, Some(16), 6, true),
            CountStep::Preset {
                from: 62_000,
                to: 464
            }
        );
        // Written back from 50000 to 30000 (a 32-bit counter): a new run of
        // 30000 parts is not possible in a second.
        assert_eq!(
            judge(Some(50_000), 30_000, Some(32), 2004, true),
            CountStep::Preset {
                from: 50_000,
                to: 30_000
            }
        );
        // Back to 3 is a reset with 3 new parts.
        assert_eq!(
            judge(Some(50_000), 3, Some(32), 2004, true),
            CountStep::Reset(3)
        );
    }

    #[test]
    fn steps_across_unobserved_time_are_real_parts_of_unknown_date() {
        let mut c = Timeline::of(DataType::U16);
        c.read(65_000);
        // The agent was away for a minute: 836 parts, across a wrap.
        let step = c.read_after(60_000, Value::Int(300), false);
        assert_eq!(step, CountStep::Unobserved(836));
        assert_eq!(step.parts(), 836);
        assert_eq!(step.observed_parts(), 0);
        assert_eq!(c.c.total, 836, "the totals (and so the orders) get them");
        // Back to observed reads.
        assert_eq!(c.read(302), CountStep::Forward(2));
        // A preset across a gap is still a preset.
        let preset = c.read_after(60_000, Value::Int(65_000), false);
        assert_eq!(
            preset,
            CountStep::Preset {
                from: 302,
                to: 65_000
            }
        );
    }

    #[test]
    fn a_counter_from_a_snapshot_without_read_times_is_not_judged_at_its_first_read() {
        let old: PartCounter =
            serde_json::from_str(r#"{"width_bits": 32, "last": 100, "total": 7}"#).unwrap();
        let mut c = Timeline {
            c: old,
            at_ms: 1_700_000_000_000,
        };
        assert_eq!(
            c.read_after(0, Value::Int(5_100), false),
            CountStep::Unobserved(5_000)
        );
        assert_eq!(
            c.read(1_000_000),
            CountStep::Preset {
                from: 5_100,
                to: 1_000_000
            },
            "judged from then on"
        );
    }

    #[test]
    fn the_limit_comes_from_the_config_or_the_ideal_cycle_time() {
        let cfg = |max: Option<f64>, ideal: Option<f64>| CountersConfig {
            produced: "parts".into(),
            good: None,
            scrap: None,
            ideal_cycle_s: ideal,
            max_parts_per_s: max,
        };
        assert_eq!(
            CountLimit::from_config(&cfg(Some(3.0), Some(0.1))).max_parts_per_s,
            3.0
        );
        assert_eq!(
            CountLimit::from_config(&cfg(None, Some(2.0))).max_parts_per_s,
            PRESET_MARGIN / 2.0
        );
        assert_eq!(
            CountLimit::from_config(&cfg(None, None)).max_parts_per_s,
            DEFAULT_MAX_PARTS_PER_S
        );
    }

    fn sig(n: &str) -> SignalConfig {
        crate::config::SignalConfig {
            name: n.into(),
            area: None,
            address: None,
            data_type: DataType::U16,
            word_order: Default::default(),
            byte_order: Default::default(),
            scale: 1.0,
            offset: 0.0,
            bit: None,
            length: None,
            topic: None,
            pointer: None,
            deadband: 0.0,
        }
    }

    fn read(p: i64, s: i64) -> Readings {
        [("parts", Ok(Value::Int(p))), ("scrap", Ok(Value::Int(s)))]
            .into_iter()
            .collect()
    }

    #[test]
    fn without_a_good_counter_good_is_produced_minus_scrap_and_never_decreases() {
        let cfg = CountersConfig {
            produced: "parts".into(),
            good: None,
            scrap: Some("scrap".into()),
            ideal_cycle_s: None,
            max_parts_per_s: None,
        };
        let mut m = MachineCounters::new("press07", Some(&cfg), &[sig("parts"), sig("scrap")]);
        m.observe(&read(100, 5), 0, true);
        let d = m.observe(&read(110, 6), 1000, true);
        assert_eq!(
            d,
            CountDelta {
                produced: 10,
                good: None,
                scrap: 1,
                produced_unobserved: 0,
            }
        );
        assert_eq!(m.good_total, 9);
        m.observe(&read(110, 8), 2000, true);
        assert_eq!(
            m.good_total, 9,
            "scrap after the fact does not take good parts back"
        );
    }

    #[test]
    fn a_machine_counts_unobserved_parts_apart_and_lists_its_presets() {
        let cfg = CountersConfig {
            produced: "parts".into(),
            good: None,
            scrap: Some("scrap".into()),
            ideal_cycle_s: Some(1.0),
            max_parts_per_s: None,
        };
        let mut m = MachineCounters::new("press07", Some(&cfg), &[sig("parts"), sig("scrap")]);
        m.observe(&read(100, 5), 0, true);
        let d = m.observe(&read(160, 7), 30_000, false);
        assert_eq!(
            d,
            CountDelta {
                produced: 0,
                good: None,
                scrap: 0,
                produced_unobserved: 60,
            }
        );
        assert_eq!((m.produced_total(), m.scrap_total()), (60, 2));
        assert!(m.presets().is_empty());
        // 4 parts/s (4 x the ideal rate) over 1 s + 2 s: 60 -> 9000 is a preset.
        let d = m.observe(&read(9_000, 7), 31_000, true);
        assert_eq!(d.produced, 0);
        assert_eq!(m.produced_total(), 60);
        let p = m.presets();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].signal.as_str(), p[0].count), ("parts", 1));
        assert_eq!((p[0].last.from, p[0].last.to), (160, 9_000));

        // The record survives a restart; the limit comes from the new config.
        let saved: MachineCounters =
            serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        let mut again = MachineCounters::new("press07", Some(&cfg), &[sig("parts"), sig("scrap")]);
        again.resume_from(&saved);
        assert_eq!(again.presets(), p);
        assert_eq!(again.limit, m.limit);
        assert_eq!(again.observe(&read(9_002, 7), 32_000, true).produced, 2);
    }
}
