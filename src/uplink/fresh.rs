//! Rows just committed, handed to the uplink in memory: the connection sends
//! them without reading them back from the store. This module owns that
//! hand-over queue; it never decides what is stored, and it is never the
//! only copy of a row: every row in it is already committed to the outbox,
//! and the outbox stays the truth (a row is deleted only after its PUBACK).
//!
//! Why: the recorder commits a poll's messages, then at once the next
//! batch; a connection woken by the first commit used to queue its read of
//! the new rows behind the second commit and its fsync on the one store
//! thread. With the rows in hand it publishes them as soon as they are
//! durable.
//!
//! The queue only ever shortens the way, it never changes what is sent or
//! in which order: the connection takes rows from it only while they follow
//! its live cursor without a gap (`seq` = cursor + 1). Anything else (a row
//! of another producer in between, rows dropped by the cap, rows stored
//! while the link was down, an overflow of this queue, a new connection)
//! shows as a gap, and the connection reads the store as before.
//!
//! One difference remains, at a full outbox only: a row the cap drops while
//! it waits here is still sent (and counted as dropped), where a read of
//! the store would no longer find it. That over-counts a drop; it never
//! loses or reorders a message.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::outbox::OutboxRow;

/// Most rows waiting here; older ones are forgotten (they are in the store).
const MAX_FRESH_ROWS: usize = 4 * super::connection::WINDOW;

/// Committed live rows on their way to the connection, in `seq` order.
#[derive(Debug, Default)]
pub struct FreshRows {
    rows: Mutex<VecDeque<OutboxRow>>,
    notify: Notify,
}

/// What [`FreshRows::take`] found.
#[derive(Debug, Default, PartialEq)]
pub struct Taken {
    /// Rows following the cursor, in `seq` order.
    pub rows: Vec<OutboxRow>,
    /// The next row is not the one after the cursor: read the store.
    pub read_store: bool,
    /// More rows follow (the limit was reached).
    pub more: bool,
}

impl FreshRows {
    /// After a commit: its live rows (stored while the link was up), in
    /// `seq` order, and wake the connection.
    pub fn push(&self, committed: impl IntoIterator<Item = OutboxRow>) {
        if let Ok(mut rows) = self.rows.lock() {
            rows.extend(committed);
            while rows.len() > MAX_FRESH_ROWS {
                rows.pop_front();
            }
        }
        self.notify.notify_one();
    }

    /// Resolves after the next [`FreshRows::push`] (or at once if one came
    /// since the last wait).
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Up to `limit` rows that follow `cursor` without a gap. Rows at or
    /// below the cursor (already read from the store) are dropped; at a gap
    /// the queue is emptied (those rows are in the store) and the caller
    /// reads the store.
    pub fn take(&self, mut cursor: u64, limit: usize) -> Taken {
        let Ok(mut rows) = self.rows.lock() else {
            return Taken {
                read_store: true,
                ..Taken::default()
            };
        };
        let mut taken = Taken::default();
        while let Some(front) = rows.front() {
            if front.seq <= cursor {
                rows.pop_front();
                continue;
            }
            if front.seq != cursor + 1 {
                rows.clear();
                taken.read_store = true;
                break;
            }
            if taken.rows.len() >= limit {
                taken.more = true;
                break;
            }
            let Some(row) = rows.pop_front() else { break };
            cursor = row.seq;
            taken.rows.push(row);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::outbox::MessageClass;

    fn row(seq: u64) -> OutboxRow {
        OutboxRow {
            seq,
            topic_suffix: "m/a/telemetry".into(),
            class: MessageClass::Telemetry,
            retain: false,
            ts: "2026-11-26T08:00:00.000Z".into(),
            body: "{}".into(),
            stored_offline: false,
        }
    }

    fn seqs(t: &Taken) -> Vec<u64> {
        t.rows.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn rows_that_follow_the_cursor_are_taken_in_order_up_to_the_limit() {
        let f = FreshRows::default();
        f.push([row(5), row(6), row(7)]);
        let t = f.take(4, 2);
        assert_eq!(seqs(&t), [5, 6]);
        assert!(t.more && !t.read_store);
        let t = f.take(6, 10);
        assert_eq!(seqs(&t), [7]);
        assert!(!t.more && !t.read_store);
        assert_eq!(f.take(7, 10), Taken::default());
    }

    #[test]
    fn rows_already_read_from_the_store_are_skipped() {
        let f = FreshRows::default();
        f.push([row(5), row(6), row(7)]);
        assert_eq!(seqs(&f.take(6, 10)), [7]);
    }

    #[test]
    fn a_gap_sends_the_connection_to_the_store_and_forgets_the_queue() {
        let f = FreshRows::default();
        // Seq 5 belongs to another producer (or was dropped by the cap).
        f.push([row(6), row(7)]);
        let t = f.take(4, 10);
        assert!(t.rows.is_empty() && t.read_store);
        assert_eq!(f.take(7, 10), Taken::default(), "the queue was emptied");
    }

    #[test]
    fn an_overflow_forgets_the_oldest_rows_which_then_show_as_a_gap() {
        let f = FreshRows::default();
        f.push((1..=(MAX_FRESH_ROWS as u64 + 1)).map(row));
        let t = f.take(0, usize::MAX);
        assert!(t.rows.is_empty() && t.read_store, "row 1 was forgotten");
    }
}
