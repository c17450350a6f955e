//! Response checks: what an upstream's response (an LLM completion) may not
//! carry to the client: personal data (the detectors of `validate::pii`),
//! secret patterns, canary strings and more than a maximum size. Compiled
//! per route from `responses.yaml` (`config.rs`), and run over a body as it
//! arrives, chunk by chunk, at whatever byte boundaries the gateway cuts
//! it. Speaking ext_proc and writing the audit record are the adapter's
//! job; this module only scans and says what to send.
//!
//! Formats, by the response's `Content-Type`:
//!
//! - `text/event-stream`: server-sent events. The generated text of
//!   OpenAI-style chunks (`choices[].delta.content`) is scanned as one text
//!   per choice, across events, so a canary split over two events is found
//!   and redacted; the events stay valid events with valid JSON. Other
//!   events are scanned one at a time (`sse.rs`). One event is held whole
//!   up to 1 MiB before its blank line; past that the stream ends with
//!   the error event ([`EVENT_LIMIT_CHECK`]).
//! - JSON (`application/json`, `+json`): buffered to the end (up to 8 MiB;
//!   a larger body is withheld, [`BODY_LIMIT_CHECK`]), then the
//!   text of every string value is scanned (not just
//!   `choices[].message.content`: other providers put text elsewhere);
//!   object keys are not. A redacted value is re-encoded in place and the
//!   rest of the body is left as sent (`json.rs`).
//! - other `text/*`: scanned as a stream of UTF-8 text (invalid bytes
//!   become U+FFFD).
//! - anything else (images, audio, no content type): only the size limit
//!   applies.
//!
//! Held back: to find a match split across chunks, the scanner releases
//! text only once no match could start in it, so up to the longest match
//! of the route's checks plus 4 bytes (`ResponseChecks::hold_bytes`) is
//! held and goes out with the next chunk or at the end. Every check's
//! match length is bounded: canaries by their length, personal data by
//! `pii::max_len`, a pattern by its own regex or its `max_match_len`. Each
//! push scans only the held text and the new chunk, never the whole body.
//!
//! Findings name the check, the kind, the action, a count and where the
//! first match was; never the matched text.
//!
//! ```
//! use std::path::Path;
//! use portcullis::response_checks::{ResponsePolicy, Step};
//! use portcullis::routes::RouteTable;
//!
//! let routes = RouteTable::parse(
//!     "routes:\n  - name: chat\n    method: POST\n    path: /v1/chat/completions\n    \
//!      action: invoke\n    resource: { type: Service, id: chat }\n",
//!     Path::new("routes.yaml"),
//! ).unwrap();
//! let policy = ResponsePolicy::parse(
//!     "checks:\n  - name: canary\n    canaries: [PCX-7f3a]\n    action: redact\n\
//!      routes:\n  chat: [canary]\n",
//!     &routes,
//! ).unwrap();
//! let checks = policy.for_route("chat").unwrap();
//! let mut scan = checks.scanner(Some("text/event-stream"));
//! let mut sent = Vec::new();
//! for chunk in [
//!     &b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"the code is PCX-\"}}]}\n\n"[..],
//!     b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"7f3a, done\"}}]}\n\ndata: [DONE]\n\n",
//! ] {
//!     match scan.push(chunk) {
//!         Step::Emit(bytes) => sent.extend(bytes),
//!         Step::Block(blocked) => sent.extend(blocked.body),
//!     }
//! }
//! if let Step::Emit(bytes) = scan.finish() {
//!     sent.extend(bytes);
//! }
//! let sent = String::from_utf8(sent).unwrap();
//! assert!(!sent.contains("7f3a"));
//! assert!(sent.contains("[REDACTED:canary]"));
//! assert_eq!(scan.findings()[0].count, 1);
//! ```

mod config;
mod detect;
mod json;
mod sse;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};

pub use self::config::{ResponseError, ResponsePolicy, RESPONSES_FILE};
use self::detect::{scan_whole, BlockedBy, Report, Rules, Window};
use crate::quota::usage::MAX_JSON_BYTES;
use crate::validate::rules::PiiKind;

