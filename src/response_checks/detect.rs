//! The compiled checks of one route and the sliding window that runs them
//! over text arriving in pieces: what is final is reported, redacted and
//! released; what could still be the start of a match is held back. Body
//! formats (JSON, event streams) are the sibling modules' job.

use std::ops::Range;

use aho_corasick::{AhoCorasick, Input};
use regex::Regex;

use super::{Action, Finding, Kind};
use crate::validate::pii;
use crate::validate::rules::PiiKind;

/// What one check looks for.
#[derive(Debug)]
pub(super) enum Detector {
    /// Exact strings (many at once, leftmost-longest).
    Canaries(AhoCorasick),
    /// A secret pattern.
    Pattern(Regex),
    /// The personal data detectors of `validate::pii`.
    Pii(Vec<PiiKind>),
}

/// One compiled check.
#[derive(Debug)]
pub(super) struct Check {
    pub name: String,
    pub action: Action,
    pub detector: Detector,
    /// The longest match, in bytes.
    pub max_len: usize,
    /// `[REDACTED:<name>]`.
    pub marker: String,
}

impl Check {
    /// Calls `found` with every match that starts at or after `from`;
    /// `text[..from]` is context only.
    fn find(&self, text: &str, from: usize, found: &mut dyn FnMut(Range<usize>, Kind)) {
        match &self.detector {
            Detector::Canaries(ac) => {
                for m in ac.find_iter(Input::new(text).span(from..text.len())) {
                    found(m.range(), Kind::Canary);
                }
            }
            Detector::Pattern(re) => {
                let mut at = from;
                while let Some(m) = re.find_at(text, at) {
                    found(m.range(), Kind::Pattern);
                    at = if m.end() > m.start() {
                        m.end()
                    } else {
                        // An empty match: step over one character.
                        match text[m.end()..].chars().next() {
                            Some(c) => m.end() + c.len_utf8(),
                            None => break,
                        }
                    };
                }
            }
            Detector::Pii(kinds) => {
                let present = pii::Present::of(&text[from..]);
                for &kind in kinds.iter().filter(|k| present.may_hold(**k)) {
                    for r in pii::matches(text, from, kind) {
                        found(r, Kind::Pii(kind));
                    }
                }
            }
        }
    }
}

/// The checks of one route, compiled once per snapshot.
#[derive(Debug, Default)]
pub(super) struct Rules {
    /// The checks that look at text.
    pub checks: Vec<std::sync::Arc<Check>>,
    /// The size limit: (check name, action, bytes).
    pub max_bytes: Option<(String, Action, u64)>,
    /// What the window holds back: the longest match plus one character
    /// of look-ahead (a pattern's `\b` needs to see the next one).
    pub hold: usize,
}

/// Bytes of already released text kept in front of the window, for
/// look-behind (`\b`, the URL test of e-mail addresses).
const CONTEXT: usize = 64;
/// A match that runs into the end of the window is held whole while it
/// is shorter than this (a pattern whose `max_match_len` undercounts),
/// so it is redacted whole rather than in pieces.
const MAX_HELD_MATCH: usize = 64 * 1024;
/// One character of look-ahead (a pattern's `\b` needs to see it).
pub(super) const LOOKAHEAD: usize = 4;

/// The findings of one scan so far, one entry per check and kind.
#[derive(Debug, Default)]
pub(super) struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// Counts one match of `check` (never its text).
    pub fn hit(
        &mut self,
        check: &str,
        kind: Kind,
        action: Action,
        offset: u64,
        event: Option<u64>,
    ) {
        crate::metrics::global().response_check(check, action.as_str());
        match self
            .findings
            .iter_mut()
            .find(|f| f.check == check && f.kind == kind)
        {
            Some(f) => f.count += 1,
            None => self.findings.push(Finding {
                check: check.to_string(),
                kind,
                action,
                count: 1,
                offset,
                event,
            }),
        }
    }
}

/// A check that blocks the response, by index into `Rules::checks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BlockedBy(pub usize);

/// Text scanned as it arrives: `buf[..ctx]` was released already and is
/// kept as context; `buf[ctx..]` is held.
#[derive(Debug, Default)]
pub(super) struct Window {
    buf: String,
    ctx: usize,
    /// Offset in the whole text of `buf[ctx]`.
    base: u64,
}

