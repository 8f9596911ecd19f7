//! Test support for the console: a simulated demo line (real Modbus TCP
//! servers on loopback) read by a real agent (`agent::run`) whose console
//! listens on a free loopback port, and a small HTTP/1.1 client over plain
//! TCP or rustls that says exactly what it sends.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use linegate::agent::{self, RunOptions};
use linegate::config::Config;
use linegate::sim::{self, SimLine, SimOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen (never asserted as speed).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A simulated line and the agent reading it, with its console on.
pub struct DemoLine {
    pub line: SimLine,
    pub config: Config,
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub base: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    stop: CancellationToken,
    sim_stop: CancellationToken,
    agent: tokio::task::JoinHandle<Result<(), agent::AgentError>>,
}

impl DemoLine {
    /// `machines` simulated machines at `speed`, the console on a free port
    /// with the extra `[console]` lines `console` (e.g. a password file).
    pub async fn start(machines: usize, speed: f64, console: &str) -> DemoLine {
        Self::start_on("127.0.0.1", machines, speed, console).await
    }

    /// [`start`](DemoLine::start) with the console on `ip` (reached over
    /// loopback: `0.0.0.0` listens there too).
    pub async fn start_on(ip: &str, machines: usize, speed: f64, console: &str) -> DemoLine {
        let dir = tempfile::tempdir().expect("tempdir");
        let sim_stop = CancellationToken::new();
        let line = sim::serve(
            SimOptions {
                machines,
                base_port: 0,
                seed: 7,
                speed,
                truth: None,
                honour_orders: true,
            },
            sim_stop.clone(),
        )
        .await
        .expect("the simulated line starts");
        let port = free_port();
        let mut text = sim::demo_config(&line, dir.path());
        text.push_str(&format!(
            "\n[console]\nlisten = \"{ip}:{port}\"\n{console}\n"
        ));
        let config = Config::from_toml(&text, Path::new("(console test)"))
            .unwrap_or_else(|e| panic!("the demo config with a console loads: {e}"));
        Self::start_agent(line, config, dir, port, sim_stop)
    }

    /// Start the agent on `config` (its console on `port`).
    pub fn start_agent(
        line: SimLine,
        config: Config,
        dir: tempfile::TempDir,
        port: u16,
        sim_stop: CancellationToken,
    ) -> DemoLine {
        let stop = CancellationToken::new();
        let agent = tokio::spawn(agent::run(
            config.clone(),
            RunOptions {
                config_path: None,
                board: None,
                alone_in_process: false,
            },
            stop.clone(),
        ));
        DemoLine {
            line,
            config,
            base: format!("http://127.0.0.1:{port}"),
            port,
            dir,
            stop,
            sim_stop,
            agent,
        }
    }

    /// GET `path` on the console once it answers (the agent starts it).
    pub async fn get(&self, path: &str) -> Reply {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match request(self.port, "GET", path, &[]).await {
                Ok(r) => return r,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!(
                    "the console at {} does not answer GET {path}: {e}",
                    self.base
                ),
            }
        }
    }

    /// GET a JSON document; panics (saying what came) unless it is 200 JSON.
    pub async fn json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {}", r.body))
    }

    /// Wait until `check` holds of `GET path` (JSON), returning that document.
    pub async fn wait_json(
        &self,
        path: &str,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let v = self.json(path).await;
            if check(&v) {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{what}: not within {PATIENCE:?}; last GET {path}: {v}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn stop(self) {
        drop(self.stop_keeping_dir().await);
    }

    /// [`stop`](DemoLine::stop), handing back the agent's `data_dir` (its
    /// store) to read after it stopped.
    pub async fn stop_keeping_dir(self) -> tempfile::TempDir {
        self.stop.cancel();
        let ended = tokio::time::timeout(PATIENCE, self.agent)
            .await
            .expect("the agent stops within the patience");
        ended.expect("agent task").expect("the agent stops cleanly");
        self.sim_stop.cancel();
        self.line.stopped().await;
        self.dir
    }
}

/// One HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a new plain connection to 127.0.0.1:`port`.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Reply> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    exchange(tcp, method, path, headers).await
}

/// One request over `stream` (plain or TLS): `Connection: close`, the
/// response read to its end.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Reply> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "GET" && method != "HEAD" {
        head.push_str("Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    } else {
        head.push_str("\r\n");
    }
    let io = async {
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no full reply in 10 s")
        })??;
    parse(&raw)
}

fn parse(raw: &[u8]) -> std::io::Result<Reply> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of the response head"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = unchunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn unchunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..end]).ok()?.trim(), 16).ok()?;
        b = &b[end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// A rustls client that trusts exactly `ca_pem`.
pub fn tls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.expect("test CA PEM")).expect("test CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}
