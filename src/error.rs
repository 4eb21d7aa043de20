//! The library's typed error, one variant per stage.
//!
//! A bad *record* is never an error: it is data for the dead-letter output. These variants
//! are for what stops a command: bad settings, unreadable inputs, a broken backend, a
//! query that does not plan, an output that cannot be written.

use std::path::PathBuf;

/// Everything that can stop a tripflow command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid; the message says which and what to do.
    #[error("{0}")]
    Config(String),
    /// An input file could not be opened or read.
    #[error("{path}: {message}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The stream backend failed.
    #[error("stream: {0}")]
    Stream(String),
    /// The trip store failed.
    #[error("store: {0}")]
    Store(String),
    /// A KPI query failed to parse, plan or run.
    #[error("query {file}: {message}")]
    Query {
        /// The query file (or `<sql>` for ad-hoc SQL).
        file: String,
        /// DataFusion's message.
        message: String,
    },
    /// An output (KPI files, dead letters) could not be written.
    #[error("output: {0}")]
    Output(String),
    /// A fault injected by a test hook; never raised in normal operation.
    #[error("injected fault: {0}")]
    InjectedFault(&'static str),
}

impl Error {
    /// The stage that failed, as one word: `config`, `input`, `stream`, `store`,
    /// `query`, `output` (or `injected` for a test's fault).
    pub fn stage(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Input { .. } => "input",
            Error::Stream(_) => "stream",
            Error::Store(_) => "store",
            Error::Query { .. } => "query",
            Error::Output(_) => "output",
            Error::InjectedFault(_) => "injected",
        }
    }
}

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Store(e.to_string())
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::Query { file: "<arrow>".into(), message: e.to_string() }
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        Error::Output(e.to_string())
    }
}
