//! The line console: the agent's HTTP surface. It owns the local web pages
//! (line, machine, orders, gateway), the JSON API they read (`/api/v1/...`),
//! the Prometheus text at `/metrics` and `/healthz`, and how that surface is
//! guarded (HTTP basic auth from `console.password_file`, HTTPS with rustls).
//!
//! It is read-only, by construction: every route is a `GET`; any other
//! method gets `405 Method Not Allowed`. It reads what the agent already
//! keeps (the live [`Board`], the uplink's [`UplinkStats`], the watchdog's
//! [`Liveness`], the running buses' counters) and what `linegate status`,
//! `report` and `orders` read from the store, through the store's own
//! thread. It must never write to a machine, an order or the store, and it
//! never decides anything about them: it only shows.
//!
//! All assets (HTML, CSS, JavaScript) are compiled into the binary: the line
//! has no internet, so there is no CDN and no web font. The pages poll the
//! API once a second; nothing is pushed.
//!
//! A console that cannot start (the port is taken, the password or
//! certificate file cannot be read) logs why and the agent runs on without
//! it: the console is a window on the line, never a reason to stop reading it.

pub mod api;
pub mod metrics;
mod pages;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::agent::Board;
use crate::config::{Config, ConsoleConfig};
use crate::source::modbus::bus::LatencySnapshot;
use crate::store::bus_stats::BusCounts;
use crate::store::Store;
use crate::systemd::Liveness;
use crate::uplink::UplinkStats;

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console.listen: {0}")]
    Listen(String),
    #[error("console.listen {addr}: cannot listen: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("console.password_file {}: {reason}", path.display())]
    PasswordFile { path: PathBuf, reason: String },
    #[error("console.tls_cert_file {}: {reason}", path.display())]
    TlsCert { path: PathBuf, reason: String },
    #[error("console.tls_key_file {}: {reason}", path.display())]
    TlsKey { path: PathBuf, reason: String },
    #[error("console TLS: {0}")]
    Tls(String),
}

/// One running bus as the console sees it: its counters now and, for a
/// Modbus bus, its reply latency.
#[derive(Debug, Clone)]
pub struct LiveBus {
    pub counts: BusCounts,
    pub latency: Option<LatencySnapshot>,
}

/// Reads the running buses' counters when asked (the agent owns them).
pub type BusReader = Arc<dyn Fn() -> Vec<LiveBus> + Send + Sync>;

/// Everything the console reads, handed over by the agent.
#[derive(Clone)]
pub struct Sources {
    /// The running config (follows reloads).
    pub config: watch::Receiver<Arc<Config>>,
    /// The file it was loaded from, if any (shown on the gateway page).
    pub config_path: Option<PathBuf>,
    /// The store, for the history, periods, orders and outbox counts.
    pub store: Store,
    /// Each machine's live state and last readings.
    pub board: Board,
    /// The uplink's live figures.
    pub uplink: Arc<UplinkStats>,
    /// The loops the watchdog watches.
    pub liveness: Liveness,
    /// The running buses' counters.
    pub buses: BusReader,
    pub started_at: DateTime<Utc>,
}

/// The URL the console is reached at with `config`, or `None` when it is off
/// (or `listen` is invalid). An unspecified address (`0.0.0.0`) is shown as
/// loopback, which reaches it from this machine.
pub fn url(config: &ConsoleConfig) -> Option<String> {
    let addr = crate::config::console_addr(config).ok()??;
    let scheme = if config.tls_cert_file.is_some() {
        "https"
    } else {
        "http"
    };
    let host = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    Some(format!("{scheme}://{host}:{}/", addr.port()))
}

/// Start the console as configured in `sources.config`, until `stop`.
/// `None` when it is off or could not start (logged: the agent runs on).
pub fn start(sources: Sources, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let config = sources.config.borrow().console.clone();
    let addr = match crate::config::console_addr(&config) {
        Ok(Some(a)) => a,
        Ok(None) => return None,
        Err(e) => {
            error!("{}", ConsoleError::Listen(e));
            return None;
        }
    };
    for w in crate::config::console_warnings(&config) {
        warn!("{w}");
    }
    let guard = match Guard::from_config(&config) {
        Ok(g) => g,
        Err(e) => {
            error!(error = %e, "console not started; the agent runs on without it");
            return None;
        }
    };
    let tls = match config
        .tls_cert_file
        .as_ref()
        .zip(config.tls_key_file.as_ref())
    {
        Some((cert, key)) => match tls_acceptor(cert, key) {
            Ok(a) => Some(a),
            Err(e) => {
                error!(error = %e, "console not started; the agent runs on without it");
                return None;
            }
        },
        None => None,
    };
    let app = router(sources, guard);
    Some(tokio::spawn(async move {
        let listener = match std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std)
        {
            Ok(l) => l,
            Err(e) => {
                let e = ConsoleError::Bind {
                    addr,
                    reason: e.to_string(),
                };
                error!(error = %e, "console not started; the agent runs on without it");
                return;
            }
        };
        info!(url = %url(&config).unwrap_or_default(), "console listening");
        serve(listener, tls, app, stop).await;
    }))
}

