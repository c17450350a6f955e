//! ext_proc streams as Envoy drives them: the request headers (with the
//! request id and the decision id ext_authz added), the response headers,
//! the body in chunks, the end; or a stream cut mid-response. Also the
//! bodies a model server answers with (plain JSON, server-sent events with
//! usage in the last event) and the policy pieces of the token tests.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// A chat-completions route for the token tests, appended to the bundled
/// `routes.yaml`: anyone may call it (the bundled `public-status` policy
/// allows `readStatus` on the service), and its JSON body is read.
pub const CHAT_ROUTE: &str = "
  - name: chat
    method: POST
    path: /v1/chat/completions
    action: readStatus
    resource: { type: Service, id: portcullis }
    authentication: optional
    body:
      content_types: [application/json]
      max_bytes: 65536
";

/// 20,000 tokens per caller over 30 days (one token refills every 130 s:
/// nothing refills during a test), reserved on the chat route with the
/// given `tokens:` settings (YAML flow mapping).
pub fn token_quotas(tokens: &str) -> String {
    format!(
        "domain: llm
descriptors:
  - key: tokens
    rate_limit: {{name: tokens, window: 30d, requests_per_unit: 20000}}
check:
  - name: tokens per caller
    routes: [chat]
    descriptor: [{{key: tokens, value: \"{{principal}}\"}}]
    cost: {{body_field: max_tokens, default: 256}}
    tokens: {tokens}
"
    )
}

/// The bundled policies with [`CHAT_ROUTE`] and `quotas` as the only quota
/// file.
pub fn token_policy_dir(quotas: &str) -> super::PolicyDir {
    let policies = super::PolicyDir::bundled();
    let routes = policies.read("routes.yaml");
    policies.write("routes.yaml", &format!("{routes}{CHAT_ROUTE}"));
    policies.write("quotas.yaml", quotas);
    policies
}

/// Tokens left of the anonymous caller's `llm` budget at a decision
/// listener (an RLS check with a descriptor hits_addend of 0: nothing
/// charged).
pub async fn tokens_left(channel: &Channel) -> u64 {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    let request = RateLimitRequest {
        domain: "llm".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "tokens".into(),
                value: "anonymous".into(),
            }],
            hits_addend: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 0 }),
            ..Default::default()
        }],
        hits_addend: 1,
    };
    let answer = RateLimitServiceClient::new(channel.clone())
        .should_rate_limit(request)
        .await
        .expect("ShouldRateLimit answers")
        .into_inner();
    u64::from(answer.statuses[0].limit_remaining)
}

/// [`tokens_left`] at `addr`, from a test without a runtime.
pub fn tokens_left_at(addr: SocketAddr) -> u64 {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let channel = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            tokens_left(&channel).await
        })
}

/// Envoy's `BodySendMode`s.
pub const STREAMED: i32 = 1;
pub const BUFFERED: i32 = 2;
pub const FULL_DUPLEX_STREAMED: i32 = 4;

/// A chat completion request body asking for `max_tokens`.
pub fn chat_body(max_tokens: u64, stream: bool) -> Vec<u8> {
    serde_json::json!({
        "model": "tiny",
        "max_tokens": max_tokens,
        "stream": stream,
        "stream_options": {"include_usage": stream},
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string()
    .into_bytes()
}

/// An OpenAI-style streamed completion in `pieces` events, the last event
/// carrying `usage` with `total` tokens, then `[DONE]`; one chunk per event.
pub fn sse_completion(pieces: &[&str], total: u64) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = pieces
        .iter()
        .map(|p| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": p}}], "usage": null})
            )
            .into_bytes()
        })
        .collect();
    out.push(
        format!(
            "data: {}\n\n",
            serde_json::json!({"object": "chat.completion.chunk", "choices": [],
                "usage": {"prompt_tokens": 8, "completion_tokens": total - 8, "total_tokens": total}})
        )
        .into_bytes(),
    );
    out.push(b"data: [DONE]\n\n".to_vec());
    out
}

