//! One ext_proc stream (one HTTP request and its response): the messages
//! Envoy sends, in order, and the answer to each. Request headers name the
//! request (its id, the decision Portcullis made in `Check`) and find its
//! token reservation; response headers say the status and how the body is
//! framed; each body chunk passes the usage reader and the response hook;
//! the end settles the reservation and tells Envoy the usage (dynamic
//! metadata, namespace `portcullis`).

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};

use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
    HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse, StreamedBodyResponse,
    TrailersResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

use super::hook::{Checks, PassThrough, ResponseHook};
use crate::adapters::extauthz::{header_value, merge_repeat};
use crate::app::State;
use crate::decision::outcome::DECISION_HEADER;
use crate::metrics;
use crate::pipeline::{response, Door};
use crate::quota::reserve::{LimitSettled, Missing, Outcome, Reservation};
use crate::quota::usage::{Framing, UsageReader};

/// The dynamic metadata namespace Portcullis writes (Envoy's ext_proc
/// filter accepts it with `metadata_options.receiving_namespaces.untyped:
/// [portcullis]`): `usage_tokens` (what the response said it used, when it
/// said), `reserved_tokens` and `decision_id` (when a reservation was
/// settled).
pub const METADATA_NAMESPACE: &str = "portcullis";

/// Envoy's `BodySendMode.FULL_DUPLEX_STREAMED`.
const FULL_DUPLEX_STREAMED: i32 = 4;
/// Envoy's `BodySendMode.NONE`.
const BODY_NONE: i32 = 0;
/// Envoy's `BodySendMode.BUFFERED`.
const BUFFERED: i32 = 2;

/// Where one stream stands.
pub(super) struct Exchange {
    state: Arc<State>,
    request_id: String,
    decision_id: String,
    reservation: Option<Reservation>,
    /// The route the request took (from its method and path), for its
    /// response checks and records.
    route: String,
    hook: Box<dyn ResponseHook>,
    /// The response body is sent `FULL_DUPLEX_STREAMED`: every body
    /// answer is a streamed response.
    full_duplex: bool,
    /// Envoy sends no response body (its `response_body_mode` is NONE):
    /// the usage cannot be read, the response ends at its headers.
    no_body: bool,
    /// The response body is `BUFFERED`: nothing reaches the client before
    /// the body's answer, so a block can replace the whole response.
    buffered: bool,
    status: u16,
    reader: Option<UsageReader>,
    /// The reservation was looked up (once per stream).
    looked_up: bool,
    /// The response has ended (and its reservation settled).
    finished: bool,
    /// A hook blocked a stream under way: later chunks are dropped.
    blocked: bool,
}

impl Exchange {
    pub(super) fn new(state: Arc<State>) -> Exchange {
        Exchange {
            state,
            request_id: String::new(),
            decision_id: String::new(),
            reservation: None,
            route: String::new(),
            hook: Box::new(PassThrough),
            full_duplex: false,
            no_body: false,
            buffered: false,
            status: 0,
            reader: None,
            looked_up: false,
            finished: false,
            blocked: false,
        }
    }

    /// The answer to one message (`None`: none is due, e.g. in
    /// observability mode).
    pub(super) async fn handle(&mut self, m: ProcessingRequest) -> Option<ProcessingResponse> {
        if let Some(config) = &m.protocol_config {
            self.full_duplex = config.response_body_mode == FULL_DUPLEX_STREAMED;
            self.no_body = config.response_body_mode == BODY_NONE;
            self.buffered = config.response_body_mode == BUFFERED;
        }
        if self.request_id.is_empty() {
            if let Some(id) = attribute(&m.attributes, "request.id") {
                self.request_id = id;
            }
        }
        let observe_only = m.observability_mode;
        let answer = match m.request? {
            Msg::RequestHeaders(h) => self.request_headers(&h).await,
            Msg::ResponseHeaders(h) => self.response_headers(&h).await,
            Msg::ResponseBody(b) => self.response_body(&b).await,
            Msg::RequestBody(_) => plain(Answer::RequestBody(BodyResponse::default())),
            Msg::RequestTrailers(_) => plain(Answer::RequestTrailers(TrailersResponse::default())),
            Msg::ResponseTrailers(_) => {
                let metadata = self.finish().await;
                ProcessingResponse {
                    dynamic_metadata: metadata,
                    ..plain(Answer::ResponseTrailers(TrailersResponse::default()))
                }
            }
        };
        (!observe_only).then_some(answer)
    }

