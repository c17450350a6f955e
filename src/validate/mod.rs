//! Stage 4 of the pipeline, validate: a routed, authorized request's body
//! against its route's rule (content type, size, JSON well-formedness and
//! depth, JSON Schema, the model version's input constraints, personal
//! data). Plain Rust over our own types; the wire never reaches here.

pub mod json;
pub mod models;
pub mod pii;
pub mod rules;
pub mod schema;

use crate::decision::DenyReason;
use crate::request::AccessRequest;
use rules::{BodySpec, PiiKind, PiiMode};

/// Envoy sets this when it sent only part of the body
/// (`allow_partial_message: true`).
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";
/// At most this many problems are listed in one response.
pub const MAX_PROBLEMS: usize = 20;

pub use crate::decision::Problem;

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The denial (400, 413, 415, 422).
    pub reason: DenyReason,
    /// One sentence for the client.
    pub detail: String,
    /// Each problem (capped at [`MAX_PROBLEMS`]).
    pub problems: Vec<Problem>,
}

impl Rejection {
    fn new(reason: DenyReason, detail: impl Into<String>, problems: Vec<Problem>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
            problems: problems
                .into_iter()
                .map(|p| Problem {
                    pointer: safe_pointer(&p.pointer),
                    message: p.message,
                })
                .collect(),
        }
    }
}

/// Whether an object key may be repeated to the client: it looks like a
/// field name (a letter or `_` first, at most 64 characters of letters,
/// digits, `_`, `-`, `.`, and at most 4 digits). A key can itself be
/// personal data (`{"4111111111111111": ...}`); such keys are not shown.
pub fn is_field_name(key: &str) -> bool {
    key.len() <= 64
        && key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        && key.bytes().filter(u8::is_ascii_digit).count() <= 4
}

/// A JSON pointer with every segment that is neither an array index nor a
/// field name (see [`is_field_name`]) replaced by `*`.
pub fn safe_pointer(pointer: &str) -> String {
    if pointer.is_empty() {
        return String::new();
    }
    pointer
        .split('/')
        .skip(1)
        .map(|segment| {
            let unescaped = segment.replace("~1", "/").replace("~0", "~");
            let index = !segment.is_empty()
                && segment.len() <= 6
                && segment.bytes().all(|b| b.is_ascii_digit());
            if index || is_field_name(&unescaped) {
                format!("/{segment}")
            } else {
                "/*".to_string()
            }
        })
        .collect()
}

/// What an accepted body tells the upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Kinds of personal data found on a `pii: tag` route.
    pub pii: Vec<PiiKind>,
    /// The body as parsed here when it is JSON (`None`: no body, or not
    /// JSON), so later stages (a quota's `body_field` cost, a token
    /// rule's prompt estimate) read it without parsing it again.
    pub json: Option<serde_json::Value>,
}

/// The model version a body is checked against.
pub struct ModelInput<'a> {
    /// `model/version`, for messages.
    pub label: &'a str,
    /// Its registry entry.
    pub version: &'a models::Version,
}

