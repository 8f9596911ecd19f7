//! The order task against a real in-process Modbus TCP server standing in
//! for a machine's order registers, written through the agent's own bus
//! task (`run_bus`: write, read back, compare); the machine's view is a
//! `watch` channel the test drives, and what the task tells the state
//! engine is collected from the engine's command channel.

mod orders_support;

use std::collections::HashMap;
use std::future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use linegate::config::Config;
use linegate::machine::engine::{engine_channel, EngineCommand, EngineHandle};
use linegate::machine::{MachineState, MachineView};
use linegate::orders::book::{self, OrderState};
use linegate::orders::{run_orders_with, DispatchOptions, OrderMessage};
use linegate::source::modbus::{run_bus, BusStats, WriteRequest};
use linegate::store::Store;
use linegate::systemd::Liveness;
use orders_support::*;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_modbus::prelude::*;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_util::sync::CancellationToken;

/// The machine's registers, and a switch that makes every write fail.
#[derive(Default)]
struct Registers {
    holding: Mutex<HashMap<u16, u16>>,
    coils: Mutex<HashMap<u16, bool>>,
    refuse_writes: AtomicBool,
}

#[derive(Clone)]
struct MachineService(Arc<Registers>);

impl tokio_modbus::server::Service for MachineService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        let r = &self.0;
        let refuse = r.refuse_writes.load(Ordering::SeqCst);
        future::ready(match req {
            Request::ReadHoldingRegisters(a, n) => {
                let h = r.holding.lock().unwrap();
                Ok(Response::ReadHoldingRegisters(
                    (a..a + n)
                        .map(|i| h.get(&i).copied().unwrap_or(0))
                        .collect(),
                ))
            }
            Request::ReadInputRegisters(_, n) => {
                Ok(Response::ReadInputRegisters(vec![0; n.into()]))
            }
            Request::ReadCoils(a, n) => {
                let c = r.coils.lock().unwrap();
                Ok(Response::ReadCoils(
                    (a..a + n)
                        .map(|i| c.get(&i).copied().unwrap_or(false))
                        .collect(),
                ))
            }
            _ if refuse => Err(ExceptionCode::ServerDeviceFailure),
            Request::WriteMultipleRegisters(a, words) => {
                let mut h = r.holding.lock().unwrap();
                for (i, w) in words.iter().enumerate() {
                    h.insert(a + i as u16, *w);
                }
                Ok(Response::WriteMultipleRegisters(a, words.len() as u16))
            }
            Request::WriteSingleCoil(a, v) => {
                r.coils.lock().unwrap().insert(a, v);
                Ok(Response::WriteSingleCoil(a, v))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

async fn start_machine(regs: Arc<Registers>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(listener);
    tokio::spawn(async move {
        let on_connected = move |stream, socket_addr| {
            let service = MachineService(regs.clone());
            async move { accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(service.clone()))) }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    addr
}

/// The agent's own bus task on the machine: it polls (the samples are
/// drained here; the test drives the view) and serves the order task's
/// writes between polls, each read back and compared.
fn start_bus(
    config: &Config,
    writes: mpsc::Receiver<Box<WriteRequest>>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let bus = config.bus[0].clone();
    let (sample_tx, mut sample_rx) = mpsc::channel(64);
    tokio::spawn(async move { while sample_rx.recv().await.is_some() {} });
    let stats = Arc::new(BusStats::new(&bus.id));
    tokio::spawn(run_bus(
        bus,
        config.machine.clone(),
        sample_tx,
        writes,
        stats,
        Liveness::new().register("modbus bus"),
        shutdown,
    ))
}

/// What the order task told the state engine: (machine, ideal cycle time).
type IdealCycles = Arc<Mutex<Vec<(String, Option<f64>)>>>;

fn engine_listener() -> (EngineHandle, IdealCycles) {
    let (handle, mut rx) = engine_channel();
    let seen: IdealCycles = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            if let EngineCommand::IdealCycle {
                machine,
                ideal_cycle_s,
            } = cmd
            {
                s.lock().unwrap().push((machine, ideal_cycle_s));
            }
        }
    });
    (handle, seen)
}

/// A running order task with its machine, view and inbox.
struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    regs: Arc<Registers>,
    view: watch::Sender<MachineView>,
    inbox: mpsc::Sender<OrderMessage>,
    ideal_cycles: IdealCycles,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    bus: tokio::task::JoinHandle<()>,
}

fn view(state: MachineState, produced: u64) -> MachineView {
    MachineView {
        machine: "press07".into(),
        state,
        since: Utc::now(),
        reason: None,
        produced_total: produced,
        good_total: produced,
        scrap_total: 0,
    }
}