    /// The response has ended and its reservation is settled: nothing
    /// Envoy may still send changes the outcome.
    pub(super) fn finished(&self) -> bool {
        self.finished
    }

    /// The stream ended before the response did (Envoy, the client or the
    /// network went away): the reservation settles by its rule now.
    pub(super) async fn broken(&mut self) {
        if !self.finished && self.reservation.is_some() {
            metrics::global().ext_proc_stream("broken");
            self.settle(Outcome::Missing(Missing::Broken)).await;
        }
        self.finished = true;
    }

    async fn request_headers(&mut self, h: &HttpHeaders) -> ProcessingResponse {
        let header = |name: &str| header(h.headers.as_ref(), name);
        if let Some(id) = header("x-request-id").filter(|v| !v.is_empty()) {
            self.request_id = id;
        }
        if let Some(id) = header(DECISION_HEADER) {
            self.decision_id = id;
        }
        // The route, as Check matched it: its response checks apply.
        if let (Some(method), Some(path)) = (header(":method"), header(":path")) {
            let snapshot = self.state.policies.current();
            if let crate::routes::RouteMatch::Matched { route, .. } =
                snapshot.routes.match_request(&method, &path)
            {
                self.route.clone_from(&route.name);
                if let Some(checks) = snapshot.responses.for_route(&route.name) {
                    self.hook = Box::new(Checks::new(checks.clone()));
                }
            }
        }
        self.find_reservation().await;
        plain(Answer::RequestHeaders(HeadersResponse::default()))
    }

    async fn find_reservation(&mut self) {
        if self.looked_up || self.request_id.is_empty() {
            return;
        }
        self.looked_up = true;
        match self.state.quotas.reservation(&self.request_id).await {
            Ok(Some(r)) => {
                if !self.decision_id.is_empty() && r.decision_id != self.decision_id {
                    // A request id used twice: the reservation belongs to
                    // another decision, so it is not this response's.
                    tracing::warn!(
                        target: "portcullis::ext_proc",
                        request_id = %self.request_id,
                        decision_id = %self.decision_id,
                        reserved_by = %r.decision_id,
                        "the reservation under this request id belongs to another decision; not settled from this response"
                    );
                    return;
                }
                self.decision_id.clone_from(&r.decision_id);
                self.reservation = Some(r);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                target: "portcullis::ext_proc",
                error = %e,
                request_id = %self.request_id,
                "cannot read the token reservation; it settles when it expires"
            ),
        }
    }