/// Checks a request's body against its route's rule.
pub fn check_body(
    req: &AccessRequest,
    spec: &BodySpec,
    schema: Option<&jsonschema::Validator>,
    model: Option<ModelInput<'_>>,
) -> Result<Accepted, Rejection> {
    // A partial body cannot be validated as if it were whole.
    if req
        .header(PARTIAL_BODY_HEADER)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Err(Rejection::new(
            DenyReason::BodyTooLarge,
            format!(
                "the request body is larger than the gateway forwards for checking; send at most {} bytes",
                spec.max_bytes
            ),
            Vec::new(),
        ));
    }
    let body = match req.body.as_deref() {
        Some(b) if !b.is_empty() => b,
        _ if spec.required => {
            return Err(Rejection::new(
                DenyReason::MalformedBody,
                format!(
                    "this endpoint needs a request body ({})",
                    spec.content_types.join(" or ")
                ),
                vec![Problem::new(
                    "",
                    "the body is empty: send the request as JSON",
                )],
            ))
        }
        _ => return Ok(Accepted::default()),
    };
    let media_type = req
        .header("content-type")
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if !spec.content_types.contains(&media_type) {
        let sent = if media_type.is_empty() {
            "no Content-Type".to_string()
        } else if media_type.len() <= 64 && media_type.bytes().all(|b| b.is_ascii_graphic()) {
            format!("Content-Type {media_type}")
        } else {
            "an unusable Content-Type".to_string()
        };
        return Err(Rejection::new(
            DenyReason::UnsupportedMediaType,
            format!(
                "the request has {sent}; send Content-Type: {}",
                spec.content_types.join(" or ")
            ),
            Vec::new(),
        ));
    }
    if body.len() > spec.max_bytes {
        return Err(Rejection::new(
            DenyReason::BodyTooLarge,
            format!(
                "the request body has {} bytes; this endpoint accepts at most {}",
                body.len(),
                spec.max_bytes
            ),
            Vec::new(),
        ));
    }
    if !rules::is_json_type(&media_type) {
        return scan_text_body(body, spec);
    }

    let value = json::parse(body, spec.max_depth).map_err(|m| {
        Rejection::new(
            DenyReason::MalformedBody,
            "the request body is not well-formed JSON",
            vec![Problem::new("", m.message)],
        )
    })?;

    let mut problems = Vec::new();
    let mut more = false;
    if let Some(schema) = schema {
        (problems, more) = schema::check(schema, &value, MAX_PROBLEMS);
    }
    if let Some(model) = &model {
        for p in model.version.check_input(model.label, &value) {
            if problems.len() == MAX_PROBLEMS {
                more = true;
                break;
            }
            if !problems.contains(&p) {
                problems.push(p);
            }
        }
    }
    if !problems.is_empty() {
        let detail = if more {
            format!(
                "the request body is invalid; the first {} problems are listed",
                problems.len()
            )
        } else {
            format!(
                "the request body is invalid ({} problem(s))",
                problems.len()
            )
        };
        return Err(Rejection::new(DenyReason::InvalidBody, detail, problems));
    }

    if spec.pii == PiiMode::Off {
        return Ok(Accepted {
            pii: Vec::new(),
            json: Some(value),
        });
    }
    let findings = pii::scan_json(&value, &spec.pii_kinds);
    let mut kinds: Vec<PiiKind> = findings.iter().map(|f| f.kind).collect();
    kinds.sort();
    kinds.dedup();
    match spec.pii {
        PiiMode::Deny if !findings.is_empty() => {
            Err(Rejection::new(
                DenyReason::PiiDetected,
                format!(
                "the request body contains personal data ({}), which this endpoint does not accept",
                kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            ),
                findings
                    .iter()
                    .map(|f| {
                        Problem::new(
                            f.pointer.clone(),
                            format!(
                                "contains {}: remove or mask it before sending",
                                f.kind.describe()
                            ),
                        )
                    })
                    .collect(),
            ))
        }
        _ => Ok(Accepted {
            pii: kinds,
            json: Some(value),
        }),
    }
}

