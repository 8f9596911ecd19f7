//! Every random draw of the simulator, and nothing else: the spells a
//! machine goes through on its own (running, idle, down with an alarm,
//! setup), the fixed profile of each machine (cycle time, spindle speed,
//! scrap rate), the parts' good/scrap verdicts and the plan of an order run.
//!
//! Everything here is a pure function of `(seed, machine index)` (and of the
//! order, for an order run): the same seed gives the same line, spell for
//! spell and part for part. A `speed` factor divides every duration, so a
//! test can run an eight-hour shift in a few seconds. No clock, no I/O.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Alarm codes a simulated machine raises when it goes down, with the text a
/// technician would find in the machine's manual.
pub const ALARMS: &[(u16, &str)] = &[
    (8, "material starved"),
    (17, "door open"),
    (23, "spindle overload"),
    (42, "tool breakage"),
];

/// Alarm codes that are faults (they count as failures); the others are
/// stops without a broken part (starved, door opened by the operator).
pub const FAULT_ALARMS: &[u16] = &[23, 42];

/// Products the simulated machines know, with the code written to the
/// `product_code` register.
pub const PRODUCTS: &[(&str, u16)] = &[("P-4711", 11), ("P-4712", 12), ("P-4713", 13)];

/// What a machine does during one spell. The names map onto the contract's
/// states: running, idle, down, setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpellKind {
    /// Producing: one part per cycle time.
    Running,
    /// Available, nothing to do.
    Idle,
    /// Stopped by an alarm; `alarm` is one of [`ALARMS`].
    Down { alarm: u16 },
    /// Changeover: mode register 2.
    Setup,
}

impl SpellKind {
    /// The contract's name of the state this spell shows.
    pub fn state_name(self) -> &'static str {
        match self {
            SpellKind::Running => "running",
            SpellKind::Idle => "idle",
            SpellKind::Down { .. } => "down",
            SpellKind::Setup => "setup",
        }
    }

    fn same_kind(self, other: SpellKind) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }
}

/// One stretch of the machine's own schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spell {
    pub kind: SpellKind,
    /// Real time, already divided by the speed factor.
    pub duration: Duration,
}

/// Spell lengths at speed 1, in seconds: `(min, max)`.
const RUNNING_S: (f64, f64) = (120.0, 900.0);
const IDLE_S: (f64, f64) = (20.0, 240.0);
const DOWN_S: (f64, f64) = (5.0, 420.0);
const SETUP_S: (f64, f64) = (60.0, 480.0);

/// A setup before an order, and a stop during an order, at speed 1.
const ORDER_SETUP_S: (f64, f64) = (20.0, 90.0);
const ORDER_DOWN_S: (f64, f64) = (5.0, 60.0);
/// Chance that an order run is interrupted by one alarm.
const ORDER_DOWN_CHANCE: f64 = 0.4;

/// Independent random streams of one machine, so that (for example) an order
/// run does not shift the good/scrap verdicts of later parts.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Spells = 1,
    Parts = 2,
    Order = 3,
}

