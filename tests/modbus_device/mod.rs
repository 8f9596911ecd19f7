//! Simulated Modbus devices for the acquisition tests: one in-process
//! tokio-modbus server (TCP on loopback, or RTU on a pty pair) answering for
//! several unit ids, each with its own register map and behaviour (normal,
//! silent, slow, wrong reply length, exceptions, read-only registers). It
//! counts the requests each unit gets, so tests can check coalescing and
//! retries without timing anything.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linegate::config::Config;
use linegate::source::modbus::{run_bus, BusStats, WriteRequest};
use linegate::source::Value;
use linegate::source::{Reading, Sample};
use linegate::systemd::Liveness;
use std::collections::BTreeMap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

/// How a unit answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    Normal,
    /// Never answers (a dead or absent device).
    Silent,
    /// Answers after this long (beyond the bus timeout in tests).
    Slow(Duration),
    /// Register reads come back one register short.
    WrongLength,
}

#[derive(Debug, Clone)]
pub struct Unit {
    pub holding: Vec<u16>,
    pub input: Vec<u16>,
    pub coils: Vec<bool>,
    pub discretes: Vec<bool>,
    pub behaviour: Behaviour,
    /// Reads of holding registers that touch `start..=end` get this exception.
    pub holding_exception: Option<(u16, u16, ExceptionCode)>,
    /// Holding registers that acknowledge writes but keep their value.
    pub read_only: Vec<u16>,
    /// Requests received (answered or not).
    pub requests: usize,
}

impl Default for Unit {
    fn default() -> Self {
        Self {
            holding: vec![0; 65536],
            input: vec![0; 65536],
            coils: vec![false; 65536],
            discretes: vec![false; 65536],
            behaviour: Behaviour::Normal,
            holding_exception: None,
            read_only: Vec::new(),
            requests: 0,
        }
    }
}

/// The units behind one server; units not present never answer.
#[derive(Debug, Clone, Default)]
pub struct Devices(Arc<Mutex<HashMap<u8, Unit>>>);

impl Devices {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&self, id: u8, unit: Unit) {
        self.0.lock().unwrap().insert(id, unit);
    }

    pub fn with<R>(&self, id: u8, f: impl FnOnce(&mut Unit) -> R) -> R {
        let mut all = self.0.lock().unwrap();
        f(all.get_mut(&id).expect("unit exists"))
    }

    pub fn requests(&self, id: u8) -> usize {
        self.0.lock().unwrap().get(&id).map_or(0, |u| u.requests)
    }

    fn answer(
        &self,
        req: SlaveRequest<'static>,
    ) -> (Behaviour, Option<Result<Response, ExceptionCode>>) {
        let mut all = self.0.lock().unwrap();
        let Some(unit) = all.get_mut(&req.slave) else {
            return (Behaviour::Silent, None);
        };
        unit.requests += 1;
        let range = |a: u16, n: u16| usize::from(a)..usize::from(a) + usize::from(n);
        let result = match req.request {
            Request::ReadCoils(a, n) => Ok(Response::ReadCoils(unit.coils[range(a, n)].to_vec())),
            Request::ReadDiscreteInputs(a, n) => Ok(Response::ReadDiscreteInputs(
                unit.discretes[range(a, n)].to_vec(),
            )),
            Request::ReadHoldingRegisters(a, n) => match unit.holding_exception {
                Some((s, e, code)) if a <= e && a + n > s => Err(code),
                _ => {
                    let mut words = unit.holding[range(a, n)].to_vec();
                    if unit.behaviour == Behaviour::WrongLength {
                        words.pop();
                    }
                    Ok(Response::ReadHoldingRegisters(words))
                }
            },
            Request::ReadInputRegisters(a, n) => {
                let mut words = unit.input[range(a, n)].to_vec();
                if unit.behaviour == Behaviour::WrongLength {
                    words.pop();
                }
                Ok(Response::ReadInputRegisters(words))
            }
            Request::WriteSingleCoil(a, on) => {
                unit.coils[usize::from(a)] = on;
                Ok(Response::WriteSingleCoil(a, on))
            }
            Request::WriteMultipleRegisters(a, words) => {
                for (i, w) in words.iter().enumerate() {
                    let addr = a + i as u16;
                    if !unit.read_only.contains(&addr) {
                        unit.holding[usize::from(addr)] = *w;
                    }
                }
                Ok(Response::WriteMultipleRegisters(a, words.len() as u16))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        (unit.behaviour.clone(), Some(result))
    }
}

#[derive(Clone)]
pub struct DeviceService(pub Devices);

type Answer = Result<Option<Response>, ExceptionCode>;

impl Service for DeviceService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let (behaviour, result) = self.0.answer(req);
        Box::pin(async move {
            match behaviour {
                Behaviour::Silent => return Ok(None),
                Behaviour::Slow(d) => tokio::time::sleep(d).await,
                _ => {}
            }
            match result {
                None => Ok(None),
                Some(r) => r.map(Some),
            }
        })
    }
}

