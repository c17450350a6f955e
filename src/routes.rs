//! The route table: parses, validates and compiles `policies/routes.yaml`, and
//! matches requests against it. It does not authenticate or authorize.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::EntityTypeName;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_yaml_ng::Value;

pub use crate::validate::rules::SignatureMode;
use crate::validate::rules::{self, BodySpec, ModelRef};

/// A problem in the route table, located at a line of its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct RouteError {
    /// The file as given to [`RouteTable::parse`].
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

/// What happens to a request that matches no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Answer 404.
    #[default]
    Deny,
    /// Let it through without a decision.
    Allow,
}

/// Whether a route admits anonymous requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Authentication {
    /// Anonymous requests are denied (401).
    #[default]
    Required,
    /// Anonymous requests are allowed (and still authorized).
    Optional,
}

/// The HTTP method a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    /// Every method, including non-standard ones.
    Any,
}

impl Method {
    /// Every method but `Any`, in the order an `Allow` header lists them.
    const NAMED: [Method; 7] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
        Method::Options,
    ];

    /// The name as written in routes.yaml and in requests, e.g. `GET`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Any => "ANY",
        }
    }

    /// Whether a request's method (case-sensitive, e.g. `GET`) is accepted.
    pub fn accepts(self, method: &str) -> bool {
        self == Method::Any || self.as_str() == method
    }

    fn covers(self, other: Method) -> bool {
        self == Method::Any || self == other
    }
}

impl FromStr for Method {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Method::NAMED
            .into_iter()
            .chain([Method::Any])
            .find(|m| m.as_str() == s)
            .ok_or(())
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated, compiled route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Unique within the table, `[a-z0-9_-]+`.
    pub name: String,
    pub method: Method,
    /// The path template as written, e.g. `/v1/models/{model}`.
    pub path: String,
    /// The Cedar action id, e.g. `invoke` for `Action::"invoke"`.
    pub action: String,
    /// The Cedar entity type name of the resource, e.g. `Ns::ModelVersion`.
    pub resource_type: String,
    /// The resource id template as written, e.g. `{model}/{version}`.
    pub resource_id_template: String,
    /// Whether to answer 404 when the resource entity is not known.
    pub must_exist: bool,
    pub authentication: Authentication,
    /// Lower-case request header names copied into the Cedar context.
    pub context_headers: Vec<String>,
    /// Which captures name a model in models.yaml and its version.
    pub model: Option<ModelRef>,
    /// What the body must be (`None`: the body is not looked at).
    pub body: Option<BodySpec>,
    /// Request headers the upstream must not see (minimisation).
    pub headers_to_remove: Vec<String>,
    /// Whether requests must carry a payload signature.
    pub signature: SignatureMode,
    entity_type: EntityTypeName,
    template: PathTemplate,
    resource_id: Vec<IdPart>,
}

impl Route {
    /// `resource_type`, parsed.
    pub fn resource_entity_type(&self) -> &EntityTypeName {
        &self.entity_type
    }

    /// The names of the path's captures, in path order.
    pub fn captures(&self) -> impl Iterator<Item = &str> {
        self.template.capture_names()
    }

    /// The resource id for these captures (e.g. after a model alias such
    /// as `latest` was resolved to a version).
    pub fn resource_id(&self, captures: &[(&str, String)]) -> String {
        render_id(&self.resource_id, captures)
    }

    fn bind(&self, rest: &str) -> RouteMatch<'_> {
        let mut captures = Vec::with_capacity(self.template.capture_count);
        for (position, (segment, raw)) in self
            .template
            .segments
            .iter()
            .zip(rest.split('/'))
            .enumerate()
        {
            if let Segment::Capture {
                name,
                prefix,
                suffix,
            } = segment
            {
                match decode_capture(&raw[prefix.len()..raw.len() - suffix.len()]) {
                    Ok(value) => captures.push((&**name, value)),
                    Err(problem) => {
                        return RouteMatch::BadPath {
                            reason: format!("path segment {}: {problem}", position + 1),
                        }
                    }
                }
            }
        }
        let resource_id = render_id(&self.resource_id, &captures);
        RouteMatch::Matched {
            route: self,
            resource_id,
            captures,
        }
    }
}

/// The outcome of matching a request against the route table.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMatch<'a> {
    /// The first route matching both method and path.
    Matched {
        route: &'a Route,
        resource_id: String,
        /// Decoded capture values by name, in path order.
        captures: Vec<(&'a str, String)>,
    },
    /// Some route has this path, none this method (405 with `Allow`).
    MethodNotAllowed { allowed: Vec<&'a str> },
    /// No route has this path; see [`RouteTable::unmatched`].
    NotFound,
    /// The path is malformed; `reason` is safe to show the client.
    BadPath { reason: String },
}

/// The compiled route table of one `routes.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    unmatched: Unmatched,
    routes: Vec<Route>,
}

impl RouteTable {
    /// Parses and validates routes.yaml text; `file` is used in error messages only.
    ///
    /// Every problem is reported, sorted by line.
    pub fn parse(text: &str, file: &Path) -> Result<RouteTable, Vec<RouteError>> {
        let mut checker = Checker {
            text,
            file,
            errors: Vec::new(),
        };
        let table = checker.check();
        let mut errors = checker.errors;
        match table {
            Some(table) if errors.is_empty() => Ok(table),
            _ => {
                errors.sort_by_key(|e| e.line);
                Err(errors)
            }
        }
    }

    /// In file order: route `k` is the `k`th in the file (see [`route_line`]).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// What to do with a request that matches no route.
    pub fn unmatched(&self) -> Unmatched {
        self.unmatched
    }

