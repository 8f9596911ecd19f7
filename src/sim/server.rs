//! The running simulator: for each machine a Modbus TCP server (tokio-modbus)
//! and a clock task that lets the machine's time pass, and one writer task
//! that appends the ground truth to its JSON-lines file.
//!
//! A machine's model sits behind a mutex shared by its server (which brings
//! the model up to date before answering) and its clock (which sleeps until
//! the model's next event, or until a request wakes it, and passes the
//! state changes on to the truth writer). Time is measured from one start
//! instant for the whole line; a change's wall-clock time is the line's start
//! plus the change's offset, so the truth is exact however late a task wakes.
//! Nothing here decides anything about a machine: that is `machine`.

use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::machine::{MachineModel, MachineSetup, TruthChange};
use super::{machine_id, SimError, SimLine, SimMachine, SimOptions};

/// One machine as its server and its clock see it.
struct Shared {
    id: String,
    model: Mutex<MachineModel>,
    /// Wakes the clock after a request changed the model (a new order, or
    /// state changes the request's catch-up produced).
    wake: Notify,
    /// The machine's wire is cut: requests get no reply (see [`Wires`]).
    silent: Arc<AtomicBool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, MachineModel> {
        // A panic while holding the lock cannot leave the model half-updated
        // in a way worse than a stale read; keep serving.
        self.model.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The line's common time base.
#[derive(Debug, Clone, Copy)]
struct Epoch {
    instant: Instant,
    wall: DateTime<Utc>,
}

impl Epoch {
    fn now() -> Epoch {
        Epoch {
            instant: Instant::now(),
            wall: Utc::now(),
        }
    }

    fn wall_at(&self, offset: std::time::Duration) -> String {
        let offset = chrono::Duration::from_std(offset).unwrap_or(chrono::Duration::zero());
        (self.wall + offset).to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// The silence switches of a line's machines (a pulled cable, a device
/// rebooting): a silent machine's server takes requests and never answers,
/// while the machine itself goes on with its schedule. Each switch is
/// written to the truth file, so the device's own record says when it was
/// silent.
#[derive(Debug, Clone, Default)]
pub(super) struct Wires {
    machines: Vec<(String, Arc<AtomicBool>)>,
    epoch: Option<Epoch>,
    truth: Option<mpsc::UnboundedSender<String>>,
}

/// A silence switch in the truth file.
#[derive(Debug, Serialize)]
struct SilenceLine<'a> {
    machine: &'a str,
    silent: bool,
    at: String,
}

impl Wires {
    /// Switch `machine` silent or answering; the time of the switch, or
    /// `None` for a machine the line does not have.
    pub(super) fn set_silent(&self, machine: &str, silent: bool) -> Option<DateTime<Utc>> {
        let (_, flag) = self.machines.iter().find(|(id, _)| id == machine)?;
        let epoch = self.epoch?;
        let offset = epoch.instant.elapsed();
        flag.store(silent, Ordering::SeqCst);
        let at = epoch.wall_at(offset);
        tracing::info!(machine, silent, "simulated wire switched");
        if let Some(truth) = &self.truth {
            let line = SilenceLine {
                machine,
                silent,
                at: at.clone(),
            };
            if let Ok(mut text) = serde_json::to_string(&line) {
                text.push('\n');
                let _ = truth.send(text);
            }
        }
        DateTime::parse_from_rfc3339(&at)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// One line of the truth file.
#[derive(Debug, Serialize)]
struct TruthLine<'a> {
    machine: &'a str,
    state: &'a str,
    at: String,
    reason: Option<&'a str>,
}

pub(super) async fn serve(
    opts: SimOptions,
    shutdown: CancellationToken,
) -> Result<SimLine, SimError> {
    // Bind every port before starting anything, so a failure leaves nothing running.
    let mut listeners = Vec::with_capacity(opts.machines);
    for index in 0..opts.machines {
        let id = machine_id(index);
        let port = if opts.base_port == 0 {
            0
        } else {
            opts.base_port + index as u16
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind {
                machine: id.clone(),
                addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            machine: id.clone(),
            addr,
            source,
        })?;
        listeners.push((SimMachine { id, addr }, listener));
    }

    let mut tasks = Vec::new();
    let truth = match &opts.truth {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| SimError::Truth {
                    path: path.clone(),
                    source,
                })?;
            let (tx, rx) = mpsc::unbounded_channel();
            tasks.push(tokio::spawn(write_truth(
                tokio::fs::File::from_std(file),
                rx,
                path.clone(),
            )));
            Some(tx)
        }
        None => None,
    };

    let epoch = Epoch::now();
    let mut wires = Wires {
        machines: Vec::with_capacity(listeners.len()),
        epoch: Some(epoch),
        truth: truth.clone(),
    };
    let mut machines = Vec::with_capacity(listeners.len());
    for (index, (machine, listener)) in listeners.into_iter().enumerate() {
        let shared = Arc::new(Shared {
            id: machine.id.clone(),
            model: Mutex::new(MachineModel::new(MachineSetup {
                index,
                seed: opts.seed,
                speed: opts.speed,
                honour_orders: opts.honour_orders,
            })),
            wake: Notify::new(),
            silent: Arc::new(AtomicBool::new(false)),
        });
        wires
            .machines
            .push((machine.id.clone(), shared.silent.clone()));
        let span = tracing::info_span!("sim", machine = %machine.id);
        tasks.push(tokio::spawn(
            run_server(listener, shared.clone(), epoch, shutdown.clone()).instrument(span.clone()),
        ));
        tasks.push(tokio::spawn(
            run_clock(shared, epoch, truth.clone(), shutdown.clone()).instrument(span),
        ));
        tracing::info!(machine = %machine.id, addr = %machine.addr, "simulated machine listening");
        machines.push(machine);
    }
    Ok(SimLine {
        machines,
        speed: opts.speed,
        tasks,
        wires,
    })
}

/// Serve Modbus TCP until shutdown; every connection gets its own service
/// over the same machine.
async fn run_server(
    listener: TcpListener,
    shared: Arc<Shared>,
    epoch: Epoch,
    shutdown: CancellationToken,
) {
    let server = Server::new(listener);
    let on_connected = |stream, _peer| {
        let service = MachineService {
            shared: shared.clone(),
            epoch,
        };
        async move { Ok(Some((service, stream))) }
    };
    let id = shared.id.clone();
    let on_error = move |err: std::io::Error| {
        tracing::debug!(machine = %id, "connection ended: {err}");
    };
    tokio::select! {
        result = server.serve(&on_connected, on_error) => {
            if let Err(err) = result {
                tracing::warn!(machine = %shared.id, "simulated machine stopped listening: {err}");
            }
        }
        () = shutdown.cancelled() => {}
    }
}

/// Let the machine's time pass: sleep until its next event (or a request),
/// bring it up to date, pass its state changes to the truth file.
async fn run_clock(
    shared: Arc<Shared>,
    epoch: Epoch,
    truth: Option<mpsc::UnboundedSender<String>>,
    shutdown: CancellationToken,
) {
    loop {
        let (changes, next) = {
            let mut model = shared.lock();
            model.advance_to(epoch.instant.elapsed());
            (model.take_changes(), model.next_event())
        };
        for change in changes {
            report(&shared.id, &change, epoch, truth.as_ref());
        }
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(epoch.instant + at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = shared.wake.notified() => {}
            () = sleep => {}
        }
    }
}

fn report(
    id: &str,
    change: &TruthChange,
    epoch: Epoch,
    truth: Option<&mpsc::UnboundedSender<String>>,
) {
    tracing::debug!(machine = %id, state = change.state, reason = ?change.reason, "state change");
    let Some(truth) = truth else {
        return;
    };
    let line = TruthLine {
        machine: id,
        state: change.state,
        at: epoch.wall_at(change.at),
        reason: change.reason.as_deref(),
    };
    match serde_json::to_string(&line) {
        // A closed channel means the writer gave up after an error it logged.
        Ok(mut text) => {
            text.push('\n');
            let _ = truth.send(text);
        }
        Err(err) => tracing::warn!(machine = %id, "cannot encode a truth line: {err}"),
    }
}

/// Append truth lines as they come, flushing each so readers see it at once.
/// Ends when every clock has ended.
async fn write_truth(
    mut file: tokio::fs::File,
    mut lines: mpsc::UnboundedReceiver<String>,
    path: PathBuf,
) {
    while let Some(line) = lines.recv().await {
        let written = async {
            file.write_all(line.as_bytes()).await?;
            file.flush().await
        }
        .await;
        if let Err(err) = written {
            tracing::warn!(path = %path.display(), "cannot write the truth file, no more truth is recorded: {err}");
            return;
        }
    }
}

/// The Modbus side of one machine, one per connection.
struct MachineService {
    shared: Arc<Shared>,
    epoch: Epoch,
}

impl Service for MachineService {
    type Request = Request<'static>;
    /// `None`: no reply at all (a silent machine).
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, request: Request<'static>) -> Self::Future {
        if self.shared.silent.load(Ordering::SeqCst) {
            return ready(Ok(None));
        }
        let is_write = matches!(
            request,
            Request::WriteSingleCoil(..)
                | Request::WriteMultipleCoils(..)
                | Request::WriteSingleRegister(..)
                | Request::WriteMultipleRegisters(..)
        );
        let (reply, wake) = {
            let mut model = self.shared.lock();
            model.advance_to(self.epoch.instant.elapsed());
            let reply = model.handle(&request);
            (reply, is_write || model.has_changes())
        };
        if let Err(code) = &reply {
            tracing::debug!(machine = %self.shared.id, ?request, ?code, "exception reply");
        }
        if wake {
            self.shared.wake.notify_one();
        }
        ready(reply.map(Some))
    }
}
