//! `CheckRequest` from the wire straight into an [`AccessRequest`]: only
//! the fields a decision reads are decoded, and the request headers go
//! into our own map once.
//!
//! prost's generated `CheckRequest` decodes every field Envoy sends
//! (destination, context extensions, metadata, TLS session, ...), each
//! string in an allocation of its own, and the `headers` map into a
//! `HashMap` hashed with SipHash, from which our [`Headers`] would then be
//! built, hashed again. The messages here are wire-compatible subsets
//! of `envoy.service.auth.v3` (same field numbers and types, the same
//! message names, so prost's decode errors read as before); prost skips
//! the fields they leave out. The `headers` map is read as what it is on
//! the wire, a repeated entry message (protobuf's map encoding), in the
//! order sent: a repeated name's last value wins, as in a map.
//!
//! Fields left out are not validated either: a `CheckRequest` whose
//! `scheme` or `query` is not UTF-8 decodes, where prost's full message
//! refused it. Nothing reads them.
//!
//! `Check` decodes here ([`super::check_wire`]), and so does
//! an in-process caller's message ([`super::extauthz::to_access_request`]
//! encodes it first): one translation for both.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::{Address as PeerAddress, HeaderMap};
use envoy_types::pb::google::protobuf::Timestamp;
use prost::Message;

use super::extauthz::header_map;
use crate::request::{AccessRequest, Headers};

/// Why a decoded `CheckRequest` is not a request we can decide: malformed
/// on the wire (prost's error), or without what every request needs.
#[derive(Debug)]
pub enum Undecided {
    /// The bytes are not a `CheckRequest`.
    Wire(prost::DecodeError),
    /// A `CheckRequest` without HTTP attributes, method or path; the text
    /// says which.
    Incomplete(&'static str),
}

/// Decodes one `CheckRequest` message (its protobuf bytes, without the
/// gRPC frame) into the request it asks about.
///
/// # Errors
/// [`Undecided::Wire`] when prost refuses the bytes (the field that failed
/// is named in the error), [`Undecided::Incomplete`] for a request without
/// `attributes`, `attributes.request.http`, or an HTTP method or path.
pub fn decode(bytes: &[u8]) -> Result<AccessRequest, Undecided> {
    let check = wire::CheckRequest::decode(bytes).map_err(Undecided::Wire)?;
    translate(check).map_err(Undecided::Incomplete)
}

/// The request a decoded `CheckRequest` asks about.
fn translate(check: wire::CheckRequest) -> Result<AccessRequest, &'static str> {
    let attrs = check.attributes.ok_or("CheckRequest has no attributes")?;
    let (http, time) = match attrs.request {
        Some(r) => (r.http, r.time),
        None => (None, None),
    };
    let http = http.ok_or("CheckRequest has no HTTP request attributes")?;
    if http.method.is_empty() || http.path.is_empty() {
        return Err("CheckRequest's HTTP request has no method or path");
    }
    let headers = if http.headers.is_empty() {
        header_map(http.header_map.as_ref())
    } else {
        let mut headers = Headers::with_capacity_and_hasher(http.headers.len(), Default::default());
        for wire::HeaderEntry { mut key, value } in http.headers {
            key.make_ascii_lowercase();
            headers.insert(key, value);
        }
        headers
    };
    let source = attrs.source;
    let source_ip = source
        .as_ref()
        .and_then(|s| s.address.as_ref())
        .and_then(|a| a.address.as_ref())
        .and_then(|a| match a {
            Address::SocketAddress(sa) => sa.address.parse::<IpAddr>().ok(),
            _ => None,
        });
    let source_principal = source.map(|s| s.principal).filter(|p| !p.is_empty());
    let time = time
        .and_then(|t| {
            let secs = u64::try_from(t.seconds).ok()?;
            let nanos = u32::try_from(t.nanos).ok()?;
            UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
        })
        .unwrap_or_else(SystemTime::now);
    let request_id = if http.id.is_empty() {
        headers.get("x-request-id").cloned().unwrap_or_default()
    } else {
        http.id
    };
    let host = if http.host.is_empty() {
        headers.get(":authority").cloned().unwrap_or_default()
    } else {
        http.host
    };
    let body = if !http.raw_body.is_empty() {
        Some(http.raw_body)
    } else if !http.body.is_empty() {
        Some(http.body.into_bytes())
    } else {
        None
    };
    Ok(AccessRequest {
        // As sent: methods are case-sensitive (RFC 9110 section 9.1), and an
        // upstream may treat `get` otherwise than `GET`.
        method: http.method,
        path: http.path,
        host,
        headers,
        source_ip,
        source_principal,
        request_id,
        time,
        body,
        gateway_region: None,
        body_not_forwarded: false,
    })
}

/// Subsets of `envoy.service.auth.v3`'s messages: the fields
/// [`translate`] reads, with their numbers and types. Named as the
/// protocol names them, since prost's errors name the message and field.
mod wire {
    use super::{HeaderMap, Message, PeerAddress, Timestamp};