    /// Matches a request; `path` is the raw :path header (may include a query string).
    ///
    /// The first route in file order matching both method and path wins.
    pub fn match_request<'a>(&'a self, method: &str, path: &str) -> RouteMatch<'a> {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let Some(rest) = path.strip_prefix('/') else {
            return RouteMatch::BadPath {
                reason: "the path must start with '/'".to_owned(),
            };
        };
        // The upstream may resolve dot segments or merge slashes after we
        // matched, and so serve a path other than the one we authorized.
        let mut segment_count = 0;
        let mut previous_is_empty = false;
        for segment in rest.split('/') {
            segment_count += 1;
            if previous_is_empty {
                return RouteMatch::BadPath {
                    reason: "the path has an empty segment ('//')".to_owned(),
                };
            }
            if is_dot_segment(segment) {
                return RouteMatch::BadPath {
                    reason: format!("path segment {segment_count} is '.' or '..'"),
                };
            }
            previous_is_empty = segment.is_empty();
        }

        let mut path_matched = false;
        for route in &self.routes {
            if route.template.matches(rest, segment_count) {
                if route.method.accepts(method) {
                    return route.bind(rest);
                }
                path_matched = true;
            }
        }
        if !path_matched {
            return RouteMatch::NotFound;
        }
        let mut allowed = [false; Method::NAMED.len()];
        for route in &self.routes {
            if route.template.matches(rest, segment_count) {
                if let Some(i) = Method::NAMED.iter().position(|m| *m == route.method) {
                    allowed[i] = true;
                }
            }
        }
        RouteMatch::MethodNotAllowed {
            allowed: Method::NAMED
                .iter()
                .zip(allowed)
                .filter(|(_, allowed)| *allowed)
                .map(|(m, _)| m.as_str())
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Path templates

#[derive(Debug, Clone, PartialEq, Eq)]
struct PathTemplate {
    /// The segments after the leading `/`; `/` alone is one empty literal.
    segments: Vec<Segment>,
    capture_count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
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
    fn compile(text: &str) -> Result<PathTemplate, Vec<String>> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(vec!["it must start with '/'".to_owned()]);
        };
        let mut problems = Vec::new();
        let mut segments = Vec::new();
        let raw: Vec<&str> = rest.split('/').collect();
        for (i, raw_segment) in raw.iter().enumerate() {
            if raw_segment.is_empty() && i + 1 < raw.len() {
                problems.push("it has an empty segment ('//')".to_owned());
            } else if *raw_segment == "." || *raw_segment == ".." {
                problems.push(format!(
                    "segment '{raw_segment}' can never match: requests with '.' or '..' segments are rejected"
                ));
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
                problems.push(format!("capture '{name}' is used more than once"));
            }
        }
        if problems.is_empty() {
            Ok(template)
        } else {
            Err(problems)
        }
    }

    fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Capture { name, .. } => Some(&**name),
            Segment::Literal(_) => None,
        })
    }

    /// `rest` is the request path without its leading `/`; no allocation.
    fn matches(&self, rest: &str, segment_count: usize) -> bool {
        segment_count == self.segments.len()
            && self
                .segments
                .iter()
                .zip(rest.split('/'))
                .all(|(segment, raw)| segment.matches(raw))
    }

    /// Whether every request path this template matches, `other` matches too.
    fn covers(&self, other: &PathTemplate) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| a.covers(b))
    }
}

impl Segment {
    fn compile(raw: &str) -> Result<Segment, String> {
        let opens = raw.matches('{').count();
        let closes = raw.matches('}').count();
        if opens == 0 && closes == 0 {
            check_path_chars(raw)?;
            return Ok(Segment::Literal(raw.into()));
        }
        if opens > 1 || closes > 1 {
            return Err(format!(
                "segment '{raw}' has more than one capture; a segment holds at most one '{{name}}'"
            ));
        }
        let (Some(open), Some(close)) = (raw.find('{'), raw.find('}')) else {
            return Err(format!("segment '{raw}' has an unbalanced '{{' or '}}'"));
        };
        if close < open {
            return Err(format!("segment '{raw}' has an unbalanced '{{' or '}}'"));
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

fn check_capture_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "capture name '{name}' is not valid; use [a-z_][a-z0-9_]*"
        ))
    }
}

/// Template literals must be what a request path can hold raw (RFC 3986 `pchar`).
fn check_path_chars(literal: &str) -> Result<(), String> {
    let bytes = literal.as_bytes();
    for (i, c) in literal.char_indices() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => {}
            '-' | '.' | '_' | '~' | '!' | '$' | '&' | '\'' | '(' | ')' | '*' | '+' | ',' | ';'
            | '=' | ':' | '@' => {}
            '%' if bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit) => {}
            '%' => return Err("'%' must be followed by two hex digits".to_owned()),
            '?' | '#' => {
                return Err(format!(
                    "'{c}' is not allowed; query strings and fragments are stripped before matching"
                ))
            }
            _ => return Err(format!("{c:?} is not allowed; percent-encode it")),
        }
    }
    Ok(())
}

fn is_dot_segment(raw: &str) -> bool {
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
fn decode_capture(raw: &str) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
            let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) else {
                return Err("invalid percent-encoding");
            };
            decoded.push((high * 16 + low) as u8);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let value = String::from_utf8(decoded).map_err(|_| "percent-encoded bytes are not UTF-8")?;
    if value
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err("an encoded '/', '\\' or control character is not allowed");
    }
    if value == "." || value == ".." {
        return Err("'.' and '..' are not allowed");
    }
    Ok(value)
}

// ---------------------------------------------------------------------------
// Resource id templates

#[derive(Debug, Clone, PartialEq, Eq)]
enum IdPart {
    Literal(String),
    /// Index into the path's captures, in path order.
    Capture(usize),
}

fn compile_id(text: &str, captures: Option<&[&str]>) -> Result<Vec<IdPart>, Vec<String>> {
    if text.is_empty() {
        return Err(vec!["is empty".to_owned()]);
    }
    let mut parts = Vec::new();
    let mut problems = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let next = rest.find(['{', '}']).unwrap_or(rest.len());
        if next > 0 {
            parts.push(IdPart::Literal(rest[..next].to_owned()));
        }
        rest = &rest[next..];
        if rest.starts_with('}') {
            problems.push("has a '}' without a matching '{'".to_owned());
            rest = &rest[1..];
        } else if let Some(after) = rest.strip_prefix('{') {
            let Some(close) = after
                .find(['{', '}'])
                .filter(|c| after[*c..].starts_with('}'))
            else {
                problems.push("has a '{' without a matching '}'".to_owned());
                break;
            };
            let name = &after[..close];
            // Without captures the path is invalid, and reported already.
            if let Some(captures) = captures {
                match captures.iter().position(|c| *c == name) {
                    Some(index) => parts.push(IdPart::Capture(index)),
                    None if captures.is_empty() => problems.push(format!(
                        "uses capture '{name}', which the path does not define; the path has no captures"
                    )),
                    None => problems.push(format!(
                        "uses capture '{name}', which the path does not define; captures: {}",
                        captures.join(", ")
                    )),
                }
            }
            rest = &after[close + 1..];
        }
    }
    if problems.is_empty() {
        Ok(parts)
    } else {
        Err(problems)
    }
}

fn render_id(parts: &[IdPart], captures: &[(&str, String)]) -> String {
    let piece = |part: &IdPart| match part {
        IdPart::Literal(literal) => literal.len(),
        IdPart::Capture(i) => captures[*i].1.len(),
    };
    let mut id = String::with_capacity(parts.iter().map(piece).sum());
    for part in parts {
        match part {
            IdPart::Literal(literal) => id.push_str(literal),
            IdPart::Capture(i) => id.push_str(&captures[*i].1),
        }
    }
    id
}

