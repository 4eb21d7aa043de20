//! What the commands and the Lambda functions share about their backends: the URLs of
//! the stream, the trip table and the dead letters (each embedded one carrying its
//! home), the openers that turn them into backends, and which dates a KPI run covers.
//! The command line's flags become these once, in [`crate::cli::settings`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use tokio::sync::OnceCell;

use crate::backend::aws::Aws;
use crate::backend::location::{DeadLetterPlace, Location, ObjectPlace, StorePlace, StreamPlace};
use crate::ingest::deadletter::{DeadLetterSink, FileDeadLetters, ObjectDeadLetters};
use crate::kpi::{DateSelection, OutputLocation};
use crate::store::TripStore;
use crate::store::dynamodb::DynamoStore;
use crate::store::lsm::{self, LsmStore};
use crate::store::sqlite::SqliteStore;
use crate::stream::checkpoints_dynamodb::DynamoCheckpoints;
use crate::stream::embedded::EmbeddedStream;
use crate::stream::kinesis::KinesisStream;
use crate::stream::{CheckpointStore, Stream};
use crate::{Error, Result};

/// The embedded backends' folder (`--home`): `stream/` (stream and checkpoints),
/// `trips/` (the trip table, an LSM tree) and `dead_letters.ndjson`. A home made before
/// the log stream or the LSM table keeps its SQLite ones, `stream.sqlite` and
/// `trips.sqlite`.
#[derive(Debug, Clone, PartialEq, Eq)]
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
            return Err(Error::config(format!(
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

    /// Opens the embedded trip table: the LSM table in `trips/`, or the SQLite table
    /// `trips.sqlite` of a home that has one and no LSM table (made by an older build).
    ///
    /// # Errors
    /// See [`LsmStore::open`] and [`SqliteStore::open`].
    pub fn store(&self) -> Result<Arc<dyn TripStore>> {
        Ok(match self.sqlite_table() {
            Some(_) => Arc::new(SqliteStore::open(&self.dir)?),
            None => Arc::new(LsmStore::open(&self.dir)?),
        })
    }

    /// Where the embedded trip table is (it may not exist yet).
    pub fn store_path(&self) -> PathBuf {
        self.sqlite_table().unwrap_or_else(|| self.dir.join(lsm::FOLDER))
    }

    /// The SQLite trip table of an older home, if this home has one and no LSM table.
    fn sqlite_table(&self) -> Option<PathBuf> {
        let sqlite = self.dir.join("trips.sqlite");
        (sqlite.exists() && !self.dir.join(lsm::FOLDER).exists()).then_some(sqlite)
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

/// The AWS configuration, loaded from the environment the first time a URL needs it,
/// so the embedded default never touches AWS settings.
#[derive(Default)]
pub struct AwsEnv {
    cell: OnceCell<Aws>,
}

impl AwsEnv {
    /// A fixed configuration (tests point it at an emulator).
    pub fn fixed(aws: Aws) -> Self {
        AwsEnv { cell: OnceCell::new_with(Some(aws)) }
    }

    /// The configuration.
    ///
    /// # Errors
    /// When it cannot be loaded (no region, say).
    pub async fn get(&self) -> Result<&Aws> {
        self.cell.get_or_try_init(Aws::from_env).await
    }
}

/// Where the stream is: `--stream`, with the home of the embedded one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamUrl {
    /// `<home>/stream/`.
    Embedded(Home),
    /// `kinesis://NAME`.
    Kinesis(String),
}

/// Where the trip table is: `--store`, with the home of the embedded one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// The embedded table under the home (see [`Home::store`]).
    Embedded(Home),
    /// `dynamodb://TABLE`.
    DynamoDb(String),
}

/// Where rejected records go: `--dead-letter`, with the home of the embedded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterUrl {
    /// `<home>/dead_letters.ndjson`.
    Embedded(Home),
    /// A local file, or a prefix in an S3 bucket.
    Object(ObjectPlace),
}

impl StreamUrl {
    /// Parses `--stream`; the embedded stream is `home`'s.
    ///
    /// # Errors
    /// When it is neither `kinesis://NAME` nor `embedded`.
    pub fn parse(url: Option<&str>, home: &Home) -> Result<Self> {
        Ok(match Location::parse_as("--stream", url)? {
            StreamPlace::Embedded => StreamUrl::Embedded(home.clone()),
            StreamPlace::Kinesis(name) => StreamUrl::Kinesis(name),
        })
    }
}

impl StoreUrl {
    /// Parses `--store`; the embedded table is `home`'s.
    ///
    /// # Errors
    /// When it is neither `dynamodb://TABLE` nor `embedded`.
    pub fn parse(url: Option<&str>, home: &Home) -> Result<Self> {
        Ok(match Location::parse_as("--store", url)? {
            StorePlace::Embedded => StoreUrl::Embedded(home.clone()),
            StorePlace::DynamoDb(table) => StoreUrl::DynamoDb(table),
        })
    }
}

impl DeadLetterUrl {
    /// Parses `--dead-letter`; the embedded file is `home`'s.
    ///
    /// # Errors
    /// When it is not a path, `file://` or `s3://` URL, or `embedded`.
    pub fn parse(url: Option<&str>, home: &Home) -> Result<Self> {
        Ok(match Location::parse_as("--dead-letter", url)? {
            DeadLetterPlace::Embedded => DeadLetterUrl::Embedded(home.clone()),
            DeadLetterPlace::Object(place) => DeadLetterUrl::Object(place),
        })
    }
}

/// Tuning of the AWS backends.
#[derive(Debug, Clone)]
pub struct AwsTuning {
    /// DynamoDB table of the Kinesis consumer checkpoints.
    pub checkpoint_table: String,
    /// UpdateItem calls in flight.
    pub write_concurrency: usize,
    /// Parallel Scan segments of an export.
    pub scan_segments: u32,
    /// Pause between two GetRecords calls on one shard.
    pub read_interval: std::time::Duration,
}

impl Default for AwsTuning {
    fn default() -> Self {
        AwsTuning {
            checkpoint_table: crate::stream::checkpoints_dynamodb::DEFAULT_TABLE.into(),
            write_concurrency: crate::store::dynamodb::DEFAULT_WRITE_CONCURRENCY,
            scan_segments: crate::store::dynamodb::DEFAULT_SCAN_SEGMENTS,
            read_interval: crate::stream::kinesis::DEFAULT_READ_INTERVAL,
        }
    }
}

/// An opened stream and the store of its consumer checkpoints.
pub struct OpenedStream {
    /// The stream.
    pub stream: Arc<dyn Stream>,
    /// Checkpoints: in the stream's file when embedded, in DynamoDB with Kinesis.
    pub checkpoints: Arc<dyn CheckpointStore>,
}

/// Opens the stream `url` names. `shards` sizes a new embedded stream.
///
/// # Errors
/// When the stream or its checkpoint table does not exist, or cannot be opened.
pub async fn open_stream(
    url: &StreamUrl,
    shards: Option<u32>,
    aws: &AwsEnv,
    tuning: &AwsTuning,
) -> Result<OpenedStream> {
    match url {
        StreamUrl::Embedded(home) => {
            let s = Arc::new(home.stream(shards)?);
            Ok(OpenedStream { stream: s.clone(), checkpoints: s })
        }
        StreamUrl::Kinesis(name) => {
            if shards.is_some() {
                return Err(Error::config(format!(
                    "--shards sizes the embedded stream; a Kinesis stream gets its shards from 'tripflow setup --stream kinesis://{name} --shards N'"
                )));
            }
            let aws = aws.get().await?;
            let stream = KinesisStream::new(aws, name).with_read_interval(tuning.read_interval);
            stream.check_exists().await?;
            Ok(OpenedStream {
                stream: Arc::new(stream),
                checkpoints: Arc::new(DynamoCheckpoints::new(aws, &tuning.checkpoint_table)),
            })
        }
    }
}

/// Opens the trip table `url` names.
///
/// # Errors
/// When it does not exist or cannot be opened.
pub async fn open_store(url: &StoreUrl, aws: &AwsEnv, tuning: &AwsTuning) -> Result<Arc<dyn TripStore>> {
    match url {
        StoreUrl::Embedded(home) => home.store(),
        StoreUrl::DynamoDb(table) => {
            let store = DynamoStore::new(aws.get().await?, table)
                .with_write_concurrency(tuning.write_concurrency)
                .with_scan_segments(tuning.scan_segments);
            store.check_exists().await?;
            Ok(Arc::new(store))
        }
    }
}

/// Opens the dead-letter output `url` names. Returns it and its name.
///
/// # Errors
/// When it cannot be opened.
pub async fn open_dead_letters(url: &DeadLetterUrl, aws: &AwsEnv) -> Result<(Arc<dyn DeadLetterSink>, String)> {
    match url {
        DeadLetterUrl::Object(place @ ObjectPlace::S3 { bucket, prefix }) => {
            let store = aws.get().await?.s3(bucket)?;
            let display = format!("{place}/dead_letters/");
            Ok((Arc::new(ObjectDeadLetters::new(store, prefix, &display)), display))
        }
        DeadLetterUrl::Object(ObjectPlace::Local(path)) => {
            Ok((Arc::new(FileDeadLetters::open(path)?), path.display().to_string()))
        }
        DeadLetterUrl::Embedded(home) => {
            Ok((Arc::new(home.dead_letters()?), home.dead_letter_path().display().to_string()))
        }
    }
}

/// Opens `--out`: a local directory (created if missing) or an S3 prefix.
///
/// # Errors
/// See [`OutputLocation::open`].
pub async fn open_output(out: &ObjectPlace, aws: &AwsEnv) -> Result<OutputLocation> {
    match out {
        ObjectPlace::S3 { .. } => OutputLocation::open(out, Some(aws.get().await?)),
        ObjectPlace::Local(_) => OutputLocation::open(out, None),
    }
}

/// The trip's fields: the built-in ones, and those the fields file `location` declares
/// (`--fields`, `TRIPFLOW_FIELDS`): a path, or `s3://BUCKET/KEY` (the Lambda functions
/// read theirs there).
///
/// # Errors
/// When the file cannot be read, or is not a fields file: the message names it.
pub async fn read_fields(location: Option<&str>, aws: &AwsEnv) -> Result<crate::model::declared::Fields> {
    use crate::model::declared::Fields;
    use object_store::ObjectStoreExt;
    let Some(location) = location.map(str::trim).filter(|l| !l.is_empty()) else { return Ok(Fields::built_in()) };
    let Some(rest) = location.strip_prefix("s3://") else { return Fields::read(std::path::Path::new(location)) };
    let Some((bucket, key)) = rest.split_once('/').filter(|(b, k)| !b.is_empty() && !k.is_empty()) else {
        return Err(Error::config(format!("--fields {location:?}: give a path or s3://BUCKET/KEY of a fields file")));
    };
    let store = aws.get().await?.s3(bucket)?;
    let failed = |e: object_store::Error| {
        Error::config(format!("--fields {location}: cannot read the fields file ({e}); check the URL and access to it"))
    };
    let bytes = store.get(&object_store::path::Path::from(key)).await.map_err(failed)?.bytes().await.map_err(failed)?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::config(format!("--fields {location}: the fields file is not UTF-8 text")))?;
    Fields::parse(&text, location)
}

