//! Undeclared fields: the top-level keys of an event that no field of the registry
//! names, kept with their group instead of being dropped (docs/design.md §2).
//!
//! A group keeps them as one JSON object, [`Extras`]: keys sorted, each value the JSON
//! text the producer sent, without the whitespace between tokens. Sorted and compact, the
//! same fields give the same bytes whatever order they came in, so every store keeps the
//! same text and a replay writes nothing new. `null` is absent, as it is for a declared
//! field.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// The name under which each store keeps a group's [`Extras`] (start, end): a SQLite
/// column, a DynamoDB attribute. One attribute a group, holding the whole object, so no
/// kept field's name can collide with an attribute of tripflow's own.
pub const EXTRAS_ATTRIBUTES: [&str; 2] = ["start_extras", "end_extras"];

/// What ingest does with an event's undeclared fields (`--unknown-fields`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnknownFields {
    /// Keep them with their group, versioned with it, and count them in the ledger.
    #[default]
    Keep,
    /// Reject the record to the dead letters, with a reason naming each of them.
    Reject,
}

/// A group's undeclared fields: a compact JSON object with sorted keys, or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Extras(Option<Box<str>>);

impl Extras {
    /// No undeclared field.
    pub const NONE: Extras = Extras(None);

    /// The fields `pairs` (key, value as JSON text). A later pair of the same key wins;
    /// `null` values are left out.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut sorted = BTreeMap::new();
        for (k, v) in pairs {
            let v = compact(v.as_ref().trim());
            if v != "null" {
                sorted.insert(k.as_ref().to_owned(), v);
            }
        }
        if sorted.is_empty() {
            return Extras::NONE;
        }
        let mut text = String::from("{");
        for (i, (k, v)) in sorted.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&serde_json::to_string(k).expect("a string serializes"));
            text.push(':');
            text.push_str(v);
        }
        text.push('}');
        Extras(Some(text.into()))
    }

    /// The extras a store kept as `text` ([`Extras::as_json`]'s).
    ///
    /// # Errors
    /// When `text` is not a JSON object: the message says what was found.
    pub fn from_stored(text: Option<&str>) -> Result<Self, String> {
        match text {
            None => Ok(Extras::NONE),
            Some(t) => {
                let fields: BTreeMap<String, &RawValue> =
                    serde_json::from_str(t).map_err(|e| format!("not a JSON object of fields ({e})"))?;
                Ok(Extras::from_pairs(fields.iter().map(|(k, v)| (k, v.get()))))
            }
        }
    }

    /// The extras whose text is `text`, which [`Extras::from_pairs`] made (decode's
    /// column holds such texts).
    pub(crate) fn from_canonical(text: Option<&str>) -> Self {
        Extras(text.map(Into::into))
    }

    /// The object's text, `None` when there is no field.
    pub fn as_json(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// True when there is no field.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Each field's name and JSON text, in name order.
    pub fn fields(&self) -> Vec<(String, &str)> {
        self.0.as_deref().map(fields_of).unwrap_or_default()
    }

    /// The JSON text of the field `name`.
    pub fn get(&self, name: &str) -> Option<String> {
        self.fields().into_iter().find(|(k, _)| k == name).map(|(_, v)| v.to_owned())
    }
}

/// Each field's name and JSON text of an [`Extras`] object's `text`, in name order.
///
/// # Panics
/// When `text` is not a JSON object (an [`Extras`] text always is).
pub fn fields_of(text: &str) -> Vec<(String, &str)> {
    let fields: BTreeMap<String, &RawValue> = serde_json::from_str(text).expect("extras are a JSON object");
    fields.into_iter().map(|(k, v)| (k, v.get())).collect()
}

/// The JSON type of a value, as the ledger names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonType {
    /// A string.
    String,
    /// A number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// An object.
    Object,
    /// An array.
    Array,
}

impl JsonType {
    /// The type of the JSON text `value` (its first byte tells).
    pub fn of(value: &str) -> JsonType {
        match value.trim_start().as_bytes().first() {
            Some(b'"') => JsonType::String,
            Some(b't' | b'f') => JsonType::Boolean,
            Some(b'{') => JsonType::Object,
            Some(b'[') => JsonType::Array,
            _ => JsonType::Number,
        }
    }

    /// Its name: `string`, `number`, `boolean`, `object`, `array`.
    pub fn name(self) -> &'static str {
        match self {
            JsonType::String => "string",
            JsonType::Number => "number",
            JsonType::Boolean => "boolean",
            JsonType::Object => "object",
            JsonType::Array => "array",
        }
    }
}

/// A kept value as a text column shows it: a string's content, a number's or boolean's
/// literal, an object or array as its compact JSON.
pub fn column_text(value: &str) -> String {
    match JsonType::of(value) {
        JsonType::String => serde_json::from_str::<String>(value).unwrap_or_else(|_| value.to_owned()),
        _ => value.to_owned(),
    }
}

/// A kept value as a declared field reads it: a string's content, a number's literal;
/// `Ok(None)` for a blank string, as for a built-in field. `Err` names the JSON type no
/// rule takes (a boolean, an object, an array).
pub fn scalar_text(value: &str) -> Result<Option<String>, &'static str> {
    match JsonType::of(value) {
        JsonType::String => {
            let text = serde_json::from_str::<String>(value).map_err(|_| "a malformed string")?;
            Ok((!text.trim().is_empty()).then_some(text))
        }
        JsonType::Number => Ok(Some(value.to_owned())),
        JsonType::Boolean => Err("a boolean"),
        JsonType::Object => Err("an object"),
        JsonType::Array => Err("an array"),
    }
}

/// `json` without the whitespace between its tokens (strings are kept as they are).
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_fields_give_the_same_text_in_any_order() {
        let a = Extras::from_pairs([("surge", "1.50"), ("app", "\"v 2\""), ("gone", "null")]);
        let b = Extras::from_pairs([("app", " \"v 2\" "), ("surge", "1.50")]);
        assert_eq!(a, b);
        assert_eq!(a.as_json(), Some(r#"{"app":"v 2","surge":1.50}"#));
        let nested = Extras::from_pairs([("tags", "[ 1, {\"a b\" : \"c  d\"} ]")]);
        assert_eq!(nested.as_json(), Some(r#"{"tags":[1,{"a b":"c  d"}]}"#));
        assert_eq!(Extras::from_stored(nested.as_json()).unwrap(), nested);
        assert!(Extras::from_pairs([("x", "null")]).is_empty());
        assert!(Extras::from_stored(Some("[1]")).unwrap_err().contains("not a JSON object"));
    }

    #[test]
    fn a_key_needing_escapes_round_trips() {
        let e = Extras::from_pairs([("a\"b\u{1}", "true")]);
        assert_eq!(e.fields(), vec![("a\"b\u{1}".to_owned(), "true")]);
        assert_eq!(e.get("a\"b\u{1}").as_deref(), Some("true"));
    }

    #[test]
    fn columns_show_contents_and_literals() {
        assert_eq!(column_text(r#""a\"b""#), "a\"b");
        assert_eq!(column_text("1.50"), "1.50");
        assert_eq!(column_text("false"), "false");
        assert_eq!(column_text(r#"{"a":[1]}"#), r#"{"a":[1]}"#);
        assert_eq!(JsonType::of("-1"), JsonType::Number);
        assert_eq!(JsonType::of("[]"), JsonType::Array);
    }
}
