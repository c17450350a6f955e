//! The RLS mapping: arbitrary bytes decoded as an Envoy `RateLimitRequest`
//! straight into descriptors (`rls_decode::decode`, as `ShouldRateLimit`
//! decodes what Envoy sends), checked against prost's generated message
//! for the same bytes: what prost refuses, we refuse; what prost reads,
//! we read the same way or refuse with a reason (RLS semantics: no
//! domain, a refund, an unknown unit, ...), and what prost refuses we
//! refuse with prost's own text. Nothing may panic.
#![no_main]

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use libfuzzer_sys::fuzz_target;
use portcullis::adapters::rls_decode::{decode, Undecided};
use portcullis::adapters::unary::decode_error_text;
use prost::bytes::Bytes;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let ours = decode(Bytes::copy_from_slice(data));
    let theirs = RateLimitRequest::decode(data);
    match (ours, theirs) {
        (Ok(call), Ok(request)) => {
            assert_eq!(&*call.domain, request.domain);
            assert_eq!(call.descriptors.len(), request.descriptors.len());
            for (d, r) in call.descriptors.iter().zip(&request.descriptors) {
                assert_eq!(&*d.domain, request.domain);
                let entries: Vec<(&str, &str)> =
                    d.entries.iter().map(|(k, v)| (&**k, v.as_str())).collect();
                let expected: Vec<(&str, &str)> = r
                    .entries
                    .iter()
                    .map(|e| (e.key.as_str(), e.value.as_str()))
                    .collect();
                assert_eq!(entries, expected);
                assert_eq!(
                    d.limit.map(|(n, _)| n),
                    r.limit.as_ref().map(|l| u64::from(l.requests_per_unit))
                );
            }
        }
        // Valid protobuf that RLS semantics refuse (no domain, a refund,
        // an unknown unit, ...): prost reads it, we refuse it with a text.
        (Err(Undecided::Invalid(text)), Ok(_)) => assert!(!text.is_empty()),
        // prost refuses the bytes: so do we, with its text (the whole
        // message is read before any RLS rule is applied).
        (Err(Undecided::Wire(text)), Err(error)) => assert_eq!(text, decode_error_text(&error)),
        (ours, theirs) => panic!("ours {ours:?}, prost's {theirs:?}"),
    }
});
