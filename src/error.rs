//! The library's typed error, one variant per stage.
//!
//! A bad *record* is never an error: it is data for the dead-letter output. These variants
//! are for what stops a command: bad settings, unreadable inputs, a broken backend, a
//! query that does not plan, an output that cannot be written.
//!
//! As in object_store and DataFusion, a message is complete on its own (it names the
//! thing, the cause in readable words and what to do), and the error that caused it is
//! kept as its [`source`](std::error::Error::source) for a program that wants to
//! inspect it. There are no blanket conversions from a backend's error type: SQLite
//! holds both the embedded stream and the embedded store, and Arrow runs in ingest as in
//! the queries, so each call site names its own stage.

use std::path::PathBuf;

/// A cause kept inside an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can stop a tripflow command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid; the message says which and what to do.
    #[error("{message}")]
    Config {
        /// Which setting, what is wrong, and what to do.
        message: String,
        /// The error that showed it wrong (a refused bind, an unparsable value), if any.
        #[source]
        source: Option<BoxError>,
    },
    /// An input file could not be opened or read.
    #[error("{path}: {message}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
        /// The reader's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The stream backend (records, shards, checkpoints) failed.
    #[error("stream: {message}")]
    Stream {
        /// What failed.
        message: String,
        /// The backend's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The trip store failed, or a stored value could not be read.
    #[error("store: {message}")]
    Store {
        /// What failed.
        message: String,
        /// The backend's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// Decoding or validating a micro-batch failed inside an Arrow kernel: a bug, not
    /// bad data (bad data is dead-lettered).
    #[error("ingest: {message}")]
    Ingest {
        /// What failed.
        message: String,
        /// The kernel's error.
        #[source]
        source: Option<BoxError>,
    },
    /// A KPI query failed to parse, plan or run.
    #[error("query {file}: {message}")]
    Query {
        /// The query file (or `<sql>` for ad-hoc SQL).
        file: String,
        /// DataFusion's message.
        message: String,
        /// DataFusion's error.
        #[source]
        source: Option<BoxError>,
    },
    /// An output (KPI files, dead letters) could not be written.
    #[error("output: {message}")]
    Output {
        /// What failed.
        message: String,
        /// The writer's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// The stage that failed, as one word: `config`, `input`, `stream`, `store`,
    /// `ingest`, `query` or `output`.
    pub fn stage(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::Input { .. } => "input",
            Error::Stream { .. } => "stream",
            Error::Store { .. } => "store",
            Error::Ingest { .. } => "ingest",
            Error::Query { .. } => "query",
            Error::Output { .. } => "output",
        }
    }

    /// The process's exit status for this error: 2 when the user can fix it by changing
    /// a setting or an input (as clap exits on a bad flag), 1 when something failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config { .. } | Error::Input { .. } => 2,
            _ => 1,
        }
    }

    /// A settings error with no underlying error.
    pub fn config(message: impl Into<String>) -> Self {
        Error::Config { message: message.into(), source: None }
    }

    /// A settings error that `cause` showed: `context: cause; remedy`, with the cause
    /// kept as the source.
    pub fn config_because(context: impl std::fmt::Display, cause: impl Into<BoxError>, remedy: &str) -> Self {
        let source = cause.into();
        Error::Config { message: with_cause(context, &source, remedy), source: Some(source) }
    }

    /// An input error with no underlying error.
    pub fn input(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Input { path: path.into(), message: message.into(), source: None }
    }

    /// An input error that `cause` showed: `path: context: cause; remedy`, with the cause
    /// kept as the source.
    pub fn input_because(
        path: impl Into<PathBuf>,
        context: impl std::fmt::Display,
        cause: impl Into<BoxError>,
        remedy: &str,
    ) -> Self {
        let source = cause.into();
        Error::Input { path: path.into(), message: with_cause(context, &source, remedy), source: Some(source) }
    }

    /// A stream failure with no underlying error.
    pub fn stream(message: impl Into<String>) -> Self {
        Error::Stream { message: message.into(), source: None }
    }

    /// A store failure with no underlying error.
    pub fn store(message: impl Into<String>) -> Self {
        Error::Store { message: message.into(), source: None }
    }

    /// An output failure with no underlying error.
    pub fn output(message: impl Into<String>) -> Self {
        Error::Output { message: message.into(), source: None }
    }
}

