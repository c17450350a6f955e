//! The checks of the `authentication:` section: every problem at once,
//! one line each, naming the field (`authentication.jwt[0].audiences: ...`).

use std::path::Path;

use super::config::{AuthnConfig, FailureStoreKind};

impl AuthnConfig {
    /// Every problem with this section, one line each. `policies` is the
    /// policy directory (the keys file must live outside it);
    /// `shared_redis` is true when the quota store is a Redis that
    /// authentication may share.
    pub fn problems(&self, policies: &Path, shared_redis: bool) -> Vec<String> {
        let mut problems = Vec::new();
        if self.leeway_seconds > 300 {
            problems.push(
                "authentication.leeway_seconds: at most 300 (RFC 8725 asks for a small leeway)"
                    .into(),
            );
        }
        if self.max_token_bytes < 256 {
            problems.push("authentication.max_token_bytes: at least 256".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, issuer) in self.jwt.iter().enumerate() {
            let at = format!("authentication.jwt[{i}]");
            if issuer.issuer.is_empty() {
                problems.push(format!("{at}.issuer: must not be empty"));
            } else if !seen.insert(issuer.issuer.as_str()) {
                problems.push(format!(
                    "{at}.issuer: '{}' is configured twice",
                    issuer.issuer
                ));
            }
            if issuer.audiences.is_empty() {
                problems.push(format!("{at}.audiences: name at least one audience"));
            }
            if issuer.algorithms.is_empty() {
                problems.push(format!("{at}.algorithms: name at least one algorithm"));
            }
            let symmetric = issuer.hmac_secret_file.is_some();
            for alg in &issuer.algorithms {
                if let Err(e) = crate::authn::jwt::parse_algorithm(alg, symmetric) {
                    problems.push(format!("{at}.algorithms: {e}"));
                }
            }
            let sources = [
                issuer.jwks_file.is_some(),
                issuer.jwks_url.is_some(),
                issuer.discovery,
                symmetric,
            ]
            .iter()
            .filter(|s| **s)
            .count();
            if sources != 1 {
                problems.push(format!(
                    "{at}: set exactly one of jwks_file, jwks_url, discovery: true or hmac_secret_file"
                ));
            }
            if let Some(url) = &issuer.jwks_url {
                if let Err(e) = crate::authn::jwks::check_url(url) {
                    problems.push(format!("{at}.jwks_url: {e}"));
                }
            }
            if issuer.discovery {
                if let Err(e) = crate::authn::jwks::check_url(&issuer.issuer) {
                    problems.push(format!(
                        "{at}.issuer: discovery needs an http(s) issuer URL: {e}"
                    ));
                }
            }
            let references = std::iter::once(("subject_claim", &issuer.subject_claim))
                .chain(issuer.org_claim.iter().map(|c| ("org_claim", c)))
                .chain(issuer.roles_claim.iter().map(|c| ("roles_claim", c)))
                .chain(issuer.scope_claims.iter().map(|c| ("scope_claims", c)))
                .chain(std::iter::once(("audience_claim", &issuer.audience_claim)));
            for (field, reference) in references {
                if let Some(problem) = crate::authn::jwt::claim_reference_problem(reference) {
                    problems.push(format!("{at}.{field}: {problem}"));
                }
            }
            if issuer.audience_claim.starts_with('/') {
                problems.push(format!(
                    "{at}.audience_claim: a top-level claim name (aud, client_id), not a JSON Pointer"
                ));
            }
            for value in &issuer.tolerated_audiences {
                if value.is_empty() || issuer.audiences.contains(value) {
                    problems.push(format!(
                        "{at}.tolerated_audiences: '{value}' must be a non-empty value that is not one of audiences"
                    ));
                }
            }
            if issuer.max_lifetime_seconds == Some(0) {
                problems.push(format!("{at}.max_lifetime_seconds: must be at least 1"));
            }
            for (field, ty) in [
                ("principal_type", &issuer.principal_type),
                ("org_type", &issuer.org_type),
                ("role_type", &issuer.role_type),
            ] {
                if ty.parse::<cedar_policy::EntityTypeName>().is_err() {
                    problems.push(format!(
                        "{at}.{field}: '{ty}' is not a Cedar entity type name"
                    ));
                }
            }
        }
        let mtls = &self.mtls;
        if mtls
            .principal_type
            .parse::<cedar_policy::EntityTypeName>()
            .is_err()
        {
            problems.push(format!(
                "authentication.mtls.principal_type: '{}' is not a Cedar entity type name",
                mtls.principal_type
            ));
        }
        let jwks = &self.jwks;
        if jwks.fetch_timeout_ms == 0 {
            problems.push("authentication.jwks.fetch_timeout_ms: must be at least 1".into());
        }
        if jwks.min_refresh_seconds == 0 || jwks.min_refresh_seconds > jwks.max_refresh_seconds {
            problems.push(
                "authentication.jwks.min_refresh_seconds: must be at least 1 and at most max_refresh_seconds".into(),
            );
        }
        if jwks.retry_seconds == 0 {
            problems.push("authentication.jwks.retry_seconds: must be at least 1".into());
        }
        if jwks.max_staleness_seconds < jwks.max_refresh_seconds {
            problems.push(
                "authentication.jwks.max_staleness_seconds: must be at least max_refresh_seconds"
                    .into(),
            );
        }
        let keys = &self.api_keys;
        if keys.header.is_empty()
            || keys
                .header
                .bytes()
                .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            problems.push(format!(
                "authentication.api_keys.header: '{}' is not a header name",
                keys.header
            ));
        } else if keys.header.eq_ignore_ascii_case("authorization") {
            problems.push(
                "authentication.api_keys.header: must not be Authorization (bearer tokens use it)"
                    .into(),
            );
        }
        if keys.file.as_ref().is_some_and(|f| f.starts_with(policies)) {
            problems.push(
                "authentication.api_keys.file: keep the keys file outside the policy directory"
                    .into(),
            );
        }
        for (field, ty) in [
            ("principal_type", &keys.principal_type),
            ("org_type", &keys.org_type),
        ] {
            if ty.parse::<cedar_policy::EntityTypeName>().is_err() {
                problems.push(format!(
                    "authentication.api_keys.{field}: '{ty}' is not a Cedar entity type name"
                ));
            }
        }
        if let Some(i) = &self.introspection {
            if let Err(e) = crate::authn::jwks::check_url(&i.endpoint) {
                problems.push(format!("authentication.introspection.endpoint: {e}"));
            }
            if i.client_id.is_empty() {
                problems.push("authentication.introspection.client_id: must not be empty".into());
            }
            if i.timeout_ms == 0 || i.timeout_ms > 10_000 {
                problems
                    .push("authentication.introspection.timeout_ms: between 1 and 10000".into());
            }
            for (field, ty) in [
                ("principal_type", &i.principal_type),
                ("org_type", &i.org_type),
            ] {
                if ty.parse::<cedar_policy::EntityTypeName>().is_err() {
                    problems.push(format!(
                        "authentication.introspection.{field}: '{ty}' is not a Cedar entity type name"
                    ));
                }
            }
        }
        if self.failures.unblocked_cache_ms > 60_000 {
            problems.push(
                "authentication.failures.unblocked_cache_ms: at most 60000 (a block must reach every replica soon)"
                    .into(),
            );
        }
        if keys.file.is_some() && keys.redis {
            problems
                .push("authentication.api_keys: set either file or redis: true, not both".into());
        }
        problems.extend(self.redis_problems(shared_redis));
        let f = &self.failures;
        if f.enabled
            && (f.threshold == 0
                || f.window_seconds == 0
                || f.block_seconds == 0
                || f.max_tracked == 0)
        {
            problems.push("authentication.failures: threshold, window_seconds, block_seconds and max_tracked must be at least 1".into());
        }
        let sig = &self.signatures;
        if sig.window_seconds == 0 || sig.replay_cache_capacity == 0 {
            problems.push("authentication.signatures: window_seconds and replay_cache_capacity must be at least 1".into());
        }
        if sig.header.is_empty()
            || sig
                .header
                .bytes()
                .any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        {
            problems.push(
                "authentication.signatures.header: a lower-case header name, e.g. x-signature"
                    .into(),
            );
        }
        for (i, app) in sig.apps.iter().enumerate() {
            if sig.apps[..i].iter().any(|a| a.app == app.app) {
                problems.push(format!(
                    "authentication.signatures.apps: app '{}' is listed twice",
                    app.app
                ));
            }
        }
        problems
    }

