//! How the store is doing on its disk, and the reserve that keeps the
//! important rows committing when the disk fills up.
//!
//! The store thread is the only one that touches the file system here: it
//! looks at the result of every job (`Slot::observe` in `store`), and on
//! a "disk full" or I/O error it deletes the reserve file
//! (`data_dir/reserve.bin`, `store.reserve_mb`, preallocated at start) so that
//! state changes, periods and order statuses still commit; telemetry is not
//! written while the disk is short ([`Health::accepts_telemetry`]) and every
//! telemetry message not stored is counted. Once twice the reserve is free
//! again, the reserve is made again and telemetry flows.
//!
//! What cannot be stored at all waits in the bounded memory of the recorder
//! (machine events) or the order task (order changes); what overflows that
//! memory is counted in `lost_events`. Both counts wait here
//! ([`Unstored`]) until a commit writes them into the store (telemetry into
//! the outbox's `dropped`, lost events into `store_loss`), so the gateway
//! status can report them upstream even before they are stored.
//!
//! This module never decides what a row means: it only knows whether writes
//! work, and keeps the counts of what could not be written.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode};

use super::StoreError;

/// File name of the reserve inside `data_dir`.
pub const RESERVE_FILE: &str = "reserve.bin";

/// Lost events, kept across restarts (migration "store losses").
pub const SCHEMA_V1: &str = "
CREATE TABLE store_loss (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    lost_events INTEGER NOT NULL
);
INSERT INTO store_loss (id, lost_events) VALUES (1, 0);
";

const ADD_LOST: &str = "UPDATE store_loss SET lost_events = lost_events + ?1 WHERE id = 1";
const LOST: &str = "SELECT lost_events FROM store_loss WHERE id = 1";

/// How often the store thread looks whether the reserve can be made again.
const RESERVE_CHECK: Duration = Duration::from_secs(5);

/// The store's condition, as `status`, logs and the watchdog status show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Writes commit and the reserve is in place (or turned off).
    Ok,
    /// The disk is full or nearly: the reserve is released, important rows
    /// still commit, telemetry is dropped and counted.
    OnReserve,
    /// Writes fail (the reserve is spent too): events wait in memory.
    Failing(String),
    /// The store could not be opened yet (a full disk at start); retried.
    Unopened(String),
}

impl Condition {
    pub fn describe(&self) -> String {
        match self {
            Condition::Ok => "ok".into(),
            Condition::OnReserve => {
                "disk full: running on the reserve (telemetry dropped and counted)".into()
            }
            Condition::Failing(e) => format!("writes failing: {e} (events held in memory)"),
            Condition::Unopened(e) => format!("not open: {e} (events held in memory; retried)"),
        }
    }
}

/// Counts of what could not be stored, waiting to be written with the next commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unstored {
    /// Telemetry messages dropped before they got a seq.
    pub telemetry: u64,
    /// State changes or periods that overflowed the recorder's memory.
    pub lost_events: u64,
}

/// Shared between the store thread (which sets the condition) and the
/// producers (which count what they could not store).
#[derive(Debug)]
pub struct Health {
    condition: Mutex<Condition>,
    unstored_telemetry: AtomicU64,
    unstored_lost: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            condition: Mutex::new(Condition::Ok),
            unstored_telemetry: AtomicU64::new(0),
            unstored_lost: AtomicU64::new(0),
        }
    }
}

impl Health {
    pub fn condition(&self) -> Condition {
        self.condition
            .lock()
            .map(|c| c.clone())
            .unwrap_or(Condition::Ok)
    }

    /// Telemetry is written only while the store is fully well.
    pub fn accepts_telemetry(&self) -> bool {
        self.condition() == Condition::Ok
    }

    /// Count telemetry that was not stored.
    pub fn count_unstored_telemetry(&self, n: u64) {
        self.unstored_telemetry.fetch_add(n, Ordering::Relaxed);
    }

    /// Count events that were lost (could not be stored nor held).
    pub fn count_lost_events(&self, n: u64) {
        self.unstored_lost.fetch_add(n, Ordering::Relaxed);
    }

    /// The counts not yet written, without taking them.
    pub fn unstored(&self) -> Unstored {
        Unstored {
            telemetry: self.unstored_telemetry.load(Ordering::Relaxed),
            lost_events: self.unstored_lost.load(Ordering::Relaxed),
        }
    }

