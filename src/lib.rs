//! Portcullis: a policy decision point for API gateways in front of
//! machine-learning inference APIs. Gateways ask (ext_authz `Check`, RLS
//! `ShouldRateLimit`, the admin API); `pipeline::decide` decides from the
//! policy snapshot; adapters translate. `docs/architecture.md` is the map.
//!
//! Layers, each importing only the layers below it (`tests/tidy.rs` keeps
//! it so):
//! 1. leaves: [`request`], [`decision`], [`time`], [`json`], [`yaml`],
//!    [`metrics`], [`tracecontext`], [`otlp`], [`shared_redis`], [`proto`]
//! 2. stages, each owning its config section: [`routes`], [`authn`],
//!    [`authz`], [`validate`], [`quota`], [`residency`], [`anomaly`],
//!    [`audit`]
//! 3. [`policy`]: the snapshot, its loading, versioning and reloading
//! 4. [`pipeline`]: the one decision path
//! 5. [`app`] and [`config`]: the running state assembled from a `Config`
//! 6. [`adapters`]: ext_authz, RLS, admin, operations HTTP, offline
//! 7. [`server`]: listeners, tonic stacks, reflection, tasks, shutdown
//! 8. [`cli`]: the command line (`main.rs` only calls it)

pub mod decision;
pub mod json;
pub mod metrics;
pub mod otlp;
pub mod request;
pub mod shared_redis;
pub mod time;
pub mod tracecontext;
pub mod yaml;

pub mod anomaly;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod quota;
pub mod residency;
pub mod response_checks;
pub mod routes;
pub mod validate;

pub mod policy;

pub mod pipeline;

pub mod app;
pub mod config;

pub mod adapters;

pub mod server;

pub mod cli;

/// Generated code for our own admin protos.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("portcullis.admin.v1");
    /// Descriptor set covering our protos and the Envoy services we serve.
    pub const REFLECTION_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("reflection_descriptor");
}