impl Rig {
    async fn start() -> Rig {
        let regs = Arc::new(Registers::default());
        let addr = start_machine(regs.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        Rig::start_on(dir, store, regs, addr, view(MachineState::Idle, 100)).await
    }

    /// A task on an existing store and machine (a restart of the order task).
    async fn start_on(
        dir: tempfile::TempDir,
        store: Store,
        regs: Arc<Registers>,
        addr: SocketAddr,
        first_view: MachineView,
    ) -> Rig {
        Rig::start_with(dir, store, regs, addr, first_view, record_only).await
    }

    /// A task with an outbox of the test's choosing.
    async fn start_with(
        dir: tempfile::TempDir,
        store: Store,
        regs: Arc<Registers>,
        addr: SocketAddr,
        first_view: MachineView,
        enqueue: book::Enqueue,
    ) -> Rig {
        let config = config(&addr.to_string());
        let (view_tx, view_rx) = watch::channel(first_view);
        let (inbox_tx, inbox_rx) = mpsc::channel(8);
        let (bus_tx, bus_rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let bus = start_bus(&config, bus_rx, shutdown.clone());
        let (engine, ideal_cycles) = engine_listener();
        let options = DispatchOptions {
            write_attempts: 3,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(80),
            write_timeout: Duration::from_secs(5),
            progress_every: Duration::ZERO,
            late_check: Duration::from_millis(50),
            engine: Some(engine),
        };
        let task = tokio::spawn(run_orders_with(
            config,
            store.clone(),
            inbox_rx,
            HashMap::from([("press07".to_string(), view_rx)]),
            HashMap::from([("press07".to_string(), bus_tx)]),
            Arc::new(Notify::new()),
            shutdown.clone(),
            enqueue,
            options,
        ));
        Rig {
            _dir: dir,
            store,
            regs,
            view: view_tx,
            inbox: inbox_tx,
            ideal_cycles,
            shutdown,
            task,
            bus,
        }
    }

    /// Hand a message to the task; returns once it is committed.
    async fn send(&self, v: Value) {
        let (tx, rx) = oneshot::channel();
        self.inbox
            .send(OrderMessage {
                payload: v.to_string().into_bytes(),
                committed: tx,
            })
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("committed in time")
            .expect("committed fired");
    }

    fn set_view(&self, state: MachineState, produced: u64) {
        self.view.send_replace(view(state, produced));
    }

    async fn state_of(&self, order_id: &str) -> Option<OrderState> {
        let id = order_id.to_owned();
        self.store
            .call(move |c| book::latest(c, &id))
            .await
            .unwrap()
            .map(|r| r.state)
    }

    /// Wait (bounded) until the order is in `state`.
    async fn wait_for(&self, order_id: &str, state: OrderState) {
        for _ in 0..500 {
            if self.state_of(order_id).await == Some(state) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "order {order_id} never reached {state}; it is {:?}; events {:?}",
            self.state_of(order_id).await,
            events_of(&self.store, order_id)
        );
    }

    /// Give the task time to act on something it must NOT do.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    fn holding(&self, address: u16) -> u16 {
        self.regs
            .holding
            .lock()
            .unwrap()
            .get(&address)
            .copied()
            .unwrap_or(0)
    }

    fn coil(&self, address: u16) -> bool {
        self.regs
            .coils
            .lock()
            .unwrap()
            .get(&address)
            .copied()
            .unwrap_or(false)
    }

    async fn stop(self) -> (tempfile::TempDir, Arc<Registers>) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.bus).await;
        (self._dir, self.regs)
    }
}

fn order(id: &str, product: &str, quantity: u32, sequence: i64) -> Value {
    json!({"order_id": id, "revision": 1, "machine": "press07", "product": product,
           "quantity": quantity, "sequence": sequence, "params": {"recipe": 5}})
}

