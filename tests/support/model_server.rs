//! A small model server behind Envoy in the token tests: it answers an
//! OpenAI-style chat completion, as plain JSON or (`"stream": true`) as
//! server-sent events sent one by one with chunked encoding, with `usage`
//! in the body or in the last event before `[DONE]`.
//!
//! What it says is "You said: " and the last message's content, cut into
//! events of `x-test-piece` bytes (default 8), so a test puts a canary
//! where it wants it. Headers steer it: `x-test-usage` (total tokens,
//! default 300), `x-test-status` (an error status, no usage),
//! `x-test-break` (a stream cut after that many events, the connection
//! dropped).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::http::find;
use super::thread_server::ThreadServer;

/// The model server; stopped on drop.
pub struct ModelServer {
    server: ThreadServer,
    hits: Arc<AtomicUsize>,
}

impl ModelServer {
    /// Starts it on `127.0.0.1:0`, on its own thread.
    pub fn start() -> ModelServer {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let server = ThreadServer::start("model server", move |stream, _| {
            serve(stream, Arc::clone(&counter))
        });
        ModelServer { server, hits }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Completions answered.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve(mut stream: tokio::net::TcpStream, hits: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        buf.drain(..head_end + 4);
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.trim().to_string())
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        hits.fetch_add(1, Ordering::SeqCst);
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let said = request["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default();
        let text = format!("You said: {said}");
        let total: u64 = header("x-test-usage")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        let usage = json!({"prompt_tokens": 8, "completion_tokens": total.saturating_sub(8), "total_tokens": total});
        if let Some(status) = header("x-test-status") {
            let body = json!({"error": {"message": "upstream failed"}}).to_string();
            let response = format!(
                "HTTP/1.1 {status} Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        if request["stream"] != Value::Bool(true) {
            let body = json!({"object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                "usage": usage})
            .to_string();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let piece: usize = header("x-test-piece")
            .and_then(|v| v.parse().ok())
            .unwrap_or(8)
            .max(1);
        let cut: Option<usize> = header("x-test-break").and_then(|v| v.parse().ok());
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chars: Vec<char> = text.chars().collect();
        let mut events: Vec<String> = chars
            .chunks(piece)
            .map(|c| {
                let content: String = c.iter().collect();
                format!(
                    "data: {}\n\n",
                    json!({"object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {"content": content}}], "usage": null})
                )
            })
            .collect();
        events.push(format!(
            "data: {}\n\n",
            json!({"object": "chat.completion.chunk", "choices": [], "usage": usage})
        ));
        events.push("data: [DONE]\n\n".to_string());
        for (i, event) in events.iter().enumerate() {
            if cut == Some(i) {
                // The upstream dies mid-stream.
                let _ = stream.shutdown().await;
                return;
            }
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            if stream.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if stream.write_all(b"0\r\n\r\n").await.is_err() {
            return;
        }
    }
}