/// A file or folder under `--home` that `stage` could not create or open: a settings
/// error when the folder is not writable (the user picks another), and otherwise the
/// stage's own failure, with its cause (a full disk is not a setting).
pub fn home_io(stage: Stage, path: &std::path::Path, e: std::io::Error) -> Error {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem | ErrorKind::NotADirectory => {
            Error::config_because(format!("cannot create or open {}", path.display()), e, "choose a writable --home")
        }
        _ => stage.error(format!("cannot create or open {}", path.display()), e),
    }
}

/// Labels a backend's error with the stage it failed in, keeping it as the source:
/// `conn.execute(…).stage(Stage::Stream, "put to stream.db")?`.
pub trait Context<T> {
    /// On error: `stage: context: <the error>`, with the error as the source.
    ///
    /// # Errors
    /// When `self` is an error.
    fn stage(self, stage: Stage, context: impl std::fmt::Display) -> Result<T>;
}

/// A stage an underlying error can be labelled with (see [`Context`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// [`Error::Stream`].
    Stream,
    /// [`Error::Store`].
    Store,
    /// [`Error::Ingest`].
    Ingest,
    /// [`Error::Output`].
    Output,
}

impl Stage {
    /// The error of this stage, with `cause` kept as its source.
    pub fn error(self, context: impl std::fmt::Display, cause: impl Into<BoxError>) -> Error {
        self.error_then(context, cause, "")
    }

    /// As [`Stage::error`], with what to do after the cause:
    /// `context: cause; remedy`.
    pub fn error_then(self, context: impl std::fmt::Display, cause: impl Into<BoxError>, remedy: &str) -> Error {
        let source: BoxError = cause.into();
        let message = with_cause(context, &source, remedy);
        let source = Some(source);
        match self {
            Stage::Stream => Error::Stream { message, source },
            Stage::Store => Error::Store { message, source },
            Stage::Ingest => Error::Ingest { message, source },
            Stage::Output => Error::Output { message, source },
        }
    }
}

/// `context: cause`, then `; remedy` when there is one.
fn with_cause(context: impl std::fmt::Display, cause: &BoxError, remedy: &str) -> String {
    match remedy {
        "" => format!("{context}: {cause}"),
        _ => format!("{context}: {cause}; {remedy}"),
    }
}

impl<T, E: Into<BoxError>> Context<T> for std::result::Result<T, E> {
    fn stage(self, stage: Stage, context: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| stage.error(context, e))
    }
}

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_labelled_error_keeps_its_cause() {
        let cause = rusqlite::Error::InvalidQuery;
        let err = Err::<(), _>(cause).stage(Stage::Stream, "put to stream.db").unwrap_err();
        assert_eq!(err.stage(), "stream");
        assert!(err.to_string().starts_with("stream: put to stream.db: "), "{err}");
        let source = err.source().expect("the cause is kept");
        assert!(source.downcast_ref::<rusqlite::Error>().is_some());
    }

    #[test]
    fn a_folder_that_cannot_be_written_is_a_setting_and_a_full_disk_is_not() {
        use std::io::{Error as IoError, ErrorKind};
        let path = std::path::Path::new("/data/tripflow/trips");
        let denied = home_io(Stage::Store, path, IoError::from(ErrorKind::PermissionDenied));
        assert_eq!((denied.stage(), denied.exit_code()), ("config", 2));
        assert!(denied.to_string().contains("choose a writable --home"), "{denied}");
        let full = home_io(Stage::Store, path, IoError::from(ErrorKind::StorageFull));
        assert_eq!((full.stage(), full.exit_code()), ("store", 1));
        assert!(full.to_string().starts_with("store: cannot create or open /data/tripflow/trips"), "{full}");
        assert!(full.source().is_some(), "the I/O error is kept");
        assert!(denied.source().is_some(), "the I/O error is kept");
        assert_eq!(Error::input(path, "gone").exit_code(), 2);
        assert_eq!(Error::output("S3 refused").exit_code(), 1);
    }

    #[test]
    fn settings_and_input_errors_keep_their_causes() {
        let bad = "x".parse::<u32>().unwrap_err();
        let e = Error::config_because("--x x", bad, "give a number");
        assert_eq!(e.to_string(), "--x x: invalid digit found in string; give a number");
        assert!(e.source().and_then(|s| s.downcast_ref::<std::num::ParseIntError>()).is_some());
        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = Error::input_because("a.csv", "cannot open", gone, "");
        assert_eq!(e.to_string(), "a.csv: cannot open: entity not found");
        assert!(e.source().is_some());
        let cron = crate::kpi::schedule::Schedule::parse("nope").unwrap_err();
        assert_eq!(cron.exit_code(), 2);
        assert!(cron.source().is_some(), "{cron}");
    }
}
