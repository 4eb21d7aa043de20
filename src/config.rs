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

/// The date flags of a KPI run, as given.
#[derive(Debug, Clone, Default)]
pub struct DateFlags {
    /// `--date D` (repeatable).
    pub dates: Vec<String>,
    /// `--from D`.
    pub from: Option<String>,
    /// `--to D`.
    pub to: Option<String>,
    /// `--all`.
    pub all: bool,
    /// `--lookback N`: earlier days the nightly default also covers.
    pub lookback: u32,
}

/// The dates of a KPI run. `--all` is every date, `--date` the dates given, `--from` /
/// `--to` an inclusive range (`--to` defaults to `today`); with none of them, the nightly
/// default: `today` and the `lookback` days before it, so late events still count.
///
/// # Errors
/// When a date does not parse, or a range is empty or has no start.
pub fn date_selection(flags: &DateFlags, today: NaiveDate) -> Result<DateSelection> {
    if flags.all {
        return Ok(DateSelection::All);
    }
    if !flags.dates.is_empty() {
        return Ok(DateSelection::Dates(flags.dates.iter().map(|d| parse_date(d)).collect::<Result<_>>()?));
    }
    let (from, to) = match (&flags.from, &flags.to) {
        (Some(from), to) => (parse_date(from)?, to.as_deref().map(parse_date).transpose()?.unwrap_or(today)),
        (None, Some(_)) => return Err(Error::Config("--to needs --from; give both, e.g. --from 2024-05-24 --to 2024-05-26".into())),
        (None, None) => (today - chrono::Days::new(u64::from(flags.lookback)), today),
    };
    if from > to {
        return Err(Error::Config(format!("--from {from} is after --to {to}; swap them")));
    }
    Ok(DateSelection::Dates(from.iter_days().take_while(|d| *d <= to).collect()))
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

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, 5, d).unwrap()
    }

    #[test]
    fn dates_parse_or_say_how_to_write_them() {
        assert_eq!(parse_date("2024-05-25").unwrap(), day(25));
        assert!(parse_date("25-05-2024").unwrap_err().to_string().contains("YYYY-MM-DD"));
    }

    #[test]
    fn date_flags_select_dates() {
        let today = day(26);
        let sel = |f: DateFlags| date_selection(&f, today);
        let s = |v: &str| Some(v.to_string());
        assert_eq!(sel(DateFlags { all: true, ..Default::default() }).unwrap(), DateSelection::All);
        assert_eq!(
            sel(DateFlags { lookback: 1, ..Default::default() }).unwrap(),
            DateSelection::Dates(vec![day(25), day(26)]),
            "nightly: today and yesterday"
        );
        assert_eq!(
            sel(DateFlags { from: s("2024-05-20"), to: s("2024-05-22"), ..Default::default() }).unwrap(),
            DateSelection::Dates(vec![day(20), day(21), day(22)])
        );
        assert_eq!(
            sel(DateFlags { from: s("2024-05-25"), ..Default::default() }).unwrap(),
            DateSelection::Dates(vec![day(25), day(26)])
        );
        assert!(sel(DateFlags { to: s("2024-05-25"), ..Default::default() }).unwrap_err().to_string().contains("--from"));
        assert!(sel(DateFlags { from: s("2024-05-27"), to: s("2024-05-25"), ..Default::default() }).is_err());
    }

    #[test]
    fn a_missing_input_names_its_flag() {
        let err = input_file(Path::new("/no/such.csv"), "--start").unwrap_err().to_string();
        assert!(err.contains("/no/such.csv") && err.contains("--start"), "{err}");
    }
}
