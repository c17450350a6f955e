//! Adapters: each translates one front door's wire messages into an
//! `AccessRequest` (or a rate-limit ask), calls `pipeline::decide`, and
//! renders the `Decision` through the outcome table
//! (`decision::outcome`). No policy logic lives here.

pub mod access;
pub mod admin;
pub mod check_decode;
pub mod check_encode;
pub mod check_wire;
pub mod extauthz;
pub mod extproc;
pub mod forward_auth;
pub mod http;
pub mod offline;
pub mod proto_write;
pub mod rls;
pub mod rls_decode;
pub mod unary;
