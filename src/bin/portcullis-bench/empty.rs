//! An ext_authz, RLS and ext_proc server that answers OK (ext_proc: go
//! on, unchanged) at once, on the same tonic stack and settings as
//! Portcullis, and an HTTP server that answers 200 at once on the
//! forward-auth listener's stack: the ceilings the figures are compared to.

use std::net::SocketAddr;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as ExtProcRequest;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as ExtProcAnswer;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, HeadersResponse, ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code as RlsCode;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::rpc;
use portcullis::config::Config;
use tokio_util::sync::CancellationToken;

/// An ext_authz and RLS server that allows everything at once: the ceiling.
#[derive(Clone)]
struct Empty;

#[tonic::async_trait]
impl Authorization for Empty {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            dynamic_metadata: None,
        }))
    }
}

#[tonic::async_trait]
impl RateLimitService for Empty {
    async fn should_rate_limit(
        &self,
        _request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: RlsCode::Ok as i32,
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl ExternalProcessor for Empty {
    type ProcessStream =
        tokio_stream::wrappers::ReceiverStream<Result<ProcessingResponse, tonic::Status>>;

    /// Every message answered at once with "go on, unchanged".
    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let answer = match m.request {
                    Some(ExtProcRequest::RequestHeaders(_)) => {
                        ExtProcAnswer::RequestHeaders(HeadersResponse::default())
                    }
                    Some(ExtProcRequest::ResponseHeaders(_)) => {
                        ExtProcAnswer::ResponseHeaders(HeadersResponse::default())
                    }
                    Some(ExtProcRequest::RequestBody(_)) => {
                        ExtProcAnswer::RequestBody(BodyResponse::default())
                    }
                    Some(ExtProcRequest::ResponseBody(_)) => {
                        ExtProcAnswer::ResponseBody(BodyResponse::default())
                    }
                    Some(ExtProcRequest::RequestTrailers(_)) => {
                        ExtProcAnswer::RequestTrailers(TrailersResponse::default())
                    }
                    Some(ExtProcRequest::ResponseTrailers(_)) => {
                        ExtProcAnswer::ResponseTrailers(TrailersResponse::default())
                    }
                    None => continue,
                };
                let answer = ProcessingResponse {
                    response: Some(answer),
                    ..Default::default()
                };
                if tx.send(Ok(answer)).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

/// The connections the empty server answers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmptyTransport {
    /// Stock tonic: each accepted TCP stream as it is (with TCP_NODELAY).
    Stock,
    /// Portcullis's gRPC transport: writes coalesced across streams.
    Coalesced,
}

pub async fn start_empty(
    at: SocketAddr,
    transport: EmptyTransport,
    cancel: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(at).await?;
    let addr = listener.local_addr()?;
    let config = Config::default();
    let router = portcullis::server::grpc_server(&config)
        .add_service(
            AuthorizationServer::new(Empty)
                .max_decoding_message_size(config.server.max_message_bytes),
        )
        .add_service(RateLimitServiceServer::new(Empty))
        .add_service(
            ExternalProcessorServer::new(Empty)
                .max_decoding_message_size(config.server.max_message_bytes),
        );
    tokio::spawn(async move {
        let _ = match transport {
            EmptyTransport::Stock => {
                router
                    .serve_with_incoming_shutdown(
                        portcullis::server::nodelay(listener),
                        cancel.cancelled_owned(),
                    )
                    .await
            }
            EmptyTransport::Coalesced => {
                router
                    .serve_with_incoming_shutdown(
                        portcullis::server::coalesced(listener),
                        cancel.cancelled_owned(),
                    )
                    .await
            }
        };
    });
    Ok(addr)
}

/// An HTTP handler that answers 200 at once (after the server has read
/// the whole request, as for Portcullis).
#[derive(Clone)]
struct EmptyHttp;

impl portcullis::server::http::Handler for EmptyHttp {
    fn handle(
        &self,
        _parts: hyper::http::request::Parts,
        _body: hyper::body::Bytes,
        _peer: std::net::IpAddr,
    ) -> impl std::future::Future<
        Output = hyper::http::Response<portcullis::adapters::forward_auth::Body>,
    > + Send {
        std::future::ready(hyper::http::Response::new(http_body_util::Full::new(
            hyper::body::Bytes::new(),
        )))
    }
}

/// The empty HTTP server on the forward-auth listener's stack and limits.
pub async fn start_empty_http(
    at: SocketAddr,
    cancel: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(at).await?;
    let addr = listener.local_addr()?;
    let limits = portcullis::server::http::HttpLimits::of(&Config::default());
    tokio::spawn(portcullis::server::http::serve(
        listener, limits, EmptyHttp, cancel,
    ));
    Ok(addr)
}