impl Window {
    /// Whether text is held back.
    pub fn holds(&self) -> bool {
        self.buf.len() > self.ctx
    }

    /// Appends `text` and releases what is final (everything when `last`),
    /// redacted; reports the matches it releases. `Err` when a blocking
    /// check matched: nothing of this call is released.
    pub fn advance(
        &mut self,
        rules: &Rules,
        text: &str,
        last: bool,
        report: &mut Report,
        event: Option<u64>,
    ) -> Result<String, BlockedBy> {
        self.buf.push_str(text);
        let len = self.buf.len();
        let mut cut = if last {
            len
        } else {
            floor_char(&self.buf, len.saturating_sub(rules.hold)).max(self.ctx)
        };
        let mut hits: Vec<(Range<usize>, Kind, usize)> = Vec::new();
        for (i, check) in rules.checks.iter().enumerate() {
            check.find(&self.buf, self.ctx, &mut |r, kind| hits.push((r, kind, i)));
        }
        hits.sort_by_key(|(r, _, _)| (r.start, usize::MAX - r.end));
        // A match that could still change with more text: it may run
        // longer than its check's bound allows for, or it reaches the
        // look-ahead (a pattern whose `max_match_len` undercounts).
        let open = |(r, _, i): &(Range<usize>, Kind, usize)| {
            !last
                && (r.start + rules.checks[*i].max_len + LOOKAHEAD > len || r.end + LOOKAHEAD > len)
                && len - r.start < MAX_HELD_MATCH
        };
        // Released: up to the cut, and on to the end of every match that
        // starts before the end so far (a match overlapping a released
        // one is released, and redacted, with it). When such a chain
        // reaches an open match, hold it back from its first match.
        let (taken, end) = loop {
            let (mut taken, mut end) = (0, cut);
            while taken < hits.len() && hits[taken].0.start < end {
                end = end.max(hits[taken].0.end);
                taken += 1;
            }
            if !hits[..taken].iter().any(open) {
                break (taken, end);
            }
            cut = hits[..taken]
                .iter()
                .filter(|(r, _, _)| r.end > cut)
                .map(|(r, _, _)| r.start)
                .min()
                .unwrap_or(self.ctx)
                .max(self.ctx);
        };
        let hits = &hits[..taken];
        if let Some((r, kind, i)) = hits
            .iter()
            .find(|(_, _, i)| rules.checks[*i].action == Action::Block)
        {
            let check = &rules.checks[*i];
            let offset = self.base + (r.start - self.ctx) as u64;
            report.hit(&check.name, *kind, check.action, offset, event);
            return Err(BlockedBy(*i));
        }
        let mut out = String::with_capacity(end - self.ctx);
        let mut pos = self.ctx;
        for (r, kind, i) in hits {
            let check = &rules.checks[*i];
            let offset = self.base + (r.start - self.ctx) as u64;
            report.hit(&check.name, *kind, check.action, offset, event);
            if check.action == Action::Redact && r.end > pos {
                if r.start >= pos {
                    out.push_str(&self.buf[pos..r.start]);
                    out.push_str(&check.marker);
                }
                // An overlapping match extends the redaction before it.
                pos = r.end;
            }
        }
        if end > pos {
            out.push_str(&self.buf[pos..end]);
        }
        self.base += (end - self.ctx) as u64;
        let keep = floor_char(&self.buf, end.saturating_sub(CONTEXT));
        self.buf.drain(..keep);
        self.ctx = end - keep;
        Ok(out)
    }
}

/// The largest char boundary of `s` at or below `i`.
pub(super) fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Scans one whole piece of text (a JSON string, an event that is not a
/// completion chunk); `offset` and `event` locate its findings.
pub(super) fn scan_whole(
    rules: &Rules,
    text: &str,
    report: &mut Report,
    offset: u64,
    event: Option<u64>,
) -> Result<String, BlockedBy> {
    let mut window = Window {
        base: offset,
        ..Window::default()
    };
    window.advance(rules, text, true, report, event)
}
