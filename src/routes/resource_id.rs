//! Resource id templates (`{model}/{version}`): compiling them against a
//! path's captures, and rendering the id of a matched request.

/// Why a resource id template in routes.yaml cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResourceId {
    #[error("is empty")]
    Empty,
    #[error("has a '}}' without a matching '{{'")]
    UnopenedBrace,
    #[error("has a '{{' without a matching '}}'")]
    UnclosedBrace,
    #[error("uses capture '{name}', which the path does not define; the path has no captures")]
    PathHasNoCaptures { name: String },
    #[error("uses capture '{name}', which the path does not define; captures: {defined}")]
    UnknownCapture {
        name: String,
        /// The path's captures, comma-separated.
        defined: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum IdPart {
    Literal(String),
    /// Index into the path's captures, in path order.
    Capture(usize),
}

/// Every problem in `text`, or its parts; `captures` is `None` when the
/// path is invalid (and so reported already).
pub(super) fn compile_id(
    text: &str,
    captures: Option<&[&str]>,
) -> Result<Vec<IdPart>, Vec<InvalidResourceId>> {
    if text.is_empty() {
        return Err(vec![InvalidResourceId::Empty]);
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
            problems.push(InvalidResourceId::UnopenedBrace);
            rest = &rest[1..];
        } else if let Some(after) = rest.strip_prefix('{') {
            let Some(close) = after
                .find(['{', '}'])
                .filter(|c| after[*c..].starts_with('}'))
            else {
                problems.push(InvalidResourceId::UnclosedBrace);
                break;
            };
            let name = &after[..close];
            // Without captures the path is invalid, and reported already.
            if let Some(captures) = captures {
                match captures.iter().position(|c| *c == name) {
                    Some(index) => parts.push(IdPart::Capture(index)),
                    None if captures.is_empty() => {
                        problems.push(InvalidResourceId::PathHasNoCaptures {
                            name: name.to_owned(),
                        })
                    }
                    None => problems.push(InvalidResourceId::UnknownCapture {
                        name: name.to_owned(),
                        defined: captures.join(", "),
                    }),
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

/// The id for a matched request's decoded captures, in path order.
pub(super) fn render_id(parts: &[IdPart], captures: &[(&str, String)]) -> String {
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

#[cfg(test)]
mod tests {
    use crate::routes::fixtures::*;

    #[test]
    fn problems_read_exactly_as_operators_see_them() {
        use super::InvalidResourceId as I;
        let name = || "m".to_owned();
        for (problem, text) in [
            (I::Empty, "is empty"),
            (I::UnopenedBrace, "has a '}' without a matching '{'"),
            (I::UnclosedBrace, "has a '{' without a matching '}'"),
            (
                I::PathHasNoCaptures { name: name() },
                "uses capture 'm', which the path does not define; the path has no captures",
            ),
            (
                I::UnknownCapture {
                    name: name(),
                    defined: "a, b".into(),
                },
                "uses capture 'm', which the path does not define; captures: a, b",
            ),
        ] {
            assert_eq!(problem.to_string(), text);
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
}
