//! The model registry, `policies/models.yaml`: models, their versions,
//! aliases (`latest`), deprecation and sunset dates and per-version input
//! constraints. It is the one source of the Cedar `Model` and
//! `ModelVersion` entities too, so a policy and a validation rule never
//! disagree about a model. Parsing, lookups and input checks; no I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::{json, Value};

use super::Problem;

/// The registry's file in the policy directory.
pub const MODELS_FILE: &str = "models.yaml";
/// Cedar entity types the registry defines.
pub const MODEL_TYPE: &str = "Model";
/// See [`MODEL_TYPE`].
pub const MODEL_VERSION_TYPE: &str = "ModelVersion";

/// Every model, by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    models: BTreeMap<String, Model>,
}

/// One model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// The owning org's id (Cedar `Org`).
    pub owner: String,
    /// Sensitivity class, e.g. `public`, `internal`, `restricted`.
    pub sensitivity: String,
    /// Alias -> version, e.g. `latest: v2`.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Version name -> version.
    pub versions: BTreeMap<String, Version>,
}

/// One version of a model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Version {
    /// Deprecated since (`YYYY-MM-DD`, UTC): still served, with
    /// `Deprecation` and `Sunset` headers.
    #[serde(default)]
    pub deprecated: Option<String>,
    /// Refused from this date (`YYYY-MM-DD`, UTC) on.
    #[serde(default)]
    pub sunset: Option<String>,
    /// What a request's body may hold for this version.
    #[serde(default)]
    pub input: Option<InputSpec>,
    #[serde(skip)]
    deprecated_epoch: Option<i64>,
    #[serde(skip)]
    sunset_epoch: Option<i64>,
}

/// Input constraints of a model version.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The positional features of `features` in the body; their count is
    /// the number of features the model was trained on.
    #[serde(default)]
    pub features: Option<Vec<Feature>>,
    /// The largest `max_tokens` a request may ask for.
    #[serde(default)]
    pub max_tokens: Option<u64>,
}

/// One input feature.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// The feature's name (used in messages).
    pub name: String,
    /// Its JSON type.
    #[serde(rename = "type")]
    pub kind: FeatureType,
    /// Smallest allowed value (numbers).
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest allowed value (numbers).
    #[serde(default)]
    pub max: Option<f64>,
    /// Longest allowed string, in characters.
    #[serde(default)]
    pub max_length: Option<usize>,
}

/// The JSON type of a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureType {
    /// Any JSON number.
    Number,
    /// A JSON number without a fractional part.
    Integer,
    /// A JSON string.
    String,
    /// `true` or `false`.
    Boolean,
}

impl FeatureType {
    fn article(self) -> &'static str {
        match self {
            FeatureType::Number => "a number",
            FeatureType::Integer => "an integer",
            FeatureType::String => "a string",
            FeatureType::Boolean => "true or false",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    #[serde(default)]
    models: BTreeMap<String, Model>,
}

/// A problem in models.yaml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryError {
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// The outcome of looking a model version up.
#[derive(Debug)]
pub enum Lookup<'r> {
    /// The version (resolved from an alias if one was given) is served.
    Found {
        /// The version's name (never an alias).
        version: &'r str,
        /// Its entry.
        entry: &'r Version,
    },
    /// No such model.
    UnknownModel,
    /// The model exists, the version does not.
    UnknownVersion {
        /// What exists, for the client: `v1 (deprecated), v2; aliases: latest -> v2`.
        available: String,
    },
    /// The version's sunset date has passed.
    Retired {
        /// The version's name.
        version: &'r str,
        /// Its sunset date as written.
        sunset: &'r str,
        /// What `latest` points to, if the model has that alias.
        successor: Option<&'r str>,
    },
}