    /// Take the counts to write them with a commit; [`Health::give_back`] if it failed.
    pub fn take_unstored(&self) -> Unstored {
        Unstored {
            telemetry: self.unstored_telemetry.swap(0, Ordering::Relaxed),
            lost_events: self.unstored_lost.swap(0, Ordering::Relaxed),
        }
    }

    pub fn give_back(&self, u: Unstored) {
        self.count_unstored_telemetry(u.telemetry);
        self.count_lost_events(u.lost_events);
    }

    /// Set the condition; logs once per change.
    pub(super) fn set(&self, new: Condition) {
        let Ok(mut c) = self.condition.lock() else {
            return;
        };
        if *c == new {
            return;
        }
        match &new {
            Condition::Ok => tracing::info!(was = %c.describe(), "store: writes work again"),
            Condition::OnReserve => tracing::warn!(
                "store: the disk is full: reserve released; state changes, periods and order statuses still commit, telemetry is dropped and counted until space returns"
            ),
            Condition::Failing(e) => tracing::error!(
                error = %e,
                "store: writes fail even after the reserve was released: events are held in memory (bounded) until space returns"
            ),
            Condition::Unopened(e) => tracing::error!(
                error = %e,
                "store: cannot open the store: polling goes on, events are held in memory (bounded); retrying"
            ),
        }
        *c = new;
    }
}

/// Whether `e` says the disk is full or failing (the reserve may help).
pub fn is_disk_trouble(e: &StoreError) -> bool {
    let sql = match e {
        StoreError::Sql(s) => s,
        StoreError::Open { cause, .. } => cause,
        StoreError::Folder { cause, .. } | StoreError::File { cause, .. } => {
            return cause.raw_os_error() == Some(libc::ENOSPC)
        }
        StoreError::Unavailable(_) => return true,
        StoreError::TooNew { .. } | StoreError::Closed | StoreError::Missing { .. } => {
            return false
        }
    };
    matches!(
        sql.sqlite_error_code(),
        Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure)
    )
}

/// The reserve file: space held back for a full disk.
#[derive(Debug)]
pub(super) struct Reserve {
    path: PathBuf,
    bytes: u64,
    /// The file is there at its full size (looked at once, then kept up to date).
    present: bool,
    /// Last look at the free space (throttles [`Reserve::try_restore`]).
    checked_at: Option<Instant>,
}

impl Reserve {
    pub(super) fn new(data_dir: &Path, reserve_mb: u64) -> Reserve {
        let path = data_dir.join(RESERVE_FILE);
        let bytes = reserve_mb.saturating_mul(1024 * 1024);
        let present = std::fs::metadata(&path)
            .map(|m| m.len() >= bytes)
            .unwrap_or(false);
        Reserve {
            path,
            bytes,
            present,
            checked_at: None,
        }
    }

    /// Whether the reserve is there at its full size (always, when it is off).
    pub(super) fn in_place(&self) -> bool {
        self.bytes == 0 || self.present
    }

    /// Delete the reserve; true when there was one to delete.
    pub(super) fn release(&mut self) -> bool {
        if self.bytes == 0 {
            return false;
        }
        self.checked_at = Some(Instant::now());
        self.present = false;
        match std::fs::remove_file(&self.path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e, "store: cannot delete the reserve");
                false
            }
        }
    }

    /// Make the reserve when twice its size is free; true when it is in place.
    /// Looks at most every [`RESERVE_CHECK`] unless `now_anyway`.
    pub(super) fn try_restore(&mut self, now_anyway: bool) -> bool {
        if self.in_place() {
            return true;
        }
        let due = self
            .checked_at
            .is_none_or(|at| at.elapsed() >= RESERVE_CHECK);
        if !(due || now_anyway) {
            return false;
        }
        self.checked_at = Some(Instant::now());
        let Some(dir) = self.path.parent() else {
            return false;
        };
        match free_bytes(dir) {
            Some(free) if free >= self.bytes.saturating_mul(2) => {}
            _ => return false,
        }
        match preallocate(&self.path, self.bytes) {
            Ok(()) => {
                self.present = true;
                tracing::info!(file = %self.path.display(), bytes = self.bytes, "store: reserve in place");
                true
            }
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "store: cannot make the reserve");
                let _ = std::fs::remove_file(&self.path);
                false
            }
        }
    }
}

/// Bytes free for an unprivileged writer on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

