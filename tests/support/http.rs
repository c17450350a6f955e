//! A small HTTP/1.1 client for talking to Envoy, the operations listener
//! and the test servers: one request per connection, every wait bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::HTTP_TIMEOUT;

/// The largest request head the test servers read.
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The largest request body the test servers read.
pub(super) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// One HTTP/1.1 request, sent on a fresh connection (`Connection: close`).
#[derive(Debug, Clone)]
pub struct HttpRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Duration,
    from: Option<std::net::IpAddr>,
}

/// What came back: status, headers (names lower-cased, in order) and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// A request with `method` for `path` (sent as-is, unnormalised).
    pub fn new(method: &str, path: &str) -> HttpRequest {
        HttpRequest {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: HTTP_TIMEOUT,
            from: None,
        }
    }

    pub fn get(path: &str) -> HttpRequest {
        HttpRequest::new("GET", path)
    }

    pub fn post(path: &str) -> HttpRequest {
        HttpRequest::new("POST", path)
    }

    /// Adds a header (repeat to send it several times).
    pub fn header(mut self, name: &str, value: &str) -> HttpRequest {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> HttpRequest {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Sets a JSON body and its content type.
    pub fn json(mut self, body: &Value) -> HttpRequest {
        self.body = body.to_string().into_bytes();
        self.header("content-type", "application/json")
    }

    /// Sets the body to these bytes with this Content-Type (for bodies
    /// that are not well-formed JSON).
    pub fn raw_body(mut self, content_type: &str, body: &[u8]) -> HttpRequest {
        self.body = body.to_vec();
        self.header("content-type", content_type)
    }

    /// Sets the body to these bytes, without a Content-Type.
    pub fn body(mut self, body: &[u8]) -> HttpRequest {
        self.body = body.to_vec();
        self
    }

    /// Connects from this local address (another loopback address such as
    /// 127.0.0.2: a client the servers tell apart from 127.0.0.1).
    pub fn from(mut self, ip: std::net::IpAddr) -> HttpRequest {
        self.from = Some(ip);
        self
    }

    /// Bounds connecting, writing and reading (each).
    pub fn timeout(mut self, timeout: Duration) -> HttpRequest {
        self.timeout = timeout;
        self
    }

    /// Sends the request; panics on any I/O or protocol error.
    pub fn send(&self, addr: SocketAddr) -> HttpResponse {
        self.try_send(addr)
            .unwrap_or_else(|e| panic!("{} {} to {addr}: {e}", self.method, self.path))
    }

    /// Sends the request.
    pub fn try_send(&self, addr: SocketAddr) -> Result<HttpResponse, String> {
        let mut stream = match self.from {
            None => TcpStream::connect_timeout(&addr, self.timeout)
                .map_err(|e| format!("connect: {e}"))?,
            Some(ip) => connect_from(ip, addr, self.timeout)?,
        };
        stream.set_read_timeout(Some(self.timeout)).unwrap();
        stream.set_write_timeout(Some(self.timeout)).unwrap();
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        let has = |name: &str| {
            self.headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        if !has("host") {
            head.push_str("host: api.test\r\n");
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH") {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        head.push_str("connection: close\r\n\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(&self.body);
        stream
            .write_all(&request)
            .map_err(|e| format!("write: {e}"))?;
        // No half-close after writing: Envoy treats a client FIN as the end
        // of the connection and may reset the request. `connection: close`
        // makes the server end it after the response instead.
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .map_err(|e| format!("read: {e} (got {} bytes)", raw.len()))?;
        parse_response(&raw)
    }
}

/// A connection to `addr` from the local address `ip` (any port).
fn connect_from(
    ip: std::net::IpAddr,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, String> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(&SocketAddr::new(ip, 0).into())
        .map_err(|e| format!("bind {ip}: {e}"))?;
    socket
        .connect_timeout(&addr.into(), timeout)
        .map_err(|e| format!("connect from {ip}: {e}"))?;
    Ok(socket.into())
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| {
        format!(
            "no complete response head in {:?}",
            String::from_utf8_lossy(raw)
        )
    })?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let rest = &raw[end + 4..];
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = get("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("bad content-length {length:?}"))?;
        if rest.len() < length {
            return Err(format!("body cut short: {} of {length} bytes", rest.len()));
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or("chunk size line missing")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            return Err("chunk cut short".into());
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {}, headers {:?}, body {:?}",
                self.status,
                self.headers,
                self.text()
            )
        })
    }
}

/// `GET path` on `addr`: status and body text (panics when unreachable).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let resp = HttpRequest::get(path).send(addr);
    (resp.status, resp.text())
}

/// Where `needle` first starts in `haystack`.
pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
