//! `CheckRequest`s and `RateLimitRequest`s on the wire that prost cannot
//! decode, sent byte for byte to the decision listener: the caller gets
//! `INVALID_ARGUMENT` naming the field (and for `Check` the fix), never
//! `INTERNAL` (which Envoy turns into a 5xx or its failure mode).

use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::support::{self, http_status, policies_dir, Check, TestServer};

/// Sends an already-encoded request message; decodes the response as `M`.
struct Raw<M>(std::marker::PhantomData<fn() -> M>);

impl<M> Raw<M> {
    fn new() -> Self {
        Raw(std::marker::PhantomData)
    }
}

impl<M: Send + 'static> Encoder for Raw<M> {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl<M: Message + Default + Send + 'static> Decoder for Raw<M> {
    type Item = M;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<M>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        M::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl<M: Message + Default + Send + 'static> Codec for Raw<M> {
    type Encode = Vec<u8>;
    type Decode = M;
    type Encoder = Raw<M>;
    type Decoder = Raw<M>;
    fn encoder(&mut self) -> Raw<M> {
        Raw::new()
    }
    fn decoder(&mut self) -> Raw<M> {
        Raw::new()
    }
}

/// `bytes` as the message of the unary call `path` on the decision
/// listener; the answer decoded as `M`.
async fn call<M: Message + Default + Send + 'static>(
    server: &TestServer,
    path: &'static str,
    bytes: Vec<u8>,
) -> Result<M, tonic::Status> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.decision_addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to the decision listener");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(bytes), path, Raw::new())
        .await
        .map(tonic::Response::into_inner)
}

/// Sends already-encoded `CheckRequest` bytes.
async fn send(server: &TestServer, bytes: Vec<u8>) -> Result<CheckResponse, tonic::Status> {
    call(server, "/envoy.service.auth.v3.Authorization/Check", bytes).await
}

/// Sends already-encoded `RateLimitRequest` bytes.
async fn should_rate_limit(
    server: &TestServer,
    bytes: Vec<u8>,
) -> Result<RateLimitResponse, tonic::Status> {
    call(
        server,
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        bytes,
    )
    .await
}

/// Field `tag` holding `value`, length-delimited.
fn field(tag: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(tag, WireType::LengthDelimited, &mut out);
    encode_varint(value.len() as u64, &mut out);
    out.extend_from_slice(value);
    out
}

/// `check` with `extra` appended to `attributes.request.http` (fields 1,
/// 4, 2): bytes prost would refuse to produce from a `String`.
fn with_http_field(check: CheckRequest, extra: &[u8]) -> Vec<u8> {
    let http = check.attributes.unwrap().request.unwrap().http.unwrap();
    let mut http = http.encode_to_vec();
    http.extend_from_slice(extra);
    field(1, &field(4, &field(2, &http)))
}

async fn server() -> TestServer {
    TestServer::start(support::in_process_config(&policies_dir())).await
}

#[tokio::test]
async fn invalid_utf8_body_string_is_invalid_argument() {
    let server = server().await;
    // `body` is field 11 of HttpRequest, a protobuf string.
    let bytes = with_http_field(
        Check::post("/v1/feedback").build(),
        &field(11, b"{\"a\":\"\xff\"}"),
    );
    let status = send(&server, bytes).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "CheckRequest attributes.request.http.body is not valid UTF-8 (a protobuf string): \
         set pack_as_bytes: true in Envoy's ext_authz with_request_body, so that the body \
         arrives as bytes in attributes.request.http.raw_body"
    );
    // The documented way: the same bytes in raw_body are decided (the
    // route refuses them as a body it cannot read, not as a gRPC error).
    let same = Check::post("/v1/feedback")
        .raw_body(b"{\"a\":\"\xff\"}")
        .build();
    let response = send(&server, same.encode_to_vec()).await.expect("decided");
    assert!(http_status(&response) >= 400, "{response:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn undecodable_check_request_is_invalid_argument_naming_the_field() {
    let server = server().await;
    // `path` (field 4) not UTF-8; then bytes that are no protobuf at all.
    let bytes = with_http_field(Check::get("/v1/status").build(), &field(4, b"/v1/\xc3"));
    let status = send(&server, bytes).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("CheckRequest cannot be decoded: ")
            && status.message().contains("HttpRequest.path"),
        "{}",
        status.message()
    );
    let status = send(&server, vec![0x0a, 0xff]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    server.shutdown().await.unwrap();
}

/// `RateLimitRequest.descriptors[0].entries[0]` = (`key`, `value`), in
/// domain `domain` (fields 1, 2; `Entry` key 1, value 2).
fn rate_limit_request(domain: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
    let entry = [field(1, key), field(2, value)].concat();
    [field(1, domain), field(2, &field(1, &entry))].concat()
}

#[tokio::test]
async fn undecodable_rate_limit_request_is_invalid_argument_naming_the_field() {
    let server = server().await;
    // The same request well formed is answered.
    let ok = should_rate_limit(&server, rate_limit_request(b"edge", b"k", b"v"))
        .await
        .expect("answered");
    assert_eq!(ok.overall_code, Code::Ok as i32);
    // An entry's value that is not UTF-8 (a protobuf string).
    let status = should_rate_limit(&server, rate_limit_request(b"edge", b"k", b"\xc3"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "RateLimitRequest cannot be decoded: Entry.value: RateLimitDescriptor.entries: \
         RateLimitRequest.descriptors: invalid string value: data is not UTF-8 encoded"
    );
    // A descriptor whose length runs past the message.
    let status = should_rate_limit(&server, vec![0x0a, 0x01, b'd', 0x12, 0x05, 0x0a])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("RateLimitRequest cannot be decoded: RateLimitRequest.descriptors: "),
        "{}",
        status.message()
    );
    // Well formed, but a refund: RLS semantics refuse it, naming the
    // descriptor (is_negative_hits is field 4 of the descriptor).
    let entry = field(1, &[field(1, b"k"), field(2, b"v")].concat());
    let refund = [
        field(1, b"edge"),
        field(2, &[entry, vec![0x20, 0x01]].concat()),
    ]
    .concat();
    let status = should_rate_limit(&server, refund).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "descriptors[0]: is_negative_hits (refunds) is not supported"
    );
    server.shutdown().await.unwrap();
}