/// A 64-bit seed for one stream of one machine (splitmix64 finaliser).
fn stream_seed(seed: u64, machine_index: usize, stream: Stream, extra: u64) -> u64 {
    let mut z = seed
        ^ (machine_index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (stream as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ extra.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Shortest duration of anything, so that no speed factor can make the
/// simulation spin on zero-length cycles or spells.
pub const MIN_DURATION: Duration = Duration::from_millis(1);

/// `secs` at speed 1 as real time at `speed` (at least [`MIN_DURATION`]).
pub fn scaled(secs: f64, speed: f64) -> Duration {
    let secs = secs / speed;
    if secs.is_finite() && secs > 0.0 {
        Duration::from_secs_f64(secs.min(1e9)).max(MIN_DURATION)
    } else {
        MIN_DURATION
    }
}

fn draw_secs(rng: &mut StdRng, (min, max): (f64, f64)) -> f64 {
    rng.random_range(min..max)
}

fn draw_alarm(rng: &mut StdRng) -> u16 {
    ALARMS[rng.random_range(0..ALARMS.len())].0
}

/// The fixed character of one machine; depends on its index only, so that
/// `configs/demo.toml` can state the ideal cycle times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineProfile {
    /// Seconds per part at speed 1.
    pub cycle_s: f64,
    /// What the machine's own documentation claims (a little faster than real).
    pub ideal_cycle_s: f64,
    /// Spindle speed while running.
    pub rpm: u16,
    /// Share of parts that are scrap.
    pub scrap_rate: f64,
    /// Product shown before any order (index into [`PRODUCTS`]).
    pub product: usize,
    /// Temperature when cold, °C.
    pub ambient_c: f32,
}

impl MachineProfile {
    pub fn for_machine(machine_index: usize) -> MachineProfile {
        const CYCLES_S: [f64; 5] = [6.0, 8.0, 4.5, 10.0, 7.0];
        let cycle_s = CYCLES_S[machine_index % CYCLES_S.len()];
        MachineProfile {
            cycle_s,
            ideal_cycle_s: cycle_s * 0.9,
            rpm: 1200 + 150 * (machine_index % 4) as u16,
            scrap_rate: 0.02 + 0.01 * (machine_index % 3) as f64,
            product: machine_index % PRODUCTS.len(),
            ambient_c: 24.0 + (machine_index % 5) as f32 * 0.5,
        }
    }
}

/// The endless, seeded sequence of spells a machine follows when it has no
/// order. Never two spells of the same kind in a row, so every spell is a
/// state change. The first spell is always `Running`.
#[derive(Debug, Clone)]
pub struct Schedule {
    rng: StdRng,
    speed: f64,
    last: Option<SpellKind>,
}

impl Schedule {
    /// `speed` must be positive and finite (checked by `SimOptions`).
    pub fn new(seed: u64, machine_index: usize, speed: f64) -> Schedule {
        Schedule {
            rng: StdRng::seed_from_u64(stream_seed(seed, machine_index, Stream::Spells, 0)),
            speed,
            last: None,
        }
    }

    /// The next spell; the schedule never ends.
    pub fn next_spell(&mut self) -> Spell {
        let kind = match self.last {
            None => SpellKind::Running,
            Some(last) => self.next_kind(last),
        };
        let secs = match kind {
            SpellKind::Running => draw_secs(&mut self.rng, RUNNING_S),
            SpellKind::Idle => draw_secs(&mut self.rng, IDLE_S),
            SpellKind::Down { .. } => draw_secs(&mut self.rng, DOWN_S),
            SpellKind::Setup => draw_secs(&mut self.rng, SETUP_S),
        };
        self.last = Some(kind);
        Spell {
            kind,
            duration: scaled(secs, self.speed),
        }
    }

    /// A small Markov chain: what tends to follow what on a real line.
    fn next_kind(&mut self, last: SpellKind) -> SpellKind {
        let p: f64 = self.rng.random();
        let kind = match last {
            SpellKind::Running if p < 0.45 => SpellKind::Down {
                alarm: draw_alarm(&mut self.rng),
            },
            SpellKind::Running if p < 0.80 => SpellKind::Idle,
            SpellKind::Running => SpellKind::Setup,
            SpellKind::Idle if p < 0.70 => SpellKind::Running,
            SpellKind::Idle => SpellKind::Setup,
            SpellKind::Down { .. } if p < 0.65 => SpellKind::Running,
            SpellKind::Down { .. } => SpellKind::Idle,
            SpellKind::Setup => SpellKind::Running,
        };
        debug_assert!(!kind.same_kind(last));
        kind
    }
}

impl Iterator for Schedule {
    type Item = Spell;

    fn next(&mut self) -> Option<Spell> {
        Some(self.next_spell())
    }
}

/// Good/scrap verdicts of a machine's parts, in production order.
#[derive(Debug, Clone)]
pub struct PartQuality {
    rng: StdRng,
    scrap_rate: f64,
}

impl PartQuality {
    pub fn new(seed: u64, machine_index: usize, scrap_rate: f64) -> PartQuality {
        PartQuality {
            rng: StdRng::seed_from_u64(stream_seed(seed, machine_index, Stream::Parts, 0)),
            scrap_rate,
        }
    }

    /// Is the next part scrap?
    pub fn next_is_scrap(&mut self) -> bool {
        self.rng.random_bool(self.scrap_rate.clamp(0.0, 1.0))
    }
}

/// One alarm stop planned inside an order run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderStop {
    /// The stop comes right after this many parts of the order.
    pub after_parts: u32,
    pub alarm: u16,
    pub duration: Duration,
}

/// How a machine runs one order: a setup, then cycles until the quantity is
/// made, perhaps interrupted once by an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderPlan {
    pub setup: Duration,
    pub stop: Option<OrderStop>,
}

