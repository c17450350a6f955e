//! The Envoy RLS v3 adapter: `RateLimitRequest` -> descriptors
//! ([`rls_decode`]), and the `Decision` -> `RateLimitResponse`, written
//! straight to the wire ([`EncodedRateLimitResponse`]); served by the
//! shared [`UnaryServer`]. Protocol mapping only: the pipeline
//! decides (a rate-limit call is a decision with only the quota stage),
//! exactly as the quota stage inside `Check`.
//!
//! Semantics follow envoyproxy/ratelimit: `hits_addend` per descriptor
//! overrides the request's (an explicit 0 checks without charging; the
//! request-level 0 means unset, i.e. 1); `overall_code` is OK or
//! OVER_LIMIT, never UNKNOWN (Envoy lets UNKNOWN through).

use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{rate_limit::Unit, Code};
use prost::bytes::Bytes;
use tonic::Status;

use super::proto_write::{bytes, json_value, message, string_field, struct_entry, varint_field};
use super::rls_decode::{self, RateLimitCall, Undecided};
use super::unary::{self, UnaryMethod, UnaryServer};
use crate::app::State;
use crate::decision::quota::LimitStatus;
use crate::decision::Decision;
use crate::pipeline;
use crate::quota::settings::HeadersSent;
use crate::quota::RlsHeaders;
use crate::request::AccessRequest;

/// The `envoy.service.ratelimit.v3.RateLimitService` service:
/// `ShouldRateLimit` decoded by [`rls_decode`], any other method
/// `UNIMPLEMENTED`.
pub type RateLimitServer = UnaryServer<RateLimiter>;

/// The RLS `RateLimitService`.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    state: Arc<State>,
}

impl RateLimiter {
    /// A service charging through the shared state.
    pub fn new(state: Arc<State>) -> Self {
        RateLimiter { state }
    }
}

impl UnaryMethod for RateLimiter {
    const SERVICE: &'static str = "envoy.service.ratelimit.v3.RateLimitService";
    const PATH: &'static str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    /// 512 bytes: Envoy's requests carry a few descriptors of short
    /// entries.
    const FIRST_BUFFER_BYTES: usize = 512;

    type Request = RateLimitCall;
    type Response = EncodedRateLimitResponse;

    /// A message that is not a `RateLimitRequest`, or one RLS semantics
    /// refuse (no domain or descriptors, a refund, ...), is
    /// `INVALID_ARGUMENT`, naming the field or the descriptor.
    fn decode(bytes: Bytes) -> Result<RateLimitCall, Status> {
        rls_decode::decode(bytes).map_err(|undecided| match undecided {
            Undecided::Wire(text) => unary::undecodable("RateLimitRequest", &text),
            Undecided::Invalid(text) => Status::invalid_argument(text),
        })
    }

    /// The decision for one call: the quota stage only, exactly as inside
    /// `Check`. A decision that could not be made or recorded (the audit
    /// trail fails closed) is the decision's gRPC error: Envoy's own
    /// failure mode for the ratelimit filter decides, as for any RLS
    /// error.
    fn answer(
        &self,
        call: RateLimitCall,
    ) -> impl Future<Output = Result<tonic::Response<EncodedRateLimitResponse>, Status>> + Send + 'static
    {
        let state = Arc::clone(&self.state);
        async move {
            let access = AccessRequest::for_ratelimit(&call.domain);
            let snapshot = state.policies.current();
            let decision = pipeline::decide(
                &snapshot,
                pipeline::Ask::RateLimit(pipeline::RateLimit {
                    request: &access,
                    domain: &call.domain,
                    descriptors: &call.descriptors,
                }),
                pipeline::Mode::Enforce(state.live(pipeline::Door::RateLimit)),
            )
            .await;
            if decision.is_failure() {
                return Err(Status::new(
                    tonic::Code::from(decision.grpc() as i32),
                    decision.detail,
                ));
            }
            Ok(tonic::Response::new(EncodedRateLimitResponse::of(
                &decision,
                state.quotas.rls_headers(),
            )))
        }
    }
}

/// A `RateLimitResponse` in protobuf wire form, ready for the gRPC frame;
/// written from the decision ([`EncodedRateLimitResponse::of`]) without
/// building prost's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRateLimitResponse(Vec<u8>);