/// A non-JSON body on a PII route: scanned as text when it is UTF-8.
fn scan_text_body(body: &[u8], spec: &BodySpec) -> Result<Accepted, Rejection> {
    if spec.pii == PiiMode::Off {
        return Ok(Accepted::default());
    }
    let text = String::from_utf8_lossy(body);
    let kinds = pii::scan_text(&text, &spec.pii_kinds);
    match spec.pii {
        PiiMode::Deny if !kinds.is_empty() => {
            Err(Rejection::new(
                DenyReason::PiiDetected,
                format!(
                "the request body contains personal data ({}), which this endpoint does not accept",
                kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            ),
                kinds
                    .iter()
                    .map(|k| {
                        Problem::new(
                            "",
                            format!(
                                "contains {}: remove or mask it before sending",
                                k.describe()
                            ),
                        )
                    })
                    .collect(),
            ))
        }
        _ => Ok(Accepted {
            pii: kinds,
            json: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> BodySpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn request(content_type: Option<&str>, body: &[u8]) -> AccessRequest {
        let mut r = AccessRequest::for_test("POST", "/x");
        if let Some(t) = content_type {
            r.headers.insert("content-type".into(), t.into());
        }
        r.body = Some(body.to_vec());
        r
    }

    #[test]
    fn a_partial_body_is_never_validated_as_whole() {
        let mut r = request(Some("application/json"), br#"{"a": 1}"#);
        r.headers.insert(PARTIAL_BODY_HEADER.into(), "true".into());
        let e = check_body(&r, &spec("{}"), None, None).unwrap_err();
        assert_eq!(e.reason, DenyReason::BodyTooLarge);
    }

    #[test]
    fn content_type_size_and_presence_per_route() {
        let s = spec("{max_bytes: 10}");
        let e = check_body(&request(Some("text/plain"), b"{}"), &s, None, None).unwrap_err();
        assert_eq!(e.reason, DenyReason::UnsupportedMediaType);
        // Parameters are ignored, case too.
        check_body(
            &request(Some("Application/JSON; charset=utf-8"), b"{}"),
            &s,
            None,
            None,
        )
        .unwrap();
        let e = check_body(
            &request(Some("application/json"), b"[1,2,3,4,5,6]"),
            &s,
            None,
            None,
        )
        .unwrap_err();
        assert_eq!(e.reason, DenyReason::BodyTooLarge);
        let e = check_body(&request(Some("application/json"), b""), &s, None, None).unwrap_err();
        assert_eq!(e.reason, DenyReason::MalformedBody);
        let optional = spec("{required: false}");
        assert_eq!(
            check_body(&request(None, b""), &optional, None, None),
            Ok(Accepted::default())
        );
        let text = spec("{content_types: [text/plain], pii: deny}");
        let e = check_body(
            &request(Some("text/plain"), b"ssn 123-45-6789"),
            &text,
            None,
            None,
        )
        .unwrap_err();
        assert_eq!(e.reason, DenyReason::PiiDetected);
        assert!(!format!("{e:?}").contains("6789"));
    }

    #[test]
    fn pii_is_tagged_or_refused_per_route_and_off_by_default() {
        let body = br#"{"note": "write to jo@example.org, card 5500-0000-0000-0004"}"#;
        let r = request(Some("application/json"), body);
        let parsed: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            check_body(&r, &spec("{}"), None, None),
            Ok(Accepted {
                pii: Vec::new(),
                json: Some(parsed.clone()),
            })
        );
        assert_eq!(
            check_body(&r, &spec("{pii: tag}"), None, None),
            Ok(Accepted {
                pii: vec![PiiKind::Email, PiiKind::Card],
                json: Some(parsed),
            })
        );
        let e = check_body(&r, &spec("{pii: deny, pii_kinds: [card]}"), None, None).unwrap_err();
        assert_eq!(e.reason, DenyReason::PiiDetected);
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].pointer, "/note");
        assert!(!format!("{e:?}").contains("5500"));
        assert!(!format!("{e:?}").contains("jo@"));
    }

    #[test]
    fn keys_that_are_not_field_names_never_reach_the_client() {
        assert_eq!(safe_pointer("/features/0/note"), "/features/0/note");
        assert_eq!(safe_pointer("/a~1b"), "/*");
        assert_eq!(safe_pointer("/notes/4111111111111111/x"), "/notes/*/x");
        assert_eq!(safe_pointer("/x/jo@example.org"), "/x/*");
        let r = request(
            Some("application/json"),
            br#"{"notes": {"4111111111111111": "card 4111111111111111"}}"#,
        );
        let e = check_body(&r, &spec("{pii: deny}"), None, None).unwrap_err();
        assert_eq!(e.problems[0].pointer, "/notes/*");
        assert!(!format!("{e:?}").contains("4111"));
    }

    #[test]
    fn escaped_personal_data_is_still_found() {
        // "\u0040" is '@': the scan reads decoded strings.
        let r = request(
            Some("application/json"),
            br#"{"note": "jo\u0040example.org"}"#,
        );
        let e = check_body(&r, &spec("{pii: deny}"), None, None).unwrap_err();
        assert_eq!(e.reason, DenyReason::PiiDetected);
    }
}
