//! Finding the line of a node in routes.yaml text, for error messages.
//!
//! serde_yaml_ng keeps no spans, but it stamps an error with the position of
//! the node being deserialized when the error was raised. To find a node's
//! line, walk to it and raise an error there. This costs one parse per lookup,
//! and lookups happen only when reporting errors.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_yaml_ng::Value;

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

/// One step from a node to a child: a mapping key or a list index.
#[derive(Debug, Clone, Copy)]
pub(super) enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Deserializes with `seed` the node at `path` in the document.
pub(super) struct At<'p, S> {
    pub(super) path: &'p [Step<'p>],
    pub(super) seed: S,
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
pub(super) fn locate(text: &str, at: &[Step<'_>]) -> Option<usize> {
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
    use crate::routes::fixtures::*;

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
}
