//! SQLite plumbing shared by the embedded backends (stream, checkpoints, trip table).
//!
//! Each backend owns one connection behind a mutex and runs its statements on tokio's
//! blocking pool, so the async pipeline never waits on disk I/O in a runtime thread.
//! Databases use WAL with `synchronous=FULL`: a committed transaction survives a crash,
//! which is what lets a checkpoint follow a merge safely, and a producer and a consumer
//! in separate processes can share a stream file.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use crate::error::Stage;
use crate::{Error, Result};

/// A connection shared by an embedded backend, whose SQLite errors are labelled with
/// that backend's stage and file.
#[derive(Clone)]
pub(crate) struct Db {
    conn: Arc<Mutex<Connection>>,
    stage: Stage,
    file: Arc<str>,
}

/// An error inside a [`Db::call`]: SQLite's own (labelled with the backend's stage and
/// file as it leaves the call), or one of tripflow's.
pub(crate) enum DbError {
    Sqlite(rusqlite::Error),
    Tripflow(Error),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sqlite(e)
    }
}

impl From<Error> for DbError {
    fn from(e: Error) -> Self {
        DbError::Tripflow(e)
    }
}

/// The result of the work done in a [`Db::call`].
pub(crate) type DbResult<T> = std::result::Result<T, DbError>;

impl Db {
    /// Opens (creating if needed) the database at `path` and applies `schema`, with a
    /// page cache of `cache_mib` MiB. Its errors are `stage` errors.
    pub(crate) fn open(path: &Path, schema: &str, cache_mib: i64, stage: Stage) -> Result<Self> {
        let file: Arc<str> = path.display().to_string().into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| crate::error::home_io(stage, dir, e))?;
        }
        let conn = Connection::open(path).map_err(|e| {
            // A file the user cannot open is a setting to change; anything else (a full
            // disk, say) is the stage's failure.
            use rusqlite::ErrorCode::{CannotOpen, PermissionDenied, ReadOnly};
            match e.sqlite_error_code() {
                Some(CannotOpen | PermissionDenied | ReadOnly) => {
                    Error::config_because(format!("cannot open {}", path.display()), e, "choose a writable --home")
                }
                _ => stage.error(format!("cannot open {}", path.display()), e),
            }
        })?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(|e| stage.error(&file, e))?;
        // Two processes creating the same file at once (a producer and a consumer started
        // together) can get SQLITE_BUSY from the switch to WAL or the schema, which do
        // not always wait on the busy handler: try again for a while.
        let began = std::time::Instant::now();
        loop {
            let setup = conn
                .pragma_update(None, "journal_mode", "WAL")
                .and_then(|_| conn.pragma_update(None, "synchronous", "FULL"))
                .and_then(|_| conn.pragma_update(None, "cache_size", -1024 * cache_mib))
                .and_then(|_| conn.execute_batch(schema));
            match setup {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy && began.elapsed() < Duration::from_secs(30) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(stage.error(&file, e)),
            }
        }
        Ok(Db { conn: Arc::new(Mutex::new(conn)), stage, file })
    }

    /// The connection, for set-up work outside the async runtime.
    pub(crate) fn blocking(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` with the connection on the blocking pool.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> DbResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| self.stage.error(&self.file, e))?;
        done.map_err(|e| self.label(e))
    }

    /// The tripflow error of a failure inside the database.
    pub(crate) fn label(&self, e: DbError) -> Error {
        match e {
            DbError::Sqlite(e) => self.stage.error(&self.file, e),
            DbError::Tripflow(e) => e,
        }
    }
}
