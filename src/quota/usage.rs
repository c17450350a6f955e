//! The tokens a response says it used, read as the body passes: a JSON
//! body (OpenAI's `usage`, or a rule's own pointers) or a stream of
//! server-sent events (the same, in any event's data; with OpenAI's
//! `stream_options.include_usage` the last event before `[DONE]` carries
//! it). Plain parsing over bytes; no wire format, no store.

use std::collections::HashMap;

/// OpenAI's usage fields, read when a rule names no pointers.
pub const OPENAI_TOTAL: &str = "/usage/total_tokens";
/// OpenAI's prompt tokens (with [`OPENAI_COMPLETION`], when no total).
pub const OPENAI_PROMPT: &str = "/usage/prompt_tokens";
/// OpenAI's completion tokens.
pub const OPENAI_COMPLETION: &str = "/usage/completion_tokens";

/// The most bytes of a JSON response body read whole: the usage reader
/// does not parse a larger one (the usage is then missing; streams are
/// read event by event, see [`MAX_EVENT_BYTES`]); the response checks
/// (`response_checks`) withhold it, since they cannot scan it.
pub const MAX_JSON_BYTES: usize = 8 * 1024 * 1024;
/// The most bytes one server-sent event may take before its blank line,
/// for everything that reads events whole: the usage reader skips a longer
/// event; the response checks (`response_checks`) end the stream at it,
/// since they cannot scan it.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// What the response said: the last integer seen at each pointer asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    values: HashMap<String, u64>,
}

impl Usage {
    /// Usage from explicit pointer values (tests, tools).
    pub fn of(values: &[(&str, u64)]) -> Usage {
        Usage {
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    /// The tokens used by `pointers`' reckoning: their values summed (all
    /// must be present); with no pointers, OpenAI's `total_tokens`, else
    /// `prompt_tokens` + `completion_tokens`. `None`: the response did not
    /// say.
    pub fn tokens(&self, pointers: &[String]) -> Option<u64> {
        if pointers.is_empty() {
            if let Some(total) = self.values.get(OPENAI_TOTAL) {
                return Some(*total);
            }
            let p = self.values.get(OPENAI_PROMPT)?;
            let c = self.values.get(OPENAI_COMPLETION)?;
            return Some(p.saturating_add(*c));
        }
        pointers
            .iter()
            .map(|p| self.values.get(p).copied())
            .try_fold(0u64, |sum, v| v.map(|v| sum.saturating_add(v)))
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn read(&mut self, json: &serde_json::Value, pointers: &[String]) {
        for p in pointers {
            if let Some(n) = json.pointer(p).and_then(serde_json::Value::as_u64) {
                self.values.insert(p.clone(), n);
            }
        }
    }
}

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON document.
    Json,
    /// `text/event-stream`.
    Events,
    /// Not known yet: decided by the first bytes.
    Sniff,
}

impl Framing {
    /// From the response's `content-type`.
    pub fn of(content_type: Option<&str>) -> Framing {
        let ct = content_type.unwrap_or_default().to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            Framing::Events
        } else if ct.starts_with("application/json") || ct.contains("+json") {
            Framing::Json
        } else {
            Framing::Sniff
        }
    }
}

/// Reads usage from a body fed chunk by chunk.
#[derive(Debug)]
pub struct UsageReader {
    pointers: Vec<String>,
    /// The first segment of each pointer, as it appears in JSON text: an
    /// event is parsed only when its data mentions one.
    needles: Vec<String>,
    framing: Framing,
    /// JSON: the body so far. Events: the current line.
    buf: Vec<u8>,
    /// Events: the current event's data lines.
    data: Vec<u8>,
    /// The body (JSON) or one event was too large to read.
    overflowed: bool,
    usage: Usage,
}

impl UsageReader {
    /// A reader for `pointers` (with OpenAI's usage fields always among
    /// them) over a body framed as `framing` says.
    pub fn new(pointers: impl IntoIterator<Item = String>, framing: Framing) -> UsageReader {
        let mut all: Vec<String> = [OPENAI_TOTAL, OPENAI_PROMPT, OPENAI_COMPLETION]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for p in pointers {
            if !all.contains(&p) {
                all.push(p);
            }
        }
        let mut needles: Vec<String> = all
            .iter()
            .filter_map(|p| p.split('/').nth(1))
            .map(|s| format!("\"{}\"", s.replace("~1", "/").replace("~0", "~")))
            .collect();
        needles.sort();
        needles.dedup();
        UsageReader {
            pointers: all,
            needles,
            framing,
            buf: Vec::new(),
            data: Vec::new(),
            overflowed: false,
            usage: Usage::default(),
        }
    }

