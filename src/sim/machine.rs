//! One simulated machine as a pure state machine: its registers (the map in
//! [`map`], documented in the `sim` module), how it moves through its
//! seeded schedule as time passes, how it runs an order written to its order
//! registers, and how it answers Modbus requests.
//!
//! Time is passed in (`advance_to`, measured from the machine's start), so
//! everything here runs without a clock or a runtime and is tested that way.
//! It never touches a socket or a file: the server task moves requests in and
//! state changes out.

use std::time::Duration;

use tokio_modbus::{ExceptionCode, Request, Response};

use super::schedule::{
    scaled, MachineProfile, OrderPlan, PartQuality, Schedule, SpellKind, ALARMS, PRODUCTS,
};

/// The register map of every simulated machine (0-based protocol addresses).
/// Each area is served in blocks; an address inside a block that no signal
/// uses is reserved and reads as 0; an address outside every block is an
/// `IllegalDataAddress` exception. Only the order registers can be written.
pub mod map {
    use std::ops::RangeInclusive;

    /// coil: true while a cycle runs.
    pub const CYCLE_ACTIVE: u16 = 0;
    /// coil (writable): start the loaded order; the machine clears it when done.
    pub const START: u16 = 10;
    pub const COIL_BLOCK: RangeInclusive<u16> = 0..=15;

    /// discrete input: false while the guard door is open (alarm 17, setup).
    pub const DOOR_CLOSED: u16 = 0;
    pub const DISCRETE_BLOCK: RangeInclusive<u16> = 0..=7;

    /// holding: 1 automatic, 2 setup.
    pub const MODE: u16 = 0;
    /// holding: 0, or the code of the active alarm.
    pub const ALARM_CODE: u16 = 1;
    /// holding, u32 (word and byte order big): every part made.
    pub const PART_COUNT: u16 = 2;
    /// holding, u32: good parts.
    pub const GOOD_COUNT: u16 = 4;
    /// holding, u32: scrap parts.
    pub const SCRAP_COUNT: u16 = 6;
    /// holding, string of 8 registers (16 ASCII characters, padded with NUL).
    pub const PRODUCT_NAME: u16 = 10;
    pub const PRODUCT_NAME_LEN: u16 = 8;
    pub const STATUS_BLOCK: RangeInclusive<u16> = 0..=19;

    /// holding, u32 (writable): order number.
    pub const ORDER_NUMBER: u16 = 200;
    /// holding, u16 (writable): product code (see `PRODUCTS`).
    pub const PRODUCT_CODE: u16 = 202;
    /// holding, u16 (writable): parts to make.
    pub const QUANTITY: u16 = 203;
    pub const ORDER_BLOCK: RangeInclusive<u16> = 200..=203;

    /// input: spindle speed, rpm (0 unless running).
    pub const SPINDLE_RPM: u16 = 0;
    /// input, f32 (word and byte order big): temperature, °C.
    pub const TEMPERATURE: u16 = 1;
    pub const INPUT_BLOCK: RangeInclusive<u16> = 0..=9;

    /// Mode register values.
    pub const MODE_AUTO: u16 = 1;
    pub const MODE_SETUP: u16 = 2;
}

/// A state change of the simulated machine: its ground truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthChange {
    /// Since the machine started.
    pub at: Duration,
    /// The contract's name: running, idle, down or setup.
    pub state: &'static str,
    /// `alarm N` while down.
    pub reason: Option<String>,
}

/// What the machine does now and until when (`None`: until an order arrives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Phase {
    kind: SpellKind,
    until: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrderStage {
    Setup,
    Running,
    Stopped,
}

/// An order the machine is working on; its values are latched at start, so
/// later writes to the order registers do not change the running order.
#[derive(Debug, Clone, Copy)]
struct OrderRun {
    quantity: u16,
    made: u32,
    plan: OrderPlan,
    stage: OrderStage,
}

/// How a machine is built: its place on the line and the line's options.
#[derive(Debug, Clone, Copy)]
pub struct MachineSetup {
    pub index: usize,
    pub seed: u64,
    pub speed: f64,
    pub honour_orders: bool,
}