    async fn response_headers(&mut self, h: &HttpHeaders) -> ProcessingResponse {
        self.status = header(h.headers.as_ref(), ":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // Response headers without request headers (request_header_mode
        // SKIP): the request id came as an attribute, if at all.
        self.find_reservation().await;
        if self.reservation.is_none() {
            metrics::global().ext_proc_stream("uncorrelated");
            tracing::debug!(
                target: "portcullis::ext_proc",
                request_id = %self.request_id,
                "no token reservation for this request id; the response passes untouched"
            );
        }
        let content_type = header(h.headers.as_ref(), "content-type");
        let content_type = content_type.as_deref();
        let pointers = self
            .reservation
            .as_ref()
            .map(Reservation::pointers)
            .unwrap_or_default();
        self.reader = Some(UsageReader::new(pointers, Framing::of(content_type)));
        let set = self.hook.headers(self.status, content_type);
        let mut metadata = None;
        if h.end_of_stream || self.no_body {
            metadata = self.finish().await;
        }
        let mut header_mutation = (!set.is_empty()).then(|| mutation(&set));
        if self.hook.wants_body() {
            // The checks may change the body's length (redaction, a
            // block): the client must not be told the upstream's.
            header_mutation
                .get_or_insert_with(HeaderMutation::default)
                .remove_headers
                .push("content-length".into());
        }
        ProcessingResponse {
            dynamic_metadata: metadata,
            ..plain(Answer::ResponseHeaders(HeadersResponse {
                response: Some(CommonResponse {
                    header_mutation,
                    ..Default::default()
                }),
            }))
        }
    }

    async fn response_body(&mut self, b: &HttpBody) -> ProcessingResponse {
        if let Some(reader) = &mut self.reader {
            reader.feed(&b.body);
        }
        let mut replace = None;
        let mut immediate = None;
        if self.blocked {
            replace = Some(Vec::new());
        } else {
            let out = self.hook.chunk(&b.body, b.end_of_stream);
            replace = out.replace.or(replace);
            if let Some(block) = out.block {
                if self.buffered && b.end_of_stream {
                    // Buffered: nothing has left yet; the whole answer
                    // becomes the block.
                    immediate = Some(block);
                } else {
                    self.blocked = true;
                    replace = Some(block.body);
                }
            }
        }
        let metadata = if b.end_of_stream {
            self.finish().await
        } else {
            None
        };
        // A buffered body's headers have not left yet: the tag goes on.
        let tag = (self.buffered && b.end_of_stream)
            .then(|| self.hook.tag())
            .flatten();
        if let Some(block) = immediate {
            return ProcessingResponse {
                dynamic_metadata: metadata,
                ..plain(Answer::ImmediateResponse(ImmediateResponse {
                    status: Some(HttpStatus {
                        code: i32::from(block.status),
                    }),
                    headers: Some(mutation(&[("content-type".into(), block.content_type)])),
                    body: block.body,
                    ..Default::default()
                }))
            };
        }
        let body_mutation = if self.full_duplex {
            Some(BodyMutation {
                mutation: Some(Mutation::StreamedResponse(StreamedBodyResponse {
                    body: replace.unwrap_or_else(|| b.body.clone()),
                    end_of_stream: b.end_of_stream,
                    ..Default::default()
                })),
            })
        } else {
            replace.map(|body| BodyMutation {
                mutation: Some(Mutation::Body(body)),
            })
        };
        ProcessingResponse {
            dynamic_metadata: metadata,
            ..plain(Answer::ResponseBody(BodyResponse {
                response: Some(CommonResponse {
                    body_mutation,
                    header_mutation: tag.map(|t| mutation(&[t])),
                    ..Default::default()
                }),
            }))
        }
    }

    /// The response ended: settles its reservation from what it said, and
    /// answers the dynamic metadata for Envoy.
    async fn finish(&mut self) -> Option<Struct> {
        if self.finished {
            return None;
        }
        self.finished = true;
        let used = self.reader.as_mut().map(|r| r.finish().clone());
        let mut fields = HashMap::new();
        if let Some(n) = used.as_ref().and_then(|u| {
            let pointers = self
                .reservation
                .as_ref()
                .and_then(|r| r.limits.first())
                .map(|l| l.usage.clone())
                .unwrap_or_default();
            u.tokens(&pointers)
        }) {
            fields.insert("usage_tokens".to_string(), number(n));
        }
        if self.reservation.is_some() {
            // An error status or a body without usage settles by the rule.
            let outcome = match &used {
                Some(u) if !u.is_empty() => Outcome::Usage(u),
                _ if self.status >= 400 => Outcome::Missing(Missing::UpstreamError),
                _ => Outcome::Missing(Missing::NoUsage),
            };
            metrics::global().ext_proc_stream("settled");
            let settled = self.settle(outcome).await;
            let reserved: u64 = settled.iter().map(|l| l.reserved).sum();
            fields.insert("reserved_tokens".to_string(), number(reserved));
            fields.insert(
                "decision_id".to_string(),
                Value {
                    kind: Some(Kind::StringValue(self.decision_id.clone())),
                },
            );
        } else {
            metrics::global().ext_proc_stream("passed");
            let findings = self.hook.findings();
            if !findings.is_empty() {
                response::record_findings(
                    Some(&self.state.audit),
                    &response::Answered {
                        adapter: Door::ExtProc.as_str(),
                        request_id: &self.request_id,
                        decision_id: &self.decision_id,
                        route: &self.route,
                        status: self.status,
                    },
                    &findings,
                );
            }
        }
        if fields.is_empty() {
            return None;
        }
        let mut outer = HashMap::new();
        outer.insert(
            METADATA_NAMESPACE.to_string(),
            Value {
                kind: Some(Kind::StructValue(Struct { fields })),
            },
        );
        Some(Struct { fields: outer })
    }

    async fn settle(&mut self, outcome: Outcome<'_>) -> Vec<LimitSettled> {
        let Some(r) = self.reservation.take() else {
            return Vec::new();
        };
        response::settle(
            &self.state.quotas,
            Some(&self.state.audit),
            Door::ExtProc.as_str(),
            &r,
            self.status,
            &outcome,
            &self.hook.findings(),
        )
        .await
    }
}

fn plain(answer: Answer) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(answer),
        ..Default::default()
    }
}

