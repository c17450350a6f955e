//! YAML through `serde_yaml_ng` (`serde_yaml` is archived), with errors
//! that name the line and column, as every config and policy file's
//! messages do.

/// An error message with its location: `line L column C: what`.
pub fn message(e: &serde_yaml_ng::Error) -> String {
    let (_, text) = located(e);
    match e.location() {
        Some(loc) => format!("line {} column {}: {text}", loc.line(), loc.column()),
        None => text,
    }
}

/// [`message`] for an error in `source`, the text that was parsed: a
/// duplicate key is located at its second occurrence ([`duplicate_at`])
/// rather than where its mapping starts, as the parser reports it.
pub fn message_in(e: &serde_yaml_ng::Error, source: &str) -> String {
    let (_, text) = located(e);
    match duplicate_at(e, source).or_else(|| e.location().map(|l| (l.line(), l.column()))) {
        Some((line, column)) => format!("line {line} column {column}: {text}"),
        None => text,
    }
}

/// [`located`] for an error in `source` (see [`message_in`]).
pub fn located_in(e: &serde_yaml_ng::Error, source: &str) -> (Option<usize>, String) {
    let (line, text) = located(e);
    (duplicate_at(e, source).map(|(l, _)| l).or(line), text)
}

/// For a ``duplicate field `KEY` `` error, the 1-based line and column of
/// the key's second occurrence in `source`: the parser reports the start
/// of the mapping that holds it (line 1 for a top-level key), which sends
/// the reader to the wrong place. Block mappings only (`key: value` lines
/// at the mapping's column); `None` when it cannot be found, e.g. in a flow
/// mapping (`{a: 1, a: 2}`), and the parser's location stands.
fn duplicate_at(e: &serde_yaml_ng::Error, source: &str) -> Option<(usize, usize)> {
    let text = e.to_string();
    let key = text.split("duplicate field `").nth(1)?.split('`').next()?;
    let loc = e.location()?;
    let indent = loc.column().checked_sub(1)?;
    let mut seen = 0;
    for (i, line) in source.lines().enumerate().skip(loc.line().checked_sub(1)?) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (head, rest) = (line.get(..indent)?, line.get(indent..)?);
        // The mapping's first line may be a sequence item (`- key: v`).
        let inside =
            head.bytes().all(|b| b == b' ') || (seen == 0 && head.trim_start().trim_end() == "-");
        if !inside {
            break; // the mapping has ended
        }
        let is_key = rest
            .strip_prefix(key)
            .is_some_and(|after| after.trim_start().starts_with(':'));
        if is_key {
            seen += 1;
            if seen == 2 {
                return Some((i + 1, loc.column()));
            }
        }
    }
    None
}

/// The 1-based line of an error, when the parser knows it.
pub fn line(e: &serde_yaml_ng::Error) -> Option<usize> {
    e.location().map(|l| l.line())
}

/// The error's line and its message without the parser's own
/// ` at line L column C` suffix, for messages that name the file and line
/// themselves (`file:line: message`).
pub fn located(e: &serde_yaml_ng::Error) -> (Option<usize>, String) {
    let mut message = e.to_string();
    if let Some(l) = e.location() {
        message = message.replacen(
            &format!(" at line {} column {}", l.line(), l.column()),
            "",
            1,
        );
    }
    (line(e), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Server {
        listen: Option<String>,
        limits: Option<Limits>,
        items: Option<Vec<Limits>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Limits {
        a: Option<u32>,
        b: Option<u32>,
    }

    #[test]
    fn a_duplicate_key_is_located_at_its_second_occurrence_not_its_mappings_start() {
        let cases = [
            (
                "listen: a\nlimits:\n  a: 1\n\n# note\nlisten: b\n",
                "line 6 column 1: duplicate field `listen`",
            ),
            (
                "listen: a\nlimits:\n  a: 1\n  b: 2\n  a: 3\n",
                "line 5 column 3: duplicate field `a`",
            ),
            (
                "items:\n  - a: 1\n    a: 2\n",
                "line 3 column 5: duplicate field `a`",
            ),
        ];
        for (source, expected) in cases {
            let e = serde_yaml_ng::from_str::<Server>(source).unwrap_err();
            let (at, what) = expected.split_once(": ").unwrap();
            let got = message_in(&e, source);
            assert!(
                got.starts_with(&format!("{at}: ")) && got.ends_with(what),
                "{got}"
            );
            let line: usize = expected[5..].split(' ').next().unwrap().parse().unwrap();
            assert_eq!(located_in(&e, source).0, Some(line));
        }
        // A flow mapping: the parser's own location stands.
        let source = "limits: {a: 1, a: 2}\n";
        let e = serde_yaml_ng::from_str::<Server>(source).unwrap_err();
        assert_eq!(message_in(&e, source), message(&e));
    }

    #[test]
    fn errors_name_their_line_once() {
        let e = serde_yaml_ng::from_str::<std::collections::BTreeMap<String, u32>>("a: 1\nb: x\n")
            .unwrap_err();
        assert!(
            message(&e).starts_with("line 2 column 4: "),
            "{}",
            message(&e)
        );
        let (line, text) = located(&e);
        assert_eq!(line, Some(2));
        assert!(!text.contains("line 2"), "{text}");
    }
}