impl OrderPlan {
    /// The plan depends on the seed, the machine and the order's own values,
    /// so the same order on the same machine always runs the same way.
    pub fn new(
        seed: u64,
        machine_index: usize,
        order_number: u32,
        quantity: u16,
        speed: f64,
    ) -> OrderPlan {
        let extra = (u64::from(order_number) << 16) | u64::from(quantity);
        let mut rng = StdRng::seed_from_u64(stream_seed(seed, machine_index, Stream::Order, extra));
        let setup = scaled(draw_secs(&mut rng, ORDER_SETUP_S), speed);
        let stop = (quantity >= 2 && rng.random_bool(ORDER_DOWN_CHANCE)).then(|| OrderStop {
            after_parts: rng.random_range(1..u32::from(quantity)),
            alarm: draw_alarm(&mut rng),
            duration: scaled(draw_secs(&mut rng, ORDER_DOWN_S), speed),
        });
        OrderPlan { setup, stop }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(seed: u64, machine: usize, n: usize) -> Vec<Spell> {
        Schedule::new(seed, machine, 1.0).take(n).collect()
    }

    #[test]
    fn same_seed_gives_the_same_schedule() {
        assert_eq!(first(7, 0, 200), first(7, 0, 200));
        assert_eq!(first(7, 3, 200), first(7, 3, 200));
    }

    #[test]
    fn different_seeds_give_different_schedules() {
        assert_ne!(first(7, 0, 50), first(8, 0, 50));
    }

    #[test]
    fn machines_of_one_line_do_not_share_a_schedule() {
        assert_ne!(first(7, 0, 50), first(7, 1, 50));
    }

    #[test]
    fn speed_divides_every_duration() {
        let slow = first(3, 2, 100);
        let fast: Vec<Spell> = Schedule::new(3, 2, 100.0).take(100).collect();
        for (s, f) in slow.iter().zip(&fast) {
            assert_eq!(s.kind, f.kind);
            let ratio = s.duration.as_secs_f64() / f.duration.as_secs_f64();
            assert!((ratio - 100.0).abs() < 1e-6, "ratio {ratio}");
        }
    }

    #[test]
    fn a_schedule_starts_running_and_never_repeats_a_kind() {
        let spells = first(11, 4, 500);
        assert_eq!(spells[0].kind, SpellKind::Running);
        for pair in spells.windows(2) {
            assert!(!pair[0].kind.same_kind(pair[1].kind), "{pair:?}");
        }
    }

    #[test]
    fn a_long_schedule_visits_every_state_and_every_alarm() {
        let spells = first(5, 0, 1000);
        for name in ["running", "idle", "down", "setup"] {
            assert!(spells.iter().any(|s| s.kind.state_name() == name), "{name}");
        }
        for (code, _) in ALARMS {
            assert!(
                spells
                    .iter()
                    .any(|s| s.kind == SpellKind::Down { alarm: *code }),
                "alarm {code}"
            );
        }
    }

    #[test]
    fn spell_durations_stay_in_their_ranges() {
        for s in first(9, 1, 1000) {
            let (min, max) = match s.kind {
                SpellKind::Running => RUNNING_S,
                SpellKind::Idle => IDLE_S,
                SpellKind::Down { .. } => DOWN_S,
                SpellKind::Setup => SETUP_S,
            };
            let d = s.duration.as_secs_f64();
            assert!(d >= min - 1e-9 && d <= max, "{s:?}");
        }
    }

    #[test]
    fn scrap_rate_is_roughly_the_profile_rate_and_repeats_for_a_seed() {
        let draw = |seed| {
            let mut q = PartQuality::new(seed, 0, 0.05);
            (0..10_000).map(|_| q.next_is_scrap()).collect::<Vec<_>>()
        };
        let a = draw(1);
        assert_eq!(a, draw(1));
        let scrap = a.iter().filter(|s| **s).count();
        assert!((300..=700).contains(&scrap), "{scrap} scrap in 10000");
    }

    #[test]
    fn an_order_plan_depends_on_the_order_and_repeats_for_it() {
        let a = OrderPlan::new(1, 0, 4711, 20, 1.0);
        assert_eq!(a, OrderPlan::new(1, 0, 4711, 20, 1.0));
        let plans: Vec<OrderPlan> = (0..50).map(|n| OrderPlan::new(1, 0, n, 20, 1.0)).collect();
        assert!(plans.iter().any(|p| p.stop.is_some()));
        assert!(plans.iter().any(|p| p.stop.is_none()));
        for p in &plans {
            if let Some(stop) = p.stop {
                assert!((1..20).contains(&stop.after_parts));
            }
        }
    }

    #[test]
    fn a_one_part_order_is_never_interrupted() {
        for n in 0..100 {
            assert_eq!(OrderPlan::new(2, 1, n, 1, 1.0).stop, None);
        }
    }
}