#[tokio::test]
async fn orders_are_released_in_sequence_one_at_a_time_and_complete_on_counts() {
    let rig = Rig::start().await;
    let mut second = order("WO-B", "P-4712", 2, 2);
    second["due"] = json!("2020-01-01T00:00:00Z");
    // Sent out of order: sequence decides.
    rig.send(json!({"type": "plan", "plan_id": "HJ-1", "orders": [second, order("WO-A", "P-4711", 3, 1)]}))
        .await;

    rig.wait_for("WO-A", OrderState::Released).await;
    assert_eq!(
        [rig.holding(200), rig.holding(201)],
        [0, 1],
        "order number: arrival 1 as u32"
    );
    assert_eq!(rig.holding(202), 11, "product code of P-4711");
    assert_eq!(rig.holding(203), 3, "quantity");
    assert_eq!(rig.holding(204), 5, "recipe");
    assert!(rig.coil(10), "start written last");

    // Interlock: WO-A is on the machine, WO-B waits even though the machine is idle.
    rig.settle().await;
    assert_eq!(rig.state_of("WO-B").await, Some(OrderState::Queued));

    rig.set_view(MachineState::Running, 101);
    rig.wait_for("WO-A", OrderState::Running).await;
    rig.set_view(MachineState::Running, 103);
    rig.wait_for("WO-A", OrderState::Completed).await;
    // Still running (on its last cycle): the next order waits for idle.
    rig.settle().await;
    assert_eq!(rig.state_of("WO-B").await, Some(OrderState::Queued));

    rig.set_view(MachineState::Idle, 103);
    rig.wait_for("WO-B", OrderState::Released).await;
    assert_eq!(rig.holding(202), 12, "product code of P-4712");
    assert_eq!(rig.holding(203), 2);

    let a = events_of(&rig.store, "WO-A");
    let done = a.last().unwrap();
    assert_eq!(done["state"], "completed");
    assert_eq!(
        (done["produced"].as_u64(), done["good"].as_u64()),
        (Some(3), Some(3))
    );
    assert!(done["actual_start"].is_string() && done["actual_end"].is_string());
    assert_eq!(done["plan"]["completed"], 1);
    assert_eq!(done["plan"]["started_in_sequence"], 1);

    // WO-B was due in the past: reported late exactly once.
    let late: Vec<Value> = events_of(&rig.store, "WO-B")
        .into_iter()
        .filter(|e| e["reason"].as_str().is_some_and(|r| r.starts_with("late")))
        .collect();
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0]["late"], true);

    let audit: Vec<(String, String)> = rig
        .store
        .call(|c| {
            let mut s = c.prepare(
                "SELECT register, result FROM write_audit WHERE order_id = 'WO-A' ORDER BY id",
            )?;
            let rows = s
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
        .unwrap();
    let registers: Vec<&str> = audit.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        registers,
        [
            "order_number (holding 200)",
            "product_code (holding 202)",
            "quantity (holding 203)",
            "parameter recipe (holding 204)",
            "start (coil 10)"
        ]
    );
    assert!(audit.iter().all(|(_, result)| result == "ok"), "{audit:?}");
    rig.stop().await;
}