/// The store's disk as `linegate status` shows it, from what it can see
/// from outside the agent: the reserve file's size and the free space.
pub fn describe_disk(reserve_mb: u64, reserve_bytes: u64, free: Option<u64>) -> String {
    let mb = |b: u64| b / (1024 * 1024);
    let free_text = free.map_or("free space unknown".to_string(), |f| {
        format!("{} MB free", mb(f))
    });
    let want = reserve_mb.saturating_mul(1024 * 1024);
    if want == 0 {
        return format!("{free_text}, no reserve (store.reserve_mb = 0)");
    }
    if reserve_bytes >= want {
        return format!("ok, {free_text}, reserve of {reserve_mb} MB in place");
    }
    match free {
        Some(f) if f >= want.saturating_mul(2) => format!(
            "{free_text}, reserve not in place (the running agent makes it again within seconds)"
        ),
        _ => format!(
            "DISK FULL ({free_text}): reserve released, telemetry is dropped and counted; free space in the data folder"
        ),
    }
}

/// Write a file of `bytes` whose blocks are really allocated (not sparse).
fn preallocate(path: &Path, bytes: u64) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    let len = libc::off_t::try_from(bytes).unwrap_or(libc::off_t::MAX);
    // SAFETY: a valid open descriptor; posix_fallocate does not touch memory.
    let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len) };
    if r != 0 {
        // No fallocate on this file system: write zeros.
        let chunk = vec![0u8; 1024 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Add lost events to the stored count, inside the caller's transaction.
pub fn add_lost_events(conn: &Connection, n: u64) -> Result<(), StoreError> {
    if n > 0 {
        conn.prepare_cached(ADD_LOST)?
            .execute(params![i64::try_from(n).unwrap_or(i64::MAX)])?;
    }
    Ok(())
}

/// Events lost since the store was created (stored count only).
pub fn lost_events(conn: &Connection) -> Result<u64, StoreError> {
    use rusqlite::OptionalExtension;
    let n: Option<i64> = conn
        .prepare_cached(LOST)?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> StoreError {
        StoreError::Sql(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        ))
    }

    #[test]
    fn disk_full_and_io_errors_are_disk_trouble_and_others_are_not() {
        assert!(is_disk_trouble(&full()));
        let io = StoreError::Sql(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_WRITE),
            None,
        ));
        assert!(is_disk_trouble(&io));
        let constraint = StoreError::Sql(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
            None,
        ));
        assert!(!is_disk_trouble(&constraint));
        assert!(!is_disk_trouble(&StoreError::Closed));
    }

    #[test]
    fn unstored_counts_taken_for_a_failed_commit_come_back() {
        let h = Health::default();
        h.count_unstored_telemetry(3);
        h.count_lost_events(1);
        let taken = h.take_unstored();
        assert_eq!(h.unstored(), Unstored::default());
        h.count_unstored_telemetry(2);
        h.give_back(taken);
        assert_eq!(
            h.unstored(),
            Unstored {
                telemetry: 5,
                lost_events: 1
            }
        );
    }

    #[test]
    fn status_says_disk_full_when_the_reserve_is_gone_and_space_is_short() {
        let mib = 1024 * 1024;
        assert!(describe_disk(16, 16 * mib, Some(100 * mib)).starts_with("ok, 100 MB free"));
        assert!(describe_disk(16, 0, Some(mib)).starts_with("DISK FULL (1 MB free)"));
        assert!(describe_disk(16, 0, None).starts_with("DISK FULL"));
        assert!(describe_disk(16, 0, Some(40 * mib)).contains("not in place"));
        assert!(describe_disk(0, 0, Some(mib)).contains("no reserve"));
    }

    #[test]
    fn the_reserve_is_made_only_with_twice_its_size_free_and_released_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Reserve::new(dir.path(), 1);
        assert!(!r.in_place());
        assert!(r.try_restore(true), "a temp dir has 2 MiB free");
        let meta = std::fs::metadata(dir.path().join(RESERVE_FILE)).unwrap();
        assert_eq!(meta.len(), 1024 * 1024);
        assert!(r.release());
        assert!(!r.release(), "nothing left to release");
        let mut huge = Reserve::new(dir.path(), u64::MAX / (4 * 1024 * 1024));
        assert!(!huge.try_restore(true));
        assert!(!dir.path().join(RESERVE_FILE).exists());
    }
}
