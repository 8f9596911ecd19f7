//! Cross-checks of a parsed config: everything serde cannot see on its own.
//! Collects *every* problem before reporting, so a technician fixes the file
//! in one go. Pure: no I/O.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use super::{
    Area, BusConfig, Config, ConsoleConfig, DataType, MachineConfig, OrderRegister, RetainedPolicy,
    Transport, UplinkConfig,
};

/// One problem in a config, with the key path it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path, e.g. `machine[2].signal[0].type`.
    pub key: String,
    pub message: String,
    /// Where the key is written (filled in by loading, from the file's text).
    pub place: Place,
}

/// Where a config problem is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Place {
    /// Not known (the key is not in the file, nor any key above it).
    #[default]
    Unknown,
    /// Line and column in the file, both from 1.
    File { line: usize, column: usize },
    /// Set by this environment override.
    Env { variable: String },
}

impl ConfigIssue {
    /// The issue as one line of a report about `file`:
    /// ``linegate.toml:12:1: `machine[0].signal[0].typ`: ...``.
    pub fn in_file(&self, file: &std::path::Path) -> String {
        self.labelled_in_file(file, "")
    }

    /// [`ConfigIssue::in_file`] with a label after the place (`"warning: "`).
    pub fn labelled_in_file(&self, file: &std::path::Path, label: &str) -> String {
        match &self.place {
            Place::File { line, column } => {
                format!("{}:{line}:{column}: {label}{self}", file.display())
            }
            Place::Env { variable } => format!("{variable} (environment): {label}{self}"),
            Place::Unknown => format!("{}: {label}{self}", file.display()),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
            place: Place::Unknown,
        });
    }
}

/// Longest ideal cycle time accepted, from the config or an order: one part
/// a day. Beyond it a typo (or 1e308) would make every KPI meaningless.
pub const MAX_IDEAL_CYCLE_S: f64 = 86_400.0;

/// The values a register of `data_type` can take when an order writes it
/// (`None`: strings are never written).
pub fn writable_range(data_type: DataType) -> Option<(f64, f64)> {
    Some(match data_type {
        DataType::Bool => (0.0, 1.0),
        DataType::U16 => (0.0, 65535.0),
        DataType::I16 => (-32768.0, 32767.0),
        DataType::U32 => (0.0, 4294967295.0),
        DataType::I32 => (-2147483648.0, 2147483647.0),
        DataType::U64 => (0.0, u64::MAX as f64),
        DataType::I64 => (i64::MIN as f64, i64::MAX as f64),
        DataType::F32 => (f32::MIN as f64, f32::MAX as f64),
        DataType::F64 => (f64::MIN, f64::MAX),
        DataType::String => return None,
    })
}

/// What an order register can hold: a coil one bit, a holding register its type's range.
fn register_range(r: &OrderRegister) -> Option<(f64, f64)> {
    if r.area == Area::Coil {
        return Some((0.0, 1.0));
    }
    writable_range(r.data_type)
}

/// Settings that work but deserve a word at start (`check-config` prints
/// them, `run` logs them). Empty for most configs.
pub fn uplink_warnings(u: &UplinkConfig) -> Vec<ConfigIssue> {
    let mut issues = Issues(Vec::new());
    let password = u.password_file.is_some() || u.password_env.is_some();
    if password && u.url.starts_with("mqtt://") {
        issues.push(
            "uplink.url",
            format!(
                "{:?} is plaintext: the password crosses the network in clear; use mqtts://",
                u.url
            ),
        );
    }
    issues.0
}

