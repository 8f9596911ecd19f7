//! Part counters: turns the raw values of a machine's counting signals into
//! parts made, across wrap-around and resets.
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
//! Pure: values in, counts out. The state survives restarts in the snapshot,
//! so parts made while the agent was down are counted at its first read.

use serde::{Deserialize, Serialize};

use crate::config::{CountersConfig, DataType, SignalConfig};
use crate::source::{Readings, Value};

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
    /// Not a usable counter value (negative, fractional, text): ignored.
    Ignored,
}

impl CountStep {
    pub fn parts(self) -> u64 {
        match self {
            CountStep::Forward(n) | CountStep::Wrapped(n) | CountStep::Reset(n) => n,
            CountStep::Baseline | CountStep::Ignored => 0,
        }
    }
}

/// One counting signal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartCounter {
    /// 16 or 32 for registers that wrap; `None` for counters that do not.
    pub width_bits: Option<u32>,
    /// Last raw value, in the counter's unsigned range.
    pub last: Option<u64>,
    /// Parts counted so far (never goes down).
    pub total: u64,
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
            last: None,
            total: 0,
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

    pub fn observe(&mut self, v: &Value) -> CountStep {
        let Some(raw) = self.raw(v) else {
            return CountStep::Ignored;
        };
        let step = match self.last {
            None => CountStep::Baseline,
            Some(last) if raw >= last => CountStep::Forward(raw - last),
            Some(last) => match self.width_bits {
                Some(w) => {
                    let range = 1u64 << w;
                    let wrapped = range - last + raw;
                    if wrapped <= range / 16 {
                        CountStep::Wrapped(wrapped)
                    } else {
                        CountStep::Reset(raw)
                    }
                }
                None => CountStep::Reset(raw),
            },
        };
        self.last = Some(raw);
        self.total = self.total.saturating_add(step.parts());
        step
    }
}

/// Parts counted by one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountDelta {
    pub produced: u64,
    /// `Some` only when a good counter is configured.
    pub good: Option<u64>,
    pub scrap: u64,
}

impl CountDelta {
    pub fn is_zero(&self) -> bool {
        self.produced == 0 && self.good.unwrap_or(0) == 0 && self.scrap == 0
    }
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
}

impl MachineCounters {
    pub fn new(cfg: Option<&CountersConfig>, signals: &[SignalConfig]) -> Self {
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
        }
    }

    /// Keep the running state (last raw values, totals) of an earlier run.
    pub fn resume_from(&mut self, earlier: &MachineCounters) {
        if self.signals == earlier.signals {
            let signals = self.signals.take();
            *self = earlier.clone();
            self.signals = signals;
        }
    }

    /// Count what the counting signals in one sample say.
    pub fn observe(&mut self, readings: &Readings) -> CountDelta {
        let Some((p, g, s)) = &self.signals else {
            return CountDelta::default();
        };
        let get = |name: &str| readings.get(name).and_then(|r| r.as_ref().ok());
        let produced = get(p).map_or(0, |v| self.produced.observe(v).parts());
        let good = match (g, self.good.as_mut()) {
            (Some(name), Some(c)) => Some(get(name).map_or(0, |v| c.observe(v).parts())),
            _ => None,
        };
        let scrap = match (s, self.scrap.as_mut()) {
            (Some(name), Some(c)) => get(name).map_or(0, |v| c.observe(v).parts()),
            _ => 0,
        };
        self.good_total = match &self.good {
            Some(c) => c.total,
            None => self
                .good_total
                .max(self.produced.total.saturating_sub(self.scrap_total())),
        };
        CountDelta {
            produced,
            good,
            scrap,
        }
    }

    pub fn produced_total(&self) -> u64 {
        self.produced.total
    }

    pub fn scrap_total(&self) -> u64 {
        self.scrap.as_ref().map_or(0, |c| c.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_16_bit_counter_wraps_past_65535() {
        let mut c = PartCounter::new(DataType::U16);
        assert_eq!(c.observe(&Value::Int(65_530)), CountStep::Baseline);
        assert_eq!(c.observe(&Value::Int(65_535)), CountStep::Forward(5));
        assert_eq!(c.observe(&Value::Int(3)), CountStep::Wrapped(4));
        assert_eq!(c.total, 9);
    }

    #[test]
    fn a_32_bit_counter_wraps_past_its_top() {
        let mut c = PartCounter::new(DataType::U32);
        c.observe(&Value::Int(4_294_967_290));
        assert_eq!(c.observe(&Value::Int(10)), CountStep::Wrapped(16));
    }

    #[test]
    fn a_signed_16_bit_counter_wraps_through_negative_values() {
        let mut c = PartCounter::new(DataType::I16);
        c.observe(&Value::Int(32_766));
        assert_eq!(c.observe(&Value::Int(-32_767)), CountStep::Forward(3));
    }

    #[test]
    fn a_counter_that_jumps_back_far_starts_a_new_run() {
        let mut c = PartCounter::new(DataType::U16);
        c.observe(&Value::Int(40_000));
        assert_eq!(c.observe(&Value::Int(40_010)), CountStep::Forward(10));
        assert_eq!(c.observe(&Value::Int(2)), CountStep::Reset(2));
        assert_eq!(c.observe(&Value::Int(5)), CountStep::Forward(3));
        assert_eq!(c.total, 15);
    }

    #[test]
    fn a_64_bit_counter_that_goes_back_is_a_reset() {
        let mut c = PartCounter::new(DataType::U64);
        c.observe(&Value::UInt(1_000));
        assert_eq!(c.observe(&Value::UInt(999)), CountStep::Reset(999));
    }

    #[test]
    fn without_a_good_counter_good_is_produced_minus_scrap_and_never_decreases() {
        let sig = |n: &str| crate::config::SignalConfig {
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
        };
        let cfg = CountersConfig {
            produced: "parts".into(),
            good: None,
            scrap: Some("scrap".into()),
            ideal_cycle_s: None,
        };
        let mut m = MachineCounters::new(Some(&cfg), &[sig("parts"), sig("scrap")]);
        let read = |p: i64, s: i64| -> Readings {
            [("parts", Ok(Value::Int(p))), ("scrap", Ok(Value::Int(s)))]
                .into_iter()
                .collect()
        };
        m.observe(&read(100, 5));
        let d = m.observe(&read(110, 6));
        assert_eq!(
            d,
            CountDelta {
                produced: 10,
                good: None,
                scrap: 1
            }
        );
        assert_eq!(m.good_total, 9);
        m.observe(&read(110, 8));
        assert_eq!(
            m.good_total, 9,
            "scrap after the fact does not take good parts back"
        );
    }
}
