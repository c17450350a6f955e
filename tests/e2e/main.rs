//! End-to-end tests through real processes: the `portcullis` binary Cargo
//! built (its commands, its listeners, its logs, its exit codes), a real
//! Envoy, nginx and Caddy with the configurations from `deploy/`, and
//! grpcurl through server reflection, as an operator or a gateway meets
//! them.
//!
//! One binary for all of them, so that the dependency tree is linked once.
//! Every Portcullis here runs in a process of its own, so process-wide
//! state (metrics, logs) is per test.

#[path = "../support/mod.rs"]
mod support;

mod audit;
mod audit_durability;
mod audit_export;
mod audit_pkcs11;
mod cli;
mod container_build;
mod deploy;
mod deploy_rules;
mod docs_examples;
mod envoy;
mod envoy_quotas;
mod envoy_tokens;
mod forward_auth_gateways;
mod grpcurl;
mod observability;
mod otlp;
mod profile_stages;
mod tls_listener;
