//! ext_authz `Check` calls as Envoy makes them: a `CheckRequest` built field
//! by field, sent to a decision listener, and the parts of the
//! `CheckResponse` the tests read. What a test expects is up to the test.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderMap, HeaderValue, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};

/// The sentiment model's predict route (bundled policies), which validates
/// its JSON body.
pub const PREDICT: &str = "/v1/models/sentiment/versions/v2:predict";
/// A body the predict route accepts.
pub const PREDICT_BODY: &[u8] = br#"{"features": ["great service"]}"#;

/// A `CheckRequest` under construction: one HTTP request to `api.test`, as
/// Envoy describes it to ext_authz. Nothing is set that the test does not
/// set, except the host.
#[derive(Debug, Clone)]
#[must_use = "a Check does nothing until it is built"]
pub struct Check {
    http: HttpRequest,
    source: Option<Peer>,
}

impl Check {
    /// A `method` request for `path` (sent as-is) to host `api.test`.
    pub fn new(method: &str, path: &str) -> Check {
        Check {
            http: HttpRequest {
                method: method.into(),
                path: path.into(),
                host: "api.test".into(),
                ..Default::default()
            },
            source: None,
        }
    }

    /// `GET path`.
    pub fn get(path: &str) -> Check {
        Check::new("GET", path)
    }

    /// `POST path`, without a body.
    pub fn post(path: &str) -> Check {
        Check::new("POST", path)
    }

    /// `POST` [`PREDICT`] with the JSON body [`PREDICT_BODY`].
    pub fn predict() -> Check {
        Check::post(PREDICT).json(PREDICT_BODY)
    }

    /// Envoy's request id (`attributes.request.http.id`).
    pub fn id(mut self, id: &str) -> Check {
        self.http.id = id.into();
        self
    }

    /// Sets header `name` in `headers` (a map: the last value wins).
    pub fn header(mut self, name: &str, value: &str) -> Check {
        self.http.headers.insert(name.into(), value.into());
        self
    }

    /// Sets each of `headers`, as [`Check::header`] does.
    pub fn headers(self, headers: &[(&str, &str)]) -> Check {
        headers
            .iter()
            .fold(self, |check, (name, value)| check.header(name, value))
    }

    /// Sets `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Check {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Appends header `name` to `header_map`, with a raw byte value, as
    /// Envoy sends headers that may repeat or not be UTF-8.
    pub fn raw_header(mut self, name: &str, value: &[u8]) -> Check {
        self.http
            .header_map
            .get_or_insert_with(HeaderMap::default)
            .headers
            .push(HeaderValue {
                key: name.into(),
                raw_value: value.to_vec(),
                ..Default::default()
            });
        self
    }

    /// Sets the body Envoy buffered (`raw_body`), with no content type.
    pub fn raw_body(mut self, body: &[u8]) -> Check {
        self.http.raw_body = body.to_vec();
        self
    }

    /// Sets a JSON body and `Content-Type: application/json`.
    pub fn json(self, body: &[u8]) -> Check {
        self.header("content-type", "application/json")
            .raw_body(body)
    }

    /// The downstream peer's address, without a port.
    pub fn source(mut self, ip: &str) -> Check {
        self.source_peer().address = Some(socket_address(ip, None));
        self
    }

    /// The downstream peer's address and port.
    pub fn source_port(mut self, ip: &str, port: u32) -> Check {
        self.source_peer().address = Some(socket_address(ip, Some(port)));
        self
    }

    /// The downstream peer's principal (the SPIFFE id of its certificate).
    pub fn principal(mut self, principal: &str) -> Check {
        self.source_peer().principal = principal.into();
        self
    }

    fn source_peer(&mut self) -> &mut Peer {
        self.source.get_or_insert_with(Peer::default)
    }

    /// The `CheckRequest`.
    pub fn build(self) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: self.source,
                request: Some(Request {
                    http: Some(self.http),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }
}

fn socket_address(ip: &str, port: Option<u32>) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: port.map(PortSpecifier::PortValue),
            ..Default::default()
        })),
    }
}

/// Sends `request` to the decision listener at `addr` on a new connection.
pub async fn check_at(addr: SocketAddr, request: CheckRequest) -> CheckResponse {
    let mut client = AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| panic!("connect to the decision listener {addr}: {e}"));
    client
        .check(request)
        .await
        .expect("Check answers (a denial is not a gRPC error)")
        .into_inner()
}

/// The HTTP status the client gets: 200 for an allow, the denied
/// response's status otherwise. Panics on a response that is neither.
pub fn http_status(response: &CheckResponse) -> u16 {
    match &response.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(denied)) => {
            denied.status.as_ref().expect("a denial has a status").code as u16
        }
        other => panic!("unexpected http_response {other:?}"),
    }
}

/// The value of header `name` on a denial; `None` on an allow or when the
/// denial has no such header.
pub fn denied_header(response: &CheckResponse, name: &str) -> Option<String> {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        return None;
    };
    denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| h.value.clone())
}