    /// Reads one chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.framing == Framing::Sniff {
            match chunk.iter().find(|b| !b.is_ascii_whitespace()) {
                None => {}
                Some(b'{') | Some(b'[') => self.framing = Framing::Json,
                Some(_) => self.framing = Framing::Events,
            }
        }
        match self.framing {
            Framing::Json | Framing::Sniff => {
                if self.buf.len() + chunk.len() > MAX_JSON_BYTES {
                    self.overflowed = true;
                    self.buf = Vec::new();
                } else if !self.overflowed {
                    self.buf.extend_from_slice(chunk);
                }
            }
            Framing::Events => {
                for &b in chunk {
                    if b == b'\n' {
                        let line = std::mem::take(&mut self.buf);
                        self.line(&line);
                    } else if self.buf.len() < MAX_EVENT_BYTES {
                        self.buf.push(b);
                    } else {
                        self.overflowed = true;
                    }
                }
            }
        }
    }

    /// The body has ended: what it said.
    pub fn finish(&mut self) -> &Usage {
        match self.framing {
            Framing::Json | Framing::Sniff => {
                if !self.overflowed && !self.buf.is_empty() {
                    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&self.buf) {
                        self.usage.read(&json, &self.pointers);
                    }
                }
                self.buf = Vec::new();
            }
            Framing::Events => {
                let line = std::mem::take(&mut self.buf);
                if !line.is_empty() {
                    self.line(&line);
                }
                self.dispatch();
            }
        }
        &self.usage
    }

    /// What was found so far.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// True when a part of the body was too large to be read.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            if self.data.len() + rest.len() > MAX_EVENT_BYTES {
                self.overflowed = true;
                return;
            }
            if !self.data.is_empty() {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(rest);
        }
    }

    fn dispatch(&mut self) {
        let data = std::mem::take(&mut self.data);
        if data.is_empty() || data == b"[DONE]" {
            return;
        }
        let mentions = self
            .needles
            .iter()
            .any(|n| data.windows(n.len()).any(|w| w == n.as_bytes()));
        if !mentions {
            return;
        }
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&data) {
            self.usage.read(&json, &self.pointers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(framing: Framing, pointers: &[&str], chunks: &[&[u8]]) -> Usage {
        let mut r = UsageReader::new(pointers.iter().map(|s| s.to_string()), framing);
        for c in chunks {
            r.feed(c);
        }
        r.finish().clone()
    }

    #[test]
    fn openai_usage_in_a_json_body_split_anywhere() {
        let body = br#"{"id":"c1","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":288,"total_tokens":300}}"#;
        for cut in [1, 17, body.len() - 3] {
            let u = read(Framing::Json, &[], &[&body[..cut], &body[cut..]]);
            assert_eq!(u.tokens(&[]), Some(300), "cut at {cut}");
        }
        // Without total_tokens: prompt + completion.
        let u = read(
            Framing::Sniff,
            &[],
            &[br#"{"usage":{"prompt_tokens":10,"completion_tokens":5}}"#],
        );
        assert_eq!(u.tokens(&[]), Some(15));
        assert_eq!(
            read(Framing::Json, &[], &[b"{\"choices\":[]}"]).tokens(&[]),
            None
        );
        assert_eq!(read(Framing::Json, &[], &[b"not json"]).tokens(&[]), None);
    }

    #[test]
    fn usage_in_the_last_event_of_a_stream_with_events_split_across_chunks() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}],\"usage\":null}\r\n\r\n",
            ": a comment\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":280,\"total_tokens\":300}}\n\n",
            "data: [DONE]\n\n"
        )
        .as_bytes();
        for cut in [5, 60, 140, stream.len() - 2] {
            let u = read(Framing::Events, &[], &[&stream[..cut], &stream[cut..]]);
            assert_eq!(u.tokens(&[]), Some(300), "cut at {cut}");
        }
        // A stream that ends before its usage event says nothing.
        let u = read(Framing::Events, &[], &[&stream[..100]]);
        assert_eq!(u.tokens(&[]), None);
    }

    #[test]
    fn separate_input_and_output_counts_summed_from_pointers_across_events() {
        // Anthropic's shape: input tokens in message_start, output tokens in
        // the last message_delta.
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":275}}\n\n",
        )
        .as_bytes();
        let pointers = [
            "/message/usage/input_tokens".to_string(),
            "/usage/output_tokens".to_string(),
        ];
        let u = read(
            Framing::Sniff,
            &["/message/usage/input_tokens", "/usage/output_tokens"],
            &[stream],
        );
        assert_eq!(u.tokens(&pointers), Some(300));
        // One of the two missing: the usage is missing.
        let u = read(
            Framing::Events,
            &["/usage/output_tokens"],
            &[&stream[100..]],
        );
        assert_eq!(u.tokens(&pointers), None);
    }

    #[test]
    fn framing_comes_from_the_content_type() {
        assert_eq!(
            Framing::of(Some("text/event-stream; charset=utf-8")),
            Framing::Events
        );
        assert_eq!(Framing::of(Some("application/json")), Framing::Json);
        assert_eq!(Framing::of(Some("application/problem+json")), Framing::Json);
        assert_eq!(Framing::of(None), Framing::Sniff);
    }
}
