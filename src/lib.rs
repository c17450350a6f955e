//! Portcullis: a policy decision point for API gateways in front of
//! machine-learning inference APIs. Envoy asks (ext_authz `Check`); the
//! pipeline decides from the policy directory; adapters translate.

pub mod admin;
pub mod anomaly;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod check;
pub mod config;
pub mod decision;
pub mod extauthz;
pub mod gitrev;
pub mod health;
pub mod http;
pub mod metrics;
pub mod otlp;
pub mod pipeline;
pub mod policydiff;
pub mod policytest;
pub mod quota;
pub mod reload;
pub mod request;
pub mod residency;
pub mod rls;
pub mod routes;
pub mod server;
pub mod shared_redis;
pub mod snapshot;
pub mod tls;
pub mod tracecontext;
pub mod validate;

/// Generated code for our own admin protos.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("portcullis.admin.v1");
    /// Descriptor set covering our protos and the Envoy services we serve.
    pub const REFLECTION_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("reflection_descriptor");
}
