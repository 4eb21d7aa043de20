//! KPI outputs: JSON rendering of query results and atomic writes through object_store.
//!
//! Numbers keep their exact decimal text (a `DECIMAL(20, 2)` total is written `1234.50`,
//! never through a float), and nothing depends on the clock, so the same table always
//! gives byte-identical files.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, Scalar, StringArray};
use arrow::compute::kernels::cmp::eq;
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::backend::aws::Aws;
use crate::backend::location::{Location, ObjectPlace};
use crate::error::{Context, Stage};
use crate::{Error, Result};

/// Where KPI outputs go: an object store and a prefix inside it.
#[derive(Clone, Debug)]
pub struct OutputLocation {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    display: String,
    /// Bytes put so far, through any clone.
    written: Arc<std::sync::atomic::AtomicU64>,
}

impl OutputLocation {
    /// Parses `--out` and opens it ([`OutputLocation::open`]).
    ///
    /// # Errors
    /// When the URL's scheme is not supported, or as [`OutputLocation::open`].
    pub fn parse(out: &str, aws: Option<&Aws>) -> Result<Self> {
        OutputLocation::open(&Location::parse_as("--out", Some(out))?, aws)
    }

    /// Opens `place`: a local directory (created if missing), or a prefix in an S3 bucket
    /// (which needs `aws`).
    ///
    /// # Errors
    /// When the directory cannot be created, or S3 is asked for without `aws`.
    pub fn open(place: &ObjectPlace, aws: Option<&Aws>) -> Result<Self> {
        let path = match place {
            ObjectPlace::S3 { bucket, prefix } => {
                let aws = aws.ok_or_else(|| Error::config(format!("--out {place}: S3 needs the AWS configuration")))?;
                return Ok(OutputLocation {
                    store: aws.s3(bucket)?,
                    prefix: ObjectPath::from(prefix.as_str()),
                    display: place.to_string(),
                    written: Arc::default(),
                });
            }
            ObjectPlace::Local(path) => path,
        };
        std::fs::create_dir_all(path).map_err(|e| {
            let context = format!("cannot create output directory {}", path.display());
            Stage::Output.error_then(context, e, "choose a writable --out")
        })?;
        let store = LocalFileSystem::new_with_prefix(path)
            .map_err(|e| Stage::Output.error(format!("cannot use output directory {}", path.display()), e))?;
        Ok(OutputLocation {
            store: Arc::new(store),
            prefix: ObjectPath::default(),
            display: path.display().to_string(),
            written: Arc::default(),
        })
    }

    /// Bytes written through [`OutputLocation::put`] so far.
    pub fn bytes_written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The object store and the prefix inside it.
    pub fn store(&self) -> (&Arc<dyn ObjectStore>, &ObjectPath) {
        (&self.store, &self.prefix)
    }

    /// Writes `bytes` at `key` under the prefix, replacing what was there atomically.
    ///
    /// # Errors
    /// When the store refuses the write.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<String> {
        let path = key.split('/').fold(self.prefix.clone(), |p, part| p.clone().join(part));
        let size = bytes.len() as u64;
        self.store.put(&path, PutPayload::from(bytes)).await.map_err(|e| {
            Stage::Output.error_then(format!("cannot write {key} under {}", self.display), e, "choose a writable --out")
        })?;
        self.written.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        Ok(format!("{}/{key}", self.display.trim_end_matches('/')))
    }

    /// Removes `key` under the prefix, if it is there.
    ///
    /// # Errors
    /// When the store refuses the removal.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = key.split('/').fold(self.prefix.clone(), |p, part| p.clone().join(part));
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Stage::Output.error_then(
                format!("cannot remove {key} under {}", self.display),
                e,
                "choose a --out this process may delete in",
            )),
        }
    }

    /// The location as given.
    pub fn display(&self) -> &str {
        &self.display
    }
}

/// The rows of `batches` whose `column` displays as `value` (a date, say).
///
/// # Errors
/// When the column is missing or cannot be compared.
pub fn rows_of_date(batches: &[RecordBatch], column: &str, value: &str) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for b in batches {
        let col = b.column_by_name(column).ok_or_else(|| Error::output(format!("no column {column}")))?;
        let context = || format!("the rows of {column} {value}");
        let wanted = cast(&StringArray::from(vec![value]), col.data_type()).stage(Stage::Output, context())?;
        let mask = eq(col, &Scalar::new(wanted)).stage(Stage::Output, context())?;
        let rows = filter_record_batch(b, &mask).stage(Stage::Output, context())?;
        if rows.num_rows() > 0 {
            out.push(rows);
        }
    }
    Ok(out)
}

