//! Write coalescing for the gRPC listeners: one `write` system call for the
//! responses of many streams instead of one (or two) per response.
//!
//! hyper runs each HTTP/2 stream as its own task. When a stream's task has
//! its response, it wakes the connection's task, and tokio runs the woken
//! task next (its LIFO slot), so the connection flushes after every single
//! response: one `writev` per answer, about a quarter of the CPU a loopback
//! answer costs. [`Coalesced`] makes the connection's first write after a
//! flush yield once to the scheduler instead (`tokio::task::yield_now`: the
//! task runs again after the tasks ready meanwhile, at most 61 task polls
//! later): the streams whose answers are ready meanwhile add their frames to
//! h2's send buffer, and one write carries them all. With no other task
//! ready, the yield costs one task poll and one non-blocking poll of the
//! I/O driver.
//!
//! It also declares itself not vectored, so h2 copies DATA frames under
//! 1 KiB into its send buffer (`CHAIN_THRESHOLD_WITHOUT_VECTORED_IO` in h2's
//! `framed_write.rs`) instead of holding a frame of 256 bytes or more apart,
//! which costs a second write for the trailers of every such response (an
//! allowed `Check` answer with its headers is one).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose writes are coalesced across the streams of one
/// HTTP/2 connection, as the module says. Reads, flushes and shutdown pass
/// through unchanged; `T` is a TCP or TLS stream.
#[derive(Debug)]
pub struct Coalesced<T> {
    inner: T,
    /// The yield since the last flush is over: writes go through.
    write_through: bool,
    /// The yield under way, if any.
    deferred: Option<Arc<Deferred>>,
}

/// The waker handed to the scheduler for one yield: it records that the
/// yield is over and wakes the connection's task.
#[derive(Debug, Default)]
struct Deferred {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Deferred {
    /// Whether the yield is over; if not, `task` is woken when it is.
    fn fired(&self, task: &Waker) -> bool {
        if self.fired.load(Ordering::Acquire) {
            return true;
        }
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.clone());
        // Fired between the load and the store: the waker stored may never
        // be woken, so the caller writes now.
        self.fired.load(Ordering::Acquire)
    }
}

impl Wake for Deferred {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl<T> Coalesced<T> {
    /// Wraps an accepted connection.
    pub fn new(inner: T) -> Self {
        Coalesced {
            inner,
            write_through: false,
            deferred: None,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.write_through {
            let deferred = match &self.deferred {
                Some(deferred) => Arc::clone(deferred),
                None => {
                    // tokio wakes a task that yields once it has run the
                    // tasks already ready and polled the I/O driver (or at
                    // its next maintenance tick, every 61 polls), without
                    // waking another worker thread for it.
                    let deferred = Arc::new(Deferred::default());
                    let waker = Waker::from(Arc::clone(&deferred));
                    let mut yield_now = std::pin::pin!(tokio::task::yield_now());
                    let _ = yield_now.as_mut().poll(&mut Context::from_waker(&waker));
                    self.deferred = Some(Arc::clone(&deferred));
                    deferred
                }
            };
            // A stream's answer wakes the connection's task meanwhile: it
            // keeps waiting for the yield, so that answer joins the write.
            if !deferred.fired(cx.waker()) {
                return Poll::Pending;
            }
            self.deferred = None;
            self.write_through = true;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.write_through = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::net::{TcpListener, TcpStream};
    use tokio_stream::StreamExt as _;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    use super::*;

    /// A TCP stream counting the writes that reach the socket.
    struct CountingWrites {
        inner: TcpStream,
        writes: Arc<AtomicUsize>,
    }

    impl tonic::transport::server::Connected for CountingWrites {
        type ConnectInfo = ();
        fn connect_info(&self) {}
    }

    impl AsyncRead for CountingWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingWrites {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.inner).poll_write(cx, buf);
            if written.is_ready() {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            written
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            if written.is_ready() {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            written
        }
        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Serves gRPC health on one accepted connection, its writes counted,
    /// from a runtime of one worker thread (as a server pinned to one core
    /// runs), and sends `calls` concurrent health checks over one HTTP/2
    /// connection from another runtime while the server's worker is busy:
    /// how many writes answered them.
    fn writes_for_concurrent_calls(calls: usize) -> usize {
        let server = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let clients = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&writes);
        server.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            let (inner, _) = listener.accept().await.unwrap();
            inner.set_nodelay(true).unwrap();
            let connection = Coalesced::new(CountingWrites {
                inner,
                writes: counted,
            });
            let incoming = tokio_stream::once(Ok::<_, std::io::Error>(connection))
                .chain(tokio_stream::pending());
            let (_reporter, health) = tonic_health::server::health_reporter();
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming)
                .await
        });
        let server_handle = server.handle().clone();
        let answered = clients.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = HealthClient::new(channel.clone());
            client
                .check(HealthCheckRequest::default())
                .await
                .expect("the warm-up call is answered");
            let before = writes.load(Ordering::Relaxed);
            // The server's one worker is busy while the calls are sent, as
            // a saturated server's is: it then finds them all waiting.
            let (busy_tx, busy) = tokio::sync::oneshot::channel();
            server_handle.spawn(async move {
                let _ = busy_tx.send(());
                std::thread::sleep(std::time::Duration::from_millis(100));
            });
            busy.await.unwrap();
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..calls {
                let mut client = HealthClient::new(channel.clone());
                set.spawn(async move { client.check(HealthCheckRequest::default()).await });
            }
            while let Some(answer) = set.join_next().await {
                answer.unwrap().expect("every concurrent call is answered");
            }
            writes.load(Ordering::Relaxed) - before
        });
        server.shutdown_background();
        clients.shutdown_background();
        answered
    }

    #[test]
    fn concurrent_answers_on_one_connection_share_writes() {
        let calls = 200;
        let writes = writes_for_concurrent_calls(calls);
        // Without the yield, 200 writes answered them when this test was
        // written (one per answer); with it, 4.
        assert!(
            writes * 4 <= calls,
            "{calls} concurrent answers took {writes} writes"
        );
    }
}
