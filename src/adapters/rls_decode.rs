//! `RateLimitRequest` (Envoy's `service/ratelimit/v3/rls.proto`) from the
//! wire straight into the descriptors an RLS decision charges.
//!
//! prost's generated `RateLimitRequest` holds every string in an
//! allocation of its own (the domain, each entry's key and value), which
//! the descriptors were then built from, copied again. The messages here
//! are wire-compatible with `envoy.service.ratelimit.v3` and
//! `envoy.extensions.common.ratelimit.v3` (the same field numbers, wire
//! types and message names, so prost's decode errors read as before), and
//! each string is decoded once into the form the descriptor keeps: the
//! domain and an entry's key as `Arc<str>`, an entry's value as `String`.
//! Every copy of a string field is checked for UTF-8 as it is read,
//! as prost checks it: a protobuf `string` must be UTF-8, and a field sent
//! twice is refused if either copy is not, even though the last one wins.
//! Every field of the request is read, as before.
//!
//! Semantics follow envoyproxy/ratelimit: `hits_addend` per descriptor
//! overrides the request's (an explicit 0 checks without charging; the
//! request-level 0 means unset, i.e. 1).

use std::sync::Arc;

use prost::bytes::Bytes;
use prost::Message;

use super::unary::decode_error_text;
use crate::quota::apply::Descriptor;

/// One `ShouldRateLimit` call: its domain and its descriptors with their
/// costs, in the order sent.
#[derive(Debug)]
pub struct RateLimitCall {
    /// `RateLimitRequest.domain`, never empty.
    pub domain: Arc<str>,
    /// `RateLimitRequest.descriptors`, never empty; each has entries.
    pub descriptors: Vec<Descriptor>,
}

/// Why a `RateLimitRequest` is not a call we can answer.
#[derive(Debug)]
pub enum Undecided {
    /// The bytes are not a `RateLimitRequest` (prost's error, or a string
    /// that is not UTF-8): the text names the field, as prost's errors do
    /// (`Message.field: what`).
    Wire(String),
    /// A request RLS semantics refuse: no domain, no descriptors, a
    /// descriptor without entries, a refund, a limit override without a
    /// unit. The text says which, with the descriptor's index.
    Invalid(String),
}

/// Decodes one `RateLimitRequest` message (its protobuf bytes, without the
/// gRPC frame) into the call it makes.
///
/// # Errors
/// [`Undecided::Wire`] for bytes that are not a `RateLimitRequest`,
/// [`Undecided::Invalid`] for one whose domain or descriptor list is
/// empty, with a descriptor without entries, with `is_negative_hits`, or
/// with a `limit` whose `unit` is not SECOND..YEAR.
pub fn decode(bytes: Bytes) -> Result<RateLimitCall, Undecided> {
    let request = wire::RateLimitRequest::decode(bytes)
        .map_err(|e| Undecided::Wire(decode_error_text(&e)))?;
    translate(request)
}

