//! JSON Schemas (draft 2020-12) for request bodies: compiled once per
//! snapshot from `policies/schemas/*.json` with the `jsonschema` crate, and
//! their validation errors turned into client-facing problems that point
//! into the request and never repeat its values or the schema's internals.

use std::collections::BTreeMap;
use std::sync::Arc;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use super::Problem;

/// The directory, inside the policy directory, that holds body schemas.
pub const SCHEMAS_DIR: &str = "schemas";

/// A compiled schema, shared by every route that names it.
pub type CompiledSchema = Arc<Validator>;

/// Compiles one schema file's text. The error is for operators (load
/// errors), with the line where JSON parsing failed.
pub fn compile(text: &str) -> Result<CompiledSchema, (Option<usize>, String)> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| (Some(e.line()), format!("not valid JSON: {e}")))?;
    // Only the 2020-12 dialect: a schema that declares another one is a
    // mistake we report rather than silently reinterpret.
    if let Some(dialect) = value.get("$schema").and_then(Value::as_str) {
        if dialect != "https://json-schema.org/draft/2020-12/schema" {
            return Err((
                None,
                format!("declares $schema {dialect:?}; Portcullis uses draft 2020-12 (\"https://json-schema.org/draft/2020-12/schema\")"),
            ));
        }
    }
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&value)
        .map(Arc::new)
        .map_err(|e| {
            (
                None,
                format!("does not compile as a draft 2020-12 JSON Schema: {e}"),
            )
        })
}

/// Compiled schemas by file name (relative to `schemas/`).
pub type Schemas = BTreeMap<String, CompiledSchema>;

/// Problems with `instance`, at most `cap` (plus whether there were more).
pub fn check(schema: &Validator, instance: &Value, cap: usize) -> (Vec<Problem>, bool) {
    let mut problems = Vec::new();
    let mut more = false;
    for error in schema.iter_errors(instance) {
        if problems.len() == cap {
            more = true;
            break;
        }
        problems.push(problem(&error));
    }
    (problems, more)
}

fn problem(error: &ValidationError<'_>) -> Problem {
    let pointer = error.instance_path().as_str().to_string();
    let message = match error.kind() {
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            format!("must be of type {expected}")
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or("?");
            format!("is missing the required field \"{name}\": add it")
        }
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => format!(
            "has fields this endpoint does not accept ({}): remove them",
            names(unexpected)
        ),
        ValidationErrorKind::MinLength { limit } => {
            format!("must be at least {limit} characters long")
        }
        ValidationErrorKind::MaxLength { limit } => {
            format!("must be at most {limit} characters long: shorten it")
        }
        ValidationErrorKind::Minimum { limit } => format!("must be at least {limit}"),
        ValidationErrorKind::Maximum { limit } => format!("must be at most {limit}"),
        ValidationErrorKind::ExclusiveMinimum { limit } => format!("must be greater than {limit}"),
        ValidationErrorKind::ExclusiveMaximum { limit } => format!("must be less than {limit}"),
        ValidationErrorKind::MinItems { limit } => format!("must have at least {limit} items"),
        ValidationErrorKind::MaxItems { limit } => format!("must have at most {limit} items"),
        ValidationErrorKind::AdditionalItems { limit } => {
            format!("must have at most {limit} items")
        }
        ValidationErrorKind::MinProperties { limit } => {
            format!("must have at least {limit} fields")
        }
        ValidationErrorKind::MaxProperties { limit } => format!("must have at most {limit} fields"),
        ValidationErrorKind::Enum { options } => match options.as_array() {
            Some(values) if values.len() <= 10 => format!(
                "must be one of {}",
                values
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => "must be one of the values the API documents".to_string(),
        },
        ValidationErrorKind::Constant { expected_value } => {
            format!("must be {expected_value}")
        }
        ValidationErrorKind::Pattern { .. } => "does not have the required format".to_string(),
        ValidationErrorKind::Format { format } => format!("must be a valid {format}"),
        ValidationErrorKind::MultipleOf { .. } => {
            "is not a multiple of the required step".to_string()
        }
        ValidationErrorKind::UniqueItems => "must not contain the same item twice".to_string(),
        ValidationErrorKind::Contains => {
            "does not contain any item of the required kind".to_string()
        }
        ValidationErrorKind::OneOfNotValid { .. } | ValidationErrorKind::AnyOf { .. } => {
            "does not match any of the accepted shapes".to_string()
        }
        ValidationErrorKind::OneOfMultipleValid { .. } => {
            "matches more than one of the accepted shapes; make it unambiguous".to_string()
        }
        ValidationErrorKind::UnevaluatedItems { .. } => {
            "has items this endpoint does not accept: remove them".to_string()
        }
        ValidationErrorKind::PropertyNames { .. } => {
            "has a field name that is not accepted".to_string()
        }
        ValidationErrorKind::FalseSchema => "is not accepted here: remove it".to_string(),
        _ => format!("does not satisfy the \"{}\" rule", error.kind().keyword()),
    };
    Problem::new(pointer, message)
}

