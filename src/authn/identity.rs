//! Who is asking, in our own terms: the [`Identity`] every credential kind
//! becomes (a Cedar principal, its parents, the method), the outcome of
//! authenticating a request, and why credentials were refused.

use std::collections::{BTreeMap, BTreeSet};

use cedar_policy::EntityUid;

/// Who is calling, as established by authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The Cedar principal.
    pub principal: EntityUid,
    /// Parents the credential asserts (e.g. the token's org), added to the
    /// principal entity next to those in `entities.json`.
    pub parents: Vec<EntityUid>,
    /// How the caller authenticated.
    pub method: AuthMethod,
    /// What the credential says beyond who: scopes, MFA, chosen claims.
    pub token: TokenFacts,
    /// `principal` in Cedar's display form (`User::"alice"`), written once
    /// when the identity is built (a cached credential's identity serves
    /// many decisions, each of which names its principal). Private, so
    /// that every identity is built by a constructor that writes it.
    principal_text: String,
}

impl Identity {
    /// An identity with no scopes, claims or MFA.
    pub fn new(principal: EntityUid, parents: Vec<EntityUid>, method: AuthMethod) -> Self {
        Identity::with_token(principal, parents, method, TokenFacts::default())
    }

    /// An identity with what its credential says beyond who (`token`).
    pub fn with_token(
        principal: EntityUid,
        parents: Vec<EntityUid>,
        method: AuthMethod,
        token: TokenFacts,
    ) -> Self {
        Identity {
            principal_text: principal.to_string(),
            principal,
            parents,
            method,
            token,
        }
    }

    /// The principal in Cedar's display form, `Type::"id"`.
    pub fn principal_text(&self) -> &str {
        &self.principal_text
    }

    /// The principal's entity type in Cedar's display form (`Ns::User`),
    /// borrowed from [`Identity::principal_text`]: what
    /// `principal.type_name().to_string()` writes, without formatting it
    /// per request. A type name is identifiers joined by `::`, so the
    /// first `::"` is where the id starts.
    pub fn principal_type_text(&self) -> &str {
        let end = self
            .principal_text
            .as_bytes()
            .windows(3)
            .position(|w| w == b"::\"")
            .unwrap_or(self.principal_text.len());
        &self.principal_text[..end]
    }
}

/// Facts a credential carries that policies may demand (Cedar
/// `context.token` and `context.auth.mfa`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenFacts {
    /// OAuth scopes (`scope` string or `scp` array; API key scopes).
    pub scopes: BTreeSet<String>,
    /// Configured claims, as strings.
    pub claims: BTreeMap<String, String>,
    /// The user passed multi-factor authentication (`amr`/`acr`).
    pub mfa: bool,
}

/// The authentication method that produced an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A verified JWT bearer token.
    Jwt,
    /// An API key.
    ApiKey,
    /// An opaque token the introspection endpoint called active.
    Introspection,
    /// The mTLS peer identity reported by the gateway.
    Mtls,
    /// No credentials, on a route that allows anonymous access.
    Anonymous,
}

impl AuthMethod {
    /// The name used in the Cedar context and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::ApiKey => "apikey",
            AuthMethod::Introspection => "introspection",
            AuthMethod::Mtls => "mtls",
            AuthMethod::Anonymous => "anonymous",
        }
    }
}

/// Why credentials were refused. `detail` is safe to show the client: it
/// names the problem, never key material or internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct AuthnFailure {
    /// A stable, low-cardinality reason code (for metrics and audit).
    pub reason: &'static str,
    /// What the client should know to fix its request.
    pub detail: String,
    /// True when the credential could not be checked (keys or the
    /// introspection endpoint unavailable): a 503-class denial, not 401.
    pub unavailable: bool,
}

impl AuthnFailure {
    pub(crate) fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        AuthnFailure {
            reason,
            detail: detail.into(),
            unavailable: false,
        }
    }

    pub(crate) fn unavailable(reason: &'static str, detail: impl Into<String>) -> Self {
        AuthnFailure {
            unavailable: true,
            ..AuthnFailure::new(reason, detail)
        }
    }
}

/// The result of looking at a request's credentials.
#[derive(Debug)]
pub enum Authentication {
    /// Credentials were present and valid.
    Authenticated(Identity),
    /// The request carried no credentials at all.
    NoCredentials,
    /// Credentials were present but invalid: always 401, even on routes that
    /// allow anonymous access (a broken token is never silently ignored).
    Rejected(AuthnFailure),
    /// The source failed too often and is blocked for a while (429).
    Blocked {
        /// How long until the block ends.
        retry_after: std::time::Duration,
    },
}

/// Builds `Type::"id"` from a type name and a raw id.
pub fn entity_uid(type_name: &str, id: &str) -> Option<EntityUid> {
    let ty = type_name.parse::<cedar_policy::EntityTypeName>().ok()?;
    Some(EntityUid::from_type_name_and_id(
        ty,
        cedar_policy::EntityId::new(id),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_text_is_cedars_display_form_escapes_included() {
        let uid: EntityUid = r#"User::"a\"lice""#.parse().unwrap();
        let id = Identity::new(uid.clone(), Vec::new(), AuthMethod::Jwt);
        assert_eq!(id.principal_text(), uid.to_string());
        assert_eq!(id.principal_text(), r#"User::"a\"lice""#);
    }

    #[test]
    fn principal_type_text_is_the_type_name_s_display() {
        for text in [
            r#"User::"alice""#,
            r#"Acme::Ml::ServiceAccount::"a::\"b""#,
            r#"User::"::\"""#,
            r#"User::"""#,
        ] {
            let uid: EntityUid = text.parse().unwrap();
            let id = Identity::new(uid.clone(), Vec::new(), AuthMethod::Jwt);
            assert_eq!(
                id.principal_type_text(),
                uid.type_name().to_string(),
                "{text}"
            );
        }
    }
}