/// The call a decoded `RateLimitRequest` makes.
fn translate(request: wire::RateLimitRequest) -> Result<RateLimitCall, Undecided> {
    let Some(domain) = request.domain.filter(|d| !d.is_empty()) else {
        return Err(Undecided::Invalid(
            "rate limit domain must not be empty".into(),
        ));
    };
    if request.descriptors.is_empty() {
        return Err(Undecided::Invalid(
            "rate limit descriptor list must not be empty".into(),
        ));
    }
    let request_hits = if request.hits_addend == 0 {
        1
    } else {
        u64::from(request.hits_addend)
    };
    let mut descriptors = Vec::with_capacity(request.descriptors.len());
    for (i, d) in request.descriptors.into_iter().enumerate() {
        if d.is_negative_hits {
            return Err(Undecided::Invalid(format!(
                "descriptors[{i}]: is_negative_hits (refunds) is not supported"
            )));
        }
        if d.entries.is_empty() {
            return Err(Undecided::Invalid(format!(
                "descriptors[{i}]: a descriptor needs entries"
            )));
        }
        let limit = match &d.limit {
            None => None,
            Some(l) => Some((
                u64::from(l.requests_per_unit),
                unit_us(l.unit).ok_or_else(|| {
                    Undecided::Invalid(format!(
                        "descriptors[{i}].limit.unit: {} is not a rate limit unit (SECOND..YEAR)",
                        l.unit
                    ))
                })?,
            )),
        };
        let mut entries = crate::quota::apply::Entries::with_capacity(d.entries.len());
        for e in d.entries {
            entries.push((e.key.unwrap_or_else(|| Arc::from("")), e.value));
        }
        descriptors.push(Descriptor {
            domain: Arc::clone(&domain),
            entries,
            cost: d.hits_addend.map(|h| h.value).unwrap_or(request_hits),
            limit,
            tokens: None,
        });
    }
    Ok(RateLimitCall {
        domain,
        descriptors,
    })
}

/// Microseconds in one `envoy.type.v3.RateLimitUnit` (as
/// envoyproxy/ratelimit counts them: a month is 30 days, a year 365);
/// `None` for `UNKNOWN` (0) and values outside the enum.
fn unit_us(unit: i32) -> Option<u64> {
    // The response's unit enum: the same values as `envoy.type.v3`'s, and
    // WEEK (7), which the vendored `RateLimitUnit` does not list yet.
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as RateLimitUnit;
    let seconds = match RateLimitUnit::try_from(unit).ok()? {
        RateLimitUnit::Unknown => return None,
        RateLimitUnit::Second => 1,
        RateLimitUnit::Minute => 60,
        RateLimitUnit::Hour => 3600,
        RateLimitUnit::Day => 86_400,
        RateLimitUnit::Week => 7 * 86_400,
        RateLimitUnit::Month => 30 * 86_400,
        RateLimitUnit::Year => 365 * 86_400,
    };
    Some(seconds * 1_000_000)
}

/// Wire-compatible subsets of Envoy's messages. `RateLimitRequest` and
/// `Entry` implement `Message` by hand, for their strings (see [`text`]);
/// the others are derived.
mod wire {
    use std::sync::Arc;

    use prost::bytes::{Buf, BufMut};
    use prost::encoding::{message, skip_field, uint32, DecodeContext, WireType};
    use prost::{DecodeError, Message};

    use super::text;

    /// `envoy.service.ratelimit.v3.RateLimitRequest`.
    #[derive(Clone, PartialEq, Default, Debug)]
    pub struct RateLimitRequest {
        /// `domain` (1); `None` when not sent.
        pub domain: Option<Arc<str>>,
        /// `descriptors` (2).
        pub descriptors: Vec<RateLimitDescriptor>,
        /// `hits_addend` (3).
        pub hits_addend: u32,
    }

    impl Message for RateLimitRequest {
        fn encode_raw(&self, buf: &mut impl BufMut) {
            text::encode(1, self.domain.as_deref(), buf);
            message::encode_repeated(2, &self.descriptors, buf);
            if self.hits_addend != 0 {
                uint32::encode(3, &self.hits_addend, buf);
            }
        }

        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: WireType,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), DecodeError> {
            let (field, merged) = match tag {
                1 => (
                    "domain",
                    text::merge_shared(wire_type, &mut self.domain, buf, ctx),
                ),
                2 => (
                    "descriptors",
                    message::merge_repeated(wire_type, &mut self.descriptors, buf, ctx),
                ),
                3 => (
                    "hits_addend",
                    uint32::merge(wire_type, &mut self.hits_addend, buf, ctx),
                ),
                _ => return skip_field(wire_type, tag, buf, ctx),
            };
            merged.map_err(|e| text::at(e, "RateLimitRequest", field))
        }

