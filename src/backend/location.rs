//! One grammar for every backend URL, as object_store's `parse_url` is for its stores.
//!
//! Each flag (and each Lambda variable) that names a backend goes through
//! [`Location::parse`] with the kinds it accepts, so a URL means the same thing
//! everywhere and a wrong one gets the same kind of message: what is wrong, and the forms
//! that flag takes.
//!
//! | form | kind |
//! |---|---|
//! | absent, empty or `embedded` | the embedded backend under `--home` |
//! | `PATH` or `file://PATH` | a local file or folder |
//! | `s3://BUCKET/PREFIX` | an S3 bucket and a prefix in it |
//! | `kinesis://STREAM` | a Kinesis stream |
//! | `dynamodb://TABLE` | a DynamoDB table |

use std::path::PathBuf;

use crate::{Error, Result};

/// Where a backend is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The embedded backend under `--home`.
    Embedded,
    /// A local path.
    Local(PathBuf),
    /// An S3 bucket, and a prefix without leading or trailing `/` (maybe empty).
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix inside it.
        prefix: String,
    },
    /// A Kinesis stream, by name.
    Kinesis(String),
    /// A DynamoDB table, by name.
    DynamoDb(String),
}

/// The kinds of [`Location`], for saying which ones a flag accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`Location::Embedded`].
    Embedded,
    /// [`Location::Local`].
    Local,
    /// [`Location::S3`].
    S3,
    /// [`Location::Kinesis`].
    Kinesis,
    /// [`Location::DynamoDb`].
    DynamoDb,
}

impl Kind {
    fn form(self) -> &'static str {
        match self {
            Kind::Embedded => "nothing",
            Kind::Local => "a local path or file://PATH",
            Kind::S3 => "s3://BUCKET/PREFIX",
            Kind::Kinesis => "kinesis://STREAM-NAME",
            Kind::DynamoDb => "dynamodb://TABLE",
        }
    }
}

impl Location {
    /// The kind of this location.
    pub fn kind(&self) -> Kind {
        match self {
            Location::Embedded => Kind::Embedded,
            Location::Local(_) => Kind::Local,
            Location::S3 { .. } => Kind::S3,
            Location::Kinesis(_) => Kind::Kinesis,
            Location::DynamoDb(_) => Kind::DynamoDb,
        }
    }

    /// Parses `text`, the value of `flag` (absent: `None`), accepting only the kinds in
    /// `accepts`.
    ///
    /// # Errors
    /// A [`Error::Config`] naming the flag, the value, what is wrong with it and the
    /// forms the flag takes: for an unknown scheme, a kind the flag does not take, a
    /// name the service would refuse, or an empty value where no embedded backend fits.
    pub fn parse(flag: &str, text: Option<&str>, accepts: &[Kind]) -> Result<Location> {
        let text = text.map(str::trim).unwrap_or_default();
        let wrong = |problem: String| {
            let forms: Vec<&str> = accepts.iter().filter(|&&k| k != Kind::Embedded).map(|k| k.form()).collect();
            let mut message = format!("{flag} {text}: {problem}; give {}", forms.join(" or "));
            if accepts.contains(&Kind::Embedded) {
                message.push_str(&format!(", or leave {flag} out for the embedded backend under --home"));
            }
            Error::config(message)
        };
        let location = match text.split_once("://") {
            _ if text.is_empty() || text == "embedded" => Location::Embedded,
            None => Location::Local(PathBuf::from(text)),
            Some(("file", path)) if !path.is_empty() => Location::Local(PathBuf::from(path)),
            Some(("s3", rest)) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let valid = (3..=63).contains(&bucket.len())
                    && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
                if !valid {
                    return Err(wrong(format!(
                        "{bucket:?} is not a bucket name (3-63 lowercase letters, digits, '-' or '.')"
                    )));
                }
                Location::S3 { bucket: bucket.to_owned(), prefix: prefix.trim_matches('/').to_owned() }
            }
            Some(("kinesis", name)) => Location::Kinesis(aws_name(name, "Kinesis stream", 1, 128).map_err(wrong)?),
            Some(("dynamodb", name)) => Location::DynamoDb(aws_name(name, "DynamoDB table", 3, 255).map_err(wrong)?),
            Some((scheme, _)) => return Err(wrong(format!("{scheme}:// is not supported here"))),
        };
        if !accepts.contains(&location.kind()) {
            let problem = match location.kind() {
                Kind::Embedded => "a value is needed".to_owned(),
                Kind::Local => "not a URL this flag takes".to_owned(),
                _ => format!("{}:// is not supported here", text.split_once("://").map_or("", |(s, _)| s)),
            };
            return Err(wrong(problem));
        }
        Ok(location)
    }
}