/// Property names as the client wrote them, quoted, at most five; names
/// that do not look like field names (they could be personal data) are
/// counted, not shown.
fn names(unexpected: &[String]) -> String {
    let (fields, others): (Vec<&String>, Vec<&String>) =
        unexpected.iter().partition(|n| super::is_field_name(n));
    let mut shown: Vec<String> = fields.iter().take(5).map(|n| format!("\"{n}\"")).collect();
    let hidden = fields.len().saturating_sub(5) + others.len();
    if hidden > 0 {
        shown.push(if shown.is_empty() {
            format!("{hidden} unnamed")
        } else {
            format!("and {hidden} more")
        });
    }
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCHEMA: &str = r#"{
      "$schema": "https://json-schema.org/draft/2020-12/schema",
      "type": "object",
      "required": ["features"],
      "additionalProperties": false,
      "properties": {
        "features": { "type": "array", "minItems": 1, "maxItems": 8 },
        "max_tokens": { "type": "integer", "minimum": 1 },
        "mode": { "enum": ["fast", "accurate"] }
      }
    }"#;

    #[test]
    fn problems_point_into_the_request_without_echoing_values() {
        let s = compile(SCHEMA).unwrap();
        let (p, more) = check(
            &s,
            &json!({"features": "secret-value", "max_tokens": 0, "extra": 1}),
            10,
        );
        assert!(!more);
        let got: Vec<_> = p
            .iter()
            .map(|p| (p.pointer.as_str(), p.message.as_str()))
            .collect();
        assert!(
            got.contains(&("/features", "must be of type array")),
            "{got:?}"
        );
        assert!(
            got.contains(&("/max_tokens", "must be at least 1")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|(ptr, m)| ptr.is_empty() && m.contains("\"extra\"")),
            "{got:?}"
        );
        assert!(!format!("{got:?}").contains("secret-value"));
        let (p, _) = check(&s, &json!({"features": [1], "jo@example.org": 1}), 10);
        assert_eq!(
            p[0].message,
            "has fields this endpoint does not accept (1 unnamed): remove them"
        );
        let (p, _) = check(&s, &json!({}), 10);
        assert_eq!(
            p[0].message,
            "is missing the required field \"features\": add it"
        );
    }

    #[test]
    fn the_number_of_problems_is_capped() {
        let s = compile(r#"{"items": {"type": "string"}}"#).unwrap();
        let (p, more) = check(&s, &json!([1, 2, 3, 4, 5]), 3);
        assert_eq!(p.len(), 3);
        assert!(more);
    }

    #[test]
    fn broken_schemas_do_not_compile() {
        assert!(compile("{\"type\": ").unwrap_err().0.is_some());
        assert!(compile(r#"{"type": "strnig"}"#).is_err());
        assert!(compile(r#"{"$schema": "http://json-schema.org/draft-07/schema#"}"#).is_err());
        assert!(compile(r#"{"$ref": "https://example.com/remote.json"}"#).is_err());
    }
}