        fn encoded_len(&self) -> usize {
            let hits_addend = if self.hits_addend != 0 {
                uint32::encoded_len(3, &self.hits_addend)
            } else {
                0
            };
            text::encoded_len(1, self.domain.as_deref())
                + message::encoded_len_repeated(2, &self.descriptors)
                + hits_addend
        }

        fn clear(&mut self) {
            *self = Self::default();
        }
    }

    /// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
    #[derive(Clone, PartialEq, Message)]
    pub struct RateLimitDescriptor {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<Entry>,
        #[prost(message, optional, tag = "2")]
        pub limit: Option<RateLimitOverride>,
        #[prost(message, optional, tag = "3")]
        pub hits_addend: Option<UInt64Value>,
        #[prost(bool, tag = "4")]
        pub is_negative_hits: bool,
    }

    /// `RateLimitDescriptor.Entry`.
    #[derive(Clone, PartialEq, Default, Debug)]
    pub struct Entry {
        /// `key` (1); `None` when not sent.
        pub key: Option<Arc<str>>,
        /// `value` (2): one copy, which the descriptor keeps.
        pub value: String,
    }

    impl Message for Entry {
        fn encode_raw(&self, buf: &mut impl BufMut) {
            text::encode(1, self.key.as_deref(), buf);
            text::encode(2, Some(&self.value), buf);
        }

        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: WireType,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), DecodeError> {
            let (field, merged) = match tag {
                1 => (
                    "key",
                    text::merge_shared(wire_type, &mut self.key, buf, ctx),
                ),
                2 => (
                    "value",
                    text::merge_owned(wire_type, &mut self.value, buf, ctx),
                ),
                _ => return skip_field(wire_type, tag, buf, ctx),
            };
            merged.map_err(|e| text::at(e, "Entry", field))
        }

        fn encoded_len(&self) -> usize {
            text::encoded_len(1, self.key.as_deref()) + text::encoded_len(2, Some(&self.value))
        }

        fn clear(&mut self) {
            *self = Self::default();
        }
    }

    /// `RateLimitDescriptor.RateLimitOverride`; `unit` is
    /// `envoy.type.v3.RateLimitUnit`.
    #[derive(Clone, PartialEq, Message)]
    pub struct RateLimitOverride {
        #[prost(uint32, tag = "1")]
        pub requests_per_unit: u32,
        #[prost(int32, tag = "2")]
        pub unit: i32,
    }

    /// `google.protobuf.UInt64Value`.
    #[derive(Clone, Copy, PartialEq, Message)]
    pub struct UInt64Value {
        #[prost(uint64, tag = "1")]
        pub value: u64,
    }
}

/// A protobuf `string` field decoded straight into the `Arc<str>` or
/// `String` a descriptor keeps, for the hand-written `Message`
/// implementations in [`wire`].
mod text {
    use std::sync::Arc;

    use prost::bytes::{Buf, BufMut, Bytes};
    use prost::encoding::{
        bytes, encode_key, encode_varint, encoded_len_varint, key_len, string, DecodeContext,
        WireType,
    };
    use prost::DecodeError;

    /// Merges one copy of a `string` field into the `Arc<str>` a
    /// descriptor shares (protobuf's last copy wins); see [`read`].
    ///
    /// # Errors
    /// As [`read`]; the value is then `None`.
    pub fn merge_shared(
        wire_type: WireType,
        value: &mut Option<Arc<str>>,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        *value = None;
        let mut bytes = Bytes::new();
        *value = Some(Arc::from(read(wire_type, &mut bytes, buf, ctx)?));
        Ok(())
    }

    /// Merges one copy of a `string` field into the `String` a descriptor
    /// keeps (protobuf's last copy wins); see [`read`].
    ///
    /// # Errors
    /// As [`read`]; the value is then empty.
    pub fn merge_owned(
        wire_type: WireType,
        value: &mut String,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        value.clear();
        let mut bytes = Bytes::new();
        *value = String::from(read(wire_type, &mut bytes, buf, ctx)?);
        Ok(())
    }

