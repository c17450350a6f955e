//! Write coalescing for the gRPC listeners: one `write` system call for the
//! responses of many streams instead of one (or two) per response.
//!
//! hyper runs each HTTP/2 stream as its own task. When a stream's task has
//! its response, it wakes the connection's task, and tokio runs the woken
//! task next (its LIFO slot), so the connection flushes after every single
//! response: one `writev` per answer, about a quarter of the CPU a loopback
//! answer costs. [`Coalesced`] makes the connection's first write after a
//! flush yield once to the scheduler instead (the task goes to the back of
//! the run queue): the streams whose answers are ready meanwhile add their
//! frames to h2's send buffer, and one write carries them all. With no other
//! task ready, the yield costs one task poll (about a microsecond).
//!
//! It also declares itself not vectored, so h2 copies DATA frames under
//! 1 KiB into its send buffer (`CHAIN_THRESHOLD_WITHOUT_VECTORED_IO` in h2's
//! `framed_write.rs`) instead of holding a frame of 256 bytes or more apart,
//! which costs a second write for the trailers of every such response (an
//! allowed `Check` answer with its headers is one).

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose writes are coalesced across the streams of one
/// HTTP/2 connection, as the module says. Reads, flushes and shutdown pass
/// through unchanged; `T` is a TCP or TLS stream.
#[derive(Debug)]
pub struct Coalesced<T> {
    inner: T,
    /// The connection's task has yielded once since the last flush.
    yielded: bool,
}

impl<T> Coalesced<T> {
    /// Wraps an accepted connection.
    pub fn new(inner: T) -> Self {
        Coalesced {
            inner,
            yielded: false,
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
        if !self.yielded {
            // Woken while running, the task is scheduled as a yield: after
            // the tasks already queued, not in the LIFO slot.
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.yielded = false;
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
    /// and sends `calls` concurrent health checks over one HTTP/2
    /// connection: how many writes answered them.
    async fn writes_for_concurrent_calls(calls: usize) -> usize {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&writes);
        let (_reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(async move {
            let (inner, _) = listener.accept().await.unwrap();
            inner.set_nodelay(true).unwrap();
            let connection = Coalesced::new(CountingWrites {
                inner,
                writes: counted,
            });
            let incoming = tokio_stream::once(Ok::<_, std::io::Error>(connection))
                .chain(tokio_stream::pending());
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming)
                .await
        });
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
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..calls {
            let mut client = HealthClient::new(channel.clone());
            set.spawn(async move { client.check(HealthCheckRequest::default()).await });
        }
        while let Some(answer) = set.join_next().await {
            answer.unwrap().expect("every concurrent call is answered");
        }
        writes.load(Ordering::Relaxed) - before
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn concurrent_answers_on_one_connection_share_writes() {
        let calls = 200;
        let writes = writes_for_concurrent_calls(calls).await;
        // Without the yield, 114 writes answered them when this test was
        // written; with it, 6.
        assert!(
            writes * 4 <= calls,
            "{calls} concurrent answers took {writes} writes"
        );
    }
}