/// Parses a `YYYY-MM-DD` date flag.
///
/// # Errors
/// When the text is not such a date.
pub fn parse_date(s: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| Error::config(format!("--date {s:?} is not a date; write it YYYY-MM-DD, e.g. 2024-05-25")))
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
/// default: `today` and the `lookback` days before it, and every date marked changed.
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
        (None, Some(_)) => {
            return Err(Error::config("--to needs --from; give both, e.g. --from 2024-05-24 --to 2024-05-26"));
        }
        (None, None) => return lookback_dates(flags.lookback, today).map(DateSelection::Nightly),
    };
    if from > to {
        return Err(Error::config(format!("--from {from} is after --to {to}; swap them")));
    }
    let span = (to - from).num_days() + 1;
    if span > MAX_RANGE_DAYS {
        return Err(Error::config(format!(
            "--from {from} --to {to} covers {span} days, more than the {MAX_RANGE_DAYS} (100 years) the KPI job \
             looks up one by one; give --all for every date, or a shorter range"
        )));
    }
    Ok(DateSelection::Dates(from.iter_days().take_while(|d| *d <= to).collect()))
}

/// The nightly default's dates: `today` and the `lookback` days before it, oldest first.
///
/// # Errors
/// When the lookback covers more than [`MAX_RANGE_DAYS`] or reaches before the first
/// representable date.
pub fn lookback_dates(lookback: u32, today: NaiveDate) -> Result<Vec<NaiveDate>> {
    if i64::from(lookback) >= MAX_RANGE_DAYS {
        return Err(Error::config(format!(
            "--lookback {lookback} covers more than {MAX_RANGE_DAYS} days (100 years), which the KPI job would \
             look up one by one; give --all for every date, or fewer days such as 1"
        )));
    }
    let from = today.checked_sub_days(chrono::Days::new(u64::from(lookback))).ok_or_else(|| {
        Error::config(format!(
            "--lookback {lookback} reaches before the first representable date; give a number of days such as 1"
        ))
    })?;
    Ok(from.iter_days().take_while(|d| *d <= today).collect())
}

