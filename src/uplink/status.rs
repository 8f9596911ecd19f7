//! The uplink's state as `linegate status` and `linegate top` read it: the
//! CLI is another process than the agent, and [`UplinkStats`] lives in the
//! agent's memory only, so the agent copies a snapshot here every
//! [`COPY_EVERY`] (and once more when the uplink stops).
//!
//! Table `uplink_state` (migration "uplink state"): at most one row (`id` =
//! 1), replaced by every copy: `connected` (0/1), `stopped` (1 once the
//! uplink task has ended: the agent stopped, or a reload removed the
//! uplink), `last_error` (why the last connection attempt failed or was
//! lost, NULL before any failure), `since` (when this uplink task started),
//! `at` (when the copy was taken) and `counters` (JSON object: `sent`,
//! `acked`, `rejected`, `reconnects`, `depth`, `drops`, the figures of
//! [`UplinkStats`]).
//!
//! The figures are counted in one place only, [`UplinkStats`]; this module
//! never counts, it stores and reads copies, and says in words what a copy
//! means ([`describe`], a pure function of the copy, the config and now).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use tokio_util::sync::CancellationToken;

use super::{UplinkSnapshot, UplinkStats};
use crate::store::{Store, StoreError};

/// How often the agent copies the uplink's state into the store.
pub const COPY_EVERY: Duration = Duration::from_secs(2);

/// A copy older than this, not marked stopped, means the agent is not
/// running (killed, or its store thread stuck): it is shown as stale.
pub const STALE_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// The table (migration "uplink state").
pub const SCHEMA_V1: &str = "
CREATE TABLE uplink_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    connected  INTEGER NOT NULL,  -- 1 while a broker session is up
    stopped    INTEGER NOT NULL,  -- 1 once the uplink task has ended
    last_error TEXT,              -- why the last connection failed or was lost
    since      TEXT NOT NULL,     -- RFC 3339 UTC: when the uplink task started
    at         TEXT NOT NULL,     -- RFC 3339 UTC: when this copy was taken
    counters   TEXT NOT NULL      -- JSON object: sent, acked, rejected, reconnects, depth, drops
);
";

const REPLACE: &str = "INSERT OR REPLACE INTO uplink_state
    (id, connected, stopped, last_error, since, at, counters) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)";

const SELECT: &str =
    "SELECT connected, stopped, last_error, since, at, counters FROM uplink_state WHERE id = 1";

/// One copy of the uplink's state.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UplinkState {
    pub connected: bool,
    pub stopped: bool,
    pub last_error: Option<String>,
    pub since: DateTime<Utc>,
    pub at: DateTime<Utc>,
    pub counters: BTreeMap<String, u64>,
}