/// Batches as the bytes of one Parquet file (zstd), with the batches' Arrow types.
///
/// # Errors
/// When the writer fails.
pub fn parquet_bytes(schema: SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
    let fail = |e: parquet::errors::ParquetError| Stage::Output.error("parquet", e);
    let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(props)).map_err(fail)?;
    for b in batches {
        writer.write(b).map_err(fail)?;
    }
    writer.into_inner().map_err(fail)
}

/// Renders one cell as a JSON value: numbers as exact numbers, nulls as `null`,
/// dates and timestamps as strings.
pub fn json_value(array: &dyn Array, formatter: &ArrayFormatter<'_>, row: usize) -> String {
    if array.is_null(row) {
        return "null".into();
    }
    let text = formatter.value(row).to_string();
    match array.data_type() {
        t if t.is_integer() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) => text,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            if text.parse::<f64>().is_ok_and(f64::is_finite) {
                text
            } else {
                "null".into()
            }
        }
        DataType::Boolean => text,
        _ => serde_json::to_string(&text).unwrap_or_default(),
    }
}

/// Formatters for every column of a batch.
///
/// # Errors
/// When a column's type cannot be displayed.
pub fn formatters(batch: &RecordBatch) -> Result<Vec<ArrayFormatter<'_>>> {
    static OPTIONS: std::sync::LazyLock<FormatOptions<'static>> =
        std::sync::LazyLock::new(|| FormatOptions::default().with_display_error(false));
    batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &OPTIONS).stage(Stage::Output, "a column"))
        .collect()
}

/// One row as a JSON object `{"col": value, …}` on one line, leaving out `skip`.
pub fn json_row(batch: &RecordBatch, formatters: &[ArrayFormatter<'_>], row: usize, skip: Option<usize>) -> String {
    let mut out = String::from("{");
    for (i, field) in batch.schema().fields().iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        if out.len() > 1 {
            out.push_str(", ");
        }
        out.push_str(&serde_json::to_string(field.name()).unwrap_or_default());
        out.push_str(": ");
        out.push_str(&json_value(batch.column(i).as_ref(), &formatters[i], row));
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Decimal128Array, Float64Array, Int64Array};
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn values_keep_exact_decimals_and_quote_dates() {
        let schema = Schema::new(vec![
            Field::new("trip_date", DataType::Date32, true),
            Field::new("n", DataType::Int64, true),
            Field::new("fare", DataType::Decimal128(20, 2), true),
            Field::new("ratio", DataType::Float64, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Date32Array::from(vec![19868])),
                Arc::new(Int64Array::from(vec![Some(3)])),
                Arc::new(Decimal128Array::from(vec![123450]).with_precision_and_scale(20, 2).unwrap()),
                Arc::new(Float64Array::from(vec![f64::NAN])),
            ],
        )
        .unwrap();
        let f = formatters(&batch).unwrap();
        assert_eq!(
            json_row(&batch, &f, 0, None),
            r#"{"trip_date": "2024-05-25", "n": 3, "fare": 1234.50, "ratio": null}"#
        );
        assert_eq!(json_row(&batch, &f, 0, Some(0)), r#"{"n": 3, "fare": 1234.50, "ratio": null}"#);
    }

    #[tokio::test]
    async fn puts_under_a_local_directory_and_refuses_other_schemes() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputLocation::parse(dir.path().join("out").to_str().unwrap(), None).unwrap();
        out.put("kpi_output/date=2024-05-25/kpi.json", b"{}".to_vec()).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("out/kpi_output/date=2024-05-25/kpi.json")).unwrap(), b"{}");
        let err = OutputLocation::parse("gs://bucket", None).unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let err = OutputLocation::parse(file.to_str().unwrap(), None).unwrap_err();
        assert!(err.to_string().contains("cannot create output directory"), "{err}");
        assert!(err.to_string().ends_with("; choose a writable --out"), "{err}");
        assert_eq!((err.stage(), err.exit_code()), ("output", 1));
        let cause = std::error::Error::source(&err).expect("the I/O error is kept");
        assert!(cause.downcast_ref::<std::io::Error>().is_some(), "{cause:?}");

        // A write that fails after the folder was made: the store's error is kept.
        std::fs::remove_dir_all(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join("out"), "now a file").unwrap();
        let err = out.put("kpi_output/date=2024-05-26/kpi.json", b"{}".to_vec()).await.unwrap_err();
        assert!(
            err.to_string().starts_with("output: cannot write kpi_output/date=2024-05-26/kpi.json under "),
            "{err}"
        );
        let cause = std::error::Error::source(&err).expect("object_store's error is kept");
        assert!(cause.downcast_ref::<object_store::Error>().is_some(), "{cause:?}");
    }
}
