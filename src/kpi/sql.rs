//! `tripflow sql`: read-only SQL over exported snapshots and KPI outputs.
//!
//! Two tables are registered from an output location (the KPI job's `--out`):
//! - `trips`: the Parquet snapshots, `snapshots/trip_date=YYYY-MM-DD/*.parquet`,
//!   hive-partitioned by `trip_date`, so a filter on the date reads only those files;
//! - `kpis`: the `kpi.parquet` files, `kpi_output/date=YYYY-MM-DD/kpi.parquet`.
//!
//! Both exist once a KPI run has written them with `--parquet`, locally or on S3. Statements other than
//! queries (DDL, DML, `SET`…) are refused.

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::backend::aws::Aws;
use crate::backend::location::{Location, ObjectPlace};
use crate::error::Stage;
use crate::kpi::tables::{read_only, snapshot_columns};
use crate::model::declared::Fields;
use crate::model::event::TRIP_SCHEMA;
use crate::{Error, Result};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A boxed table.
    Table,
    /// CSV with a header.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

/// A read-only SQL session over an output location.
pub struct SqlSession {
    ctx: SessionContext,
    tables: Vec<&'static str>,
}

fn sql_error(e: impl Into<crate::error::BoxError>) -> Error {
    let source = e.into();
    Error::Query { file: "<sql>".into(), message: source.to_string(), source: Some(source) }
}

/// Where the outputs are: a local folder, or a bucket and prefix of an object store.
enum Root {
    Local(std::path::PathBuf),
    Store { store: Arc<dyn ObjectStore>, bucket: String, prefix: String },
}

impl Root {
    /// The URL of `dir` to register and, when `schema` asks, the Arrow schema of its
    /// first Parquet file (in path order); `None` when `dir` holds no Parquet file.
    async fn sample(
        &self,
        dir: &str,
        schema: bool,
        last: bool,
    ) -> Result<Option<(Option<arrow::datatypes::Schema>, String)>> {
        match self {
            Root::Local(root) => {
                let dir = root.join(dir);
                let Some(sample) = first_parquet(&dir, last) else { return Ok(None) };
                let schema = match schema {
                    false => None,
                    true => {
                        let what = sample.display().to_string();
                        Some(parquet_schema(std::fs::File::open(&sample).map_err(|e| parquet_error(&what, e))?, &what)?)
                    }
                };
                Ok(Some((schema, format!("{}/", dir.canonicalize().unwrap_or(dir).display()))))
            }
            Root::Store { store, bucket, prefix } => {
                let dir_path = ObjectPath::from(prefix.as_str()).join(dir);
                let mut names: Vec<ObjectPath> = store
                    .list(Some(&dir_path))
                    .map_ok(|m| m.location)
                    .try_filter(|p| futures::future::ready(p.as_ref().ends_with(".parquet")))
                    .try_collect()
                    .await
                    .map_err(|e| {
                        Stage::Output.error(format!("--snapshots s3://{bucket}/{prefix}: cannot list {dir}/"), e)
                    })?;
                names.sort();
                let Some(sample) = (if last { names.last() } else { names.first() }) else { return Ok(None) };
                let schema = match schema {
                    false => None,
                    true => {
                        let url = format!("s3://{bucket}/{sample}");
                        let bytes = async { store.get(sample).await?.bytes().await }
                            .await
                            .map_err(|e| parquet_error(&url, e))?;
                        Some(parquet_schema(bytes, &url)?)
                    }
                };
                Ok(Some((schema, format!("s3://{bucket}/{dir_path}/"))))
            }
        }
    }
}

fn parquet_error(what: &str, e: impl Into<crate::error::BoxError>) -> Error {
    Error::input_because(what, "not a readable Parquet file", e, "")
}

fn parquet_schema<R: parquet::file::reader::ChunkReader + 'static>(
    reader: R,
    what: &str,
) -> Result<arrow::datatypes::Schema> {
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(reader)
        .map_err(|e| parquet_error(what, e))?;
    Ok(builder.schema().as_ref().clone())
}

