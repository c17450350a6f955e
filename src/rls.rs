//! The Envoy RLS v3 adapter: `RateLimitRequest` -> descriptors, and the
//! quota verdict -> `RateLimitResponse`. Protocol mapping only: limits are
//! found and charged by `quota::apply`, exactly as inside `Check`.
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
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use tonic::{Request, Response, Status};

use crate::decision::{Decision, DenyReason};
use crate::quota::apply::{self, Descriptor, Verdict};
use crate::quota::QuotaLimit;
use crate::request::AccessRequest;
use crate::server::State;

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
        let started = std::time::Instant::now();
        let descriptors = to_descriptors(request.get_ref()).map_err(Status::invalid_argument)?;
        let snapshot = self.state.policies.current();
        let verdict = apply::apply(&snapshot.quotas, &self.state.quotas, &descriptors).await;
        let mut decision = Decision::new(&snapshot.version).allow();
        decision.quota = verdict.outcome.clone();
        if !verdict.allowed {
            if let Some((reason, detail)) = decision
                .quota
                .as_ref()
                .map(|q| (q.deny_reason(), q.detail()))
            {
                decision = decision.deny(reason, detail);
            } else {
                decision = decision.deny(DenyReason::QuotaExceeded, String::new());
            }
        }
        // Debug: the audit trail records every decision (see pipeline).
        tracing::debug!(
            target: "portcullis::decision",
            decision_id = %decision.id,
            kind = "ratelimit",
            domain = %request.get_ref().domain,
            decision = ?decision.decision,
            status = decision.status,
            quota = decision.quota.as_ref().map(|q| q.descriptor.as_str()),
            quota_remaining = decision.quota.as_ref().map(|q| q.remaining),
            quota_degraded = decision.quota.as_ref().and_then(|q| q.degraded).map(|m| m.as_str()),
            policy_version = %decision.policy_version,
            "decision"
        );
        // Every decision is audited, RLS ones too: the domain is the
        // resource; RLS carries no principal or client request.
        let domain = &request.get_ref().domain;
        decision.action = Some("ratelimit".into());
        decision.resource = Some(format!("RateLimitDomain::{domain:?}"));
        let access = AccessRequest::for_ratelimit(domain);
        let decision = self
            .state
            .audit
            .record_decision(decision, &access, started.elapsed());
        crate::metrics::global().decision(
            crate::metrics::Service::RateLimit,
            &decision,
            started.elapsed(),
        );
        if decision.reason == Some(DenyReason::AuditUnavailable) {
            // Fail closed on the audit trail: Envoy's own failure mode for
            // the ratelimit filter decides, as for any RLS error.
            return Err(Status::unavailable(
                "the decision could not be recorded in the audit trail",
            ));
        }
        Ok(Response::new(to_response(&verdict, &decision)))
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
            Ok(Descriptor {
                domain: req.domain.clone(),
                entries: d
                    .entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect(),
                cost: d.hits_addend.map(|h| h.value).unwrap_or(request_hits),
            })
        })
        .collect()
}

/// Renders a verdict for Envoy.
pub fn to_response(verdict: &Verdict, decision: &Decision) -> RateLimitResponse {
    let statuses = verdict
        .applied
        .iter()
        .map(|a| match a {
            None => DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            },
            Some(a) => DescriptorStatus {
                // Shadow mode reports but never limits.
                code: if a.state.over && !a.limit.shadow {
                    Code::OverLimit as i32
                } else {
                    Code::Ok as i32
                },
                current_limit: Some(current_limit(&a.limit)),
                limit_remaining: u32::try_from(a.state.remaining).unwrap_or(u32::MAX),
                duration_until_reset: Some(PbDuration {
                    seconds: (a.state.reset_us / 1_000_000) as i64,
                    nanos: ((a.state.reset_us % 1_000_000) * 1000) as i32,
                }),
                ..Default::default()
            },
        })
        .collect();
    let header = |k: &str, v: String| HeaderValue {
        key: k.to_string(),
        value: v,
        ..Default::default()
    };
    let mut response_headers_to_add: Vec<HeaderValue> = decision
        .quota
        .iter()
        .flat_map(|q| q.headers())
        .map(|(k, v)| header(k, v))
        .collect();
    let mut raw_body = Vec::new();
    if !decision.is_allowed() {
        response_headers_to_add.push(header("content-type", "application/problem+json".into()));
        response_headers_to_add.push(header("x-portcullis-decision-id", decision.id.clone()));
        raw_body = decision.problem_json().into_bytes();
    }
    RateLimitResponse {
        overall_code: if decision.is_allowed() {
            Code::Ok as i32
        } else {
            Code::OverLimit as i32
        },
        statuses,
        response_headers_to_add,
        raw_body,
        ..Default::default()
    }
}

/// A limit in RLS terms: requests per unit. A window that is not one unit
/// (our extension) is expressed per the smallest unit it divides.
fn current_limit(limit: &QuotaLimit) -> RateLimit {
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

    fn limit(requests: u64, window_s: u64) -> QuotaLimit {
        QuotaLimit {
            name: Some("n".into()),
            requests,
            window_us: window_s * 1_000_000,
            burst: requests,
            unlimited: false,
            replaces: Vec::new(),
            shadow: false,
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
        let verdict = Verdict {
            allowed: true,
            applied: vec![None],
            outcome: None,
        };
        let d = Decision::new("v").allow();
        let r = to_response(&verdict, &d);
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[0].code, Code::Ok as i32);
        let denied = Decision::new("v").deny(DenyReason::QuotaExceeded, "x");
        let r = to_response(&verdict, &denied);
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert!(!r.raw_body.is_empty());
    }
}