#[tokio::test]
async fn hold_stops_the_machine_lets_the_next_order_in_and_cancel_ends_both() {
    let rig = Rig::start().await;
    rig.send(json!({"type": "plan", "plan_id": "HJ-2", "orders": [order("WO-1", "P-4711", 10, 1), order("WO-2", "P-4712", 4, 2)]}))
        .await;
    rig.wait_for("WO-1", OrderState::Released).await;
    rig.set_view(MachineState::Running, 104);
    rig.wait_for("WO-1", OrderState::Running).await;

    rig.send(json!({"type": "hold", "order_id": "WO-1"})).await;
    rig.wait_for("WO-1", OrderState::Held).await;
    assert!(!rig.coil(10), "hold writes start = false");
    let held = events_of(&rig.store, "WO-1").last().cloned().unwrap();
    assert_eq!(held["produced"], 4, "progress kept at hold");

    rig.set_view(MachineState::Idle, 104);
    rig.wait_for("WO-2", OrderState::Released).await;
    assert_eq!(rig.holding(202), 12);

    // Resume puts WO-1 back in the queue; it waits for WO-2 (interlock).
    rig.send(json!({"type": "resume", "order_id": "WO-1"}))
        .await;
    rig.settle().await;
    assert_eq!(rig.state_of("WO-1").await, Some(OrderState::Queued));

    rig.send(json!({"type": "cancel", "order_id": "WO-2"}))
        .await;
    rig.wait_for("WO-2", OrderState::Cancelled).await;
    let stop: Vec<(String, String, String)> = rig
        .store
        .call(|c| {
            let mut s = c.prepare(
                "SELECT register, value, result FROM write_audit
                 WHERE order_id = 'WO-2' AND what LIKE 'cancel%'",
            )?;
            let rows = s
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
        .unwrap();
    assert_eq!(
        stop,
        [(
            "start (coil 10)".to_string(),
            "false".to_string(),
            "ok".to_string()
        )],
        "cancel of a released order writes start = false"
    );

    // WO-1 goes back on the machine for the 6 parts it still has to make.
    rig.wait_for("WO-1", OrderState::Released).await;
    assert_eq!(rig.holding(203), 6, "only what is left is written");
    rig.set_view(MachineState::Running, 110);
    rig.wait_for("WO-1", OrderState::Completed).await;
    let done = events_of(&rig.store, "WO-1").last().cloned().unwrap();
    assert_eq!(done["produced"], 10);

    rig.send(json!({"type": "cancel", "order_id": "WO-1"}))
        .await;
    let answer = events_of(&rig.store, "WO-1").last().cloned().unwrap();
    assert_eq!(answer["state"], "rejected");
    assert_eq!(answer["command"], "cancel");
    rig.stop().await;
}

#[tokio::test]
async fn a_write_that_keeps_failing_is_retried_then_the_order_is_aborted_with_the_reason() {
    let rig = Rig::start().await;
    rig.regs.refuse_writes.store(true, Ordering::SeqCst);
    rig.send(
        json!({"type": "order", "order_id": "WO-X", "machine": "press07",
                    "product": "P-4711", "quantity": 5}),
    )
    .await;
    rig.wait_for("WO-X", OrderState::Aborted).await;
    let last = events_of(&rig.store, "WO-X").last().cloned().unwrap();
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.contains("release failed after 3 attempt(s)"),
        "{reason}"
    );
    assert!(
        reason.contains("holding 200"),
        "names the register: {reason}"
    );
    assert!(!rig.coil(10), "the machine was never started");

    let attempts: Vec<(String, String, String)> = rig
        .store
        .call(|c| {
            let mut s = c.prepare(
                "SELECT what, register, result FROM write_audit WHERE order_id = 'WO-X' ORDER BY id",
            )?;
            let rows = s
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
        .unwrap();
    let whats: std::collections::BTreeSet<&str> = attempts.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(
        whats.into_iter().collect::<Vec<_>>(),
        [
            "release attempt 1",
            "release attempt 2",
            "release attempt 3"
        ]
    );
    assert!(attempts
        .iter()
        .filter(|a| a.1.starts_with("start"))
        .all(|a| a.2 == "not written"));

    // A machine that takes writes again gets the next order.
    rig.regs.refuse_writes.store(false, Ordering::SeqCst);
    rig.send(
        json!({"type": "order", "order_id": "WO-Y", "machine": "press07",
                    "product": "P-4711", "quantity": 5}),
    )
    .await;
    rig.wait_for("WO-Y", OrderState::Released).await;
    rig.stop().await;
}

#[tokio::test]
async fn an_order_on_the_machine_survives_a_restart_and_keeps_its_parts() {
    let regs = Arc::new(Registers::default());
    let addr = start_machine(regs.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let rig = Rig::start_on(dir, store, regs, addr, view(MachineState::Idle, 100)).await;
    rig.send(
        json!({"type": "order", "order_id": "WO-R", "machine": "press07",
                    "product": "P-4711", "quantity": 5}),
    )
    .await;
    rig.wait_for("WO-R", OrderState::Released).await;
    rig.set_view(MachineState::Running, 102);
    rig.wait_for("WO-R", OrderState::Running).await;
    // Let the 2 parts be recorded before the agent stops.
    for _ in 0..200 {
        let e = events_of(&rig.store, "WO-R");
        if e.last().is_some_and(|e| e["produced"] == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A new task on the same store: everything it knows comes from SQLite.
    // (Reopening the file itself is covered in orders_intake.)
    let store = rig.store.clone();
    let (dir, regs) = rig.stop().await;
    // The engine restarted too: its totals begin again at 0.
    let rig = Rig::start_on(dir, store, regs, addr, view(MachineState::Running, 0)).await;
    assert_eq!(rig.state_of("WO-R").await, Some(OrderState::Running));
    // Views coalesce: wait until the task has taken the reset totals as its
    // new baseline before the machine counts on.
    for _ in 0..500 {
        let row = rig.store.call(|c| book::latest(c, "WO-R")).await.unwrap();
        if row.and_then(|r| r.base).is_some_and(|b| b.produced == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rig.set_view(MachineState::Running, 3);
    rig.wait_for("WO-R", OrderState::Completed).await;
    let done = events_of(&rig.store, "WO-R").last().cloned().unwrap();
    assert_eq!(done["produced"], 5, "2 before the restart + 3 after");
    let released: usize = events_of(&rig.store, "WO-R")
        .iter()
        .filter(|e| e["state"] == "released")
        .count();
    assert_eq!(released, 1, "never released twice");
    rig.stop().await;
}

#[tokio::test]
async fn an_orders_ideal_cycle_time_goes_to_the_engine_while_it_is_on_the_machine() {
    let rig = Rig::start().await;
    let mut timed = order("WO-T", "P-4711", 2, 1);
    timed["ideal_cycle_s"] = json!(9.5);
    rig.send(json!({"type": "plan", "plan_id": "HJ-T", "orders": [timed, order("WO-U", "P-4712", 1, 2)]}))
        .await;
    rig.wait_for("WO-T", OrderState::Released).await;
    let told = |rig: &Rig| rig.ideal_cycles.lock().unwrap().clone();
    // The engine is told just after the release is recorded.
    for _ in 0..500 {
        if !told(&rig).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(told(&rig), [("press07".to_string(), Some(9.5))]);

    rig.set_view(MachineState::Running, 102);
    rig.wait_for("WO-T", OrderState::Completed).await;
    rig.set_view(MachineState::Idle, 102);
    // WO-U has no cycle time of its own: the config's applies again.
    rig.wait_for("WO-U", OrderState::Released).await;
    for _ in 0..500 {
        if told(&rig).len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        told(&rig),
        [
            ("press07".to_string(), Some(9.5)),
            ("press07".to_string(), None),
            ("press07".to_string(), None),
        ],
        "set at release, dropped at completion, none for an order without one"
    );
    rig.stop().await;
}

/// The disk is full while this is set: every status write fails as SQLite
/// fails on a full disk, and the book's transaction rolls back with it.
static DISK_FULL: AtomicBool = AtomicBool::new(false);

fn outbox_on_a_disk_that_may_be_full(
    _conn: &rusqlite::Connection,
    _msg: &linegate::uplink::outbox::Outgoing,
) -> Result<u64, linegate::store::StoreError> {
    if DISK_FULL.load(Ordering::SeqCst) {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        )
        .into());
    }
    Ok(0)
}

#[tokio::test]
async fn order_changes_wait_out_a_full_disk_in_order_and_messages_are_acked_only_once_committed() {
    let regs = Arc::new(Registers::default());
    let addr = start_machine(regs.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let rig = Rig::start_with(
        dir,
        store,
        regs,
        addr,
        view(MachineState::Idle, 100),
        outbox_on_a_disk_that_may_be_full,
    )
    .await;
    let single = |id: &str, product: &str, quantity: u32, sequence: i64| {
        let mut o = order(id, product, quantity, sequence);
        o["type"] = json!("order");
        o
    };
    rig.send(single("WO-F", "P-4711", 3, 1)).await;
    rig.wait_for("WO-F", OrderState::Released).await;

    // The disk fills: the machine runs the order to its end meanwhile.
    DISK_FULL.store(true, Ordering::SeqCst);
    for produced in [101, 102, 103] {
        rig.set_view(MachineState::Running, produced);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.set_view(MachineState::Idle, 103);
    // A new order arrives while nothing can be committed: not acknowledged.
    let (tx, mut committed) = oneshot::channel();
    rig.inbox
        .send(OrderMessage {
            payload: single("WO-G", "P-4712", 2, 2).to_string().into_bytes(),
            committed: tx,
        })
        .await
        .unwrap();
    rig.settle().await;
    assert!(
        matches!(
            committed.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ),
        "an order that is not committed is not acknowledged (nor given up)"
    );
    assert_eq!(rig.state_of("WO-F").await, Some(OrderState::Released));
    assert_eq!(rig.state_of("WO-G").await, None);
    assert!(!rig.task.is_finished(), "the order task runs on");

    // Space is back: everything held is committed, in order, and acked.
    DISK_FULL.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), committed)
        .await
        .expect("acknowledged once committed")
        .expect("committed fired");
    rig.wait_for("WO-F", OrderState::Completed).await;
    let events = events_of(&rig.store, "WO-F");
    let produced: Vec<u64> = events
        .iter()
        .filter(|e| e["state"] == "running" || e["state"] == "completed")
        .filter_map(|e| e["produced"].as_u64())
        .collect();
    assert_eq!(
        produced,
        [1, 2, 3],
        "every view of the machine while the disk was full, in order: {events:?}"
    );
    assert_eq!(events.last().unwrap()["state"], "completed");
    // The next order goes on once the book is current again.
    rig.wait_for("WO-G", OrderState::Released).await;
    assert_eq!(rig.holding(202), 12, "product code of P-4712");
    assert_eq!(rig.store.health().unstored().lost_events, 0);
    rig.stop().await;
}