/// `schema` with each field `fields` declares as a column of its declared type: in
/// place of a column of that name (a snapshot written before the declaration holds it
/// as text), or after the others.
fn with_declared(schema: &arrow::datatypes::Schema, fields: &Fields) -> arrow::datatypes::Schema {
    use arrow::datatypes::Field;
    let mut columns: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for d in fields.declared() {
        let typed = Field::new(&d.name, d.ty.arrow_type(), true);
        match columns.iter_mut().find(|c| c.name() == &d.name) {
            Some(c) => *c = typed,
            None => columns.push(typed),
        }
    }
    arrow::datatypes::Schema::new(columns)
}

impl SqlSession {
    /// Registers `trips` and `kpis` from `root`, the `--out` of a KPI run: a local
    /// folder, a `file://` URL or an `s3://bucket/prefix` URL (which needs `aws`).
    ///
    /// # Errors
    /// When `root` does not exist or holds neither snapshots nor KPI Parquet files.
    pub async fn open(root: &str, aws: Option<&Aws>) -> Result<Self> {
        SqlSession::open_at(&Location::parse_as("--snapshots", Some(root))?, aws, &Fields::default()).await
    }

    /// [`SqlSession::open`] on a parsed `--snapshots`. A field `fields` declares is a
    /// column of `trips` of its declared type, in every snapshot: one written before the
    /// declaration, which holds it as text, or none, is read into that type.
    ///
    /// # Errors
    /// As [`SqlSession::open`].
    pub async fn open_at(root: &ObjectPlace, aws: Option<&Aws>, fields: &Fields) -> Result<Self> {
        let ctx = SessionContext::new();
        let location = match root.clone() {
            ObjectPlace::S3 { bucket, prefix } => {
                let aws =
                    aws.ok_or_else(|| Error::config(format!("--snapshots {root}: S3 needs the AWS configuration")))?;
                let store = aws.s3(&bucket)?;
                let url = url::Url::parse(&format!("s3://{bucket}"))
                    .map_err(|e| Error::config_because(format!("--snapshots {root}"), e, ""))?;
                ctx.register_object_store(&url, store.clone());
                Root::Store { store, bucket, prefix }
            }
            ObjectPlace::Local(path) => {
                if !path.is_dir() {
                    return Err(Error::config(format!(
                        "--snapshots {}: no such folder; give the --out folder of a 'tripflow kpi --parquet' run",
                        path.display()
                    )));
                }
                Root::Local(path)
            }
        };
        let mut tables = Vec::new();
        for (name, dir, partition) in [("trips", "snapshots", "trip_date"), ("kpis", "kpi_output", "date")] {
            // The schema is not inferred from every file: that would open them all at
            // start, and a date filter could no longer spare them. KPI files have their
            // query's, read from one of them. Snapshots have the trip table's, and its
            // columns for the undeclared and declared fields as of the run that wrote
            // them: read from the newest date's, which the latest run wrote (an older
            // file without a column reads it as null).
            // A newest snapshot that cannot be read leaves the built-in schema; it fails
            // when a query reads it, as any spoiled snapshot does.
            let trips = name == "trips";
            let sampled = match location.sample(dir, true, trips).await {
                Err(_) if trips => location.sample(dir, false, trips).await?,
                other => other?,
            };
            let Some((sample_schema, url)) = sampled else { continue };
            let mut schema = match sample_schema {
                Some(schema) => schema,
                None => TRIP_SCHEMA.project(&snapshot_columns()).map_err(sql_error)?,
            };
            if trips {
                schema = with_declared(&schema, fields);
            }
            let options = ParquetReadOptions::default()
                .schema(&schema)
                .table_partition_cols(vec![(partition.to_owned(), DataType::Date32)]);
            ctx.register_parquet(name, &url, options).await.map_err(sql_error)?;
            tables.push(name);
        }
        if tables.is_empty() {
            return Err(Error::config(format!(
                "{root} holds no snapshots or kpi.parquet files; write them with 'tripflow kpi --parquet --out {root}'"
            )));
        }
        Ok(SqlSession { ctx, tables })
    }

    /// The tables registered.
    pub fn tables(&self) -> &[&'static str] {
        &self.tables
    }

