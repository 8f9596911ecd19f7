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
use tokio::net::TcpListener;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

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
