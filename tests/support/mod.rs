//! Shared support for the integration tests: real processes (Portcullis,
//! Envoy, redis-server) on free loopback ports, in-process servers (an echo
//! upstream, an identity provider), a small HTTP/1.1 client, JWTs signed
//! with the fixture keys, and builders for what the tests send.
//!
//! It does not decide what a test expects; the tests do. Every process it
//! starts is killed when its handle drops, and every wait is bounded.
//!
//! One module per job; this file only names them and re-exports what the
//! tests use, so that a test says `support::Envoy`, not where it lives.
// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

use std::time::Duration;

mod check;
mod config;
mod envoy;
mod grpcurl;
mod http;
mod in_process;
mod jwks;
mod jwt;
mod metrics;
mod paths;
mod pki;
mod policies;
mod ports;
mod process;
mod redis;
mod server;
mod thread_server;
mod upstream;

pub use check::{check_at, denied_header, http_status, Check, PREDICT, PREDICT_BODY};
pub use config::{
    fixture_issuer, in_process_config, parse_config, server_yaml, write_config, write_config_with,
};
pub use envoy::Envoy;
pub use grpcurl::{grpcurl, grpcurl_output};
pub use http::{http_get, HttpRequest, HttpResponse};
pub use in_process::{authz_service, decide, predict_access, TestAudit, TestServer};
pub use jwks::{IdentityProvider, INTROSPECTION_CLIENT};
pub use jwt::{as_user, claims, mint, now, sign_raw_es256, token, Key, AUDIENCE, ISSUER};
pub use metrics::{metric, parse_metrics, Sample};
pub use paths::{fixture, policies_dir, repo};
pub use pki::{TestPki, GATEWAY_SPIFFE_ID};
pub use policies::{
    copy_bundled_policies, copy_bundled_policy_tests, copy_policy_entry, PolicyDir,
};
pub use ports::free_port;
pub use process::{read_lossy, tool};
pub use redis::{RedisCluster, RedisServer};
pub use server::{kill_9, Portcullis};
pub use upstream::Upstream;

/// How long a process may take to become ready before the test fails.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one HTTP exchange with Envoy or the upstream may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
