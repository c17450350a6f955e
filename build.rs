//! Compiles our own protos (proto/portcullis/) with the pure-Rust `protox`
//! (no system `protoc`), and writes one descriptor set for gRPC server
//! reflection that also covers the Envoy services we serve.
//!
//! Envoy's .proto files are carried in proto/third_party/ (see its README):
//! this script never asks cargo for metadata or the network, so a fresh clone
//! builds with an empty cargo home.

use std::path::PathBuf;

const OWN_PROTOS: &[&str] = &["portcullis/admin/v1/admin.proto"];
/// Compiled into the reflection descriptor set. Reflection lists only the
/// services the server registers, so ext_proc's messages can be here before
/// its adapter is.
const ENVOY_PROTOS: &[&str] = &[
    "envoy/service/auth/v3/external_auth.proto",
    "envoy/service/ratelimit/v3/rls.proto",
    "envoy/service/ext_proc/v3/external_processor.proto",
];
/// Include roots under proto/third_party/, one per upstream repository.
const THIRD_PARTY: &[&str] = &["data-plane-api", "xds", "protoc-gen-validate", "googleapis"];

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));

    let own = protox::compile(OWN_PROTOS, ["proto"]).expect("compile proto/ with protox");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(own)
        .expect("generate Rust code for proto/");

    // Descriptor set for reflection: our protos plus Envoy's, so that
    // `grpcurl list/describe` and JSON calls work without proto files.
    let third_party = PathBuf::from("proto").join("third_party");
    let mut includes: Vec<PathBuf> = THIRD_PARTY.iter().map(|t| third_party.join(t)).collect();
    includes.push(PathBuf::from("proto"));
    let mut files: Vec<&str> = ENVOY_PROTOS.to_vec();
    files.extend_from_slice(OWN_PROTOS);
    let all = protox::compile(files, includes)
        .expect("compile proto/third_party (Envoy's protos) for reflection");
    let bytes = prost::Message::encode_to_vec(&all);
    std::fs::write(out.join("reflection_descriptor.bin"), bytes).expect("write descriptor set");
}
