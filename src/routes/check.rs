//! Checks routes.yaml completely and compiles it into a [`RouteTable`]:
//! every problem is reported at once, at its line, sorted by line.

use std::marker::PhantomData;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::EntityTypeName;
use serde::de::DeserializeSeed;
use serde_yaml_ng::Value;

use super::locate::{locate, At, Step};
use super::path::PathTemplate;
use super::raw::{
    looks_like_unquoted_template, Fields, LenientRoute, RawRoute, RoutesFrom, TopLevel,
};
use super::resource_id::{compile_id, IdPart};
use super::{Method, Route, RouteError, RouteTable, Unmatched};
use crate::validate::rules;

/// Parses and validates routes.yaml text; `file` is used in error messages only.
pub(super) fn parse(text: &str, file: &Path) -> Result<RouteTable, Vec<RouteError>> {
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

/// The compiled parts of a valid route.
struct Compiled {
    method: Method,
    template: PathTemplate,
    entity_type: EntityTypeName,
    resource_id: Vec<IdPart>,
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
                entity_type_text: compiled.entity_type.to_string(),
                action_uid_text: format!("Action::{:?}", raw.action),
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
                    // Matched as sent (RFC 9110 section 9.1): `get` would
                    // never match a request's `GET`.
                    Ok(_) => format!(" (methods are case-sensitive; write it in upper case: {upper})"),
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
        let (line, message) = crate::yaml::located_in(error, self.text);
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

#[cfg(test)]
mod tests {
    use crate::routes::fixtures::*;

    #[test]
    fn missing_or_mistyped_routes_are_rejected() {
        assert_one_error("unmatched: deny\n", 1, "missing field `routes`");
        assert_one_error("unmatched: deny\nroutes:\n", 2, "`routes` must be a list");
        assert_one_error("- name: a\n", 1, "expected a mapping with the keys");
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
        assert_one_error(&text, 4, "method 'get' is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, ANY (methods are case-sensitive; write it in upper case: GET)");
        let text = route_with("    method: FETCH\n", PATH, ACTION, RESOURCE);
        assert_one_error(&text, 4, "method 'FETCH' is not one of");
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
            // GET takes HEAD; one trailing slash and escaped unreserved
            // characters do not change what a path matches.
            (("GET", "/v1/status"), ("HEAD", "/v1/status")),
            (("GET", "/v1/{a}"), ("GET", "/v1/{a}/")),
            (("GET", "/v1/models"), ("GET", "/v1/%6dodels")),
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
            (("HEAD", "/v1/{a}"), ("GET", "/v1/{a}")),
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
                format!("{FILE}:10: route 'b': method 'get' is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, ANY (methods are case-sensitive; write it in upper case: GET)"),
                format!("{FILE}:15: route 'b': resource id '{{y}}' uses capture 'y', which the path does not define; captures: x"),
                format!("{FILE}:16: routes[2]: unknown field `extra`, expected one of `name`, `method`, `path`, `action`, `resource`, `must_exist`, `authentication`, `context_headers`, `model`, `body`, `headers_to_remove`, `signature`"),
            ]
        );
    }
}
