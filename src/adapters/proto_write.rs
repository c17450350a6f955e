//! Protobuf wire-format writers for the answers written straight from a
//! decision ([`super::check_encode`], [`super::rls`]), without building
//! prost's message first. Each writes one field: its key (field number
//! and wire type) and its value, as the protobuf encoding guide
//! (<https://protobuf.dev/programming-guides/encoding/>) gives them. The
//! small writers are `#[inline]`: called from other modules, they would
//! otherwise cost a call each (about 400 instructions per `Check` answer).

use prost::encoding::{encode_varint, encoded_len_varint};

/// Wire type of varint fields (integers, enums, bools).
const VARINT: u64 = 0;
/// Wire type of 64-bit fields (`double`).
const I64: u64 = 1;
/// Wire type of strings, bytes and embedded messages.
const LEN: u64 = 2;

#[inline]
fn key(s: &mut Vec<u8>, field: u32, wire_type: u64) {
    encode_varint((u64::from(field) << 3) | wire_type, s);
}

/// A varint field, left out when 0 (proto3 scalar default).
#[inline]
pub fn varint_field(s: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        varint(s, field, v);
    }
}

/// A varint field written even when 0: a oneof member (whose presence is
/// the value), or an element of a repeated field.
#[inline]
pub fn varint(s: &mut Vec<u8>, field: u32, v: u64) {
    key(s, field, VARINT);
    encode_varint(v, s);
}

/// A `double` field, written even when 0 (as a oneof member).
#[inline]
pub fn double(s: &mut Vec<u8>, field: u32, v: f64) {
    key(s, field, I64);
    s.extend_from_slice(&v.to_le_bytes());
}

/// A string field, written even when empty: a decoder reads an empty
/// singular field as its default, and an empty element of a repeated one
/// or a oneof's empty string must be there.
#[inline]
pub fn string(s: &mut Vec<u8>, field: u32, v: &str) {
    bytes(s, field, v.as_bytes());
}

/// A singular string field, left out when empty (proto3 default), as
/// prost writes it.
#[inline]
pub fn string_field(s: &mut Vec<u8>, field: u32, v: &str) {
    if !v.is_empty() {
        string(s, field, v);
    }
}

/// A `bytes` field, written even when empty.
#[inline]
pub fn bytes(s: &mut Vec<u8>, field: u32, v: &[u8]) {
    key(s, field, LEN);
    encode_varint(v.len() as u64, s);
    s.extend_from_slice(v);
}

/// An embedded message: `body` is written where its length goes, and the
/// length put in front of it after: one byte reserved, the rest (a body of
/// 128 bytes or more) inserted, which moves the body once. Written even
/// when the body is empty: a message field's presence is its value.
pub fn message(s: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(s, field, LEN);
    let at = s.len();
    s.push(0);
    body(s);
    let len = (s.len() - at - 1) as u64;
    if len < 0x80 {
        s[at] = len as u8;
    } else {
        let mut prefix = [0u8; 10];
        encode_varint(len, &mut &mut prefix[..]);
        s.splice(at..=at, prefix[..encoded_len_varint(len)].iter().copied());
    }
}

/// `google.protobuf.Value` (`struct.proto`) of a JSON value: its `kind`
/// oneof, `null_value` = 1, `number_value` = 2, `string_value` = 3,
/// `bool_value` = 4, `struct_value` = 5, `list_value` = 6. A number is
/// written as the `double` it is closest to.
pub fn json_value(s: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => varint(s, 1, 0),
        Value::Number(n) => double(s, 2, n.as_f64().unwrap_or_default()),
        Value::String(text) => string(s, 3, text),
        Value::Bool(b) => varint(s, 4, u64::from(*b)),
        Value::Object(fields) => message(s, 5, |s| {
            for (k, v) in fields {
                struct_entry(s, k, |s| json_value(s, v));
            }
        }),
        Value::Array(values) => message(s, 6, |s| {
            for v in values {
                message(s, 1, |s| json_value(s, v));
            }
        }),
    }
}

/// One `google.protobuf.Struct.fields` entry (field 1, a map entry: key
/// = 1, value = 2) whose `Value` body `value` writes.
pub fn struct_entry(s: &mut Vec<u8>, key: &str, value: impl FnOnce(&mut Vec<u8>)) {
    message(s, 1, |s| {
        string(s, 1, key);
        message(s, 2, value);
    });
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
    use prost::Message as _;

    use super::*;

    #[test]
    fn json_values_decode_as_the_protobuf_values_they_stand_for() {
        let json = serde_json::json!({
            "n": null, "x": 1.5, "s": "", "b": false, "t": true,
            "o": {"k": [1, "two", []]},
        });
        let mut s = Vec::new();
        json_value(&mut s, &json);
        let value = Value::decode(&s[..]).unwrap();
        let Some(Kind::StructValue(Struct { fields })) = value.kind else {
            panic!("{value:?}");
        };
        assert_eq!(fields["n"].kind, Some(Kind::NullValue(0)));
        assert_eq!(fields["x"].kind, Some(Kind::NumberValue(1.5)));
        assert_eq!(fields["s"].kind, Some(Kind::StringValue(String::new())));
        assert_eq!(fields["b"].kind, Some(Kind::BoolValue(false)));
        assert_eq!(fields["t"].kind, Some(Kind::BoolValue(true)));
        let Some(Kind::StructValue(o)) = &fields["o"].kind else {
            panic!("{:?}", fields["o"]);
        };
        let list = |values| Some(Kind::ListValue(ListValue { values }));
        let number = |n| Value {
            kind: Some(Kind::NumberValue(n)),
        };
        let text = |t: &str| Value {
            kind: Some(Kind::StringValue(t.into())),
        };
        assert_eq!(
            o.fields["k"].kind,
            list(vec![number(1.0), text("two"), Value { kind: list(vec![]) }])
        );
    }

    #[test]
    fn a_long_message_gets_its_whole_length_in_front() {
        let long = "x".repeat(300);
        let mut s = Vec::new();
        message(&mut s, 3, |s| string(s, 3, &long));
        let value = Value::decode(&s[2..]);
        assert!(value.is_err(), "the prefix is longer than one byte");
        // field 3, LEN, then 303 as a two-byte varint.
        assert_eq!(&s[..3], &[0x1a, 0xaf, 0x02]);
        let inner = Value::decode(&s[3..]).unwrap();
        assert_eq!(inner.kind, Some(Kind::StringValue(long)));
    }
}
