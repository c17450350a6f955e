//! The canonical form of a flat record (`chain::write_canonical`'s bytes)
//! written straight from its `Serialize` implementation, without building a
//! `serde_json::Value` first: each field's value is serialised by
//! serde_json into one buffer, and the fields are then emitted sorted by
//! name. This runs for every audited decision, so the sorted order and the
//! escaped names are worked out once per struct (per thread, per list of
//! declared names) and reused.
//!
//! "Flat" means a struct whose fields are scalars, strings, options or
//! sequences of them (what [`super::AuditRecord`] holds): for those,
//! serde_json's compact output is already the canonical form. A field that
//! is a map or a struct is refused ([`Error::Nested`]), since its keys would
//! need sorting too; the caller then falls back to the `Value` path. The
//! refusal comes from serde_json's `Formatter::begin_object`, which opens
//! every map, struct and enum variant with content.

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

/// Collects a struct's fields: every name in declaration order (skipped
/// ones too, through `skip_field`), and the value bytes of the present ones
/// in `values`.
struct Fields<'a> {
    name: &'static str,
    skip: &'a str,
    out: &'a mut Vec<u8>,
    values: Vec<u8>,
    /// Declaration order; `None` for a field not written.
    fields: Vec<Field>,
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
            self.fields.push((key, None));
            return Ok(());
        }
        let start = self.values.len();
        value
            .serialize(&mut serde_json::Serializer::with_formatter(
                &mut self.values,
                FlatOnly,
            ))
            .map_err(|e| {
                if e.to_string() == NESTED {
                    Error::Nested(key)
                } else {
                    Error::Json(e.to_string())
                }
            })?;
        self.fields.push((key, Some(start..self.values.len())));
        Ok(())
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), Error> {
        self.fields.push((key, None));
        Ok(())
    }

    fn end(self) -> Result<(), Error> {
        ORDERS.with(|orders| {
            let mut orders = orders.borrow_mut();
            let at = match orders
                .iter()
                .position(|o| o.name == self.name && o.fits(&self.fields))
            {
                Some(at) => at,
                None => {
                    if orders.len() >= MAX_ORDERS {
                        orders.remove(0);
                    }
                    orders.push(Order::new(self.name, &self.fields)?);
                    orders.len() - 1
                }
            };
            orders[at].emit(&self.fields, &self.values, self.out);
            Ok(())
        })
    }
}

impl Drop for Fields<'_> {
    /// Gives the buffers back for the next record (an error included).
    fn drop(&mut self) {
        let (mut values, mut fields) = (
            std::mem::take(&mut self.values),
            std::mem::take(&mut self.fields),
        );
        values.clear();
        fields.clear();
        if values.capacity() > KEPT_BYTES {
            // An unusually large record: not kept for every later one.
            values = Vec::new();
        }
        BUFFERS.with(|b| *b.borrow_mut() = (values, fields));
    }
}

/// The most value bytes a thread keeps between records.
const KEPT_BYTES: usize = 64 * 1024;

/// A field's name and where its value's bytes are (`None`: not written).
type Field = (&'static str, Option<std::ops::Range<usize>>);

thread_local! {
    /// The value bytes and the field list of the last record written on
    /// this thread, emptied, so that the next one does not allocate them.
    static BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<Field>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// How many structs' orders a thread keeps (a record type or two in use).
const MAX_ORDERS: usize = 8;

thread_local! {
    /// The sorted order of the structs this thread has written, so that a
    /// record's fields are not sorted and their names not escaped again on
    /// every write.
    static ORDERS: std::cell::RefCell<Vec<Order>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A struct's fields sorted by name, for one declaration-order list of
/// names (a `Serialize` that emits other names or another order gets an
/// order of its own).
struct Order {
    name: &'static str,
    /// The names in declaration order, as `serialize_field`/`skip_field`
    /// gave them.
    names: Vec<&'static str>,
    /// Indexes into `names`, sorted by the names' bytes.
    sorted: Vec<usize>,
    /// Per declared field, `"name":` as serde_json escapes it.
    heads: Vec<Vec<u8>>,
}

impl Order {
    fn new(name: &'static str, fields: &[Field]) -> Result<Order, Error> {
        let names: Vec<&'static str> = fields.iter().map(|(n, _)| *n).collect();
        let mut sorted: Vec<usize> = (0..names.len()).collect();
        sorted.sort_by(|a, b| names[*a].cmp(names[*b]));
        let heads = names
            .iter()
            .map(|n| {
                let mut head = serde_json::to_vec(n).map_err(|e| Error::Json(e.to_string()))?;
                head.push(b':');
                Ok(head)
            })
            .collect::<Result<_, Error>>()?;
        Ok(Order {
            name,
            names,
            sorted,
            heads,
        })
    }

    /// True when `fields` declares the same names in the same order.
    fn fits(&self, fields: &[Field]) -> bool {
        self.names.len() == fields.len()
            && self.names.iter().zip(fields).all(|(a, (b, _))| {
                (std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()) || a == b
            })
    }

    /// `{"a":..,"b":..}`: the present fields in sorted order.
    fn emit(&self, fields: &[Field], values: &[u8], out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        for &i in &self.sorted {
            let Some(range) = &fields[i].1 else { continue };
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&self.heads[i]);
            out.extend_from_slice(&values[range.clone()]);
        }
        out.push(b'}');
    }
}

const NESTED: &str = "a map or a struct inside a flat record";

/// serde_json's compact output, refusing a map or a struct (its keys would
/// need sorting): serde_json opens every map, struct and enum variant with
/// content through `begin_object`, and nothing else.
struct FlatOnly;

impl serde_json::ser::Formatter for FlatOnly {
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, _: &mut W) -> std::io::Result<()> {
        Err(std::io::Error::other(NESTED))
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

    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Fields<'a>, Error> {
        let (values, fields) = BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
        Ok(Fields {
            name,
            skip: self.skip,
            out: self.out,
            values,
            fields,
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

    /// A hand-written `Serialize` may declare other fields under the same
    /// struct name from one call to the next: each call is still sorted by
    /// its own names, not by an order kept from an earlier call.
    #[test]
    fn a_struct_name_with_varying_fields_is_sorted_by_each_call_s_own_names() {
        struct Varying(u8);
        impl Serialize for Varying {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut st = s.serialize_struct("Varying", 3)?;
                match self.0 {
                    0 => {
                        st.serialize_field("b", &1)?;
                        st.serialize_field("a", &2)?;
                        st.skip_field("c")?;
                    }
                    1 => {
                        st.serialize_field("c", &3)?;
                        st.serialize_field("a", "x")?;
                    }
                    _ => {
                        st.serialize_field("a", &[1, 2])?;
                        st.serialize_field("b", &4)?;
                        st.serialize_field("c", &5)?;
                    }
                }
                st.end()
            }
        }
        for round in [0, 1, 2, 0, 2, 1] {
            let mut out = Vec::new();
            write(&Varying(round), "", &mut out).unwrap();
            assert_eq!(out, reference(&Varying(round), ""), "round {round}");
        }
    }
}
