//! Shared fixtures for the route table's unit tests: sample tables and
//! helpers that load them and render their errors.

use std::path::Path;

use super::{RouteError, RouteMatch, RouteTable};

pub(super) const FILE: &str = "policies/routes.yaml";

pub(super) fn load(text: &str) -> RouteTable {
    RouteTable::parse(text, Path::new(FILE))
        .unwrap_or_else(|errors| panic!("unexpected errors:\n{}", rendered(&errors).join("\n")))
}

pub(super) fn errors(text: &str) -> Vec<String> {
    match RouteTable::parse(text, Path::new(FILE)) {
        Ok(_) => panic!("expected errors, the table loaded"),
        Err(errors) => rendered(&errors),
    }
}

pub(super) fn rendered(errors: &[RouteError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

/// Asserts one error, at `line`, whose message contains `needle`.
pub(super) fn assert_one_error(text: &str, line: usize, needle: &str) {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let prefix = format!("{FILE}:{line}: ");
    assert!(
        errors[0].starts_with(&prefix) && errors[0].contains(needle),
        "expected '{prefix}…{needle}…', got {:?}",
        errors[0]
    );
}

pub(super) const PREDICT: &str = "\
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

pub(super) fn route(fields: &str) -> String {
    format!("unmatched: deny\nroutes:\n  - name: r\n{fields}")
}

pub(super) const METHOD: &str = "    method: GET\n";
pub(super) const PATH: &str = "    path: /v1/models/{model}\n";
pub(super) const ACTION: &str = "    action: read\n";
pub(super) const RESOURCE: &str = "    resource:\n      type: Model\n      id: \"{model}\"\n";

/// A route on line 3 with every field valid but the one replaced;
/// method is line 4, path 5, action 6, resource 7, type 8, id 9.
pub(super) fn route_with(method: &str, path: &str, action: &str, resource: &str) -> String {
    route(&format!("{method}{path}{action}{resource}"))
}

pub(super) const TWO_ROUTES: &str = "\
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

pub(super) fn two_routes(first: (&str, &str), second: (&str, &str)) -> String {
    TWO_ROUTES
        .replace("{first_method}", first.0)
        .replace("{first_path}", first.1)
        .replace("{second_method}", second.0)
        .replace("{second_path}", second.1)
}

pub(super) fn matched<'a>(
    table: &'a RouteTable,
    method: &str,
    path: &str,
) -> (&'a str, String, Vec<(&'a str, String)>) {
    match table.match_request(method, path) {
        RouteMatch::Matched {
            route,
            resource_id,
            captures,
            ..
        } => (route.name.as_str(), resource_id, captures),
        other => panic!("{method} {path}: expected a match, got {other:?}"),
    }
}

pub(super) fn bad_path(table: &RouteTable, path: &str) -> String {
    match table.match_request("GET", path) {
        RouteMatch::BadPath { reason } => reason,
        other => panic!("{path}: expected BadPath, got {other:?}"),
    }
}
