//! Write coalescing for the gRPC listeners: one `write` system call for the
//! responses of many streams instead of one (or two) per response.
//!
//! hyper runs each HTTP/2 stream as its own task. When a stream's task has
//! its response, it wakes the connection's task, and tokio runs the woken
//! task next (its LIFO slot), so the connection flushes after every single
//! response: one `writev` per answer, about a quarter of the CPU a loopback
//! answer costs. [`Coalesced`] holds the connection's first write after a
//! flush once instead: the connection's task wakes itself and returns
//! `Pending`, so tokio puts it at the back of its worker's queue, and it
//! writes when it runs again, after the tasks that were ready before it.
//! The streams among them add their frames to h2's send buffer meanwhile,
//! and one write carries them all. With no other task ready, the hold
//! costs one more poll of the connection's task.
//!
//! The hold ends when those tasks have run, not when the worker runs out
//! of tasks. An earlier version yielded with `tokio::task::yield_now`,
//! whose wake-up waits for the worker's next poll of the I/O driver: under
//! steady load that came only at its maintenance tick, every 61 task polls,
//! and answers ready long before waited for the decisions of requests that
//! arrived after them. Through Envoy (one HTTP/2 connection carrying every
//! `Check`, `ShouldRateLimit` and ext_proc message) that held answers while
//! Envoy's worker waited for them: the host was 28-30% idle during
//! Portcullis's benchmark slices against 18-20% during the empty
//! server's. Interleaved with the earlier build, 4 runs each of
//! `scripts/bench-envoy.sh`, the ratio went from 0.897, 0.738, 0.766,
//! 0.858 to 0.938, 0.892, 0.859, 0.908, and the idle share to 23%. Side by
//! side at saturation, where the queue is long, the two builds served as
//! many calls (0.99-1.03 of each other, `Check` and `ShouldRateLimit`).
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
    /// The write since the last flush has been held once: writes go
    /// through until the next flush.
    write_through: bool,
    /// The connection's task was re-queued to hold the first write: its
    /// next write goes through.
    held: bool,
}

impl<T> Coalesced<T> {
    /// Wraps an accepted connection.
    pub fn new(inner: T) -> Self {
        Coalesced {
            inner,
            write_through: false,
            held: false,
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
            if !self.held {
                // Hold the first write once: the task goes to the back of
                // its worker's queue (a task that wakes itself while it
                // runs is re-queued there, not in the LIFO slot), and runs
                // again once the tasks ready before it have. The streams
                // among them add their answers to h2's send buffer.
                self.held = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.held = false;
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

    /// What the server's connection saw: the reads and the writes that
    /// reached the socket, in order, against `clock`, which a test may
    /// advance (the polls of a busy task).
    #[derive(Default)]
    struct Probe {
        clock: AtomicUsize,
        /// (`clock` at the event, a read (`true`) or a write).
        events: std::sync::Mutex<Vec<(usize, bool)>>,
    }

    impl Probe {
        fn event(&self, read: bool) {
            let at = self.clock.load(Ordering::SeqCst);
            self.events.lock().unwrap().push((at, read));
        }

        fn writes(&self) -> usize {
            self.events
                .lock()
                .unwrap()
                .iter()
                .filter(|&&(_, r)| !r)
                .count()
        }
    }

    /// A TCP stream counting the writes that reach the socket.
    struct CountingWrites {
        inner: TcpStream,
        probe: Arc<Probe>,
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
            let before = buf.filled().len();
            let read = Pin::new(&mut self.inner).poll_read(cx, buf);
            if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                self.probe.event(true);
            }
            read
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
                self.probe.event(false);
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
                self.probe.event(false);
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

    /// The server's runtime, the client's, the channel and the probe.
    type Served = (
        tokio::runtime::Runtime,
        tokio::runtime::Runtime,
        tonic::transport::Channel,
        Arc<Probe>,
    );

    /// Two runtimes of one worker thread each: the server's (as a server
    /// pinned to one core runs) serving gRPC health on one accepted
    /// connection watched by a [`Probe`], and the client's, connected to
    /// it over one HTTP/2 connection with one call answered.
    fn served() -> Served {
        let one_worker = || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        };
        let (server, clients) = (one_worker(), one_worker());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let probe = Arc::new(Probe::default());
        let watched = Arc::clone(&probe);
        server.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            let (inner, _) = listener.accept().await.unwrap();
            inner.set_nodelay(true).unwrap();
            let connection = Coalesced::new(CountingWrites {
                inner,
                probe: watched,
            });
            let incoming = tokio_stream::once(Ok::<_, std::io::Error>(connection))
                .chain(tokio_stream::pending());
            let (_reporter, health) = tonic_health::server::health_reporter();
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming)
                .await
        });
        let channel = clients.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            HealthClient::new(channel.clone())
                .check(HealthCheckRequest::default())
                .await
                .expect("the warm-up call is answered");
            channel
        });
        (server, clients, channel, probe)
    }

    /// Sends `calls` concurrent health checks while the server's worker
    /// is busy: how many writes answered them.
    fn writes_for_concurrent_calls(calls: usize) -> usize {
        let (server, clients, channel, probe) = served();
        let server_handle = server.handle().clone();
        let answered = clients.block_on(async {
            let before = probe.writes();
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
            probe.writes() - before
        });
        server.shutdown_background();
        clients.shutdown_background();
        answered
    }

    /// A task that never lets its worker idle: each poll advances the
    /// probe's clock and wakes the task again, until `stop` (or a million
    /// polls).
    struct Busy {
        probe: Arc<Probe>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    }

    impl std::future::Future for Busy {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let polls = self.probe.clock.fetch_add(1, Ordering::SeqCst) + 1;
            if self.stop.load(Ordering::SeqCst) || polls >= 1_000_000 {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
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

    #[test]
    fn a_held_answer_leaves_after_the_tasks_ready_before_it_not_when_the_worker_idles() {
        let (server, clients, channel, probe) = served();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy = Busy {
            probe: Arc::clone(&probe),
            stop: Arc::clone(&stop),
        };
        let first = probe.events.lock().unwrap().len();
        server.spawn(busy);
        clients.block_on(async {
            HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .expect("the call is answered while the worker is busy");
        });
        stop.store(true, Ordering::SeqCst);
        // The server's thread records its write once the write returns,
        // which may be after the client has read the answer: wait for it
        // (5 s at most).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let events = loop {
            let events = probe.events.lock().unwrap()[first..].to_vec();
            let written = events.iter().skip_while(|&&(_, r)| !r).any(|&(_, r)| !r);
            if written || std::time::Instant::now() > deadline {
                break events;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        server.shutdown_background();
        clients.shutdown_background();
        // The first write after the call's first read is its answer; the
        // last read before that write brought the call's end (HEADERS and
        // DATA may come in two reads, each after a poll of the I/O driver).
        let read = events
            .iter()
            .position(|&(_, r)| r)
            .expect("the call was read");
        let write = read
            + events[read..]
                .iter()
                .position(|&(_, r)| !r)
                .expect("the answer was written");
        let (read_at, _) = events[write - 1];
        let (written_at, _) = events[write];
        // The held write waits for the tasks ready before it (the busy
        // task, once: 1 poll when this test was written), not for the
        // worker to poll its I/O driver: the `tokio::task::yield_now` hold
        // this replaced waited 60 polls here, the worker's maintenance
        // tick.
        let waited = written_at - read_at;
        assert!(
            waited <= 8,
            "the answer waited {waited} polls of a busy task: {events:?}"
        );
    }
}