/// A [`Location`] of given kinds, as one flag takes it: [`Location::parse_as`] returns it
/// with no other kind left to match.
pub trait Place: TryFrom<Location, Error = Location> {
    /// The kinds it is made from.
    const ACCEPTS: &'static [Kind];
}

/// Where files are written or read: a local folder, or a prefix in an S3 bucket
/// (`--out`, `--snapshots`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectPlace {
    /// A local folder.
    Local(PathBuf),
    /// An S3 bucket, and a prefix without leading or trailing `/` (maybe empty).
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix inside it.
        prefix: String,
    },
}

impl TryFrom<Location> for ObjectPlace {
    type Error = Location;

    fn try_from(location: Location) -> std::result::Result<Self, Location> {
        match location {
            Location::Local(path) => Ok(ObjectPlace::Local(path)),
            Location::S3 { bucket, prefix } => Ok(ObjectPlace::S3 { bucket, prefix }),
            other => Err(other),
        }
    }
}

impl Place for ObjectPlace {
    const ACCEPTS: &'static [Kind] = &[Kind::Local, Kind::S3];
}

/// Where a stream is (`--stream`): the embedded one, or a Kinesis stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamPlace {
    /// The embedded stream under `--home`.
    Embedded,
    /// A Kinesis stream, by name.
    Kinesis(String),
}

impl TryFrom<Location> for StreamPlace {
    type Error = Location;

    fn try_from(location: Location) -> std::result::Result<Self, Location> {
        match location {
            Location::Embedded => Ok(StreamPlace::Embedded),
            Location::Kinesis(name) => Ok(StreamPlace::Kinesis(name)),
            other => Err(other),
        }
    }
}

impl Place for StreamPlace {
    const ACCEPTS: &'static [Kind] = &[Kind::Embedded, Kind::Kinesis];
}

/// Where the trip table is (`--store`): the embedded one, or a DynamoDB table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorePlace {
    /// The embedded table under `--home`.
    Embedded,
    /// A DynamoDB table, by name.
    DynamoDb(String),
}

impl TryFrom<Location> for StorePlace {
    type Error = Location;

    fn try_from(location: Location) -> std::result::Result<Self, Location> {
        match location {
            Location::Embedded => Ok(StorePlace::Embedded),
            Location::DynamoDb(table) => Ok(StorePlace::DynamoDb(table)),
            other => Err(other),
        }
    }
}

impl Place for StorePlace {
    const ACCEPTS: &'static [Kind] = &[Kind::Embedded, Kind::DynamoDb];
}

/// Where dead letters go (`--dead-letter`): the file under `--home`, or as [`ObjectPlace`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterPlace {
    /// `<home>/dead_letters.ndjson`.
    Embedded,
    /// A local file, or a prefix in an S3 bucket.
    Object(ObjectPlace),
}

impl TryFrom<Location> for DeadLetterPlace {
    type Error = Location;

    fn try_from(location: Location) -> std::result::Result<Self, Location> {
        match location {
            Location::Embedded => Ok(DeadLetterPlace::Embedded),
            other => ObjectPlace::try_from(other).map(DeadLetterPlace::Object),
        }
    }
}