    /// `envoy.service.auth.v3.CheckRequest`.
    #[derive(Clone, PartialEq, Message)]
    pub(super) struct CheckRequest {
        #[prost(message, optional, tag = "1")]
        pub(super) attributes: Option<AttributeContext>,
    }

    /// `envoy.service.auth.v3.AttributeContext`: `source` and `request`.
    #[derive(Clone, PartialEq, Message)]
    pub(super) struct AttributeContext {
        #[prost(message, optional, tag = "1")]
        pub(super) source: Option<Peer>,
        #[prost(message, optional, tag = "4")]
        pub(super) request: Option<Request>,
    }

    /// `AttributeContext.Peer`: `address` and `principal`.
    #[derive(Clone, PartialEq, Message)]
    pub(super) struct Peer {
        #[prost(message, optional, tag = "1")]
        pub(super) address: Option<PeerAddress>,
        #[prost(string, tag = "4")]
        pub(super) principal: String,
    }

    /// `AttributeContext.Request`.
    #[derive(Clone, PartialEq, Message)]
    pub(super) struct Request {
        #[prost(message, optional, tag = "1")]
        pub(super) time: Option<Timestamp>,
        #[prost(message, optional, tag = "2")]
        pub(super) http: Option<HttpRequest>,
    }

    /// `AttributeContext.HttpRequest`, without `scheme`, `query`,
    /// `fragment`, `size` and `protocol`.
    #[derive(Clone, PartialEq, Message)]
    pub(super) struct HttpRequest {
        #[prost(string, tag = "1")]
        pub(super) id: String,
        #[prost(string, tag = "2")]
        pub(super) method: String,
        /// `map<string, string> headers`, as its entries are encoded.
        #[prost(message, repeated, tag = "3")]
        pub(super) headers: Vec<HeaderEntry>,
        #[prost(string, tag = "4")]
        pub(super) path: String,
        #[prost(string, tag = "5")]
        pub(super) host: String,
        #[prost(string, tag = "11")]
        pub(super) body: String,
        #[prost(bytes = "vec", tag = "12")]
        pub(super) raw_body: Vec<u8>,
        #[prost(message, optional, tag = "13")]
        pub(super) header_map: Option<HeaderMap>,
    }

    /// One entry of `HttpRequest.headers` (protobuf's map entry: key 1,
    /// value 2).
    #[derive(Clone, PartialEq, Message)]
    pub(super) struct HeaderEntry {
        #[prost(string, tag = "1")]
        pub(super) key: String,
        #[prost(string, tag = "2")]
        pub(super) value: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{
        socket_address::PortSpecifier, Address as PeerAddress, HeaderValue, SocketAddress,
    };
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request, TlsSession,
    };
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

    fn peer(ip: &str, principal: &str) -> Peer {
        Peer {
            address: Some(PeerAddress {
                address: Some(Address::SocketAddress(SocketAddress {
                    address: ip.into(),
                    port_specifier: Some(PortSpecifier::PortValue(443)),
                    ..Default::default()
                })),
            }),
            principal: principal.into(),
            service: "frontend".into(),
            ..Default::default()
        }
    }

