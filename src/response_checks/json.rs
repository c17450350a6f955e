//! A buffered JSON response body: the text of every string value (object
//! keys are field names, not output) is scanned, and a redacted value is
//! re-encoded in place, so the rest of the document stays byte for byte
//! as the upstream sent it and the result is still valid JSON.

use super::detect::{scan_whole, BlockedBy, Report, Rules};

/// Scans `body` (a complete JSON text) and returns it, redacted; `Ok(None)`
/// when it is not JSON (the caller scans it as text then).
pub(super) fn scan(
    rules: &Rules,
    body: &[u8],
    report: &mut Report,
    event: Option<u64>,
) -> Result<Option<Vec<u8>>, BlockedBy> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut copied = 0;
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i;
        let end = string_end(body, start);
        i = end;
        if is_key(body, end) {
            continue;
        }
        // A valid document: the token decodes.
        let Ok(text) = serde_json::from_slice::<String>(&body[start..end]) else {
            continue;
        };
        let scanned = scan_whole(rules, &text, report, start as u64, event)?;
        if scanned != text {
            out.extend_from_slice(&body[copied..start]);
            out.extend_from_slice(
                serde_json::to_string(&scanned)
                    .expect("a string encodes")
                    .as_bytes(),
            );
            copied = end;
        }
    }
    out.extend_from_slice(&body[copied..]);
    Ok(Some(out))
}

/// The index just past the closing quote of the string token opening at
/// `start` (the document is valid, so it closes).
fn string_end(body: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    body.len()
}

/// Whether the string token ending at `end` is an object key (a `:`
/// follows it).
fn is_key(body: &[u8], end: usize) -> bool {
    body[end..]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b':')
}
