//! Compiles our own protos (proto/) with the pure-Rust `protox` (no system
//! `protoc`), and writes one descriptor set for gRPC server reflection that
//! also covers the Envoy services we serve (their .proto sources ship inside
//! the `envoy-types` crate).

use std::path::{Path, PathBuf};
use std::process::Command;

const OWN_PROTOS: &[&str] = &["portcullis/admin/v1/admin.proto"];
const ENVOY_PROTOS: &[&str] = &[
    "envoy/service/auth/v3/external_auth.proto",
    "envoy/service/ratelimit/v3/rls.proto",
];

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));

    let own = protox::compile(OWN_PROTOS, ["proto"]).expect("compile proto/ with protox");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(own.clone())
        .expect("generate Rust code for proto/");

    // Descriptor set for reflection: our protos plus Envoy's, so that
    // `grpcurl list/describe` and JSON calls work without proto files.
    let envoy_proto = envoy_types_proto_dir();
    let data_plane = envoy_proto.join("data-plane-api");
    let includes: Vec<PathBuf> = [
        data_plane.clone(),
        envoy_proto.join("xds"),
        envoy_proto.join("protoc-gen-validate"),
        envoy_proto.join("googleapis"),
        envoy_proto.join("cel-spec").join("proto"),
        envoy_proto.join("opentelemetry-proto"),
        envoy_proto.join("client_model"),
        PathBuf::from("proto"),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect();
    let mut files: Vec<&str> = ENVOY_PROTOS.to_vec();
    files.extend_from_slice(OWN_PROTOS);
    let all = protox::compile(files, includes).expect("compile Envoy protos for reflection");
    let bytes = prost::Message::encode_to_vec(&all);
    std::fs::write(out.join("reflection_descriptor.bin"), bytes).expect("write descriptor set");
}

/// The `proto/` directory of the `envoy-types` crate this build uses.
fn envoy_types_proto_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(std::env::var("TARGET").expect("TARGET is set by cargo"))
        .arg("--manifest-path")
        .arg(Path::new(&manifest).join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let pkg = meta["packages"]
        .as_array()
        .and_then(|pkgs| pkgs.iter().find(|p| p["name"] == "envoy-types"))
        .expect("envoy-types is a dependency");
    let manifest_path = pkg["manifest_path"].as_str().expect("manifest_path");
    Path::new(manifest_path)
        .parent()
        .expect("crate dir")
        .join("proto")
}