fn number(n: u64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n as f64)),
    }
}

/// A header mutation setting `set` (overwriting).
fn mutation(set: &[(String, String)]) -> HeaderMutation {
    HeaderMutation {
        set_headers: set
            .iter()
            .map(|(k, v)| HeaderValueOption {
                header: Some(HeaderValue {
                    key: k.clone(),
                    raw_value: v.clone().into_bytes(),
                    ..Default::default()
                }),
                append_action: envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                ..Default::default()
            })
            .collect(),
        remove_headers: Vec::new(),
    }
}

/// The value of header `name` (lower case) in an Envoy `HeaderMap`, as
/// `extauthz::header_map` reads it (names compared without case, values by
/// `header_value`, repeats by `merge_repeat`), without building the map: a
/// stream reads five headers of the dozens Envoy sends.
fn header(map: Option<&HeaderMap>, name: &str) -> Option<String> {
    let mut out: Option<String> = None;
    for h in map.iter().flat_map(|m| m.headers.iter()) {
        if !h.key.eq_ignore_ascii_case(name) {
            continue;
        }
        let value = header_value(h);
        match &mut out {
            Some(merged) => merge_repeat(merged, &value),
            None => out = Some(value.into_owned()),
        }
    }
    out
}

/// An attribute Envoy sent (`request_attributes` / `response_attributes`:
/// `request.id`), from any namespace.
fn attribute(attributes: &HashMap<String, Struct>, name: &str) -> Option<String> {
    attributes
        .values()
        .find_map(|s| match s.fields.get(name)?.kind.as_ref()? {
            Kind::StringValue(v) if !v.is_empty() => Some(v.clone()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str, &[u8])]) -> HeaderMap {
        HeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v, raw)| HeaderValue {
                    key: k.to_string(),
                    value: v.to_string(),
                    raw_value: raw.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_header_is_read_as_the_ext_authz_header_map_reads_it() {
        let m = map(&[
            (":path", "", b"/v1/chat"),
            ("X-Request-Id", "old-style", b""),
            ("accept", "", b"a"),
            ("Accept", "", b"b"),
            ("x-odd", "", b"\xff!"),
        ]);
        let read = |name| header(Some(&m), name);
        // raw_value when set, else value; names without case.
        assert_eq!(read(":path").as_deref(), Some("/v1/chat"));
        assert_eq!(read("x-request-id").as_deref(), Some("old-style"));
        // Repeats comma-merged, invalid UTF-8 replaced.
        assert_eq!(read("accept").as_deref(), Some("a,b"));
        assert_eq!(read("x-odd").as_deref(), Some("\u{fffd}!"));
        assert_eq!(read("content-type"), None);
        assert_eq!(header(None, ":path"), None);
        // The same as the whole map, for every name.
        let whole = crate::adapters::extauthz::header_map(Some(&m));
        for (name, value) in &whole {
            assert_eq!(read(name).as_ref(), Some(value), "{name}");
        }
    }
}