    /// Reads one copy of a `string` field into `bytes`, a slice of the
    /// received message (no copy), and checks it for UTF-8, as prost's
    /// `string` decoder checks every copy.
    ///
    /// # Errors
    /// prost's own errors, as its `string` decoder gives them: for a field
    /// that is not length-delimited or runs past the message, and for one
    /// that is not UTF-8 ("invalid string value: data is not UTF-8
    /// encoded").
    fn read<'a>(
        wire_type: WireType,
        bytes: &'a mut Bytes,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<&'a str, DecodeError> {
        bytes::merge(wire_type, bytes, buf, ctx.clone())?;
        std::str::from_utf8(bytes).map_err(|_| invalid_string(ctx))
    }

    /// prost's error for a `string` that is not UTF-8, made by prost's
    /// own `string` decoder (the error's kind cannot be built outside
    /// prost) from bytes that are never UTF-8.
    #[cold]
    fn invalid_string(ctx: DecodeContext) -> DecodeError {
        let not_utf8: &[u8] = &[1, 0xff];
        string::merge(
            WireType::LengthDelimited,
            &mut String::new(),
            &mut &not_utf8[..],
            ctx,
        )
        .expect_err("0xff is never UTF-8")
    }

    /// `error`, located at `message.field` as prost's derived decoders
    /// locate theirs.
    pub fn at(mut error: DecodeError, message: &'static str, field: &'static str) -> DecodeError {
        error.push(message, field);
        error
    }

    /// Writes the field unless it is absent or empty (proto3's default).
    pub fn encode(tag: u32, value: Option<&str>, buf: &mut impl BufMut) {
        if let Some(text) = value.filter(|t| !t.is_empty()) {
            encode_key(tag, WireType::LengthDelimited, buf);
            encode_varint(text.len() as u64, buf);
            buf.put_slice(text.as_bytes());
        }
    }

