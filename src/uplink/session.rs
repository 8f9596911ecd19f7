//! The gateway's connection counter: the `session` of every status message
//! (birth, will, goodbye; contract v1.1). This module owns the
//! `uplink_session` table and the rule for when a number is spent; it never
//! talks MQTT and never touches the outbox's `seq`.
//!
//! # Table
//!
//! `uplink_session`, exactly one row (`id = 1`): `number`, the session of
//! the latest connection attempt, and `spent`, 1 when that attempt may have
//! reached a broker (0 when it certainly did not, so the next attempt takes
//! the same number again).
//!
//! # Rule
//!
//! The will carries the session and is part of CONNECT, so a session is
//! chosen ([`begin`]) and committed before the CONNECT can leave; the birth
//! and the goodbye of that connection carry the same number. A number is
//! spent by every attempt whose CONNECT may have reached a broker: one that
//! got its CONNACK, and one that ended in a way that cannot tell (a timeout,
//! the link closed after the TCP connect, the agent killed during the
//! attempt). An attempt that certainly never delivered its CONNECT (TCP
//! connect refused, host or network unreachable, TLS handshake failed) or
//! that the broker refused in its CONNACK (a refused connection leaves no
//! will) gives its number back ([`give_back`]), so the next attempt, in this
//! run or after a restart, uses it again. Receivers thus see the session of
//! births grow by one per connection, skipping a number only where a CONNECT
//! may have arrived without its CONNACK coming back; the numbers only grow,
//! which is all a receiver relies on (a will older than the last birth is a
//! late will of a replaced connection).

use rusqlite::{params, Connection};

use crate::store::StoreError;

/// The session table (migration "uplink session").
pub const SCHEMA_V1: &str = "
CREATE TABLE uplink_session (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    number INTEGER NOT NULL,
    spent  INTEGER NOT NULL
);
INSERT INTO uplink_session (id, number, spent) VALUES (1, 0, 1);
";

/// The next number when the last was spent, the same one otherwise.
const BEGIN: &str = "UPDATE uplink_session SET number = number + spent, spent = 1 WHERE id = 1
     RETURNING number";
const GIVE_BACK: &str = "UPDATE uplink_session SET spent = 0 WHERE id = 1 AND number = ?1";
const LATEST: &str = "SELECT number FROM uplink_session WHERE id = 1";

/// The session of the connection about to be attempted, committed as spent
/// (the caller's CONNECT may reach a broker). Call before building the will.
pub fn begin(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.prepare_cached(BEGIN)?.query_row([], |r| r.get(0))?;
    Ok(n as u64)
}

/// The attempt with `session` certainly never reached a broker's session
/// (see the module doc): the next [`begin`] returns the same number.
pub fn give_back(conn: &Connection, session: u64) -> Result<(), StoreError> {
    conn.prepare_cached(GIVE_BACK)?
        .execute(params![i64::try_from(session).unwrap_or(i64::MAX)])?;
    Ok(())
}

/// The session of the latest attempt (0 before the first), for `status`.
pub fn latest(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.prepare_cached(LATEST)?.query_row([], |r| r.get(0))?;
    Ok(n as u64)
}

/// Whether an I/O error of a connection attempt proves that its CONNECT was
/// never written: the TCP connect itself failed (refused, host or network
/// unreachable, no local address). Errors on an established socket (reset,
/// closed by peer, broken pipe) do not: the CONNECT may have arrived before
/// the link died.
pub fn connect_never_sent(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(e.kind(), K::ConnectionRefused | K::AddrNotAvailable)
        || matches!(
            e.raw_os_error(),
            Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        c
    }

    #[test]
    fn sessions_start_at_one_and_grow_by_one_per_spent_attempt() {
        let c = conn();
        assert_eq!(latest(&c).unwrap(), 0);
        assert_eq!(begin(&c).unwrap(), 1);
        assert_eq!(begin(&c).unwrap(), 2);
        assert_eq!(latest(&c).unwrap(), 2);
    }

    #[test]
    fn an_attempt_that_never_reached_a_broker_leaves_its_number_to_the_next() {
        let c = conn();
        let s = begin(&c).unwrap();
        give_back(&c, s).unwrap();
        assert_eq!(begin(&c).unwrap(), s);
        give_back(&c, s).unwrap();
        assert_eq!(begin(&c).unwrap(), s);
        // Spent this time (no give-back): the next attempt moves on.
        assert_eq!(begin(&c).unwrap(), s + 1);
    }

    #[test]
    fn giving_back_an_older_number_changes_nothing() {
        let c = conn();
        let old = begin(&c).unwrap();
        let new = begin(&c).unwrap();
        give_back(&c, old).unwrap();
        assert_eq!(begin(&c).unwrap(), new + 1);
    }

    #[test]
    fn only_a_failed_tcp_connect_proves_the_connect_was_never_sent() {
        use std::io::{Error, ErrorKind as K};
        assert!(connect_never_sent(&Error::from(K::ConnectionRefused)));
        assert!(connect_never_sent(&Error::from_raw_os_error(
            libc::EHOSTUNREACH
        )));
        assert!(connect_never_sent(&Error::from_raw_os_error(
            libc::ENETUNREACH
        )));
        for kind in [
            K::ConnectionReset,
            K::ConnectionAborted,
            K::UnexpectedEof,
            K::BrokenPipe,
            K::TimedOut,
            K::Other,
        ] {
            assert!(!connect_never_sent(&Error::from(kind)), "{kind:?}");
        }
        assert!(!connect_never_sent(&Error::from_raw_os_error(
            libc::ECONNRESET
        )));
    }
}