/// The most days a range or lookback may cover: each is one look-up (a DynamoDB Query),
/// and `--all` is the way to ask for every date. A `--lookback` of 25,502,422 once
/// took over 10 s to refuse (the fuzzer's timeout), listing 70,000 years of days.
pub const MAX_RANGE_DAYS: i64 = 36_525;

/// Checks that an input file exists and is a file, before any work starts.
///
/// # Errors
/// When it does not, with the flag that names it.
pub fn input_file(path: &Path, flag: &str) -> Result<PathBuf> {
    if !path.is_file() {
        let what = if path.exists() { "is not a file" } else { "does not exist" };
        return Err(Error::input(path, format!("{what}; give an existing file with {flag}")));
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
            DateSelection::Nightly(vec![day(25), day(26)]),
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
        assert!(
            sel(DateFlags { to: s("2024-05-25"), ..Default::default() }).unwrap_err().to_string().contains("--from")
        );
        assert!(sel(DateFlags { from: s("2024-05-27"), to: s("2024-05-25"), ..Default::default() }).is_err());
        let far = sel(DateFlags { lookback: 4_000_000_000, ..Default::default() }).unwrap_err().to_string();
        assert!(far.contains("--lookback 4000000000"), "a huge lookback is an error, not a panic: {far}");
        // The fuzzer's timeout: refused, not answered with a list of 70,000 years of days.
        let long = sel(DateFlags { lookback: 25_502_422, ..Default::default() }).unwrap_err().to_string();
        assert!(long.contains("--lookback 25502422 covers more than 36525 days") && long.contains("--all"), "{long}");
        let century = sel(DateFlags { lookback: 36_524, ..Default::default() }).unwrap();
        assert!(matches!(century, DateSelection::Nightly(d) if d.len() == 36_525), "100 years is still a window");
        let wide = DateFlags { from: s("0001-01-01"), to: s("9999-12-31"), ..Default::default() };
        assert!(sel(wide).unwrap_err().to_string().contains("covers 3652059 days"));
    }

    #[test]
    fn backend_urls_parse_or_say_what_to_write() {
        let home = Home::new("some-home").unwrap();
        let stream = |url| StreamUrl::parse(url, &home);
        let store = |url| StoreUrl::parse(url, &home);
        assert_eq!(stream(None).unwrap(), StreamUrl::Embedded(home.clone()));
        assert_eq!(stream(Some("kinesis://bolt_streams")).unwrap(), StreamUrl::Kinesis("bolt_streams".into()));
        assert!(stream(Some("kafka://x")).unwrap_err().to_string().contains("kinesis://STREAM-NAME"));
        assert!(stream(Some("kinesis://")).unwrap_err().to_string().contains("not a Kinesis stream name"));
        assert!(stream(Some("dynamodb://bolt")).unwrap_err().to_string().contains("dynamodb:// is not supported"));
        assert_eq!(store(Some("embedded")).unwrap(), StoreUrl::Embedded(home.clone()));
        assert_eq!(store(Some("dynamodb://bolt")).unwrap(), StoreUrl::DynamoDb("bolt".into()));
        assert!(store(Some("dynamodb://a/b")).is_err());
        assert!(store(Some("postgres://x")).unwrap_err().to_string().contains("dynamodb://TABLE"));
        let dead = |url| DeadLetterUrl::parse(url, &home);
        assert_eq!(dead(None).unwrap(), DeadLetterUrl::Embedded(home.clone()));
        assert_eq!(
            dead(Some("s3://b-1/dl/")).unwrap(),
            DeadLetterUrl::Object(ObjectPlace::S3 { bucket: "b-1".into(), prefix: "dl".into() })
        );
        assert!(dead(Some("kinesis://x")).unwrap_err().to_string().contains("kinesis:// is not supported here"));
    }

    #[test]
    fn a_missing_input_names_its_flag() {
        let err = input_file(Path::new("/no/such.csv"), "--start").unwrap_err().to_string();
        assert!(err.contains("/no/such.csv") && err.contains("--start"), "{err}");
    }
}
