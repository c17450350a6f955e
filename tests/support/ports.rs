//! Free loopback ports, for the processes whose ports must be chosen before
//! they start (redis-server, nginx, Caddy). Servers we start ourselves, and
//! Envoy (which tells its ports through its admin interface), bind
//! `127.0.0.1:0` instead.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Ports this test process has handed out.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A loopback port that was free a moment ago, and that this process has
/// not handed out before. Another process may take it before the caller
/// binds it: callers that can retry a start do so. Within the process it is
/// never handed out twice: two tests starting at once could otherwise get
/// the same port from the kernel, and two servers that set `SO_REUSEPORT`
/// (Envoy's listeners did, when the tests chose Envoy's ports) bind it both
/// without an error, the kernel then sharing the connections between them:
/// a request meant for one test's Envoy reached the other test's upstream.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0 to find a free port")
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
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
