//! A TCP server inside the test process, on `127.0.0.1:0`, with a thread
//! and a runtime of its own so that tests may use blocking clients; stopped
//! and joined on drop. What it answers is its owner's business.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;

use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::STARTUP_TIMEOUT;

/// A running accept loop; every connection is served on a task of its own.
pub(super) struct ThreadServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ThreadServer {
    /// Binds `127.0.0.1:0` and hands each accepted connection, with the
    /// server's own address, to `serve`. `what` names the server in panics.
    pub(super) fn start<F, Fut>(what: &'static str, serve: F) -> ThreadServer
    where
        F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("tokio runtime for {what}: {e}"));
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .unwrap_or_else(|e| panic!("bind {what}: {e}"));
                let addr = listener.local_addr().unwrap();
                addr_tx.send(addr).unwrap();
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(serve(stream, addr));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(STARTUP_TIMEOUT)
            .unwrap_or_else(|_| panic!("{what} did not start"));
        ThreadServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ThreadServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
