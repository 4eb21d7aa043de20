//! `tripflow fields`: the declared fields, built in and from `--fields`, and the ledger
//! of the undeclared ones; `tripflow fields check`: the stored values a declaration
//! could not read.

use serde_json::json;

use crate::cli::args::{FieldsAction, FieldsFormat, tuning};
use crate::cli::settings::Fields as Settings;
use crate::config::{self, AwsEnv};
use crate::model::declared::Fields;
use crate::model::event::FIELDS;
use crate::store::export::{Misfit, misfits};
use crate::store::ledger::{SeenField, group_name};
use crate::{Error, Result};

/// `tripflow fields [check]`.
pub(in crate::cli) async fn fields(s: &Settings, aws: &AwsEnv) -> Result<()> {
    let declared = config::read_fields(s.args.declared.fields.as_deref(), aws).await?;
    let store = config::open_store(&s.store, aws, &tuning(None, Some(&s.args.store))).await?;
    if s.args.action == Some(FieldsAction::Check) {
        if declared.declared().is_empty() {
            return Err(Error::config(
                "fields check: no field to check; give the fields file to check with --fields FILE",
            ));
        }
        let found = misfits(store.as_ref(), &declared).await?;
        match s.args.format {
            FieldsFormat::Json => println!("{}", serde_json::to_string_pretty(&found).expect("JSON")),
            FieldsFormat::Table => print!("{}", misfits_table(&found)),
        }
        if !found.is_empty() {
            return Err(Error::store(format!(
                "fields check: {} stored value(s) cannot be read as their declared type (listed above); the KPI \
                 job would stop at the first. Change the field's type in the fields file, or rewrite those values \
                 in the trip table, before you deploy the file",
                found.len()
            )));
        }
        return Ok(());
    }
    // The ledger keeps what was undeclared when seen; a field declared since is listed
    // with the declared ones.
    let seen: Vec<SeenField> = store
        .seen_fields()
        .await?
        .into_iter()
        .filter(|f| declared.get(&f.name).is_none_or(|d| group_name(d.kind) != f.group))
        .collect();
    match s.args.format {
        FieldsFormat::Json => println!("{}", serde_json::to_string_pretty(&as_json(&declared, &seen)).expect("JSON")),
        FieldsFormat::Table => print!("{}", as_table(&declared, &seen)),
    }
    Ok(())
}

/// What a kept field is in `trips`: a text column, or no column when its name is one of
/// the table's own or a declared field's.
fn column(f: &SeenField, declared: &Fields) -> &'static str {
    if f.reserved() {
        "none: the name is one of trips' own columns"
    } else if declared.get(&f.name).is_some() {
        "none: the name is a declared field's, of the other group"
    } else {
        "text"
    }
}

/// Each declared field: (group, name, type, required, where from).
fn declared_rows(declared: &Fields) -> Vec<(&'static str, &str, &'static str, bool, &'static str)> {
    let built_in = FIELDS.iter().map(|f| (group_name(f.kind), f.name, f.ty.name(), f.required, "built in"));
    let from_file =
        declared.declared().iter().map(|f| (group_name(f.kind), f.name.as_str(), f.ty.name(), f.required, "--fields"));
    built_in.chain(from_file).collect()
}

fn as_json(declared: &Fields, seen: &[SeenField]) -> serde_json::Value {
    let declared_json: Vec<_> = declared_rows(declared)
        .into_iter()
        .map(|(group, name, ty, required, from)| {
            json!({"name": name, "group": group, "type": ty, "required": required, "from": from})
        })
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
                "column": column(f, declared),
                "first_seen": f.first_seen,
            })
        })
        .collect();
    json!({"declared": declared_json, "undeclared": undeclared})
}

fn as_table(declared: &Fields, seen: &[SeenField]) -> String {
    use std::fmt::Write;
    let mut out = String::from("Declared fields (besides trip_id):\n");
    for (group, name, ty, required, from) in declared_rows(declared) {
        let required = if required { "required" } else { "optional" };
        writeln!(out, "  {group:<6} {name:<28} {ty:<9} {required:<9} {from}").unwrap();
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
            column(f, declared)
        )
        .unwrap();
    }
    out
}

fn misfits_table(found: &[Misfit]) -> String {
    use std::fmt::Write;
    if found.is_empty() {
        return "Every stored value of the declared fields reads as its type.\n".into();
    }
    let mut out = String::from("Stored values that do not read as their declared type:\n");
    for m in found {
        writeln!(out, "  trip {:?}  {}  {}: {}", m.trip_id, m.field, m.value, m.reason).unwrap();
    }
    out
}
