//! `tripflow fields`: the declared fields, and the ledger of the undeclared ones.

use serde_json::json;

use crate::Result;
use crate::cli::args::{FieldsFormat, tuning};
use crate::cli::settings::Fields as Settings;
use crate::config::{self, AwsEnv};
use crate::model::event::{FIELDS, FieldType};
use crate::store::ledger::{SeenField, group_name};

/// `tripflow fields`.
pub(in crate::cli) async fn fields(s: &Settings, aws: &AwsEnv) -> Result<()> {
    let store = config::open_store(&s.store, aws, &tuning(None, Some(&s.args.store))).await?;
    let seen = store.seen_fields().await?;
    match s.args.format {
        FieldsFormat::Json => println!("{}", serde_json::to_string_pretty(&as_json(&seen)).expect("JSON")),
        FieldsFormat::Table => print!("{}", as_table(&seen)),
    }
    Ok(())
}

fn type_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Integer => "integer",
        FieldType::Decimal => "decimal",
        FieldType::DateTime => "datetime",
    }
}

/// What a kept field is in `trips`: a text column, or no column when its name is one of
/// the table's own.
fn column(f: &SeenField) -> &'static str {
    if f.reserved() { "none: the name is one of trips' own columns" } else { "text" }
}

fn as_json(seen: &[SeenField]) -> serde_json::Value {
    let declared: Vec<_> = FIELDS
        .iter()
        .map(|f| json!({"name": f.name, "group": group_name(f.kind), "type": type_name(f.ty), "required": f.required}))
        .collect();
    let undeclared: Vec<_> = seen
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "group": f.group,
                "events": f.events,
                "types": f.types.iter().map(|(t, n)| (t.name(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
                "conflict": f.conflict(),
                "column": column(f),
                "first_seen": f.first_seen,
            })
        })
        .collect();
    json!({"declared": declared, "undeclared": undeclared})
}

fn as_table(seen: &[SeenField]) -> String {
    use std::fmt::Write;
    let mut out = String::from("Declared fields (besides trip_id):\n");
    for f in FIELDS {
        let required = if f.required { "required" } else { "optional" };
        writeln!(out, "  {:<6} {:<28} {:<9} {required}", group_name(f.kind), f.name, type_name(f.ty)).unwrap();
    }
    if seen.is_empty() {
        out.push_str("\nNo undeclared field has been seen.\n");
        return out;
    }
    writeln!(out, "\nUndeclared fields, kept with their group ({}):", seen.len()).unwrap();
    for f in seen {
        let types: Vec<String> = f.types.iter().map(|(t, n)| format!("{} {n}", t.name())).collect();
        let conflict = if f.conflict() { "  CONFLICT: more than one JSON type" } else { "" };
        writeln!(out, "  {:<6} {:<28} {} events ({}){conflict}", f.group, f.name, f.events, types.join(", ")).unwrap();
        let first = &f.first_seen;
        let time = first.event_time.as_deref().unwrap_or("none");
        writeln!(
            out,
            "         first seen {} at {} sequence {} (event time {time}); column: {}",
            first.at,
            first.position,
            first.sequence,
            column(f)
        )
        .unwrap();
    }
    out
}
