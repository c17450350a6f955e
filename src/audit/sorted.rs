//! The canonical form of a flat record (`chain::write_canonical`'s bytes)
//! written straight from its `Serialize` implementation, without building a
//! `serde_json::Value` first: each field's value is serialised by
//! serde_json into one buffer, and the fields are then emitted sorted by
//! name. This runs for every audited decision.
//!
//! "Flat" means a struct whose fields are scalars, strings, options or
//! sequences of them (what [`super::AuditRecord`] holds): for those,
//! serde_json's compact output is already the canonical form. A field that
//! is a map or a struct is refused ([`Error::Nested`]), since its keys would
//! need sorting too; the caller then falls back to the `Value` path.

use serde::ser::{self, Impossible, Serialize, SerializeStruct, Serializer};

/// Why a value has no flat canonical form.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The top-level value is not a struct.
    #[error("not a struct")]
    NotAStruct,
    /// A field holds a map or a struct.
    #[error("field {0} holds a map or a struct")]
    Nested(&'static str),
    /// serde_json refused a field's value (or the value's own `Serialize`
    /// failed).
    #[error("{0}")]
    Json(String),
}

impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error::Json(msg.to_string())
    }
}

/// Writes the canonical form of `value` (a flat struct) into `out`, leaving
/// out the member named `skip`: `{"a":..,"b":..}` with members sorted by
/// the bytes of their names, no whitespace, serde_json's escaping. On error
/// `out` may hold a partial form: truncate it.
pub fn write<T: Serialize>(value: &T, skip: &str, out: &mut Vec<u8>) -> Result<(), Error> {
    value.serialize(Top { skip, out })
}

/// The top level: only a struct is accepted.
struct Top<'a> {
    skip: &'a str,
    out: &'a mut Vec<u8>,
}

/// Collects a struct's fields: names, and value bytes in `values`.
struct Fields<'a> {
    skip: &'a str,
    out: &'a mut Vec<u8>,
    values: Vec<u8>,
    fields: Vec<(&'static str, std::ops::Range<usize>)>,
}

impl SerializeStruct for Fields<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<V: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &V,
    ) -> Result<(), Error> {
        if key == self.skip {
            return Ok(());
        }
        let start = self.values.len();
        value
            .serialize(&mut serde_json::Serializer::new(FlatOnly {
                out: &mut self.values,
                depth: 0,
            }))
            .map_err(|e| {
                if e.to_string() == NESTED {
                    Error::Nested(key)
                } else {
                    Error::Json(e.to_string())
                }
            })?;
        self.fields.push((key, start..self.values.len()));
        Ok(())
    }

    fn end(mut self) -> Result<(), Error> {
        self.fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
        self.out.push(b'{');
        for (i, (key, range)) in self.fields.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            serde_json::to_writer(&mut *self.out, key).map_err(|e| Error::Json(e.to_string()))?;
            self.out.push(b':');
            self.out.extend_from_slice(&self.values[range.clone()]);
        }
        self.out.push(b'}');
        Ok(())
    }
}

const NESTED: &str = "a map or a struct inside a flat record";

/// A writer that lets serde_json write scalars and sequences, and fails on
/// a `{` outside a string (a map or a struct: its keys would need sorting).
/// It tracks whether it is inside a string (quotes, backslash escapes) so
/// that a brace in a string's text passes.
struct FlatOnly<'a> {
    out: &'a mut Vec<u8>,
    /// 0 outside a string, 1 inside, 2 just after a backslash inside.
    depth: u8,
}

impl std::io::Write for FlatOnly<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            self.depth = match (self.depth, b) {
                (0, b'"') => 1,
                (0, b'{') => return Err(std::io::Error::other(NESTED)),
                (1, b'\\') => 2,
                (1, b'"') => 0,
                (2, _) => 1,
                (d, _) => d,
            };
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

macro_rules! not_a_struct {
    ($($method:ident($($arg:ty),*);)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<(), Error> {
            Err(Error::NotAStruct)
        })*
    };
}