impl Place for DeadLetterPlace {
    const ACCEPTS: &'static [Kind] = &[Kind::Embedded, Kind::Local, Kind::S3];
}

impl std::fmt::Display for ObjectPlace {
    /// The place as a user writes it: a path, or `s3://BUCKET/PREFIX` with no trailing `/`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectPlace::Local(path) => write!(f, "{}", path.display()),
            ObjectPlace::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            ObjectPlace::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

impl Location {
    /// Parses `text`, the value of `flag`, as the [`Place`] `T` that flag takes.
    ///
    /// # Errors
    /// As [`Location::parse`], with `T`'s kinds.
    pub fn parse_as<T: Place>(flag: &str, text: Option<&str>) -> Result<T> {
        T::try_from(Location::parse(flag, text, T::ACCEPTS)?).map_err(|other| {
            // Location::parse accepts only T's kinds; were one missing from TryFrom, say so.
            Error::config(format!("{flag}: a {:?} location is not taken here", other.kind()))
        })
    }
}

/// A stream or table name: `min..=max` letters, digits, `_`, `.` or `-`.
fn aws_name(name: &str, what: &str, min: usize, max: usize) -> std::result::Result<String, String> {
    let name = name.trim_end_matches('/');
    let ok =
        (min..=max).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !ok {
        return Err(format!("{name:?} is not a {what} name ({min}-{max} letters, digits, '_', '.' or '-')"));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Kind] = &[Kind::Embedded, Kind::Local, Kind::S3, Kind::Kinesis, Kind::DynamoDb];

    fn parse(text: &str) -> Result<Location> {
        Location::parse("--x", Some(text), ALL)
    }

    #[test]
    fn every_form_parses_to_its_kind() {
        assert_eq!(Location::parse("--x", None, ALL).unwrap(), Location::Embedded);
        assert_eq!(parse(" embedded ").unwrap(), Location::Embedded);
        assert_eq!(parse("out/dir").unwrap(), Location::Local("out/dir".into()));
        assert_eq!(parse("file:///tmp/out").unwrap(), Location::Local("/tmp/out".into()));
        assert_eq!(
            parse("s3://my-bucket/a/b/").unwrap(),
            Location::S3 { bucket: "my-bucket".into(), prefix: "a/b".into() }
        );
        assert_eq!(
            parse("s3://my-bucket").unwrap(),
            Location::S3 { bucket: "my-bucket".into(), prefix: String::new() }
        );
        assert_eq!(parse("kinesis://bolt_streams").unwrap(), Location::Kinesis("bolt_streams".into()));
        assert_eq!(parse("dynamodb://bolt/").unwrap(), Location::DynamoDb("bolt".into()));
    }

    #[test]
    fn a_wrong_value_says_what_is_wrong_and_what_the_flag_takes() {
        let err =
            |text: &str, accepts: &[Kind]| Location::parse("--store", Some(text), accepts).unwrap_err().to_string();
        let store = &[Kind::Embedded, Kind::DynamoDb];
        assert_eq!(
            err("postgres://x", store),
            "--store postgres://x: postgres:// is not supported here; give dynamodb://TABLE, or leave --store out for \
             the embedded backend under --home"
        );
        assert!(err("kinesis://s", store).contains("kinesis:// is not supported here"));
        assert!(err("./x", store).contains("not a URL this flag takes"));
        assert!(err("dynamodb://a/b", store).contains("\"a/b\" is not a DynamoDB table name"));
        assert!(err("dynamodb://", store).contains("\"\" is not a DynamoDB table name"));
        assert!(
            err("", &[Kind::Local, Kind::S3])
                .contains("a value is needed; give a local path or file://PATH or s3://BUCKET/PREFIX")
        );
        assert!(err("s3://Bad_Bucket/x", &[Kind::S3]).contains("\"Bad_Bucket\" is not a bucket name"));
        assert!(err("kinesis://", &[Kind::Kinesis]).contains("not a Kinesis stream name"));
    }
}
