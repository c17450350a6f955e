//! Path templates (`/v1/models/{model}`): compiling them, matching request
//! paths against them segment by segment, and decoding captured values. It
//! does not choose between routes (that is the table's job).

use std::borrow::Cow;

/// Why a path template in routes.yaml cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPathTemplate {
    #[error("it must start with '/'")]
    NoLeadingSlash,
    #[error("it has an empty segment ('//')")]
    EmptySegment,
    #[error("segment '{0}' can never match: requests with '.' or '..' segments are rejected")]
    DotSegment(String),
    #[error("segment '{0}' has more than one capture; a segment holds at most one '{{name}}'")]
    SeveralCaptures(String),
    #[error("segment '{0}' has an unbalanced '{{' or '}}'")]
    UnbalancedBrace(String),
    #[error("capture name '{0}' is not valid; use [a-z_][a-z0-9_]*")]
    InvalidCaptureName(String),
    #[error("capture '{0}' is used more than once")]
    RepeatedCapture(String),
    #[error("'%' must be followed by two hex digits")]
    BadPercentEscape,
    #[error("'{0}' is not allowed; query strings and fragments are stripped before matching")]
    QueryOrFragment(char),
    #[error("{0:?} is not allowed; percent-encode it")]
    UnencodedChar(char),
    #[error("'{0}' can never match: requests with an encoded '/', '\\' or control character are rejected")]
    NeverMatches(String),
}

/// Why a captured path segment is refused; the text is shown to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadCapture {
    #[error("invalid percent-encoding")]
    InvalidPercentEncoding,
    #[error("percent-encoded bytes are not UTF-8")]
    NotUtf8,
    #[error("an encoded '/', '\\' or control character is not allowed")]
    ForbiddenCharacter,
    #[error("'.' and '..' are not allowed")]
    DotValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PathTemplate {
    /// The segments after the leading `/`; `/` alone is one empty literal.
    pub(super) segments: Vec<Segment>,
    pub(super) capture_count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    /// Compared with the request segment in normal form (`normalize_path`).
    Literal(Box<str>),
    /// `prefix{name}suffix`: a non-empty value between literal affixes.
    Capture {
        name: Box<str>,
        prefix: Box<str>,
        suffix: Box<str>,
    },
}

impl PathTemplate {
    /// Every problem in `text`, or the compiled template.
    pub(super) fn compile(text: &str) -> Result<PathTemplate, Vec<InvalidPathTemplate>> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(vec![InvalidPathTemplate::NoLeadingSlash]);
        };
        let mut problems = Vec::new();
        let mut segments = Vec::new();
        let mut raw: Vec<&str> = rest.split('/').collect();
        // One trailing slash is not significant (see `normalize_path`).
        if raw.len() > 1 && raw.last() == Some(&"") {
            raw.pop();
        }
        for (i, raw_segment) in raw.iter().enumerate() {
            if raw_segment.is_empty() && i + 1 < raw.len() {
                problems.push(InvalidPathTemplate::EmptySegment);
            } else if *raw_segment == "." || *raw_segment == ".." {
                problems.push(InvalidPathTemplate::DotSegment(raw_segment.to_string()));
            } else {
                match Segment::compile(raw_segment) {
                    Ok(segment) => segments.push(segment),
                    Err(problem) => problems.push(problem),
                }
            }
        }
        let template = PathTemplate {
            capture_count: segments
                .iter()
                .filter(|s| matches!(s, Segment::Capture { .. }))
                .count(),
            segments,
        };
        let names: Vec<&str> = template.capture_names().collect();
        for (i, name) in names.iter().enumerate() {
            // Once per name, at its second use.
            if names[..i].iter().filter(|n| *n == name).count() == 1 {
                problems.push(InvalidPathTemplate::RepeatedCapture(name.to_string()));
            }
        }
        if problems.is_empty() {
            Ok(template)
        } else {
            Err(problems)
        }
    }

    pub(super) fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Capture { name, .. } => Some(&**name),
            Segment::Literal(_) => None,
        })
    }

    /// `segments` are the request path's segments (see [`segments`]).
    pub(super) fn matches(&self, segments: &[&str]) -> bool {
        segments.len() == self.segments.len()
            && self
                .segments
                .iter()
                .zip(segments)
                .all(|(segment, raw)| segment.matches(raw))
    }

    /// Whether every request path this template matches, `other` matches too.
    pub(super) fn covers(&self, other: &PathTemplate) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| a.covers(b))
    }
}

