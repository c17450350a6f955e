//! The forward-auth adapter: the same decisions as ext_authz `Check`, over
//! plain HTTP, for gateways that delegate authorization that way (nginx
//! `auth_request`, Caddy `forward_auth`, Traefik ForwardAuth, Envoy's
//! ext_authz `http_service`, Gateway API external auth with `protocol:
//! HTTP`). An auth request becomes an `AccessRequest` (`convention`), is
//! decided by the one pipeline through [`access::decide`] (same audit
//! record, with `adapter: forward_auth`, same metrics and span), and the
//! decision becomes an HTTP answer (`answer`) from the same pieces as
//! `Check`'s. No policy logic lives here.
//!
//! The listener itself (HTTP/1.1 and h2c on one port, limits, shutdown) is
//! `server::http`; this module is what it serves.

mod answer;
mod convention;
mod proxies;

use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Bytes;
use hyper::http::request::Parts;
use hyper::http::Response;

pub use crate::config::forward_auth::{Cidr, ForwardAuthConfig, FORWARDED_PATH, ORIGINAL_PATH};
pub use answer::{listener_problem, Body, HEADERS_TO_REMOVE, PROBLEM_HEADER};
pub use convention::Convention;
pub use proxies::client_address;

use crate::adapters::access;
use crate::app::State;
use crate::pipeline::Door;

/// What the forward-auth listener serves: one handler per auth request.
#[derive(Debug, Clone)]
pub struct ForwardAuth {
    state: Arc<State>,
    config: Arc<ForwardAuthConfig>,
}

impl ForwardAuth {
    /// Decides with the shared state, reading requests as `config` says.
    pub fn new(state: Arc<State>, config: ForwardAuthConfig) -> Self {
        ForwardAuth {
            state,
            config: Arc::new(config),
        }
    }

    /// Answers one auth request from `peer` (its head and whole body).
    pub async fn answer(&self, parts: Parts, body: Bytes, peer: IpAddr) -> Response<Body> {
        let (convention, mut request) = match convention::read(&parts, body, peer, &self.config) {
            Ok(read) => read,
            Err(bad) => {
                tracing::debug!(
                    target: "portcullis::forward_auth",
                    path = %parts.uri.path(),
                    status = bad.status,
                    detail = %bad.detail,
                    "unreadable auth request"
                );
                return answer::bad_ask(&bad);
            }
        };
        let decision = access::decide(&self.state, &mut request, Door::ForwardAuth).await;
        answer::decision(&decision, &request, convention)
    }
}