/// At most this many connections are served at once; more wait in the
/// kernel's queue (a console is for a few people, not a crowd).
const MAX_CONNECTIONS: usize = 64;
/// A TLS handshake or a request head that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept connections and serve each over HTTP/1.1 until `stop`; then every
/// open connection is dropped.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept(), if connections.len() < MAX_CONNECTIONS => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        warn!(error = %e, "console: cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let app = app.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let http = hyper::server::conn::http1::Builder::new()
                        .header_read_timeout(HANDSHAKE_TIMEOUT)
                        .timer(hyper_util::rt::TokioTimer::new())
                        .to_owned();
                    let result = match tls {
                        None => {
                            http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                                .await
                        }
                        Some(acceptor) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(stream)) => {
                                    http.serve_connection(
                                        hyper_util::rt::TokioIo::new(stream),
                                        service,
                                    )
                                    .await
                                }
                                Ok(Err(e)) => {
                                    debug!(peer = %peer, error = %e, "console: TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    debug!(peer = %peer, "console: TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                    };
                    if let Err(e) = result {
                        debug!(peer = %peer, error = %e, "console: connection ended with an error");
                    }
                });
            }
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Who may look: nobody needs a password (loopback without
/// `password_file`), or the one user with its password.
#[derive(Clone)]
pub struct Guard {
    /// `Basic base64(user:password)`, as the browser sends it.
    expected: Option<Arc<str>>,
}

impl Guard {
    pub fn open() -> Guard {
        Guard { expected: None }
    }

    pub fn with_password(username: &str, password: &str) -> Guard {
        use base64::Engine as _;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        Guard {
            expected: Some(format!("Basic {token}").into()),
        }
    }

    fn from_config(c: &ConsoleConfig) -> Result<Guard, ConsoleError> {
        let Some(path) = &c.password_file else {
            return Ok(Guard::open());
        };
        let bad = |reason: String| ConsoleError::PasswordFile {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(bad("the file is empty (it should hold the password)".into()));
        }
        Ok(Guard::with_password(&c.username, password))
    }

    /// Does this `Authorization` header value let the request in?
    fn admits(&self, authorization: Option<&[u8]>) -> bool {
        match &self.expected {
            None => true,
            Some(expected) => authorization.is_some_and(|given| same(given, expected.as_bytes())),
        }
    }
}

/// Compare without stopping at the first difference (no timing hint).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn require_password(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if guard.admits(given) || request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"linegate\", charset=\"UTF-8\"",
        )],
        "the console needs its user name and password (console.password_file)\n",
    )
        .into_response()
}

/// Unknown paths: 404 to a read, 405 to anything else (nothing here writes).
async fn not_found(method: Method) -> Response {
    if method == Method::GET || method == Method::HEAD {
        (StatusCode::NOT_FOUND, "no such page\n").into_response()
    } else {
        read_only().await
    }
}

async fn read_only() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "GET, HEAD")],
        "the console is read-only\n",
    )
        .into_response()
}

/// Every route of the console: all `GET`, behind `guard` (but `/healthz`).
pub fn router(sources: Sources, guard: Guard) -> Router {
    let sources = Arc::new(sources);
    Router::new()
        .route("/", get(pages::line))
        .route("/machine/{id}", get(pages::machine))
        .route("/orders", get(pages::orders))
        .route("/gateway", get(pages::gateway))
        .route("/assets/console.css", get(pages::css))
        .route("/assets/console.js", get(pages::js))
        .route("/api/v1/line", get(api::line))
        .route("/api/v1/machines/{id}", get(api::machine))
        .route("/api/v1/orders", get(api::orders))
        .route("/api/v1/gateway", get(api::gateway))
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(metrics::metrics))
        .method_not_allowed_fallback(read_only)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(guard, require_password))
        // A page or a scrape leaves its buffers freed behind: they go back
        // to the system once the burst of requests is over.
        .layer(middleware::map_response(|response: Response| async {
            crate::memory::freed_soon();
            response
        }))
        .with_state(sources)
}

/// A rustls server config from PEM files, with the ring provider (the one
/// the uplink uses; no OpenSSL, no aws-lc).
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, ConsoleError> {
    use std::io::BufReader;
    let cert_err = |reason: String| ConsoleError::TlsCert {
        path: cert.to_path_buf(),
        reason,
    };
    let key_err = |reason: String| ConsoleError::TlsKey {
        path: key.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(cert).map_err(|e| cert_err(format!("cannot read: {e}")))?;
    let chain = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err(
            "no certificate in it (expected PEM blocks '-----BEGIN CERTIFICATE-----')".into(),
        ));
    }
    let file = std::fs::File::open(key).map_err(|e| key_err(format!("cannot read: {e}")))?;
    let private = rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| key_err(format!("not valid PEM: {e}")))?
        .ok_or_else(|| key_err("no private key in it (expected PEM 'BEGIN PRIVATE KEY')".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConsoleError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| ConsoleError::Tls(format!("certificate and key do not go together: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_follows_the_listen_address_and_tls() {
        let mut c = ConsoleConfig::default();
        assert_eq!(url(&c).as_deref(), Some("http://127.0.0.1:9780/"));
        c.listen = "0.0.0.0:8080".into();
        c.tls_cert_file = Some("c.pem".into());
        assert_eq!(url(&c).as_deref(), Some("https://127.0.0.1:8080/"));
        c.listen = "[::1]:9780".into();
        assert_eq!(url(&c).as_deref(), Some("https://[::1]:9780/"));
        c.listen = String::new();
        assert_eq!(url(&c), None);
    }

    #[test]
    fn a_guard_with_a_password_admits_only_that_user_and_password() {
        let g = Guard::with_password("linegate", "s3cret");
        // base64("linegate:s3cret")
        assert!(g.admits(Some(b"Basic bGluZWdhdGU6czNjcmV0")));
        assert!(!g.admits(Some(b"Basic bGluZWdhdGU6d3Jvbmc=")));
        assert!(!g.admits(None));
        assert!(Guard::open().admits(None));
    }
}
