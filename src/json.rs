//! JSON that refuses an object with the same key twice, at any depth.
//! serde_json keeps the last of two equal keys silently, and two parsers
//! may disagree on which one counts (an old smuggling trick for tokens and
//! bodies), so every untrusted JSON document (token segments, request
//! bodies) is read through here.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `bytes` (a whole document: trailing data is an error) into a
/// `Value`, refusing duplicate keys; a duplicate's error message is
/// `on_duplicate(key)`. Other errors are serde_json's, with their line and
/// column.
pub fn from_slice(bytes: &[u8], on_duplicate: fn(&str) -> String) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict { on_duplicate }.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// [`from_slice`] over text.
pub fn from_str(text: &str, on_duplicate: fn(&str) -> String) -> serde_json::Result<Value> {
    from_slice(text.as_bytes(), on_duplicate)
}

/// Deserializes a `Value`, refusing an object with the same key twice.
#[derive(Clone, Copy)]
struct Strict {
    on_duplicate: fn(&str) -> String,
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom((self.on_duplicate)(&key)));
            }
            let value = map.next_value_seed(self)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(key: &str) -> String {
        format!("twice: {key}")
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(from_str(r#"{"a": 1, "a": 2}"#, dup)
            .unwrap_err()
            .to_string()
            .contains("twice: a"));
        assert!(from_str(r#"[{"x": {"b": 1, "b": 1}}]"#, dup)
            .unwrap_err()
            .to_string()
            .contains("twice: b"));
        assert_eq!(from_str(r#"{"a": {"a": 1}}"#, dup).unwrap()["a"]["a"], 1);
    }

    #[test]
    fn trailing_data_is_an_error() {
        assert!(from_str("{} {}", dup).is_err());
    }
}