/// An OpenAI-style plain JSON completion using `total` tokens.
pub fn json_completion(text: &str, total: u64) -> Vec<u8> {
    serde_json::json!({"object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 8, "completion_tokens": total - 8, "total_tokens": total}})
    .to_string()
    .into_bytes()
}

/// An Envoy `HeaderMap` of `pairs`, values in `raw_value` as Envoy sends
/// them.
pub fn ext_proc_headers(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                raw_value: v.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
    }
}

/// One ext_proc stream to a decision listener, driven message by message.
pub struct ExtProcStream {
    tx: Option<mpsc::Sender<ProcessingRequest>>,
    rx: tonic::Streaming<ProcessingResponse>,
    first: bool,
    body_mode: i32,
}

impl ExtProcStream {
    /// Opens a stream to `addr`; Envoy's response body mode `body_mode`
    /// (sent in the first message, as Envoy does).
    pub async fn open(addr: SocketAddr, body_mode: i32) -> ExtProcStream {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        ExtProcStream::on(channel, body_mode).await
    }

    /// Opens a stream on `channel`.
    pub async fn on(channel: Channel, body_mode: i32) -> ExtProcStream {
        let (tx, rx) = mpsc::channel(16);
        let rx = ExternalProcessorClient::new(channel)
            .process(ReceiverStream::new(rx))
            .await
            .expect("Process opens")
            .into_inner();
        ExtProcStream {
            tx: Some(tx),
            rx,
            first: true,
            body_mode,
        }
    }

    /// Sends one message and waits for its answer.
    pub async fn send(&mut self, request: Msg) -> ProcessingResponse {
        self.push(request).await;
        self.rx
            .message()
            .await
            .expect("an answer, not an error")
            .expect("an answer before the end")
    }

    /// Sends one message and returns the error status the stream ends with.
    pub async fn send_refused(&mut self, request: Msg) -> tonic::Status {
        self.push(request).await;
        match self.rx.message().await {
            Err(status) => status,
            Ok(other) => panic!("expected the stream to end with an error, got {other:?}"),
        }
    }

    async fn push(&mut self, request: Msg) {
        let protocol_config = self.first.then(|| ProtocolConfiguration {
            response_body_mode: self.body_mode,
            ..Default::default()
        });
        self.first = false;
        self.tx
            .as_ref()
            .expect("stream open")
            .send(ProcessingRequest {
                protocol_config,
                request: Some(request),
                ..Default::default()
            })
            .await
            .expect("the stream accepts messages");
    }

    /// The request's headers: its id and the decision id ext_authz added.
    pub async fn request_headers(
        &mut self,
        request_id: &str,
        decision_id: &str,
    ) -> ProcessingResponse {
        let mut pairs = vec![(":method", "POST"), (":path", "/v1/chat/completions")];
        if !request_id.is_empty() {
            pairs.push(("x-request-id", request_id));
        }
        if !decision_id.is_empty() {
            pairs.push(("x-portcullis-decision-id", decision_id));
        }
        self.send(Msg::RequestHeaders(HttpHeaders {
            headers: Some(ext_proc_headers(&pairs)),
            ..Default::default()
        }))
        .await
    }

    /// The response's headers.
    pub async fn response_headers(
        &mut self,
        status: u16,
        content_type: &str,
    ) -> ProcessingResponse {
        let status = status.to_string();
        self.send(Msg::ResponseHeaders(HttpHeaders {
            headers: Some(ext_proc_headers(&[
                (":status", &status),
                ("content-type", content_type),
            ])),
            ..Default::default()
        }))
        .await
    }

    /// One body chunk.
    pub async fn body(&mut self, chunk: &[u8], end: bool) -> ProcessingResponse {
        self.send(Msg::ResponseBody(HttpBody {
            body: chunk.to_vec(),
            end_of_stream: end,
            ..Default::default()
        }))
        .await
    }

    /// Waits (at most 5 s) for the processor to end the stream while this
    /// side is still open: `Ok` for a clean end (gRPC status OK), the
    /// status it ended with otherwise. Panics on a further answer, or when
    /// the stream is still open after 5 s.
    pub async fn ended_by_processor(&mut self) -> Result<(), tonic::Status> {
        match tokio::time::timeout(std::time::Duration::from_secs(5), self.rx.message()).await {
            Err(_) => panic!("the processor kept the stream open after the response ended"),
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(answer))) => panic!("expected the end of the stream, got {answer:?}"),
            Ok(Err(status)) => Err(status),
        }
    }

    /// Closes Envoy's side (as Envoy does once the response is done, or
    /// when it gives up on it).
    pub fn close(&mut self) {
        self.tx = None;
    }
}

/// The whole response side of one request: request headers, response
/// headers, `chunks` (the last with end of stream). Every answer, in order.
pub async fn respond(
    addr: SocketAddr,
    body_mode: i32,
    request_id: &str,
    decision_id: &str,
    status: u16,
    content_type: &str,
    chunks: &[Vec<u8>],
) -> Vec<ProcessingResponse> {
    let mut s = ExtProcStream::open(addr, body_mode).await;
    let mut answers = vec![
        s.request_headers(request_id, decision_id).await,
        s.response_headers(status, content_type).await,
    ];
    if body_mode == BUFFERED {
        let whole: Vec<u8> = chunks.concat();
        answers.push(s.body(&whole, true).await);
    } else {
        for (i, c) in chunks.iter().enumerate() {
            answers.push(s.body(c, i + 1 == chunks.len()).await);
        }
    }
    s.close();
    answers
}

/// The `portcullis` dynamic metadata of an answer, if any.
pub fn portcullis_metadata(answer: &ProcessingResponse) -> Option<serde_json::Value> {
    use envoy_types::pb::google::protobuf::value::Kind;
    fn json(v: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
        match v.kind.as_ref() {
            Some(Kind::NumberValue(n)) => serde_json::json!(*n as u64),
            Some(Kind::StringValue(s)) => serde_json::json!(s),
            Some(Kind::StructValue(s)) => serde_json::Value::Object(
                s.fields.iter().map(|(k, v)| (k.clone(), json(v))).collect(),
            ),
            _ => serde_json::Value::Null,
        }
    }
    let md = answer.dynamic_metadata.as_ref()?;
    md.fields.get("portcullis").map(json)
}
