//! The ext_authz `CheckResponse` written straight to the protobuf wire
//! format from the decision, without building prost's message first.
//!
//! Building the message cost about 25 allocations per allowed `Check` (one
//! `HeaderValueOption` per header, the dynamic metadata's `HashMap`, its
//! keys and `Value`s) and prost's encoder then walked it again; the
//! response was the largest single piece of an allowed `Check` after the
//! decision itself (`scripts/instructions.sh check`). This writes the same
//! fields, with the same values, from borrowed strings: every `Check`
//! answer, and the unit and integration tests decode it with prost and
//! assert on the message (`AuthzService`'s `Authorization::check`).
//!
//! Fields, by their numbers in Envoy's `service/auth/v3/external_auth.proto`
//! (`CheckResponse`, `OkHttpResponse`, `DeniedHttpResponse`),
//! `config/core/v3/base.proto` (`HeaderValueOption`, `HeaderValue`),
//! `type/v3/http_status.proto`, `google/rpc/status.proto` and
//! `google/protobuf/struct.proto`. Encoding: the protobuf wire format's
//! varint and length-delimited records.

use super::proto_write::{message, string, struct_entry, varint_field};

use super::access::{self, Denial};
use crate::decision::Decision;
use crate::request::AccessRequest;

/// Bytes reserved for an answer at first: the allowed answer of this
/// module's test takes 438, its `invalid_token` denial with the problem
/// document 597; a longer answer grows the buffer.
const FIRST_CAPACITY: usize = 1024;

/// `HeaderValueOption.append_action`: `OVERWRITE_IF_EXISTS_OR_ADD`.
const OVERWRITE_IF_EXISTS_OR_ADD: u64 = 2;

/// A `CheckResponse` in protobuf wire form, ready for the gRPC frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedCheckResponse(Vec<u8>);

impl EncodedCheckResponse {
    /// The answer to `req` for `decision`: `status` (`OK`, or the outcome
    /// table's gRPC code and the reason's code as message), the
    /// `ok_response` (the upstream's headers set with
    /// `OVERWRITE_IF_EXISTS_OR_ADD`, spoofed and minimised headers in
    /// `headers_to_remove`, sorted; the client's headers in
    /// `response_headers_to_add`) or the `denied_response` (HTTP status,
    /// headers, problem document), and `dynamic_metadata` (decision id,
    /// policy version, decision, principal, determining policies).
    pub fn of(decision: &Decision, req: &AccessRequest) -> Self {
        let mut out = Vec::with_capacity(FIRST_CAPACITY);
        Answer::of(decision, req).write(&mut out);
        EncodedCheckResponse(out)
    }

    /// The encoded message.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for EncodedCheckResponse {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// What the message is written from, borrowed from the decision and the
/// request where they hold the text.
struct Answer<'a> {
    decision: &'a Decision,
    http: Http<'a>,
}

enum Http<'a> {
    Ok { headers_to_remove: Vec<&'a str> },
    Denied(Denial),
}

impl<'a> Answer<'a> {
    fn of(decision: &'a Decision, req: &'a AccessRequest) -> Self {
        let http = if decision.is_allowed() {
            // Clients must never spoof our headers: the ones we set
            // overwrite, every other x-portcullis-* header the client sent
            // is removed; and what the route says the model does not need
            // (minimisation), when the request carries it.
            let mut headers_to_remove = access::spoofed(decision, req);
            for h in &decision.strip_headers {
                if req.headers.contains_key(h) && !headers_to_remove.contains(&h.as_str()) {
                    headers_to_remove.push(h);
                }
            }
            headers_to_remove.sort_unstable();
            Http::Ok { headers_to_remove }
        } else {
            Http::Denied(access::denial(decision))
        };
        Answer { decision, http }
    }