    /// The bytes [`encode`] writes.
    pub fn encoded_len(tag: u32, value: Option<&str>) -> usize {
        match value.filter(|t| !t.is_empty()) {
            Some(text) => key_len(tag) + encoded_len_varint(text.len() as u64) + text.len(),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as RateLimitUnit;
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    use envoy_types::pb::google::protobuf::UInt64Value;

    use super::*;

    fn descriptor(entries: &[(&str, &str)], hits: Option<u64>) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
            hits_addend: hits.map(|value| UInt64Value { value }),
            ..Default::default()
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>, hits_addend: u32) -> RateLimitRequest {
        RateLimitRequest {
            domain: "d".into(),
            descriptors,
            hits_addend,
        }
    }

    fn decoded(r: &RateLimitRequest) -> Result<RateLimitCall, Undecided> {
        decode(Bytes::from(r.encode_to_vec()))
    }

    fn invalid(r: &RateLimitRequest) -> String {
        match decoded(r) {
            Err(Undecided::Invalid(text)) => text,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn entries_domain_and_limit_override_are_read_in_order() {
        let mut d = descriptor(&[("k", "v"), ("path", "/v1/é")], None);
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 7,
            unit: RateLimitUnit::Minute as i32,
        });
        let call = decoded(&request(vec![d, descriptor(&[("a", "")], None)], 0)).unwrap();
        assert_eq!(&*call.domain, "d");
        let [first, second] = &call.descriptors[..] else {
            panic!("{call:?}");
        };
        let entries: Vec<(&str, &str)> = first
            .entries
            .iter()
            .map(|(k, v)| (&**k, v.as_str()))
            .collect();
        assert_eq!(entries, [("k", "v"), ("path", "/v1/é")]);
        assert_eq!(first.limit, Some((7, 60_000_000)));
        assert_eq!(&*first.domain, "d");
        assert_eq!(second.entries[0].1, "");
        assert_eq!(second.limit, None);
    }

    #[test]
    fn hits_addend_follows_envoyproxy_ratelimit() {
        let descriptors = vec![
            descriptor(&[("k", "v")], None),
            descriptor(&[("k", "v")], Some(0)),
            descriptor(&[("k", "v")], Some(5)),
        ];
        let costs = |hits| -> Vec<u64> {
            decoded(&request(descriptors.clone(), hits))
                .unwrap()
                .descriptors
                .iter()
                .map(|d| d.cost)
                .collect()
        };
        assert_eq!(costs(0), [1, 0, 5]);
        assert_eq!(costs(3), [3, 0, 5]);
    }

    #[test]
    fn refunds_empty_requests_and_unknown_units_are_refused_naming_the_descriptor() {
        let mut refund = descriptor(&[("k", "v")], None);
        refund.is_negative_hits = true;
        let ok = descriptor(&[("k", "v")], None);
        assert_eq!(
            invalid(&request(vec![ok.clone(), refund], 0)),
            "descriptors[1]: is_negative_hits (refunds) is not supported"
        );
        assert_eq!(
            invalid(&request(vec![], 0)),
            "rate limit descriptor list must not be empty"
        );
        assert_eq!(
            invalid(&request(vec![descriptor(&[], None)], 0)),
            "descriptors[0]: a descriptor needs entries"
        );
        let mut no_domain = request(vec![ok.clone()], 0);
        no_domain.domain.clear();
        assert_eq!(invalid(&no_domain), "rate limit domain must not be empty");
        for unit in [0, 8, -1] {
            let mut d = ok.clone();
            d.limit = Some(RateLimitOverride {
                requests_per_unit: 1,
                unit,
            });
            assert_eq!(
                invalid(&request(vec![d], 0)),
                format!(
                    "descriptors[0].limit.unit: {unit} is not a rate limit unit (SECOND..YEAR)"
                )
            );
        }
    }

    #[test]
    fn every_rate_limit_unit_is_its_length() {
        let day = 86_400_000_000;
        for (unit, us) in [
            (RateLimitUnit::Second, 1_000_000),
            (RateLimitUnit::Minute, 60_000_000),
            (RateLimitUnit::Hour, 3_600_000_000),
            (RateLimitUnit::Day, day),
            (RateLimitUnit::Week, 7 * day),
            (RateLimitUnit::Month, 30 * day),
            (RateLimitUnit::Year, 365 * day),
        ] {
            assert_eq!(unit_us(unit as i32), Some(us), "{unit:?}");
        }
        assert_eq!(unit_us(RateLimitUnit::Unknown as i32), None);
    }

    /// Field `tag` holding `value`, length-delimited: bytes a
    /// `RateLimitRequest` built with prost could not carry.
    fn field(tag: u32, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::adapters::proto_write::bytes(&mut out, tag, value);
        out
    }

    /// Our text for bytes that are not a `RateLimitRequest`, and the
    /// text prost's generated message gives for the same bytes.
    fn wire_errors(bytes: Vec<u8>) -> (String, String) {
        let theirs = RateLimitRequest::decode(&bytes[..]).expect_err("prost refuses");
        match decode(Bytes::from(bytes)) {
            Err(Undecided::Wire(ours)) => (ours, decode_error_text(&theirs)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_string_that_is_not_utf8_is_refused_as_prost_refuses_it_naming_the_field() {
        // descriptors (2) > entries (1) > value (2): not UTF-8.
        let entry = [field(1, b"k"), field(2, b"\xc3")].concat();
        let (ours, prosts) = wire_errors([field(1, b"d"), field(2, &field(1, &entry))].concat());
        assert_eq!(
            ours,
            "Entry.value: RateLimitDescriptor.entries: RateLimitRequest.descriptors: \
             invalid string value: data is not UTF-8 encoded"
        );
        assert_eq!(ours, prosts);
        let entry = [field(1, b"\xff"), field(2, b"v")].concat();
        let (ours, prosts) = wire_errors([field(1, b"d"), field(2, &field(1, &entry))].concat());
        assert!(ours.starts_with("Entry.key: "), "{ours}");
        assert_eq!(ours, prosts);
        let (ours, prosts) = wire_errors(field(1, b"\xff"));
        assert!(ours.starts_with("RateLimitRequest.domain: "), "{ours}");
        assert_eq!(ours, prosts);
    }

    #[test]
    fn a_string_sent_twice_is_refused_when_either_copy_is_not_utf8() {
        // Protobuf keeps the last copy of a singular field, but prost
        // checks every copy as it reads it: a request whose first domain,
        // key or value is not UTF-8 is refused even when the last is.
        // The fuzzer found the domain case (seed
        // `domain_twice_first_not_utf8.bin`).
        let entry = |k: &[u8], v: &[u8]| field(2, &field(1, &[field(1, k), field(2, v)].concat()));
        let good = entry(b"k", b"v");
        for (bytes, at) in [
            (
                [field(1, b"\xff"), good.clone(), field(1, b"d")].concat(),
                "RateLimitRequest.domain: ",
            ),
            (
                [field(1, b"d"), entry(b"\xff", b"v")].concat(),
                "Entry.key: ",
            ),
        ] {
            let (ours, prosts) = wire_errors(bytes);
            assert!(ours.starts_with(at), "{ours}");
            assert_eq!(ours, prosts);
        }
        let twice = |first: &[u8], last: &[u8]| {
            let entry = [
                field(1, first),
                field(1, last),
                field(2, first),
                field(2, last),
            ];
            [
                field(1, first),
                field(1, last),
                field(2, &field(1, &entry.concat())),
            ]
            .concat()
        };
        let (ours, prosts) = wire_errors(twice(b"\xc3", b"x"));
        assert_eq!(ours, prosts);
        // Both copies UTF-8: the last one wins, for every string.
        let call = decode(Bytes::from(twice(b"first", b"last"))).unwrap();
        assert_eq!(&*call.domain, "last");
        assert_eq!(&*call.descriptors[0].entries[0].0, "last");
        assert_eq!(call.descriptors[0].entries[0].1, "last");
    }

    #[test]
    fn a_request_encodes_as_envoys_message() {
        // The hand-written `Message` implementations write what prost's
        // generated ones write, and read it back.
        let mut d = descriptor(&[("k", "v"), ("", "é")], Some(3));
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 7,
            unit: RateLimitUnit::Hour as i32,
        });
        for r in [request(vec![d], 2), RateLimitRequest::default()] {
            let bytes = r.encode_to_vec();
            let ours = wire::RateLimitRequest::decode(&bytes[..]).unwrap();
            assert_eq!(ours.encoded_len(), bytes.len());
            assert_eq!(ours.encode_to_vec(), bytes);
        }
    }

    #[test]
    fn malformed_bytes_are_a_wire_error_naming_the_field() {
        // A descriptor whose length runs past the message.
        match decode(Bytes::from_static(&[0x0a, 0x01, b'd', 0x12, 0x05, 0x0a])) {
            Err(Undecided::Wire(e)) => {
                assert!(e.starts_with("RateLimitRequest.descriptors: "), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_message_field_sent_twice_is_merged_as_protobuf_says() {
        // Two `limit` fields on one descriptor: the second sets only the
        // unit, the first's requests_per_unit stays (proto3 merge).
        let entry = field(1, &[field(1, b"k"), field(2, b"v")].concat());
        let first = field(2, &[0x08, 0x09]); // requests_per_unit 9
        let second = field(2, &[0x10, 0x01]); // unit SECOND
        let descriptor = field(2, &[entry, first, second].concat());
        let call = decode(Bytes::from([field(1, b"d"), descriptor].concat())).unwrap();
        assert_eq!(call.descriptors[0].limit, Some((9, 1_000_000)));
    }
}