impl<'a> Serializer for Top<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Fields<'a>;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Fields<'a>, Error> {
        Ok(Fields {
            skip: self.skip,
            out: self.out,
            values: Vec::with_capacity(512),
            fields: Vec::with_capacity(len),
        })
    }

    not_a_struct! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<V: ?Sized + Serialize>(self, _: &V) -> Result<(), Error> {
        Err(Error::NotAStruct)
    }
    fn serialize_newtype_struct<V: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &V,
    ) -> Result<(), Error> {
        Err(Error::NotAStruct)
    }
    fn serialize_newtype_variant<V: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &V,
    ) -> Result<(), Error> {
        Err(Error::NotAStruct)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(Error::NotAStruct)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(Error::NotAStruct)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(Error::NotAStruct)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(Error::NotAStruct)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(Error::NotAStruct)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(Error::NotAStruct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditRecord, Kind};

    /// The `Value` path's canonical form, the reference.
    fn reference<T: Serialize>(value: &T, skip: &str) -> Vec<u8> {
        let v = serde_json::to_value(value).unwrap();
        let serde_json::Value::Object(mut map) = v else {
            panic!("not an object")
        };
        map.remove(skip);
        crate::audit::chain::canonical(&serde_json::Value::Object(map)).into_bytes()
    }

    /// The names of a struct's fields, as its `Deserialize` declares them.
    fn field_names<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
        use serde::de::{value::Error as DeError, Error as _, Visitor};
        struct Names<'a>(&'a std::cell::Cell<&'static [&'static str]>);
        impl<'de> serde::Deserializer<'de> for Names<'_> {
            type Error = DeError;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DeError> {
                Err(DeError::custom("names only"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, DeError> {
                self.0.set(fields);
                Err(DeError::custom("names only"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let names = std::cell::Cell::new(&[][..]);
        let _ = T::deserialize(Names(&names));
        names.get()
    }

    /// Every field of the record set (strings that need escaping, two-item
    /// lists, the largest integers), found through its `Deserialize`, so a
    /// field added later is covered without editing this test.
    fn every_field_set() -> AuditRecord {
        let text = |name: &str| format!("{name} \"quoted\" \\ {{brace}} \u{1} é");
        let mut map = match serde_json::to_value(AuditRecord::new(Kind::Decision)).unwrap() {
            serde_json::Value::Object(map) => map,
            _ => unreachable!(),
        };
        for &name in field_names::<AuditRecord>() {
            let candidates = [
                serde_json::json!(text(name)),
                serde_json::json!([text(name), "b"]),
                serde_json::json!(u64::MAX),
            ];
            for candidate in candidates {
                let mut tried = map.clone();
                tried.insert(name.into(), candidate);
                if serde_json::from_value::<AuditRecord>(tried.clone().into()).is_ok() {
                    map = tried;
                    break;
                }
            }
        }
        serde_json::from_value(map.into()).unwrap()
    }

    #[test]
    fn a_record_s_flat_form_is_the_value_path_s_canonical_form_byte_for_byte() {
        for record in [
            AuditRecord::new(Kind::Decision),
            AuditRecord::new(Kind::Checkpoint),
            every_field_set(),
        ] {
            let mut out = Vec::new();
            write(&record, "hash", &mut out).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(reference(&record, "hash")).unwrap()
            );
        }
        // Every field of the fully set record is in its form.
        let mut out = Vec::new();
        write(&every_field_set(), "", &mut out).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            parsed.as_object().unwrap().len(),
            field_names::<AuditRecord>().len()
        );
    }

    #[test]
    fn a_map_or_struct_field_is_refused_not_written_unsorted() {
        #[derive(serde::Serialize)]
        struct Outer {
            a: u64,
            inner: std::collections::HashMap<String, u64>,
        }
        let outer = Outer {
            a: 1,
            inner: [("z".into(), 1), ("b".into(), 2)].into(),
        };
        let mut out = Vec::new();
        assert!(matches!(
            write(&outer, "", &mut out),
            Err(Error::Nested("inner"))
        ));
        assert!(matches!(write(&5u64, "", &mut out), Err(Error::NotAStruct)));
        // A brace inside a string is text, not a map.
        #[derive(serde::Serialize)]
        struct Text {
            b: &'static str,
            a: &'static str,
        }
        let mut out = Vec::new();
        write(
            &Text {
                b: "{\"x\":1}",
                a: "\\\"{",
            },
            "",
            &mut out,
        )
        .unwrap();
        assert_eq!(out, br#"{"a":"\\\"{","b":"{\"x\":1}"}"#);
    }
}