// ---------------------------------------------------------------------------
// Loading and validation

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopLevel {
    #[serde(default)]
    unmatched: Unmatched,
    #[serde(rename = "routes")]
    _routes: IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    method: String,
    path: String,
    action: String,
    resource: RawResource,
    #[serde(default)]
    must_exist: bool,
    #[serde(default)]
    authentication: Authentication,
    #[serde(default)]
    context_headers: Vec<String>,
    #[serde(default)]
    model: Option<ModelRef>,
    #[serde(default)]
    body: Option<BodySpec>,
    #[serde(default)]
    headers_to_remove: Vec<String>,
    #[serde(default)]
    signature: SignatureMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    #[serde(rename = "type")]
    entity_type: String,
    #[serde(deserialize_with = "template_string")]
    id: String,
}

/// What a route that failed to parse still yields, to check its other fields.
#[derive(Deserialize)]
struct LenientRoute {
    name: Option<String>,
    method: Option<String>,
    path: Option<String>,
    action: Option<String>,
    resource: Option<LenientResource>,
    context_headers: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct LenientResource {
    #[serde(rename = "type")]
    entity_type: Option<String>,
    id: Option<String>,
}

/// The checked fields of a route, as far as they parsed.
struct Fields<'r> {
    name: Option<&'r str>,
    method: Option<&'r str>,
    path: Option<&'r str>,
    action: Option<&'r str>,
    resource_type: Option<&'r str>,
    resource_id: Option<&'r str>,
    context_headers: &'r [String],
}

impl<'r> Fields<'r> {
    fn of(raw: &'r RawRoute) -> Self {
        Fields {
            name: Some(&raw.name),
            method: Some(&raw.method),
            path: Some(&raw.path),
            action: Some(&raw.action),
            resource_type: Some(&raw.resource.entity_type),
            resource_id: Some(&raw.resource.id),
            context_headers: &raw.context_headers,
        }
    }

    fn of_lenient(route: &'r LenientRoute) -> Self {
        let resource = route.resource.as_ref();
        Fields {
            name: route.name.as_deref(),
            method: route.method.as_deref(),
            path: route.path.as_deref(),
            action: route.action.as_deref(),
            resource_type: resource.and_then(|r| r.entity_type.as_deref()),
            resource_id: resource.and_then(|r| r.id.as_deref()),
            context_headers: route.context_headers.as_deref().unwrap_or_default(),
        }
    }
}

/// The compiled parts of a valid route.
struct Compiled {
    method: Method,
    template: PathTemplate,
    entity_type: EntityTypeName,
    resource_id: Vec<IdPart>,
}

/// A string, with a hint for the YAML trap of an unquoted `{model}`.
fn template_string<'de, D: de::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Template;
    impl Visitor<'_> for Template {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string (quote a template that starts with '{', e.g. id: \"{model}\")")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
    }
    deserializer.deserialize_str(Template)
}

/// `id: {model}/{version}` is a YAML flow mapping followed by text: a syntax
/// error. A flow collection's `}` is followed by `,`, `}`, `]`, a space or
/// nothing; a template's by more text.
fn looks_like_unquoted_template(line: &str) -> bool {
    line.split('}')
        .skip(1)
        .any(|after| after.starts_with(|c: char| !matches!(c, ',' | '}' | ']' | ' ' | '\t' | '#')))
}

const HEADERS_WITH_CREDENTIALS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

struct Checker<'t> {
    text: &'t str,
    file: &'t Path,
    errors: Vec<RouteError>,
}