impl Segment {
    fn compile(raw: &str) -> Result<Segment, InvalidPathTemplate> {
        let opens = raw.matches('{').count();
        let closes = raw.matches('}').count();
        if opens == 0 && closes == 0 {
            return Ok(Segment::Literal(normal_literal(raw)?.into()));
        }
        if opens > 1 || closes > 1 {
            return Err(InvalidPathTemplate::SeveralCaptures(raw.to_owned()));
        }
        let (Some(open), Some(close)) = (raw.find('{'), raw.find('}')) else {
            return Err(InvalidPathTemplate::UnbalancedBrace(raw.to_owned()));
        };
        if close < open {
            return Err(InvalidPathTemplate::UnbalancedBrace(raw.to_owned()));
        }
        let (prefix, name, suffix) = (&raw[..open], &raw[open + 1..close], &raw[close + 1..]);
        check_capture_name(name)?;
        Ok(Segment::Capture {
            name: name.into(),
            prefix: normal_literal(prefix)?.into(),
            suffix: normal_literal(suffix)?.into(),
        })
    }

    fn matches(&self, raw: &str) -> bool {
        match self {
            Segment::Literal(literal) => **literal == *raw,
            Segment::Capture { prefix, suffix, .. } => {
                raw.len() > prefix.len() + suffix.len()
                    && raw.starts_with(&**prefix)
                    && raw.ends_with(&**suffix)
            }
        }
    }

    fn covers(&self, other: &Segment) -> bool {
        match (self, other) {
            (Segment::Literal(_), Segment::Capture { .. }) => false,
            (Segment::Literal(a), Segment::Literal(b)) => a == b,
            (Segment::Capture { .. }, Segment::Literal(b)) => self.matches(b),
            (
                Segment::Capture { prefix, suffix, .. },
                Segment::Capture {
                    prefix: other_prefix,
                    suffix: other_suffix,
                    ..
                },
            ) => other_prefix.starts_with(&**prefix) && other_suffix.ends_with(&**suffix),
        }
    }
}

fn check_capture_name(name: &str) -> Result<(), InvalidPathTemplate> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(InvalidPathTemplate::InvalidCaptureName(name.to_owned()))
    }
}

/// Template literals must be what a request path can hold raw (RFC 3986 `pchar`).
fn check_path_chars(literal: &str) -> Result<(), InvalidPathTemplate> {
    let bytes = literal.as_bytes();
    for (i, c) in literal.char_indices() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => {}
            '-' | '.' | '_' | '~' | '!' | '$' | '&' | '\'' | '(' | ')' | '*' | '+' | ',' | ';'
            | '=' | ':' | '@' => {}
            '%' if bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit) => {}
            '%' => return Err(InvalidPathTemplate::BadPercentEscape),
            '?' | '#' => return Err(InvalidPathTemplate::QueryOrFragment(c)),
            _ => return Err(InvalidPathTemplate::UnencodedChar(c)),
        }
    }
    Ok(())
}

/// A template literal in normalized form, as request segments are compared.
fn normal_literal(literal: &str) -> Result<String, InvalidPathTemplate> {
    check_path_chars(literal)?;
    match normalize_segment(literal) {
        Ok(normal) => Ok(normal.into_owned()),
        Err(BadCapture::ForbiddenCharacter) => {
            Err(InvalidPathTemplate::NeverMatches(literal.to_owned()))
        }
        Err(_) => Err(InvalidPathTemplate::BadPercentEscape),
    }
}

