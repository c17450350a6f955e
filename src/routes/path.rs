//! Path templates (`/v1/models/{model}`): compiling them, matching request
//! paths against them segment by segment, and decoding captured values. It
//! does not choose between routes (that is the table's job).

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
    /// Compared with the raw (still percent-encoded) request segment.
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
        let raw: Vec<&str> = rest.split('/').collect();
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

    /// `rest` is the request path without its leading `/`; no allocation.
    pub(super) fn matches(&self, rest: &str, segment_count: usize) -> bool {
        segment_count == self.segments.len()
            && self
                .segments
                .iter()
                .zip(rest.split('/'))
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
            check_path_chars(raw)?;
            return Ok(Segment::Literal(raw.into()));
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
        check_path_chars(prefix)?;
        check_path_chars(suffix)?;
        Ok(Segment::Capture {
            name: name.into(),
            prefix: prefix.into(),
            suffix: suffix.into(),
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

/// Whether a raw request segment is `.` or `..`, percent-encoded or not.
pub(super) fn is_dot_segment(raw: &str) -> bool {
    let dot = |s: &str| s == "." || s.eq_ignore_ascii_case("%2e");
    match raw.len() {
        1 | 3 => dot(raw),
        2 => raw == "..",
        4 => dot(&raw[..1]) && dot(&raw[1..]) || dot(&raw[..3]) && dot(&raw[3..]),
        6 => dot(&raw[..3]) && dot(&raw[3..]),
        _ => false,
    }
}

/// Percent-decodes a captured value, rejecting what could alter the path's
/// meaning downstream (an encoded separator, a control character).
pub(super) fn decode_capture(raw: &str) -> Result<String, BadCapture> {
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
    if value
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(BadCapture::ForbiddenCharacter);
    }
    if value == "." || value == ".." {
        return Err(BadCapture::DotValue);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use crate::routes::fixtures::*;
    use crate::routes::RouteMatch;

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
    fn literal_segments_compare_raw() {
        let table = load(PREDICT);
        assert_eq!(
            table.match_request("GET", "/v1/st%61tus"),
            RouteMatch::NotFound
        );
        assert_eq!(
            table.match_request("GET", "/v1%2Fstatus"),
            RouteMatch::NotFound
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
        ] {
            assert!(bad_path(&table, path).contains("is '.' or '..'"), "{path}");
        }
        assert_eq!(matched(&table, "GET", "/v1/models/...").1, "...");
        assert_eq!(matched(&table, "GET", "/v1/models/.hidden").1, ".hidden");
    }
}
