//! Personal data in request bodies: e-mail addresses (not inside URLs),
//! phone numbers, payment card numbers (Luhn), US social security numbers
//! (valid ranges) and IBANs (mod-97). Finds where and what kind; the
//! matched text is never returned, so it cannot reach a response, a log
//! line or the audit trail.

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use super::rules::PiiKind;

/// One finding: where (a JSON pointer, or "" for a non-JSON body) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// JSON pointer to the string or number that holds it.
    pub pointer: String,
    /// The kind of personal data.
    pub kind: PiiKind,
}

/// At most this many findings are reported per request.
pub const MAX_FINDINGS: usize = 20;

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,24}\b")
        .expect("valid regex")
});
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\+\d[\d \t().-]{6,20}\d|\(\d{3}\) ?\d{3}[ .-]\d{4}\b|\b\d{3}[.-]\d{3}[.-]\d{4}\b")
        .expect("valid regex")
});
static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").expect("valid regex"));
static SSN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(\d{3})-(\d{2})-(\d{4})\b").expect("valid regex"));
static IBAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,8}\b").expect("valid regex")
});

/// The kinds (among `kinds`) found in one piece of text.
pub fn scan_text(text: &str, kinds: &[PiiKind]) -> Vec<PiiKind> {
    let present = Present::of(text);
    kinds
        .iter()
        .copied()
        .filter(|kind| present.may_hold(*kind) && matches(text, 0, *kind).next().is_some())
        .collect()
}

/// What each kind cannot do without, counted in one pass over the bytes:
/// most text fails every test, and then no regex runs at all.
#[derive(Debug, Clone, Copy)]
pub struct Present {
    digits: usize,
    upper: usize,
    at: bool,
    dash: bool,
}

impl Present {
    /// Counts the bytes of `text`.
    pub fn of(text: &str) -> Present {
        let mut p = Present {
            digits: 0,
            upper: 0,
            at: false,
            dash: false,
        };
        for b in text.bytes() {
            match b {
                b'0'..=b'9' => p.digits += 1,
                b'A'..=b'Z' => p.upper += 1,
                b'@' => p.at = true,
                b'-' => p.dash = true,
                _ => {}
            }
        }
        p
    }

    /// Whether text with these counts can hold `kind` at all.
    pub fn may_hold(self, kind: PiiKind) -> bool {
        match kind {
            PiiKind::Email => self.at,
            PiiKind::Phone => self.digits >= 8,
            PiiKind::Card => self.digits >= 13,
            PiiKind::Ssn => self.digits >= 9 && self.dash,
            PiiKind::Iban => self.digits >= 2 && self.upper >= 2,
        }
    }
}

/// The longest match of `kind`, in bytes: what a streaming scanner must
/// hold back to see a match split across chunks. E-mail addresses are
/// bounded by RFC 5321 (section 4.5.3.1.3: a path of 256 octets with its
/// angle brackets, so 254); the others by their own patterns (`\d` takes
/// any Unicode digit, up to 4 bytes each).
pub fn max_len(kind: PiiKind) -> usize {
    static BOUNDS: LazyLock<[usize; 5]> = LazyLock::new(|| {
        PiiKind::ALL.map(|kind| {
            let bounded = match kind {
                PiiKind::Email => return EMAIL_MAX_LEN,
                PiiKind::Phone => &*PHONE,
                PiiKind::Card => &*CARD,
                PiiKind::Ssn => &*SSN,
                PiiKind::Iban => &*IBAN,
            };
            regex_syntax::parse(bounded.as_str())
                .ok()
                .and_then(|hir| hir.properties().maximum_len())
                .expect("the pattern has a bounded length")
        })
    });
    BOUNDS[kind as usize]
}

/// RFC 5321's longest address (see [`max_len`]).
const EMAIL_MAX_LEN: usize = 254;

/// The byte ranges of `kind` in `text` that start at or after `from`, in
/// order; `text[..from]` is context only (word boundaries, URLs). The one
/// detector both the request body stage and the response checks call.
pub fn matches(text: &str, from: usize, kind: PiiKind) -> impl Iterator<Item = Range<usize>> + '_ {
    let re: &Regex = match kind {
        PiiKind::Email => &EMAIL,
        PiiKind::Phone => &PHONE,
        PiiKind::Card => &CARD,
        PiiKind::Ssn => &SSN,
        PiiKind::Iban => &IBAN,
    };
    let mut at = from;
    std::iter::from_fn(move || {
        while at <= text.len() {
            let m = re.find_at(text, at)?;
            at = if m.end() > m.start() {
                m.end()
            } else {
                m.end() + 1
            };
            let found = match kind {
                PiiKind::Email => (!inside_url(text, m.start())).then(|| m.range()),
                PiiKind::Phone => is_phone(m.as_str()).then(|| m.range()),
                // "+4915112345678" is a phone number, whatever its checksum.
                PiiKind::Card => (!text[..m.start()].ends_with('+') && is_card_number(m.as_str()))
                    .then(|| m.range()),
                PiiKind::Ssn => is_ssn(m.as_str()).then(|| m.range()),
                PiiKind::Iban => iban_prefix(m.as_str()).map(|len| m.start()..m.start() + len),
            };
            if found.is_some() {
                return found;
            }
        }
        None
    })
}