    fn redis_problems(&self, shared_redis: bool) -> Vec<String> {
        let mut p = Vec::new();
        let a = self;
        if let Some(r) = &a.redis {
            match (&r.url, r.urls.is_empty()) {
                (None, true) => p.push(
                    "authentication.redis: set url (one primary) or urls (Redis Cluster seeds)"
                        .into(),
                ),
                (Some(_), false) => {
                    p.push("authentication.redis: set url or urls, not both".into())
                }
                (Some(url), true) => {
                    if redis::Client::open(url.as_str()).is_err() {
                        p.push(
                            "authentication.redis.url: not a Redis URL (redis://host:port/db)"
                                .into(),
                        );
                    }
                }
                (None, false) => {
                    if redis::cluster::ClusterClient::new(r.urls.iter().map(String::as_str))
                        .is_err()
                    {
                        p.push(
                            "authentication.redis.urls: not Redis URLs (redis://host:port)".into(),
                        );
                    }
                }
            }
            if r.timeout_ms == 0 || r.timeout_ms > 1000 {
                p.push("authentication.redis.timeout_ms: between 1 and 1000".into());
            }
        }
        let has_redis = a.redis.is_some() || shared_redis;
        if !has_redis {
            let hint = "configure authentication.redis or a Redis quota store (quotas.store)";
            if a.failures.enabled && a.failures.store == FailureStoreKind::Redis {
                p.push(format!(
                    "authentication.failures.store: redis needs a Redis; {hint}"
                ));
            }
            if a.api_keys.redis {
                p.push(format!(
                    "authentication.api_keys.redis: needs a Redis; {hint}"
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(issuer_yaml: &str) -> Vec<String> {
        let issuer = serde_yaml_ng::from_str(issuer_yaml).unwrap();
        AuthnConfig {
            jwt: vec![issuer],
            ..AuthnConfig::default()
        }
        .problems(Path::new("/policies"), false)
    }

    #[test]
    fn claim_references_and_audience_settings_are_checked() {
        let base =
            "issuer: https://i.example/\naudiences: [api]\njwks_url: https://i.example/jwks\n";
        assert_eq!(
            problems(&format!(
                "{base}roles_claim: [/realm_access/roles, cognito:groups]\nscope_claims: [scope, /ext/scp]\nsubject_claim: /ext/oid\ntolerated_audiences: [account]\naudience_claim: client_id\n"
            )),
            Vec::<String>::new()
        );
        assert_eq!(
            problems(&format!(
                "{base}roles_claim: /a~2b\nsubject_claim: \"\"\norg_claim: /\nscope_claims: [\"\"]\naudience_claim: /aud\ntolerated_audiences: [api, \"\"]\n"
            )),
            [
                "authentication.jwt[0].subject_claim: a claim name must not be empty",
                "authentication.jwt[0].org_claim: '/' names no claim; write /<claim>/<member>",
                "authentication.jwt[0].roles_claim: '/a~2b' is not a JSON Pointer: '~' must be followed by 0 or 1 (~0 is '~', ~1 is '/')",
                "authentication.jwt[0].scope_claims: a claim name must not be empty",
                "authentication.jwt[0].audience_claim: a top-level claim name (aud, client_id), not a JSON Pointer",
                "authentication.jwt[0].tolerated_audiences: 'api' must be a non-empty value that is not one of audiences",
                "authentication.jwt[0].tolerated_audiences: '' must be a non-empty value that is not one of audiences",
            ]
        );
    }

    #[test]
    fn roles_claim_is_one_name_or_a_list() {
        let base = "issuer: i\naudiences: [a]\njwks_file: j\n";
        let one: crate::authn::config::IssuerConfig =
            serde_yaml_ng::from_str(&format!("{base}roles_claim: roles\n")).unwrap();
        assert_eq!(one.roles_claim, ["roles"]);
        let many: crate::authn::config::IssuerConfig =
            serde_yaml_ng::from_str(&format!("{base}roles_claim: [roles, groups]\n")).unwrap();
        assert_eq!(many.roles_claim, ["roles", "groups"]);
        let none: crate::authn::config::IssuerConfig = serde_yaml_ng::from_str(base).unwrap();
        assert!(none.roles_claim.is_empty());
        assert_eq!(none.scope_claims, ["scope", "scp"]);
        assert_eq!(none.audience_claim, "aud");
        let err = serde_yaml_ng::from_str::<crate::authn::config::IssuerConfig>(&format!(
            "{base}roles_claim: {{a: b}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("a claim name or a list of claim names"),
            "{err}"
        );
    }
}
