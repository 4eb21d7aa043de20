//! `tripflow sql`: read-only SQL over exported snapshots and KPI outputs.
//!
//! Two tables are registered from an output location (the KPI job's `--out`):
//! - `trips`: the Parquet snapshots, `snapshots/trip_date=YYYY-MM-DD/*.parquet`,
//!   hive-partitioned by `trip_date`, so a filter on the date reads only those files;
//! - `kpis`: the `kpi.parquet` files, `kpi_output/date=YYYY-MM-DD/kpi.parquet`.
//!
//! Both exist once a KPI run has written them with `--parquet`. Statements other than
//! queries (DDL, DML, `SET`…) are refused.

use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::event::TRIP_SCHEMA;
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

/// Options that let only queries through: no DDL, no DML, no `SET` or other statements.
/// The KPI job and `tripflow sql` both plan with them.
pub fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

fn sql_error(e: impl std::fmt::Display) -> Error {
    Error::Query { file: "<sql>".into(), message: e.to_string() }
}

impl SqlSession {
    /// Registers `trips` and `kpis` from the local output folder `root`.
    ///
    /// # Errors
    /// When `root` is not a folder, or is an `s3://` URL (not supported by this build).
    pub async fn open(root: &str) -> Result<Self> {
        if let Some((scheme, _)) = root.split_once("://").filter(|(s, _)| *s != "file") {
            return Err(Error::Config(format!(
                "--snapshots {root}: {scheme}:// locations are not supported by this build; give a local folder"
            )));
        }
        let root = Path::new(root.strip_prefix("file://").unwrap_or(root));
        if !root.is_dir() {
            return Err(Error::Config(format!(
                "--snapshots {}: no such folder; give the --out folder of a 'tripflow kpi --parquet' run",
                root.display()
            )));
        }
        let ctx = SessionContext::new();
        let mut tables = Vec::new();
        for (name, dir, partition) in [("trips", "snapshots", "trip_date"), ("kpis", "kpi_output", "date")] {
            let dir = root.join(dir);
            let Some(sample) = first_parquet(&dir) else { continue };
            // The schema is not inferred from every file: that would open them all at
            // start, and a date filter could no longer spare them. Snapshots have the trip
            // table's; KPI files have their query's, read from one of them.
            let schema = if name == "trips" {
                TRIP_SCHEMA.project(&crate::kpi::snapshot_columns()).map_err(sql_error)?
            } else {
                file_schema(&sample)?
            };
            let options = ParquetReadOptions::default()
                .schema(&schema)
                .table_partition_cols(vec![(partition.to_owned(), DataType::Date32)]);
            let path = format!("{}/", dir.canonicalize().unwrap_or(dir).display());
            ctx.register_parquet(name, &path, options).await.map_err(sql_error)?;
            tables.push(name);
        }
        if tables.is_empty() {
            return Err(Error::Config(format!(
                "{} holds no snapshots or kpi.parquet files; write them with 'tripflow kpi --parquet --out {}'",
                root.display(),
                root.display()
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
            if msg.contains("not supported") && (msg.contains("DDL") || msg.contains("DML") || msg.contains("Statement")) {
                Error::Query { file: "<sql>".into(), message: "tripflow sql is read-only: only queries (SELECT, WITH, EXPLAIN…) are allowed".into() }
            } else {
                sql_error(msg)
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
fn first_parquet(dir: &Path) -> Option<std::path::PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    entries.into_iter().find_map(|p| {
        if p.is_dir() { first_parquet(&p) } else { p.extension().is_some_and(|x| x == "parquet").then_some(p) }
    })
}

fn file_schema(path: &Path) -> Result<arrow::datatypes::Schema> {
    let fail = |e: String| Error::Input { path: path.into(), message: format!("not a readable Parquet file: {e}") };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| fail(e.to_string()))?;
    Ok(builder.schema().as_ref().clone())
}

/// Renders results in `format`.
///
/// # Errors
/// When a writer fails.
pub fn render(batches: &[RecordBatch], format: Format) -> Result<String> {
    let fail = |e: arrow::error::ArrowError| sql_error(e);
    let bytes = match format {
        Format::Table => return Ok(arrow::util::pretty::pretty_format_batches(batches).map_err(fail)?.to_string() + "\n"),
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
    println!("tripflow sql: tables {}. End statements with ';'. \\d describes, \\q quits.", session.tables().join(", "));
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
