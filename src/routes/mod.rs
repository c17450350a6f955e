//! The route table: parses, validates and compiles `policies/routes.yaml`, and
//! matches requests against it. It does not authenticate or authorize.
//!
//! This file holds the table and its matching; loading is in `raw` (the
//! YAML shapes), `check` (validation and compilation) and `locate` (lines
//! for error messages); `path` and `resource_id` compile the templates.

mod check;
#[cfg(test)]
mod fixtures;
mod locate;
mod path;
mod raw;
mod resource_id;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::EntityTypeName;
use serde::Deserialize;

pub use self::locate::route_line;
pub use self::path::normalize_path;
use self::path::{decode_capture, segments, PathTemplate, Segment};
use self::resource_id::{render_id, IdPart};
pub use crate::validate::rules::SignatureMode;
use crate::validate::rules::{BodySpec, ModelRef};

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
    /// `GET` accepts `HEAD` too: a server answering GET answers HEAD the
    /// same way, without the body (RFC 9110 section 9.3.2).
    pub fn accepts(self, method: &str) -> bool {
        self == Method::Any
            || self.as_str() == method
            || (self == Method::Get && method == Method::Head.as_str())
    }

    /// Whether every request this method accepts, `self` accepts too.
    fn covers(self, other: Method) -> bool {
        self == Method::Any || self == other || (self == Method::Get && other == Method::Head)
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
    /// `entity_type` in Cedar's display form (`Ns::Type`).
    entity_type_text: String,
    /// The action's UID as decisions and audit records carry it.
    action_uid_text: String,
    template: PathTemplate,
    resource_id: Vec<IdPart>,
}

impl Route {
    /// `resource_type`, parsed.
    pub fn resource_entity_type(&self) -> &EntityTypeName {
        &self.entity_type
    }

    /// The action's entity UID as decisions and audit records carry it:
    /// `Action::"invoke"` (`action` in Rust's `Debug` form), written once
    /// when the route table loads.
    pub fn action_uid_text(&self) -> &str {
        &self.action_uid_text
    }

