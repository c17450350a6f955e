//! `CheckRequest`s on the wire that prost cannot decode, sent byte for byte
//! to the decision listener: the caller gets `INVALID_ARGUMENT` naming the
//! field and the fix, never `INTERNAL` (which Envoy turns into a 5xx).

use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use prost::bytes::{Buf, BufMut};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::support::{self, http_status, policies_dir, Check, TestServer};

/// Sends already-encoded `CheckRequest` bytes; decodes the response.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = CheckResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<CheckResponse>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        CheckResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = CheckResponse;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

async fn send(server: &TestServer, bytes: Vec<u8>) -> Result<CheckResponse, tonic::Status> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.decision_addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to the decision listener");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.auth.v3.Authorization/Check",
    );
    grpc.unary(tonic::Request::new(bytes), path, Raw)
        .await
        .map(tonic::Response::into_inner)
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
