//! KPI definitions: one SQL query per `.sql` file, read at run time from `--queries`,
//! or the shipped ones in `queries/`, which are compiled into the binaries
//! ([`builtin`]) so that `tripflow kpi` and the Lambda function need no folder.
//!
//! A file may open with a comment header:
//!
//! ```sql
//! -- name: Daily KPIs
//! -- description: Trips and fares per day of dropoff, over completed trips.
//! SELECT …
//! ```

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The query whose columns are written flat at the top level of each `kpi.json`.
pub const DEFAULT_QUERY: &str = "daily_kpis";

/// One KPI query file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KpiQuery {
    /// The file name without `.sql`; names the query's results in the outputs.
    pub stem: String,
    /// The file.
    pub path: PathBuf,
    /// `-- name:` from the header, or the stem.
    pub name: String,
    /// `-- description:` from the header, if any.
    pub description: Option<String>,
    /// The SQL text.
    pub sql: String,
}

impl KpiQuery {
    /// Parses a query file's text.
    pub fn parse(path: &Path, sql: String) -> Self {
        let stem = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let mut name = None;
        let mut description = None;
        for line in sql.lines().map(str::trim) {
            let Some(comment) = line.strip_prefix("--") else {
                if line.is_empty() {
                    continue;
                }
                break;
            };
            let comment = comment.trim();
            if let Some(v) = comment.strip_prefix("name:") {
                name = Some(v.trim().to_owned());
            } else if let Some(v) = comment.strip_prefix("description:") {
                description = Some(v.trim().to_owned());
            }
        }
        KpiQuery { name: name.unwrap_or_else(|| stem.clone()), stem, path: path.into(), description, sql }
    }
}

/// The queries of the repository's `queries/` folder, as compiled into the binary, in
/// file-name order.
const BUILTIN: [(&str, &str); 3] = [
    ("daily_kpis.sql", include_str!("../../queries/daily_kpis.sql")),
    ("fares_by_payment_type.sql", include_str!("../../queries/fares_by_payment_type.sql")),
    ("trips_by_hour.sql", include_str!("../../queries/trips_by_hour.sql")),
];

/// The shipped queries, compiled in: what `queries/` held when the binary was built.
/// Their paths read `queries/NAME.sql (built in)` in messages.
pub fn builtin() -> Vec<KpiQuery> {
    BUILTIN
        .iter()
        .map(|(file, sql)| {
            let mut query = KpiQuery::parse(Path::new(file), (*sql).to_owned());
            query.path = PathBuf::from(format!("queries/{file} (built in)"));
            query
        })
        .collect()
}

/// The queries of `dir`, or the [`builtin`] ones when `dir` is `None`.
///
/// # Errors
/// See [`load`].
pub fn load_or_builtin(dir: Option<&Path>) -> Result<Vec<KpiQuery>> {
    dir.map_or_else(|| Ok(builtin()), load)
}

/// Reads every `*.sql` file of `dir`, in file-name order.
///
/// # Errors
/// When the folder cannot be read or holds no `.sql` file.
pub fn load(dir: &Path) -> Result<Vec<KpiQuery>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::input_because(dir, "cannot read the queries folder", e, "point --queries at a folder of .sql files")
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql") && p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(Error::input(dir, "holds no .sql file; add a KPI query such as daily_kpis.sql"));
    }
    paths
        .into_iter()
        .map(|p| {
            let sql = std::fs::read_to_string(&p).map_err(|e| Error::input_because(&p, "cannot read", e, ""))?;
            Ok(KpiQuery::parse(&p, sql))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_gives_name_and_description() {
        let q = KpiQuery::parse(
            Path::new("q/daily_kpis.sql"),
            "-- name: Daily KPIs\n-- description: Per day.\nSELECT 1\n-- name: ignored".into(),
        );
        assert_eq!((q.stem.as_str(), q.name.as_str()), ("daily_kpis", "Daily KPIs"));
        assert_eq!(q.description.as_deref(), Some("Per day."));
        let bare = KpiQuery::parse(Path::new("x.sql"), "SELECT 1".into());
        assert_eq!(bare.name, "x");
        assert!(bare.description.is_none());
    }

    #[test]
    fn the_builtin_queries_are_the_shipped_folder() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
        let shipped = load(&dir).unwrap();
        let builtin = builtin();
        let names = |qs: &[KpiQuery]| qs.iter().map(|q| (q.stem.clone(), q.sql.clone())).collect::<Vec<_>>();
        assert_eq!(names(&builtin), names(&shipped), "queries/ changed: update BUILTIN in kpi/queries.rs");
        assert_eq!(builtin[0].path, Path::new("queries/daily_kpis.sql (built in)"));
    }

    #[test]
    fn an_empty_folder_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("holds no .sql file"), "{err}");
        let missing = load(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(missing.contains("--queries"), "{missing}");
    }
}
