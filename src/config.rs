//! Checked settings shared by the commands: where the embedded backends live, where
//! outputs go, which dates a KPI run covers. Raw flags become these before any work
//! starts, so a bad value is reported up front with what to do about it.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::deadletter::FileDeadLetters;
use crate::kpi::DateSelection;
use crate::store::sqlite::SqliteStore;
use crate::stream::embedded::EmbeddedStream;
use crate::{Error, Result};

/// The embedded backends' folder (`--home`): `stream.sqlite` (stream and checkpoints),
/// `trips.sqlite` (trip table) and `dead_letters.ndjson`.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// A home folder; it is created when a backend first opens it.
    ///
    /// # Errors
    /// When the path exists and is not a folder.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Config(format!(
                "--home {} is a file, not a folder; give a folder for tripflow's data",
                dir.display()
            )));
        }
        Ok(Home { dir })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens the embedded stream.
    ///
    /// # Errors
    /// See [`EmbeddedStream::open`].
    pub fn stream(&self, shards: Option<u32>) -> Result<EmbeddedStream> {
        EmbeddedStream::open(&self.dir, shards)
    }

    /// Opens the embedded trip table.
    ///
    /// # Errors
    /// See [`SqliteStore::open`].
    pub fn store(&self) -> Result<SqliteStore> {
        SqliteStore::open(&self.dir)
    }

    /// The dead-letter file.
    pub fn dead_letter_path(&self) -> PathBuf {
        self.dir.join("dead_letters.ndjson")
    }

    /// Opens the dead-letter file.
    ///
    /// # Errors
    /// See [`FileDeadLetters::open`].
    pub fn dead_letters(&self) -> Result<FileDeadLetters> {
        FileDeadLetters::open(&self.dead_letter_path())
    }
}

/// Parses a `YYYY-MM-DD` date flag.
///
/// # Errors
/// When the text is not such a date.
pub fn parse_date(s: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| Error::Config(format!("--date {s:?} is not a date; write it YYYY-MM-DD, e.g. 2024-05-25")))
}

/// The dates of a KPI run from `--date` flags; none means all dates (`--all`).
///
/// # Errors
/// When a date does not parse.
pub fn date_selection(dates: &[String]) -> Result<DateSelection> {
    if dates.is_empty() {
        return Ok(DateSelection::All);
    }
    Ok(DateSelection::Dates(dates.iter().map(|d| parse_date(d)).collect::<Result<_>>()?))
}

/// Checks that an input file exists and is a file, before any work starts.
///
/// # Errors
/// When it does not, with the flag that names it.
pub fn input_file(path: &Path, flag: &str) -> Result<PathBuf> {
    if !path.is_file() {
        let what = if path.exists() { "is not a file" } else { "does not exist" };
        return Err(Error::Input {
            path: path.into(),
            message: format!("{what}; give an existing file with {flag}"),
        });
    }
    Ok(path.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_or_say_how_to_write_them() {
        assert_eq!(parse_date("2024-05-25").unwrap(), NaiveDate::from_ymd_opt(2024, 5, 25).unwrap());
        assert!(parse_date("25-05-2024").unwrap_err().to_string().contains("YYYY-MM-DD"));
        assert_eq!(date_selection(&[]).unwrap(), DateSelection::All);
    }

    #[test]
    fn a_missing_input_names_its_flag() {
        let err = input_file(Path::new("/no/such.csv"), "--start").unwrap_err().to_string();
        assert!(err.contains("/no/such.csv") && err.contains("--start"), "{err}");
    }
}
