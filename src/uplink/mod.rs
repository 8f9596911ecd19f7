//! The uplink to the central MQTT broker: store-and-forward, nothing lost.
//! Owns the outbox table, the contract payloads, telemetry by exception and
//! the connection. It never reads machines and never decides about orders:
//! producers commit messages with [`outbox::enqueue`] and wake the uplink;
//! order commands are handed to the orders task and acknowledged to the
//! broker only after the orders task says they are committed.
//!
//! - [`outbox`]: the SQLite table every upward message goes through.
//! - [`fresh`]: rows just committed, handed to the connection in memory.
//! - [`acked`]: PUBACKed seqs, deleted by the recorder's next commit.
//! - [`message`]: contract payloads and the envelope.
//! - [`telemetry`]: the deadband/heartbeat filter (pure).
//! - [`pacing`]: reconnect backoff and the historical rate limit (pure).
//! - [`session`]: the persisted connection counter of the status messages.
//! - [`status`]: the copy of [`UplinkStats`] in the store, for the CLI.
//! - [`tls`]: URL, rustls configuration, password.
//! - `connection`: one connection's life (birth, drain, orders, goodbye).
//!
//! [`run_uplink`] is a loop over connections: connect, serve until lost,
//! wait a jittered, growing backoff, connect again with a fresh client; each
//! connection starts draining from the oldest row again.

pub mod acked;
mod connection;
pub mod fresh;
pub mod message;
pub mod outbox;
pub mod pacing;
pub mod session;
pub mod status;
pub mod telemetry;
pub mod tls;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::{MqttVersion, UplinkConfig};
use crate::orders::OrderMessage;
use crate::store::{Store, StoreError};
use crate::systemd::Heartbeat;

pub use acked::AckedRows;
pub use connection::{MAX_PACKET_BYTES, WINDOW};
pub use fresh::FreshRows;
pub use message::GatewayInfo;
pub use outbox::{enqueue, MessageClass, OutboxPolicy, Outgoing};

/// Errors of the uplink. `Url` comes from the config and stops the uplink
/// at start; the file errors (CA, certificate, key, password) fail one
/// connection attempt, which is retried (credentials get rotated).
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("uplink.url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("uplink.ca_file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("uplink.client_cert_file {}: {reason}", path.display())]
    ClientCert { path: PathBuf, reason: String },
    #[error("uplink.client_key_file {}: {reason}", path.display())]
    ClientKey { path: PathBuf, reason: String },
    #[error("uplink TLS: {0}")]
    Tls(String),
    #[error("uplink.password_file {}: cannot read: {reason}", path.display())]
    PasswordFile { path: PathBuf, reason: String },
    #[error("uplink.password_env: environment variable {name} is not set")]
    PasswordEnv { name: String },
    #[error("uplink: a password is set but uplink.username is missing")]
    PasswordWithoutUser,
    #[error("uplink: {0}")]
    Store(#[from] StoreError),
}

