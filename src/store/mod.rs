//! The local store: one SQLite file in `data_dir`, owned by one thread.
//!
//! The async runtime never blocks on disk: work is sent to the store thread
//! as a closure over its single `rusqlite::Connection` and the answer comes
//! back on a oneshot channel ([`Store::call`]). The file runs in WAL mode
//! with `synchronous = FULL`, so a committed row survives SIGKILL and power
//! loss; only writes a power cut may undo without harm (copies for
//! `linegate status`, deletions of acknowledged messages) are committed
//! without waiting for the fsync ([`commit_unsynced`]). The schema is a list of versioned migrations ([`schema`]); each
//! concern keeps its own SQL in named constants in its own module (the
//! outbox in `uplink::outbox`, orders in `orders::book`, ...), the store only
//! runs it. The store never decides anything about machines or messages.
//!
//! A full disk does not stop it ([`health`]): the agent opens it with
//! [`Store::open_resilient`], which starts even when the file cannot be
//! opened yet (jobs then fail with [`StoreError::Unavailable`] and the
//! thread tries again), and the thread releases the reserve file when a job
//! fails for lack of space.
//!
//! The store holds orders and the write audit: a data folder it creates is
//! 0700 and the file 0600 (SQLite gives the `-wal`/`-shm` files the file's
//! mode), whatever the umask. An existing folder or file keeps its mode.

pub mod bus_stats;
pub mod health;
pub mod schema;

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

/// File name of the store inside `data_dir`.
pub const FILE_NAME: &str = "linegate.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The cause is in the message, not a `source`: printed as an error
    // chain it would otherwise appear twice.
    #[error("store {path}: {cause}")]
    Open {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    #[error("store {path}: cannot create the data folder: {cause}")]
    Folder {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("store {path}: cannot create the file: {cause}")]
    File {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "no store at {path}: has the agent run here? (it creates the store on its first start)"
    )]
    Missing { path: PathBuf },
    #[error(
        "store {path}: written by a newer linegate (schema {found}, this build knows {known})"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: the store thread has stopped")]
    Closed,
    /// The store could not be opened (yet): a full disk at start.
    #[error("store: not open: {0}")]
    Unavailable(String),
}

type Job = Box<dyn FnOnce(&mut Slot) + Send>;

/// What the store thread owns: the connection (once open), the reserve.
struct Slot {
    conn: Option<Connection>,
    path: PathBuf,
    reserve: health::Reserve,
    health: Arc<health::Health>,
    /// Last failed open (throttles the retries) and why.
    open_failed: Option<(Instant, String)>,
}

/// Free space that ends "writes failing" (then running on the reserve).
const SPACE_BACK_BYTES: u64 = 1024 * 1024;

/// How often an unopened store is tried again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

impl Slot {
    /// The connection, opening it first if that failed before.
    fn conn(&mut self) -> Result<&mut Connection, StoreError> {
        if self.conn.is_none() {
            if let Some((at, why)) = &self.open_failed {
                if at.elapsed() < REOPEN_EVERY {
                    return Err(StoreError::Unavailable(why.clone()));
                }
            }
            if let Some(dir) = self.path.parent() {
                // The data folder itself may not have been made at start.
                let _ = make_private(dir);
            }
            match open_and_migrate(&self.path) {
                Ok(c) => {
                    self.conn = Some(c);
                    self.open_failed = None;
                    self.settle(true);
                }
                Err(e) => {
                    if !health::is_disk_trouble(&e) {
                        tracing::error!(error = %e, "store: cannot open");
                    }
                    self.open_failed = Some((Instant::now(), e.to_string()));
                    return Err(StoreError::Unavailable(e.to_string()));
                }
            }
        }
        self.conn.as_mut().ok_or(StoreError::Closed)
    }

    /// Look at a job's result: a full disk releases the reserve; a write
    /// that worked may bring the reserve back.
    fn observe<R>(&mut self, r: &Result<R, StoreError>) {
        match r {
            Ok(_) => self.settle(false),
            Err(StoreError::Unavailable(why)) => {
                self.health.set(health::Condition::Unopened(why.clone()))
            }
            Err(e) if health::is_disk_trouble(e) => {
                if self.reserve.release() {
                    tracing::warn!(error = %e, "store: disk full: reserve released");
                    self.health.set(health::Condition::OnReserve);
                } else {
                    self.health.set(health::Condition::Failing(e.to_string()));
                }
            }
            Err(_) => {}
        }
    }

