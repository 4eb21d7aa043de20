//! Fields declared at run time, in a TOML file (`--fields FILE`), beside the registry's
//! built-in [`FIELDS`]: a producer's new field made a typed, validated column of `trips`
//! without a code change (docs/design.md §2).
//!
//! ```toml
//! [[field]]
//! name = "surge_multiplier"
//! group = "end"          # start | end
//! type = "decimal"       # integer | decimal | datetime | text
//! required = false
//! ```
//!
//! A declared field is stored as an undeclared one is, in its group's
//! [`super::extra::Extras`], as the JSON the producer sent: so a value kept before the
//! declaration and one validated after it are read into the typed column alike, and no
//! replay is needed. [`Fields`] is the one view of both: the built-in fields, then the
//! declared ones; every stage asks it.

use std::sync::Arc;

use arrow::datatypes::DataType;
use serde::Deserialize;

use super::event::{EventKind, FIELDS, FieldType, arrow_type};
use crate::{Error, Result};

/// The names a declared field may not take: `trips`' derived columns, `trip_id` and
/// `event_type`, which every event carries, and the stores' own attributes.
const TAKEN: [&str; 8] = [
    "trip_id",
    "event_type",
    "trip_date",
    "trip_completed",
    "last_updated",
    "trip_date_shard",
    "start_extras",
    "end_extras",
];

/// The rule of a declared field's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeclaredType {
    /// As a built-in integer: `93.0` is accepted, `93.5` is not.
    Integer,
    /// As a built-in decimal: `DECIMAL(38, 18)`.
    Decimal,
    /// As a built-in datetime: ISO 8601, stored and exported in UTC.
    #[serde(alias = "timestamp")]
    Datetime,
    /// Any string or number, as text.
    Text,
}

impl DeclaredType {
    /// The built-in rule it shares, if any (text has none).
    pub fn rule(self) -> Option<FieldType> {
        match self {
            DeclaredType::Integer => Some(FieldType::Integer),
            DeclaredType::Decimal => Some(FieldType::Decimal),
            DeclaredType::Datetime => Some(FieldType::DateTime),
            DeclaredType::Text => None,
        }
    }

    /// Its column's Arrow type.
    pub fn arrow_type(self) -> DataType {
        self.rule().map_or(DataType::Utf8, arrow_type)
    }

    /// Its name in the file.
    pub fn name(self) -> &'static str {
        self.rule().map_or("text", FieldType::name)
    }
}

/// One field of a fields file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredField {
    /// Its name on the wire and in `trips`.
    pub name: String,
    /// The group that carries it.
    pub kind: EventKind,
    /// Its rule.
    pub ty: DeclaredType,
    /// Whether an event of its kind must carry it.
    pub required: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    field: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    group: Group,
    #[serde(rename = "type")]
    ty: DeclaredType,
    #[serde(default)]
    required: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Group {
    Start,
    End,
}

/// The trip's fields: the registry's built-in ones ([`FIELDS`]) and those a fields file
/// declares. The default has none declared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    declared: Arc<[DeclaredField]>,
}

impl Fields {
    /// The built-in fields only.
    pub fn built_in() -> Self {
        Fields::default()
    }

    /// Reads a fields file's text; `source` names it in messages.
    ///
    /// # Errors
    /// When the text is not TOML of `[[field]]` tables, or a field is not one a file may
    /// declare: the message names the file, the field and what to change.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let file: File = toml::from_str(text).map_err(|e| {
            Error::config(format!(
                "{source}: not a fields file ({}); write [[field]] tables with name, group (start or end), type \
                 (integer, decimal, datetime or text) and required",
                e.message()
            ))
        })?;
        let mut declared: Vec<DeclaredField> = Vec::with_capacity(file.field.len());
        for e in file.field {
            let refuse = |why: &str| Err(Error::config(format!("{source}: field {:?} {why}", e.name)));
            if e.name.trim().is_empty() || e.name.trim() != e.name {
                return refuse("needs a name without surrounding blanks");
            }
            if FIELDS.iter().any(|f| f.name == e.name) {
                return refuse("is a built-in field; a fields file cannot change its meaning");
            }
            if TAKEN.contains(&e.name.as_str()) {
                return refuse("is a name of tripflow's own (a column of trips or an attribute of the table)");
            }
            if declared.iter().any(|d| d.name == e.name) {
                return refuse("is declared twice");
            }
            let kind = match e.group {
                Group::Start => EventKind::Start,
                Group::End => EventKind::End,
            };
            declared.push(DeclaredField { name: e.name, kind, ty: e.ty, required: e.required });
        }
        Ok(Fields { declared: declared.into() })
    }

    /// Reads the fields file at `path`.
    ///
    /// # Errors
    /// When it cannot be read, or [`Fields::parse`] refuses it.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::input_because(path, "cannot read the fields file", e, "check --fields"))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The declared fields, in the file's order.
    pub fn declared(&self) -> &[DeclaredField] {
        &self.declared
    }

    /// The declared field `name`.
    pub fn get(&self, name: &str) -> Option<&DeclaredField> {
        self.declared.iter().find(|f| f.name == name)
    }

    /// True when `name` is a built-in or a declared field of `kind`'s group.
    pub fn names(&self, kind: EventKind, name: &str) -> bool {
        FIELDS.iter().any(|f| f.kind == kind && f.name == name) || self.get(name).is_some_and(|f| f.kind == kind)
    }

    /// The declared fields of `kind`'s group.
    pub fn of_kind(&self, kind: EventKind) -> impl Iterator<Item = &DeclaredField> {
        self.declared.iter().filter(move |f| f.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_declares_fields_and_refuses_what_it_may_not() {
        let f = Fields::parse(
            "[[field]]\nname = \"surge_multiplier\"\ngroup = \"end\"\ntype = \"decimal\"\n\n\
             [[field]]\nname = \"app\"\ngroup = \"start\"\ntype = \"text\"\nrequired = true\n",
            "f.toml",
        )
        .unwrap();
        assert_eq!(f.declared().len(), 2);
        assert_eq!(f.get("surge_multiplier").unwrap().ty.arrow_type(), arrow_type(FieldType::Decimal));
        assert!(f.names(EventKind::Start, "app") && !f.names(EventKind::End, "app"));
        assert!(f.names(EventKind::End, "fare_amount"));
        assert!(Fields::parse("", "f.toml").unwrap().declared().is_empty());
        for (text, why) in [
            ("[[field]]\nname = \"fare_amount\"\ngroup = \"end\"\ntype = \"text\"", "built-in field"),
            ("[[field]]\nname = \"trip_date\"\ngroup = \"end\"\ntype = \"text\"", "of tripflow's own"),
            ("[[field]]\nname = \"x\"\ngroup = \"middle\"\ntype = \"text\"", "not a fields file"),
            ("[[field]]\nname = \"x\"\ngroup = \"end\"\ntype = \"float\"", "not a fields file"),
            (
                "[[field]]\nname = \"x\"\ngroup = \"end\"\ntype = \"text\"\n[[field]]\nname = \"x\"\ngroup = \"end\"\ntype = \"text\"",
                "twice",
            ),
            ("[[field]]\nname = \" x\"\ngroup = \"end\"\ntype = \"text\"", "surrounding blanks"),
            ("[[field]]\nname = \"x\"\ngroup = \"end\"\ntype = \"text\"\ncolour = 1", "not a fields file"),
        ] {
            let e = Fields::parse(text, "f.toml").unwrap_err().to_string();
            assert!(e.contains("f.toml") && e.contains(why), "{text}: {e}");
        }
    }
}
