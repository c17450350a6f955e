//! The ext_authz `Authorization` gRPC service on the wire: the generated
//! tonic server decodes `CheckRequest` with prost and answers a message it
//! cannot decode with `INTERNAL`, which Envoy turns into a 5xx. This one
//! decodes it straight into the request it asks about
//! ([`check_decode`](super::check_decode)), answers `INVALID_ARGUMENT`
//! naming the field and how to fix the gateway, and hands decoded requests
//! to [`AuthzService`]. It decides nothing.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::Message;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::Status;

use super::check_decode::{self, Undecided};
use super::check_encode::EncodedCheckResponse;
use super::extauthz::AuthzService;
use crate::request::AccessRequest;

/// The first decode buffer of a `Check` stream, bytes.
const CHECK_BUFFER_BYTES: usize = 1024;

/// The gRPC path of `Check`.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The `envoy.service.auth.v3.Authorization` service: `Check` decoded by
/// [`CheckCodec`], any other method `UNIMPLEMENTED`. Same limits as the
/// generated server (`max_decoding_message_size`).
#[derive(Debug, Clone)]
pub struct CheckServer {
    service: Arc<AuthzService>,
    max_decoding_message_size: usize,
}

impl CheckServer {
    /// Serves `service`, refusing messages over `max_decoding_message_size`
    /// bytes (`RESOURCE_EXHAUSTED`, as tonic does).
    pub fn new(service: AuthzService, max_decoding_message_size: usize) -> Self {
        CheckServer {
            service: Arc::new(service),
            max_decoding_message_size,
        }
    }
}

impl NamedService for CheckServer {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

/// One `Check` call, for tonic's unary handler.
struct CheckCall(Arc<AuthzService>);

impl UnaryService<AccessRequest> for CheckCall {
    type Response = EncodedCheckResponse;
    type Future = BoxFuture<tonic::Response<EncodedCheckResponse>, Status>;

    /// One box per call: [`AuthzService::answer`]'s future.
    fn call(&mut self, request: tonic::Request<AccessRequest>) -> Self::Future {
        Box::pin(self.0.answer(request.into_inner()))
    }
}

impl<B> Service<http::Request<B>> for CheckServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let call = CheckCall(Arc::clone(&self.service));
        let mut grpc = Grpc::new(CheckCodec)
            .apply_max_message_size_config(Some(self.max_decoding_message_size), None);
        Box::pin(async move { Ok(grpc.unary(call, request).await) })
    }
}

/// Writes the `CheckResponse` already encoded ([`EncodedCheckResponse`]);
/// decodes `CheckRequest` into an [`AccessRequest`] with [`CheckDecoder`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckCodec;

impl Codec for CheckCodec {
    type Encode = EncodedCheckResponse;
    type Decode = AccessRequest;
    type Encoder = CheckEncoder;
    type Decoder = CheckDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        CheckEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckDecoder
    }
}

/// Puts an [`EncodedCheckResponse`]'s bytes in the gRPC frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckEncoder;

impl Encoder for CheckEncoder {
    type Item = EncodedCheckResponse;
    type Error = Status;

    fn encode(
        &mut self,
        item: EncodedCheckResponse,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), Status> {
        use prost::bytes::BufMut as _;
        dst.put_slice(item.as_bytes());
        Ok(())
    }
}

/// Decodes `CheckRequest` into the [`AccessRequest`] it asks about
/// ([`check_decode::decode`]). A message prost refuses is
/// `INVALID_ARGUMENT` (the caller sent it), with the field that failed; so
/// is one without HTTP attributes, method or path.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckDecoder;

impl Decoder for CheckDecoder {
    type Item = AccessRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<AccessRequest>, Status> {
        use prost::bytes::Buf as _;
        let bytes = buf.copy_to_bytes(buf.remaining());
        match check_decode::decode(&bytes) {
            Ok(request) => Ok(Some(request)),
            Err(Undecided::Wire(error)) => Err(undecodable(&bytes, &error)),
            Err(Undecided::Incomplete(what)) => Err(Status::invalid_argument(what)),
        }
    }

    /// A 1 KiB first buffer (tonic's default is 8 KiB): every open stream
    /// holds one from its headers on, also one that never sends its body;
    /// a larger message grows it as it arrives.
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(CHECK_BUFFER_BYTES, 32 * 1024)
    }
}

/// The status for a `CheckRequest` prost refused with `error`.
fn undecodable(bytes: &[u8], error: &prost::DecodeError) -> Status {
    let text = error.to_string();
    let text = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    if body_is_not_utf8(bytes) {
        return Status::invalid_argument(
            "CheckRequest attributes.request.http.body is not valid UTF-8 (a protobuf \
             string): set pack_as_bytes: true in Envoy's ext_authz with_request_body, so \
             that the body arrives as bytes in attributes.request.http.raw_body",
        );
    }
    Status::invalid_argument(format!("CheckRequest cannot be decoded: {text}"))
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
