//! Free loopback ports, for the processes whose ports must be chosen before
//! they start (Envoy, redis-server). Servers we start ourselves bind
//! `127.0.0.1:0` instead.

use std::net::TcpListener;

/// A loopback port that was free a moment ago. Another process may take it
/// before the caller binds it: callers that can retry a start do so.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}
