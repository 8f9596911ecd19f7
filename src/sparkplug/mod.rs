//! The gateway as a Sparkplug B 3.0 edge node (`[sparkplug]`,
//! docs/sparkplug.md): the gateway is the edge node, each machine a device.
//!
//! Owns: its own MQTT connection (clean session, its own client id, the
//! NDEATH will), the `bdSeq` and the metric values no host took yet (its own
//! tables in the store, `history`), the Sparkplug payload (`proto`), the
//! metric names and types (`metrics`) and the protocol state (`node`).
//!
//! Where its data comes from: the agent's tap hands it a copy of every
//! [`Sample`] through a [`SparkplugTap`] (never blocking: a full channel
//! drops the copy and counts it); each machine's live view (state, reason,
//! since, part totals) it watches; the closed periods and the order on each
//! machine it reads from the store after the recorder and the order task
//! committed them.
//!
//! Must not: write a register (DCMD is refused and logged: upstream never
//! names a register, orders keep their own validated path), touch the JSON
//! uplink's outbox or session, or decide anything about a machine (states,
//! counts and KPIs are the engine's; this only re-encodes them).

pub mod edge;
pub mod history;
pub mod metrics;
pub mod node;
pub mod proto;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::{Config, SparkplugConfig, UplinkConfig};
use crate::source::Sample;

pub use edge::run_sparkplug;

/// How many sample copies may wait for the edge node.
pub const FEED_CAPACITY: usize = 4096;

/// What the tap hands the edge node: a copy of every sample.
#[derive(Clone)]
pub struct SparkplugTap {
    tx: mpsc::Sender<Sample>,
    /// Set while an edge node runs (no copies otherwise).
    listening: Arc<AtomicBool>,
    /// Copies dropped because the edge node was behind.
    dropped: Arc<AtomicU64>,
}

/// The receiving end, taken by each run of the edge node in turn.
pub type SparkplugFeed = Arc<tokio::sync::Mutex<mpsc::Receiver<Sample>>>;