/// The header that names a tagged response's findings to the client
/// (see [`header_value`]).
pub const FINDINGS_HEADER: &str = "x-portcullis-response-checks";

/// The status of a withheld buffered response: the gateway refuses what
/// the upstream answered (RFC 9110 section 15.6.3, 502 Bad Gateway).
pub const BLOCKED_STATUS: u16 = 502;

/// What a check does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it through and report it (a header, an audit field).
    Tag,
    /// Replace each match with `[REDACTED:<check name>]`.
    Redact,
    /// Withhold the response: a problem+json instead of a buffered body,
    /// an error event ending a stream.
    Block,
}

impl Action {
    /// The name in responses.yaml, metrics and findings.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Tag => "tag",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

/// What a finding found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One of the check's canary strings.
    Canary,
    /// The check's secret pattern.
    Pattern,
    /// Personal data of this kind.
    Pii(PiiKind),
    /// The body (or a stream's generated text) passed the size limit.
    MaxBytes,
}

impl Kind {
    /// `canary`, `pattern`, `max_bytes`, or the personal data kind
    /// (`email`, `phone`, `card`, `ssn`, `iban`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Canary => "canary",
            Kind::Pattern => "pattern",
            Kind::Pii(kind) => kind.as_str(),
            Kind::MaxBytes => "max_bytes",
        }
    }
}

/// As its name ([`Kind::as_str`]).
impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one check found in one response, without the matched text;
/// serializes as `{"check", "kind", "action", "count", "offset", "event"}`
/// for an audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check's name in responses.yaml.
    pub check: String,
    pub kind: Kind,
    pub action: Action,
    /// Matches found (1 for a size limit).
    pub count: u64,
    /// Where the first match starts, in bytes: in the generated text of
    /// its choice for an event stream, in the body otherwise (for JSON,
    /// where the string value holding it starts); for a size limit, the
    /// limit.
    pub offset: u64,
    /// For an event stream, the 0-based index of the event being read
    /// when the first match was found (a match split across events is
    /// found in a later event than the one it starts in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<u64>,
}

/// A response a check withholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The finding of the check that blocks.
    pub finding: Finding,
    /// Whether the response is an event stream: `body` is then the
    /// stream's last bytes (the events of this chunk before the one that
    /// blocks, then an error event); otherwise an RFC 9457 problem
    /// document to send instead of the body, with `status`.
    pub stream: bool,
    /// [`BLOCKED_STATUS`].
    pub status: u16,
    /// `text/event-stream` or `application/problem+json`.
    pub content_type: &'static str,
    /// The bytes to send, then end the response.
    pub body: Vec<u8>,
}

/// What to do with one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes in place of the chunk (maybe none, maybe more
    /// than came in: held text is released later).
    Emit(Vec<u8>),
    /// Send `body` and end the response; later calls emit nothing.
    Block(Blocked),
}

/// A route's compiled response checks; cheap to clone.
#[derive(Debug, Clone)]
pub struct ResponseChecks {
    rules: Arc<Rules>,
}