/// Serve `devices` over Modbus TCP on `listener` until the test ends.
pub fn serve_tcp_on(listener: TcpListener, devices: Devices) {
    let server = tokio_modbus::server::tcp::Server::new(listener);
    tokio::spawn(async move {
        let on_connected = move |stream, _addr| {
            let service = DeviceService(devices.clone());
            async move { Ok(Some((service, stream))) }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
}

/// Serve `devices` over Modbus TCP on a fresh loopback port.
pub async fn serve_tcp(devices: Devices) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    serve_tcp_on(listener, devices);
    addr
}

/// A loopback address where nothing listens (yet).
pub fn unused_address() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Parse a test config, or fail the test with the config's own error.
pub fn config(toml: &str) -> Config {
    match Config::from_toml(toml, std::path::Path::new("test.toml")) {
        Ok(c) => c,
        Err(e) => panic!("test config: {e}"),
    }
}

/// Registers of every type in every order, with the values they hold.
pub fn typed_unit() -> Unit {
    let mut u = Unit::default();
    let mut put = |addr: usize, words: &[u16]| {
        u.holding[addr..addr + words.len()].copy_from_slice(words);
    };
    // f32 123.456 = 0x42F6_E979 in the four orders
    put(0, &[0x42F6, 0xE979]);
    put(2, &[0xE979, 0x42F6]);
    put(4, &[0xF642, 0x79E9]);
    put(6, &[0x79E9, 0xF642]);
    // u32 0x1234_5678
    put(10, &[0x1234, 0x5678]);
    put(12, &[0x5678, 0x1234]);
    put(14, &[0x3412, 0x7856]);
    put(16, &[0x7856, 0x3412]);
    // i16 -123, u16 4711
    put(20, &[0xFF85]);
    put(21, &[0x85FF]);
    put(22, &[4711]);
    // i32 -2
    put(24, &[0xFFFF, 0xFFFE]);
    put(26, &[0xFFFE, 0xFFFF]);
    // u64 0x0102_0304_0506_0708
    put(30, &[0x0102, 0x0304, 0x0506, 0x0708]);
    put(34, &[0x0708, 0x0506, 0x0304, 0x0102]);
    put(38, &[0x0201, 0x0403, 0x0605, 0x0807]);
    put(42, &[0x0807, 0x0605, 0x0403, 0x0201]);
    // i64 -1
    put(46, &[0xFFFF; 4]);
    // f64 1234.5678 = 0x4093_4A45_6D5C_FAAD
    put(50, &[0x4093, 0x4A45, 0x6D5C, 0xFAAD]);
    put(54, &[0xFAAD, 0x6D5C, 0x4A45, 0x4093]);
    put(58, &[0x9340, 0x454A, 0x5C6D, 0xADFA]);
    put(62, &[0xADFA, 0x5C6D, 0x454A, 0x9340]);
    // "P-4711" padded with a space and a NUL
    put(70, &[0x502D, 0x3437, 0x3131, 0x2000]);
    // bit 3 set
    put(80, &[0x0008]);
    // 650 -> 650 * 0.1 - 40 = 25.0
    put(81, &[650]);
    // u64 max
    put(82, &[0xFFFF; 4]);
    u.input[0] = 7;
    u.coils[5] = true;
    u.discretes[9] = true;
    u
}

pub const TYPED_SIGNALS: &str = r#"
[[machine.signal]]
name = "f32_bb"
area = "holding"
address = 0
type = "f32"
[[machine.signal]]
name = "f32_lb"
area = "holding"
address = 2
type = "f32"
word_order = "little"
[[machine.signal]]
name = "f32_bl"
area = "holding"
address = 4
type = "f32"
byte_order = "little"
[[machine.signal]]
name = "f32_ll"
area = "holding"
address = 6
type = "f32"
word_order = "little"
byte_order = "little"
[[machine.signal]]
name = "u32_bb"
area = "holding"
address = 10
type = "u32"
[[machine.signal]]
name = "u32_lb"
area = "holding"
address = 12
type = "u32"
word_order = "little"
[[machine.signal]]
name = "u32_bl"
area = "holding"
address = 14
type = "u32"
byte_order = "little"
[[machine.signal]]
name = "u32_ll"
area = "holding"
address = 16
type = "u32"
word_order = "little"
byte_order = "little"
[[machine.signal]]
name = "i16_b"
area = "holding"
address = 20
type = "i16"
[[machine.signal]]
name = "i16_l"
area = "holding"
address = 21
type = "i16"
byte_order = "little"
[[machine.signal]]
name = "u16"
area = "holding"
address = 22
[[machine.signal]]
name = "i32_bb"
area = "holding"
address = 24
type = "i32"
[[machine.signal]]
name = "i32_lb"
area = "holding"
address = 26
type = "i32"
word_order = "little"
[[machine.signal]]
name = "u64_bb"
area = "holding"
address = 30
type = "u64"
[[machine.signal]]
name = "u64_lb"
area = "holding"
address = 34
type = "u64"
word_order = "little"
[[machine.signal]]
name = "u64_bl"
area = "holding"
address = 38
type = "u64"
byte_order = "little"
[[machine.signal]]
name = "u64_ll"
area = "holding"
address = 42
type = "u64"
word_order = "little"
byte_order = "little"
[[machine.signal]]
name = "i64"
area = "holding"
address = 46
type = "i64"
[[machine.signal]]
name = "f64_bb"
area = "holding"
address = 50
type = "f64"
[[machine.signal]]
name = "f64_lb"
area = "holding"
address = 54
type = "f64"
word_order = "little"
[[machine.signal]]
name = "f64_bl"
area = "holding"
address = 58
type = "f64"
byte_order = "little"
[[machine.signal]]
name = "f64_ll"
area = "holding"
address = 62
type = "f64"
word_order = "little"
byte_order = "little"
[[machine.signal]]
name = "product"
area = "holding"
address = 70
type = "string"
length = 4
[[machine.signal]]
name = "door_open"
area = "holding"
address = 80
type = "bool"
bit = 3
[[machine.signal]]
name = "temperature"
area = "holding"
address = 81
type = "i16"
scale = 0.1
offset = -40.0
[[machine.signal]]
name = "u64_max"
area = "holding"
address = 82
type = "u64"
[[machine.signal]]
name = "input_u16"
area = "input"
address = 0
[[machine.signal]]
name = "running"
area = "coil"
address = 5
type = "bool"
[[machine.signal]]
name = "alarm"
area = "discrete"
address = 9
type = "bool"
"#;

pub fn expected_typed_values() -> BTreeMap<String, Value> {
    let mut v = BTreeMap::new();
    for n in ["f32_bb", "f32_lb", "f32_bl", "f32_ll"] {
        v.insert(n.to_string(), Value::Float(123.456));
    }
    for n in ["u32_bb", "u32_lb", "u32_bl", "u32_ll"] {
        v.insert(n.to_string(), Value::Int(0x1234_5678));
    }
    v.insert("i16_b".into(), Value::Int(-123));
    v.insert("i16_l".into(), Value::Int(-123));
    v.insert("u16".into(), Value::Int(4711));
    v.insert("i32_bb".into(), Value::Int(-2));
    v.insert("i32_lb".into(), Value::Int(-2));
    for n in ["u64_bb", "u64_lb", "u64_bl", "u64_ll"] {
        v.insert(n.to_string(), Value::Int(0x0102_0304_0506_0708));
    }
    v.insert("i64".into(), Value::Int(-1));
    for n in ["f64_bb", "f64_lb", "f64_bl", "f64_ll"] {
        v.insert(n.to_string(), Value::Float(1234.5678));
    }
    v.insert("product".into(), Value::Text("P-4711".into()));
    v.insert("door_open".into(), Value::Bool(true));
    v.insert("temperature".into(), Value::Float(25.0));
    v.insert("u64_max".into(), Value::UInt(u64::MAX));
    v.insert("input_u16".into(), Value::Int(7));
    v.insert("running".into(), Value::Bool(true));
    v.insert("alarm".into(), Value::Bool(true));
    v
}

pub fn gateway() -> &'static str {
    "[gateway]\nid = \"gw-test\"\nsite = \"lab\"\n"
}

pub fn tcp_bus(id: &str, address: &str, extra: &str) -> String {
    format!("[[bus]]\nid = \"{id}\"\ntransport = \"tcp\"\naddress = \"{address}\"\n{extra}\n")
}

pub fn machine(id: &str, bus: &str, unit: u8, poll_ms: u64, signals: &str) -> String {
    format!("[[machine]]\nid = \"{id}\"\nbus = \"{bus}\"\nunit = {unit}\npoll_ms = {poll_ms}\n{signals}\n")
}

pub const ONE_U16: &str = "[[machine.signal]]\nname = \"count\"\narea = \"holding\"\naddress = 0\n";

pub fn two_area_signals() -> &'static str {
    "[[machine.signal]]\nname = \"count\"\narea = \"holding\"\naddress = 0\n\
     [[machine.signal]]\nname = \"running\"\narea = \"coil\"\naddress = 0\ntype = \"bool\"\n"
}