/// One simulated machine.
#[derive(Debug, Clone)]
pub struct MachineModel {
    setup: MachineSetup,
    profile: MachineProfile,
    /// The machine's own spells, followed while it has never had an order.
    schedule: Schedule,
    quality: PartQuality,
    /// Real time per part at this speed.
    cycle: Duration,
    /// Time constant of the temperature's approach to its target.
    warmup: Duration,
    now: Duration,
    phase: Phase,
    /// When the cycle in progress completes (only while running).
    next_cycle: Option<Duration>,
    parts: u32,
    good: u32,
    scrap: u32,
    temperature: f32,
    /// Product code shown in the product name register.
    product_code: u16,
    /// Holding 200..=203 as written.
    order_regs: [u16; 4],
    start: bool,
    order: Option<OrderRun>,
    /// Start was set while down: the order begins when the alarm clears.
    start_pending: bool,
    /// The last state and reason reported, to report changes only.
    shown: Option<(&'static str, Option<String>)>,
    changes: Vec<TruthChange>,
}

impl MachineModel {
    /// A machine at time 0, at the start of its first spell.
    pub fn new(setup: MachineSetup) -> MachineModel {
        let profile = MachineProfile::for_machine(setup.index);
        let mut schedule = Schedule::new(setup.seed, setup.index, setup.speed);
        let first = schedule.next_spell();
        let mut model = MachineModel {
            setup,
            profile,
            schedule,
            quality: PartQuality::new(setup.seed, setup.index, profile.scrap_rate),
            cycle: scaled(profile.cycle_s, setup.speed),
            warmup: scaled(90.0, setup.speed),
            now: Duration::ZERO,
            phase: Phase {
                kind: SpellKind::Idle,
                until: None,
            },
            next_cycle: None,
            parts: 0,
            good: 0,
            scrap: 0,
            temperature: profile.ambient_c,
            product_code: PRODUCTS[profile.product % PRODUCTS.len()].1,
            order_regs: [0; 4],
            start: false,
            order: None,
            start_pending: false,
            shown: None,
            changes: Vec::new(),
        };
        model.set_phase(first.kind, Some(first.duration));
        model
    }

    /// The contract name of the state the machine shows now.
    pub fn state(&self) -> &'static str {
        self.phase.kind.state_name()
    }

    /// Parts made so far (the part counter).
    pub fn part_count(&self) -> u32 {
        self.parts
    }

    /// Is the start coil set?
    pub fn start(&self) -> bool {
        self.start
    }

