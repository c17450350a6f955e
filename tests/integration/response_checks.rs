//! Response checks through the public API: `responses.yaml` loaded with the
//! rest of a real policy directory (and refused with precise errors), the
//! snapshot's compiled checks scanning bodies cut at arbitrary bytes.

use portcullis::policy::reload::PolicyStore;
use portcullis::policy::snapshot::Snapshot;
use portcullis::response_checks::{header_value, Kind, ResponseChecks, ResponseScan, Step};

use crate::support::PolicyDir;

/// Checks on the bundled `predict` and `feedback` routes.
const RESPONSES: &str = r#"# Response checks for the tests.
checks:
  - name: prompt-canary
    canaries: [PCX-7f3a9b2e, "CANARY::Ω"]
    action: block
  - name: provider-keys
    pattern: 'sk-[A-Za-z0-9]{32}'
    action: redact
  - name: personal-data
    pii: [email, card]
    action: redact
  - name: output-size
    max_bytes: 2000
    action: block
routes:
  predict: [prompt-canary, provider-keys, personal-data, output-size]
  feedback: [personal-data]
"#;

fn dir_with(responses: &str) -> PolicyDir {
    let dir = PolicyDir::bundled();
    dir.write("responses.yaml", responses);
    dir
}

fn predict_checks() -> ResponseChecks {
    let dir = dir_with(RESPONSES);
    let snapshot = Snapshot::load(dir.path()).expect("loads");
    snapshot
        .responses
        .for_route("predict")
        .expect("checks")
        .clone()
}

/// The problems of a directory whose responses.yaml is `responses`.
fn load_errors(responses: &str) -> Vec<String> {
    let dir = dir_with(responses);
    let errors = Snapshot::load(dir.path()).expect_err("refused").errors;
    errors.iter().map(ToString::to_string).collect()
}

fn sse(content: &str) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
    });
    format!("data: {chunk}\r\n\r\n")
}

/// Runs `chunks` then the end through `scan`: what was sent (the error
/// event or problem included), whether it was blocked.
fn run(scan: &mut ResponseScan, chunks: &[&[u8]]) -> (Vec<u8>, bool) {
    let (mut sent, blocked) = scan.run(chunks.iter().copied());
    let was_blocked = blocked.is_some();
    sent.extend(blocked.map(|b| b.body).unwrap_or_default());
    (sent, was_blocked)
}

/// The generated text of a sent event stream; every data event must be
/// valid JSON (or `[DONE]`).
fn generated(sent: &[u8]) -> String {
    let text = String::from_utf8(sent.to_vec()).expect("UTF-8");
    let mut out = String::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).expect("valid JSON");
        if let Some(choices) = v["choices"].as_array() {
            for c in choices {
                out.push_str(c["delta"]["content"].as_str().unwrap_or(""));
            }
        }
    }
    out
}

#[test]
fn a_canary_in_a_buffered_completion_is_blocked_with_a_problem_document() {
    let checks = predict_checks();
    let body = br#"{"choices":[{"message":{"role":"assistant","content":"sure: PCX-7f3a9b2e"}}]}"#;
    let mut scan = checks.scanner(Some("application/json"));
    assert_eq!(scan.push(body), Step::Emit(Vec::new()));
    let Step::Block(blocked) = scan.finish() else {
        panic!("not blocked");
    };
    assert_eq!(blocked.status, 502);
    let problem: serde_json::Value = serde_json::from_slice(&blocked.body).unwrap();
    assert_eq!(problem["type"], "urn:portcullis:problem:response_withheld");
    assert!(!String::from_utf8_lossy(&blocked.body).contains("PCX-7f3a9b2e"));
    assert_eq!(blocked.finding.check, "prompt-canary");
}