    /// A `CheckRequest` with `http`, every other field Envoy may send set.
    fn check(http: HttpRequest) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(peer("203.0.113.7", "spiffe://test/client")),
                destination: Some(peer("10.0.0.12", "spiffe://test/api")),
                request: Some(Request {
                    time: Some(Timestamp {
                        seconds: 1_796_000_000,
                        nanos: 5,
                    }),
                    http: Some(http),
                }),
                context_extensions: [("tenant".to_string(), "blue".to_string())].into(),
                tls_session: Some(TlsSession {
                    sni: "api.example.com".into(),
                }),
                ..Default::default()
            }),
        }
    }

    fn http(headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            path: "/v1/models/m/versions/1:predict?x=1".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            scheme: "https".into(),
            query: "x=1".into(),
            protocol: "HTTP/2".into(),
            size: 2,
            raw_body: b"{}".to_vec(),
            ..Default::default()
        }
    }

    fn decoded(check: &CheckRequest) -> AccessRequest {
        decode(&check.encode_to_vec()).expect("a complete CheckRequest")
    }

    #[test]
    fn a_full_check_request_yields_the_fields_a_decision_reads() {
        let r = decoded(&check(HttpRequest {
            id: "14121402215093727330".into(),
            host: "api.example.com".into(),
            ..http(&[("Authorization", "Bearer t"), ("x-request-id", "abc")])
        }));
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/models/m/versions/1:predict?x=1");
        assert_eq!(r.host, "api.example.com");
        assert_eq!(r.request_id, "14121402215093727330");
        assert_eq!(r.header("authorization"), Some("Bearer t"));
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.source_ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(r.source_principal.as_deref(), Some("spiffe://test/client"));
        assert_eq!(r.time, UNIX_EPOCH + Duration::new(1_796_000_000, 5));
        assert_eq!(r.body.as_deref(), Some(&b"{}"[..]));
        assert_eq!(r.gateway_region, None);
        assert!(!r.body_not_forwarded);
    }

    #[test]
    fn request_id_and_host_fall_back_to_their_headers() {
        let r = decoded(&check(http(&[
            ("x-request-id", "abc"),
            (":authority", "api.test"),
        ])));
        assert_eq!(r.request_id, "abc");
        assert_eq!(r.host, "api.test");
    }

    #[test]
    fn header_names_are_lower_cased_and_a_repeated_name_keeps_its_last_value() {
        // Protobuf's map encoding is a repeated entry: a name sent twice is
        // two entries, and a map keeps the last.
        let mut bytes = check(http(&[("X-Tag", "first")])).encode_to_vec();
        let mut second = check(http(&[("x-tag", "second")]));
        second.attributes.as_mut().unwrap().source = None;
        bytes.extend(second.encode_to_vec()); // a message sent twice merges
        let r = decode(&bytes).unwrap();
        assert_eq!(r.header("x-tag"), Some("second"));
        assert_eq!(r.headers.len(), 1);
        assert_eq!(r.source_ip, Some("203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn raw_headers_are_read_when_the_header_map_is_empty_repeats_merged() {
        let raw = |key: &str, value: &str| HeaderValue {
            key: key.into(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        };
        let r = decoded(&check(HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![raw("Accept", "a/b"), raw("accept", "c/d")],
            }),
            ..http(&[])
        }));
        assert_eq!(r.header("accept"), Some("a/b,c/d"));
    }

    #[test]
    fn a_text_body_is_the_body_when_no_raw_body_came() {
        let r = decoded(&check(HttpRequest {
            body: "{\"a\":1}".into(),
            raw_body: Vec::new(),
            ..http(&[])
        }));
        assert_eq!(r.body.as_deref(), Some(&b"{\"a\":1}"[..]));
        let r = decoded(&check(HttpRequest {
            raw_body: Vec::new(),
            ..http(&[])
        }));
        assert_eq!(r.body, None);
    }

    #[test]
    fn a_missing_or_unusable_time_is_now() {
        let mut c = check(http(&[]));
        c.attributes
            .as_mut()
            .unwrap()
            .request
            .as_mut()
            .unwrap()
            .time = Some(Timestamp {
            seconds: -1,
            nanos: 0,
        });
        let before = SystemTime::now();
        assert!(decoded(&c).time >= before);
    }

    #[test]
    fn requests_without_http_attributes_method_or_path_are_incomplete() {
        let incomplete = |c: CheckRequest| match decode(&c.encode_to_vec()) {
            Err(Undecided::Incomplete(what)) => what,
            other => panic!("expected Incomplete, got {other:?}"),
        };
        assert_eq!(
            incomplete(CheckRequest::default()),
            "CheckRequest has no attributes"
        );
        let mut no_http = check(http(&[]));
        no_http.attributes.as_mut().unwrap().request = None;
        assert_eq!(
            incomplete(no_http),
            "CheckRequest has no HTTP request attributes"
        );
        for http in [
            HttpRequest {
                method: String::new(),
                ..http(&[])
            },
            HttpRequest {
                path: String::new(),
                ..http(&[])
            },
        ] {
            assert_eq!(
                incomplete(check(http)),
                "CheckRequest's HTTP request has no method or path"
            );
        }
    }

    #[test]
    fn malformed_bytes_are_a_wire_error_naming_the_field() {
        // attributes (field 1, length-delimited) claiming 9 bytes, given 1.
        let Err(Undecided::Wire(e)) = decode(&[0x0a, 0x09, 0x00]) else {
            panic!("a truncated message decoded")
        };
        assert!(e.to_string().contains("CheckRequest.attributes"), "{e}");
        // The method (HttpRequest field 2) not UTF-8.
        let mut c = check(http(&[]));
        c.attributes
            .as_mut()
            .unwrap()
            .request
            .as_mut()
            .unwrap()
            .http = None;
        let mut bytes = c.encode_to_vec();
        let http_bytes = [0x12, 0x02, 0xff, 0xfe]; // method: 2 bytes, not UTF-8
        let request = [&[0x12, http_bytes.len() as u8][..], &http_bytes].concat();
        let attributes = [&[0x22, request.len() as u8][..], &request].concat();
        bytes.extend([&[0x0a, attributes.len() as u8][..], &attributes].concat());
        let Err(Undecided::Wire(e)) = decode(&bytes) else {
            panic!("a method that is not UTF-8 decoded")
        };
        assert!(e.to_string().contains("HttpRequest.method"), "{e}");
    }

    #[test]
    fn fields_no_decision_reads_are_skipped_unvalidated() {
        // `scheme` (HttpRequest field 6) not UTF-8: prost's full message
        // refuses it; nothing here reads it.
        let mut bytes = check(http(&[])).encode_to_vec();
        let http_bytes = [0x32, 0x01, 0xff];
        let request = [&[0x12, http_bytes.len() as u8][..], &http_bytes].concat();
        let attributes = [&[0x22, request.len() as u8][..], &request].concat();
        bytes.extend([&[0x0a, attributes.len() as u8][..], &attributes].concat());
        assert!(CheckRequest::decode(bytes.as_slice()).is_err());
        let r = decode(&bytes).unwrap();
        assert_eq!(r.method, "POST");
    }
}
