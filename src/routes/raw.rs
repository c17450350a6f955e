//! The shapes `routes.yaml` deserializes into, strict and lenient, before
//! any checking; what is wrong with their values is the checker's business.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

use super::{Authentication, SignatureMode, Unmatched};
use crate::validate::rules::{BodySpec, ModelRef};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopLevel {
    #[serde(default)]
    pub(super) unmatched: Unmatched,
    #[serde(rename = "routes")]
    _routes: IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: String,
    pub(super) method: String,
    pub(super) path: String,
    pub(super) action: String,
    pub(super) resource: RawResource,
    #[serde(default)]
    pub(super) must_exist: bool,
    #[serde(default)]
    pub(super) authentication: Authentication,
    #[serde(default)]
    pub(super) context_headers: Vec<String>,
    #[serde(default)]
    pub(super) model: Option<ModelRef>,
    #[serde(default)]
    pub(super) body: Option<BodySpec>,
    #[serde(default)]
    pub(super) headers_to_remove: Vec<String>,
    #[serde(default)]
    pub(super) signature: SignatureMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResource {
    #[serde(rename = "type")]
    pub(super) entity_type: String,
    #[serde(deserialize_with = "template_string")]
    pub(super) id: String,
}

/// What a route that failed to parse still yields, to check its other fields.
#[derive(Deserialize)]
pub(super) struct LenientRoute {
    name: Option<String>,
    method: Option<String>,
    path: Option<String>,
    action: Option<String>,
    resource: Option<LenientResource>,
    context_headers: Option<Vec<String>>,
}

#[derive(Deserialize)]
pub(super) struct LenientResource {
    #[serde(rename = "type")]
    entity_type: Option<String>,
    id: Option<String>,
}

/// The checked fields of a route, as far as they parsed.
pub(super) struct Fields<'r> {
    pub(super) name: Option<&'r str>,
    pub(super) method: Option<&'r str>,
    pub(super) path: Option<&'r str>,
    pub(super) action: Option<&'r str>,
    pub(super) resource_type: Option<&'r str>,
    pub(super) resource_id: Option<&'r str>,
    pub(super) context_headers: &'r [String],
}

impl<'r> Fields<'r> {
    pub(super) fn of(raw: &'r RawRoute) -> Self {
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

    pub(super) fn of_lenient(route: &'r LenientRoute) -> Self {
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
pub(super) fn looks_like_unquoted_template(line: &str) -> bool {
    line.split('}')
        .skip(1)
        .any(|after| after.starts_with(|c: char| !matches!(c, ',' | '}' | ']' | ' ' | '\t' | '#')))
}

/// Parses the routes from index `parsed.len()` on, appending to `parsed`; so
/// when route `k` fails to parse, `parsed.len()` is `k`.
pub(super) struct RoutesFrom<'s> {
    pub(super) parsed: &'s mut Vec<Option<RawRoute>>,
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

#[cfg(test)]
mod tests {
    use crate::routes::fixtures::*;

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
                format!("{FILE}:3: route 'a': method 'get' is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, ANY (methods are case-sensitive; write it in upper case: GET)"),
                format!("{FILE}:6: route 'a': resource id '{{y}}' uses capture 'y', which the path does not define; captures: x"),
                format!("{FILE}:7: routes[0].must_exist: invalid type: string \"yes\", expected a boolean"),
                format!("{FILE}:8: routes[1]: missing field `method`"),
                format!("{FILE}:9: route 'b': path '/b/{{x': segment '{{x' has an unbalanced '{{' or '}}'"),
            ]
        );
    }
}