impl Checker<'_> {
    fn check(&mut self) -> Option<RouteTable> {
        let text = self.text;
        let document: Value = match serde_yaml_ng::from_str(text) {
            Ok(document) => document,
            Err(e) => {
                self.yaml_error(&e);
                if let Some(error) = self.errors.last_mut() {
                    let source_line = text.lines().nth(error.line - 1).unwrap_or_default();
                    if looks_like_unquoted_template(source_line) {
                        error.message.push_str(
                            " (quote values that start with '{', e.g. id: \"{model}/{version}\")",
                        );
                    }
                }
                return None;
            }
        };
        let Value::Mapping(top) = &document else {
            self.error(
                &[],
                "expected a mapping with the keys `unmatched` and `routes`",
            );
            return None;
        };
        let unmatched = match serde_yaml_ng::from_str::<TopLevel>(text) {
            Ok(top) => top.unmatched,
            Err(e) => {
                self.yaml_error(&e);
                Unmatched::Deny
            }
        };
        let route_count = match top.get("routes") {
            Some(Value::Sequence(routes)) => routes.len(),
            Some(_) => {
                self.error(
                    &[Step::Key("routes")],
                    "`routes` must be a list of routes (`routes: []` for none)",
                );
                return None;
            }
            // Reported by the top-level parse.
            None => return None,
        };

        // One parse, plus one more after each broken route, so that every
        // broken route is reported.
        let mut raws: Vec<Option<RawRoute>> = Vec::with_capacity(route_count);
        while raws.len() < route_count {
            let seed = At {
                path: &[Step::Key("routes")],
                seed: RoutesFrom { parsed: &mut raws },
            };
            match seed.deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
                Ok(_) => break,
                Err(e) => {
                    self.yaml_error(&e);
                    raws.push(None);
                }
            }
        }
        raws.resize_with(route_count, || None);

        // A route that failed to parse still has its other fields checked.
        let lenient: Vec<Option<LenientRoute>> = raws
            .iter()
            .enumerate()
            .map(|(i, raw)| match raw {
                Some(_) => None,
                None => At {
                    path: &[Step::Key("routes"), Step::Index(i)],
                    seed: PhantomData::<LenientRoute>,
                }
                .deserialize(serde_yaml_ng::Deserializer::from_str(text))
                .ok()
                .flatten(),
            })
            .collect();
        let fields: Vec<Option<Fields<'_>>> = raws
            .iter()
            .zip(&lenient)
            .map(|(raw, lenient)| match (raw, lenient) {
                (Some(raw), _) => Some(Fields::of(raw)),
                (None, Some(lenient)) => Some(Fields::of_lenient(lenient)),
                (None, None) => None,
            })
            .collect();

        let mut routes: Vec<(usize, Route)> = Vec::new();
        for (i, route_fields) in fields.iter().enumerate() {
            let Some(route_fields) = route_fields else {
                continue;
            };
            let name = route_fields.name;
            if let Some(first) = name.and_then(|name| {
                fields[..i]
                    .iter()
                    .position(|f| f.as_ref().is_some_and(|f| f.name == Some(name)))
            }) {
                let first_line = self.line_of(&[Step::Key("routes"), Step::Index(first)]);
                self.error(
                    &[Step::Key("routes"), Step::Index(i), Step::Key("name")],
                    format!(
                        "route name '{}' is already used by the route at line {first_line}; names must be unique",
                        name.unwrap_or_default()
                    ),
                );
            }
            let compiled = self.check_route(i, route_fields);
            let (Some(raw), Some(compiled)) = (&raws[i], compiled) else {
                continue;
            };
            let capture_names: Vec<&str> = compiled.template.capture_names().collect();
            let problems = rules::check(
                raw.body.as_ref(),
                raw.model.as_ref(),
                &raw.headers_to_remove,
                &capture_names,
            );
            if !problems.is_empty() {
                for (field, message) in problems {
                    let mut at = vec![Step::Key("routes"), Step::Index(i)];
                    at.extend(field.split('.').map(Step::Key));
                    self.error(&at, format!("route '{}': {message}", raw.name));
                }
                continue;
            }
            let route = Route {
                name: raw.name.clone(),
                method: compiled.method,
                path: raw.path.clone(),
                action: raw.action.clone(),
                resource_type: raw.resource.entity_type.clone(),
                resource_id_template: raw.resource.id.clone(),
                must_exist: raw.must_exist,
                authentication: raw.authentication,
                context_headers: raw.context_headers.clone(),
                model: raw.model.clone(),
                body: raw.body.clone(),
                headers_to_remove: raw.headers_to_remove.clone(),
                signature: raw.signature,
                entity_type: compiled.entity_type,
                template: compiled.template,
                resource_id: compiled.resource_id,
            };
            if let Some((j, earlier)) = routes.iter().find(|(_, earlier)| {
                earlier.method.covers(route.method) && earlier.template.covers(&route.template)
            }) {
                let earlier_line = self.line_of(&[Step::Key("routes"), Step::Index(*j)]);
                let how = if earlier.method == route.method && earlier.path == route.path {
                    "has the same method and path".to_owned()
                } else {
                    format!(
                        "matches every request it would ({} {} covers {} {})",
                        earlier.method, earlier.path, route.method, route.path
                    )
                };
                self.error(
                    &[Step::Key("routes"), Step::Index(i)],
                    format!(
                        "route '{}' can never match: route '{}' at line {earlier_line} comes first and {how}",
                        route.name, earlier.name
                    ),
                );
            } else {
                routes.push((i, route));
            }
        }
        Some(RouteTable {
            unmatched,
            routes: routes.into_iter().map(|(_, route)| route).collect(),
        })
    }

    /// Checks the fields present; compiles them when all are present and valid.
    fn check_route(&mut self, i: usize, fields: &Fields<'_>) -> Option<Compiled> {
        let errors_before = self.errors.len();
        let label = match fields.name {
            Some(name) => format!("route '{name}'"),
            None => format!("routes[{i}]"),
        };
        let at = |field: &'static str| [Step::Key("routes"), Step::Index(i), Step::Key(field)];

        if let Some(name) = fields.name {
            let is_valid = !name.is_empty()
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !is_valid {
                self.error(
                    &at("name"),
                    format!("{label}: the name must match [a-z0-9_-]+"),
                );
            }
        }

        let method = fields.method.and_then(|method| {
            let parsed = method.parse::<Method>().ok();
            if parsed.is_none() {
                let upper = method.to_ascii_uppercase();
                let hint = match upper.parse::<Method>() {
                    Ok(_) => format!(" (write it in upper case: {upper})"),
                    Err(()) => String::new(),
                };
                self.error(
                    &at("method"),
                    format!(
                        "{label}: method '{method}' is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, ANY{hint}"
                    ),
                );
            }
            parsed
        });

        let template = fields
            .path
            .and_then(|path| match PathTemplate::compile(path) {
                Ok(template) => Some(template),
                Err(problems) => {
                    for problem in problems {
                        self.error(&at("path"), format!("{label}: path '{path}': {problem}"));
                    }
                    None
                }
            });

        if let Some(action) = fields.action {
            if action.is_empty() || action.trim() != action || action.chars().any(char::is_control)
            {
                self.error(
                    &at("action"),
                    format!(
                        "{label}: action {action:?} is not a usable Cedar action id; it must be non-empty, without control characters or surrounding spaces"
                    ),
                );
            }
        }

        let resource_at = |field| {
            [
                Step::Key("routes"),
                Step::Index(i),
                Step::Key("resource"),
                Step::Key(field),
            ]
        };
        let entity_type = fields.resource_type.and_then(|entity_type| {
            EntityTypeName::from_str(entity_type)
                .map_err(|e| {
                    self.error(
                        &resource_at("type"),
                        format!(
                            "{label}: resource type '{entity_type}' is not a valid Cedar entity type name (e.g. ModelVersion or Ns::ModelVersion): {e}"
                        ),
                    )
                })
                .ok()
        });

        let capture_names: Option<Vec<&str>> =
            template.as_ref().map(|t| t.capture_names().collect());
        let resource_id = fields.resource_id.and_then(|id| {
            compile_id(id, capture_names.as_deref())
                .map_err(|problems| {
                    for problem in problems {
                        self.error(
                            &resource_at("id"),
                            format!("{label}: resource id '{id}' {problem}"),
                        );
                    }
                })
                .ok()
        });

        for (k, header) in fields.context_headers.iter().enumerate() {
            let at = [
                Step::Key("routes"),
                Step::Index(i),
                Step::Key("context_headers"),
                Step::Index(k),
            ];
            let is_token = !header.is_empty()
                && header.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
                });
            if !is_token {
                let hint = if header.bytes().any(|b| b.is_ascii_uppercase()) {
                    format!(" (write it in lower case: {})", header.to_ascii_lowercase())
                } else {
                    String::new()
                };
                self.error(
                    &at,
                    format!("{label}: context header {header:?} is not a lower-case HTTP header name{hint}"),
                );
            } else if HEADERS_WITH_CREDENTIALS.contains(&header.as_str()) {
                // The Cedar context is logged with each decision.
                self.error(
                    &at,
                    format!("{label}: context header '{header}' carries credentials and must not be copied into the Cedar context"),
                );
            } else if fields.context_headers[..k].contains(header) {
                self.error(
                    &at,
                    format!("{label}: context header '{header}' is listed twice"),
                );
            }
        }

        if self.errors.len() > errors_before {
            return None;
        }
        Some(Compiled {
            method: method?,
            template: template?,
            entity_type: entity_type?,
            resource_id: resource_id?,
        })
    }

    fn error(&mut self, at: &[Step<'_>], message: impl Into<String>) {
        let line = self.line_of(at);
        self.errors.push(RouteError {
            file: self.file.to_owned(),
            line,
            message: message.into(),
        });
    }

    fn yaml_error(&mut self, error: &serde_yaml_ng::Error) {
        let (line, message) = crate::yaml::located(error);
        self.errors.push(RouteError {
            file: self.file.to_owned(),
            line: line.unwrap_or(1),
            message,
        });
    }

    /// The line of the node at `at`, or of its closest ancestor found.
    fn line_of(&self, at: &[Step<'_>]) -> usize {
        (0..=at.len())
            .rev()
            .find_map(|len| locate(self.text, &at[..len]))
            .unwrap_or(1)
    }
}

/// The 1-based line in routes.yaml `text` of route `index`, or of its `field`
/// when given (a dotted path such as `action` or `resource.type`), falling
/// back to the route's own line: for problems found after loading, such as
/// a mismatch with the schema.
pub fn route_line(text: &str, index: usize, field: Option<&str>) -> usize {
    let mut at = vec![Step::Key("routes"), Step::Index(index)];
    at.extend(field.into_iter().flat_map(|f| f.split('.')).map(Step::Key));
    (2..=at.len())
        .rev()
        .find_map(|len| locate(text, &at[..len]))
        .unwrap_or(1)
}

// ---------------------------------------------------------------------------
// Locating nodes in the YAML text
//
// serde_yaml_ng keeps no spans, but it stamps an error with the position of
// the node being deserialized when the error was raised. To find a node's
// line, walk to it and raise an error there. This costs one parse per lookup,
// and lookups happen only when reporting errors.

#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Deserializes with `seed` the node at `path` in the document.
struct At<'p, S> {
    path: &'p [Step<'p>],
    seed: S,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for At<'_, S> {
    /// `None` when the path leads nowhere.
    type Value = Option<S::Value>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        match self.path.first() {
            None => self.seed.deserialize(deserializer).map(Some),
            Some(Step::Key(_)) => deserializer.deserialize_map(self),
            Some(Step::Index(_)) => deserializer.deserialize_seq(self),
        }
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for At<'_, S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping or a list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seed = Some(self.seed);
        let mut found = None;
        while let Some(key) = map.next_key::<Value>()? {
            let wanted = matches!(self.path, [Step::Key(want), ..] if key.as_str() == Some(*want));
            match seed.take_if(|_| wanted) {
                Some(seed) => {
                    let path = &self.path[1..];
                    found = map.next_value_seed(At { path, seed })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut seed = Some(self.seed);
        let mut found = None;
        let mut index = 0;
        loop {
            let wanted = matches!(self.path, [Step::Index(want), ..] if *want == index);
            match seed.take_if(|_| wanted) {
                Some(seed) => {
                    let path = &self.path[1..];
                    match seq.next_element_seed(At { path, seed })? {
                        Some(value) => found = value,
                        None => break,
                    }
                }
                None => {
                    if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                }
            }
            index += 1;
        }
        Ok(found)
    }
}

/// Parses the routes from index `parsed.len()` on, appending to `parsed`; so
/// when route `k` fails to parse, `parsed.len()` is `k`.
struct RoutesFrom<'s> {
    parsed: &'s mut Vec<Option<RawRoute>>,
}

