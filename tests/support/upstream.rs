//! The upstream behind Envoy in the end-to-end tests: an HTTP/1.1 server
//! that echoes every request back as JSON, so that a test sees what Envoy
//! forwarded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;

use super::http::{find, MAX_BODY_BYTES, MAX_HEAD_BYTES};
use super::thread_server::ThreadServer;

/// An in-process HTTP/1.1 server that answers every request with 200 and a
/// JSON description of it:
///
/// ```json
/// {"method": "POST", "path": "/v1/...", "headers": {"x-a": "1, 2"},
///  "header_list": [["x-a", "1"], ["x-a", "2"]], "body": "..."}
/// ```
///
/// Header names are lower-cased; `headers` joins repeated headers with
/// `", "`, `header_list` keeps each one, in order. Request bodies are read by
/// `Content-Length`; a chunked request gets 501.
pub struct Upstream {
    server: ThreadServer,
    hits: Arc<AtomicUsize>,
}

impl Upstream {
    /// Starts the server on `127.0.0.1:0`, on its own thread and runtime so
    /// that tests may use blocking clients.
    pub fn start() -> Upstream {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let server = ThreadServer::start("upstream", move |stream, _| {
            echo_connection(stream, Arc::clone(&counter))
        });
        Upstream { server, hits }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// How many requests it has answered.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn echo_connection(mut stream: tokio::net::TcpStream, hits: Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Read one request head (keep-alive: Envoy reuses connections).
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            if buf.len() > MAX_HEAD_BYTES {
                let _ = stream.write_all(&simple_response(431, "")).await;
                return;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);

        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (Some(method), Some(path), Some(_version)) = (parts.next(), parts.next(), parts.next())
        else {
            let _ = stream.write_all(&simple_response(400, "")).await;
            return;
        };
        let mut header_list = Vec::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                let _ = stream.write_all(&simple_response(400, "")).await;
                return;
            };
            header_list.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let header = |name: &str| {
            header_list
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        if header("transfer-encoding").is_some() {
            let _ = stream.write_all(&simple_response(501, "")).await;
            return;
        }
        let length = match header("content-length").map(str::parse::<usize>) {
            None => 0,
            Some(Ok(n)) if n <= MAX_BODY_BYTES => n,
            Some(_) => {
                let _ = stream.write_all(&simple_response(400, "")).await;
                return;
            }
        };
        while buf.len() < length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));

        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &header_list {
            headers
                .entry(name.clone())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
        let echo = json!({
            "method": method,
            "path": path,
            "headers": headers,
            "header_list": header_list,
            "body": String::from_utf8_lossy(&body),
        })
        .to_string();
        hits.fetch_add(1, Ordering::SeqCst);
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{echo}",
            echo.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

fn simple_response(status: u16, reason: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .into_bytes()
}
