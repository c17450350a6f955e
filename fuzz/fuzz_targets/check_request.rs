//! The ext_authz mapping: arbitrary bytes decoded as an Envoy
//! `CheckRequest` straight into our request (`check_decode::decode`, as
//! `Check` decodes what Envoy sends), decided against the bundled policies
//! and written back as a `CheckResponse` on the wire, which prost must
//! decode. Nothing may panic; a decoded request is always answered.
#![no_main]

use std::sync::LazyLock;

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use libfuzzer_sys::fuzz_target;
use portcullis::adapters::check_encode::EncodedCheckResponse;
use portcullis::policy::Snapshot;
use portcullis::residency::ResidencyConfig;
use prost::Message;

static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
    Snapshot::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
        .expect("the bundled policies load")
});

// Load the snapshot before the first input (LLVMFuzzerInitialize): its
// one-time cost must not count against the per-input timeout.
fuzz_target!(
    init: {
        LazyLock::force(&SNAPSHOT);
    },
    |data: &[u8]| {
    let Ok(mut req) = portcullis::adapters::check_decode::decode(data) else {
        return;
    };
    let residency = ResidencyConfig {
        region: Some("eu-west-1".into()),
        region_header: Some("x-gateway-region".into()),
    };
    req.gateway_region = residency.region_of(&req.headers);
    // The request's own credentials are not verified here (that needs
    // keys); an mTLS-like identity stands in when Envoy reported a peer.
    let identity = req.source_principal.as_ref().and_then(|p| {
        portcullis::authn::entity_uid("ServiceAccount", p).map(|uid| {
            portcullis::authn::Identity::new(uid, Vec::new(), portcullis::authn::AuthMethod::Mtls)
        })
    });
    let d = portcullis::pipeline::decide_offline(&SNAPSHOT, &req, identity, 0);
    // Our own wire encoding of the answer must decode as Envoy reads it.
    let encoded = EncodedCheckResponse::of(&d, &req);
    let response = CheckResponse::decode(encoded.as_bytes()).expect("the encoded answer decodes");
    assert!(response.status.is_some());
    assert!(response.http_response.is_some());
});