impl UplinkState {
    /// A copy of `s` taken at `at`, of an uplink task started at `since`.
    pub fn of(s: &UplinkSnapshot, since: DateTime<Utc>, at: DateTime<Utc>, stopped: bool) -> Self {
        let counters = [
            ("sent", s.sent),
            ("acked", s.acked),
            ("rejected", s.rejected),
            ("reconnects", s.reconnects),
            ("depth", s.depth),
            ("drops", s.drops),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        UplinkState {
            connected: s.connected && !stopped,
            stopped,
            last_error: s.last_error.clone(),
            since,
            at,
            counters,
        }
    }

    /// A counter by name; 0 when the row does not have it.
    pub fn get(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

/// Replace the row with `s`.
pub fn write(conn: &Connection, s: &UplinkState) -> Result<(), StoreError> {
    // A map of names to integers always serialises.
    let counters = serde_json::to_string(&s.counters).unwrap_or_else(|_| "{}".into());
    // A copy for `linegate status`: a power cut may undo the last one.
    crate::store::commit_unsynced(conn, |tx| {
        tx.prepare_cached(REPLACE)?.execute(params![
            s.connected,
            s.stopped,
            s.last_error,
            crate::machine::history::ts(s.since),
            crate::machine::history::ts(s.at),
            counters
        ])?;
        Ok(())
    })
}

/// The last copy, if the agent ever made one. A row that does not parse (a
/// hand-edited store) comes back with what could be read, never an error.
pub fn read(conn: &Connection) -> Result<Option<UplinkState>, StoreError> {
    let row = conn
        .prepare_cached(SELECT)?
        .query_row([], |r| {
            Ok((
                r.get::<_, bool>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .optional()?;
    let time = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
    };
    Ok(row.map(
        |(connected, stopped, last_error, since, at, counters)| UplinkState {
            connected,
            stopped,
            last_error,
            since: time(&since),
            at: time(&at),
            counters: serde_json::from_str(&counters).unwrap_or_default(),
        },
    ))
}

/// What the uplink is doing, in a few words, from the last copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// No `[uplink]` in the config.
    NotConfigured,
    /// Configured, but the agent never copied a state (not started yet).
    Unknown,
    Connected,
    NotConnected,
    /// The uplink task ended (agent stopped).
    Stopped,
    /// The last copy is older than [`STALE_AFTER`]: the agent is not running.
    Stale,
}

impl Link {
    /// The link as of `now`, from the config and the last copy.
    pub fn of(configured: bool, copy: Option<&UplinkState>, now: DateTime<Utc>) -> Link {
        match (configured, copy) {
            (false, _) => Link::NotConfigured,
            (true, None) => Link::Unknown,
            (true, Some(c)) if c.stopped => Link::Stopped,
            (true, Some(c)) if now - c.at > STALE_AFTER => Link::Stale,
            (true, Some(c)) if c.connected => Link::Connected,
            (true, Some(_)) => Link::NotConnected,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Link::NotConfigured => "not configured",
            Link::Unknown => "unknown",
            Link::Connected => "connected",
            Link::NotConnected => "not connected",
            Link::Stopped => "stopped",
            Link::Stale => "stale",
        }
    }
}

/// The line of `linegate status` for the uplink, e.g.
/// `uplink mqtt://broker:1883: connected (as of T); 12 sent, 12 acked, 0 reconnects`.
pub fn describe(url: Option<&str>, copy: Option<&UplinkState>, now: DateTime<Utc>) -> String {
    let link = Link::of(url.is_some(), copy, now);
    let Some(url) = url else {
        return "uplink: not configured (no [uplink] in the config)".into();
    };
    let Some(c) = copy else {
        return format!("uplink {url}: unknown (the agent has not reported its uplink yet)");
    };
    let at = c.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let what = match link {
        Link::Connected => format!("connected (as of {at})"),
        Link::NotConnected => format!("not connected (as of {at})"),
        Link::Stopped => format!("stopped at {at} (the agent is not running)"),
        Link::Stale => format!("unknown: last report at {at} (is the agent running?)"),
        Link::NotConfigured | Link::Unknown => link.as_str().to_string(),
    };
    let mut line = format!(
        "uplink {url}: {what}; {} sent, {} acked, {} rejected, {} reconnect(s)",
        c.get("sent"),
        c.get("acked"),
        c.get("rejected"),
        c.get("reconnects")
    );
    if let Some(e) = &c.last_error {
        line.push_str(&format!("; last error: {e}"));
    }
    line
}

/// Copies `stats` into the store every [`COPY_EVERY`] until `stop`, then
/// once more marked stopped. Short of disk space the copies wait (the
/// reserve is for state changes, periods and orders); a store that cannot
/// take one is said once per outage, the copying goes on.
pub async fn copy_to_store(store: Store, stats: Arc<UplinkStats>, stop: CancellationToken) {
    let since = Utc::now();
    // Half a second off the polls: not in the store's way while a poll's
    // readings wait for their commit.
    let mut tick = crate::cadence::interval_offset(COPY_EVERY, Duration::from_millis(500));
    let mut failing = false;
    loop {
        let last = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        if store.health().accepts_telemetry() {
            let copy = UplinkState::of(&stats.snapshot(), since, Utc::now(), last);
            match store.call(move |c| write(c, &copy)).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("the uplink's state is stored again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "could not store the uplink's state; `linegate status` shows an older one until the store takes it");
                }
                Err(e) => tracing::debug!(error = %e, "could not store the uplink's state"),
            }
        }
        if last {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn copy(connected: bool, stopped: bool, at: &str, error: Option<&str>) -> UplinkState {
        let snap = UplinkSnapshot {
            connected,
            sent: 12,
            acked: 11,
            rejected: 0,
            reconnects: 1,
            drops: 0,
            depth: 3,
            last_error: error.map(str::to_string),
        };
        UplinkState::of(&snap, t("2026-03-02T06:00:00Z"), t(at), stopped)
    }

    #[test]
    fn the_link_is_read_from_the_config_the_copy_and_its_age() {
        let now = t("2026-03-02T06:01:00Z");
        let fresh = "2026-03-02T06:00:58Z";
        let old = "2026-03-02T06:00:30Z";
        assert_eq!(Link::of(false, None, now), Link::NotConfigured);
        assert_eq!(Link::of(true, None, now), Link::Unknown);
        assert_eq!(
            Link::of(true, Some(&copy(true, false, fresh, None)), now),
            Link::Connected
        );
        assert_eq!(
            Link::of(true, Some(&copy(false, false, fresh, None)), now),
            Link::NotConnected
        );
        assert_eq!(
            Link::of(true, Some(&copy(true, false, old, None)), now),
            Link::Stale
        );
        // A stopped uplink's copy is never connected, however fresh.
        let stopped = copy(true, true, fresh, None);
        assert!(!stopped.connected);
        assert_eq!(Link::of(true, Some(&stopped), now), Link::Stopped);
    }

    #[test]
    fn the_status_line_names_the_broker_the_link_and_the_last_error() {
        let now = t("2026-03-02T06:01:00Z");
        let c = copy(
            false,
            false,
            "2026-03-02T06:00:59Z",
            Some("broker 127.0.0.1:1: connection refused"),
        );
        assert_eq!(
            describe(Some("mqtt://127.0.0.1:1"), Some(&c), now),
            "uplink mqtt://127.0.0.1:1: not connected (as of 2026-03-02T06:00:59Z); \
             12 sent, 11 acked, 0 rejected, 1 reconnect(s); last error: broker 127.0.0.1:1: connection refused"
        );
        assert_eq!(
            describe(None, Some(&c), now),
            "uplink: not configured (no [uplink] in the config)"
        );
        assert!(describe(Some("mqtt://b:1883"), None, now).contains("unknown"));
    }

    #[test]
    fn each_write_replaces_the_one_row() -> Result<(), StoreError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA_V1)?;
        assert_eq!(read(&conn)?, None);
        let a = copy(true, false, "2026-03-02T06:00:02Z", None);
        write(&conn, &a)?;
        assert_eq!(read(&conn)?, Some(a));
        let b = copy(false, true, "2026-03-02T06:00:04Z", Some("lost"));
        write(&conn, &b)?;
        assert_eq!(read(&conn)?, Some(b));
        let n: i64 = conn.query_row("SELECT count(*) FROM uplink_state", [], |r| r.get(0))?;
        assert_eq!(n, 1);
        Ok(())
    }
}
