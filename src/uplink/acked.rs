//! PUBACKed seqs on their way to deletion. This module owns that hand-over:
//! the connection puts here the seq of every message the broker
//! acknowledged; the recorder's next commit takes them and deletes their
//! rows in its own transaction; whatever no commit took within
//! [`ACK_LINGER`] the uplink's deleter deletes in a transaction of its own.
//! It never decides what is deleted (only acknowledged seqs come here), and
//! it never holds the only copy of a message: a seq waiting here still has
//! its row in the outbox.
//!
//! Why: a transaction of its own for every burst of PUBACKs was a fifth of
//! the agent's CPU at 50 machines (its log frames, locks and store-thread
//! hand-overs), for rows on the same pages the next commit writes anyway.
//!
//! What it costs: SIGKILL can now resend the messages acknowledged in the
//! last [`ACK_LINGER`] before it (their rows were not deleted yet), as
//! duplicates with the same `seq`, like a message whose PUBACK was lost.
//! Nothing is lost: a row is still deleted only after its PUBACK. A
//! deletion that rides with the recorder is synced with its commit, so a
//! power cut costs fewer duplicates than before, not more.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::outbox::OutboxCounts;

/// How long PUBACKed seqs wait for a recorder commit to delete them before
/// the deleter does. Longer than the gap between two of the line's polls
/// (a second at 1 Hz, every machine read in the same instant: see
/// `source::modbus::bus::first_poll_at`), so that the next poll's commit
/// takes them. (0.4 s while the line was read in four groups a second.)
pub const ACK_LINGER: Duration = Duration::from_millis(1500);

/// Most seqs waiting (2 MB). Only a store that cannot delete for a long
/// time (a full disk) while the connection drains the outbox gets there;
/// beyond it the oldest are forgotten: their rows stay and are sent again
/// after the next connection (duplicates, never a loss), and they are
/// counted in [`AckedRows::forgotten`].
pub const MAX_WAITING: usize = 1 << 18;

/// Acknowledged seqs not yet deleted, and the outbox counts after the last
/// deletion the recorder made (for the uplink's figures).
#[derive(Debug, Default)]
pub struct AckedRows {
    inner: Mutex<Inner>,
    /// Woken when seqs come back from a commit that failed.
    returned: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    seqs: Vec<u64>,
    counts: Option<OutboxCounts>,
    forgotten: u64,
}

impl Inner {
    fn bound(&mut self) {
        if self.seqs.len() > MAX_WAITING {
            let excess = self.seqs.len() - MAX_WAITING;
            self.seqs.drain(..excess);
            self.forgotten += excess as u64;
        }
    }
}

impl AckedRows {
    /// A PUBACK arrived for this seq.
    pub fn push(&self, seq: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.seqs.push(seq);
            inner.bound();
        }
    }

    /// Every seq waiting, for a transaction to delete; empty when none.
    pub fn take(&self) -> Vec<u64> {
        self.inner
            .lock()
            .map(|mut inner| std::mem::take(&mut inner.seqs))
            .unwrap_or_default()
    }

    /// Seqs taken by a commit that failed: they wait again, and the deleter
    /// is woken to try them in a transaction of its own.
    pub fn give_back(&self, seqs: Vec<u64>) {
        if seqs.is_empty() {
            return;
        }
        if let Ok(mut inner) = self.inner.lock() {
            // Older than any pushed since: they go first, and first when bounded.
            let newer = std::mem::replace(&mut inner.seqs, seqs);
            inner.seqs.extend(newer);
            inner.bound();
        }
        self.returned.notify_one();
    }

    /// A commit deleted rows; these are the counts after it.
    pub fn deleted(&self, counts: OutboxCounts) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.counts = Some(counts);
        }
    }

    /// The counts after the last deletion a commit made, once.
    pub fn take_counts(&self) -> Option<OutboxCounts> {
        self.inner
            .lock()
            .ok()
            .and_then(|mut inner| inner.counts.take())
    }

    /// Seqs forgotten past [`MAX_WAITING`] (their rows are sent again).
    pub fn forgotten(&self) -> u64 {
        self.inner.lock().map(|inner| inner.forgotten).unwrap_or(0)
    }

    /// Resolves once seqs were given back (at once if some were since the last wait).
    pub async fn returned(&self) {
        self.returned.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_are_taken_once_and_come_back_when_a_commit_fails() {
        let acked = AckedRows::default();
        assert!(acked.take().is_empty());
        acked.push(3);
        acked.push(4);
        let taken = acked.take();
        assert_eq!(taken, [3, 4]);
        assert!(acked.take().is_empty(), "taken once");
        acked.push(5);
        acked.give_back(taken);
        let mut again = acked.take();
        again.sort_unstable();
        assert_eq!(again, [3, 4, 5]);
    }

    #[test]
    fn past_the_bound_the_oldest_seqs_are_forgotten_and_counted() {
        let acked = AckedRows::default();
        let n = MAX_WAITING as u64 + 3;
        for seq in 1..=n {
            acked.push(seq);
        }
        assert_eq!(acked.forgotten(), 3);
        let taken = acked.take();
        assert_eq!(taken.len(), MAX_WAITING);
        assert_eq!(taken.first(), Some(&4), "the oldest went");
        assert_eq!(taken.last(), Some(&n));
        // Given back behind newer ones: the given-back (older) go first.
        acked.push(n + 1);
        acked.give_back(taken);
        assert_eq!(acked.forgotten(), 4);
        let again = acked.take();
        assert_eq!(again.len(), MAX_WAITING);
        assert_eq!(again.last(), Some(&(n + 1)), "the newest stays");
    }

    #[test]
    fn the_counts_of_a_deletion_are_read_once() {
        let acked = AckedRows::default();
        assert!(acked.take_counts().is_none());
        let k = OutboxCounts {
            depth: 7,
            ..OutboxCounts::default()
        };
        acked.deleted(k);
        assert_eq!(acked.take_counts().map(|k| k.depth), Some(7));
        assert!(acked.take_counts().is_none());
    }

    #[tokio::test]
    async fn giving_seqs_back_wakes_the_deleter() {
        let acked = std::sync::Arc::new(AckedRows::default());
        let waiter = {
            let acked = acked.clone();
            tokio::spawn(async move { acked.returned().await })
        };
        tokio::task::yield_now().await;
        acked.give_back(vec![1]);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }
}
