//! JSON read the way Go's `encoding/json` fills a struct: keys in document order, matched to
//! field names case-insensitively; the last non-null match wins; unknown keys are ignored.

use core::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value whose objects keep their keys in document order, duplicates included.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GoValue {
    Null,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    String(String),
    Array(Vec<GoValue>),
    Object(GoObject),
}

/// A JSON object as an ordered list of members.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct GoObject(Vec<(String, GoValue)>);

impl GoObject {
    /// Parses text that must hold one JSON object.
    pub(crate) fn parse(text: &str) -> Result<GoObject, String> {
        match serde_json::from_str::<GoValue>(text) {
            Ok(GoValue::Object(o)) => Ok(o),
            Ok(other) => Err(format!("found {} instead", other.kind())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The value Go would store in field `name`: the last member whose key equals `name`
    /// under Go's case folding, skipping `null` (which Go treats as "leave the field alone").
    pub(crate) fn get(&self, name: &str) -> Option<&GoValue> {
        self.0
            .iter()
            .rev()
            .find(|(k, v)| go_fold_eq(k, name) && *v != GoValue::Null)
            .map(|(_, v)| v)
    }
}

/// Whether two keys match as Go's `encoding/json` matches a key to a field name: Unicode
/// simple case folding, under which the only non-ASCII letters equal to ASCII ones are the
/// Kelvin sign (K, U+212A) and the long s (ſ, U+017F).
fn go_fold_eq(a: &str, b: &str) -> bool {
    fn fold(c: char) -> char {
        match c {
            '\u{212A}' => 'k',
            '\u{017F}' => 's',
            c => c.to_ascii_lowercase(),
        }
    }
    a.chars().map(fold).eq(b.chars().map(fold))
}

impl GoValue {
    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self {
            GoValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            GoValue::Uint(n) => Some(*n),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            GoValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_object(&self) -> Option<&GoObject> {
        match self {
            GoValue::Object(o) => Some(o),
            _ => None,
        }
    }

    /// What kind of JSON value this is, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            GoValue::Null => "null",
            GoValue::Bool(_) => "a boolean",
            GoValue::Uint(_) | GoValue::Int(_) | GoValue::Float(_) => "a number",
            GoValue::String(_) => "a string",
            GoValue::Array(_) => "an array",
            GoValue::Object(_) => "an object",
        }
    }

    /// The kind, with the value itself for numbers (`-1`, `2.5`).
    pub(crate) fn describe(&self) -> String {
        match self {
            GoValue::Int(n) => n.to_string(),
            GoValue::Float(f) => f.to_string(),
            GoValue::String(s) => format!("the string {s:?}"),
            other => other.kind().to_string(),
        }
    }
}

struct GoValueVisitor;

impl<'de> Visitor<'de> for GoValueVisitor {
    type Value = GoValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<GoValue, E> {
        Ok(GoValue::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<GoValue, E> {
        Ok(GoValue::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<GoValue, E> {
        Ok(GoValue::Bool(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoValue, E> {
        Ok(GoValue::Uint(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoValue, E> {
        Ok(match u64::try_from(v) {
            Ok(u) => GoValue::Uint(u),
            Err(_) => GoValue::Int(v),
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<GoValue, E> {
        Ok(GoValue::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<GoValue, E> {
        Ok(GoValue::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<GoValue, E> {
        Ok(GoValue::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<GoValue, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(GoValue::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<GoValue, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, GoValue>()? {
            out.push((k, v));
        }
        Ok(GoValue::Object(GoObject(out)))
    }
}

impl<'de> Deserialize<'de> for GoValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GoValue, D::Error> {
        d.deserialize_any(GoValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_case_and_null() {
        let o =
            GoObject::parse(r#"{"a":1,"A":2,"b":null,"B":"x","c":{"d":[true,-1,2.5]}}"#).unwrap();
        assert_eq!(o.get("a"), Some(&GoValue::Uint(2)));
        assert_eq!(o.get("b").and_then(GoValue::as_str), Some("x"));
        let c = o.get("C").and_then(GoValue::as_object).unwrap();
        assert_eq!(
            c.get("D"),
            Some(&GoValue::Array(vec![
                GoValue::Bool(true),
                GoValue::Int(-1),
                GoValue::Float(2.5)
            ]))
        );
        assert_eq!(o.get("missing"), None);
        // Go folds the Kelvin sign to k and the long s to s.
        let o = GoObject::parse("{\"\u{212A}ey\":1,\"\u{017F}ubnet\":2}").unwrap();
        assert_eq!(o.get("key"), Some(&GoValue::Uint(1)));
        assert_eq!(o.get("Subnet"), Some(&GoValue::Uint(2)));
        assert!(GoObject::parse("[]").is_err());
        assert!(GoObject::parse("{").is_err());
    }
}
