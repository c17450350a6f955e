//! Reads a JSON body safely: UTF-8, nesting depth and number sizes are
//! checked in one linear pass BEFORE anything recursive runs, so a
//! 10,000-deep document costs a scan, not a stack; then it is parsed into
//! a `serde_json::Value` refusing duplicate keys (`crate::json`). Messages say where and
//! how to fix, and never repeat the body's content.

use serde_json::Value;

/// Longest number literal accepted (digits, sign, point, exponent).
pub const MAX_NUMBER_CHARS: usize = 40;

/// Why a body is not acceptable JSON; every message is safe to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// What is wrong, where, and how to fix it.
    pub message: String,
}

fn malformed(message: impl Into<String>) -> Malformed {
    Malformed {
        message: message.into(),
    }
}

/// Checks and parses a JSON body.
pub fn parse(body: &[u8], max_depth: usize) -> Result<Value, Malformed> {
    let text = std::str::from_utf8(body).map_err(|e| {
        malformed(format!(
            "the body is not valid UTF-8 (first bad byte at offset {}): send JSON encoded as UTF-8",
            e.valid_up_to()
        ))
    })?;
    scan(text.as_bytes(), max_depth)?;
    crate::json::from_str(text, duplicate_key_message).map_err(|e| describe(&e))
}