impl ResponseChecks {
    /// A scanner for one response with this `Content-Type` (parameters
    /// such as `charset` ignored; `None` when the response has none).
    pub fn scanner(&self, content_type: Option<&str>) -> ResponseScan {
        let essence = content_type
            .and_then(|t| t.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let format = if essence == "text/event-stream" {
            Format::Events(sse::Events::default())
        } else if essence == "application/json" || essence.ends_with("+json") {
            Format::Json(Vec::new())
        } else if essence.starts_with("text/") {
            Format::Text(Window::default(), Vec::new())
        } else {
            Format::Opaque
        };
        ResponseScan {
            rules: self.rules.clone(),
            format,
            report: Report::default(),
            seen: 0,
            over: false,
            done: false,
        }
    }

    /// The most text a scanner holds back, in bytes.
    pub fn hold_bytes(&self) -> usize {
        self.rules.hold
    }
}

/// The check name findings give for a server-sent event that passed
/// [`crate::quota::usage::MAX_EVENT_BYTES`] before its blank line: a built-in limit, not a
/// check of responses.yaml (whose names cannot hold `:`).
pub const EVENT_LIMIT_CHECK: &str = "portcullis:max_event_bytes";

/// The check name findings give for a JSON body that passed
/// [`MAX_JSON_BYTES`] (the usage reader's bound): a built-in limit, not a
/// check of responses.yaml (whose names cannot hold `:`).
pub const BODY_LIMIT_CHECK: &str = "portcullis:max_json_bytes";

enum Format {
    Events(sse::Events),
    Json(Vec<u8>),
    /// The window and the bytes of a character cut by the chunk's end.
    Text(Window, Vec<u8>),
    Opaque,
}

/// The scan of one response body.
pub struct ResponseScan {
    rules: Arc<Rules>,
    format: Format,
    report: Report,
    /// Body bytes seen.
    seen: u64,
    /// Whether the body passed `max_bytes` (reported once).
    over: bool,
    done: bool,
}

impl fmt::Debug for ResponseScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseScan")
            .field("seen", &self.seen)
            .field("findings", &self.report.findings)
            .finish_non_exhaustive()
    }
}

impl ResponseScan {
    /// Takes the next chunk of the body, cut anywhere.
    pub fn push(&mut self, chunk: &[u8]) -> Step {
        self.step(chunk, false)
    }

    /// Ends the body: releases what is held (for JSON, the whole body).
    pub fn finish(&mut self) -> Step {
        self.step(&[], true)
    }

    /// Feeds every chunk, then the end: the bytes released before a
    /// block (all of them when none), and the block. For whole bodies at
    /// hand: policy tests, tools.
    pub fn run<'a>(
        &mut self,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> (Vec<u8>, Option<Blocked>) {
        let mut sent = Vec::new();
        let mut chunks = chunks.into_iter();
        loop {
            let step = match chunks.next() {
                Some(chunk) => self.push(chunk),
                None => self.finish(),
            };
            match step {
                Step::Emit(bytes) if self.done => {
                    sent.extend(bytes);
                    return (sent, None);
                }
                Step::Emit(bytes) => sent.extend(bytes),
                Step::Block(blocked) => return (sent, Some(blocked)),
            }
        }
    }

    /// What was found so far, one entry per check and kind.
    pub fn findings(&self) -> &[Finding] {
        &self.report.findings
    }