/// Addresses that look copied from a manual's 1-based numbering: holding
/// 40001..=49999 and input 30001..=39999 ("40001" is holding address 0).
/// They may be real (a large device), so they are warnings, not errors.
pub fn address_warnings(config: &Config) -> Vec<ConfigIssue> {
    let mut issues = Issues(Vec::new());
    for (i, m) in config.machine.iter().enumerate() {
        let signals = m.signal.iter().enumerate().filter_map(|(j, s)| {
            Some((
                format!("machine[{i}].signal[{j}].address"),
                s.area?,
                s.address?,
            ))
        });
        let orders = m.orders.iter().flat_map(|o| {
            [
                ("order_number".to_string(), &o.order_number),
                ("product_code".to_string(), &o.product_code),
                ("quantity".to_string(), &o.quantity),
                ("start".to_string(), &o.start),
            ]
            .into_iter()
            .chain(o.params.iter().map(|(k, r)| (format!("params.{k}"), r)))
            .map(move |(name, r)| {
                (
                    format!("machine[{i}].orders.{name}.address"),
                    r.area,
                    r.address,
                )
            })
        });
        for (key, area, address) in signals.chain(orders) {
            let prefix = match (area, address) {
                (Area::Holding, 40001..=49999) => 40001,
                (Area::Input, 30001..=39999) => 30001,
                _ => continue,
            };
            issues.push(
                key,
                format!(
                    "{area} {address} looks like a 1-based number from a manual ({prefix} is {area} address 0): \
                     linegate uses 0-based protocol addresses, so that would be address = {}; \
                     if the device really has {area} register {address}, leave it",
                    address - prefix
                ),
            );
        }
    }
    issues.0
}

/// The console's listen address: `None` when it is off (`listen = ""`).
pub fn console_addr(c: &ConsoleConfig) -> Result<Option<std::net::SocketAddr>, String> {
    if c.listen.is_empty() {
        return Ok(None);
    }
    c.listen.parse().map(Some).map_err(|_| {
        format!(
            "{:?} is not IP:port, e.g. \"127.0.0.1:9780\" or \"0.0.0.0:9780\" (\"\" turns the console off)",
            c.listen
        )
    })
}

fn check_console(issues: &mut Issues, c: &ConsoleConfig) {
    let addr = match console_addr(c) {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(e) => return issues.push("console.listen", e),
    };
    if !addr.ip().is_loopback() && c.password_file.is_none() {
        issues.push(
            "console.password_file",
            format!(
                "is required when console.listen {:?} is not a loopback address (anyone on the plant network could look)",
                c.listen
            ),
        );
    }
    if c.tls_cert_file.is_some() != c.tls_key_file.is_some() {
        issues.push(
            "console.tls_cert_file",
            "HTTPS needs both tls_cert_file and tls_key_file",
        );
    }
    if c.username.is_empty() || c.username.contains(':') {
        issues.push(
            "console.username",
            "must be non-empty and without ':' (HTTP basic auth)",
        );
    }
}

/// Console settings that work but deserve a word at start.
pub fn console_warnings(c: &ConsoleConfig) -> Vec<ConfigIssue> {
    let mut issues = Issues(Vec::new());
    if let Ok(Some(addr)) = console_addr(c) {
        if !addr.ip().is_loopback() && c.tls_cert_file.is_none() {
            issues.push(
                "console.listen",
                format!(
                    "{:?} is off loopback without TLS: the password and the pages cross the network in clear; set tls_cert_file and tls_key_file",
                    c.listen
                ),
            );
        }
    }
    issues.0
}

/// Is `id` a contract id: `[A-Za-z0-9_.-]{1,64}`?
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// Is `name` usable as a variable in a state rule: `[A-Za-z_][A-Za-z0-9_]*`?
pub fn is_valid_signal_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 64
}

