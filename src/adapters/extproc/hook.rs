//! The one place every response body passes in ext_proc: its headers,
//! each chunk (buffered: one chunk, the whole body; streamed: as it
//! arrives) and its end. The response checks (canaries, secrets, personal
//! data, size) plug in here: a hook may add headers for the client, pass a
//! chunk on, change it (redact), hold part of it back (a match that may
//! continue in the next chunk), or block. What it finds goes into the
//! response's audit record and the metrics.
//!
//! A route with response checks (`responses.yaml`) gets [`Checks`], over
//! `response_checks`; without, [`PassThrough`] passes everything
//! untouched.

use crate::response_checks::{self, ResponseChecks, ResponseScan, Step};

/// What a hook does with one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk {
    /// The bytes to pass on now, when they differ from the chunk (`None`:
    /// the chunk unchanged).
    pub replace: Option<Vec<u8>>,
    /// Block the response: buffered, the body becomes this problem
    /// document; streamed, this is the last thing the client gets (an
    /// error event) and the stream ends.
    pub block: Option<Block>,
}

/// A blocked response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The HTTP status when the headers have not left yet (buffered).
    pub status: u16,
    /// The body (a problem+json document, or an SSE error event).
    pub body: Vec<u8>,
    /// Its content type.
    pub content_type: String,
    /// True for a stream's error event (what was released before it goes
    /// out first), false for a problem document replacing the body.
    pub stream: bool,
}

/// Where every response passes (one per ext_proc stream).
pub trait ResponseHook: Send {
    /// True when the hook must see the body (else, with no reservation to
    /// settle either, Envoy is told not to send it).
    fn wants_body(&self) -> bool;
    /// The response's headers arrived: headers to set on the response to
    /// the client (a tag).
    fn headers(&mut self, status: u16, content_type: Option<&str>) -> Vec<(String, String)>;
    /// One chunk of the body; `end` on the last one.
    fn chunk(&mut self, chunk: &[u8], end: bool) -> Chunk;
    /// What it found, for the audit record (check, kind, action, count;
    /// never the matched text).
    fn findings(&self) -> Vec<String>;
    /// The header telling the client what was found, when anything was
    /// (set where headers can still change: with the response headers,
    /// or with a buffered body).
    fn tag(&self) -> Option<(String, String)>;
}

/// The hook of a route without response checks.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassThrough;

impl ResponseHook for PassThrough {
    fn wants_body(&self) -> bool {
        false
    }

    fn headers(&mut self, _status: u16, _content_type: Option<&str>) -> Vec<(String, String)> {
        Vec::new()
    }

    fn chunk(&mut self, _chunk: &[u8], _end: bool) -> Chunk {
        Chunk::default()
    }

    fn findings(&self) -> Vec<String> {
        Vec::new()
    }

    fn tag(&self) -> Option<(String, String)> {
        None
    }
}

/// A route's response checks over one response.
#[derive(Debug)]
pub struct Checks {
    checks: ResponseChecks,
    scan: Option<ResponseScan>,
}

impl Checks {
    /// The hook of a route with `checks`.
    pub fn new(checks: ResponseChecks) -> Checks {
        Checks { checks, scan: None }
    }
}

impl ResponseHook for Checks {
    fn wants_body(&self) -> bool {
        true
    }

    fn headers(&mut self, _status: u16, content_type: Option<&str>) -> Vec<(String, String)> {
        self.scan = Some(self.checks.scanner(content_type));
        Vec::new()
    }

    fn chunk(&mut self, chunk: &[u8], end: bool) -> Chunk {
        let scan = self.scan.get_or_insert_with(|| self.checks.scanner(None));
        let mut out = Vec::new();
        let steps = std::iter::once(scan.push(chunk));
        let mut block = None;
        for step in steps.chain(end.then(|| scan.finish())) {
            match step {
                Step::Emit(bytes) => out.extend(bytes),
                Step::Block(b) => {
                    block = Some(Block {
                        status: b.status,
                        body: b.body,
                        content_type: b.content_type.to_string(),
                        stream: b.stream,
                    });
                    break;
                }
            }
        }
        // A blocked stream sends what was released before the block, then
        // the block's error event.
        if let Some(b) = block.as_mut().filter(|b| b.stream) {
            if !out.is_empty() {
                out.extend(std::mem::take(&mut b.body));
                b.body = out;
                out = Vec::new();
            }
        }
        Chunk {
            replace: (out != chunk).then_some(out),
            block,
        }
    }

    fn findings(&self) -> Vec<String> {
        self.scan
            .iter()
            .flat_map(|s| s.findings())
            .map(response_checks::Finding::summary)
            .collect()
    }

    fn tag(&self) -> Option<(String, String)> {
        let findings = self.scan.as_ref()?.findings();
        response_checks::header_value(findings)
            .map(|v| (response_checks::FINDINGS_HEADER.to_string(), v))
    }
}
