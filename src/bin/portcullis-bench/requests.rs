//! The requests a run cycles through: ext_authz `Check` calls in the mix's
//! proportions, and RLS calls as Envoy's ratelimit filter sends them.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

use crate::token::TokenKey;
use crate::{Mix, RlsShape};

fn check(method: &str, path: &str, headers: &[(&str, String)], principal: &str) -> CheckRequest {
    // Inference calls carry a body the predict route validates (schema,
    // model input constraints, PII scan), as real ones do.
    let (body, content_type) = if method == "POST" {
        (
            br#"{"features": ["the delivery was quick and the support friendly"], "max_tokens": 64}"#
                .to_vec(),
            Some(("content-type".to_string(), "application/json".to_string())),
        )
    } else {
        (Vec::new(), None)
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: principal.into(),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "api.bench".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .chain(content_type)
                        .collect(),
                    raw_body: body,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The requests the workers cycle through, in mix proportions.
pub fn request_mix(
    mix: Mix,
    keys: &TokenKey,
    given: Option<&str>,
) -> anyhow::Result<Vec<CheckRequest>> {
    const PREDICT: &str = "/v1/models/sentiment/versions/v2:predict";
    let bearer = |t: String| vec![("authorization", format!("Bearer {t}"))];
    let reused: Vec<String> = match given {
        Some(token) => vec![token.to_string()],
        None => (0..16)
            .map(|i| keys.mint("alice", "acme", i))
            .collect::<anyhow::Result<_>>()?,
    };
    let allowed = |i: usize| {
        check(
            "POST",
            PREDICT,
            &bearer(reused[i % reused.len()].clone()),
            "",
        )
    };
    Ok(match mix {
        Mix::Allowed => (0..64).map(allowed).collect(),
        Mix::Uncached => (0..20_000u64)
            .map(|i| {
                Ok(check(
                    "POST",
                    PREDICT,
                    &bearer(keys.mint("alice", "acme", 1_000 + i)?),
                    "",
                ))
            })
            .collect::<anyhow::Result<_>>()?,
        Mix::Anonymous => vec![check("GET", "/v1/status", &[], "")],
        Mix::Mixed => {
            let bob = keys.mint("bob", "acme", 99)?;
            let mut out = Vec::new();
            for i in 0..6 {
                out.push(allowed(i));
            }
            out.push(check("POST", PREDICT, &bearer(bob), ""));
            out.push(check(
                "POST",
                PREDICT,
                &[],
                "spiffe://acme.example/ns/ml/sa/batch-scorer",
            ));
            out.push(check("GET", "/v1/status", &[], ""));
            out.push(check("GET", "/v1/nowhere", &[], ""));
            out
        }
    })
}

/// RLS calls as Envoy's ratelimit filter sends them for the bundled
/// `quotas.yaml`: per address, per principal and per org, over many keys;
/// or one call with the `org` descriptor alone.
pub fn rls_mix(shape: RlsShape) -> Vec<RateLimitRequest> {
    match shape {
        RlsShape::Bundled => (0..256u64).map(rls_call).collect(),
        RlsShape::One => vec![RateLimitRequest {
            domain: "ml_api".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "org".into(),
                    value: "org0".into(),
                }],
                ..Default::default()
            }],
            hits_addend: 1,
        }],
    }
}

/// The `i`th RLS call: its own address and principal, one of eight orgs.
pub fn rls_call(i: u64) -> RateLimitRequest {
    let entry = |key: &str, value: String| Entry {
        key: key.into(),
        value,
    };
    let descriptor = |entries: Vec<Entry>| RateLimitDescriptor {
        entries,
        ..Default::default()
    };
    RateLimitRequest {
        domain: "ml_api".into(),
        descriptors: vec![
            descriptor(vec![entry(
                "remote_address",
                format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            )]),
            descriptor(vec![entry("principal", format!("User:u{i}"))]),
            descriptor(vec![entry("org", format!("org{}", i % 8))]),
        ],
        hits_addend: 1,
    }
}