impl SparkplugTap {
    pub fn new() -> (SparkplugTap, SparkplugFeed) {
        let (tx, rx) = mpsc::channel(FEED_CAPACITY);
        let tap = SparkplugTap {
            tx,
            listening: Arc::new(AtomicBool::new(false)),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (tap, Arc::new(tokio::sync::Mutex::new(rx)))
    }

    /// Hand on a copy of `sample` if an edge node runs; never waits.
    pub fn offer(&self, sample: &Sample) {
        if !self.listening.load(Ordering::Relaxed) {
            return;
        }
        if self.tx.try_send(sample.clone()).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "sparkplug: edge node behind, sample copies dropped"
                );
            }
        }
    }

    pub fn set_listening(&self, on: bool) {
        self.listening.store(on, Ordering::Relaxed);
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The edge node id: `sparkplug.edge_node_id` or the gateway id.
pub fn edge_node_id(config: &Config, sp: &SparkplugConfig) -> String {
    sp.edge_node_id
        .clone()
        .unwrap_or_else(|| config.gateway.id.clone())
}

/// The broker and credentials the edge node connects with, in the shape
/// the uplink's TLS and password code reads: `sparkplug.url` with the
/// `sparkplug.*` credentials, or else `[uplink]`'s url and credentials.
/// `None` when there is neither.
pub fn broker(config: &Config, sp: &SparkplugConfig) -> Option<UplinkConfig> {
    match (&sp.url, &config.uplink) {
        (Some(url), base) => {
            let mut u = match base {
                Some(b) => b.clone(),
                None => blank_uplink(url)?,
            };
            u.url = url.clone();
            u.username = sp.username.clone();
            u.password_file = sp.password_file.clone();
            u.password_env = sp.password_env.clone();
            u.ca_file = sp.ca_file.clone();
            u.client_cert_file = sp.client_cert_file.clone();
            u.client_key_file = sp.client_key_file.clone();
            Some(u)
        }
        (None, Some(u)) => Some(u.clone()),
        (None, None) => None,
    }
}

fn blank_uplink(url: &str) -> Option<UplinkConfig> {
    // Every key but the url has a default.
    serde_json::from_value(serde_json::json!({ "url": url })).ok()
}

/// A Sparkplug id (group, edge node, host): no MQTT wildcards or level
/// separators, as the spec requires; this project's id rule besides.
fn is_sparkplug_id(id: &str) -> bool {
    crate::config::is_valid_id(id)
}

/// Every problem of `[sparkplug]`, as (key, message); empty when usable or absent.
pub fn config_problems(config: &Config) -> Vec<(String, String)> {
    let Some(sp) = &config.sparkplug else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |k: &str, m: String| out.push((format!("sparkplug.{k}"), m));
    let ids = [
        ("group_id", Some(&sp.group_id)),
        ("edge_node_id", sp.edge_node_id.as_ref()),
        ("primary_host_id", sp.primary_host_id.as_ref()),
    ];
    for (key, value) in ids {
        if let Some(v) = value {
            if !is_sparkplug_id(v) {
                push(
                    key,
                    format!("{v:?} is not a valid Sparkplug id: use 1 to 64 of A-Z a-z 0-9 _ . - (no / + #)"),
                );
            }
        }
    }
    match &sp.url {
        Some(url) if !(url.starts_with("mqtt://") || url.starts_with("mqtts://")) => push(
            "url",
            format!(
                "{url:?} must start with mqtt:// or mqtts://, e.g. \"mqtt://scada.example:1883\""
            ),
        ),
        Some(url) => {
            if let Err(e) = crate::uplink::tls::parse_url(url) {
                push("url", e.to_string());
            }
            if url.starts_with("mqtt://") {
                for (key, set) in [
                    ("ca_file", sp.ca_file.is_some()),
                    ("client_cert_file", sp.client_cert_file.is_some()),
                    ("client_key_file", sp.client_key_file.is_some()),
                ] {
                    if set {
                        push(key, format!("is a TLS setting but sparkplug.url {url:?} is plaintext: use mqtts:// or remove it"));
                    }
                }
            }
        }
        None => {
            if config.uplink.is_none() {
                push(
                    "url",
                    "is needed without an [uplink] section (the edge node uses the uplink's broker by default)".into(),
                );
            }
            for (key, set) in [
                ("username", sp.username.is_some()),
                ("password_file", sp.password_file.is_some()),
                ("password_env", sp.password_env.is_some()),
                ("ca_file", sp.ca_file.is_some()),
                ("client_cert_file", sp.client_cert_file.is_some()),
                ("client_key_file", sp.client_key_file.is_some()),
            ] {
                if set {
                    push(key, "is a setting of the edge node's own broker: set sparkplug.url too, or leave it out to use [uplink]'s broker and credentials".into());
                }
            }
        }
    }
    if sp.username.is_none() && (sp.password_file.is_some() || sp.password_env.is_some()) {
        push(
            "username",
            "a password is set (password_file or password_env) but no username".into(),
        );
    }
    if sp.password_file.is_some() && sp.password_env.is_some() {
        push(
            "password_file",
            "give password_file or password_env, not both".into(),
        );
    }
    if sp.client_cert_file.is_some() != sp.client_key_file.is_some() {
        push(
            "client_cert_file",
            "a client certificate needs both client_cert_file and client_key_file".into(),
        );
    }
    if let Some(id) = &sp.client_id {
        // rumqttc refuses (panics on) an empty client id; the broker would
        // also take over the uplink's session under the same id.
        let uplink_id = config.uplink.as_ref().and_then(|u| u.client_id.as_ref());
        if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            push("client_id", format!("{id:?} is not usable: it must be non-empty and without spaces; leave it out for linegate-sparkplug-<gateway id>"));
        } else if uplink_id == Some(id) || *id == format!("linegate-{}", config.gateway.id) {
            push("client_id", format!("{id:?} is the uplink's client id: the edge node needs its own connection, so its own id"));
        }
    }
    if sp.keepalive_s < 5 {
        push("keepalive_s", "must be at least 5".into());
    }
    if sp.history_max_rows == 0 {
        push("history_max_rows", "must be at least 1".into());
    }
    if sp.backoff_min_ms == 0 || sp.backoff_min_ms > sp.backoff_max_ms {
        push(
            "backoff_min_ms",
            format!(
                "must be at least 1 and at most backoff_max_ms ({})",
                sp.backoff_max_ms
            ),
        );
    }
    out
}