#[test]
fn a_canary_split_across_two_events_at_every_byte_never_reaches_the_client() {
    let checks = predict_checks();
    let stream = [
        sse("ok PCX-7f3"),
        sse("a9b2e more"),
        "data: [DONE]\r\n\r\n".into(),
    ]
    .concat();
    let bytes = stream.as_bytes();
    for split in 0..=bytes.len() {
        let mut scan = checks.scanner(Some("text/event-stream"));
        let (sent, blocked) = run(&mut scan, &[&bytes[..split], &bytes[split..]]);
        assert!(blocked, "at {split}");
        let text = String::from_utf8_lossy(&sent);
        assert!(!text.contains("7f3a9b2e"), "at {split}: {text}");
        assert!(
            text.ends_with("\n\n") && text.contains("event: error"),
            "at {split}: {text}"
        );
        // Where it starts in the generated text; the text is shorter than
        // the hold, so it is found at `[DONE]` (event 2).
        let f = &scan.findings()[0];
        assert_eq!((f.offset, f.event), (3, Some(2)), "at {split}");
    }
}

#[test]
fn a_secret_split_across_events_and_chunks_is_redacted_with_valid_events() {
    let checks = predict_checks();
    let key = "sk-0123456789abcdefghijABCDEFGHIJkl";
    let stream = [
        sse("here is "),
        sse(&key[..10]),
        sse(&key[10..]),
        sse(" and bob@example.org."),
        "data: [DONE]\r\n\r\n".into(),
    ]
    .concat();
    let bytes = stream.as_bytes();
    for split in (0..=bytes.len()).step_by(7) {
        let mut scan = checks.scanner(Some("text/event-stream; charset=utf-8"));
        let (sent, blocked) = run(&mut scan, &[&bytes[..split], &bytes[split..]]);
        assert!(!blocked);
        assert_eq!(
            generated(&sent),
            "here is [REDACTED:provider-keys] and [REDACTED:personal-data].",
            "at {split}"
        );
        assert!(
            String::from_utf8_lossy(&sent).ends_with("data: [DONE]\n\n")
                || String::from_utf8_lossy(&sent).ends_with("data: [DONE]\r\n\r\n")
        );
        let kinds: Vec<_> = scan.findings().iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::Pattern,
                Kind::Pii(portcullis::validate::rules::PiiKind::Email)
            ]
        );
    }
}

