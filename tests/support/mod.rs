//! Shared support for the integration tests: real processes (Portcullis,
//! Envoy, nginx, Caddy, redis-server) on free loopback ports, in-process servers (an echo
//! upstream, an identity provider), a small HTTP/1.1 client, JWTs signed
//! with the fixture keys, and builders for what the tests send.
//!
//! It does not decide what a test expects; the tests do. Every process it
//! starts is killed when its handle drops, and every wait is bounded.
//!
//! One module per job; this file only names them and re-exports what the
//! tests use, so that a test says `support::Envoy`, not where it lives.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::time::Duration;

mod check;
mod config;
mod envoy;
mod ext_proc;
mod gateways;
mod grpcurl;
mod http;
mod in_process;
mod jwks;
mod jwt;
mod metrics;
mod model_server;
mod paths;
mod pki;
mod policies;
mod ports;
mod process;
mod redis;
mod server;
mod thread_server;
mod upstream;

// Each test binary uses a part of these; the rest is not dead code.
#[allow(unused_imports)]
pub use check::{check_at, denied_header, http_status, Check, PREDICT, PREDICT_BODY};
#[allow(unused_imports)]
pub use config::{
    fixture_issuer, in_process_config, parse_config, server_yaml, write_config, write_config_with,
};
#[allow(unused_imports)]
pub use envoy::Envoy;
#[allow(unused_imports)]
pub use ext_proc::{
    chat_body, ext_proc_headers, json_completion, portcullis_metadata, respond, sse_completion,
    token_policy_dir, token_quotas, tokens_left, tokens_left_at, ExtProcStream, BUFFERED,
    CHAT_ROUTE, FULL_DUPLEX_STREAMED, STREAMED,
};
#[allow(unused_imports)]
pub use gateways::{caddy_accepts, nginx_accepts, start_caddy, start_nginx, Gateway};
#[allow(unused_imports)]
pub use grpcurl::{grpcurl, grpcurl_output};
#[allow(unused_imports)]
pub use http::{http_get, HttpRequest, HttpResponse};
#[allow(unused_imports)]
pub use in_process::{
    authz_service, decide, decide_as, decide_with, predict_access, replicas, TestAudit, TestServer,
};
#[allow(unused_imports)]
pub use jwks::{IdentityProvider, INTROSPECTION_CLIENT};
#[allow(unused_imports)]
pub use jwt::{as_user, claims, mint, now, sign_raw_es256, token, Key, ISSUER};
#[allow(unused_imports)]
pub use metrics::{metric, parse_metrics};
#[allow(unused_imports)]
pub use model_server::ModelServer;
#[allow(unused_imports)]
pub use paths::{fixture, policies_dir, repo};
#[allow(unused_imports)]
pub use pki::TestPki;
#[allow(unused_imports)]
pub use policies::{copy_bundled_policies, copy_bundled_policy_tests, PolicyDir};
#[allow(unused_imports)]
pub use ports::{free_port, ClosedPort};
#[allow(unused_imports)]
pub use process::{read_lossy, tool};
#[allow(unused_imports)]
pub use redis::{RedisCluster, RedisSentinel, RedisServer, MASTER_NAME};
#[allow(unused_imports)]
pub use server::{kill_9, Portcullis};
#[allow(unused_imports)]
pub use upstream::Upstream;

/// How long a process may take to become ready before the test fails.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one HTTP exchange with Envoy or the upstream may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
