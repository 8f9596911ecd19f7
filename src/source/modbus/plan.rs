//! Read planning: which Modbus requests read all signals of one machine.
//!
//! Owns the decision of how a machine's signals are coalesced into as few
//! read requests as possible: per area, sorted by address, joined while the
//! unused space between two signals is at most the bus's `max_gap` and the
//! request stays within the protocol limits (125 registers, 2000 bits) and the
//! bus's `max_registers_per_request` / `max_bits_per_request`. Pure: it never
//! opens a connection and never looks at values. A signal wider than the
//! bus's per-request limit (a long string) gets a request of its own.

use std::fmt;

use crate::config::{Area, BusConfig, MachineConfig};

/// The most registers one read may ask for (Modbus application protocol, 0x03/0x04).
pub const PROTOCOL_MAX_REGISTERS: u16 = 125;
/// The most bits one read may ask for (0x01/0x02).
pub const PROTOCOL_MAX_BITS: u16 = 2000;

/// One read request of a machine's poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub area: Area,
    /// First register (or bit), 0-based protocol address.
    pub address: u16,
    /// Registers (or bits) read.
    pub count: u16,
    /// Indexes into `machine.signal` of the signals this request reads.
    pub signals: Vec<usize>,
}

impl ReadRequest {
    /// Last address read (inclusive).
    pub fn last(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count.max(1)) - 1
    }
}

impl fmt::Display for ReadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.area.is_bits() { "bits" } else { "regs" };
        write!(
            f,
            "{} {}..={} ({} {unit}, {} signal{})",
            self.area,
            self.address,
            self.last(),
            self.count,
            self.signals.len(),
            if self.signals.len() == 1 { "" } else { "s" }
        )
    }
}

/// Registers (or bits) a request in `area` may read on `bus`.
fn limit(area: Area, bus: &BusConfig) -> u32 {
    let (configured, protocol) = if area.is_bits() {
        (bus.max_bits_per_request, PROTOCOL_MAX_BITS)
    } else {
        (bus.max_registers_per_request, PROTOCOL_MAX_REGISTERS)
    };
    u32::from(configured.clamp(1, protocol))
}

/// The requests that read every Modbus signal of `machine` on `bus`, ordered
/// by area then address. Signals without area or address (mqtt) are skipped.
pub fn plan_reads(machine: &MachineConfig, bus: &BusConfig) -> Vec<ReadRequest> {
    // (area, first address, end address exclusive, signal index)
    let mut spans: Vec<(Area, u32, u32, usize)> = machine
        .signal
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let (area, address) = (s.area?, s.address?);
            let width = if area.is_bits() {
                1
            } else {
                u32::from(s.data_type.registers(s.length).max(1))
            };
            let start = u32::from(address);
            Some((area, start, (start + width).min(65536), i))
        })
        .collect();
    spans.sort();

    // Open request: (area, start, end exclusive, signals).
    let mut plan = Vec::new();
    let mut open: Option<(Area, u32, u32, Vec<usize>)> = None;
    for (area, start, end, i) in spans {
        if let Some((o_area, o_start, o_end, signals)) = &mut open {
            let joins = *o_area == area
                && start <= *o_end + u32::from(bus.max_gap)
                && end.max(*o_end) - *o_start <= limit(area, bus);
            if joins {
                *o_end = end.max(*o_end);
                signals.push(i);
                continue;
            }
        }
        if let Some(done) = open.take() {
            plan.push(close(done));
        }
        open = Some((area, start, end, vec![i]));
    }
    if let Some(done) = open {
        plan.push(close(done));
    }
    plan
}

fn close((area, start, end, signals): (Area, u32, u32, Vec<usize>)) -> ReadRequest {
    // Addresses come from u16 and validated configs keep start + width <= 65536;
    // the clamps only keep a broken config from wrapping around.
    let address = u16::try_from(start).unwrap_or(u16::MAX);
    let count = u16::try_from(end.saturating_sub(start)).unwrap_or(u16::MAX);
    ReadRequest {
        area,
        address,
        count,
        signals,
    }
}