/// The path routes are matched against, and policies see as
/// `context.path`: the request path without its query string and fragment,
/// in the normal form of RFC 3986 section 6.2.2 so that equivalent
/// spellings of one path match the same route:
///
/// - percent-encoded unreserved characters (`ALPHA / DIGIT / "-" / "." /
///   "_" / "~"`, either hex case) are decoded (section 6.2.2.2), other
///   escapes get upper-case hex digits (section 6.2.2.1): `/v1/%6Dodels`
///   is `/v1/models`, `caf%c3%a9` is `caf%C3%A9`;
/// - one trailing slash is dropped (`/v1/status/` is `/v1/status`; `/`
///   stays `/`): upstream frameworks commonly serve both spellings alike,
///   so neither may escape the route of the other.
///
/// Refused, because an upstream could resolve them into another path than
/// the one authorized (the reason is safe to show the client): a path not
/// starting with `/`; an empty segment (`//`); a `.` or `..` segment,
/// also once decoded (`%2E%2E`); an invalid escape; an encoded `/` or `\`
/// (`%2F`, `%5C`), a raw `\`, or an encoded control character; a raw `#`
/// anywhere in the request target. A request never carries a fragment
/// (RFC 9112 section 3.2: the origin form is path and query), so a `#` is
/// either an unencoded character or a fragment a client sent anyway; an
/// upstream that reads it as part of the path resolves
/// `/v1/status#/../audit` to `/v1/audit`, while one that strips it sees
/// `/v1/status`.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, String> {
    match already_normal(path) {
        Some(normal) => Ok(Cow::Borrowed(normal)),
        None => normalize(path),
    }
}

/// The path without its query string when it is valid and in normal
/// form already (the common case: no escape, no `\`, no empty, `.` or `..`
/// segment, no trailing slash, no `#`), in one pass over its bytes; `None`
/// sends it through [`normalize`], which says what is wrong or rewrites it.
fn already_normal(path: &str) -> Option<&str> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }
    let mut end = bytes.len();
    let mut start = 1;
    let mut i = 1;
    loop {
        let b = if i < end { bytes[i] } else { b'/' };
        match b {
            b'%' | b'\\' | b'#' => return None,
            b'?' if bytes[i..].contains(&b'#') => return None,
            b'?' => {
                end = i;
                continue;
            }
            b'/' => {
                let segment = &bytes[start..i];
                // `/` alone is the one empty segment in normal form.
                if (segment.is_empty() && end > 1) || segment == b"." || segment == b".." {
                    return None;
                }
                if i >= end {
                    return Some(&path[..end]);
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
}

/// [`normalize_path`] for a path [`already_normal`] does not take.
fn normalize(path: &str) -> Result<Cow<'_, str>, String> {
    if path.contains('#') {
        return Err(
            "the request target has a raw '#', which no request carries; encode it as %23"
                .to_owned(),
        );
    }
    let path = path.split('?').next().unwrap_or_default();
    let Some(rest) = path.strip_prefix('/') else {
        return Err("the path must start with '/'".to_owned());
    };
    let mut normal: Cow<'_, str> = Cow::Borrowed(path);
    if rest.contains(['%', '\\']) {
        let mut owned = String::with_capacity(path.len());
        for (i, segment) in rest.split('/').enumerate() {
            owned.push('/');
            match normalize_segment(segment) {
                Ok(segment) => owned.push_str(&segment),
                Err(problem) => return Err(format!("path segment {}: {problem}", i + 1)),
            }
        }
        normal = Cow::Owned(owned);
    }
    let mut segments = normal[1..].split('/').enumerate().peekable();
    while let Some((i, segment)) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            return Err("the path has an empty segment ('//')".to_owned());
        }
        if segment == "." || segment == ".." {
            return Err(format!("path segment {} is '.' or '..'", i + 1));
        }
    }
    if normal.len() > 1 && normal.ends_with('/') {
        match &mut normal {
            Cow::Borrowed(path) => *path = &path[..path.len() - 1],
            Cow::Owned(path) => {
                path.pop();
            }
        }
    }
    Ok(normal)
}

/// One segment in normal form (see [`normalize_path`]); borrowed when it
/// has no escape.
fn normalize_segment(raw: &str) -> Result<Cow<'_, str>, BadCapture> {
    if raw.contains('\\') {
        return Err(BadCapture::ForbiddenCharacter);
    }
    if !raw.contains('%') {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut normal = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // Not '%': a whole UTF-8 character up to the next '%'.
            let end = raw[i..].find('%').map_or(raw.len(), |at| i + at);
            normal.push_str(&raw[i..end]);
            i = end;
            continue;
        }
        let hex = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
        let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) else {
            return Err(BadCapture::InvalidPercentEncoding);
        };
        let byte = (high * 16 + low) as u8;
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                normal.push(byte as char)
            }
            b'/' | b'\\' | 0..=0x1F | 0x7F => return Err(BadCapture::ForbiddenCharacter),
            _ => {
                normal.push('%');
                normal.push_str(&format!("{byte:02X}"));
            }
        }
        i += 3;
    }
    Ok(Cow::Owned(normal))
}