impl AsRef<[u8]> for EncodedRateLimitResponse {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Bytes reserved for an answer at first: an OK with one limited
/// descriptor takes about 30; a refusal with its problem document grows
/// the buffer once.
const FIRST_CAPACITY: usize = 128;

impl EncodedRateLimitResponse {
    /// Renders a decision for Envoy: `overall_code` OK or OVER_LIMIT (never
    /// UNKNOWN, which Envoy lets through), a status per descriptor, and the
    /// client's headers as `headers` says (`quotas.rls_headers`), and on a
    /// refusal the problem document (outcome table).
    ///
    /// Statuses follow envoyproxy/ratelimit: an `unlimited` descriptor
    /// reports `limit_remaining` 4294967295 and no `current_limit`; an
    /// over-limit one reports 0 left. The metadata of the descriptors that
    /// passed is merged into `dynamic_metadata` under `metadata`.
    ///
    /// By default (`send: over_limit`) an OK answer adds no client headers:
    /// behind the same Envoy, the request goes on to ext_authz `Check`,
    /// whose quotas describe the caller; two filters each adding
    /// `RateLimit-Limit` would give the client two conflicting values. So
    /// each response carries one set: the layer that refused, or `Check`
    /// on an allow. `send: always` adds them to an OK too (the limit
    /// closest to refusing), `never` to none.
    ///
    /// Fields, by their numbers in Envoy's `service/ratelimit/v3/rls.proto`
    /// (`RateLimitResponse`, `DescriptorStatus`, `RateLimit`),
    /// `config/core/v3/base.proto` (`HeaderValue`) and
    /// `google/protobuf/duration.proto` and `struct.proto`.
    pub fn of(decision: &Decision, headers: &RlsHeaders) -> Self {
        let mut s = Vec::with_capacity(FIRST_CAPACITY);
        let allowed = decision.is_allowed();
        // overall_code = 1.
        let overall = if allowed { Code::Ok } else { Code::OverLimit };
        varint_field(&mut s, 1, overall as u64);
        // statuses = 2.
        for limit in &decision.limits {
            message(&mut s, 2, |s| status(s, limit.as_ref()));
        }
        // response_headers_to_add = 3: HeaderValue { key = 1, value = 2 }.
        let mut header = |key: &str, value: &str| {
            message(&mut s, 3, |s| {
                string_field(s, 1, key);
                string_field(s, 2, value);
            })
        };
        match (headers.send, allowed) {
            (HeadersSent::Never, _) | (HeadersSent::OverLimit, true) => {}
            (_, false) => decision.for_each_client_header(|k, v| header(headers.rename(k), v)),
            (HeadersSent::Always, true) => {
                if let Some(l) = closest(decision) {
                    header(&headers.limit, &current_limit(l).0.to_string());
                    header(&headers.remaining, &l.remaining.to_string());
                    header(&headers.reset, &l.reset_us.div_ceil(1_000_000).to_string());
                }
            }
        }
        // raw_body = 5: the problem document of a refusal.
        if !allowed {
            bytes(&mut s, 5, decision.problem_json().as_bytes());
        }
        // dynamic_metadata = 6: a Struct with the passed descriptors'
        // metadata merged under "metadata" (a later key wins).
        let mut metadata = serde_json::Map::new();
        for l in decision.limits.iter().flatten() {
            if let (Some(m), false) = (&l.metadata, l.over && !l.shadow) {
                metadata.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        if !metadata.is_empty() {
            message(&mut s, 6, |s| {
                struct_entry(s, "metadata", |s| {
                    json_value(s, &serde_json::Value::Object(metadata))
                })
            });
        }
        EncodedRateLimitResponse(s)
    }
}

/// One `DescriptorStatus`: `code` = 1, `current_limit` = 2,
/// `limit_remaining` = 3, `duration_until_reset` = 4.
fn status(s: &mut Vec<u8>, limit: Option<&LimitStatus>) {
    match limit {
        None => varint_field(s, 1, Code::Ok as u64),
        Some(l) if l.unlimited => {
            varint_field(s, 1, Code::Ok as u64);
            varint_field(s, 3, u64::from(u32::MAX));
        }
        Some(l) => {
            // Shadow mode reports but never limits.
            let over = l.over && !l.shadow;
            varint_field(s, 1, if over { Code::OverLimit } else { Code::Ok } as u64);
            // RateLimit { requests_per_unit = 1, unit = 2, name = 3 }.
            let (requests_per_unit, unit) = current_limit(l);
            message(s, 2, |s| {
                varint_field(s, 1, u64::from(requests_per_unit));
                varint_field(s, 2, unit as u64);
                string_field(s, 3, l.name.as_deref().unwrap_or_default());
            });
            // Over the limit nothing is left for this call, whatever the
            // bucket still holds for a smaller one.
            let remaining = if l.over {
                0
            } else {
                u32::try_from(l.remaining).unwrap_or(u32::MAX)
            };
            varint_field(s, 3, u64::from(remaining));
            // google.protobuf.Duration { seconds = 1, nanos = 2 }.
            message(s, 4, |s| {
                varint_field(s, 1, l.reset_us / 1_000_000);
                varint_field(s, 2, (l.reset_us % 1_000_000) * 1000);
            });
        }
    }
}

/// The counted limit closest to refusing (least left), for headers on an OK.
fn closest(decision: &Decision) -> Option<&LimitStatus> {
    decision
        .limits
        .iter()
        .flatten()
        .filter(|l| !l.unlimited)
        .min_by_key(|l| l.remaining)
}

/// A limit in RLS terms: requests per unit. A window that is not one unit
/// (our extension) is expressed per the smallest unit it divides.
fn current_limit(limit: &LimitStatus) -> (u32, Unit) {
    const UNITS: [(u64, Unit); 7] = [
        (1, Unit::Second),
        (60, Unit::Minute),
        (3600, Unit::Hour),
        (86_400, Unit::Day),
        (7 * 86_400, Unit::Week),
        (30 * 86_400, Unit::Month),
        (365 * 86_400, Unit::Year),
    ];
    let window = limit.window_us;
    let (requests, unit) = UNITS
        .iter()
        .map(|(s, u)| (s * 1_000_000, *u))
        .find(|(us, _)| *us >= window && us % window == 0)
        .map(|(us, u)| (limit.requests * (us / window), u))
        .unwrap_or((limit.requests, Unit::Unknown));
    (u32::try_from(requests).unwrap_or(u32::MAX), unit)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
        DescriptorStatus, RateLimit,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
    use envoy_types::pb::google::protobuf::{value::Kind, Duration as PbDuration};
    use prost::Message as _;

    use super::*;

    fn limit(requests: u64, window_s: u64) -> LimitStatus {
        LimitStatus {
            name: Some("n".into()),
            requests,
            window_us: window_s * 1_000_000,
            shadow: false,
            over: false,
            remaining: requests,
            reset_us: 0,
            unlimited: false,
            metadata: None,
        }
    }

    fn decoded(d: &Decision, headers: &RlsHeaders) -> RateLimitResponse {
        RateLimitResponse::decode(EncodedRateLimitResponse::of(d, headers).as_ref()).unwrap()
    }

    #[test]
    fn windows_are_expressed_per_the_smallest_unit_they_divide() {
        assert_eq!(current_limit(&limit(10, 60)), (10, Unit::Minute));
        assert_eq!(current_limit(&limit(10, 30)), (20, Unit::Minute));
        // 7 per 7 s: no minute, hour or day is a multiple of 7 s; a week is.
        assert_eq!(current_limit(&limit(7, 7)), (604_800, Unit::Week));
    }

    #[test]
    fn overall_code_is_never_unknown() {
        let mut d = Decision::new("v").allow();
        d.limits = vec![None];
        let r = decoded(&d, &RlsHeaders::default());
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[0].code, Code::Ok as i32);
        let denied = d.deny(crate::decision::DenyReason::QuotaExceeded, "x");
        let r = decoded(&denied, &RlsHeaders::default());
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert!(!r.raw_body.is_empty());
    }

    #[test]
    fn statuses_follow_envoyproxy_ratelimit_and_metadata_of_passed_descriptors_is_merged() {
        let mut d = Decision::new("v").allow();
        let meta = |k: &str| {
            let mut m = serde_json::Map::new();
            m.insert(k.into(), serde_json::json!({"tier": "gold", "n": 2}));
            Some(Arc::new(m))
        };
        let unlimited = LimitStatus {
            unlimited: true,
            ..limit(0, 1)
        };
        let counted = LimitStatus {
            remaining: 3,
            reset_us: 1_500_000,
            name: None,
            metadata: meta("a"),
            ..limit(10, 60)
        };
        let shadow_over = LimitStatus {
            over: true,
            shadow: true,
            remaining: 4,
            metadata: meta("b"),
            ..limit(5, 1)
        };
        d.limits = vec![None, Some(unlimited), Some(counted), Some(shadow_over)];
        let headers = RlsHeaders {
            send: HeadersSent::Always,
            ..RlsHeaders::default()
        };
        let r = decoded(&d, &headers);
        assert_eq!(r.overall_code, Code::Ok as i32);
        let ok = Code::Ok as i32;
        assert_eq!(
            r.statuses,
            [
                DescriptorStatus {
                    code: ok,
                    ..Default::default()
                },
                DescriptorStatus {
                    code: ok,
                    limit_remaining: u32::MAX,
                    ..Default::default()
                },
                DescriptorStatus {
                    code: ok,
                    current_limit: Some(RateLimit {
                        name: String::new(),
                        requests_per_unit: 10,
                        unit: Unit::Minute as i32,
                    }),
                    limit_remaining: 3,
                    duration_until_reset: Some(PbDuration {
                        seconds: 1,
                        nanos: 500_000_000,
                    }),
                    ..Default::default()
                },
                // Shadow: reported over (0 left), never refused.
                DescriptorStatus {
                    code: ok,
                    current_limit: Some(RateLimit {
                        name: "n".into(),
                        requests_per_unit: 5,
                        unit: Unit::Second as i32,
                    }),
                    limit_remaining: 0,
                    duration_until_reset: Some(PbDuration::default()),
                    ..Default::default()
                },
            ]
        );
        // `send: always` on an OK: the limit closest to refusing.
        let added: Vec<(&str, &str)> = r
            .response_headers_to_add
            .iter()
            .map(|h| (h.key.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(
            added,
            [
                ("ratelimit-limit", "10"),
                ("ratelimit-remaining", "3"),
                ("ratelimit-reset", "2"),
            ]
        );
        let fields = r.dynamic_metadata.unwrap().fields;
        let Some(Kind::StructValue(merged)) = &fields["metadata"].kind else {
            panic!("{fields:?}");
        };
        assert_eq!(merged.fields.len(), 2, "{merged:?}");
        let Some(Kind::StructValue(a)) = &merged.fields["a"].kind else {
            panic!("{merged:?}");
        };
        assert_eq!(
            a.fields["tier"].kind,
            Some(Kind::StringValue("gold".into()))
        );
        assert_eq!(a.fields["n"].kind, Some(Kind::NumberValue(2.0)));
    }

    #[test]
    fn a_refusal_carries_the_client_headers_renamed_and_the_problem_document() {
        let mut d = Decision::new("v").allow();
        d.limits = vec![Some(LimitStatus {
            over: true,
            remaining: 0,
            reset_us: 2_000_000,
            metadata: Some(Arc::new(serde_json::Map::new())),
            ..limit(10, 1)
        })];
        d.quota = Some(Box::new(crate::decision::quota::QuotaOutcome {
            descriptor: "d|k=v".into(),
            name: None,
            stats_key: String::new(),
            limit: 10,
            window_seconds: 1,
            remaining: 0,
            reset_seconds: 2,
            retry_after_seconds: Some(1),
            shadow_exceeded: Vec::new(),
            degraded: None,
            cost_too_large: None,
        }));
        let denied = d.deny(crate::decision::DenyReason::QuotaExceeded, "x");
        let headers = RlsHeaders {
            limit: "x-ratelimit-limit".into(),
            ..RlsHeaders::default()
        };
        let r = decoded(&denied, &headers);
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
        let mut expected = Vec::new();
        denied.for_each_client_header(|k, v| {
            expected.push((headers.rename(k).to_string(), v.to_string()))
        });
        let added: Vec<(String, String)> = r
            .response_headers_to_add
            .into_iter()
            .map(|h| (h.key, h.value))
            .collect();
        assert_eq!(added, expected);
        assert!(
            added.iter().any(|(k, _)| k == "x-ratelimit-limit"),
            "{added:?}"
        );
        assert_eq!(r.raw_body, denied.problem_json().into_bytes());
        // The over-limit descriptor's metadata is left out.
        assert_eq!(r.dynamic_metadata, None);
    }
}