    /// `CheckResponse`.
    fn write(&self, s: &mut Vec<u8>) {
        let d = self.decision;
        match &self.http {
            Http::Ok { headers_to_remove } => {
                // status = 1: google.rpc.Status, code OK (0, the default,
                // so an empty message).
                message(s, 1, |_| {});
                // ok_response = 3: OkHttpResponse.
                message(s, 3, |s| {
                    for (k, v) in access::upstream_set(d) {
                        message(s, 2, |s| header_option(s, k, v));
                    }
                    for name in headers_to_remove {
                        string(s, 5, name);
                    }
                    // Where the client stands, on the upstream's response.
                    d.for_each_client_header(|k, v| message(s, 6, |s| header_option(s, k, v)));
                });
            }
            Http::Denied(denial) => {
                message(s, 1, |s| {
                    varint_field(s, 1, d.grpc() as i32 as u64);
                    string(s, 2, d.reason.map(|r| r.code()).unwrap_or_default());
                });
                // denied_response = 2: DeniedHttpResponse.
                message(s, 2, |s| {
                    // status = 1: envoy.type.v3.HttpStatus, whose code enum
                    // values are the HTTP status numbers.
                    message(s, 1, |s| varint_field(s, 1, u64::from(denial.status)));
                    for (k, v) in &denial.headers {
                        message(s, 2, |s| header_option(s, k, v));
                    }
                    string(s, 3, &denial.body);
                });
            }
        }
        // dynamic_metadata = 4: google.protobuf.Struct, for Envoy's access
        // log and later filters.
        message(s, 4, |s| {
            metadata_string(s, "decision_id", &d.id);
            metadata_string(s, "policy_version", &d.policy_version);
            let decision = if d.is_allowed() { "allow" } else { "deny" };
            metadata_string(s, "decision", decision);
            if let Some(p) = &d.principal {
                metadata_string(s, "principal", p);
            }
            struct_entry(s, "determining_policies", |s| {
                // Value.list_value = 6: ListValue, values = 1.
                message(s, 6, |s| {
                    for p in &d.determining_policies {
                        message(s, 1, |s| string_value(s, p));
                    }
                });
            });
        });
    }
}

/// `HeaderValueOption { header: HeaderValue { key, value }, append_action:
/// OVERWRITE_IF_EXISTS_OR_ADD }`.
fn header_option(s: &mut Vec<u8>, key: &str, value: &str) {
    message(s, 1, |s| {
        string(s, 1, key);
        string(s, 2, value);
    });
    varint_field(s, 3, OVERWRITE_IF_EXISTS_OR_ADD);
}

/// One `Struct.fields` entry whose `Value` is the string `value`.
fn metadata_string(s: &mut Vec<u8>, key: &str, value: &str) {
    struct_entry(s, key, |s| string_value(s, value));
}

