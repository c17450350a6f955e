//! The Envoy RLS v3 adapter: `RateLimitRequest` -> descriptors, and the
//! `Decision` -> `RateLimitResponse`. Protocol mapping only: the pipeline
//! decides (a rate-limit call is a decision with only the quota stage),
//! exactly as the quota stage inside `Check`.
//!
//! Semantics follow envoyproxy/ratelimit: `hits_addend` per descriptor
//! overrides the request's (an explicit 0 checks without charging; the
//! request-level 0 means unset, i.e. 1); `overall_code` is OK or
//! OVER_LIMIT, never UNKNOWN (Envoy lets UNKNOWN through).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{
    Duration as PbDuration, ListValue, Struct as PbStruct, Value as PbValue,
};
use tonic::{Request, Response, Status};

use crate::app::State;
use crate::decision::quota::LimitStatus;
use crate::decision::Decision;
use crate::pipeline;
use crate::quota::apply::Descriptor;
use crate::quota::settings::HeadersSent;
use crate::quota::RlsHeaders;
use crate::request::AccessRequest;

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

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let call = request.get_ref();
        let descriptors = to_descriptors(call).map_err(Status::invalid_argument)?;
        let access = AccessRequest::for_ratelimit(&call.domain);
        let snapshot = self.state.policies.current();
        let decision = pipeline::decide(
            &snapshot,
            pipeline::Ask::RateLimit(pipeline::RateLimit {
                request: &access,
                domain: &call.domain,
                descriptors: &descriptors,
            }),
            pipeline::Mode::Enforce(self.state.live(pipeline::Door::RateLimit)),
        )
        .await;
        if decision.is_failure() {
            // The decision could not be made or recorded (the audit trail
            // fails closed): Envoy's own failure mode for the ratelimit
            // filter decides, as for any RLS error.
            return Err(Status::new(
                tonic::Code::from(decision.grpc() as i32),
                decision.detail,
            ));
        }
        Ok(Response::new(to_response(
            &decision,
            self.state.quotas.rls_headers(),
        )))
    }
}

/// The request's descriptors with their costs.
pub fn to_descriptors(req: &RateLimitRequest) -> Result<Vec<Descriptor>, String> {
    if req.domain.is_empty() {
        return Err("rate limit domain must not be empty".into());
    }
    if req.descriptors.is_empty() {
        return Err("rate limit descriptor list must not be empty".into());
    }
    let request_hits = if req.hits_addend == 0 {
        1
    } else {
        u64::from(req.hits_addend)
    };
    let domain: Arc<str> = Arc::from(req.domain.as_str());
    req.descriptors
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if d.is_negative_hits {
                return Err(format!(
                    "descriptors[{i}]: is_negative_hits (refunds) is not supported"
                ));
            }
            if d.entries.is_empty() {
                return Err(format!("descriptors[{i}]: a descriptor needs entries"));
            }
            let limit = match &d.limit {
                None => None,
                Some(l) => Some((
                    u64::from(l.requests_per_unit),
                    unit_us(l.unit).ok_or_else(|| {
                        format!(
                            "descriptors[{i}].limit.unit: {} is not a rate limit unit (SECOND..YEAR)",
                            l.unit
                        )
                    })?,
                )),
            };
            Ok(Descriptor {
                domain: Arc::clone(&domain),
                entries: d
                    .entries
                    .iter()
                    .map(|e| (Arc::from(e.key.as_str()), e.value.clone()))
                    .collect(),
                cost: d.hits_addend.map(|h| h.value).unwrap_or(request_hits),
                limit,
                tokens: None,
            })
        })
        .collect()
}

/// Microseconds in one `envoy.type.v3.RateLimitUnit` (as
/// envoyproxy/ratelimit counts them: a month is 30 days, a year 365).
fn unit_us(unit: i32) -> Option<u64> {
    let seconds = match Unit::try_from(unit).ok()? {
        Unit::Unknown => return None,
        Unit::Second => 1,
        Unit::Minute => 60,
        Unit::Hour => 3600,
        Unit::Day => 86_400,
        Unit::Week => 7 * 86_400,
        Unit::Month => 30 * 86_400,
        Unit::Year => 365 * 86_400,
    };
    Some(seconds * 1_000_000)
}

