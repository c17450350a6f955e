//! A unary gRPC method on the wire without prost's generated server: the
//! request is decoded from its protobuf bytes straight into what the
//! method asks about, and the answer is written already encoded.
//!
//! The generated tonic servers decode the whole message with prost (every
//! string in an allocation of its own, every field Envoy sends), answer a
//! message they cannot decode with `INTERNAL` (which Envoy turns into a
//! 5xx or its failure mode), and encode the answer from prost's message.
//! A [`UnaryMethod`] says how its request decodes (and which status a
//! message it cannot use gets) and answers with the encoded message;
//! [`UnaryServer`] serves it with tonic's unary handler, so framing,
//! compression, `grpc-timeout` and the message size limit are tonic's.
//! Both decision front doors on gRPC use it: ext_authz `Check`
//! ([`super::check_wire`]) and RLS `ShouldRateLimit` ([`super::rls`]).

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::bytes::Bytes;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::Status;

/// prost's text for `error` without its "failed to decode Protobuf message: "
/// prefix: the path to the field, innermost first, and what is wrong with
/// it, e.g. `Entry.value: RateLimitDescriptor.entries:
/// RateLimitRequest.descriptors: invalid string value: data is not UTF-8
/// encoded`.
pub fn decode_error_text(error: &prost::DecodeError) -> String {
    let text = error.to_string();
    match text.strip_prefix("failed to decode Protobuf message: ") {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

/// `INVALID_ARGUMENT` for a `message` (e.g. `CheckRequest`) that does not
/// decode: "`message` cannot be decoded: `text`", `text` naming the field
/// ([`decode_error_text`]).
pub fn undecodable(message: &str, text: &str) -> Status {
    Status::invalid_argument(format!("{message} cannot be decoded: {text}"))
}

/// One unary gRPC method: how its request decodes, and its answer.
pub trait UnaryMethod: Send + Sync + 'static {
    /// The service's full name (`package.Service`), as health checking and
    /// reflection name it.
    const SERVICE: &'static str;
    /// The method's path (`/package.Service/Method`); any other path on
    /// this service is `UNIMPLEMENTED`.
    const PATH: &'static str;
    /// The first decode buffer of a call, bytes. Every open stream holds
    /// one from its headers on, also one that never sends its body; a
    /// larger message grows it as it arrives (tonic's default is 8 KiB).
    const FIRST_BUFFER_BYTES: usize;

    /// What a decoded request asks.
    type Request: Send + 'static;
    /// The answer, encoded: the protobuf bytes of the response message.
    type Response: AsRef<[u8]> + Send + 'static;

    /// Decodes one request message (its protobuf bytes, without the gRPC
    /// frame).
    ///
    /// # Errors
    /// The status the caller gets for bytes that are not a request this
    /// method can answer (`INVALID_ARGUMENT`, naming the field).
    fn decode(bytes: Bytes) -> Result<Self::Request, Status>;

    /// Answers one decoded request.
    fn answer(
        &self,
        request: Self::Request,
    ) -> impl Future<Output = Result<tonic::Response<Self::Response>, Status>> + Send + 'static;
}

/// Serves one [`UnaryMethod`]; same limits as the generated servers
/// (`max_decoding_message_size`: a larger message is `RESOURCE_EXHAUSTED`,
/// as tonic answers it).
#[derive(Debug)]
pub struct UnaryServer<M> {
    method: Arc<M>,
    max_decoding_message_size: usize,
}

impl<M> Clone for UnaryServer<M> {
    fn clone(&self) -> Self {
        UnaryServer {
            method: Arc::clone(&self.method),
            max_decoding_message_size: self.max_decoding_message_size,
        }
    }
}

impl<M: UnaryMethod> UnaryServer<M> {
    /// Serves `method`, refusing messages over `max_decoding_message_size`
    /// bytes.
    pub fn new(method: M, max_decoding_message_size: usize) -> Self {
        UnaryServer {
            method: Arc::new(method),
            max_decoding_message_size,
        }
    }
}

impl<M: UnaryMethod> NamedService for UnaryServer<M> {
    const NAME: &'static str = M::SERVICE;
}

/// One call, for tonic's unary handler.
struct Call<M>(Arc<M>);

impl<M: UnaryMethod> UnaryService<M::Request> for Call<M> {
    type Response = M::Response;
    type Future = BoxFuture<tonic::Response<M::Response>, Status>;

    /// One box per call: the method's answer.
    fn call(&mut self, request: tonic::Request<M::Request>) -> Self::Future {
        Box::pin(self.0.answer(request.into_inner()))
    }
}

impl<M, B> Service<http::Request<B>> for UnaryServer<M>
where
    M: UnaryMethod,
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
        if request.uri().path() != M::PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let call = Call(Arc::clone(&self.method));
        let mut grpc = Grpc::new(UnaryCodec::<M>(PhantomData))
            .apply_max_message_size_config(Some(self.max_decoding_message_size), None);
        Box::pin(async move { Ok(grpc.unary(call, request).await) })
    }
}

/// Decodes with [`UnaryMethod::decode`]; writes the encoded answer's bytes
/// into the gRPC frame.
pub struct UnaryCodec<M>(PhantomData<fn() -> M>);

impl<M: UnaryMethod> Codec for UnaryCodec<M> {
    type Encode = M::Response;
    type Decode = M::Request;
    type Encoder = UnaryCodec<M>;
    type Decoder = UnaryCodec<M>;

    fn encoder(&mut self) -> Self::Encoder {
        UnaryCodec(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        UnaryCodec(PhantomData)
    }
}

impl<M: UnaryMethod> Encoder for UnaryCodec<M> {
    type Item = M::Response;
    type Error = Status;

    fn encode(&mut self, item: M::Response, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use prost::bytes::BufMut as _;
        dst.put_slice(item.as_ref());
        Ok(())
    }
}

impl<M: UnaryMethod> Decoder for UnaryCodec<M> {
    type Item = M::Request;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<M::Request>, Status> {
        use prost::bytes::Buf as _;
        M::decode(buf.copy_to_bytes(buf.remaining())).map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(M::FIRST_BUFFER_BYTES, 32 * 1024)
    }
}