    /// The resource's entity UID with id `id` in Cedar's display form,
    /// `Type::"id"` with the id escaped as `str::escape_debug` does (what
    /// `EntityUid`'s `Display` writes), without formatting the type again
    /// per request.
    pub fn resource_uid_text(&self, id: &str) -> String {
        let mut text = String::with_capacity(self.entity_type_text.len() + id.len() + 4);
        text.push_str(&self.entity_type_text);
        text.push_str("::\"");
        // Printable ASCII other than `\`, `"` and `'` is its own escape.
        if id
            .bytes()
            .all(|b| matches!(b, b' '..=b'~') && !matches!(b, b'\\' | b'"' | b'\''))
        {
            text.push_str(id);
        } else {
            text.extend(id.escape_debug());
        }
        text.push('"');
        text
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

    /// `path` is the request path in normal form, which matched, and
    /// `raw` its segments.
    fn bind(&self, path: &str, raw: &[&str]) -> RouteMatch<'_> {
        let mut captures = Vec::with_capacity(self.template.capture_count);
        for (position, (segment, raw)) in self.template.segments.iter().zip(raw).enumerate() {
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
            path: path.to_owned(),
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
        /// The request path in normal form ([`normalize_path`]), as
        /// policies see it (`context.path`).
        path: String,
    },
    /// Some route has this path, none this method (405 with `Allow`).
    MethodNotAllowed { allowed: Vec<&'a str> },
    /// No route has this path; see [`RouteTable::unmatched`].
    NotFound,
    /// The path is malformed; `reason` is safe to show the client.
    BadPath { reason: String },
    /// The method is not one Portcullis interprets; `problem` says why
    /// (see [`method_problem`]).
    BadMethod { problem: &'static str },
}

/// Why a request's method is refused before matching, if it is: empty,
/// not a token (RFC 9110 section 5.6.2: `!#$%&'*+-.^_`|~`, digits,
/// letters), or with a lower-case letter. Methods are case-sensitive (RFC
/// 9110 section 9.1) and every standard one is upper case; an upstream that
/// folds case would run `delete` as `DELETE` while a policy on an `ANY`
/// route compared `context.method` with `"DELETE"` and let it through, so
/// a method in another case is refused, not matched as another method.
pub fn method_problem(method: &str) -> Option<&'static str> {
    if method.is_empty() {
        Some("is empty")
    } else if !crate::request::is_token(method) {
        Some("is not an HTTP token (RFC 9110 section 5.6.2)")
    } else if method.bytes().any(|b| b.is_ascii_lowercase()) {
        Some("has lower-case letters; methods are case-sensitive (RFC 9110 section 9.1) and Portcullis takes upper-case ones only, as every standard method is written")
    } else {
        None
    }
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
        check::parse(text, file)
    }

    /// In file order: route `k` is the `k`th in the file (see [`route_line`]).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// What to do with a request that matches no route.
    pub fn unmatched(&self) -> Unmatched {
        self.unmatched
    }

    /// Matches a request; `path` is the raw :path header (may include a
    /// query string). The path is matched in its normal form (see
    /// [`normalize_path`]: equivalent spellings match the same route, and
    /// spellings an upstream could resolve elsewhere are a `BadPath`).
    ///
    /// The first route in file order matching both method and path wins; a
    /// `GET` route also takes `HEAD` (RFC 9110 section 9.3.2).
    ///
    /// A method that is not an upper-case token is a `BadMethod` before
    /// any route is looked at (see [`method_problem`]).
    pub fn match_request<'a>(&'a self, method: &str, path: &str) -> RouteMatch<'a> {
        if let Some(problem) = method_problem(method) {
            return RouteMatch::BadMethod { problem };
        }
        let path = match normalize_path(path) {
            Ok(path) => path,
            Err(reason) => return RouteMatch::BadPath { reason },
        };
        let raw = segments(&path);

