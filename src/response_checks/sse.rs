//! A streamed body of server-sent events (text/event-stream, HTML Living
//! Standard section 9.2.6): bytes are cut into events at blank lines
//! (CRLF, LF or CR line ends), and the generated text of OpenAI-style
//! completion chunks (`choices[].delta.content`) runs through one window
//! per choice, so a match split across events is found. Held text goes
//! out in the choice's next event, the one with its `finish_reason`, or
//! an event added before `data: [DONE]`. Other events are scanned one by
//! one as JSON or text.

use serde_json::Value;

use super::detect::{scan_whole, BlockedBy, Report, Rules, Window};
use super::{Action, Kind, EVENT_LIMIT_CHECK};
use crate::quota::usage::MAX_EVENT_BYTES;

/// The state of one event stream.
#[derive(Debug, Default)]
pub(super) struct Events {
    /// Bytes of an event not yet ended.
    pending: Vec<u8>,
    /// How far `pending` was read, and where its current line starts.
    read: usize,
    line_start: usize,
    /// Windows by choice index.
    windows: Vec<(u64, Window)>,
    /// The last completion chunk, as the frame for held text flushed at
    /// the end.
    template: Option<Value>,
    /// Events seen.
    pub events: u64,
    /// Bytes of generated text seen (before redaction).
    pub text_bytes: u64,
    /// Whether the text passed `max_bytes` (reported once).
    over: bool,
}

/// What one call produced.
pub(super) enum Outcome {
    /// Bytes to release.
    Emit(Vec<u8>),
    /// A check blocks.
    Blocked(BlockedBy),
    /// The generated text passed `max_bytes`.
    TooLong,
    /// One event passed [`MAX_EVENT_BYTES`] without its blank line: it
    /// cannot be scanned whole, so it is not passed on, and the stream
    /// ends (reported as [`EVENT_LIMIT_CHECK`], kind `max_bytes`).
    EventTooLong,
}