    fn step(&mut self, chunk: &[u8], last: bool) -> Step {
        if self.done {
            return Step::Emit(Vec::new());
        }
        self.done = last;
        self.seen += chunk.len() as u64;
        let rules = self.rules.clone();
        let stream = matches!(self.format, Format::Events(_));
        if let (false, Some((name, action, limit))) = (stream, &rules.max_bytes) {
            if self.seen > *limit && !self.over {
                self.over = true;
                self.report.hit(name, Kind::MaxBytes, *action, *limit, None);
                if *action == Action::Block {
                    return self.block(name, Kind::MaxBytes);
                }
            }
        }
        // What goes out before a block (events of a stream that came
        // before the one that stops it).
        let mut before = Vec::new();
        let result = match &mut self.format {
            Format::Events(events) => match events.push(&rules, chunk, last, &mut self.report) {
                (bytes, None) => Ok(bytes),
                (bytes, Some(stop)) => {
                    before = bytes;
                    match stop {
                        sse::Outcome::Blocked(b) => Err(Some(b)),
                        sse::Outcome::EventTooLong => {
                            return self.block_after(before, EVENT_LIMIT_CHECK, Kind::MaxBytes)
                        }
                        _ => Err(None),
                    }
                }
            },
            Format::Json(body) => {
                body.extend_from_slice(chunk);
                // Held whole to be scanned, so bounded: a body too large
                // to scan is withheld, never passed on unscanned.
                if body.len() > MAX_JSON_BYTES {
                    *body = Vec::new();
                    let limit = MAX_JSON_BYTES as u64;
                    self.report
                        .hit(BODY_LIMIT_CHECK, Kind::MaxBytes, Action::Block, limit, None);
                    return self.block(BODY_LIMIT_CHECK, Kind::MaxBytes);
                }
                if !last {
                    return Step::Emit(Vec::new());
                }
                let body = std::mem::take(body);
                match json::scan(&rules, &body, &mut self.report, None) {
                    Ok(Some(out)) => Ok(out),
                    Ok(None) => scan_whole(
                        &rules,
                        &String::from_utf8_lossy(&body),
                        &mut self.report,
                        0,
                        None,
                    )
                    .map(String::into_bytes)
                    .map_err(Some),
                    Err(b) => Err(Some(b)),
                }
            }
            Format::Text(window, partial) => {
                partial.extend_from_slice(chunk);
                let text = decode(partial, last);
                window
                    .advance(&rules, &text, last, &mut self.report, None)
                    .map(String::into_bytes)
                    .map_err(Some)
            }
            Format::Opaque => Ok(chunk.to_vec()),
        };
        match result {
            Ok(bytes) => Step::Emit(bytes),
            Err(Some(BlockedBy(i))) => {
                let check = &rules.checks[i];
                let kind = self
                    .report
                    .findings
                    .iter()
                    .rev()
                    .find(|f| f.check == check.name)
                    .map_or(Kind::Canary, |f| f.kind);
                self.block_after(before, &check.name, kind)
            }
            Err(None) => {
                let name = rules.max_bytes.as_ref().map_or("", |m| m.0.as_str());
                self.block_after(before, name, Kind::MaxBytes)
            }
        }
    }

    fn block(&mut self, check: &str, kind: Kind) -> Step {
        self.block_after(Vec::new(), check, kind)
    }

    /// Blocks; a stream's error event follows `before`.
    fn block_after(&mut self, before: Vec<u8>, check: &str, kind: Kind) -> Step {
        self.done = true;
        let finding = self
            .report
            .findings
            .iter()
            .find(|f| f.check == check && f.kind == kind)
            .cloned()
            .expect("a blocking check reports its finding");
        let stream = matches!(self.format, Format::Events(_));
        let detail = format!("response check '{check}' ({kind}) withheld the response");
        let problem = serde_json::json!({
            "type": "urn:portcullis:problem:response_withheld",
            "title": "Response withheld",
            "status": BLOCKED_STATUS,
            "detail": detail,
        });
        let (content_type, body) = if stream {
            let event = serde_json::json!({"error": {
                "type": "response_withheld",
                "code": "response_withheld",
                "message": detail,
            }});
            let mut body = before;
            body.extend_from_slice(format!("event: error\ndata: {event}\n\n").as_bytes());
            ("text/event-stream", body)
        } else {
            ("application/problem+json", problem.to_string().into_bytes())
        };
        Step::Block(Blocked {
            finding,
            stream,
            status: BLOCKED_STATUS,
            content_type,
            body,
        })
    }
}

/// The text of `partial` up to a character the chunk cut (kept for the
/// next chunk, unless `last`); invalid bytes become U+FFFD.
fn decode(partial: &mut Vec<u8>, last: bool) -> String {
    let mut out = String::with_capacity(partial.len());
    let mut rest: &[u8] = partial;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).expect("valid prefix"));
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        rest = &after[n..];
                    }
                    None if last => {
                        out.push('\u{FFFD}');
                        rest = &[];
                        break;
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.len();
    partial.drain(..partial.len() - keep);
    out
}

/// The value of [`FINDINGS_HEADER`] for a response's findings:
/// `<check>;kind=<kind>;action=<action>;count=<n>`, comma-separated (no
/// matched text); `None` when there are none.
pub fn header_value(findings: &[Finding]) -> Option<String> {
    (!findings.is_empty()).then(|| {
        findings
            .iter()
            .map(Finding::summary)
            .collect::<Vec<_>>()
            .join(", ")
    })
}

