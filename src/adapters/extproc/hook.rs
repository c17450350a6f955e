//! The one place every response body passes in ext_proc: its headers,
//! each chunk (buffered: one chunk, the whole body; streamed: as it
//! arrives) and its end. The response checks (canaries, secrets, personal
//! data, size) plug in here: a hook may add headers for the client, pass a
//! chunk on, change it (redact), hold part of it back (a match that may
//! continue in the next chunk), or block. What it finds goes into the
//! response's audit record and the metrics.
//!
//! Without response checks on the route, [`PassThrough`] passes everything
//! untouched.

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
    /// What it found, for the audit record (`kind: description`, never the
    /// matched text).
    fn findings(&self) -> Vec<String>;
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
}
