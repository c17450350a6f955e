//! The canonical form of an [`AuditRecord`] (what its hash covers), written
//! by hand for the record's fixed shape: the members in the order of their
//! names' bytes, empty ones left out as the record's `Serialize` leaves them
//! out, no whitespace, serde_json's string escaping. It is the same bytes as
//! `chain::canonical` over the record's `serde_json::Value` (the tests pin
//! it), without a `Value`, a serializer or a sort per record: this runs for
//! every audited decision. It does not hash, and it does not read.

use super::AuditRecord;

/// Appends the canonical form of `r` without its `hash` member to `out`.
pub(super) fn write(r: &AuditRecord, out: &mut Vec<u8>) {
    let mut m = Members::open(out);
    // Sorted by the names' bytes; a test checks it against the `Value` path
    // with every member set, so a field added to the record and not here
    // fails it.
    m.text("action", &r.action);
    m.text("adapter", &r.adapter);
    m.text("auth_method", &r.auth_method);
    m.text("checkpoint_head", &r.checkpoint_head);
    m.text("checkpoint_key", &r.checkpoint_key);
    m.text("checkpoint_mac", &r.checkpoint_mac);
    if let Some(seq) = r.checkpoint_seq {
        m.number_always("checkpoint_seq", seq);
    }
    m.text("checkpoint_sig", &r.checkpoint_sig);
    m.text("decision", &r.decision);
    m.text("decision_id", &r.decision_id);
    m.text("detail", &r.detail);
    m.list("determining_policies", &r.determining_policies);
    m.list("errors", &r.errors);
    m.list("files_changed", &r.files_changed);
    m.list("findings", &r.findings);
    m.text_always("id", &r.id);
    m.text_always("kind", r.kind.as_str());
    m.number("latency_us", r.latency_us);
    m.text("policy_version", &r.policy_version);
    m.text_always("prev", &r.prev);
    m.text("previous_version", &r.previous_version);
    m.text("principal", &r.principal);
    m.text("public_key", &r.public_key);
    m.text("quota", &r.quota);
    m.text("reason", &r.reason);
    m.text("request_id", &r.request_id);
    m.text("reservation", &r.reservation);
    m.text("resource", &r.resource);
    m.text("route", &r.route);
    m.text("rpc", &r.rpc);
    m.number_always("seq", r.seq);
    m.text("settlement", &r.settlement);
    m.text("shadow", &r.shadow);
    m.text("source_ip", &r.source_ip);
    m.number("status", r.status);
    m.text_always("time", &r.time);
    m.text("trace_id", &r.trace_id);
    m.number("unrecorded_before", r.unrecorded_before);
    m.close();
}

/// An object being written: every member is preceded by a comma, and
/// `close` turns the first one into the opening brace (a record always has
/// members: `seq`, `id`, `kind`, ...).
struct Members<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Members<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        let start = out.len();
        Members { out, start }
    }

    fn name(&mut self, name: &str) {
        // The names are plain ASCII identifiers: nothing to escape.
        self.out.extend_from_slice(b",\"");
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A string member, left out when empty.
    fn text(&mut self, name: &str, value: &str) {
        if !value.is_empty() {
            self.text_always(name, value);
        }
    }

    fn text_always(&mut self, name: &str, value: &str) {
        self.name(name);
        string(value, self.out);
    }

    /// An integer member, left out when zero.
    fn number(&mut self, name: &str, value: u64) {
        if value != 0 {
            self.number_always(name, value);
        }
    }

    fn number_always(&mut self, name: &str, value: u64) {
        self.name(name);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// A list of strings, left out when empty.
    fn list(&mut self, name: &str, items: &[String]) {
        if items.is_empty() {
            return;
        }
        self.name(name);
        self.out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            string(item, self.out);
        }
        self.out.push(b']');
    }

    fn close(self) {
        if self.out.len() == self.start {
            self.out.push(b'{');
        } else {
            self.out[self.start] = b'{';
        }
        self.out.push(b'}');
    }
}