impl Finding {
    /// `<check>;kind=<kind>;action=<action>;count=<n>`: one finding in the
    /// findings header and the response's audit record (no matched text).
    pub fn summary(&self) -> String {
        format!(
            "{};kind={};action={};count={}",
            self.check,
            self.kind,
            self.action.as_str(),
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const ROUTES: &str = "routes:\n  - name: chat\n    method: POST\n    path: /v1/chat\n    action: invoke\n    resource: { type: Service, id: chat }\n";

    fn checks(yaml: &str) -> ResponseChecks {
        let routes = RouteTable::parse(ROUTES, Path::new("routes.yaml")).unwrap();
        ResponsePolicy::parse(yaml, &routes)
            .unwrap()
            .for_route("chat")
            .unwrap()
            .clone()
    }

    use crate::routes::RouteTable;

    fn canary(action: &str) -> ResponseChecks {
        checks(&format!(
            "checks:\n  - name: canary\n    canaries: [PCX-7f3a9b]\n    action: {action}\nroutes:\n  chat: [canary]\n"
        ))
    }

    fn run(scan: &mut ResponseScan, chunks: &[&[u8]]) -> (Vec<u8>, Option<Blocked>) {
        scan.run(chunks.iter().copied())
    }

    fn event(content: &str) -> String {
        format!(
            "data: {}\n\n",
            serde_json::json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
        )
    }

    /// Pushes `chunk` until the scan blocks, checking that nothing goes
    /// out before and that it blocks once past `bound` bytes, not before.
    fn push_until_blocked(scan: &mut ResponseScan, chunk: &str, bound: usize) -> Blocked {
        let mut pushed = 0;
        loop {
            pushed += chunk.len();
            match scan.push(chunk.as_bytes()) {
                Step::Emit(bytes) => assert!(bytes.is_empty(), "held until its end"),
                Step::Block(blocked) => {
                    assert!(pushed > bound, "blocked at {pushed}, within {bound}");
                    return blocked;
                }
            }
            assert!(pushed <= bound + chunk.len(), "not bounded: {pushed} held");
        }
    }

    /// The generated text of an event stream, checking every event's JSON.
    fn generated(sent: &[u8]) -> String {
        let text = std::str::from_utf8(sent).unwrap();
        let mut out = String::new();
        for block in text.split("\n\n").filter(|b| !b.is_empty()) {
            let data = block.strip_prefix("data: ").expect("a data event");
            if data == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(data).expect("valid JSON");
            out.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
        out
    }

    #[test]
    fn canary_in_a_buffered_json_body_blocks_with_a_problem() {
        let mut scan = canary("block").scanner(Some("application/json"));
        let body = br#"{"choices":[{"message":{"content":"here: PCX-7f3a9b"}}]}"#;
        let (sent, blocked) = run(&mut scan, &[&body[..20], &body[20..]]);
        assert!(sent.is_empty());
        let blocked = blocked.expect("blocked");
        assert!(!blocked.stream);
        assert_eq!(blocked.status, 502);
        assert_eq!(blocked.content_type, "application/problem+json");
        assert!(!String::from_utf8_lossy(&blocked.body).contains("PCX"));
        assert_eq!(blocked.finding.kind, Kind::Canary);
    }

    #[test]
    fn redacted_json_stays_valid_and_keeps_the_rest_as_sent() {
        let mut scan = canary("redact").scanner(Some("application/json; charset=utf-8"));
        let body = br#"{"id": "x",  "text":"a \"PCX-7f3a9b\" b", "PCX-7f3a9b": 1}"#;
        let (sent, _) = run(&mut scan, &[body]);
        let sent = String::from_utf8(sent).unwrap();
        assert_eq!(
            sent,
            r#"{"id": "x",  "text":"a \"[REDACTED:canary]\" b", "PCX-7f3a9b": 1}"#
        );
        serde_json::from_str::<serde_json::Value>(&sent).unwrap();
    }

    #[test]
    fn canary_split_across_two_events_is_redacted_and_events_stay_valid() {
        let mut scan = canary("redact").scanner(Some("text/event-stream"));
        let a = event("secret is PCX-7f");
        let b = event("3a9b. Bye");
        let (sent, blocked) = run(
            &mut scan,
            &[a.as_bytes(), b.as_bytes(), b"data: [DONE]\n\n"],
        );
        assert!(blocked.is_none());
        assert_eq!(generated(&sent), "secret is [REDACTED:canary]. Bye");
        assert!(String::from_utf8_lossy(&sent).ends_with("data: [DONE]\n\n"));
        assert_eq!(scan.findings()[0].count, 1);
        assert_eq!(scan.findings()[0].event, Some(1));
    }

    #[test]
    fn canary_split_at_every_byte_offset_never_leaks() {
        let stream = [
            event("x PCX-7f"),
            event("3a9b y"),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let bytes = stream.as_bytes();
        for action in ["redact", "block"] {
            let checks = canary(action);
            for split in 0..=bytes.len() {
                let mut scan = checks.scanner(Some("text/event-stream"));
                let (sent, blocked) = run(&mut scan, &[&bytes[..split], &bytes[split..]]);
                let shown = String::from_utf8_lossy(&sent);
                assert!(
                    !generated(&sent).contains("7f3a9b"),
                    "{action} at {split}: {shown}"
                );
                if action == "redact" {
                    assert_eq!(generated(&sent), "x [REDACTED:canary] y", "at {split}");
                } else {
                    assert!(blocked.is_some_and(|b| b.stream), "at {split}");
                }
            }
        }
    }

    #[test]
    fn a_multibyte_character_split_across_chunks_is_untouched() {
        let text = "naïve café — 東京 ✓";
        let bytes = text.as_bytes();
        let checks = canary("redact");
        for split in 0..=bytes.len() {
            let mut scan = checks.scanner(Some("text/plain; charset=utf-8"));
            let (sent, _) = run(&mut scan, &[&bytes[..split], &bytes[split..]]);
            assert_eq!(String::from_utf8(sent).unwrap(), text, "at {split}");
        }
    }

    #[test]
    fn max_bytes_ends_a_stream_with_an_error_event() {
        let checks = checks(
            "checks:\n  - name: size\n    max_bytes: 10\n    action: block\nroutes:\n  chat: [size]\n",
        );
        let mut scan = checks.scanner(Some("text/event-stream"));
        let a = event("123456");
        let b = event("789012");
        let (sent, blocked) = run(&mut scan, &[a.as_bytes(), b.as_bytes()]);
        assert_eq!(generated(&sent), "123456");
        let blocked = blocked.expect("blocked");
        let body = String::from_utf8(blocked.body).unwrap();
        assert!(body.starts_with("event: error\ndata: {"), "{body}");
        assert!(body.ends_with("\n\n"));
        assert_eq!(blocked.finding.kind, Kind::MaxBytes);
        // Nothing after the block.
        assert_eq!(scan.push(b"data: more\n\n"), Step::Emit(Vec::new()));
    }

    #[test]
    fn an_event_that_never_ends_is_withheld_once_it_passes_the_event_bound() {
        // An upstream that sends no blank line: without a bound, the event
        // being read would grow for as long as the stream runs.
        let mut scan = canary("tag").scanner(Some("text/event-stream"));
        assert!(matches!(
            scan.push(event("hello").as_bytes()),
            Step::Emit(_)
        ));
        let chunk = format!("data: {}", "x".repeat(64 * 1024));
        let blocked = push_until_blocked(&mut scan, &chunk, crate::quota::usage::MAX_EVENT_BYTES);
        assert!(blocked.stream);
        assert_eq!(blocked.finding.check, "portcullis:max_event_bytes");
        assert_eq!(blocked.finding.kind, Kind::MaxBytes);
        let body = String::from_utf8(blocked.body).unwrap();
        assert!(body.starts_with("event: error\ndata: {"), "{body}");
        assert!(!body.contains("xxxx"), "the held event is not passed on");
        // The stream is over.
        assert_eq!(scan.push(b"\n\n"), Step::Emit(Vec::new()));
        assert_eq!(scan.finish(), Step::Emit(Vec::new()));
    }

    #[test]
    fn a_json_body_past_the_json_bound_is_withheld_not_passed_unscanned() {
        let mut scan = canary("tag").scanner(Some("application/json"));
        let chunk = format!("{{\"text\": \"{}", "z".repeat(256 * 1024));
        let blocked = push_until_blocked(&mut scan, &chunk, MAX_JSON_BYTES);
        assert!(!blocked.stream);
        assert_eq!(blocked.status, BLOCKED_STATUS);
        assert_eq!(blocked.content_type, "application/problem+json");
        assert_eq!(blocked.finding.check, "portcullis:max_json_bytes");
        assert_eq!(blocked.finding.kind, Kind::MaxBytes);
        let body = String::from_utf8(blocked.body).unwrap();
        assert!(body.contains("response_withheld"), "{body}");
        assert!(!body.contains("zzzz"));
        assert_eq!(scan.finish(), Step::Emit(Vec::new()));
    }

    #[test]
    fn an_event_just_under_the_event_bound_is_scanned_and_passed() {
        let mut scan = canary("tag").scanner(Some("text/event-stream"));
        let long = "y".repeat(crate::quota::usage::MAX_EVENT_BYTES - 64);
        let whole = event(&long);
        let (sent, blocked) = run(&mut scan, &[whole.as_bytes()]);
        assert!(blocked.is_none());
        assert_eq!(generated(&sent), long);
    }

    #[test]
    fn personal_data_and_secret_patterns_are_tagged_or_redacted() {
        let checks = checks(
            "checks:\n  - name: pd\n    pii: [email, card]\n    action: tag\n  - name: keys\n    pattern: 'sk-[A-Za-z0-9]{20}'\n    action: redact\nroutes:\n  chat: [pd, keys]\n",
        );
        let mut scan = checks.scanner(Some("text/plain"));
        let body = "mail bob@example.org key sk-abcdefghij0123456789 card 4111 1111 1111 1111.";
        let (sent, _) = run(&mut scan, &[body.as_bytes()]);
        assert_eq!(
            String::from_utf8(sent).unwrap(),
            "mail bob@example.org key [REDACTED:keys] card 4111 1111 1111 1111."
        );
        let kinds: Vec<_> = scan
            .findings()
            .iter()
            .map(|f| (f.check.as_str(), f.kind.as_str(), f.action))
            .collect();
        assert!(kinds.contains(&("pd", "email", Action::Tag)), "{kinds:?}");
        assert!(kinds.contains(&("pd", "card", Action::Tag)), "{kinds:?}");
        assert!(
            kinds.contains(&("keys", "pattern", Action::Redact)),
            "{kinds:?}"
        );
        let header = header_value(scan.findings()).unwrap();
        assert!(
            header.contains("keys;kind=pattern;action=redact;count=1"),
            "{header}"
        );
    }

    #[test]
    fn findings_never_hold_the_matched_text() {
        let mut scan = canary("tag").scanner(Some("text/event-stream"));
        let a = event("PCX-7f3a9b twice PCX-7f3a9b");
        let (sent, _) = run(&mut scan, &[a.as_bytes()]);
        assert_eq!(generated(&sent), "PCX-7f3a9b twice PCX-7f3a9b");
        let f = scan.findings();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].count, 2);
        assert!(!format!("{f:?}").contains("PCX"));
        assert_eq!(
            serde_json::to_value(f).unwrap(),
            serde_json::json!([{"check": "canary", "kind": "canary", "action": "tag", "count": 2, "offset": 0, "event": 0}])
        );
        assert!(!header_value(f).unwrap().contains("PCX"));
    }
}
