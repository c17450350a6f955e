//! The body validator: arbitrary bytes as the body of the bundled `predict`
//! route (for each registered model version) and `feedback` route: content
//! type, size, depth scan, duplicate-key parse, JSON Schema, model input
//! constraints, PII scan; plus the JSON reader and the PII scanner on their
//! own. Nothing may panic, an accepted JSON body must be well-formed JSON,
//! and a refusal never repeats the body.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portcullis::policy::Snapshot;
use portcullis::request::AccessRequest;
use portcullis::validate::models::Lookup;
use portcullis::validate::{check_body, json, pii, rules::PiiKind, ModelInput};

static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
    Snapshot::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
        .expect("the bundled policies load")
});

const MODELS: [(&str, &str); 4] = [
    ("sentiment", "v2"),
    ("fraud-detector", "latest"),
    ("translate", "v1"),
    ("credit-score", "v1"),
];

// Load the snapshot before the first input (LLVMFuzzerInitialize): its
// one-time cost must not count against the per-input timeout.
fuzz_target!(
    init: {
        LazyLock::force(&SNAPSHOT);
    },
    |data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let s = &*SNAPSHOT;
    let route_name = if selector & 0x08 == 0 {
        "predict"
    } else {
        "feedback"
    };
    let route = s
        .routes
        .routes()
        .iter()
        .find(|r| r.name == route_name)
        .expect("bundled route");
    let spec = route.body.as_ref().expect("the route has a body rule");
    let schema = spec
        .schema
        .as_ref()
        .and_then(|name| s.schemas.get(name))
        .map(|v| &**v);
    let (model, version) = MODELS[usize::from(selector % 4)];
    let found = match s.models.lookup(model, version, 0) {
        Lookup::Found { version, entry } => Some((format!("{model}/{version}"), entry)),
        _ => None,
    };
    let input = found
        .as_ref()
        .filter(|_| spec.model_input)
        .map(|(label, version)| ModelInput { label, version });

    let content_type = if selector & 0x10 == 0 {
        "application/json"
    } else {
        "text/plain"
    };
    let mut req = AccessRequest::for_test("POST", "/fuzz");
    req.body = Some(body.to_vec());
    req.headers
        .insert("content-type".into(), content_type.into());
    if selector & 0x20 != 0 {
        req.headers
            .insert("x-envoy-auth-partial-body".into(), "true".into());
    }
    match check_body(&req, spec, schema, input) {
        Ok(_) => {
            if content_type == "application/json" {
                assert!(serde_json::from_slice::<serde_json::Value>(body).is_ok());
            }
        }
        Err(rejection) => {
            // Long enough to be the body's own text, not a field name.
            if body.len() >= 48 {
                let text = String::from_utf8_lossy(body);
                let shown = format!("{} {:?}", rejection.detail, rejection.problems);
                assert!(!shown.contains(&*text), "a refusal repeated the body");
            }
        }
    }

    let _ = json::parse(body, 1 + usize::from(selector % 64));
    let _ = pii::scan_text(&String::from_utf8_lossy(body), &PiiKind::ALL);
});