/// `value` as a JSON string, escaped by serde_json itself, so the form
/// cannot drift from the `Value` path's. Most strings need no escape: one
/// pass without an early exit (a few wide compares) finds that out, and
/// they are copied as they are.
fn string(value: &str, out: &mut Vec<u8>) {
    let plain = value.bytes().fold(0u8, |acc, b| {
        acc | u8::from((b < 0x20) | (b == b'"') | (b == b'\\'))
    }) == 0;
    if plain {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, value).expect("a string serialises into a Vec");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Kind;
    use serde::Serialize;

    /// The `Value` path's canonical form without `hash`, the reference.
    fn reference<T: Serialize>(value: &T) -> Vec<u8> {
        let serde_json::Value::Object(mut map) = serde_json::to_value(value).unwrap() else {
            panic!("not an object")
        };
        map.remove("hash");
        crate::audit::chain::canonical(&serde_json::Value::Object(map)).into_bytes()
    }

    fn form(record: &AuditRecord) -> String {
        let mut out = b"kept".to_vec();
        write(record, &mut out);
        let out = out.strip_prefix(b"kept").expect("appends").to_vec();
        String::from_utf8(out).unwrap()
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
        let serde_json::Value::Object(mut map) =
            serde_json::to_value(AuditRecord::new(Kind::Decision)).unwrap()
        else {
            unreachable!()
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
    fn a_record_s_form_is_the_value_path_s_canonical_form_byte_for_byte() {
        let full = every_field_set();
        let mut records = vec![
            AuditRecord::default(),
            AuditRecord::new(Kind::Decision),
            AuditRecord::new(Kind::Checkpoint),
            full.clone(),
        ];
        // Each member alone, and every member but one, so that each one's
        // place in the order and its leaving out when empty are checked.
        let names = field_names::<AuditRecord>();
        for &name in names {
            let serde_json::Value::Object(all) = serde_json::to_value(&full).unwrap() else {
                unreachable!()
            };
            let mut without = all.clone();
            without.remove(name);
            let mut only = serde_json::to_value(AuditRecord::default()).unwrap();
            only[name] = all[name].clone();
            // A member the record cannot do without (`seq`, `id`, ...)
            // is only checked alone.
            records.extend(serde_json::from_value(serde_json::Value::Object(without)).ok());
            records.push(serde_json::from_value(only).unwrap());
        }
        // Zero and empty values where the record keeps them.
        records.push(AuditRecord {
            checkpoint_seq: Some(0),
            seq: 0,
            determining_policies: vec![String::new()],
            ..AuditRecord::default()
        });
        for record in &records {
            assert_eq!(
                form(record),
                String::from_utf8(reference(record)).unwrap(),
                "{record:?}"
            );
        }
        // Every member of the fully set record but `hash` is in its form.
        let parsed: serde_json::Value = serde_json::from_str(&form(&full)).unwrap();
        assert_eq!(parsed.as_object().unwrap().len(), names.len() - 1);
    }

    #[test]
    fn a_record_sealed_from_its_fields_is_the_line_and_hash_of_the_value_path() {
        use crate::audit::chain::{seal, seal_record};
        for record in [AuditRecord::new(Kind::Decision), every_field_set()] {
            let (mut scratch, mut fast, mut slow) = (Vec::new(), b"x\n".to_vec(), b"x\n".to_vec());
            let hash = seal_record(&record, &mut scratch, &mut fast);
            let value = serde_json::to_value(&record).unwrap();
            assert_eq!(hash, seal(&value, &mut scratch, &mut slow));
            assert_eq!(hash, crate::audit::chain::leaf_hash(&value));
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut texts: Vec<String> = (0u32..0x80)
            .filter_map(char::from_u32)
            .map(|c| format!("a{c}b{c}"))
            .collect();
        texts.extend(
            [
                "",
                "\"",
                "\\\\",
                "é \u{7f} \u{80} \u{2028} \u{fffd} 😀",
                "\u{1}\u{1f}",
                "tail\n",
            ]
            .map(String::from),
        );
        for text in texts {
            let mut out = Vec::new();
            string(&text, &mut out);
            assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{text:?}");
        }
    }
}