/// The segments of a path in normal form, after its leading `/`: what
/// `path[1..].split('/')` yields, in one pass without a searcher.
pub(super) fn segments(path: &str) -> smallvec::SmallVec<[&str; 8]> {
    let rest = &path[1..];
    let mut out = smallvec::SmallVec::new();
    let mut start = 0;
    for (i, b) in rest.bytes().enumerate() {
        if b == b'/' {
            out.push(&rest[start..i]);
            start = i + 1;
        }
    }
    out.push(&rest[start..]);
    out
}

/// Percent-decodes a captured value, rejecting what could alter the path's
/// meaning downstream (an encoded separator, a control character).
pub(super) fn decode_capture(raw: &str) -> Result<String, BadCapture> {
    if raw.bytes().any(|b| b == b'%') {
        return decode_escaped(raw);
    }
    // Nothing to decode: the value is the segment itself.
    check_capture(raw)?;
    Ok(raw.to_owned())
}

/// [`decode_capture`] byte by byte, for a value with escapes.
fn decode_escaped(raw: &str) -> Result<String, BadCapture> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
            let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) else {
                return Err(BadCapture::InvalidPercentEncoding);
            };
            decoded.push((high * 16 + low) as u8);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let value = String::from_utf8(decoded).map_err(|_| BadCapture::NotUtf8)?;
    check_capture(&value)?;
    Ok(value)
}