    /// Time of the next thing that happens on its own (a cycle completing, a
    /// spell ending); `None` while the machine waits for an order.
    pub fn next_event(&self) -> Option<Duration> {
        match (self.phase.until, self.next_cycle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Let time pass up to `t` (since the machine's start). Earlier times are ignored.
    pub fn advance_to(&mut self, t: Duration) {
        while let Some(event) = self.next_event() {
            if event > t {
                break;
            }
            self.warm_to(event);
            if self.next_cycle == Some(event) {
                self.complete_cycle();
            } else {
                self.end_phase();
            }
        }
        self.warm_to(t);
    }

    /// Are there state changes not yet taken?
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// State changes since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<TruthChange> {
        std::mem::take(&mut self.changes)
    }

    /// Answer one Modbus request at the current time.
    pub fn handle(&mut self, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        match request {
            Request::ReadCoils(addr, n) => {
                let bits = self.read(&self.coils(), &map::COIL_BLOCK, *addr, *n, 2000)?;
                Ok(Response::ReadCoils(bits))
            }
            Request::ReadDiscreteInputs(addr, n) => {
                let bits = self.read(&self.discretes(), &map::DISCRETE_BLOCK, *addr, *n, 2000)?;
                Ok(Response::ReadDiscreteInputs(bits))
            }
            Request::ReadHoldingRegisters(addr, n) => {
                let words = self
                    .read(&self.status_registers(), &map::STATUS_BLOCK, *addr, *n, 125)
                    .or_else(|_| self.read(&self.order_regs, &map::ORDER_BLOCK, *addr, *n, 125))?;
                Ok(Response::ReadHoldingRegisters(words))
            }
            Request::ReadInputRegisters(addr, n) => {
                let words = self.read(&self.inputs(), &map::INPUT_BLOCK, *addr, *n, 125)?;
                Ok(Response::ReadInputRegisters(words))
            }
            Request::WriteSingleCoil(addr, value) => {
                self.write_coils(*addr, &[*value])?;
                Ok(Response::WriteSingleCoil(*addr, *value))
            }
            Request::WriteMultipleCoils(addr, values) => {
                self.write_coils(*addr, values)?;
                Ok(Response::WriteMultipleCoils(*addr, values.len() as u16))
            }
            Request::WriteSingleRegister(addr, word) => {
                self.write_registers(*addr, &[*word])?;
                Ok(Response::WriteSingleRegister(*addr, *word))
            }
            Request::WriteMultipleRegisters(addr, words) => {
                self.write_registers(*addr, words)?;
                Ok(Response::WriteMultipleRegisters(*addr, words.len() as u16))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    fn read<T: Copy>(
        &self,
        image: &[T],
        block: &std::ops::RangeInclusive<u16>,
        addr: u16,
        count: u16,
        max: u16,
    ) -> Result<Vec<T>, ExceptionCode> {
        if count == 0 || count > max {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let end = u32::from(addr) + u32::from(count) - 1;
        if addr < *block.start() || end > u32::from(*block.end()) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let from = usize::from(addr - block.start());
        image
            .get(from..from + usize::from(count))
            .map(<[T]>::to_vec)
            .ok_or(ExceptionCode::IllegalDataAddress)
    }

    fn coils(&self) -> Vec<bool> {
        let mut bits = vec![false; map::COIL_BLOCK.len()];
        bits[usize::from(map::CYCLE_ACTIVE)] = self.phase.kind == SpellKind::Running;
        bits[usize::from(map::START)] = self.start;
        bits
    }

    fn discretes(&self) -> Vec<bool> {
        let mut bits = vec![false; map::DISCRETE_BLOCK.len()];
        let door_open = matches!(
            self.phase.kind,
            SpellKind::Setup | SpellKind::Down { alarm: 17 }
        );
        bits[usize::from(map::DOOR_CLOSED)] = !door_open;
        bits
    }

    fn status_registers(&self) -> Vec<u16> {
        let mut words = vec![0u16; map::STATUS_BLOCK.len()];
        words[usize::from(map::MODE)] = if self.phase.kind == SpellKind::Setup {
            map::MODE_SETUP
        } else {
            map::MODE_AUTO
        };
        words[usize::from(map::ALARM_CODE)] = match self.phase.kind {
            SpellKind::Down { alarm } => alarm,
            _ => 0,
        };
        for (at, value) in [
            (map::PART_COUNT, self.parts),
            (map::GOOD_COUNT, self.good),
            (map::SCRAP_COUNT, self.scrap),
        ] {
            let at = usize::from(at);
            words[at] = (value >> 16) as u16;
            words[at + 1] = value as u16;
        }
        let name = product_name(self.product_code);
        let bytes = name.as_bytes();
        for i in 0..usize::from(map::PRODUCT_NAME_LEN) {
            let hi = bytes.get(2 * i).copied().unwrap_or(0);
            let lo = bytes.get(2 * i + 1).copied().unwrap_or(0);
            words[usize::from(map::PRODUCT_NAME) + i] = u16::from_be_bytes([hi, lo]);
        }
        words
    }

    fn inputs(&self) -> Vec<u16> {
        let mut words = vec![0u16; map::INPUT_BLOCK.len()];
        words[usize::from(map::SPINDLE_RPM)] = if self.phase.kind == SpellKind::Running {
            // A little wobble, so telemetry has something to show.
            self.profile.rpm + (self.parts % 7) as u16 * 3
        } else {
            0
        };
        let t = self.temperature.to_bits();
        words[usize::from(map::TEMPERATURE)] = (t >> 16) as u16;
        words[usize::from(map::TEMPERATURE) + 1] = t as u16;
        words
    }

    fn write_coils(&mut self, addr: u16, values: &[bool]) -> Result<(), ExceptionCode> {
        match values {
            [] => Err(ExceptionCode::IllegalDataValue),
            [value] if addr == map::START => {
                self.write_start(*value);
                Ok(())
            }
            _ => Err(ExceptionCode::IllegalDataAddress),
        }
    }

    fn write_registers(&mut self, addr: u16, words: &[u16]) -> Result<(), ExceptionCode> {
        if words.is_empty() || words.len() > 123 {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let end = u32::from(addr) + words.len() as u32 - 1;
        if addr < *map::ORDER_BLOCK.start() || end > u32::from(*map::ORDER_BLOCK.end()) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let from = usize::from(addr - map::ORDER_BLOCK.start());
        self.order_regs[from..from + words.len()].copy_from_slice(words);
        Ok(())
    }

    fn order_number(&self) -> u32 {
        (u32::from(self.order_regs[0]) << 16) | u32::from(self.order_regs[1])
    }

    /// The start coil: a rising edge starts the loaded order, a falling edge
    /// while an order runs aborts it.
    fn write_start(&mut self, value: bool) {
        if !self.setup.honour_orders {
            self.start = value;
            return;
        }
        match (self.start, value) {
            (false, true) => {
                let quantity = self.order_regs[3];
                if quantity == 0 {
                    // Nothing to make: the machine refuses by clearing start.
                    return;
                }
                self.start = true;
                if matches!(self.phase.kind, SpellKind::Down { .. }) {
                    self.start_pending = true;
                } else {
                    self.begin_order();
                }
            }
            (true, false) => {
                self.start = false;
                self.start_pending = false;
                if self.order.take().is_some() {
                    self.set_phase(SpellKind::Idle, None);
                }
            }
            _ => {}
        }
    }

    fn begin_order(&mut self) {
        let quantity = self.order_regs[3];
        let plan = OrderPlan::new(
            self.setup.seed,
            self.setup.index,
            self.order_number(),
            quantity,
            self.setup.speed,
        );
        self.product_code = self.order_regs[2];
        self.order = Some(OrderRun {
            quantity,
            made: 0,
            plan,
            stage: OrderStage::Setup,
        });
        self.set_phase(SpellKind::Setup, Some(self.now + plan.setup));
    }

    fn complete_cycle(&mut self) {
        self.parts = self.parts.wrapping_add(1);
        if self.quality.next_is_scrap() {
            self.scrap = self.scrap.wrapping_add(1);
        } else {
            self.good = self.good.wrapping_add(1);
        }
        self.next_cycle = Some(self.now + self.cycle);
        let Some(run) = self.order.as_mut() else {
            return;
        };
        run.made += 1;
        if run.made >= u32::from(run.quantity) {
            self.order = None;
            self.start = false;
            self.set_phase(SpellKind::Idle, None);
        } else if let Some(stop) = run.plan.stop.filter(|s| s.after_parts == run.made) {
            run.stage = OrderStage::Stopped;
            let until = self.now + stop.duration;
            self.set_phase(SpellKind::Down { alarm: stop.alarm }, Some(until));
        }
    }

    fn end_phase(&mut self) {
        if let Some(run) = self.order.as_mut() {
            // After the setup or the stop of an order: run until the quantity is made.
            run.stage = OrderStage::Running;
            self.set_phase(SpellKind::Running, None);
        } else if self.start_pending {
            self.start_pending = false;
            self.begin_order();
        } else {
            let spell = self.schedule.next_spell();
            self.set_phase(spell.kind, Some(self.now + spell.duration));
        }
    }

    fn set_phase(&mut self, kind: SpellKind, until: Option<Duration>) {
        let was_running = self.phase.kind == SpellKind::Running;
        self.phase = Phase { kind, until };
        self.next_cycle = match kind {
            SpellKind::Running if was_running => self.next_cycle,
            SpellKind::Running => Some(self.now + self.cycle),
            _ => None,
        };
        let reason = match kind {
            SpellKind::Down { alarm } => Some(format!("alarm {alarm}")),
            _ => None,
        };
        let shown = (kind.state_name(), reason);
        if self.shown.as_ref() != Some(&shown) {
            self.changes.push(TruthChange {
                at: self.now,
                state: shown.0,
                reason: shown.1.clone(),
            });
            self.shown = Some(shown);
        }
    }

    /// Move the temperature towards what the current phase heats it to.
    fn warm_to(&mut self, t: Duration) {
        if t <= self.now {
            return;
        }
        let dt = (t - self.now).as_secs_f64();
        self.now = t;
        let target = self.profile.ambient_c
            + match self.phase.kind {
                SpellKind::Running => 18.0,
                SpellKind::Down { alarm: 23 } => 26.0,
                _ => 0.0,
            };
        let tau = self.warmup.as_secs_f64().max(1e-3);
        let k = (-dt / tau).exp() as f32;
        self.temperature = target + (self.temperature - target) * k;
    }
}

/// The name shown for a product code; unknown codes show as `CODE n`.
pub fn product_name(code: u16) -> String {
    PRODUCTS
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(name, _)| (*name).to_string())
        .unwrap_or_else(|| format!("CODE {code}"))
}

/// The text of an alarm code, if the simulator knows it.
pub fn alarm_text(code: u16) -> Option<&'static str> {
    ALARMS.iter().find(|(c, _)| *c == code).map(|(_, t)| *t)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn machine(honour_orders: bool) -> MachineModel {
        MachineModel::new(MachineSetup {
            index: 0,
            seed: 42,
            speed: 1.0,
            honour_orders,
        })
    }

    fn holding(m: &mut MachineModel, addr: u16, n: u16) -> Vec<u16> {
        match m.handle(&Request::ReadHoldingRegisters(addr, n)) {
            Ok(Response::ReadHoldingRegisters(w)) => w,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn u32_at(words: &[u16], at: usize) -> u32 {
        (u32::from(words[at]) << 16) | u32::from(words[at + 1])
    }

    /// Advance in small steps until `until` holds or `limit` passes.
    fn run_until(m: &mut MachineModel, limit: Duration, until: impl Fn(&MachineModel) -> bool) {
        let step = Duration::from_millis(500);
        let mut t = m.now;
        while !until(m) {
            assert!(t < limit, "condition not reached by {limit:?}");
            t += step;
            m.advance_to(t);
        }
    }

    fn load_order(m: &mut MachineModel, number: u32, product: u16, quantity: u16) {
        let words = [(number >> 16) as u16, number as u16, product, quantity];
        m.handle(&Request::WriteMultipleRegisters(
            200,
            Cow::Owned(words.to_vec()),
        ))
        .expect("order registers are writable");
        m.handle(&Request::WriteSingleCoil(map::START, true))
            .expect("start is writable");
    }

    #[test]
    fn a_running_machine_makes_one_part_per_cycle_time() {
        let mut m = machine(true);
        assert_eq!(m.state(), "running");
        let cycle = m.cycle;
        m.advance_to(cycle * 10 + cycle / 2);
        assert_eq!(m.part_count(), 10);
        let w = holding(&mut m, 0, 8);
        assert_eq!(u32_at(&w, 2), 10);
        assert_eq!(u32_at(&w, 4) + u32_at(&w, 6), 10, "good + scrap = parts");
    }

    #[test]
    fn registers_follow_the_state_and_every_change_is_reported_once() {
        let mut m = machine(true);
        let mut changes = m.take_changes();
        let mut t = Duration::ZERO;
        while changes.len() < 30 {
            t += Duration::from_secs(1);
            m.advance_to(t);
            let words = holding(&mut m, 0, 2);
            let coils = match m.handle(&Request::ReadCoils(0, 1)) {
                Ok(Response::ReadCoils(c)) => c,
                other => panic!("{other:?}"),
            };
            match m.state() {
                "running" => assert!(coils[0] && words == [1, 0]),
                "down" => assert!(!coils[0] && words[0] == 1 && words[1] != 0),
                "setup" => assert!(!coils[0] && words == [2, 0]),
                "idle" => assert!(!coils[0] && words == [1, 0]),
                other => panic!("state {other}"),
            }
            changes.extend(m.take_changes());
        }
        for pair in changes.windows(2) {
            assert!(pair[0].at <= pair[1].at);
            assert_ne!(
                (pair[0].state, &pair[0].reason),
                (pair[1].state, &pair[1].reason)
            );
        }
        assert_eq!(changes[0].at, Duration::ZERO);
        assert_eq!(changes[0].state, "running");
    }

    #[test]
    fn an_order_runs_to_its_quantity_then_the_machine_idles_and_clears_start() {
        let mut m = machine(true);
        m.advance_to(Duration::from_secs(3));
        m.take_changes();
        let before = m.part_count();
        load_order(&mut m, 70_001, 12, 7);
        assert!(m.start() || m.start_pending);
        run_until(&mut m, Duration::from_secs(3600), |m| !m.start());
        assert_eq!(m.part_count() - before, 7);
        assert_eq!(m.state(), "idle");
        let coils = match m.handle(&Request::ReadCoils(0, 16)) {
            Ok(Response::ReadCoils(c)) => c,
            other => panic!("{other:?}"),
        };
        assert!(!coils[10], "start is cleared");
        let states: Vec<&str> = m.take_changes().iter().map(|c| c.state).collect();
        assert!(
            states.contains(&"setup") && states.contains(&"running"),
            "{states:?}"
        );
        assert_eq!(states.last(), Some(&"idle"));
        // Waits for the next order: no more parts, no more changes.
        m.advance_to(m.now + Duration::from_secs(10_000));
        assert_eq!(m.part_count() - before, 7);
        assert!(m.take_changes().is_empty());
        assert_eq!(m.next_event(), None);
    }

    #[test]
    fn the_product_name_register_shows_the_order_product() {
        let mut m = machine(true);
        load_order(&mut m, 1, 13, 2);
        let w = holding(&mut m, 10, 8);
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_be_bytes()).collect();
        assert_eq!(
            String::from_utf8_lossy(&bytes).trim_end_matches('\0'),
            "P-4713"
        );
    }

    #[test]
    fn clearing_start_aborts_the_running_order() {
        let mut m = machine(true);
        load_order(&mut m, 5, 11, 1000);
        run_until(&mut m, Duration::from_secs(3600), |m| m.part_count() >= 3);
        m.handle(&Request::WriteSingleCoil(map::START, false))
            .expect("start is writable");
        let parts = m.part_count();
        assert_eq!(m.state(), "idle");
        m.advance_to(m.now + Duration::from_secs(1000));
        assert_eq!(m.part_count(), parts);
    }

    #[test]
    fn start_without_a_quantity_is_refused() {
        let mut m = machine(true);
        m.handle(&Request::WriteSingleCoil(map::START, true))
            .expect("start is writable");
        assert!(!m.start());
        assert_eq!(m.state(), "running");
    }

    #[test]
    fn a_machine_that_ignores_orders_keeps_its_schedule() {
        let mut a = machine(false);
        let mut b = machine(false);
        load_order(&mut a, 9, 11, 3);
        assert!(a.start());
        let t = Duration::from_secs(5000);
        a.advance_to(t);
        b.advance_to(t);
        assert_eq!(a.take_changes(), b.take_changes());
        assert_eq!(a.part_count(), b.part_count());
        assert!(a.start(), "start stays as written");
    }

    #[test]
    fn writes_outside_the_order_registers_are_illegal_addresses() {
        let mut m = machine(true);
        for request in [
            Request::WriteSingleRegister(0, 1),
            Request::WriteSingleRegister(199, 1),
            Request::WriteSingleRegister(204, 1),
            Request::WriteMultipleRegisters(202, Cow::Owned(vec![1, 2, 3])),
            Request::WriteSingleCoil(0, true),
            Request::WriteSingleCoil(11, true),
            Request::WriteMultipleCoils(9, Cow::Owned(vec![true, true])),
        ] {
            assert_eq!(
                m.handle(&request),
                Err(ExceptionCode::IllegalDataAddress),
                "{request:?}"
            );
        }
        assert_eq!(
            m.handle(&Request::MaskWriteRegister(200, 0, 1)),
            Err(ExceptionCode::IllegalFunction)
        );
        assert_eq!(holding(&mut m, 200, 4), [0, 0, 0, 0], "nothing was written");
    }

    #[test]
    fn reads_outside_the_map_are_illegal_addresses() {
        let mut m = machine(true);
        for request in [
            Request::ReadHoldingRegisters(19, 2),
            Request::ReadHoldingRegisters(100, 1),
            Request::ReadHoldingRegisters(199, 2),
            Request::ReadHoldingRegisters(203, 2),
            Request::ReadInputRegisters(10, 1),
            Request::ReadCoils(15, 2),
            Request::ReadDiscreteInputs(8, 1),
        ] {
            assert_eq!(
                m.handle(&request),
                Err(ExceptionCode::IllegalDataAddress),
                "{request:?}"
            );
        }
        assert_eq!(
            m.handle(&Request::ReadHoldingRegisters(0, 0)),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert!(m.handle(&Request::ReadHoldingRegisters(0, 20)).is_ok());
        assert!(m.handle(&Request::ReadHoldingRegisters(200, 4)).is_ok());
    }

    #[test]
    fn temperature_is_a_finite_big_endian_float_that_warms_while_running() {
        let mut m = machine(true);
        let read = |m: &mut MachineModel| match m.handle(&Request::ReadInputRegisters(1, 2)) {
            Ok(Response::ReadInputRegisters(w)) => {
                f32::from_bits((u32::from(w[0]) << 16) | u32::from(w[1]))
            }
            other => panic!("{other:?}"),
        };
        let cold = read(&mut m);
        m.advance_to(Duration::from_secs(60));
        assert_eq!(m.state(), "running", "first spell lasts at least 120 s");
        let warm = read(&mut m);
        assert!(cold.is_finite() && warm.is_finite());
        assert!(warm > cold, "{cold} -> {warm}");
    }
}