impl<'de> DeserializeSeed<'de> for RoutesFrom<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RoutesFrom<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of routes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let start = self.parsed.len();
        for _ in 0..start {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        while let Some(route) = seq.next_element::<RawRoute>()? {
            self.parsed.push(Some(route));
        }
        Ok(())
    }
}

/// Fails on whatever node it meets, so that the error carries its position.
struct Marker;

const MARKER: &str = "\u{0}portcullis: locate\u{0}";

impl<'de> Deserialize<'de> for Marker {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Marker, D::Error> {
        struct Fail;
        impl Visitor<'_> for Fail {
            // Every `visit_*` left to its default fails with `expecting`.
            type Value = Marker;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(MARKER)
            }
        }
        deserializer.deserialize_any(Fail)
    }
}

/// The 1-based line of the node at `at`, if there is one.
fn locate(text: &str, at: &[Step<'_>]) -> Option<usize> {
    let seed = At {
        path: at,
        seed: PhantomData::<Marker>,
    };
    match seed.deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
        Err(e) if e.to_string().contains(MARKER) => crate::yaml::line(&e),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "policies/routes.yaml";

    fn load(text: &str) -> RouteTable {
        RouteTable::parse(text, Path::new(FILE))
            .unwrap_or_else(|errors| panic!("unexpected errors:\n{}", rendered(&errors).join("\n")))
    }

    fn errors(text: &str) -> Vec<String> {
        match RouteTable::parse(text, Path::new(FILE)) {
            Ok(_) => panic!("expected errors, the table loaded"),
            Err(errors) => rendered(&errors),
        }
    }

    fn rendered(errors: &[RouteError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    /// Asserts one error, at `line`, whose message contains `needle`.
    fn assert_one_error(text: &str, line: usize, needle: &str) {
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let prefix = format!("{FILE}:{line}: ");
        assert!(
            errors[0].starts_with(&prefix) && errors[0].contains(needle),
            "expected '{prefix}…{needle}…', got {:?}",
            errors[0]
        );
    }

    const PREDICT: &str = "\
# Inference routes
unmatched: deny
routes:
  - name: predict
    method: POST
    path: /v1/models/{model}/versions/{version}:predict
    action: invoke
    resource:
      type: Inference::ModelVersion
      id: \"{model}/{version}\"
    must_exist: true
    authentication: optional
    context_headers: [x-client-region]
  - name: model
    method: GET
    path: /v1/models/{model}
    action: read
    resource: { type: Model, id: \"{model}\" }
  - name: status
    method: GET
    path: /v1/status
    action: status
    resource: { type: Service, id: portcullis }
";

    // --- loading ---------------------------------------------------------

    #[test]
    fn loads_every_field() {
        let table = load(PREDICT);
        assert_eq!(table.unmatched(), Unmatched::Deny);
        let names: Vec<&str> = table.routes().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["predict", "model", "status"]);
        let predict = &table.routes()[0];
        assert_eq!(predict.method, Method::Post);
        assert_eq!(
            predict.path,
            "/v1/models/{model}/versions/{version}:predict"
        );
        assert_eq!(predict.action, "invoke");
        assert_eq!(predict.resource_type, "Inference::ModelVersion");
        assert_eq!(
            predict.resource_entity_type().to_string(),
            "Inference::ModelVersion"
        );
        assert_eq!(predict.resource_id_template, "{model}/{version}");
        assert!(predict.must_exist);
        assert_eq!(predict.authentication, Authentication::Optional);
        assert_eq!(predict.context_headers, ["x-client-region"]);
        assert_eq!(predict.captures().collect::<Vec<_>>(), ["model", "version"]);
    }

    #[test]
    fn optional_fields_default() {
        let table = load(
            "routes:\n  - {name: a, method: GET, path: /a, action: read, resource: {type: A, id: a}}\n",
        );
        assert_eq!(table.unmatched(), Unmatched::Deny);
        let route = &table.routes()[0];
        assert!(!route.must_exist);
        assert_eq!(route.authentication, Authentication::Required);
        assert!(route.context_headers.is_empty());
    }

    #[test]
    fn empty_route_list_is_allowed() {
        let table = load("unmatched: allow\nroutes: []\n");
        assert_eq!(table.unmatched(), Unmatched::Allow);
        assert!(table.routes().is_empty());
        assert_eq!(
            table.match_request("GET", "/anything"),
            RouteMatch::NotFound
        );
    }

    fn route(fields: &str) -> String {
        format!("unmatched: deny\nroutes:\n  - name: r\n{fields}")
    }

    const METHOD: &str = "    method: GET\n";
    const PATH: &str = "    path: /v1/models/{model}\n";
    const ACTION: &str = "    action: read\n";
    const RESOURCE: &str = "    resource:\n      type: Model\n      id: \"{model}\"\n";

    /// A route on line 3 with every field valid but the one replaced;
    /// method is line 4, path 5, action 6, resource 7, type 8, id 9.
    fn route_with(method: &str, path: &str, action: &str, resource: &str) -> String {
        route(&format!("{method}{path}{action}{resource}"))
    }

    #[test]
    fn yaml_syntax_error_has_its_line() {
        assert_one_error(
            "routes:\n  - name: a\n   bad: [\n",
            3,
            "did not find expected '-' indicator, while parsing a block collection at line 2",
        );
    }

    #[test]
    fn unquoted_template_gets_a_hint() {
        let text = route_with(
            METHOD,
            PATH,
            ACTION,
            "    resource:\n      type: Model\n      id: {model}\n",
        );
        assert_one_error(&text, 9, "quote a template that starts with '{'");
        let text = route_with(
            METHOD,
            PATH,
            ACTION,
            "    resource:\n      type: Model\n      id: {model}/{version}\n",
        );
        assert_one_error(&text, 9, "quote values that start with '{'");
    }

    #[test]
    fn unknown_top_level_key_is_rejected() {
        assert_one_error(
            "unmatched: deny\nroute: []\nroutes: []\n",
            2,
            "unknown field `route`",
        );
    }

    #[test]
    fn bad_unmatched_value_is_rejected() {
        assert_one_error("routes: []\nunmatched: alow\n", 2, "unknown variant `alow`");
    }

    #[test]
    fn missing_or_mistyped_routes_are_rejected() {
        assert_one_error("unmatched: deny\n", 1, "missing field `routes`");
        assert_one_error("unmatched: deny\nroutes:\n", 2, "`routes` must be a list");
        assert_one_error("- name: a\n", 1, "expected a mapping with the keys");
    }

    #[test]
    fn unknown_route_key_is_rejected_at_its_line() {
        let text = route_with(
            METHOD,
            PATH,
            ACTION,
            &format!("{RESOURCE}    mustexist: true\n"),
        );
        assert_one_error(&text, 10, "unknown field `mustexist`");
    }

    #[test]
    fn unknown_resource_key_is_rejected_at_its_line() {
        let text = route_with(
            METHOD,
            PATH,
            ACTION,
            "    resource:\n      kind: Model\n      id: a\n",
        );
        assert_one_error(&text, 8, "unknown field `kind`");
    }

    #[test]
    fn missing_route_field_is_reported_at_the_route() {
        let text = route_with(METHOD, PATH, "", RESOURCE);
        assert_one_error(&text, 3, "missing field `action`");
    }

    #[test]
    fn bad_authentication_is_rejected() {
        let text = route_with(
            METHOD,
            PATH,
            ACTION,
            &format!("{RESOURCE}    authentication: requird\n"),
        );
        assert_one_error(&text, 10, "unknown variant `requird`");
    }

    #[test]
    fn invalid_name_is_rejected() {
        let text = route_with(METHOD, PATH, ACTION, RESOURCE).replace("name: r", "name: Predict");
        assert_one_error(&text, 3, "route 'Predict': the name must match [a-z0-9_-]+");
    }

    #[test]
    fn duplicate_name_is_rejected_at_the_second_route() {
        let text = "\
routes:
  - name: a
    method: GET
    path: /a
    action: read
    resource: {type: A, id: a}
  - name: a
    method: GET
    path: /b
    action: read
    resource: {type: A, id: a}
";
        assert_one_error(
            text,
            7,
            "route name 'a' is already used by the route at line 2",
        );
    }

    #[test]
    fn invalid_method_is_rejected() {
        let text = route_with("    method: get\n", PATH, ACTION, RESOURCE);
        assert_one_error(&text, 4, "method 'get' is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, ANY (write it in upper case: GET)");
        let text = route_with("    method: FETCH\n", PATH, ACTION, RESOURCE);
        assert_one_error(&text, 4, "method 'FETCH' is not one of");
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
    fn invalid_action_is_rejected() {
        let text = route_with(METHOD, PATH, "    action: \"\"\n", RESOURCE);
        assert_one_error(
            &text,
            6,
            "route 'r': action \"\" is not a usable Cedar action id",
        );
        let text = route_with(METHOD, PATH, "    action: \"read \"\n", RESOURCE);
        assert_one_error(&text, 6, "action \"read \" is not a usable");
    }

    #[test]
    fn invalid_resource_type_is_rejected() {
        for bad in ["model-version", "Ns::", "Ns :: Type", "__cedar::Model"] {
            let resource =
                format!("    resource:\n      type: \"{bad}\"\n      id: \"{{model}}\"\n");
            let text = route_with(METHOD, PATH, ACTION, &resource);
            assert_one_error(
                &text,
                8,
                &format!("route 'r': resource type '{bad}' is not a valid Cedar entity type name"),
            );
        }
    }

    #[test]
    fn resource_id_with_an_unknown_capture_is_rejected() {
        let text = route_with(
            METHOD,
            "    path: /v1/models/{model}/versions/{version}:predict\n",
            ACTION,
            "    resource:\n      type: Model\n      id: \"{modle}\"\n",
        );
        assert_one_error(
            &text,
            9,
            "route 'r': resource id '{modle}' uses capture 'modle', which the path does not define; captures: model, version",
        );
        let text = route_with(METHOD, "    path: /v1/status\n", ACTION, RESOURCE);
        assert_one_error(
            &text,
            9,
            "which the path does not define; the path has no captures",
        );
    }

    #[test]
    fn malformed_resource_ids_are_rejected() {
        for (id, needle) in [
            ("", "resource id '' is empty"),
            ("{model", "has a '{' without a matching '}'"),
            ("{mo{del}", "has a '{' without a matching '}'"),
            ("model}", "has a '}' without a matching '{'"),
        ] {
            let resource = format!("    resource:\n      type: Model\n      id: \"{id}\"\n");
            let text = route_with(METHOD, PATH, ACTION, &resource);
            assert_one_error(&text, 9, needle);
        }
    }

    #[test]
    fn invalid_context_headers_are_rejected_at_their_line() {
        let headers = "    context_headers:\n      - x-ok\n      - X-Region\n      - x region\n      - authorization\n      - x-ok\n";
        let text = route_with(METHOD, PATH, ACTION, &format!("{RESOURCE}{headers}"));
        assert_eq!(
            errors(&text),
            [
                format!("{FILE}:12: route 'r': context header \"X-Region\" is not a lower-case HTTP header name (write it in lower case: x-region)"),
                format!("{FILE}:13: route 'r': context header \"x region\" is not a lower-case HTTP header name"),
                format!("{FILE}:14: route 'r': context header 'authorization' carries credentials and must not be copied into the Cedar context"),
                format!("{FILE}:15: route 'r': context header 'x-ok' is listed twice"),
            ]
        );
    }

    const TWO_ROUTES: &str = "\
routes:
  - name: first
    method: {first_method}
    path: {first_path}
    action: read
    resource: {type: A, id: a}

  - name: second
    method: {second_method}
    path: {second_path}
    action: read
    resource: {type: A, id: a}
";

    fn two_routes(first: (&str, &str), second: (&str, &str)) -> String {
        TWO_ROUTES
            .replace("{first_method}", first.0)
            .replace("{first_path}", first.1)
            .replace("{second_method}", second.0)
            .replace("{second_path}", second.1)
    }

    #[test]
    fn route_identical_to_an_earlier_one_is_rejected() {
        let text = two_routes(("GET", "/v1/{a}:x"), ("GET", "/v1/{a}:x"));
        assert_one_error(
            &text,
            8,
            "route 'second' can never match: route 'first' at line 2 comes first and has the same method and path",
        );
        // Capture names do not change what a path matches.
        let text = two_routes(("GET", "/v1/{a}"), ("GET", "/v1/{b}"));
        assert_one_error(
            &text,
            8,
            "matches every request it would (GET /v1/{a} covers GET /v1/{b})",
        );
    }

    #[test]
    fn route_shadowed_by_a_broader_earlier_one_is_rejected() {
        for (first, second) in [
            (("ANY", "/v1/status"), ("GET", "/v1/status")),
            (("GET", "/v1/{any}"), ("GET", "/v1/status")),
            (("GET", "/v1/{any}"), ("GET", "/v1/v{n}")),
            (("GET", "/v1/{any}:predict"), ("GET", "/v1/m-{id}:predict")),
            (("ANY", "/{a}/{b}"), ("DELETE", "/v1/{b}")),
        ] {
            let text = two_routes(first, second);
            assert_one_error(
                &text,
                8,
                "route 'second' can never match: route 'first' at line 2",
            );
        }
    }

    #[test]
    fn routes_that_can_both_match_are_accepted() {
        for (first, second) in [
            (("GET", "/v1/status"), ("GET", "/v1/{any}")),
            (("GET", "/v1/{any}"), ("POST", "/v1/{any}")),
            (("GET", "/v1/status"), ("ANY", "/v1/status")),
            (("GET", "/v1/v{n}"), ("GET", "/v1/{any}")),
            (("GET", "/v1/{any}:predict"), ("GET", "/v1/{any}:explain")),
            (("GET", "/v1/{a}"), ("GET", "/v1/{a}/")),
            (("GET", "/v1/{a}x"), ("GET", "/v1/x")),
        ] {
            load(&two_routes(first, second));
        }
    }

    #[test]
    fn every_problem_is_reported_at_once_in_line_order() {
        let text = "\
unmatched: maybe
routes:
  - name: a
    method: GET
    path: /a
    action: read
    resource: {type: A, id: a}
    colour: blue
  - name: b
    method: get
    path: /b/{x}
    action: read
    resource:
      type: B
      id: \"{y}\"
  - {name: c, method: GET, path: /c, action: read, resource: {type: C, id: c}, extra: 1}
";
        assert_eq!(
            errors(text),
            [
                format!("{FILE}:1: unmatched: unknown variant `maybe`, expected `deny` or `allow`"),
                format!("{FILE}:8: routes[0]: unknown field `colour`, expected one of `name`, `method`, `path`, `action`, `resource`, `must_exist`, `authentication`, `context_headers`, `model`, `body`, `headers_to_remove`, `signature`"),
                format!("{FILE}:10: route 'b': method 'get' is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, ANY (write it in upper case: GET)"),
                format!("{FILE}:15: route 'b': resource id '{{y}}' uses capture 'y', which the path does not define; captures: x"),
                format!("{FILE}:16: routes[2]: unknown field `extra`, expected one of `name`, `method`, `path`, `action`, `resource`, `must_exist`, `authentication`, `context_headers`, `model`, `body`, `headers_to_remove`, `signature`"),
            ]
        );
    }

    #[test]
    fn a_route_that_fails_to_parse_still_has_its_fields_checked() {
        let text = "\
routes:
  - name: a
    method: get
    path: /a/{x}
    action: read
    resource: {type: A, id: \"{y}\"}
    must_exist: yes
  - name: b
    path: /b/{x
    action: read
    resource: {type: A, id: b}
";
        assert_eq!(
            errors(text),
            [
                format!("{FILE}:3: route 'a': method 'get' is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, ANY (write it in upper case: GET)"),
                format!("{FILE}:6: route 'a': resource id '{{y}}' uses capture 'y', which the path does not define; captures: x"),
                format!("{FILE}:7: routes[0].must_exist: invalid type: string \"yes\", expected a boolean"),
                format!("{FILE}:8: routes[1]: missing field `method`"),
                format!("{FILE}:9: route 'b': path '/b/{{x': segment '{{x' has an unbalanced '{{' or '}}'"),
            ]
        );
    }

    #[test]
    fn route_lines_are_found_in_every_layout() {
        // A route's own line is where its mapping starts.
        let text = "\
routes:
- name: a
  method: GET
  path: /a
  action: read
  resource: {type: A, id: a}
-
  # a comment
  name: a
  method: GET
  path: /b
  action: read
  resource: {type: A, id: a}
";
        assert_one_error(text, 9, "already used by the route at line 2");
        let text = "routes: [{name: a, method: GET, path: /a, action: read, resource: {type: A, id: a}},\n  {name: b, method: GET, path: /a, action: read, resource: {type: A, id: a}}]\n";
        assert_one_error(text, 2, "route 'b' can never match: route 'a' at line 1");
    }

    #[test]
    fn route_line_finds_routes_and_their_fields() {
        assert_eq!(route_line(PREDICT, 0, None), 4);
        assert_eq!(route_line(PREDICT, 0, Some("action")), 7);
        assert_eq!(route_line(PREDICT, 0, Some("resource.type")), 9);
        assert_eq!(route_line(PREDICT, 1, Some("resource.id")), 18);
        assert_eq!(route_line(PREDICT, 2, Some("must_exist")), 19);
        assert_eq!(route_line(PREDICT, 7, None), 1);
    }

    #[test]
    fn error_displays_file_and_line() {
        let error = RouteError {
            file: PathBuf::from("policies/routes.yaml"),
            line: 7,
            message: "route 'x': broken".to_owned(),
        };
        assert_eq!(
            error.to_string(),
            "policies/routes.yaml:7: route 'x': broken"
        );
    }

    // --- matching --------------------------------------------------------

    fn matched<'a>(
        table: &'a RouteTable,
        method: &str,
        path: &str,
    ) -> (&'a str, String, Vec<(&'a str, String)>) {
        match table.match_request(method, path) {
            RouteMatch::Matched {
                route,
                resource_id,
                captures,
            } => (route.name.as_str(), resource_id, captures),
            other => panic!("{method} {path}: expected a match, got {other:?}"),
        }
    }

    fn bad_path(table: &RouteTable, path: &str) -> String {
        match table.match_request("GET", path) {
            RouteMatch::BadPath { reason } => reason,
            other => panic!("{path}: expected BadPath, got {other:?}"),
        }
    }

    #[test]
    fn matches_a_literal_path() {
        let table = load(PREDICT);
        assert_eq!(
            matched(&table, "GET", "/v1/status"),
            ("status", "portcullis".to_owned(), vec![])
        );
    }

    #[test]
    fn matches_captures_and_renders_the_resource_id() {
        let table = load(PREDICT);
        let (name, id, captures) = matched(&table, "POST", "/v1/models/llama/versions/3:predict");
        assert_eq!(name, "predict");
        assert_eq!(id, "llama/3");
        assert_eq!(
            captures,
            [("model", "llama".to_owned()), ("version", "3".to_owned())]
        );
        assert_eq!(matched(&table, "GET", "/v1/models/llama").1, "llama");
    }

    #[test]
    fn renders_resource_ids_mixing_literals_and_captures() {
        let table = load(
            &two_routes(("GET", "/t/{tenant}/m/{model}"), ("GET", "/x")).replace(
                "resource: {type: A, id: a}\n\n",
                "resource: {type: A, id: \"tenant:{tenant}/{model}@{tenant}\"}\n\n",
            ),
        );
        assert_eq!(
            matched(&table, "GET", "/t/acme/m/gpt").1,
            "tenant:acme/gpt@acme"
        );
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
    fn strips_query_string_and_fragment() {
        let table = load(PREDICT);
        assert_eq!(
            matched(&table, "GET", "/v1/status?verbose=1&x=/a").0,
            "status"
        );
        assert_eq!(matched(&table, "GET", "/v1/status#top").0, "status");
        assert_eq!(matched(&table, "GET", "/v1/models/m?x=%ZZ").1, "m");
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

    #[test]
    fn empty_segments_are_bad_paths() {
        let table = load(PREDICT);
        for path in [
            "//v1/status",
            "/v1//status",
            "/v1/status//",
            "//",
            "/v1/models//?x",
        ] {
            assert_eq!(
                bad_path(&table, path),
                "the path has an empty segment ('//')",
                "{path}"
            );
        }
        // Only the trailing empty segment of a trailing slash is allowed.
        assert_eq!(
            table.match_request("GET", "/v1/status/"),
            RouteMatch::NotFound
        );
    }

    #[test]
    fn path_without_leading_slash_is_bad() {
        let table = load(PREDICT);
        assert_eq!(bad_path(&table, "*"), "the path must start with '/'");
        assert_eq!(bad_path(&table, ""), "the path must start with '/'");
        assert_eq!(
            bad_path(&table, "http://h/v1/status"),
            "the path must start with '/'"
        );
    }

    #[test]
    fn trailing_slash_is_significant() {
        let table = load(&two_routes(("GET", "/v1/status"), ("GET", "/v1/models/")));
        assert_eq!(matched(&table, "GET", "/v1/status").0, "first");
        assert_eq!(
            table.match_request("GET", "/v1/status/"),
            RouteMatch::NotFound
        );
        assert_eq!(matched(&table, "GET", "/v1/models/").0, "second");
        assert_eq!(
            table.match_request("GET", "/v1/models"),
            RouteMatch::NotFound
        );
        assert_eq!(
            bad_path(&table, "/v1/models//"),
            "the path has an empty segment ('//')"
        );
    }

    #[test]
    fn root_path_matches_only_itself() {
        let table = load(&two_routes(("GET", "/"), ("GET", "/{page}")));
        assert_eq!(matched(&table, "GET", "/").0, "first");
        assert_eq!(matched(&table, "GET", "/?q=1").0, "first");
        assert_eq!(matched(&table, "GET", "/index").0, "second");
    }

    #[test]
    fn first_matching_route_wins() {
        let table = load(&two_routes(
            ("GET", "/v1/models/latest"),
            ("GET", "/v1/models/{model}"),
        ));
        assert_eq!(matched(&table, "GET", "/v1/models/latest").0, "first");
        assert_eq!(matched(&table, "GET", "/v1/models/other").0, "second");
        // A route whose method does not match is passed over, not a 405.
        let other = load(&two_routes(("POST", "/v1/{a}"), ("GET", "/v1/{b}")));
        assert_eq!(matched(&other, "GET", "/v1/x").0, "second");
    }

    #[test]
    fn any_matches_every_method() {
        let table = load(&two_routes(("ANY", "/v1/{a}"), ("GET", "/v2")));
        for method in ["GET", "POST", "DELETE", "PROPFIND", "get"] {
            assert_eq!(matched(&table, method, "/v1/x").0, "first");
        }
    }

    #[test]
    fn wrong_method_lists_the_allowed_ones() {
        let text = "\
routes:
  - {name: a, method: POST, path: \"/v1/{m}\", action: w, resource: {type: A, id: a}}
  - {name: b, method: GET, path: /v1/status, action: r, resource: {type: A, id: a}}
  - {name: c, method: GET, path: \"/v1/{m}\", action: r, resource: {type: A, id: a}}
  - {name: d, method: DELETE, path: \"/v1/{m}\", action: d, resource: {type: A, id: a}}
  - {name: e, method: PUT, path: /v2, action: d, resource: {type: A, id: a}}
";
        let table = load(text);
        assert_eq!(
            table.match_request("PATCH", "/v1/x"),
            RouteMatch::MethodNotAllowed {
                allowed: vec!["GET", "POST", "DELETE"]
            }
        );
        // Method names are case-sensitive.
        assert_eq!(
            table.match_request("get", "/v1/status"),
            RouteMatch::MethodNotAllowed {
                allowed: vec!["GET", "POST", "DELETE"]
            }
        );
        assert_eq!(
            table.match_request("GET", "/v2"),
            RouteMatch::MethodNotAllowed {
                allowed: vec!["PUT"]
            }
        );
    }

    #[test]
    fn unknown_path_is_not_found() {
        let table = load(PREDICT);
        assert_eq!(
            table.match_request("GET", "/v2/status"),
            RouteMatch::NotFound
        );
        assert_eq!(
            table.match_request("GET", "/v1/models/a/b"),
            RouteMatch::NotFound
        );
        assert_eq!(
            table.match_request("GET", "/v1/models/"),
            RouteMatch::NotFound
        );
    }
}