        let mut path_matched = false;
        for route in &self.routes {
            if route.template.matches(&raw) {
                if route.method.accepts(method) {
                    return route.bind(&path, &raw);
                }
                path_matched = true;
            }
        }
        if !path_matched {
            return RouteMatch::NotFound;
        }
        let mut allowed = [false; Method::NAMED.len()];
        for route in &self.routes {
            if route.template.matches(&raw) {
                for (i, named) in Method::NAMED.iter().enumerate() {
                    allowed[i] |= route.method != Method::Any && route.method.covers(*named);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::fixtures::*;

    #[test]
    fn resource_uid_text_is_the_entity_uid_s_display_escapes_included() {
        let table = load(PREDICT);
        let predict = &table.routes()[0];
        for id in [
            "gpt/1",
            "a\"b",
            "back\\slash",
            "new\nline\t",
            "é/✓",
            "\u{7f}\u{301}x",
            "",
            "it's",
            " plain-id_1.2~x@:+",
            "\u{301}x",
        ] {
            let uid = cedar_policy::EntityUid::from_type_name_and_id(
                predict.resource_entity_type().clone(),
                cedar_policy::EntityId::new(id),
            );
            assert_eq!(predict.resource_uid_text(id), uid.to_string(), "id {id:?}");
        }
    }

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
        assert_eq!(predict.action_uid_text(), r#"Action::"invoke""#);
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
    fn strips_the_query_string() {
        let table = load(PREDICT);
        assert_eq!(
            matched(&table, "GET", "/v1/status?verbose=1&x=/a").0,
            "status"
        );
        assert_eq!(matched(&table, "GET", "/v1/models/m?x=%ZZ").1, "m");
    }

    #[test]
    fn a_method_in_another_case_is_a_bad_method_even_on_an_any_route() {
        let table = load(&route_with("    method: ANY\n", PATH, ACTION, RESOURCE));
        for method in ["delete", "Delete", "get", "purge"] {
            assert!(
                matches!(
                    table.match_request(method, "/v1/models/m"),
                    RouteMatch::BadMethod { problem } if problem.starts_with("has lower-case letters")
                ),
                "{method}"
            );
        }
        for method in ["DELETE", "PURGE", "M-SEARCH", "X_1"] {
            assert!(
                matches!(
                    table.match_request(method, "/v1/models/m"),
                    RouteMatch::Matched { .. }
                ),
                "{method}"
            );
        }
        assert_eq!(method_problem(""), Some("is empty"));
        for method in ["GE T", "GET/1", "GÉT", "(GET)"] {
            assert_eq!(
                method_problem(method),
                Some("is not an HTTP token (RFC 9110 section 5.6.2)"),
                "{method}"
            );
        }
    }

    #[test]
    fn a_raw_hash_anywhere_in_the_target_is_a_bad_path_not_a_stripped_fragment() {
        // `/v1/status#/../audit` matched /v1/status, while an upstream
        // reading the '#' as a path character resolves it to /v1/audit.
        let table = load(PREDICT);
        for path in ["/v1/status#/../audit", "/v1/status#top", "/v1/status?x=1#y"] {
            let reason = bad_path(&table, path);
            assert!(reason.contains("'#'"), "{reason}");
        }
        assert_eq!(matched(&table, "GET", "/v1/models/a%23b").1, "a#b");
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
        assert_eq!(matched(&table, "GET", "/v1/status/").0, "status");
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
    fn trailing_slash_spelling_matches_the_same_route() {
        let table = load(&two_routes(("GET", "/v1/status"), ("GET", "/v1/models/")));
        for (path, route) in [
            ("/v1/status", "first"),
            ("/v1/status/", "first"),
            ("/v1/status/?x=1", "first"),
            ("/v1/models/", "second"),
            ("/v1/models", "second"),
        ] {
            assert_eq!(matched(&table, "GET", path).0, route, "{path}");
        }
        assert_eq!(
            bad_path(&table, "/v1/models//"),
            "the path has an empty segment ('//')"
        );
    }

    #[test]
    fn head_is_answered_like_get() {
        let table = load(PREDICT);
        assert_eq!(matched(&table, "HEAD", "/v1/status").0, "status");
        assert_eq!(matched(&table, "HEAD", "/v1/models/m").0, "model");
        // HEAD does not open the other methods: a POST-only route refuses it.
        assert_eq!(
            table.match_request("HEAD", "/v1/models/m/versions/1:predict"),
            RouteMatch::MethodNotAllowed {
                allowed: vec!["POST"]
            }
        );
        // Nor does GET open anything but HEAD.
        assert_eq!(
            table.match_request("DELETE", "/v1/status"),
            RouteMatch::MethodNotAllowed {
                allowed: vec!["GET", "HEAD"]
            }
        );
        // An explicit HEAD route before the GET one takes HEAD itself.
        let table = load(&two_routes(("HEAD", "/v1/x"), ("GET", "/v1/x")));
        assert_eq!(matched(&table, "HEAD", "/v1/x").0, "first");
        assert_eq!(matched(&table, "GET", "/v1/x").0, "second");
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
        for method in ["GET", "POST", "DELETE", "PROPFIND", "M-SEARCH"] {
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
        // Where GET is allowed, HEAD is too (RFC 9110 section 9.3.2).
        assert_eq!(
            table.match_request("PATCH", "/v1/x"),
            RouteMatch::MethodNotAllowed {
                allowed: vec!["GET", "HEAD", "POST", "DELETE"]
            }
        );
        // Method names are case-sensitive: `get` is no method a route
        // lists, and refused before any is looked at.
        assert!(matches!(
            table.match_request("get", "/v1/status"),
            RouteMatch::BadMethod { .. }
        ));
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