/// The plan of one machine as `check-config` prints it, one request a line:
/// `press07: holding 100..=121 (22 regs, 5 signals)`.
pub fn describe_plan(machine: &MachineConfig, plan: &[ReadRequest]) -> String {
    if plan.is_empty() {
        return format!("{}: no Modbus reads", machine.id);
    }
    plan.iter()
        .map(|r| format!("{}: {r}", machine.id))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DataType, Endian, SignalConfig, Transport};

    fn bus() -> BusConfig {
        BusConfig {
            id: "cell-a".into(),
            transport: Transport::Tcp,
            address: Some("127.0.0.1:502".into()),
            device: None,
            baud: 19200,
            parity: crate::config::Parity::Even,
            data_bits: 8,
            stop_bits: 1,
            timeout_ms: 500,
            delay_ms: 0,
            max_registers_per_request: 125,
            max_bits_per_request: 2000,
            max_gap: 10,
            backoff_min_ms: 1000,
            backoff_max_ms: 60_000,
            backoff_after_ms: 60_000,
            client_id: None,
            stale_ms: 10_000,
            max_payload_bytes: 1024 * 1024,
            retained: Default::default(),
            timestamp_pointer: None,
        }
    }

    fn signal(name: &str, area: Area, address: u16, data_type: DataType) -> SignalConfig {
        SignalConfig {
            name: name.into(),
            area: Some(area),
            address: Some(address),
            data_type,
            word_order: Endian::Big,
            byte_order: Endian::Big,
            scale: 1.0,
            offset: 0.0,
            bit: None,
            length: None,
            topic: None,
            pointer: None,
            deadband: 0.0,
        }
    }

    fn machine(signal: Vec<SignalConfig>) -> MachineConfig {
        MachineConfig {
            id: "press07".into(),
            bus: "cell-a".into(),
            unit: 1,
            poll_ms: 1000,
            signal,
            state: None,
            counters: None,
            orders: None,
        }
    }

    #[test]
    fn neighbouring_registers_become_one_request() {
        let m = machine(vec![
            signal("a", Area::Holding, 100, DataType::U32),
            signal("b", Area::Holding, 102, DataType::U16),
            signal("c", Area::Holding, 103, DataType::F64),
        ]);
        let plan = plan_reads(&m, &bus());
        assert_eq!(
            plan,
            vec![ReadRequest {
                area: Area::Holding,
                address: 100,
                count: 7,
                signals: vec![0, 1, 2]
            }]
        );
    }

    #[test]
    fn a_gap_up_to_max_gap_is_bridged_and_a_wider_one_splits() {
        let mut b = bus();
        b.max_gap = 5;
        let m = machine(vec![
            signal("a", Area::Holding, 0, DataType::U16),
            signal("b", Area::Holding, 6, DataType::U16), // gap of 5: joined
            signal("c", Area::Holding, 13, DataType::U16), // gap of 6: new request
        ]);
        let plan = plan_reads(&m, &b);
        assert_eq!(plan.len(), 2);
        assert_eq!((plan[0].address, plan[0].count), (0, 7));
        assert_eq!((plan[1].address, plan[1].count), (13, 1));
    }

    #[test]
    fn areas_are_never_mixed() {
        let m = machine(vec![
            signal("a", Area::Holding, 0, DataType::U16),
            signal("b", Area::Input, 1, DataType::U16),
            signal("c", Area::Coil, 2, DataType::Bool),
            signal("d", Area::Discrete, 3, DataType::Bool),
        ]);
        let areas: Vec<Area> = plan_reads(&m, &bus()).iter().map(|r| r.area).collect();
        assert_eq!(
            areas,
            vec![Area::Coil, Area::Discrete, Area::Holding, Area::Input]
        );
    }

    #[test]
    fn requests_stay_within_the_bus_register_limit() {
        let mut b = bus();
        b.max_registers_per_request = 10;
        b.max_gap = 0;
        // 30 consecutive u16 registers: three requests of 10.
        let signals = (0..30)
            .map(|i| signal(&format!("s{i}"), Area::Holding, i, DataType::U16))
            .collect();
        let plan = plan_reads(&machine(signals), &b);
        assert_eq!(plan.len(), 3);
        assert!(plan.iter().all(|r| r.count == 10 && r.signals.len() == 10));
    }

    #[test]
    fn requests_stay_within_the_protocol_register_limit() {
        let b = bus();
        // 200 consecutive u16: 125 + 75.
        let signals = (0..200)
            .map(|i| signal(&format!("s{i}"), Area::Input, i, DataType::U16))
            .collect();
        let plan = plan_reads(&machine(signals), &b);
        let counts: Vec<u16> = plan.iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![125, 75]);
    }

    #[test]
    fn a_multi_register_value_is_never_split_across_requests() {
        let mut b = bus();
        b.max_registers_per_request = 5;
        let m = machine(vec![
            signal("a", Area::Holding, 0, DataType::U32),
            signal("b", Area::Holding, 2, DataType::F64), // would end at 6 > 5
        ]);
        let plan = plan_reads(&m, &b);
        assert_eq!(plan.len(), 2);
        assert_eq!((plan[1].address, plan[1].count), (2, 4));
    }

    #[test]
    fn bits_are_coalesced_up_to_the_bit_limit() {
        let mut b = bus();
        b.max_bits_per_request = 2000;
        b.max_gap = 100;
        let signals = (0..50)
            .map(|i| signal(&format!("c{i}"), Area::Coil, i * 50, DataType::Bool))
            .collect();
        // Coils at 0, 50, ..., 2450: the first request takes 0..=1950 (1951 bits).
        let plan = plan_reads(&machine(signals), &b);
        assert_eq!(plan.len(), 2);
        assert_eq!((plan[0].address, plan[0].count), (0, 1951));
        assert_eq!((plan[1].address, plan[1].count), (2000, 451));
        assert!(plan.iter().all(|r| r.count <= 2000));
    }

    #[test]
    fn bits_of_one_register_share_the_register() {
        let mut a = signal("a", Area::Holding, 5, DataType::Bool);
        a.bit = Some(0);
        let mut c = signal("c", Area::Holding, 5, DataType::Bool);
        c.bit = Some(7);
        let plan = plan_reads(&machine(vec![a, c]), &bus());
        assert_eq!(plan.len(), 1);
        assert_eq!((plan[0].address, plan[0].count), (5, 1));
        assert_eq!(plan[0].signals, vec![0, 1]);
    }

    #[test]
    fn signals_without_a_modbus_address_are_skipped() {
        let mut s = signal("rpm", Area::Holding, 0, DataType::U16);
        s.area = None;
        s.address = None;
        assert!(plan_reads(&machine(vec![s]), &bus()).is_empty());
    }

    #[test]
    fn the_plan_reads_like_the_register_map() {
        let mut st = signal("name", Area::Holding, 110, DataType::String);
        st.length = Some(12);
        let m = machine(vec![
            signal("count", Area::Holding, 100, DataType::U32),
            signal("speed", Area::Holding, 102, DataType::F32),
            st,
            signal("run", Area::Coil, 0, DataType::Bool),
        ]);
        let text = describe_plan(&m, &plan_reads(&m, &bus()));
        assert_eq!(
            text,
            "press07: coil 0..=0 (1 bits, 1 signal)\npress07: holding 100..=121 (22 regs, 3 signals)"
        );
    }
}
