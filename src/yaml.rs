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
