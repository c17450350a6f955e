//! The requests a run cycles through: ext_authz `Check` calls in the mix's
//! proportions, and RLS calls as Envoy's ratelimit filter sends them.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

use std::path::Path;

use anyhow::Context;

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

/// Tokens of the uncached mix, each minted for the run (about 4 s for all
/// in a release build): a run's first this many calls to a server each
/// carry a token it has not seen, so the calls of a run up to this count
/// are all uncached (20,000 before: at 12,000 calls a second, a 6 s run
/// went round twice, and the later calls hit the token cache).
pub const UNCACHED_TOKENS: u64 = 100_000;

/// The requests the workers cycle through, in mix proportions.
/// `given`: one token for every allowed call instead of the minted ones.
/// `reuse`: see [`reused_tokens`].
pub fn request_mix(
    mix: Mix,
    keys: &TokenKey,
    given: Option<&str>,
    reuse: Option<&Path>,
) -> anyhow::Result<Vec<CheckRequest>> {
    const PREDICT: &str = "/v1/models/sentiment/versions/v2:predict";
    let bearer = |t: String| vec![("authorization", format!("Bearer {t}"))];
    let (mut alice, bob) = reused_tokens(keys, reuse)?;
    let reused: Vec<String> = match given {
        Some(token) => vec![token.to_string()],
        None => std::mem::take(&mut alice),
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
        Mix::Uncached => (0..UNCACHED_TOKENS)
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
            let mut out = Vec::new();
            for i in 0..6 {
                out.push(allowed(i));
            }
            out.push(check("POST", PREDICT, &bearer(bob.clone()), ""));
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

/// Alice's 16 tokens that the allowed calls reuse, and bob's (the
/// forbidden call). ES256 signatures are randomised, so every run mints
/// tokens the server has not seen. With `reuse`, the tokens are read from
/// that file when it exists (17 lines, as written here) and minted and
/// written there when it does not: a warm-up run and a measured run then
/// send the same tokens, and the measured one finds them in the server's
/// token cache (`scripts/instructions.sh`).
fn reused_tokens(keys: &TokenKey, reuse: Option<&Path>) -> anyhow::Result<(Vec<String>, String)> {
    if let Some(path) = reuse.filter(|p| p.exists()) {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read the tokens in {}", path.display()))?;
        let mut tokens: Vec<String> = text.lines().map(str::to_owned).collect();
        anyhow::ensure!(
            tokens.len() == 17 && tokens.iter().all(|t| t.split('.').count() == 3),
            "{}: expected 17 JWTs, one per line, as an earlier --reuse-tokens run wrote them; delete the file to mint new ones",
            path.display()
        );
        let bob = tokens.pop().expect("17 tokens");
        return Ok((tokens, bob));
    }
    let alice = (0..16)
        .map(|i| keys.mint("alice", "acme", i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bob = keys.mint("bob", "acme", 99)?;
    if let Some(path) = reuse {
        let mut text = alice.join("\n");
        text.push('\n');
        text.push_str(&bob);
        text.push('\n');
        std::fs::write(path, text)
            .with_context(|| format!("write the tokens to {}", path.display()))?;
    }
    Ok((alice, bob))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_tokens_written_by_one_run_are_sent_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.txt");
        let keys = TokenKey::generate().unwrap();
        let first = reused_tokens(&keys, Some(&file)).unwrap();
        // Another run, with another key: the file's tokens win.
        let second = reused_tokens(&TokenKey::generate().unwrap(), Some(&file)).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.0.len(), 16);
        // Without the file, every run mints anew (ES256 is randomised).
        assert_ne!(reused_tokens(&keys, None).unwrap().0, first.0);
    }

    #[test]
    fn a_tokens_file_that_is_not_seventeen_jwts_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.txt");
        std::fs::write(&file, "not-a-token\n").unwrap();
        let err = reused_tokens(&TokenKey::generate().unwrap(), Some(&file))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokens.txt") && err.contains("17 JWTs"),
            "{err}"
        );
    }
}