/// Findings in every string (and long integer) of a JSON document.
pub fn scan_json(value: &Value, kinds: &[PiiKind]) -> Vec<Finding> {
    let mut findings = Vec::new();
    // Room for the pointers of common bodies without growing on the way.
    let mut pointer = String::with_capacity(64);
    walk(value, kinds, &mut pointer, &mut findings);
    findings
}

fn walk(value: &Value, kinds: &[PiiKind], pointer: &mut String, out: &mut Vec<Finding>) {
    if out.len() >= MAX_FINDINGS {
        return;
    }
    match value {
        Value::String(s) => {
            for kind in scan_text(s, kinds) {
                out.push(Finding {
                    pointer: pointer.clone(),
                    kind,
                });
            }
        }
        // A card number sent as a JSON number.
        Value::Number(n) if kinds.contains(&PiiKind::Card) => {
            if let Some(u) = n.as_u64() {
                if is_card_number(itoa::Buffer::new().format(u)) {
                    out.push(Finding {
                        pointer: pointer.clone(),
                        kind: PiiKind::Card,
                    });
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(itoa::Buffer::new().format(i));
                walk(item, kinds, pointer, out);
                pointer.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let len = pointer.len();
                pointer.push('/');
                push_pointer_token(pointer, k);
                walk(v, kinds, pointer, out);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

/// Appends `key` as a JSON Pointer reference token (RFC 6901 section 3:
/// `~` as `~0`, `/` as `~1`), without building the escaped copy first.
fn push_pointer_token(pointer: &mut String, key: &str) {
    for c in key.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// Whether the match starting at `start` lies in a whitespace-delimited
/// token that is a URL (`https://cdn.example/logo@2x.png`,
/// `https://user@host/`): those are not e-mail addresses.
fn inside_url(text: &str, start: usize) -> bool {
    let token_start = text[..start]
        .rfind(|c: char| c.is_whitespace() || c == '"' || c == '<' || c == '(')
        .map_or(0, |p| p + 1);
    let token_end = text[start..]
        .find(|c: char| c.is_whitespace())
        .map_or(text.len(), |p| start + p);
    text[token_start..token_end].contains("://")
}

/// 8 to 15 digits after a `+`, or exactly 10 (North American).
fn is_phone(candidate: &str) -> bool {
    let digits = candidate.bytes().filter(u8::is_ascii_digit).count();
    if candidate.starts_with('+') {
        (8..=15).contains(&digits)
    } else {
        digits == 10
    }
}

/// 13 to 19 digits (separators ignored), a card network's leading digit
/// (2 to 6) and a valid Luhn check digit.
pub fn is_card_number(candidate: &str) -> bool {
    let digits: Vec<u32> = candidate.chars().filter_map(|c| c.to_digit(10)).collect();
    (13..=19).contains(&digits.len()) && (2..=6).contains(&digits[0]) && luhn(&digits)
}

/// The Luhn (mod 10) check over all digits, check digit last.
pub fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `AAA-GG-SSSS` in the ranges the SSA assigns: no 000, 666 or 9xx area,
/// no 00 group, no 0000 serial.
fn is_ssn(candidate: &str) -> bool {
    let mut parts = candidate.split('-').map(|p| p.parse::<u32>().unwrap_or(0));
    let (area, group, serial) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// The length of the longest IBAN at the start of a pattern match: the
/// pattern may run into following capitals ("... 00 OK"), so shorter
/// candidates are tried too, dropping trailing groups.
fn iban_prefix(matched: &str) -> Option<usize> {
    let mut candidate = matched;
    loop {
        if is_iban(candidate) {
            return Some(candidate.len());
        }
        candidate = &candidate[..candidate.rfind(' ')?];
    }
}

/// 15 to 34 characters (spaces ignored), country letters, check digits,
/// and the ISO 13616 mod-97 remainder 1.
pub fn is_iban(candidate: &str) -> bool {
    let compact: Vec<u8> = candidate.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len())
        || !compact[..2].iter().all(u8::is_ascii_uppercase)
        || !compact[2..4].iter().all(u8::is_ascii_digit)
        || !compact.iter().all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut remainder: u32 = 0;
    for &b in rearranged {
        let value = if b.is_ascii_digit() {
            u32::from(b - b'0')
        } else {
            u32::from(b.to_ascii_uppercase() - b'A') + 10
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<&'static str> {
        scan_text(text, &PiiKind::ALL)
            .into_iter()
            .map(PiiKind::as_str)
            .collect()
    }

    #[test]
    fn emails_are_found_but_not_inside_urls() {
        assert_eq!(
            kinds("write to alice.smith+ml@example.co.uk today"),
            ["email"]
        );
        assert!(kinds("see https://cdn.example.com/logo@2x.png").is_empty());
        assert!(kinds("clone https://deploy@git.example.org/repo.git").is_empty());
        assert!(kinds("a @ sign and user@localhost").is_empty());
    }

    #[test]
    fn phones_in_international_and_north_american_formats() {
        assert_eq!(kinds("call +44 20 7946 0958"), ["phone"]);
        assert_eq!(kinds("call (415) 555-0132"), ["phone"]);
        assert_eq!(kinds("call 415-555-0132"), ["phone"]);
        assert!(kinds("order 1234567890 shipped").is_empty());
        assert!(kinds("version 1.2.3 of 2024-05-01").is_empty());
    }

    #[test]
    fn card_numbers_need_luhn() {
        assert_eq!(kinds("card 4111 1111 1111 1111"), ["card"]);
        assert_eq!(kinds("card 5500-0000-0000-0004"), ["card"]);
        assert_eq!(kinds("4012888888881881"), ["card"]);
        // One digit off: fails Luhn.
        assert!(kinds("card 4111 1111 1111 1112").is_empty());
        // Passes Luhn but no card network starts with 0.
        assert!(kinds("id 0000000000000000").is_empty());
    }

    #[test]
    fn ssns_in_valid_ranges_only() {
        assert_eq!(kinds("ssn 123-45-6789"), ["ssn"]);
        assert!(kinds("ssn 000-45-6789").is_empty());
        assert!(kinds("ssn 666-45-6789").is_empty());
        assert!(kinds("ssn 912-45-6789").is_empty());
        assert!(kinds("ref 123-00-6789").is_empty());
    }

    #[test]
    fn ibans_need_mod_97() {
        assert_eq!(kinds("pay DE89 3704 0044 0532 0130 00 OK"), ["iban"]);
        assert_eq!(kinds("GB82WEST12345698765432"), ["iban"]);
        assert!(kinds("GB82WEST12345698765433").is_empty());
        assert!(kinds("SKU AB12CDEF3456GHIJ78").is_empty());
    }

    #[test]
    fn json_findings_point_at_the_value_and_carry_no_text() {
        let v: Value = serde_json::json!({
            "features": ["fine", {"note": "card 4111111111111111"}],
            "n": 4111111111111111u64,
            "a/b": "mail bob@example.org",
            "~/x~": ["ok", "carol@example.org"]
        });
        let found = scan_json(&v, &PiiKind::ALL);
        let pairs: Vec<_> = found
            .iter()
            .map(|f| (f.pointer.as_str(), f.kind.as_str()))
            .collect();
        assert!(pairs.contains(&("/features/1/note", "card")), "{pairs:?}");
        assert!(pairs.contains(&("/n", "card")), "{pairs:?}");
        assert!(pairs.contains(&("/a~1b", "email")), "{pairs:?}");
        // RFC 6901: `~` is written `~0` (before `/` becomes `~1`).
        assert!(pairs.contains(&("/~0~1x~0/1", "email")), "{pairs:?}");
        assert!(!format!("{found:?}").contains("4111"));
    }

    #[test]
    fn max_len_bounds_every_kind() {
        assert_eq!(max_len(PiiKind::Email), 254);
        assert_eq!(max_len(PiiKind::Ssn), 4 * 9 + 2);
        for kind in PiiKind::ALL {
            assert!((11..=254).contains(&max_len(kind)), "{kind:?}");
        }
    }

    #[test]
    fn matches_give_the_span_of_each_valid_match_from_an_offset() {
        let text = "a 4111 1111 1111 1112 b 4111 1111 1111 1111 c bob@example.org";
        let cards: Vec<_> = matches(text, 0, PiiKind::Card).collect();
        assert_eq!(cards, vec![24..43]);
        assert_eq!(matches(text, 44, PiiKind::Card).count(), 0);
        let mail: Vec<_> = matches(text, 0, PiiKind::Email).collect();
        assert_eq!(&text[mail[0].clone()], "bob@example.org");
        let iban = "pay DE89 3704 0044 0532 0130 00 OK";
        let found: Vec<_> = matches(iban, 0, PiiKind::Iban).collect();
        assert_eq!(&iban[found[0].clone()], "DE89 3704 0044 0532 0130 00");
    }

    #[test]
    fn only_the_kinds_asked_for() {
        assert!(scan_text("bob@example.org", &[PiiKind::Card]).is_empty());
    }
}
