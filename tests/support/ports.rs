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

/// A loopback port that refuses every connection for as long as this value
/// lives: its socket is bound (so no other process can take the port, which
/// `free_port` cannot promise) but never listens, so the kernel answers each
/// connection attempt with a reset ("connection refused").
pub struct ClosedPort {
    _socket: socket2::Socket,
    /// `127.0.0.1:<port>`.
    pub addr: std::net::SocketAddr,
}

impl ClosedPort {
    /// Binds `127.0.0.1:0` without listening.
    pub fn new() -> ClosedPort {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a TCP socket");
        let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
        socket.bind(&any.into()).expect("bind 127.0.0.1:0");
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("an IPv4 address");
        ClosedPort {
            _socket: socket,
            addr,
        }
    }
}