/// `Value.string_value` (field 3), written even when empty: it is one of
/// the `kind` oneof, whose presence is the value.
fn string_value(s: &mut Vec<u8>, value: &str) {
    string(s, 3, value);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
    use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::{
        CheckResponse, DeniedHttpResponse, OkHttpResponse,
    };
    use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
    use envoy_types::pb::google::rpc;
    use prost::Message as _;

    use super::*;
    use crate::decision::{DenyReason, GrpcCode};

    fn decoded(d: &Decision, req: &AccessRequest) -> CheckResponse {
        CheckResponse::decode(EncodedCheckResponse::of(d, req).as_bytes()).unwrap()
    }

    fn set(k: &str, v: &str) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HeaderValue {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        }
    }

    fn string(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    /// The dynamic metadata as prost's own message, field by field.
    fn metadata(d: &Decision, decision: &str) -> Struct {
        let mut fields = HashMap::from([
            ("decision_id".to_string(), string(&d.id)),
            ("policy_version".to_string(), string(&d.policy_version)),
            ("decision".to_string(), string(decision)),
            (
                "determining_policies".to_string(),
                Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: d.determining_policies.iter().map(|p| string(p)).collect(),
                    })),
                },
            ),
        ]);
        if let Some(p) = &d.principal {
            fields.insert("principal".into(), string(p));
        }
        Struct { fields }
    }

    #[test]
    fn an_allow_decodes_to_exactly_the_message_prost_would_build() {
        let mut req = AccessRequest::for_test("POST", "/v1/models/m/predict");
        for (k, v) in [
            ("x-portcullis-role", "admin"),
            ("x-portcullis-principal", "User::\"mallory\""),
            ("cookie", "a=b"),
            ("x-api-key", "k"),
        ] {
            req.headers.insert(k.into(), v.into());
        }
        let mut d = Decision::new("v7").allow();
        d.principal = Some("User::\"alice\"".into());
        d.determining_policies = vec!["allow-predict".into(), "p2".into()];
        d.upstream_headers = vec![("x-portcullis-pii".into(), "email".into())];
        d.response_headers = vec![("x-model-version".into(), "3".into())];
        // Not sent by this client: not removed.
        d.strip_headers = vec!["x-api-key".into(), "cookie".into(), "x-absent".into()];
        let expected = CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![
                    set("x-portcullis-decision-id", &d.id),
                    set("x-portcullis-policy-version", "v7"),
                    set("x-portcullis-principal", "User::\"alice\""),
                    set("x-portcullis-pii", "email"),
                ],
                headers_to_remove: vec![
                    "cookie".into(),
                    "x-api-key".into(),
                    "x-portcullis-role".into(),
                ],
                response_headers_to_add: vec![set("x-model-version", "3")],
                ..Default::default()
            })),
            dynamic_metadata: Some(metadata(&d, "allow")),
        };
        assert_eq!(decoded(&d, &req), expected);
    }

    #[test]
    fn a_denial_decodes_to_exactly_the_message_prost_would_build() {
        let req = AccessRequest::for_test("GET", "/x");
        let d = Decision::new("v1").deny(DenyReason::InvalidCredentials, "expired \"now\"");
        let denial = access::denial(&d);
        let expected = CheckResponse {
            status: Some(rpc::Status {
                code: GrpcCode::Unauthenticated as i32,
                message: DenyReason::InvalidCredentials.code().into(),
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus { code: 401 }),
                headers: denial.headers.iter().map(|(k, v)| set(k, v)).collect(),
                body: denial.body.clone(),
            })),
            dynamic_metadata: Some(metadata(&d, "deny")),
        };
        assert_eq!(decoded(&d, &req), expected);
    }

    #[test]
    fn empty_strings_and_lists_keep_their_presence() {
        // An empty policy version and no determining policies: the Value
        // oneof must still be there (a string, a list), not absent.
        let req = AccessRequest::for_test("GET", "/x");
        let mut d = Decision::new("").allow();
        d.principal = Some(String::new());
        d.upstream_headers = vec![("x-portcullis-empty".into(), String::new())];
        let resp = decoded(&d, &req);
        assert_eq!(resp.dynamic_metadata, Some(metadata(&d, "allow")));
        let Some(HttpResponse::OkResponse(ok)) = resp.http_response else {
            panic!("expected OkResponse")
        };
        assert!(ok.headers.contains(&set("x-portcullis-empty", "")));
    }

    #[test]
    fn long_fields_get_multi_byte_lengths() {
        // A body over 127 bytes and one over 16 KiB: two- and three-byte
        // length varints, nested three messages deep.
        for n in [200, 20_000] {
            let req = AccessRequest::for_test("GET", "/x");
            let mut d = Decision::new("v1").allow();
            d.upstream_headers = vec![("x-portcullis-long".into(), "v".repeat(n))];
            let Some(HttpResponse::OkResponse(ok)) = decoded(&d, &req).http_response else {
                panic!("expected OkResponse")
            };
            assert!(ok
                .headers
                .contains(&set("x-portcullis-long", &"v".repeat(n))));
        }
    }
}
