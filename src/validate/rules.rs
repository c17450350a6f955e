//! What a route asks of a request beyond authorization, as written in
//! `routes.yaml`: the body rule (content types, size, depth, schema, model
//! input, PII), the model reference, headers to strip, signatures. Parsing
//! and checking only; enforcing is the other `validate` modules' job.

use serde::Deserialize;

/// The default cap on a body's size when a route sets none. Envoy's
/// `max_request_bytes` (deploy/envoy.yaml) should be at least this.
pub const DEFAULT_MAX_BYTES: usize = 65_536;
/// The default cap on JSON nesting depth.
pub const DEFAULT_MAX_DEPTH: usize = 32;
/// The largest nesting depth a route may allow. serde_json refuses deeper
/// documents anyway (its recursion limit is 128); ours is checked first.
pub const MAX_DEPTH_LIMIT: usize = 100;
/// The largest body a route may allow (Envoy buffers it in memory).
pub const MAX_BYTES_LIMIT: usize = 8 * 1024 * 1024;

/// A route's body rule (`body:` in routes.yaml).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodySpec {
    /// A request without a body is refused (400).
    #[serde(default = "yes")]
    pub required: bool,
    /// Accepted media types (parameters such as `charset` ignored). The
    /// body is parsed as JSON when the type is JSON (`application/json` or
    /// `+json`).
    #[serde(default = "json_only")]
    pub content_types: Vec<String>,
    /// Largest accepted body, in bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Deepest accepted nesting of arrays and objects.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// A JSON Schema (draft 2020-12) file under `schemas/`.
    #[serde(default)]
    pub schema: Option<String>,
    /// Check `features` and `max_tokens` against the model version's input
    /// constraints in models.yaml (needs the route's `model`).
    #[serde(default)]
    pub model_input: bool,
    /// What to do when the body carries personal data.
    #[serde(default)]
    pub pii: PiiMode,
    /// Which kinds of personal data to look for (default: all).
    #[serde(default = "all_pii_kinds")]
    pub pii_kinds: Vec<PiiKind>,
}

fn yes() -> bool {
    true
}
fn json_only() -> Vec<String> {
    vec!["application/json".into()]
}
fn default_max_bytes() -> usize {
    DEFAULT_MAX_BYTES
}
fn default_max_depth() -> usize {
    DEFAULT_MAX_DEPTH
}
fn all_pii_kinds() -> Vec<PiiKind> {
    PiiKind::ALL.to_vec()
}

/// PII handling for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiMode {
    /// Bodies are not scanned.
    #[default]
    Off,
    /// Allowed; the kinds found are named to the upstream in
    /// `x-portcullis-pii`.
    Tag,
    /// Refused (422) naming where and what kind, never the value.
    Deny,
}

/// A kind of personal data the scanner recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiKind {
    /// An e-mail address (not inside a URL).
    Email,
    /// A phone number in international (`+...`) or North American format.
    Phone,
    /// A payment card number that passes the Luhn check.
    Card,
    /// A US social security number (`123-45-6789`, valid ranges).
    Ssn,
    /// An IBAN whose check digits pass mod-97.
    Iban,
}

impl PiiKind {
    /// Every kind, in the order tags list them.
    pub const ALL: [PiiKind; 5] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::Card,
        PiiKind::Ssn,
        PiiKind::Iban,
    ];

    /// The name in routes.yaml, tags and problem messages.
    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::Card => "card",
            PiiKind::Ssn => "ssn",
            PiiKind::Iban => "iban",
        }
    }

    /// What the kind is, for a client-facing message.
    pub fn describe(self) -> &'static str {
        match self {
            PiiKind::Email => "an e-mail address",
            PiiKind::Phone => "a phone number",
            PiiKind::Card => "a payment card number",
            PiiKind::Ssn => "a US social security number",
            PiiKind::Iban => "a bank account number (IBAN)",
        }
    }
}

/// Which path captures name the model and its version (`model:` in
/// routes.yaml, e.g. `{ name: "{model}", version: "{version}" }`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// The capture holding the model name, as `{capture}`.
    pub name: String,
    /// The capture holding the version or alias, as `{capture}`.
    pub version: String,
}