/// A decoded capture's characters: no separator, no control character,
/// not `.` or `..`.
fn check_capture(value: &str) -> Result<(), BadCapture> {
    if value
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(BadCapture::ForbiddenCharacter);
    }
    if value == "." || value == ".." {
        return Err(BadCapture::DotValue);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::routes::fixtures::*;

    /// Paths built from pieces that exercise every rule of the normal
    /// form: escapes, separators, dot segments, queries and fragments.
    fn path_corpus() -> Vec<String> {
        const PIECES: &[&str] = &[
            "", ".", "..", "...", "a", "v1", "%41", "%2e", "a%2F", "%c3%a9", "\\", "é", "?q", "#f",
            "?q#f", "?%zz", "?/../", "%", "a b",
        ];
        let mut out = vec![String::new(), "/".to_owned(), "a/b".to_owned()];
        for a in PIECES {
            for b in PIECES {
                for c in PIECES {
                    out.push(format!("/{a}/{b}{c}"));
                    out.push(format!("/{a}{b}/{c}"));
                    out.push(format!("/{a}/{b}/{c}/"));
                }
            }
        }
        out
    }

    #[test]
    fn paths_in_normal_form_take_the_fast_path_to_the_same_answer() {
        use super::{already_normal, normalize, normalize_path, segments};
        let mut fast = 0;
        for path in path_corpus() {
            let slow = normalize(&path);
            assert_eq!(normalize_path(&path), slow, "{path:?}");
            if let Some(normal) = already_normal(&path) {
                fast += 1;
                assert_eq!(slow.as_deref(), Ok(normal), "{path:?}");
            }
            if let Ok(normal) = slow {
                let split: Vec<&str> = normal[1..].split('/').collect();
                assert_eq!(segments(&normal).as_slice(), split.as_slice(), "{path:?}");
            }
        }
        assert!(fast > 1000, "{fast}");
    }

    #[test]
    fn captures_without_escapes_decode_as_escaped_ones_do() {
        use super::{decode_capture, decode_escaped};
        for raw in [
            "a",
            ".",
            "..",
            "...",
            ".hidden",
            "a+b",
            "é",
            "caf\u{e9}",
            "a\\b",
            "a\u{7f}",
            "a\u{85}b",
            "a\tb",
            "x:y@z",
            "",
        ] {
            assert_eq!(decode_capture(raw), decode_escaped(raw), "{raw:?}");
        }
    }

    #[test]
    fn problems_read_exactly_as_operators_and_clients_see_them() {
        use super::{BadCapture, InvalidPathTemplate as T};
        let template = [
            (T::NoLeadingSlash, "it must start with '/'"),
            (T::EmptySegment, "it has an empty segment ('//')"),
            (
                T::DotSegment("..".into()),
                "segment '..' can never match: requests with '.' or '..' segments are rejected",
            ),
            (
                T::SeveralCaptures("{a}{b}".into()),
                "segment '{a}{b}' has more than one capture; a segment holds at most one '{name}'",
            ),
            (
                T::UnbalancedBrace("{a".into()),
                "segment '{a' has an unbalanced '{' or '}'",
            ),
            (
                T::InvalidCaptureName("A".into()),
                "capture name 'A' is not valid; use [a-z_][a-z0-9_]*",
            ),
            (
                T::RepeatedCapture("a".into()),
                "capture 'a' is used more than once",
            ),
            (
                T::BadPercentEscape,
                "'%' must be followed by two hex digits",
            ),
            (
                T::QueryOrFragment('#'),
                "'#' is not allowed; query strings and fragments are stripped before matching",
            ),
            (
                T::UnencodedChar(' '),
                "' ' is not allowed; percent-encode it",
            ),
            (
                T::NeverMatches("a%2F".into()),
                "'a%2F' can never match: requests with an encoded '/', '\\' or control character are rejected",
            ),
        ];
        for (problem, text) in template {
            assert_eq!(problem.to_string(), text);
        }
        let capture = [
            (
                BadCapture::InvalidPercentEncoding,
                "invalid percent-encoding",
            ),
            (BadCapture::NotUtf8, "percent-encoded bytes are not UTF-8"),
            (
                BadCapture::ForbiddenCharacter,
                "an encoded '/', '\\' or control character is not allowed",
            ),
            (BadCapture::DotValue, "'.' and '..' are not allowed"),
        ];
        for (problem, text) in capture {
            assert_eq!(problem.to_string(), text);
        }
    }

    #[test]
    fn invalid_path_templates_are_rejected() {
        let resource = "    resource: {type: A, id: a}\n";
        for (path, needle) in [
            ("v1/models", "it must start with '/'"),
            ("/v1//models", "it has an empty segment ('//')"),
            ("/v1/./models", "segment '.' can never match"),
            ("/v1/{a}{b}", "segment '{a}{b}' has more than one capture"),
            ("/v1/{a", "segment '{a' has an unbalanced"),
            ("/v1/}a{", "segment '}a{' has an unbalanced"),
            ("/v1/{Model}", "capture name 'Model' is not valid"),
            ("/v1/{}", "capture name '' is not valid"),
            ("/v1/{a}/{a}", "capture 'a' is used more than once"),
            ("/v1/a b", "' ' is not allowed; percent-encode it"),
            ("/v1/a%zz", "'%' must be followed by two hex digits"),
            ("\"/v1/a?b=1\"", "'?' is not allowed; query strings"),
        ] {
            let text = route_with(METHOD, &format!("    path: {path}\n"), ACTION, resource);
            assert_one_error(&text, 5, needle);
        }
    }

    #[test]
    fn every_problem_in_one_path_is_reported() {
        let text = route_with(
            METHOD,
            "    path: /v1//{A}/{a}{b}\n",
            ACTION,
            "    resource: {type: A, id: a}\n",
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 3, "{errors:#?}");
    }

    #[test]
    fn matches_prefix_and_suffix_captures() {
        let table = load(&two_routes(
            ("GET", "/api/v{n}/{name}:predict"),
            ("GET", "/api/{any}/{name}"),
        ));
        let (name, _, captures) = matched(&table, "GET", "/api/v2/m:predict");
        assert_eq!(name, "first");
        assert_eq!(captures, [("n", "2".to_owned()), ("name", "m".to_owned())]);
        // The capture must be non-empty, and the suffix sits at the end.
        assert_eq!(matched(&table, "GET", "/api/v/m:predict").0, "second");
        assert_eq!(matched(&table, "GET", "/api/v2/:predict").0, "second");
        assert_eq!(matched(&table, "GET", "/api/v2/m:predict:x").0, "second");
        let (_, _, captures) = matched(&table, "GET", "/api/v2/a:predict:predict");
        assert_eq!(captures[1], ("name", "a:predict".to_owned()));
    }

    #[test]
    fn percent_decodes_captured_values() {
        let table = load(PREDICT);
        assert_eq!(
            matched(&table, "GET", "/v1/models/caf%C3%A9%20au%20lait").1,
            "café au lait"
        );
        assert_eq!(matched(&table, "GET", "/v1/models/a+b%2b").1, "a+b+");
    }

    #[test]
    fn percent_encoded_unreserved_path_matches_the_protected_route() {
        let table = load(PREDICT);
        for path in [
            "/v1/st%61tus",
            "/v1/%73%74%61%74%75%73",
            "/%76%31/status",
            "/v1/sta%74us?x=1",
        ] {
            assert_eq!(matched(&table, "GET", path).0, "status", "{path}");
        }
        let (name, id, _) = matched(&table, "GET", "/v1/%6Dodels/fraud%2ddetector");
        assert_eq!((name, id.as_str()), ("model", "fraud-detector"));
        assert_eq!(matched(&table, "GET", "/v1/%6dodels/x%7e").1, "x~");
        // Other escapes keep their meaning: %C3%A9 is not 'C3A9'.
        assert_eq!(matched(&table, "GET", "/v1/models/caf%c3%a9").1, "café");
    }

    #[test]
    fn encoded_separators_anywhere_in_the_path_are_bad_paths() {
        let table = load(PREDICT);
        for (path, segment) in [
            ("/v1%2Fstatus", 1),
            ("/v1%2fmodels%2fm", 1),
            ("/v1/st%5Catus", 2),
            ("/v1\\status", 1),
            ("/nowhere/a%00", 2),
        ] {
            assert_eq!(
                bad_path(&table, path),
                format!(
                    "path segment {segment}: an encoded '/', '\\' or control character is not allowed"
                ),
                "{path}"
            );
        }
        assert_eq!(
            bad_path(&table, "/nowhere/%G1"),
            "path segment 2: invalid percent-encoding"
        );
    }

    #[test]
    fn normal_form_of_a_path_is_what_policies_see() {
        use super::normalize_path;
        for (raw, normal) in [
            ("/v1/%6Dodels/m?q=%41", "/v1/models/m"),
            ("/v1/models/caf%c3%a9", "/v1/models/caf%C3%A9"),
            ("/v1/status/", "/v1/status"),
            ("/", "/"),
            ("/?x", "/"),
            ("/a%2e", "/a."),
        ] {
            assert_eq!(normalize_path(raw).unwrap(), normal, "{raw}");
        }
    }

    #[test]
    fn templates_are_compared_in_normal_form() {
        let table = load(&two_routes(
            ("GET", "/v1/%6dodels/{m}"),
            ("GET", "/a/caf%c3%a9"),
        ));
        assert_eq!(matched(&table, "GET", "/v1/models/x").0, "first");
        assert_eq!(matched(&table, "GET", "/a/caf%C3%A9").0, "second");
        let text = two_routes(("GET", "/v1/a%2Fb"), ("GET", "/v2"));
        assert_one_error(
            &text,
            4,
            "'a%2Fb' can never match: requests with an encoded '/', '\\' or control character are rejected",
        );
    }

    #[test]
    fn bad_captured_values_are_bad_paths() {
        let table = load(PREDICT);
        for path in [
            "/v1/models/a%2Fb",
            "/v1/models/a%2fb",
            "/v1/models/a%5Cb",
            "/v1/models/a%00b",
            "/v1/models/a%0Ab",
            "/v1/models/a%7F",
            "/v1/models/a%",
            "/v1/models/a%4",
            "/v1/models/a%zz",
            "/v1/models/%FF",
            "/v1/models/%C3",
        ] {
            let reason = bad_path(&table, path);
            assert!(reason.starts_with("path segment 3: "), "{path}: {reason}");
        }
        assert_eq!(
            bad_path(&table, "/v1/models/a%2Fb"),
            "path segment 3: an encoded '/', '\\' or control character is not allowed"
        );
        assert_eq!(
            bad_path(&table, "/v1/models/%zz"),
            "path segment 3: invalid percent-encoding"
        );
    }

    #[test]
    fn dot_segments_are_bad_paths() {
        let table = load(PREDICT);
        for path in [
            "/v1/models/..",
            "/v1/models/.",
            "/v1/models/%2e%2E",
            "/v1/models/.%2e",
            "/v1/models/%2e.",
            "/v1/models/%2E",
            "/v1/../v1/status",
            "/../x",
            "/v1/%2E%2e/v1/status",
            "/v1/models/%2e%2e/",
            "/v1/models/..?x",
        ] {
            assert!(bad_path(&table, path).contains("is '.' or '..'"), "{path}");
        }
        assert_eq!(matched(&table, "GET", "/v1/models/...").1, "...");
        assert_eq!(matched(&table, "GET", "/v1/models/.hidden").1, ".hidden");
    }
}