/// Renders a decision for Envoy: `overall_code` OK or OVER_LIMIT (never
/// UNKNOWN, which Envoy lets through), a status per descriptor, and the
/// client's headers as `headers` says (`quotas.rls_headers`), and on a
/// refusal the problem document (outcome table).
///
/// Statuses follow envoyproxy/ratelimit: an `unlimited` descriptor reports
/// `limit_remaining` 4294967295 and no `current_limit`; an over-limit one
/// reports 0 left. The metadata of the descriptors that passed is merged
/// into `dynamic_metadata` under `metadata`.
///
/// By default (`send: over_limit`) an OK answer adds no client headers:
/// behind the same Envoy, the request goes on to ext_authz `Check`, whose
/// quotas describe the caller; two filters each adding `RateLimit-Limit`
/// would give the client two conflicting values. So each response carries
/// one set: the layer that refused, or `Check` on an allow. `send: always`
/// adds them to an OK too (the limit closest to refusing), `never` to none.
pub fn to_response(decision: &Decision, headers: &RlsHeaders) -> RateLimitResponse {
    let statuses = decision.limits.iter().map(status).collect();
    let mut metadata = serde_json::Map::new();
    for l in decision.limits.iter().flatten() {
        if let (Some(m), false) = (&l.metadata, l.over && !l.shadow) {
            metadata.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    let allowed = decision.is_allowed();
    let mut added: Vec<(String, String)> = match (headers.send, allowed) {
        (HeadersSent::Never, _) | (HeadersSent::OverLimit, true) => Vec::new(),
        (_, false) => decision
            .client_headers()
            .into_iter()
            .map(|(k, v)| (headers.rename(&k).to_string(), v))
            .collect(),
        (HeadersSent::Always, true) => closest(decision)
            .map(|l| {
                vec![
                    (
                        headers.limit.clone(),
                        current_limit(l).requests_per_unit.to_string(),
                    ),
                    (headers.remaining.clone(), l.remaining.to_string()),
                    (
                        headers.reset.clone(),
                        l.reset_us.div_ceil(1_000_000).to_string(),
                    ),
                ]
            })
            .unwrap_or_default(),
    };
    let response_headers_to_add = added
        .drain(..)
        .map(|(key, value)| HeaderValue {
            key,
            value,
            ..Default::default()
        })
        .collect();
    let (overall_code, raw_body) = if allowed {
        (Code::Ok, Vec::new())
    } else {
        (Code::OverLimit, decision.problem_json().into_bytes())
    };
    RateLimitResponse {
        overall_code: overall_code as i32,
        statuses,
        response_headers_to_add,
        raw_body,
        dynamic_metadata: (!metadata.is_empty()).then(|| PbStruct {
            fields: [(
                "metadata".to_string(),
                pb_value(serde_json::Value::Object(metadata)),
            )]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    }
}

/// One descriptor's status.
fn status(limit: &Option<LimitStatus>) -> DescriptorStatus {
    match limit {
        None => DescriptorStatus {
            code: Code::Ok as i32,
            ..Default::default()
        },
        Some(l) if l.unlimited => DescriptorStatus {
            code: Code::Ok as i32,
            limit_remaining: u32::MAX,
            ..Default::default()
        },
        Some(l) => {
            // Shadow mode reports but never limits.
            let over = l.over && !l.shadow;
            DescriptorStatus {
                code: if over { Code::OverLimit } else { Code::Ok } as i32,
                current_limit: Some(current_limit(l)),
                // Over the limit nothing is left for this call, whatever
                // the bucket still holds for a smaller one.
                limit_remaining: if l.over {
                    0
                } else {
                    u32::try_from(l.remaining).unwrap_or(u32::MAX)
                },
                duration_until_reset: Some(PbDuration {
                    seconds: (l.reset_us / 1_000_000) as i64,
                    nanos: ((l.reset_us % 1_000_000) * 1000) as i32,
                }),
                ..Default::default()
            }
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

/// A JSON value as a `google.protobuf.Value`.
fn pb_value(v: serde_json::Value) -> PbValue {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(pb_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(PbStruct {
            fields: o.into_iter().map(|(k, v)| (k, pb_value(v))).collect(),
        }),
    };
    PbValue { kind: Some(kind) }
}

/// A limit in RLS terms: requests per unit. A window that is not one unit
/// (our extension) is expressed per the smallest unit it divides.
fn current_limit(limit: &LimitStatus) -> RateLimit {
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
    RateLimit {
        name: limit.name.clone().unwrap_or_default(),
        requests_per_unit: u32::try_from(requests).unwrap_or(u32::MAX),
        unit: unit as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::google::protobuf::UInt64Value;

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

    #[test]
    fn windows_are_expressed_per_the_smallest_unit_they_divide() {
        let l = current_limit(&limit(10, 60));
        assert_eq!((l.requests_per_unit, l.unit), (10, Unit::Minute as i32));
        let l = current_limit(&limit(10, 30));
        assert_eq!((l.requests_per_unit, l.unit), (20, Unit::Minute as i32));
        // 7 per 7 s: no minute, hour or day is a multiple of 7 s; a week is.
        let l = current_limit(&limit(7, 7));
        assert_eq!((l.requests_per_unit, l.unit), (604_800, Unit::Week as i32));
    }

    #[test]
    fn hits_addend_follows_envoyproxy_ratelimit() {
        let d = |hits: Option<u64>| RateLimitDescriptor {
            entries: vec![Entry {
                key: "k".into(),
                value: "v".into(),
            }],
            hits_addend: hits.map(|value| UInt64Value { value }),
            ..Default::default()
        };
        let req = RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![d(None), d(Some(0)), d(Some(5))],
            hits_addend: 0,
        };
        let costs: Vec<u64> = to_descriptors(&req)
            .unwrap()
            .iter()
            .map(|d| d.cost)
            .collect();
        assert_eq!(costs, [1, 0, 5]);
        let req = RateLimitRequest {
            hits_addend: 3,
            ..req
        };
        let costs: Vec<u64> = to_descriptors(&req)
            .unwrap()
            .iter()
            .map(|d| d.cost)
            .collect();
        assert_eq!(costs, [3, 0, 5]);
    }

    #[test]
    fn refunds_and_empty_requests_are_refused() {
        let mut d = RateLimitDescriptor {
            entries: vec![Entry {
                key: "k".into(),
                value: "v".into(),
            }],
            ..Default::default()
        };
        d.is_negative_hits = true;
        let req = RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![d],
            hits_addend: 0,
        };
        assert!(to_descriptors(&req)
            .unwrap_err()
            .contains("is_negative_hits"));
        let empty = RateLimitRequest {
            domain: "d".into(),
            ..Default::default()
        };
        assert!(to_descriptors(&empty).is_err());
    }

    #[test]
    fn overall_code_is_never_unknown() {
        let mut d = Decision::new("v").allow();
        d.limits = vec![None];
        let r = to_response(&d, &RlsHeaders::default());
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[0].code, Code::Ok as i32);
        let denied = d.deny(crate::decision::DenyReason::QuotaExceeded, "x");
        let r = to_response(&denied, &RlsHeaders::default());
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert!(!r.raw_body.is_empty());
    }
}
