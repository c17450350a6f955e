//! The ext_authz `Authorization` gRPC service on the wire: the generated
//! tonic server decodes `CheckRequest` with prost and answers a message it
//! cannot decode with `INTERNAL`, which Envoy turns into a 5xx. This one
//! decodes it straight into the request it asks about
//! ([`check_decode`](super::check_decode)), answers `INVALID_ARGUMENT`
//! naming the field and how to fix the gateway, and hands decoded requests
//! to [`AuthzService`]. It decides nothing. The server is the shared
//! [`UnaryServer`].

use prost::bytes::Bytes;
use prost::Message;
use tonic::Status;

use super::check_decode::{self, Undecided};
use super::check_encode::EncodedCheckResponse;
use super::extauthz::AuthzService;
use super::unary::{self, UnaryMethod, UnaryServer};
use crate::request::AccessRequest;

/// The `envoy.service.auth.v3.Authorization` service: `Check` decoded by
/// [`check_decode`], any other method `UNIMPLEMENTED`.
pub type CheckServer = UnaryServer<AuthzService>;

impl UnaryMethod for AuthzService {
    const SERVICE: &'static str = "envoy.service.auth.v3.Authorization";
    const PATH: &'static str = "/envoy.service.auth.v3.Authorization/Check";
    /// 1 KiB: a `CheckRequest` with a small body fits.
    const FIRST_BUFFER_BYTES: usize = 1024;

    type Request = AccessRequest;
    type Response = EncodedCheckResponse;

    /// Decodes `CheckRequest` into the [`AccessRequest`] it asks about
    /// ([`check_decode::decode`]). A message prost refuses is
    /// `INVALID_ARGUMENT` (the caller sent it), with the field that failed;
    /// so is one without HTTP attributes, method or path.
    fn decode(bytes: Bytes) -> Result<AccessRequest, Status> {
        match check_decode::decode(&bytes) {
            Ok(request) => Ok(request),
            Err(Undecided::Wire(error)) => Err(undecodable(&bytes, &error)),
            Err(Undecided::Incomplete(what)) => Err(Status::invalid_argument(what)),
        }
    }

    fn answer(
        &self,
        request: AccessRequest,
    ) -> impl std::future::Future<Output = Result<tonic::Response<EncodedCheckResponse>, Status>>
           + Send
           + 'static {
        AuthzService::answer(self, request)
    }
}

/// The status for a `CheckRequest` prost refused with `error`.
fn undecodable(bytes: &[u8], error: &prost::DecodeError) -> Status {
    if body_is_not_utf8(bytes) {
        return Status::invalid_argument(
            "CheckRequest attributes.request.http.body is not valid UTF-8 (a protobuf \
             string): set pack_as_bytes: true in Envoy's ext_authz with_request_body, so \
             that the body arrives as bytes in attributes.request.http.raw_body",
        );
    }
    unary::undecodable("CheckRequest", &unary::decode_error_text(error))
}

/// Whether `attributes.request.http.body` is present and not UTF-8. The
/// path to the field, with the field as bytes; prost skips the rest.
fn body_is_not_utf8(bytes: &[u8]) -> bool {
    #[derive(Clone, PartialEq, Message)]
    struct Check {
        #[prost(message, optional, tag = "1")]
        attributes: Option<Attributes>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct Attributes {
        #[prost(message, optional, tag = "4")]
        request: Option<Request>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct Request {
        #[prost(message, optional, tag = "2")]
        http: Option<Http>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct Http {
        #[prost(bytes = "vec", tag = "11")]
        body: Vec<u8>,
    }
    Check::decode(bytes)
        .ok()
        .and_then(|c| c.attributes?.request?.http)
        .is_some_and(|http| std::str::from_utf8(&http.body).is_err())
}
