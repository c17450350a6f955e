//! A local identity provider: OIDC discovery, a JWKS whose keys a test can
//! rotate, an introspection endpoint, and an outage switch. It runs in the
//! test process on its own thread and counts every request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::http::{find, MAX_BODY_BYTES, MAX_HEAD_BYTES};
use super::paths::fixture;
use super::thread_server::ThreadServer;

/// What the identity provider serves; shared with its connection tasks.
#[derive(Debug)]
struct IdpState {
    jwks: Value,
    down: bool,
    max_age: Option<u64>,
    hits: BTreeMap<String, usize>,
    /// Introspection answers by token; unknown tokens are inactive.
    introspection: BTreeMap<String, Value>,
    /// Delay before answering an introspection request.
    introspection_delay: Duration,
    /// The Authorization header introspection callers must send.
    introspection_auth: String,
}

/// Client id and secret the identity provider expects at `/introspect`.
pub const INTROSPECTION_CLIENT: (&str, &str) = ("portcullis", "introspection-secret-0123456789");

/// An in-process OIDC identity provider on `127.0.0.1:0`:
/// `/.well-known/openid-configuration` names `<issuer>/jwks.json`, which
/// serves the current key set. Keys can be rotated and the server can "go
/// down" (every request then gets 503). Every path's hits are counted,
/// including paths it does not serve (to prove nothing fetched them).
pub struct IdentityProvider {
    server: ThreadServer,
    state: Arc<std::sync::Mutex<IdpState>>,
}

impl IdentityProvider {
    /// Starts serving the fixture key set (`test-es256`, `test-rs256`).
    pub fn start() -> IdentityProvider {
        let jwks: Value = serde_json::from_slice(
            &std::fs::read(fixture("keys/test-issuer.jwks.json")).expect("fixture JWKS"),
        )
        .expect("fixture JWKS is JSON");
        let state = Arc::new(std::sync::Mutex::new(IdpState {
            jwks,
            down: false,
            max_age: None,
            hits: BTreeMap::new(),
            introspection: BTreeMap::new(),
            introspection_delay: Duration::ZERO,
            introspection_auth: {
                use base64::Engine;
                let (id, secret) = INTROSPECTION_CLIENT;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
                )
            },
        }));
        let shared = Arc::clone(&state);
        let server = ThreadServer::start("identity provider", move |stream, addr| {
            idp_connection(stream, Arc::clone(&shared), addr)
        });
        IdentityProvider { server, state }
    }

    /// The issuer URL (`iss` of its tokens, base of discovery).
    pub fn issuer(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The key set URL.
    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks.json", self.server.addr())
    }

    /// Serves `jwks` from now on (a key rotation).
    pub fn set_jwks(&self, jwks: Value) {
        self.state.lock().unwrap().jwks = jwks;
    }

    /// Serves the keys of the given fixture JWKS files, merged.
    pub fn set_keys(&self, files: &[&str]) {
        let mut keys = Vec::new();
        for f in files {
            let set: Value =
                serde_json::from_slice(&std::fs::read(fixture(f)).expect("fixture JWKS")).unwrap();
            keys.extend(set["keys"].as_array().unwrap().iter().cloned());
        }
        self.set_jwks(json!({ "keys": keys }));
    }

    /// Answers every request with 503 (`true`) or serves again (`false`).
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Sends `Cache-Control: max-age=<n>` with the key set.
    pub fn set_max_age(&self, seconds: Option<u64>) {
        self.state.lock().unwrap().max_age = seconds;
    }

    /// The introspection endpoint URL.
    pub fn introspection_url(&self) -> String {
        format!("http://{}/introspect", self.server.addr())
    }

    /// Answers introspection of `token` with `answer` from now on.
    pub fn set_introspection(&self, token: &str, answer: Value) {
        self.state
            .lock()
            .unwrap()
            .introspection
            .insert(token.to_string(), answer);
    }

    /// Delays every introspection answer by `delay` (a slow endpoint).
    pub fn set_introspection_delay(&self, delay: Duration) {
        self.state.lock().unwrap().introspection_delay = delay;
    }

    /// How many requests reached `path` (any answer).
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Every path requested so far, with counts.
    pub fn all_hits(&self) -> BTreeMap<String, usize> {
        self.state.lock().unwrap().hits.clone()
    }
}

/// One request per connection (the fetcher's client may reuse connections;
/// closing after each answer keeps this server simple and still correct).
async fn idp_connection(
    mut stream: tokio::net::TcpStream,
    state: Arc<std::sync::Mutex<IdpState>>,
    addr: SocketAddr,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    while find(&buf, b"\r\n\r\n").is_none() {
        if buf.len() > MAX_HEAD_BYTES {
            return;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head_end = find(&buf, b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(MAX_BODY_BYTES);
    while buf.len() < head_end + 4 + length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let request_body =
        String::from_utf8_lossy(&buf[head_end + 4..head_end + 4 + length]).into_owned();
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    if path == "/introspect" {
        let delay = state.lock().unwrap().introspection_delay;
        tokio::time::sleep(delay).await;
    }
    let (status, body, max_age) = {
        let mut s = state.lock().unwrap();
        *s.hits.entry(path.clone()).or_default() += 1;
        if s.down {
            (503, String::new(), None)
        } else {
            match path.as_str() {
                "/introspect" => {
                    if header("authorization").as_deref() != Some(s.introspection_auth.as_str()) {
                        (401, String::new(), None)
                    } else {
                        let token = request_body
                            .split('&')
                            .find_map(|kv| kv.strip_prefix("token="))
                            .map(form_decode)
                            .unwrap_or_default();
                        let answer = s
                            .introspection
                            .get(&token)
                            .cloned()
                            .unwrap_or_else(|| json!({"active": false}));
                        (200, answer.to_string(), None)
                    }
                }
                "/.well-known/openid-configuration" => (
                    200,
                    json!({
                        "issuer": format!("http://{addr}"),
                        "jwks_uri": format!("http://{addr}/jwks.json"),
                    })
                    .to_string(),
                    None,
                ),
                "/jwks.json" => (200, s.jwks.to_string(), s.max_age),
                _ => (404, String::new(), None),
            }
        }
    };
    let cache = max_age
        .map(|n| format!("cache-control: public, max-age={n}\r\n"))
        .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{cache}connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

/// Decodes one `application/x-www-form-urlencoded` value.
fn form_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