impl ModelRef {
    /// The capture names (without braces), when both are single captures.
    pub fn capture_names(&self) -> Option<(&str, &str)> {
        fn capture(s: &str) -> Option<&str> {
            s.strip_prefix('{')?
                .strip_suffix('}')
                .filter(|n| !n.is_empty() && !n.contains(['{', '}']))
        }
        Some((capture(&self.name)?, capture(&self.version)?))
    }
}

/// Whether a route needs signed payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureMode {
    /// Checked only for apps configured to require it.
    #[default]
    Off,
    /// Every request on the route must be signed.
    Required,
}

/// Problems with a route's governance fields, each as (field path under
/// the route, message). Empty when they are usable.
pub fn check(
    body: Option<&BodySpec>,
    model: Option<&ModelRef>,
    headers_to_remove: &[String],
    captures: &[&str],
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Some(body) = body {
        if body.max_bytes == 0 || body.max_bytes > MAX_BYTES_LIMIT {
            problems.push((
                "body.max_bytes".into(),
                format!("max_bytes must be between 1 and {MAX_BYTES_LIMIT}"),
            ));
        }
        if body.max_depth == 0 || body.max_depth > MAX_DEPTH_LIMIT {
            problems.push((
                "body.max_depth".into(),
                format!("max_depth must be between 1 and {MAX_DEPTH_LIMIT}"),
            ));
        }
        if body.content_types.is_empty() {
            problems.push((
                "body.content_types".into(),
                "content_types must name at least one media type, e.g. [application/json]".into(),
            ));
        }
        for t in &body.content_types {
            let valid = t.split_once('/').is_some_and(|(a, b)| {
                !a.is_empty() && !b.is_empty() && t.bytes().all(|c| c.is_ascii_graphic())
            });
            if !valid || t.bytes().any(|c| c.is_ascii_uppercase()) {
                problems.push((
                    "body.content_types".into(),
                    format!("{t:?} is not a lower-case media type such as application/json"),
                ));
            }
        }
        let json = body.content_types.iter().all(|t| is_json_type(t));
        if (body.schema.is_some() || body.model_input) && !json {
            problems.push((
                "body.content_types".into(),
                "a schema or model_input needs JSON bodies: list only JSON media types".into(),
            ));
        }
        if body.model_input && model.is_none() {
            problems.push((
                "body.model_input".into(),
                "model_input needs the route's `model:` (which captures name the model and version)".into(),
            ));
        }
        if let Some(schema) = &body.schema {
            let ok = schema.ends_with(".json")
                && !schema.contains(['/', '\\'])
                && !schema.starts_with('.');
            if !ok {
                problems.push((
                    "body.schema".into(),
                    format!("schema {schema:?} must be a file name ending in .json inside schemas/ (e.g. predict.json)"),
                ));
            }
        }
    }
    if let Some(model) = model {
        match model.capture_names() {
            None => problems.push((
                "model".into(),
                "model.name and model.version must each be one path capture, e.g. \"{model}\""
                    .into(),
            )),
            Some((name, version)) => {
                for c in [name, version] {
                    if !captures.contains(&c) {
                        problems.push((
                            "model".into(),
                            format!(
                                "capture '{c}' is not in the route's path; captures: {}",
                                captures.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
    }
    for h in headers_to_remove {
        let token = !h.is_empty()
            && h.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
            });
        if !token {
            problems.push((
                "headers_to_remove".into(),
                format!("{h:?} is not a lower-case HTTP header name"),
            ));
        } else if h == "host" || h.starts_with("x-portcullis-") {
            problems.push((
                "headers_to_remove".into(),
                format!("'{h}' cannot be removed: the gateway or Portcullis needs it"),
            ));
        }
    }
    problems
}

/// `application/json` or any `+json` type, parameters ignored.
pub fn is_json_type(media_type: &str) -> bool {
    let t = media_type.split(';').next().unwrap_or("").trim();
    t == "application/json" || t.ends_with("+json")
}