impl Registry {
    /// Parses models.yaml, reporting every problem found.
    pub fn parse(text: &str) -> Result<Registry, Vec<RegistryError>> {
        let raw: RawRegistry = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, message) = crate::yaml::located_in(&e, text);
            vec![RegistryError { line, message }]
        })?;
        let mut errors = Vec::new();
        let mut models = raw.models;
        for (name, model) in models.iter_mut() {
            let line = line_of(text, &[name]);
            if !is_id(name) {
                errors.push(RegistryError {
                    line,
                    message: format!("model name {name:?} must match [A-Za-z0-9._-]+"),
                });
            }
            if model.versions.is_empty() {
                errors.push(RegistryError {
                    line,
                    message: format!(
                        "model '{name}' has no versions; list at least one under `versions:`"
                    ),
                });
            }
            for (alias, target) in &model.aliases {
                let line = line_of(text, &[name, "aliases", alias]);
                if model.versions.contains_key(alias) {
                    errors.push(RegistryError {
                        line,
                        message: format!(
                            "model '{name}': alias '{alias}' is also a version name; rename one"
                        ),
                    });
                }
                if !model.versions.contains_key(target) {
                    errors.push(RegistryError {
                        line,
                        message: format!(
                            "model '{name}': alias '{alias}' points to version '{target}', which is not listed; versions: {}",
                            model.versions.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
            }
            for (vname, version) in model.versions.iter_mut() {
                let vline = line_of(text, &[name, "versions", vname]);
                if !is_id(vname) {
                    errors.push(RegistryError {
                        line: vline,
                        message: format!(
                            "model '{name}': version name {vname:?} must match [A-Za-z0-9._-]+"
                        ),
                    });
                }
                for (field, date, slot) in [
                    (
                        "deprecated",
                        &version.deprecated,
                        &mut version.deprecated_epoch,
                    ),
                    ("sunset", &version.sunset, &mut version.sunset_epoch),
                ] {
                    if let Some(date) = date {
                        let problem = match crate::time::read_date(date) {
                            Ok(epoch) => {
                                *slot = Some(epoch);
                                continue;
                            }
                            Err(crate::time::BadTime::Format) => {
                                "is not a date; write YYYY-MM-DD".to_string()
                            }
                            Err(crate::time::BadTime::OutOfRange) => format!(
                                "is out of range; give a date from {} to {}",
                                crate::time::EARLIEST_DATE,
                                crate::time::LATEST_DATE
                            ),
                        };
                        errors.push(RegistryError {
                            line: line_of(text, &[name, "versions", vname, field]),
                            message: format!(
                                "model '{name}' version '{vname}': {field} {date:?} {problem}"
                            ),
                        });
                    }
                }
                if let (Some(d), Some(s)) = (version.deprecated_epoch, version.sunset_epoch) {
                    if s < d {
                        errors.push(RegistryError {
                            line: vline,
                            message: format!(
                                "model '{name}' version '{vname}': sunset comes before deprecated"
                            ),
                        });
                    }
                }
                if version.sunset_epoch.is_some() && version.deprecated_epoch.is_none() {
                    errors.push(RegistryError {
                        line: vline,
                        message: format!("model '{name}' version '{vname}': a version with a sunset date must be deprecated first; add `deprecated: YYYY-MM-DD`"),
                    });
                }
                for f in version
                    .input
                    .iter()
                    .flat_map(|i| i.features.iter().flatten())
                {
                    let bad_range = matches!((f.min, f.max), (Some(a), Some(b)) if a > b);
                    let numeric = matches!(f.kind, FeatureType::Number | FeatureType::Integer);
                    let problem = if bad_range {
                        Some("min is larger than max")
                    } else if !numeric && (f.min.is_some() || f.max.is_some()) {
                        Some("min and max apply to number and integer features only")
                    } else if f.kind != FeatureType::String && f.max_length.is_some() {
                        Some("max_length applies to string features only")
                    } else {
                        None
                    };
                    if let Some(problem) = problem {
                        errors.push(RegistryError {
                            line: vline,
                            message: format!(
                                "model '{name}' version '{vname}' feature '{}': {problem}",
                                f.name
                            ),
                        });
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(Registry { models })
        } else {
            Err(errors)
        }
    }

    /// True when no model is registered (no models.yaml).
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Model names.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// Looks up `version` (a version or an alias) of `model` at `now`
    /// (seconds since the epoch).
    pub fn lookup(&self, model: &str, version: &str, now: i64) -> Lookup<'_> {
        let Some(m) = self.models.get(model) else {
            return Lookup::UnknownModel;
        };
        let name = m.aliases.get(version).map_or(version, String::as_str);
        let Some((name, entry)) = m.versions.get_key_value(name) else {
            return Lookup::UnknownVersion {
                available: describe_versions(m),
            };
        };
        if let (Some(sunset), Some(at)) = (&entry.sunset, entry.sunset_epoch) {
            if now >= at {
                return Lookup::Retired {
                    version: name,
                    sunset,
                    successor: m.aliases.get("latest").map(String::as_str),
                };
            }
        }
        Lookup::Found {
            version: name,
            entry,
        }
    }

    /// The Cedar entities (JSON) for every model and version.
    pub fn entities(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for (name, m) in &self.models {
            out.push(json!({
                "uid": { "type": MODEL_TYPE, "id": name },
                "attrs": {
                    "owner": { "__entity": { "type": "Org", "id": m.owner } },
                    "sensitivity": m.sensitivity,
                },
                "parents": [],
            }));
            for (vname, v) in &m.versions {
                let mut attrs = json!({
                    "model": { "__entity": { "type": MODEL_TYPE, "id": name } },
                    "deprecated": v.deprecated.is_some(),
                });
                if let Some(sunset) = v.sunset_epoch {
                    attrs["sunset"] = json!(sunset);
                }
                out.push(json!({
                    "uid": { "type": MODEL_VERSION_TYPE, "id": format!("{name}/{vname}") },
                    "attrs": attrs,
                    "parents": [{ "type": MODEL_TYPE, "id": name }],
                }));
            }
        }
        out
    }
}

impl Version {
    /// `Deprecation` and `Sunset` response headers for a deprecated version
    /// (RFC 9745, RFC 8594).
    pub fn deprecation_headers(&self) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        if let Some(at) = self.deprecated_epoch {
            headers.push(("deprecation".to_string(), format!("@{at}")));
            if let Some(sunset) = self.sunset_epoch {
                let time =
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(sunset.max(0) as u64);
                headers.push(("sunset".to_string(), httpdate::fmt_http_date(time)));
            }
        }
        headers
    }

    /// Problems with `body` against this version's input constraints.
    pub fn check_input(&self, label: &str, body: &Value) -> Vec<Problem> {
        let mut problems = Vec::new();
        let Some(input) = &self.input else {
            return problems;
        };
        if let Some(features) = &input.features {
            let names = features
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            match body.get("features") {
                Some(Value::Array(values)) if values.len() != features.len() => {
                    problems.push(Problem::new(
                        "/features",
                        format!(
                            "{label} takes exactly {} ({names}); this request has {}: send one value per feature, in that order",
                            count(features.len(), "feature"),
                            values.len()
                        ),
                    ));
                }
                Some(Value::Array(values)) => {
                    for (i, (f, v)) in features.iter().zip(values).enumerate() {
                        if let Some(message) = check_feature(f, v) {
                            problems.push(Problem::new(format!("/features/{i}"), message));
                        }
                    }
                }
                _ => problems.push(Problem::new(
                    "/features",
                    format!(
                        "{label} needs `features`: an array of {} values ({names})",
                        features.len()
                    ),
                )),
            }
        }
        if let (Some(limit), Some(v)) = (input.max_tokens, body.get("max_tokens")) {
            let ok = v.as_u64().is_some_and(|n| n >= 1 && n <= limit);
            if !ok {
                problems.push(Problem::new(
                    "/max_tokens",
                    format!("max_tokens must be a whole number from 1 to {limit} for {label}"),
                ));
            }
        }
        problems
    }
}

fn check_feature(f: &Feature, v: &Value) -> Option<String> {
    let name = &f.name;
    let type_ok = match f.kind {
        FeatureType::Number => v.is_number(),
        FeatureType::Integer => v.is_i64() || v.is_u64(),
        FeatureType::String => v.is_string(),
        FeatureType::Boolean => v.is_boolean(),
    };
    if !type_ok {
        return Some(format!("feature '{name}' must be {}", f.kind.article()));
    }
    if let Some(x) = v.as_f64() {
        let below = f.min.is_some_and(|min| x < min);
        let above = f.max.is_some_and(|max| x > max);
        if below || above {
            let range = match (f.min, f.max) {
                (Some(a), Some(b)) => format!("between {a} and {b}"),
                (Some(a), None) => format!("at least {a}"),
                (None, Some(b)) => format!("at most {b}"),
                (None, None) => unreachable!("a bound was crossed"),
            };
            return Some(format!("feature '{name}' must be {range}"));
        }
    }
    if let (Some(limit), Some(s)) = (f.max_length, v.as_str()) {
        let len = s.chars().count();
        if len > limit {
            return Some(format!(
                "feature '{name}' may be at most {limit} characters long; this one has {len}: shorten it"
            ));
        }
    }
    None
}

/// "1 feature", "3 features".
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn describe_versions(m: &Model) -> String {
    let mut s = String::new();
    for (i, (name, v)) in m.versions.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(name);
        match (&v.deprecated, &v.sunset) {
            (Some(_), Some(sunset)) => {
                let _ = write!(s, " (deprecated, sunset {sunset})");
            }
            (Some(_), None) => s.push_str(" (deprecated)"),
            _ => {}
        }
    }
    if !m.aliases.is_empty() {
        s.push_str("; aliases: ");
        let aliases: Vec<String> = m
            .aliases
            .iter()
            .map(|(a, t)| format!("{a} -> {t}"))
            .collect();
        s.push_str(&aliases.join(", "));
    }
    s
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The 1-based line of the nested key path under `models:`, found by
/// walking the text: each key is looked for after the previous one, at a
/// deeper indentation.
fn line_of(text: &str, path: &[&str]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found: Option<usize> = None;
    for key in std::iter::once("models").chain(path.iter().copied()) {
        let block = format!("{key}:");
        let quoted = format!("\"{key}\":");
        let flow = [
            format!("{{ {key}:"),
            format!(", {key}:"),
            format!("{{{key}:"),
        ];
        let in_flow = |line: &str| flow.iter().any(|f| line.contains(f.as_str()));
        // A flow mapping keeps nested keys on the same line.
        if let Some(prev) = found {
            if in_flow(lines[prev - 1]) {
                continue;
            }
        }
        let from = found.unwrap_or(0);
        let hit = (from..lines.len()).find(|&i| {
            let t = lines[i].trim_start().trim_start_matches("- ");
            t.starts_with(&block) || t.starts_with(&quoted) || in_flow(lines[i])
        })?;
        found = Some(hit + 1);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTRY: &str = r#"
models:
  fraud:
    owner: acme
    sensitivity: restricted
    aliases: { latest: v3 }
    versions:
      v1:
        deprecated: 2020-01-01
        sunset: 2021-01-01
      v2:
        deprecated: 2024-01-01
        sunset: 2099-01-01
      v3:
        input:
          features:
            - { name: amount, type: number, min: 0, max: 100000 }
            - { name: hour, type: integer, min: 0, max: 23 }
            - { name: country, type: string, max_length: 2 }
          max_tokens: 16
"#;

    fn registry() -> Registry {
        Registry::parse(REGISTRY).unwrap()
    }

    #[test]
    fn dates_parse_to_epoch_seconds() {
        assert_eq!(crate::time::parse_date("1970-01-01"), Some(0));
        assert_eq!(crate::time::parse_date("2000-03-01"), Some(951_868_800));
        assert_eq!(crate::time::parse_date("2023-02-29"), None);
        assert_eq!(crate::time::parse_date("2024-02-29"), Some(1_709_164_800));
    }

    #[test]
    fn aliases_resolve_and_unknown_versions_list_what_exists() {
        let r = registry();
        assert!(matches!(
            r.lookup("fraud", "latest", 0),
            Lookup::Found { version: "v3", .. }
        ));
        let Lookup::UnknownVersion { available } = r.lookup("fraud", "v9", 0) else {
            panic!()
        };
        assert_eq!(available, "v1 (deprecated, sunset 2021-01-01), v2 (deprecated, sunset 2099-01-01), v3; aliases: latest -> v3");
        assert!(matches!(r.lookup("nope", "v1", 0), Lookup::UnknownModel));
    }

    #[test]
    fn a_version_past_its_sunset_is_retired_and_names_its_successor() {
        let now = crate::time::parse_date("2025-06-01").unwrap();
        let r = registry();
        let Lookup::Retired {
            sunset, successor, ..
        } = r.lookup("fraud", "v1", now)
        else {
            panic!()
        };
        assert_eq!((sunset, successor), ("2021-01-01", Some("v3")));
        let Lookup::Found { entry, .. } = r.lookup("fraud", "v2", now) else {
            panic!()
        };
        assert_eq!(
            entry.deprecation_headers(),
            vec![
                ("deprecation".to_string(), "@1704067200".to_string()),
                (
                    "sunset".to_string(),
                    "Thu, 01 Jan 2099 00:00:00 GMT".to_string()
                )
            ]
        );
    }

    #[test]
    fn input_constraints_point_at_the_offending_feature() {
        let r = registry();
        let Lookup::Found { entry, .. } = r.lookup("fraud", "v3", 0) else {
            panic!()
        };
        assert!(entry
            .check_input(
                "fraud/v3",
                &json!({"features": [10.5, 3, "DE"], "max_tokens": 4})
            )
            .is_empty());
        let p = entry.check_input("fraud/v3", &json!({"features": [10.5, 3]}));
        assert_eq!(p[0].pointer, "/features");
        assert!(
            p[0].message
                .contains("exactly 3 features (amount, hour, country)"),
            "{}",
            p[0].message
        );
        let p = entry.check_input(
            "fraud/v3",
            &json!({"features": [-1, 2.5, "DEU"], "max_tokens": 17}),
        );
        let pointers: Vec<_> = p.iter().map(|p| p.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            ["/features/0", "/features/1", "/features/2", "/max_tokens"]
        );
        assert!(p[0].message.contains("between 0 and 100000"));
        assert!(p[1].message.contains("an integer"));
        assert!(p[2].message.contains("at most 2 characters"));
    }

    #[test]
    fn broken_registries_are_reported_with_lines() {
        let e = Registry::parse("models:\n  m:\n    owner: a\n    sensitivity: x\n    aliases: { latest: v9 }\n    versions:\n      v1: { sunset: 2020-13-01, deprecated: 2020-01-01 }\n").unwrap_err();
        let messages: Vec<_> = e.iter().map(|e| (e.line, e.message.as_str())).collect();
        assert!(
            messages
                .iter()
                .any(|(l, m)| *l == Some(5) && m.contains("'v9'")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|(l, m)| *l == Some(7) && m.contains("YYYY-MM-DD")),
            "{messages:?}"
        );
        let e =
            Registry::parse("models:\n  m:\n    owner: a\n    sensitivity: x\n    versons: {}\n")
                .unwrap_err();
        assert_eq!(e[0].line, Some(5), "{e:?}");
    }

    #[test]
    fn a_sunset_date_past_the_supported_range_is_out_of_range_not_malformed() {
        let e = Registry::parse("models:\n  m:\n    owner: a\n    sensitivity: x\n    versions:\n      v1: { sunset: 9999-12-31 }\n").unwrap_err();
        assert_eq!(
            e[0].message,
            "model 'm' version 'v1': sunset \"9999-12-31\" is out of range; give a date from 0000-01-01 to 9999-12-30",
            "{e:?}"
        );
        assert_eq!(e[0].line, Some(6), "{e:?}");
    }

    #[test]
    fn registry_entities_carry_the_policy_attributes() {
        let entities = registry().entities();
        let v2 = entities
            .iter()
            .find(|e| e["uid"]["id"] == "fraud/v2")
            .unwrap();
        assert_eq!(v2["attrs"]["deprecated"], true);
        assert_eq!(v2["attrs"]["sunset"], 4_070_908_800i64);
    }
}
