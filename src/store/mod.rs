//! The local store: one SQLite file in `data_dir`, owned by one thread.
//!
//! The async runtime never blocks on disk: work is sent to the store thread
//! as a closure over its single `rusqlite::Connection` and the answer comes
//! back on a oneshot channel ([`Store::call`]). The file runs in WAL mode
//! with `synchronous = FULL`, so a committed row survives SIGKILL and power
//! loss. The schema is a list of versioned migrations ([`schema`]); each
//! concern keeps its own SQL in named constants in its own module (the
//! outbox in `uplink::outbox`, orders in `orders::book`, ...), the store only
//! runs it. The store never decides anything about machines or messages.
//!
//! The store holds orders and the write audit: a data folder it creates is
//! 0700 and the file 0600 (SQLite gives the `-wal`/`-shm` files the file's
//! mode), whatever the umask. An existing folder or file keeps its mode.

pub mod schema;

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::thread;

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
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Handle to the store thread. Cheap to clone; the thread ends when the last
/// handle is dropped, after finishing every job already sent.
#[derive(Clone)]
pub struct Store {
    jobs: std_mpsc::Sender<Job>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Open (or create) the store in `data_dir` and bring its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let folder_error = |cause| StoreError::Folder {
            path: data_dir.to_path_buf(),
            cause,
        };
        // Folders made here are 0700 (umask can only take bits away).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(folder_error)?;
        let path = data_dir.join(FILE_NAME);
        // Made empty with 0600 before SQLite opens it (SQLite would make it
        // 0644 less the umask); an existing file is left as it is.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(cause) => return Err(StoreError::File { path, cause }),
        }
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
        let mut conn = open_connection(path)?;
        schema::migrate(&mut conn, path)?;
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let path_buf = path.to_path_buf();
        thread::Builder::new()
            .name("linegate-store".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
                // Checkpoint on a clean stop so the WAL does not linger.
                let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
            })
            .map_err(|cause| StoreError::Folder {
                path: path.to_path_buf(),
                cause,
            })?;
        Ok(Store {
            jobs,
            path: path_buf,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on the store thread and wait for its answer.
    pub async fn call<F, R>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
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
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| StoreError::Closed)?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }
}

/// Open a connection with the store's pragmas (also used read-only by CLI commands).
pub fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|cause| StoreError::Open {
        path: path.to_path_buf(),
        cause,
    })?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;
         PRAGMA cache_size = -1024;",
    )
    .map_err(|cause| StoreError::Open {
        path: path.to_path_buf(),
        cause,
    })?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

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