    /// Runs one read-only query.
    ///
    /// # Errors
    /// When the statement is not a query, or does not plan or run.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let df = self.ctx.sql_with_options(sql, read_only()).await.map_err(|e| {
            let msg = e.to_string();
            if msg.contains("not supported")
                && (msg.contains("DDL") || msg.contains("DML") || msg.contains("Statement"))
            {
                Error::Query {
                    file: "<sql>".into(),
                    message: "tripflow sql is read-only: only queries (SELECT, WITH, EXPLAIN…) are allowed".into(),
                    source: Some(e.into()),
                }
            } else {
                sql_error(e)
            }
        })?;
        df.collect().await.map_err(sql_error)
    }

    /// `\d`: each table and its columns.
    ///
    /// # Errors
    /// When a table cannot be looked up.
    pub async fn describe(&self) -> Result<String> {
        let mut out = String::new();
        for name in &self.tables {
            let schema = self.ctx.table_provider(*name).await.map_err(sql_error)?.schema();
            out.push_str(&format!("{name}\n"));
            for f in schema.fields() {
                out.push_str(&format!("  {:<28} {}\n", f.name(), f.data_type()));
            }
        }
        Ok(out)
    }
}

/// The first Parquet file under `dir`, in path order.
/// The first Parquet file under `dir` in path order, or the last with `last`.
fn first_parquet(dir: &Path, last: bool) -> Option<std::path::PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    if last {
        entries.reverse();
    }
    entries.into_iter().find_map(|p| {
        if p.is_dir() { first_parquet(&p, last) } else { p.extension().is_some_and(|x| x == "parquet").then_some(p) }
    })
}

/// Renders results in `format`.
///
/// # Errors
/// When a writer fails.
pub fn render(batches: &[RecordBatch], format: Format) -> Result<String> {
    let fail = |e: arrow::error::ArrowError| sql_error(e);
    let bytes = match format {
        Format::Table => {
            return Ok(arrow::util::pretty::pretty_format_batches(batches).map_err(fail)?.to_string() + "\n");
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(Vec::new());
            for b in batches {
                w.write(b).map_err(fail)?;
            }
            w.into_inner()
        }
        Format::Json => {
            let mut w = arrow::json::ArrayWriter::new(Vec::new());
            w.write_batches(&batches.iter().collect::<Vec<_>>()).map_err(fail)?;
            w.finish().map_err(fail)?;
            let mut v = w.into_inner();
            if v.is_empty() {
                v.extend_from_slice(b"[]");
            }
            v.push(b'\n');
            v
        }
        Format::Ndjson => {
            let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
            w.write_batches(&batches.iter().collect::<Vec<_>>()).map_err(fail)?;
            w.finish().map_err(fail)?;
            w.into_inner()
        }
    };
    String::from_utf8(bytes).map_err(sql_error)
}

/// The interactive prompt: statements end with `;` and may span lines; `\d` lists the
/// tables, `\q` quits. History is kept in `~/.tripflow_history`.
///
/// # Errors
/// When the terminal cannot be used.
pub async fn repl(session: &SqlSession, format: Format) -> Result<()> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new().map_err(sql_error)?;
    let history = std::env::var_os("HOME").map(|h| Path::new(&h).join(".tripflow_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "tripflow sql: tables {}. End statements with ';'. \\d describes, \\q quits.",
        session.tables().join(", ")
    );
    let mut statement = String::new();
    loop {
        let prompt = if statement.is_empty() { "tripflow> " } else { "     ...> " };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                statement.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(sql_error(e)),
        };
        let trimmed = line.trim();
        if statement.is_empty() && trimmed.starts_with('\\') {
            let _ = editor.add_history_entry(trimmed);
            match trimmed {
                "\\q" => break,
                "\\d" => print!("{}", session.describe().await?),
                other => println!("unknown command {other}; \\d describes the tables, \\q quits"),
            }
            continue;
        }
        statement.push_str(&line);
        statement.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let sql = std::mem::take(&mut statement);
        let _ = editor.add_history_entry(sql.trim());
        match session.query(&sql).await.and_then(|b| render(&b, format)) {
            Ok(text) => print!("{text}"),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}