    /// After a job that worked: `Ok` once the reserve is back in place.
    /// While writes fail, a job that worked (a read) changes nothing until
    /// some space is free again, so the condition does not flap.
    fn settle(&mut self, now_anyway: bool) {
        if matches!(self.health.condition(), health::Condition::Failing(_)) {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            if health::free_bytes(dir).unwrap_or(0) < SPACE_BACK_BYTES {
                return;
            }
        }
        if self.reserve.try_restore(now_anyway) {
            self.health.set(health::Condition::Ok);
        } else if self.health.condition() != health::Condition::OnReserve {
            self.health.set(health::Condition::OnReserve);
        }
    }
}

/// Handle to the store thread. Cheap to clone; the thread ends when the last
/// handle is dropped, after finishing every job already sent.
#[derive(Clone)]
pub struct Store {
    jobs: std_mpsc::Sender<Job>,
    path: PathBuf,
    health: Arc<health::Health>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Open (or create) the store in `data_dir` and bring its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let path = make_private(data_dir)?;
        Self::open_file(&path)
    }

    /// Open the store in `data_dir` for a command that only reads: never
    /// creates a folder or a file; a store that is not there is
    /// [`StoreError::Missing`].
    pub fn open_existing(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join(FILE_NAME);
        if !path.is_file() {
            return Err(StoreError::Missing { path });
        }
        Self::open_file(&path)
    }

    /// Open (or create) the store at an exact file path.
    pub fn open_file(path: &Path) -> Result<Store, StoreError> {
        let conn = open_and_migrate(path)?;
        let reserve = health::Reserve::new(path.parent().unwrap_or(Path::new(".")), 0);
        Self::start(Some(conn), path, reserve, None)
    }

    /// Open the agent's store so that a full disk never stops it: keep
    /// `reserve_mb` of space in `data_dir/reserve.bin` for the important
    /// rows, and when the store cannot be opened for lack of space, release
    /// the reserve and, if that is not enough, start anyway (jobs fail with
    /// [`StoreError::Unavailable`] until an open works). Only errors that
    /// more space would not cure (a newer schema, no permission) fail here.
    pub fn open_resilient(data_dir: &Path, reserve_mb: u64) -> Result<Store, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let mut reserve = health::Reserve::new(data_dir, reserve_mb);
        let mut opened = make_private(data_dir).and_then(|path| open_and_migrate(&path));
        if matches!(&opened, Err(e) if health::is_disk_trouble(e)) && reserve.release() {
            tracing::warn!("store: disk full at start: reserve released");
            opened = open_and_migrate(&path);
        }
        match opened {
            Ok(conn) => Self::start(Some(conn), &path, reserve, None),
            Err(e) if health::is_disk_trouble(&e) => {
                let why = e.to_string();
                let store = Self::start(None, &path, reserve, Some(why.clone()))?;
                store.health.set(health::Condition::Unopened(why));
                Ok(store)
            }
            Err(e) => Err(e),
        }
    }

    fn start(
        conn: Option<Connection>,
        path: &Path,
        reserve: health::Reserve,
        open_failed: Option<String>,
    ) -> Result<Store, StoreError> {
        let health = Arc::new(health::Health::default());
        let mut slot = Slot {
            conn,
            path: path.to_path_buf(),
            reserve,
            health: health.clone(),
            open_failed: open_failed.map(|why| (Instant::now(), why)),
        };
        if slot.conn.is_some() {
            slot.settle(true);
        }
        let (jobs, rx) = std_mpsc::channel::<Job>();
        thread::Builder::new()
            .name("linegate-store".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut slot);
                }
                // Checkpoint on a clean stop so the WAL does not linger.
                if let Some(conn) = &slot.conn {
                    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
                }
            })
            .map_err(|cause| StoreError::Folder {
                path: path.to_path_buf(),
                cause,
            })?;
        Ok(Store {
            jobs,
            path: path.to_path_buf(),
            health,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store's condition and the counts of what it could not store.
    pub fn health(&self) -> &Arc<health::Health> {
        &self.health
    }

    /// Run `f` on the store thread and wait for its answer.
    pub async fn call<F, R>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |slot: &mut Slot| {
                let r = slot.conn().and_then(f);
                slot.observe(&r);
                let _ = tx.send(r);
            }))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`Store::call`], for code outside the async runtime (CLI, tests).
    pub fn call_blocking<F, R>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = std_mpsc::channel();
        self.jobs
            .send(Box::new(move |slot: &mut Slot| {
                let r = slot.conn().and_then(f);
                slot.observe(&r);
                let _ = tx.send(r);
            }))
            .map_err(|_| StoreError::Closed)?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }
}

/// Make the data folder (0700) and an empty store file (0600) where they are
/// missing, so neither takes the umask's looser mode (SQLite would make the
/// file 0644 less the umask; its -wal and -shm follow the file's mode). An
/// existing folder or file is left as it is. The store file's path.
fn make_private(data_dir: &Path) -> Result<PathBuf, StoreError> {
    // umask can only take bits away from 0700.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|cause| StoreError::Folder {
            path: data_dir.to_path_buf(),
            cause,
        })?;
    let path = data_dir.join(FILE_NAME);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(_) => Ok(path),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(path),
        Err(cause) => Err(StoreError::File { path, cause }),
    }
}