impl Events {
    /// Takes a chunk (or, with `last`, the end of the stream): the bytes
    /// to release, and why the stream stops, if it does (the bytes are
    /// then the events before the one that stopped it).
    pub fn push(
        &mut self,
        rules: &Rules,
        chunk: &[u8],
        last: bool,
        report: &mut Report,
    ) -> (Vec<u8>, Option<Outcome>) {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        // Resume where the last chunk's bytes were read to.
        let (mut i, mut line_start) = (self.read, self.line_start);
        while i < self.pending.len() {
            let b = self.pending[i];
            if b != b'\n' && b != b'\r' {
                i += 1;
                continue;
            }
            // A CR at the end of the chunk may be the first half of CRLF.
            if b == b'\r' && i + 1 == self.pending.len() && !last {
                break;
            }
            let eol = if b == b'\r' && self.pending.get(i + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            let blank = i == line_start;
            i += eol;
            line_start = i;
            if blank {
                let event = self.pending[start..i].to_vec();
                start = i;
                match self.event(rules, &event, report) {
                    Outcome::Emit(bytes) => out.extend_from_slice(&bytes),
                    other => return (out, Some(other)),
                }
            }
        }
        // The event not yet ended is held whole (it is scanned whole), so
        // it is bounded: an upstream that never sends a blank line does
        // not grow this without end.
        if !last && self.pending.len() - start > MAX_EVENT_BYTES {
            report.hit(
                EVENT_LIMIT_CHECK,
                Kind::MaxBytes,
                Action::Block,
                MAX_EVENT_BYTES as u64,
                Some(self.events),
            );
            self.pending = Vec::new();
            return (out, Some(Outcome::EventTooLong));
        }
        self.pending.drain(..start);
        (self.read, self.line_start) = (i - start, line_start - start);
        if last {
            // An event the upstream never ended with a blank line.
            if !self.pending.is_empty() {
                let mut event = std::mem::take(&mut self.pending);
                event.extend_from_slice(b"\n\n");
                match self.event(rules, &event, report) {
                    Outcome::Emit(bytes) => out.extend_from_slice(&bytes),
                    other => return (out, Some(other)),
                }
            }
            let last_event = self.events.saturating_sub(1);
            match self.flush(rules, report, last_event) {
                Outcome::Emit(bytes) => out.extend_from_slice(&bytes),
                other => return (out, Some(other)),
            }
        }
        (out, None)
    }

    /// One whole event, terminator included.
    fn event(&mut self, rules: &Rules, raw: &[u8], report: &mut Report) -> Outcome {
        let n = self.events;
        self.events += 1;
        // An event stream is UTF-8 (section 9.2.5): invalid bytes are
        // scanned, and passed on, as U+FFFD.
        let lossy = String::from_utf8_lossy(raw);
        let (text, raw): (&str, &[u8]) = (&lossy, lossy.as_bytes());
        let mut data: Option<String> = None;
        for line in lines(text) {
            if let Some(value) = field(line, "data") {
                let d = data.get_or_insert_with(String::new);
                if !d.is_empty() {
                    d.push('\n');
                }
                d.push_str(value);
            }
        }
        let Some(data) = data else {
            return Outcome::Emit(raw.to_vec());
        };
        if data.trim() == "[DONE]" {
            let mut out = match self.flush(rules, report, n) {
                Outcome::Emit(bytes) => bytes,
                other => return other,
            };
            out.extend_from_slice(raw);
            return Outcome::Emit(out);
        }
        let new_data = match serde_json::from_str::<Value>(&data) {
            Ok(mut chunk) if is_completion_chunk(&chunk) => {
                match self.chunk(rules, &mut chunk, report, n) {
                    Ok(true) => serde_json::to_string(&chunk).expect("a value encodes"),
                    Ok(false) => return Outcome::Emit(raw.to_vec()),
                    Err(outcome) => return outcome,
                }
            }
            parsed => {
                let scanned = match parsed {
                    Ok(_) => super::json::scan(rules, data.as_bytes(), report, Some(n))
                        .map(|s| String::from_utf8(s.unwrap_or_default()).unwrap_or_default()),
                    Err(_) => scan_whole(rules, &data, report, 0, Some(n)),
                };
                match scanned {
                    Ok(s) if s == data => return Outcome::Emit(raw.to_vec()),
                    Ok(s) => s,
                    Err(b) => return Outcome::Blocked(b),
                }
            }
        };
        Outcome::Emit(rewrite(text, &new_data).into_bytes())
    }

    /// Runs a completion chunk's content through its choice's window;
    /// `Ok(true)` when the chunk changed.
    fn chunk(
        &mut self,
        rules: &Rules,
        chunk: &mut Value,
        report: &mut Report,
        event: u64,
    ) -> Result<bool, Outcome> {
        let mut changed = false;
        let choices = chunk["choices"].as_array_mut().expect("checked");
        for (position, choice) in choices.iter_mut().enumerate() {
            let index = choice["index"].as_u64().unwrap_or(position as u64);
            let finished = choice["finish_reason"].is_string();
            let content = choice["delta"]["content"].as_str().map(str::to_owned);
            let Some(content) = content.or(finished.then(String::new)) else {
                continue;
            };
            self.text_bytes += content.len() as u64;
            if let Some((name, action, limit)) = &rules.max_bytes {
                if self.text_bytes > *limit && !self.over {
                    self.over = true;
                    report.hit(name, Kind::MaxBytes, *action, *limit, Some(event));
                    if *action == Action::Block {
                        return Err(Outcome::TooLong);
                    }
                }
            }
            let window = self.window(index);
            let released = window
                .advance(rules, &content, finished, report, Some(event))
                .map_err(Outcome::Blocked)?;
            if released != content {
                choice["delta"]["content"] = Value::String(released);
                changed = true;
            }
        }
        if self.template.is_none() {
            self.template = Some(chunk.clone());
        }
        Ok(changed)
    }

    fn window(&mut self, index: u64) -> &mut Window {
        let at = match self.windows.iter().position(|(i, _)| *i == index) {
            Some(at) => at,
            None => {
                self.windows.push((index, Window::default()));
                self.windows.len() - 1
            }
        };
        &mut self.windows[at].1
    }

    /// Releases the text every window still holds, as one event.
    fn flush(&mut self, rules: &Rules, report: &mut Report, event: u64) -> Outcome {
        let mut choices = Vec::new();
        for (index, window) in &mut self.windows {
            if !window.holds() {
                continue;
            }
            match window.advance(rules, "", true, report, Some(event)) {
                Ok(text) => choices.push(serde_json::json!({
                    "index": index,
                    "delta": {"content": text},
                    "finish_reason": null,
                })),
                Err(b) => return Outcome::Blocked(b),
            }
        }
        if choices.is_empty() {
            return Outcome::Emit(Vec::new());
        }
        let mut frame = self
            .template
            .clone()
            .unwrap_or_else(|| serde_json::json!({}));
        frame["choices"] = Value::Array(choices);
        let data = serde_json::to_string(&frame).expect("a value encodes");
        Outcome::Emit(format!("data: {data}\n\n").into_bytes())
    }
}

/// An OpenAI chat or text completion chunk: an object with a `choices`
/// array.
fn is_completion_chunk(value: &Value) -> bool {
    value.get("choices").is_some_and(Value::is_array)
}

/// The lines of an event (CRLF, LF or CR ends), without the blank line.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n')
        .flat_map(|l| l.split('\r'))
        .filter(|l| !l.is_empty())
}

/// The value of a `name: value` line (one space after the colon dropped).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?;
    if rest.is_empty() {
        return Some("");
    }
    let value = rest.strip_prefix(':')?;
    Some(value.strip_prefix(' ').unwrap_or(value))
}

/// The event with its data lines replaced by one holding `data`.
fn rewrite(text: &str, data: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut written = false;
    for line in lines(text) {
        if field(line, "data").is_some() {
            if !written {
                for part in data.split('\n') {
                    out.push_str("data: ");
                    out.push_str(part);
                    out.push('\n');
                }
                written = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    out
}