#[test]
fn text_held_back_goes_out_before_done_when_no_event_ends_the_choice() {
    let checks = predict_checks();
    let mut scan = checks.scanner(Some("text/event-stream"));
    let stream = [sse("the end is near"), "data: [DONE]\n\n".into()].concat();
    let (sent, _) = run(&mut scan, &[stream.as_bytes()]);
    assert_eq!(generated(&sent), "the end is near");
    let text = String::from_utf8(sent).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

#[test]
fn a_multibyte_canary_and_text_split_inside_a_character_survive_every_split() {
    let checks = predict_checks();
    let body = "grüße 東京 CANARY::Ω ✓".as_bytes();
    for split in 0..=body.len() {
        let mut scan = checks.scanner(Some("text/plain"));
        let (sent, blocked) = run(&mut scan, &[&body[..split], &body[split..]]);
        assert!(blocked, "at {split}");
        assert!(
            !String::from_utf8_lossy(&sent).contains("CANARY"),
            "at {split}"
        );
    }
    let clean = "grüße 東京 ✓".as_bytes();
    for split in 0..=clean.len() {
        let mut scan = checks.scanner(Some("text/plain"));
        let (sent, _) = run(&mut scan, &[&clean[..split], &clean[split..]]);
        assert_eq!(sent, clean, "at {split}");
    }
}

#[test]
fn max_bytes_blocks_a_stream_with_an_error_event_after_what_was_sent() {
    let checks = predict_checks();
    let mut scan = checks.scanner(Some("text/event-stream"));
    let event = sse(&"x".repeat(600));
    let chunks: Vec<&[u8]> = vec![event.as_bytes(); 5];
    let (sent, blocked) = run(&mut scan, &chunks);
    assert!(blocked);
    let text = String::from_utf8(sent).unwrap();
    assert!(text.contains("event: error\ndata: {\"error\""), "{text}");
    assert!(generated(&text.into_bytes()).len() <= 2000);
    let f = scan
        .findings()
        .iter()
        .find(|f| f.kind == Kind::MaxBytes)
        .unwrap();
    assert_eq!((f.check.as_str(), f.offset), ("output-size", 2000));
}

#[test]
fn personal_data_in_a_json_body_is_redacted_on_one_route_and_findings_hold_no_text() {
    let checks = predict_checks();
    let mut scan = checks.scanner(Some("application/json"));
    let body =
        br#"{"predictions": [{"note": "card 4111 1111 1111 1111, mail a@example.com"}], "n": 1}"#;
    let (sent, blocked) = run(&mut scan, &[&body[..30], &body[30..]]);
    assert!(!blocked);
    let sent = String::from_utf8(sent).unwrap();
    assert_eq!(
        sent,
        r#"{"predictions": [{"note": "card [REDACTED:personal-data], mail [REDACTED:personal-data]"}], "n": 1}"#
    );
    let findings = format!(
        "{:?} {}",
        scan.findings(),
        header_value(scan.findings()).unwrap()
    );
    assert!(
        !findings.contains("4111") && !findings.contains("a@example.com"),
        "{findings}"
    );
}

#[test]
fn a_pattern_that_does_not_compile_is_refused_at_load_with_its_line() {
    let errors = load_errors(
        "checks:\n  - name: keys\n    pattern: 'sk-[A-Z'\n    action: redact\nroutes:\n  predict: [keys]\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("responses.yaml:2: check 'keys': pattern does not compile: "),
        "{errors:?}"
    );
}

#[test]
fn an_unbounded_pattern_without_max_match_len_is_refused_and_loads_with_it() {
    let unbounded = "checks:\n  - name: keys\n    pattern: 'sk-[A-Za-z0-9]{20,}'\n    action: redact\nroutes:\n  predict: [keys]\n";
    let errors = load_errors(unbounded);
    assert_eq!(
        errors,
        ["responses.yaml:2: check 'keys': pattern has no longest match (+, * or {n,}); bound it ({n,m}) or set max_match_len, the longest match in bytes"]
    );
    let bounded = unbounded.replace("action: redact", "max_match_len: 80\n    action: redact");
    let dir = dir_with(&bounded);
    let snapshot = Snapshot::load(dir.path()).expect("loads with max_match_len");
    assert_eq!(
        snapshot
            .responses
            .for_route("predict")
            .unwrap()
            .hold_bytes(),
        84
    );
}

#[test]
fn an_empty_canary_an_unknown_route_and_a_duplicate_name_are_each_refused() {
    let errors = load_errors(
        "checks:\n  - name: c\n    canaries: [ok, '']\n    action: block\n  - name: c\n    canaries: [x]\n    action: tag\n  - name: size\n    max_bytes: 10\n    action: redact\nroutes:\n  predict: [c, size]\n  nowhere: [c]\n",
    );
    assert_eq!(
        errors,
        [
            "responses.yaml:2: check 'c': canary 2 is empty; a canary must be a non-empty string",
            "responses.yaml:5: duplicate check name 'c'",
            "responses.yaml:8: check 'size': a size limit cannot redact; use block or tag",
            "responses.yaml:13: routes: no route 'nowhere' in routes.yaml",
        ]
    );
}

#[test]
fn a_check_no_route_uses_and_an_unknown_check_are_refused() {
    let errors = load_errors(
        "checks:\n  - name: idle\n    pii: [email]\n    action: tag\nroutes:\n  predict: [missing]\n",
    );
    assert_eq!(
        errors,
        [
            "responses.yaml:2: check 'idle' applies to no route; list it under routes or remove it",
            "responses.yaml:6: routes: route 'predict' names check 'missing', which is not in checks",
        ]
    );
}

#[test]
fn a_bad_responses_file_on_reload_keeps_the_last_good_snapshot() {
    let dir = dir_with(RESPONSES);
    let store = PolicyStore::load(dir.path()).expect("loads");
    let before = store.current().version.clone();
    dir.write(
        "responses.yaml",
        "checks:\n  - name: keys\n    pattern: '(sk-'\n    action: redact\nroutes:\n  predict: [keys]\n",
    );
    let err = store.reload().expect_err("refused");
    assert!(err.to_string().contains("responses.yaml:2"), "{err}");
    let current = store.current();
    assert_eq!(current.version, before);
    assert!(current.responses.for_route("predict").is_some());
    dir.write(
        "responses.yaml",
        "checks:\n  - name: pd\n    pii: [email]\n    action: tag\nroutes:\n  feedback: [pd]\n",
    );
    store.reload().expect("a good file loads");
    let current = store.current();
    assert!(current.responses.for_route("predict").is_none());
    assert!(current.responses.for_route("feedback").is_some());
}

#[test]
fn policy_tests_check_responses_and_report_a_wrong_expectation() {
    let dir = PolicyDir::bundled().with_policy_tests();
    let snapshot = Snapshot::load(dir.path()).expect("loads");
    let report = portcullis::adapters::offline::test::run(dir.path(), &snapshot);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    // The bundled response cases ran (and a wrong expectation fails).
    dir.write(
        "tests/responses.yaml",
        &dir.read("tests/responses.yaml").replacen(
            "blocked: planted-canary",
            "blocked: provider-key",
            1,
        ),
    );
    let report = portcullis::adapters::offline::test::run(dir.path(), &snapshot);
    let failures: Vec<String> = report.failures.iter().map(ToString::to_string).collect();
    assert_eq!(
        failures,
        ["tests/responses.yaml:4: case 'a planted canary in a prediction withholds the response': expected the response blocked by 'provider-key', got it blocked by 'planted-canary'"]
    );
}

#[test]
fn a_match_longer_than_max_match_len_is_still_redacted_whole_in_small_chunks() {
    let dir = dir_with(
        "checks:\n  - name: tok\n    pattern: 'tok_[a-z0-9]+'\n    max_match_len: 8\n    action: redact\nroutes:\n  predict: [tok]\n",
    );
    let snapshot = Snapshot::load(dir.path()).expect("loads");
    let checks = snapshot.responses.for_route("predict").unwrap();
    let body = b"a tok_abcdefghijklmnopqrstuvwxyz0123456789 b";
    for size in 1..=7 {
        let mut scan = checks.scanner(Some("text/plain"));
        let (sent, blocked) = run(&mut scan, &body.chunks(size).collect::<Vec<_>>());
        assert!(!blocked);
        assert_eq!(sent, b"a [REDACTED:tok] b", "chunks of {size}");
    }
}

#[test]
fn a_block_mid_chunk_sends_the_released_text_of_earlier_events_then_the_error_event() {
    let checks = predict_checks();
    let mut scan = checks.scanner(Some("text/event-stream"));
    // Enough text after the canary that it is seen whole in this chunk.
    let tail = format!(" PCX-7f3a9b2e {}", "b".repeat(300));
    let chunk = [sse(&"a".repeat(400)), sse(&tail)].concat();
    let Step::Block(blocked) = scan.push(chunk.as_bytes()) else {
        panic!("not blocked");
    };
    assert!(blocked.stream);
    let body = String::from_utf8(blocked.body).unwrap();
    let (events, error) = body.split_once("event: error\n").expect("an error event");
    let released = generated(events.as_bytes());
    // The text no match can start in went out; the rest was held.
    assert_eq!(released.len(), 400 - checks.hold_bytes(), "{body}");
    assert!(released.bytes().all(|b| b == b'a'));
    assert!(
        error.starts_with("data: {\"error\":") && !error.contains("PCX"),
        "{error}"
    );
}

#[test]
fn a_stream_cut_into_chunks_of_every_size_redacts_the_same() {
    let checks = predict_checks();
    let key = "sk-0123456789abcdefghijABCDEFGHIJkl";
    let stream = [
        sse("first "),
        sse(&key[..5]),
        sse(&key[5..20]),
        sse(&key[20..]),
        sse(" last é"),
        "data: [DONE]\n\n".into(),
    ]
    .concat();
    for size in 1..=17 {
        let mut scan = checks.scanner(Some("text/event-stream"));
        let chunks: Vec<&[u8]> = stream.as_bytes().chunks(size).collect();
        let (sent, blocked) = run(&mut scan, &chunks);
        assert!(!blocked);
        assert_eq!(
            generated(&sent),
            "first [REDACTED:provider-keys] last é",
            "chunks of {size}"
        );
    }
}

/// A small deterministic generator (xorshift64), for reproducible cases.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Overlapping checks of every kind, and the pieces random texts are
/// made of (matches, their prefixes, multi-byte characters).
fn overlapping_checks() -> (ResponseChecks, [&'static str; 15]) {
    let dir = dir_with(
        "checks:\n  - name: canary\n    canaries: [PCX-7f3a, PCX-7f3a9b2e, 'Ω-mark']\n    action: redact\n  - name: keys\n    pattern: 'sk-[a-z0-9]{8,12}'\n    action: redact\n  - name: pd\n    pii: [email, card]\n    action: redact\nroutes:\n  predict: [canary, keys, pd]\n",
    );
    let snapshot = Snapshot::load(dir.path()).expect("loads");
    let checks = snapshot.responses.for_route("predict").unwrap().clone();
    let pieces = [
        "PCX-7f3a9b2e",
        "PCX-7f3a",
        "PCX-",
        "Ω-mark",
        "sk-abcdef123",
        "sk-ab",
        "bob@example.org",
        "4111 1111 1111 1111",
        " ",
        "word ",
        "é",
        "東京",
        "\n",
        "x@y",
        "-",
    ];
    (checks, pieces)
}

/// `bytes` cut at up to 5 random points.
fn cut<'a>(rng: &mut Xorshift, bytes: &'a [u8]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = (0..rng.below(6))
        .map(|_| rng.below(bytes.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut at = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        chunks.push(&bytes[at..cut]);
        at = cut;
    }
    chunks
}

#[test]
fn streamed_text_is_redacted_exactly_as_the_whole_body_whatever_the_cuts() {
    let (checks, pieces) = overlapping_checks();
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    for case in 0..300 {
        let text: String = (0..rng.below(40) + 1)
            .map(|_| pieces[rng.below(pieces.len())])
            .collect();
        let whole = checks.scanner(Some("text/plain")).run([text.as_bytes()]).0;
        let chunks = cut(&mut rng, text.as_bytes());
        let streamed = checks
            .scanner(Some("text/plain"))
            .run(chunks.iter().copied())
            .0;
        assert_eq!(
            String::from_utf8_lossy(&streamed),
            String::from_utf8_lossy(&whole),
            "case {case}: {text:?} cut as {chunks:?}"
        );
    }
}

#[test]
fn an_event_stream_is_redacted_exactly_as_its_whole_text_whatever_the_cuts() {
    let (checks, pieces) = overlapping_checks();
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
    for case in 0..200 {
        let contents: Vec<String> = (0..rng.below(8) + 1)
            .map(|_| {
                (0..rng.below(5) + 1)
                    .map(|_| pieces[rng.below(pieces.len())])
                    .collect()
            })
            .collect();
        let text = contents.concat();
        let whole = checks.scanner(Some("text/plain")).run([text.as_bytes()]).0;
        let mut stream: String = contents.iter().map(|c| sse(c)).collect();
        stream.push_str("data: [DONE]\r\n\r\n");
        let chunks = cut(&mut rng, stream.as_bytes());
        let (sent, blocked) = run(&mut checks.scanner(Some("text/event-stream")), &chunks);
        assert!(!blocked);
        assert_eq!(
            generated(&sent),
            String::from_utf8_lossy(&whole),
            "case {case}: {contents:?}"
        );
    }
}