fn open_and_migrate(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = open_connection(path)?;
    schema::migrate(&mut conn, path)?;
    Ok(conn)
}

/// Switch the file to WAL. A new file switches under an exclusive lock, and
/// SQLite answers a second opener doing the same at that moment with
/// `SQLITE_BUSY` at once, without waiting out `busy_timeout` (waiting could
/// deadlock two readers that both want to write): that opener tries again
/// for up to [`WAL_SWITCH_WAIT`], and then finds the file in WAL already.
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = Instant::now() + WAL_SWITCH_WAIT;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(10));
            }
            other => return other.map(|_| ()),
        }
    }
}

/// How long a second opener of a new store waits for the first to switch it to WAL.
const WAL_SWITCH_WAIT: Duration = Duration::from_secs(5);

/// Open a connection with the store's pragmas (also used read-only by CLI commands).
pub fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|cause| StoreError::Open {
        path: path.to_path_buf(),
        cause,
    })?;
    set_wal(&conn).map_err(|cause| StoreError::Open {
        path: path.to_path_buf(),
        cause,
    })?;
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;
         PRAGMA cache_size = -512;",
    )
    .map_err(|cause| StoreError::Open {
        path: path.to_path_buf(),
        cause,
    })?;
    Ok(conn)
}

/// Run `work` in a transaction committed without waiting for an fsync
/// (`synchronous = NORMAL` for it alone; the connection is `FULL` again
/// afterwards, also after an error).
///
/// For writes that a power cut may undo without harm: copies kept for
/// `linegate status` (last signal values, bus counters, the uplink's state)
/// and the deletion of outbox rows the broker already acknowledged. SIGKILL
/// keeps them (the operating system has the written log); a power cut can
/// undo the last of them, never a synced commit (the log is replayed in
/// order, and the next synced commit syncs everything before it too).
/// Must not be called inside a transaction: SQLite refuses to change the
/// safety level there.
pub fn commit_unsynced<T>(
    conn: &Connection,
    work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.prepare_cached(SYNC_NORMAL)?.execute([])?;
    let result = conn
        .unchecked_transaction()
        .map_err(StoreError::from)
        .and_then(|tx| {
            let value = work(&tx)?;
            tx.commit()?;
            Ok(value)
        });
    let back = conn
        .prepare_cached(SYNC_FULL)
        .and_then(|mut s| s.execute([]));
    let value = result?;
    back?;
    Ok(value)
}

const SYNC_NORMAL: &str = "PRAGMA synchronous = NORMAL";
const SYNC_FULL: &str = "PRAGMA synchronous = FULL";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openers_of_a_new_store_at_the_same_moment_migrate_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || open_and_migrate(&p).map(|_| ()))
            })
            .collect();
        for o in openers {
            o.join()
                .unwrap()
                .expect("every opener finds the schema migrated");
        }
        let conn = open_connection(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, schema::MIGRATIONS.len() as i64);
    }

    #[test]
    fn an_unsynced_commit_is_kept_and_leaves_the_connection_fully_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let conn = open_and_migrate(&path).unwrap();
        let sync = |c: &Connection| -> i64 {
            c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap()
        };
        commit_unsynced(&conn, |tx| {
            tx.execute_batch("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1);")?;
            let inside: i64 = tx.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
            assert_eq!(inside, 1, "NORMAL inside");
            Ok(())
        })
        .unwrap();
        assert_eq!(sync(&conn), 2, "FULL again");
        // A failed one is rolled back, and FULL again too.
        let failed = commit_unsynced(&conn, |tx| -> Result<(), StoreError> {
            tx.execute("INSERT INTO t VALUES (2)", [])?;
            tx.execute("INSERT INTO no_such_table VALUES (3)", [])?;
            Ok(())
        });
        assert!(failed.is_err());
        assert_eq!(sync(&conn), 2, "FULL again after the error");
        drop(conn);
        // Another connection (the next start) reads what was committed.
        let other = open_connection(&path).unwrap();
        let rows: Vec<i64> = other
            .prepare("SELECT v FROM t")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [1]);
        // Inside a transaction SQLite refuses to change the safety level: an error, not a panic.
        other.execute_batch("BEGIN").unwrap();
        assert!(commit_unsynced(&other, |_| Ok(())).is_err());
    }

    #[tokio::test]
    async fn a_store_survives_reopen_with_its_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let v = store
            .call(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?))
            .await
            .unwrap();
        assert_eq!(v, schema::MIGRATIONS.len() as i64);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let mode = store
            .call(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))?))
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