/// One pass over the bytes: nesting depth and the length of every number
/// literal, outside strings.
fn scan(bytes: &[u8], max_depth: usize) -> Result<(), Malformed> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    let (line, column) = position(bytes, i);
                    return Err(malformed(format!(
                        "the body nests arrays and objects more than {max_depth} levels deep (line {line}, column {column}): flatten the structure"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let literal = &bytes[start..i];
                // Where it is only for a refusal: counting lines up to every
                // number made a body of many numbers quadratic (a 64 KiB
                // array of `1,` took 720 ms).
                let at = || position(bytes, start);
                if literal.len() > MAX_NUMBER_CHARS {
                    let (line, column) = at();
                    return Err(malformed(format!(
                        "a number at line {line}, column {column} has {} characters; numbers may have at most {MAX_NUMBER_CHARS}: send large values as strings",
                        literal.len()
                    )));
                }
                let integer = !literal.iter().any(|c| matches!(c, b'.' | b'e' | b'E'));
                if integer {
                    // Digits only (and a sign) by the loop above.
                    let s = std::str::from_utf8(literal).unwrap_or("");
                    let digits = s.strip_prefix('-').unwrap_or(s);
                    let well_formed =
                        !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit());
                    if well_formed && s.parse::<i64>().is_err() && s.parse::<u64>().is_err() {
                        let (line, column) = at();
                        return Err(malformed(format!(
                            "the integer at line {line}, column {column} is out of range (integers must lie between -9223372036854775808 and 18446744073709551615): send it as a string"
                        )));
                    }
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// 1-based line and column (in bytes) of offset `at`.
fn position(bytes: &[u8], at: usize) -> (usize, usize) {
    let before = &bytes[..at];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = at
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, column)
}

/// A client-facing description of a serde_json error: its kind and
/// position, without echoing input.
fn describe(e: &serde_json::Error) -> Malformed {
    let (line, column) = (e.line(), e.column());
    let what = e.to_string();
    // serde_json appends " at line L column C"; we say it our way.
    let what = what
        .rsplit_once(" at line ")
        .map_or(what.as_str(), |(w, _)| w)
        .to_string();
    match e.classify() {
        serde_json::error::Category::Eof => malformed(format!(
            "the body ends early at line {line}, column {column}: the JSON is truncated or a bracket or quote is not closed"
        )),
        serde_json::error::Category::Data => malformed(format!("{what} (line {line}, column {column})")),
        _ => malformed(format!(
            "the body is not valid JSON at line {line}, column {column}: {what}"
        )),
    }
}

/// Names the key only when it looks like a field name (a key could itself
/// be personal data).
fn duplicate_key_message(key: &str) -> String {
    if super::is_field_name(key) {
        format!("the key \"{key}\" appears twice in one object: send each key once")
    } else {
        "an object has the same key twice: send each key once".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_json() {
        let v = parse(
            br#"{"a": [1, -2, 3.5, "x", true, null], "b": {"c": 18446744073709551615}}"#,
            8,
        )
        .unwrap();
        assert_eq!(v["a"][1], -2);
        assert_eq!(v["b"]["c"], u64::MAX);
    }

    #[test]
    fn ten_thousand_deep_nesting_is_refused_without_recursing() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse(deep.as_bytes(), 32).unwrap_err();
        assert!(e.message.contains("more than 32 levels"), "{}", e.message);
        let objects = "{\"a\":".repeat(10_000);
        assert!(parse(objects.as_bytes(), 32)
            .unwrap_err()
            .message
            .contains("levels"));
    }

    #[test]
    fn brackets_inside_strings_do_not_count_as_nesting() {
        let s = format!("{{\"a\": \"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        parse(s.as_bytes(), 2).unwrap();
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = parse(br#"{"model": "a", "model": "b"}"#, 8).unwrap_err();
        assert!(
            e.message.contains("\"model\" appears twice"),
            "{}",
            e.message
        );
        let e = parse(br#"{"x": {"a b@c": 1, "a b@c": 2}}"#, 8).unwrap_err();
        assert!(!e.message.contains("a b@c"), "{}", e.message);
        let e = parse(br#"{"4111111111111111": 1, "4111111111111111": 2}"#, 8).unwrap_err();
        assert!(!e.message.contains("4111"), "{}", e.message);
    }

    #[test]
    fn truncated_json_says_so() {
        let e = parse(br#"{"features": [1, 2"#, 8).unwrap_err();
        assert!(e.message.contains("ends early"), "{}", e.message);
        assert!(e.message.contains("line 1"), "{}", e.message);
    }

    #[test]
    fn invalid_utf8_names_the_offset() {
        let e = parse(b"{\"a\": \"\xff\"}", 8).unwrap_err();
        assert!(e.message.contains("not valid UTF-8"), "{}", e.message);
        assert!(e.message.contains("offset 7"), "{}", e.message);
    }

    #[test]
    fn huge_numbers_are_refused() {
        let e = parse(b"[123456789012345678901234567890]", 8).unwrap_err();
        assert!(e.message.contains("out of range"), "{}", e.message);
        let long = format!("[1.{}]", "0".repeat(100));
        assert!(parse(long.as_bytes(), 8)
            .unwrap_err()
            .message
            .contains("at most 40"));
        let e = parse(b"[1e400]", 8).unwrap_err();
        assert!(e.message.contains("number out of range"), "{}", e.message);
    }

    #[test]
    fn a_bad_number_after_many_good_ones_names_its_own_line_and_column() {
        // The position is worked out for the refused number only.
        let mut body = "[\n".to_string() + &"1,\n".repeat(20_000);
        body.push_str("  123456789012345678901234567890]");
        let e = parse(body.as_bytes(), 8).unwrap_err();
        assert!(e.message.contains("line 20002, column 3"), "{}", e.message);
        let mut body = "[".to_string() + &"7,".repeat(30_000);
        body.push_str(&format!("1.{}]", "0".repeat(100)));
        let e = parse(body.as_bytes(), 8).unwrap_err();
        assert!(e.message.contains("line 1, column 60002"), "{}", e.message);
        let ok = "[".to_string() + &"7,".repeat(30_000) + "7]";
        assert_eq!(
            parse(ok.as_bytes(), 8).unwrap().as_array().unwrap().len(),
            30_001
        );
    }

    #[test]
    fn trailing_garbage_and_syntax_errors_have_positions() {
        let e = parse(b"{\"a\": 1}\n x", 8).unwrap_err();
        assert!(e.message.contains("line 2"), "{}", e.message);
        let e = parse(b"{\"a\": tru}", 8).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
    }
}
