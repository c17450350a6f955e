//! Response check cost on a streamed completion: 16 KiB of generated text
//! in 800 OpenAI-style events, one event per chunk, through the bundled
//! `predict` checks (canaries, a key pattern, personal data, a size limit),
//! through canaries only, and, as the baseline in the same run, through a
//! size limit only (event framing and JSON parsing, no text scanned).
//!
//! Run: `cargo bench --bench response_checks`.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis::response_checks::{ResponseChecks, ResponsePolicy, Step};
use portcullis::routes::RouteTable;

fn checks(responses: &str) -> ResponseChecks {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let routes = std::fs::read_to_string(root.join("routes.yaml")).unwrap();
    let routes = RouteTable::parse(&routes, Path::new("routes.yaml")).unwrap();
    ResponsePolicy::parse(responses, &routes)
        .unwrap()
        .for_route("predict")
        .unwrap()
        .clone()
}

/// 800 events of about 20 bytes of text each, then `[DONE]`.
fn stream() -> Vec<Vec<u8>> {
    let words = "the model answers with plain prose about deliveries, ";
    let mut events: Vec<Vec<u8>> = (0..800)
        .map(|i| {
            let start = (i * 7) % 30;
            let content = &words[start..start + 20];
            let chunk = serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
            });
            format!("data: {chunk}\n\n").into_bytes()
        })
        .collect();
    events.push(b"data: [DONE]\n\n".to_vec());
    events
}

fn scan_stream(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let bundled = std::fs::read_to_string(root.join("responses.yaml")).unwrap();
    let cases = [
        (
            "size limit only (baseline)",
            checks("checks:\n  - name: size\n    max_bytes: 1000000\n    action: block\nroutes:\n  predict: [size]\n"),
        ),
        (
            "canaries only",
            checks("checks:\n  - name: c\n    canaries: [PCX-CANARY-5f1e9c, PCX-CANARY-a7d204]\n    action: block\nroutes:\n  predict: [c]\n"),
        ),
        ("bundled predict checks", checks(&bundled)),
    ];
    let events = stream();
    let bytes: usize = events.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("sse stream, 800 events");
    group.throughput(Throughput::Bytes(bytes as u64));
    for (name, checks) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut scan = checks.scanner(Some("text/event-stream"));
                let mut sent = 0;
                for event in &events {
                    match scan.push(event) {
                        Step::Emit(out) => sent += out.len(),
                        Step::Block(_) => panic!("nothing to block"),
                    }
                }
                if let Step::Emit(out) = scan.finish() {
                    sent += out.len();
                }
                sent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, scan_stream);
criterion_main!(benches);