pub fn values(readings: &BTreeMap<String, Reading>) -> BTreeMap<String, Value> {
    readings
        .iter()
        .map(|(k, r)| match r {
            Ok(v) => (k.clone(), v.clone()),
            Err(e) => panic!("signal {k}: {e}"),
        })
        .collect()
}

/// Start one bus task per bus of `config`; returns the samples, the write
/// senders per bus, the stats per bus and the shutdown token.
pub struct Running {
    pub samples: mpsc::Receiver<Sample>,
    pub writes: BTreeMap<String, mpsc::Sender<Box<WriteRequest>>>,
    pub stats: BTreeMap<String, Arc<BusStats>>,
    pub shutdown: CancellationToken,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub fn start(config: &Config) -> Running {
    let (tx, samples) = mpsc::channel(1024);
    let shutdown = CancellationToken::new();
    let mut writes = BTreeMap::new();
    let mut stats = BTreeMap::new();
    let mut tasks = Vec::new();
    for bus in &config.bus {
        let (wtx, wrx) = mpsc::channel(8);
        let s = Arc::new(BusStats::new(&bus.id));
        writes.insert(bus.id.clone(), wtx);
        stats.insert(bus.id.clone(), s.clone());
        tasks.push(tokio::spawn(run_bus(
            bus.clone(),
            config.machine.clone(),
            tx.clone(),
            wrx,
            s,
            Liveness::new().register(format!("modbus bus {}", bus.id)),
            shutdown.clone(),
        )));
    }
    Running {
        samples,
        writes,
        stats,
        shutdown,
        tasks,
    }
}

impl Running {
    pub async fn next(&mut self) -> Sample {
        match tokio::time::timeout(Duration::from_secs(20), self.samples.recv()).await {
            Ok(Some(s)) => s,
            other => panic!("no sample: {other:?}"),
        }
    }

    /// The next sample of `machine`, skipping others.
    pub async fn next_of(&mut self, machine: &str) -> Sample {
        loop {
            let s = self.next().await;
            if s.machine == machine {
                return s;
            }
        }
    }

    /// Stop the tasks and return every sample still queued.
    pub async fn stop(mut self) -> Vec<Sample> {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("bus task stops on shutdown")
                .expect("bus task does not panic");
        }
        let mut rest = Vec::new();
        while let Ok(s) = self.samples.try_recv() {
            rest.push(s);
        }
        rest
    }
}
