//! Integration tests inside the test process: the library's public API on
//! real policy directories, the tonic services called directly, and the
//! gRPC server started in process on `127.0.0.1:0` and stopped through its
//! shutdown path. Real `redis-server`s and a local identity provider stand
//! in for the backends; no test here needs Envoy or the `portcullis` binary
//! to serve (a few run its offline commands, such as `apikey new`).
//!
//! One binary for all of them, so that the dependency tree is linked once.
//! Tests here share a process: none may rely on process-wide state (the
//! metrics registry, environment variables, the current directory).

#[path = "../support/mod.rs"]
mod support;

mod anomaly;
mod authn_apikeys;
mod authn_attacks;
mod authn_failures;
mod authn_interop;
mod authn_introspection;
mod authn_jwks;
mod authn_redis;
mod check_wire;
mod docs;
mod forward_auth;
mod http_semantics;
mod pipeline;
mod quota_burst;
mod quota_sentinel;
mod quota_server;
mod quota_stores;
mod ratelimit_conformance;
mod response_checks;
mod server;
mod server_limits;
mod tidy;
mod token_budgets;