/// Live figures of the uplink, for `status`, logs and metrics. The outbox
/// figures (`depth`, `drops`) are copies of the outbox's own counters,
/// refreshed after every batch of deletions and every connection attempt.
#[derive(Debug, Default)]
pub struct UplinkStats {
    pub connected: AtomicBool,
    /// Messages handed to the MQTT client (resends included).
    pub sent: AtomicU64,
    /// Messages PUBACKed by the broker.
    pub acked: AtomicU64,
    /// MQTT 5 PUBACKs with a failure reason (the row is kept and resent).
    pub rejected: AtomicU64,
    /// Successful connects.
    pub connects: AtomicU64,
    /// Successful connects after the first.
    pub reconnects: AtomicU64,
    /// Telemetry dropped by the outbox cap since the store was created.
    pub drops: AtomicU64,
    /// Messages waiting in the outbox.
    pub depth: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`UplinkStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UplinkSnapshot {
    pub connected: bool,
    pub sent: u64,
    pub acked: u64,
    pub rejected: u64,
    pub reconnects: u64,
    pub drops: u64,
    pub depth: u64,
    pub last_error: Option<String>,
}

impl UplinkStats {
    pub fn snapshot(&self) -> UplinkSnapshot {
        UplinkSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            drops: self.drops.load(Ordering::Relaxed),
            depth: self.depth.load(Ordering::Relaxed),
            last_error: self.last_error(),
        }
    }

    /// Why the last connection attempt failed or was lost, if it was.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().map(|e| e.clone()).unwrap_or(None)
    }

    fn set_last_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = e;
        }
    }

    fn set_counts(&self, c: outbox::OutboxCounts) {
        self.depth.store(c.depth, Ordering::Relaxed);
        self.drops.store(c.dropped, Ordering::Relaxed);
    }
}

/// What went wrong with a connection, for its description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Tls,
    /// The CONNACK refused the username/password (or their absence).
    Credentials,
    Other,
}

/// Turns a connection error into a message a user can act on.
type DescribeError = Arc<dyn Fn(&str, ErrorKind) -> String + Send + Sync>;

/// Everything needed to open a connection, checked once at start. The
/// files behind it (CA, client certificate and key, password) are read
/// again for every connection: see [`ConnectSettings::credentials`].
#[derive(Clone)]
pub(crate) struct ConnectSettings {
    addr: tls::BrokerAddr,
    client_id: String,
    keepalive_s: u64,
    protocol: MqttVersion,
    /// Where the TLS material and the password come from.
    uplink: UplinkConfig,
    historical_per_s: u32,
    describe_error: DescribeError,
}

/// What one connection proves itself with, read from the files just before it.
pub(crate) struct Credentials {
    /// `None` for plain TCP.
    transport: Option<rumqttc::Transport>,
    /// Username and password.
    login: Option<(String, String)>,
}

impl ConnectSettings {
    fn new(cfg: &UplinkConfig, gateway_id: &str) -> Result<ConnectSettings, UplinkError> {
        let addr = tls::parse_url(&cfg.url)?;
        let where_ = format!("{}:{}", addr.host, addr.port);
        let ca = tls::ca_description(cfg);
        let login = match (&cfg.username, &cfg.password_file, &cfg.password_env) {
            (None, _, _) => "no uplink.username set".to_string(),
            (Some(u), Some(path), _) => format!(
                "uplink.username {u:?}, password from uplink.password_file {}",
                path.display()
            ),
            (Some(u), None, Some(name)) => {
                format!("uplink.username {u:?}, password from uplink.password_env {name}")
            }
            (Some(u), None, None) => format!("uplink.username {u:?}, no password set"),
        };
        let describe_error: DescribeError = Arc::new(move |e: &str, kind: ErrorKind| {
            match kind {
            ErrorKind::Tls => format!("TLS with broker {where_} failed: {e} (trusted CA: {ca}; check the broker's certificate, its host name and uplink.client_cert_file)"),
            ErrorKind::Credentials => format!("broker {where_} refused the credentials: {e} ({login}; check uplink.username and the password)"),
            ErrorKind::Other => format!("broker {where_}: {e}"),
        }
        });
        Ok(ConnectSettings {
            addr,
            client_id: cfg
                .client_id
                .clone()
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| format!("linegate-{gateway_id}")),
            keepalive_s: cfg.keepalive_s.max(5),
            protocol: cfg.protocol,
            uplink: cfg.clone(),
            historical_per_s: cfg.historical_per_s,
            describe_error,
        })
    }

    /// Read the TLS material and the password now, for one connection. A
    /// file missing or empty at this moment (a credential being rotated)
    /// fails this attempt only; the next attempt reads it again.
    pub(crate) fn credentials(&self) -> Result<Credentials, UplinkError> {
        let transport = if self.addr.tls {
            let config = tls::client_config(&self.uplink)?;
            Some(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
            ))
        } else {
            None
        };
        let login = match (&self.uplink.username, tls::password(&self.uplink)?) {
            (Some(u), p) => Some((u.clone(), p.unwrap_or_default())),
            (None, Some(_)) => return Err(UplinkError::PasswordWithoutUser),
            (None, None) => None,
        };
        Ok(Credentials { transport, login })
    }
}

/// Check an uplink config without connecting (for `check-config`): the URL,
/// then every file it names (CA, client certificate and key, password) is
/// read as a connection would. Every problem found, empty when usable.
pub fn check(cfg: &UplinkConfig) -> Vec<UplinkError> {
    let settings = match ConnectSettings::new(cfg, "check") {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    if settings.addr.tls {
        if let Err(e) = tls::client_config(cfg) {
            problems.push(e);
        }
    }
    if let Err(e) = tls::password(cfg) {
        problems.push(e);
    }
    problems
}

/// Run the uplink until `shutdown`: connect with backoff, publish the birth,
/// drain the outbox, take order commands, say goodbye.
///
/// Wiring: call [`outbox::configure`] once at start (the cap, link down)
/// before producers enqueue; producers call `wake.notify_one()` after each
/// commit that enqueued rows, or hand the committed rows to `fresh` (which
/// wakes it too: see [`fresh`]). Returns an error at once for a bad URL and
/// when the store has stopped; connection failures, and a CA, certificate,
/// key or password file that cannot be read, are logged, kept in `stats`,
/// and retried.
///
/// `heartbeat` beats on every turn of the connection loops and on its own
/// timer (also while waiting for a broker that is down, or in the reconnect
/// backoff). It is retired on a clean end; an uplink that stopped with an
/// error leaves it silent, so the watchdog notices.
#[allow(clippy::too_many_arguments)]
pub async fn run_uplink(
    cfg: UplinkConfig,
    gateway: GatewayInfo,
    store: Store,
    wake: Arc<Notify>,
    fresh: Arc<FreshRows>,
    acked: Arc<AckedRows>,
    orders: mpsc::Sender<OrderMessage>,
    stats: Arc<UplinkStats>,
    heartbeat: Heartbeat,
    shutdown: CancellationToken,
) -> Result<(), UplinkError> {
    let settings = ConnectSettings::new(&cfg, &gateway.id)?;
    for w in crate::config::uplink_warnings(&cfg) {
        tracing::warn!("{w}");
    }
    // A store that cannot write now (a full disk) is no reason to stop: the
    // serve loop marks the link down again before every connect.
    let mut store_trouble = StoreTrouble::default();
    store_trouble.note(store.call(|c| outbox::set_link_up(c, false)).await)?;

    let (acked_tx, acked_rx) = mpsc::unbounded_channel();
    let deleter = tokio::spawn(delete_acked(store.clone(), acked_rx, acked, stats.clone()));
    let shared = connection::Shared {
        settings,
        gateway,
        store: store.clone(),
        wake,
        fresh,
        orders,
        stats: stats.clone(),
        shutdown: shutdown.clone(),
        acked: acked_tx,
        heartbeat,
        retained: Default::default(),
    };
    let result = serve(&shared, &cfg, store_trouble).await;

    stats.connected.store(false, Ordering::Relaxed);
    let connection::Shared {
        heartbeat, acked, ..
    } = shared;
    // The deleter ends once its channel closes.
    drop(acked);
    let _ = deleter.await;
    let _ = store.call(|c| outbox::set_link_up(c, false)).await;
    if result.is_ok() {
        heartbeat.retire();
    }
    result
}

/// Store errors of the uplink's own bookkeeping (marking the link down,
/// reserving status seqs): none ends the uplink. Logged once per change of
/// condition; only a stopped store thread (the agent is stopping) ends it.
#[derive(Debug, Default)]
struct StoreTrouble {
    /// The error of the current run of failures.
    failing: Option<String>,
}

impl StoreTrouble {
    /// `Ok(Some(v))` when it worked, `Ok(None)` to retry later,
    /// `Err` only when the store thread has stopped.
    fn note<T>(&mut self, r: Result<T, StoreError>) -> Result<Option<T>, UplinkError> {
        match r {
            Ok(v) => {
                if let Some(was) = self.failing.take() {
                    tracing::info!(was = %was, "uplink: the store works again");
                }
                Ok(Some(v))
            }
            Err(StoreError::Closed) => Err(StoreError::Closed.into()),
            Err(e) => {
                let e = e.to_string();
                if self.failing.as_deref() != Some(e.as_str()) {
                    tracing::error!(error = %e, "uplink: store error; retrying with backoff (the uplink keeps running)");
                    self.failing = Some(e);
                }
                Ok(None)
            }
        }
    }
}

async fn serve(
    shared: &connection::Shared,
    cfg: &UplinkConfig,
    mut trouble: StoreTrouble,
) -> Result<(), UplinkError> {
    let mut backoff = pacing::Backoff::new(cfg.backoff_min_ms, cfg.backoff_max_ms);
    loop {
        if shared.shutdown.is_cancelled() {
            return Ok(());
        }
        if let Ok(k) = shared.store.call(|c| outbox::counts(c)).await {
            shared.stats.set_counts(k);
        }
        // The session is committed before the CONNECT (the will carries it);
        // without it there is no connecting: a receiver could take a late
        // will for the current one (see `session`). A store that cannot
        // commit it is waited out with backoff, never the end of the uplink.
        let Some(n) = trouble.note(shared.store.call(|c| session::begin(c)).await)? else {
            shared.stats.set_last_error(trouble.failing.clone());
            if wait_backoff(shared, &mut backoff).await {
                return Ok(());
            }
            continue;
        };
        match connection::run(shared, n).await {
            Ok(connection::Ended::Shutdown) => return Ok(()),
            Ok(connection::Ended::Lost {
                connected,
                session_spent,
                healthy,
                error,
            }) => {
                if !session_spent {
                    // Not given back, the number is skipped: harmless.
                    let given = shared.store.call(move |c| session::give_back(c, n)).await;
                    if let Err(e) = given {
                        tracing::warn!(error = %e, session = n, "could not give back an unused session number");
                    }
                }
                // Logged once the number is given back: what the log says has
                // happened is what the store holds.
                if connected {
                    tracing::warn!(error = %error, session = n, "uplink connection lost");
                } else {
                    tracing::warn!(error = %error, "uplink cannot connect");
                }
                shared.stats.set_last_error(Some(error));
                if healthy {
                    backoff.reset();
                }
            }
            Err(StoreError::Closed) => return Err(StoreError::Closed.into()),
            Err(e) => {
                // The session stays spent (a CONNACK may have come); the next
                // attempt takes a new one.
                shared.stats.set_last_error(Some(e.to_string()));
                trouble.note::<()>(Err(e))?;
            }
        }
        shared.stats.connected.store(false, Ordering::Relaxed);
        trouble.note(shared.store.call(|c| outbox::set_link_up(c, false)).await)?;
        if wait_backoff(shared, &mut backoff).await {
            return Ok(());
        }
    }
}

/// Wait a jittered, growing backoff, beating; true when shutdown came first.
async fn wait_backoff(shared: &connection::Shared, backoff: &mut pacing::Backoff) -> bool {
    let delay = backoff.next_delay(rand::random::<f64>());
    tracing::debug!(
        delay_ms = delay.as_millis() as u64,
        "uplink reconnect backoff"
    );
    let retry_at = tokio::time::Instant::now() + delay;
    let mut beat = shared.heartbeat.ticker();
    loop {
        shared.heartbeat.beat();
        tokio::select! {
            _ = shared.shutdown.cancelled() => return true,
            _ = tokio::time::sleep_until(retry_at) => return false,
            _ = beat.tick() => {}
        }
    }
}

/// Delete PUBACKed rows: the seqs wait in `acked` for the recorder's next
/// commit, which deletes their rows with its own work; those it did not
/// take within [`acked::ACK_LINGER`] (a quiet line, a store that failed
/// the commit) are deleted here, in a transaction of their own. What is
/// still waiting when the connection's channel closes is deleted before
/// this task ends.
async fn delete_acked(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<u64>,
    acked: Arc<AckedRows>,
    stats: Arc<UplinkStats>,
) {
    let mut open = true;
    let mut failing = false;
    let mut forgotten_logged = acked.forgotten();
    let mut forgetting_said = false;
    while open {
        // Wait for a PUBACK, or for seqs a failed commit gave back.
        tokio::select! {
            seq = rx.recv() => match seq {
                Some(seq) => acked.push(seq),
                None => open = false,
            },
            _ = acked.returned() => {}
        }
        let until = tokio::time::Instant::now() + acked::ACK_LINGER;
        while open {
            tokio::select! {
                seq = rx.recv() => match seq {
                    Some(seq) => acked.push(seq),
                    None => open = false,
                },
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        if let Some(k) = acked.take_counts() {
            stats.set_counts(k);
        }
        let forgotten = acked.forgotten();
        if forgotten > forgotten_logged {
            // Said once per uplink run; the count grows in the debug log.
            if !forgetting_said {
                tracing::warn!(
                    forgotten,
                    "acknowledged outbox rows waited too long for their deletion (the store cannot delete); the oldest are kept and will be sent again (duplicates, same seq)"
                );
                forgetting_said = true;
            } else {
                tracing::debug!(forgotten, "acknowledged outbox rows forgotten");
            }
            forgotten_logged = forgotten;
        }
        let seqs = acked.take();
        if seqs.is_empty() {
            continue;
        }
        let back = acked.clone();
        let result = store
            .call(move |c| match outbox::delete_acked(c, &seqs) {
                Ok(k) => Ok(k),
                Err(e) => {
                    // They wait for the next commit or the next try.
                    back.give_back(seqs);
                    Err(e)
                }
            })
            .await;
        match result {
            Ok(k) => {
                if failing {
                    tracing::info!("acknowledged outbox rows are deleted again");
                }
                failing = false;
                stats.set_counts(k);
            }
            // The rows stay, and are deleted later or sent again: a
            // duplicate, never a loss.
            Err(StoreError::Closed) => break,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "could not delete acknowledged outbox rows; trying again (until then a restart would send them again)");
                }
                failing = true;
                // Not at once again: after a pause, or the next commit.
                tokio::time::sleep(acked::ACK_LINGER).await;
            }
        }
    }
}