/// Every problem in `config`, in file order. Empty means usable.
pub fn validate(config: &Config) -> Vec<ConfigIssue> {
    let mut issues = Issues(Vec::new());
    let g = &config.gateway;
    for (key, value) in [("gateway.id", &g.id), ("gateway.site", &g.site)] {
        if !is_valid_id(value) {
            issues.push(
                key,
                format!("{value:?} is not a valid id: use 1 to 64 of A-Z a-z 0-9 _ . -"),
            );
        }
    }
    if g.timezone.parse::<chrono_tz::Tz>().is_err() {
        issues.push(
            "gateway.timezone",
            format!(
                "{:?} is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")",
                g.timezone
            ),
        );
    }

    let mut bus_ids = HashSet::new();
    for (i, bus) in config.bus.iter().enumerate() {
        check_bus(&mut issues, i, bus);
        if !bus_ids.insert(bus.id.as_str()) {
            issues.push(
                format!("bus[{i}].id"),
                format!("bus id {:?} is used twice", bus.id),
            );
        }
    }

    let mut machine_ids = HashSet::new();
    for (i, machine) in config.machine.iter().enumerate() {
        if !machine_ids.insert(machine.id.as_str()) {
            issues.push(
                format!("machine[{i}].id"),
                format!("machine id {:?} is used twice", machine.id),
            );
        }
        let bus = config.bus(&machine.bus);
        if bus.is_none() {
            let known: Vec<&str> = config.bus.iter().map(|b| b.id.as_str()).collect();
            issues.push(
                format!("machine[{i}].bus"),
                format!(
                    "machine {:?} names bus {:?}, which is not configured (buses: {})",
                    machine.id,
                    machine.bus,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        check_machine(&mut issues, i, machine, bus.map(|b| b.transport));
    }

    let a = &config.accounting;
    if !(1..=1440).contains(&a.period_minutes) {
        issues.push(
            "accounting.period_minutes",
            format!("{} is out of range 1..=1440", a.period_minutes),
        );
    } else if 1440 % a.period_minutes != 0 {
        issues.push(
            "accounting.period_minutes",
            format!(
                "{} does not divide a day evenly; use e.g. 1, 5, 10, 15, 30, 60",
                a.period_minutes
            ),
        );
    }

    let f = &config.forecast;
    if !(100..=3_600_000).contains(&f.every_ms) {
        issues.push(
            "forecast.every_ms",
            format!("{} is out of range 100..=3600000 (ms)", f.every_ms),
        );
    }
    if !(f.move_s.is_finite() && f.move_s >= 0.0) {
        issues.push(
            "forecast.move_s",
            format!("{} must be 0 or more seconds", f.move_s),
        );
    }
    if !(f.move_pct.is_finite() && (0.0..=100.0).contains(&f.move_pct)) {
        issues.push(
            "forecast.move_pct",
            format!(
                "{} is out of range 0..=100 (percent; 0 turns it off)",
                f.move_pct
            ),
        );
    }
    if f.min_interval_ms > 86_400_000 {
        issues.push(
            "forecast.min_interval_ms",
            format!("{} is above a day (86400000 ms)", f.min_interval_ms),
        );
    }
    if !(1..=8760).contains(&f.history_h) {
        issues.push(
            "forecast.history_h",
            format!("{} is out of range 1..=8760 (hours)", f.history_h),
        );
    }
    if !(1..=168).contains(&f.capacity_horizon_h) {
        issues.push(
            "forecast.capacity_horizon_h",
            format!("{} is out of range 1..=168 (hours)", f.capacity_horizon_h),
        );
    }
    if !(f.capacity_move_s.is_finite() && f.capacity_move_s >= 0.0) {
        issues.push(
            "forecast.capacity_move_s",
            format!("{} must be 0 or more seconds", f.capacity_move_s),
        );
    }

    if let Some(cal) = &config.shifts {
        if let Err(e) = crate::machine::shift::ShiftCalendar::from_config(cal, chrono_tz::UTC) {
            issues.push(e.key.clone(), e.message.clone());
        }
    }

    if let Some(u) = &config.uplink {
        if !(u.url.starts_with("mqtt://") || u.url.starts_with("mqtts://")) {
            issues.push(
                "uplink.url",
                format!(
                    "{:?} must start with mqtt:// or mqtts://, e.g. \"mqtts://broker.example:8883\"",
                    u.url
                ),
            );
        }
        if let Some(id) = &u.client_id {
            if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                issues.push(
                    "uplink.client_id",
                    format!(
                        "{id:?} is not usable: the broker keeps the order session under it, so it must be non-empty and without spaces; leave it out for linegate-<gateway id>"
                    ),
                );
            }
        }
        if u.url.starts_with("mqtt://") {
            for (key, set) in [
                ("uplink.ca_file", u.ca_file.is_some()),
                ("uplink.client_cert_file", u.client_cert_file.is_some()),
                ("uplink.client_key_file", u.client_key_file.is_some()),
            ] {
                if set {
                    issues.push(
                        key,
                        format!(
                            "is a TLS setting but uplink.url {:?} is plaintext: use mqtts:// or remove it",
                            u.url
                        ),
                    );
                }
            }
        }
        if u.username.is_none() && (u.password_file.is_some() || u.password_env.is_some()) {
            issues.push(
                "uplink.username",
                "a password is set (password_file or password_env) but no username",
            );
        }
        if u.password_file.is_some() && u.password_env.is_some() {
            issues.push(
                "uplink.password_file",
                "give password_file or password_env, not both",
            );
        }
        if u.client_cert_file.is_some() != u.client_key_file.is_some() {
            issues.push(
                "uplink.client_cert_file",
                "a client certificate needs both client_cert_file and client_key_file",
            );
        }
        if u.keepalive_s < 5 {
            issues.push("uplink.keepalive_s", "must be at least 5");
        }
        if u.historical_per_s == 0 {
            issues.push("uplink.historical_per_s", "must be at least 1");
        }
    }
    check_console(&mut issues, &config.console);
    if config.store.outbox_max_mb == 0 {
        issues.push("store.outbox_max_mb", "must be at least 1");
    }
    if config.store.reserve_mb > 4096 {
        issues.push(
            "store.reserve_mb",
            "must be at most 4096 (0 turns the reserve off)",
        );
    }
    for (key, message) in crate::sparkplug::config_problems(config) {
        issues.push(key, message);
    }
    issues.0
}

fn check_bus(issues: &mut Issues, i: usize, bus: &BusConfig) {
    let k = |f: &str| format!("bus[{i}].{f}");
    if !is_valid_id(&bus.id) {
        issues.push(
            k("id"),
            format!(
                "{:?} is not a valid id: use 1 to 64 of A-Z a-z 0-9 _ . -",
                bus.id
            ),
        );
    }
    match bus.transport {
        Transport::Tcp => match &bus.address {
            None => issues.push(
                k("address"),
                format!(
                    "tcp bus {:?} needs an address like \"192.168.1.50:502\"",
                    bus.id
                ),
            ),
            Some(a)
                if a.rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none() =>
            {
                issues.push(
                    k("address"),
                    format!("{a:?} is not host:port, e.g. \"192.168.1.50:502\""),
                )
            }
            Some(_) => {}
        },
        Transport::Rtu => {
            if bus.device.is_none() {
                issues.push(
                    k("device"),
                    format!(
                        "rtu bus {:?} needs a serial device like \"/dev/ttyUSB0\"",
                        bus.id
                    ),
                );
            }
            if !(5..=8).contains(&bus.data_bits) {
                issues.push(
                    k("data_bits"),
                    format!("{} is not 5, 6, 7 or 8", bus.data_bits),
                );
            }
            if !(1..=2).contains(&bus.stop_bits) {
                issues.push(k("stop_bits"), format!("{} is not 1 or 2", bus.stop_bits));
            }
            if bus.baud == 0 {
                issues.push(k("baud"), "must be above 0, e.g. 9600 or 19200");
            }
        }
        Transport::Mqtt => match &bus.address {
            Some(a) if a.starts_with("mqtt://") => {}
            _ => issues.push(
                k("address"),
                format!(
                    "mqtt bus {:?} needs an address like \"mqtt://127.0.0.1:1883\"",
                    bus.id
                ),
            ),
        },
    }
    if bus.timeout_ms == 0 {
        issues.push(k("timeout_ms"), "must be above 0");
    }
    if !(1..=125).contains(&bus.max_registers_per_request) {
        issues.push(
            k("max_registers_per_request"),
            format!(
                "{} is outside the protocol's 1..=125",
                bus.max_registers_per_request
            ),
        );
    }
    if !(1..=2000).contains(&bus.max_bits_per_request) {
        issues.push(
            k("max_bits_per_request"),
            format!(
                "{} is outside the protocol's 1..=2000",
                bus.max_bits_per_request
            ),
        );
    }
    if bus.transport == Transport::Mqtt {
        check_mqtt_bus(issues, i, bus);
    }
    if bus.backoff_min_ms == 0 || bus.backoff_min_ms > bus.backoff_max_ms {
        issues.push(
            k("backoff_min_ms"),
            "must be above 0 and not above backoff_max_ms",
        );
    }
    if bus.backoff_after_ms > MAX_BACKOFF_AFTER_MS {
        issues.push(
            k("backoff_after_ms"),
            format!(
                "{} is above a day ({MAX_BACKOFF_AFTER_MS}): a device silent that long is retried with backoff",
                bus.backoff_after_ms
            ),
        );
    }
}

/// Largest payload an MQTT packet can carry (the protocol's remaining length).
const MQTT_MAX_PAYLOAD_BYTES: u64 = 268_435_455;

fn check_mqtt_bus(issues: &mut Issues, i: usize, bus: &BusConfig) {
    let k = |f: &str| format!("bus[{i}].{f}");
    if !(1..=MQTT_MAX_PAYLOAD_BYTES).contains(&bus.max_payload_bytes) {
        issues.push(
            k("max_payload_bytes"),
            format!(
                "{} is outside 1..={MQTT_MAX_PAYLOAD_BYTES} (the MQTT maximum), e.g. 65536",
                bus.max_payload_bytes
            ),
        );
    }
    match (bus.retained, &bus.timestamp_pointer) {
        (RetainedPolicy::Timestamped, None) => issues.push(
            k("timestamp_pointer"),
            "retained = \"timestamped\" needs the JSON pointer of the payload's time, e.g. \"/ts\"",
        ),
        (_, Some(p)) if !p.starts_with('/') => issues.push(
            k("timestamp_pointer"),
            format!("{p:?} is not a JSON pointer: it starts with '/', e.g. \"/ts\""),
        ),
        _ => {}
    }
}
/// Longest `backoff_after_ms`: a day of steady retries.
const MAX_BACKOFF_AFTER_MS: u64 = 86_400_000;

fn check_machine(issues: &mut Issues, i: usize, m: &MachineConfig, transport: Option<Transport>) {
    let k = |f: &str| format!("machine[{i}].{f}");
    if !is_valid_id(&m.id) {
        issues.push(
            k("id"),
            format!(
                "{:?} is not a valid id: use 1 to 64 of A-Z a-z 0-9 _ . -",
                m.id
            ),
        );
    }
    if m.poll_ms == 0 {
        issues.push(k("poll_ms"), "must be above 0");
    }
    if transport != Some(Transport::Mqtt) && m.unit == 0 {
        issues.push(
            k("unit"),
            "unit 0 is the Modbus broadcast address; use the device's unit id 1..=247",
        );
    }
    let mut names = HashSet::new();
    // (area, register or bit address) -> signal index, to find overlaps.
    let mut used: BTreeMap<(Area, u32), (usize, Option<u8>)> = BTreeMap::new();
    for (j, s) in m.signal.iter().enumerate() {
        let sk = |f: &str| format!("machine[{i}].signal[{j}].{f}");
        if !is_valid_signal_name(&s.name) {
            issues.push(
                sk("name"),
                format!(
                    "{:?} is not a valid signal name: a letter or _ then letters, digits, _",
                    s.name
                ),
            );
        }
        if !names.insert(s.name.as_str()) {
            issues.push(
                sk("name"),
                format!("signal {:?} of machine {:?} is defined twice", s.name, m.id),
            );
        }
        if !s.scale.is_finite() || !s.offset.is_finite() {
            issues.push(sk("scale"), "scale and offset must be finite numbers");
        }
        if s.data_type == DataType::String {
            match s.length {
                Some(1..=125) => {}
                _ => issues.push(
                    sk("length"),
                    "a string signal needs length = registers (1..=125), two characters each",
                ),
            }
        } else if s.length.is_some() {
            issues.push(sk("length"), "length is only for type = \"string\"");
        }
        if let Some(bit) = s.bit {
            if s.data_type != DataType::Bool {
                issues.push(sk("bit"), "bit needs type = \"bool\"");
            }
            if bit > 15 {
                issues.push(
                    sk("bit"),
                    format!("{bit} is not a bit of a 16-bit register (0..=15)"),
                );
            }
        }
        if transport == Some(Transport::Mqtt) {
            if s.topic.is_none() {
                issues.push(sk("topic"), "a signal on an mqtt bus needs a topic");
            }
            if let Some(p) = &s.pointer {
                if !p.is_empty() && !p.starts_with('/') {
                    issues.push(
                        sk("pointer"),
                        format!(
                            "{p:?} is not a JSON pointer; it starts with /, e.g. \"/spindle/rpm\""
                        ),
                    );
                }
            }
            continue;
        }
        let (Some(area), Some(address)) = (s.area, s.address) else {
            issues.push(
                sk(if s.area.is_none() { "area" } else { "address" }),
                "a Modbus signal needs area (coil | discrete | holding | input) and address",
            );
            continue;
        };
        if area.is_bits() && s.data_type != DataType::Bool {
            issues.push(
                sk("type"),
                format!(
                    "type {} does not fit area {area}: coils and discrete inputs are single bits, use type = \"bool\"",
                    s.data_type
                ),
            );
            continue;
        }
        if area.is_bits() && s.bit.is_some() {
            issues.push(sk("bit"), format!("bit is for registers, not area {area}"));
        }
        if !area.is_bits() && s.data_type == DataType::Bool && s.bit.is_none() {
            issues.push(
                sk("bit"),
                "a bool from a register needs bit = 0..=15 (or use a coil or discrete area)",
            );
        }
        let width = if area.is_bits() {
            1
        } else {
            u32::from(s.data_type.registers(s.length))
        };
        let end = u32::from(address) + width;
        if end > 65536 {
            issues.push(
                sk("address"),
                format!("{area} {address} with {width} register(s) runs past 65535"),
            );
            continue;
        }
        for a in u32::from(address)..end {
            match used.get(&(area, a)) {
                Some(&(other, Some(other_bit))) if s.bit.is_some() && s.bit != Some(other_bit) => {
                    // Different bits of the same register: fine.
                    let _ = other;
                }
                Some(&(other, _)) => {
                    issues.push(
                        sk("address"),
                        format!(
                            "signal {:?} ({area} {address}..{}) overlaps signal {:?} of machine {:?}; check the register map",
                            s.name,
                            end - 1,
                            m.signal[other].name,
                            m.id
                        ),
                    );
                    break;
                }
                None => {}
            }
        }
        for a in u32::from(address)..end {
            used.entry((area, a)).or_insert((j, s.bit));
        }
    }

    if let Some(c) = &m.counters {
        for (field, name) in [
            ("produced", Some(&c.produced)),
            ("good", c.good.as_ref()),
            ("scrap", c.scrap.as_ref()),
        ] {
            if let Some(name) = name {
                if !names.contains(name.as_str()) {
                    issues.push(
                        format!("machine[{i}].counters.{field}"),
                        format!("machine {:?} has no signal {name:?}", m.id),
                    );
                }
            }
        }
        if let Some(t) = c.ideal_cycle_s {
            if !(t.is_finite() && t > 0.0 && t <= MAX_IDEAL_CYCLE_S) {
                issues.push(
                    format!("machine[{i}].counters.ideal_cycle_s"),
                    format!("{t} is not a number of seconds above 0 and up to {MAX_IDEAL_CYCLE_S}"),
                );
            }
        }
        if let Some(r) = c.max_parts_per_s {
            if !(r.is_finite() && r > 0.0) {
                issues.push(
                    format!("machine[{i}].counters.max_parts_per_s"),
                    "must be a positive number of parts per second",
                );
            }
        }
    }

    if let Some(rules) = &m.state {
        for problem in crate::machine::rules::check(rules, &m.signal) {
            issues.push(
                format!("machine[{i}].state.{}", problem.rule),
                format!("machine {:?}: {}", m.id, problem.message),
            );
        }
    }

    if let (Some(_), Some(Transport::Mqtt)) = (&m.orders, transport) {
        issues.push(
            format!("machine[{i}].orders"),
            format!(
                "machine {:?} is on an mqtt bus, which cannot write order registers; orders need a tcp or rtu bus",
                m.id
            ),
        );
    }
    if let Some(o) = &m.orders {
        let regs: Vec<(String, &OrderRegister)> = [
            ("order_number".to_string(), &o.order_number),
            ("product_code".to_string(), &o.product_code),
            ("quantity".to_string(), &o.quantity),
            ("start".to_string(), &o.start),
        ]
        .into_iter()
        .chain(o.params.iter().map(|(k, v)| (format!("params.{k}"), v)))
        .collect();
        for (name, r) in &regs {
            let ok = format!("machine[{i}].orders.{name}");
            match r.area {
                Area::Coil | Area::Holding => {}
                other => issues.push(
                    format!("{ok}.area"),
                    format!("{other} is read-only; order registers are coil or holding"),
                ),
            }
            if r.area == Area::Coil && r.data_type != DataType::Bool && r.data_type != DataType::U16
            {
                issues.push(format!("{ok}.type"), "a coil holds a single bit");
            }
            if matches!(r.data_type, DataType::String) {
                issues.push(format!("{ok}.type"), "strings cannot be written by orders");
            }
            if u32::from(r.address) + u32::from(r.data_type.registers(None)) > 65536 {
                issues.push(format!("{ok}.address"), "runs past 65535");
            }
            check_limits(issues, &ok, r);
        }
        if let Some((lo, hi)) = order_bounds(&o.product_code) {
            for (product, code) in &o.product_code.map {
                let c = *code as f64;
                if c < lo || c > hi {
                    issues.push(
                        format!("machine[{i}].orders.product_code.map.{product}"),
                        format!(
                            "code {code} does not fit the product_code register ({}, {lo}..={hi})",
                            o.product_code.data_type
                        ),
                    );
                }
            }
        }
        if let Some((_, hi)) = order_bounds(&o.quantity) {
            if f64::from(o.max_quantity) > hi {
                issues.push(
                    format!("machine[{i}].orders.max_quantity"),
                    format!(
                        "{} does not fit the quantity register ({}, up to {hi})",
                        o.max_quantity, o.quantity.data_type
                    ),
                );
            }
        }
        if o.product_code.map.is_empty() {
            issues.push(
                format!("machine[{i}].orders.product_code.map"),
                "list the products the machine knows: map = { \"P-4711\" = 11 }",
            );
        }
        if o.max_quantity == 0 {
            issues.push(
                format!("machine[{i}].orders.max_quantity"),
                "must be above 0",
            );
        }
        if m.counters.is_none() {
            issues.push(
                format!("machine[{i}].counters"),
                "a machine that takes orders needs counters.produced to track them",
            );
        }
    }
}

/// `min` and `max` of an order register: finite, inside what the register
/// holds, and `min` not above `max`.
fn check_limits(issues: &mut Issues, key: &str, r: &OrderRegister) {
    let Some((lo, hi)) = register_range(r) else {
        return;
    };
    let what = if r.area == Area::Coil {
        "a coil".to_string()
    } else {
        format!("a {} register", r.data_type)
    };
    for (field, limit) in [("min", r.min), ("max", r.max)] {
        let Some(v) = limit else { continue };
        if !v.is_finite() {
            issues.push(format!("{key}.{field}"), "must be a finite number");
        } else if v < lo || v > hi {
            issues.push(
                format!("{key}.{field}"),
                format!("{v} does not fit {what}: use {lo}..={hi}"),
            );
        }
    }
    if let (Some(min), Some(max)) = (r.min, r.max) {
        if min > max {
            issues.push(format!("{key}.max"), format!("{max} is below min {min}"));
        }
    }
}

/// The values an order may write to `r`: its type's range narrowed by
/// `min`/`max` (limits that are themselves invalid are reported elsewhere).
fn order_bounds(r: &OrderRegister) -> Option<(f64, f64)> {
    let (lo, hi) = register_range(r)?;
    let usable = |m: &f64| (lo..=hi).contains(m);
    Some((
        r.min.filter(usable).unwrap_or(lo),
        r.max.filter(usable).unwrap_or(hi),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_contract() {
        assert!(is_valid_id("press07"));
        assert!(is_valid_id("gw-line2.a_b"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id(&"x".repeat(65)));
    }

    #[test]
    fn signal_names_are_rule_variables() {
        assert!(is_valid_signal_name("part_count"));
        assert!(!is_valid_signal_name("1st"));
        assert!(!is_valid_signal_name("a-b"));
    }
}
