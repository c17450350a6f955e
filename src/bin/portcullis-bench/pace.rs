//! Open-loop arrivals (`--rate`): one thread releases each request at its
//! intended send time, `start + k / rate`, into a queue the workers take
//! from.
//!
//! A thread sleeping with `nanosleep` (its timer slack set to 1 ns) wakes
//! within microseconds of the time asked; tokio's timer wheel has 1 ms
//! ticks, so workers sleeping on it all woke on the same tick and a rate of
//! 20,000 req/s arrived as a burst of 20 requests each millisecond, whose
//! last one waited behind the other 19: that measures the burst, not a
//! fixed arrival rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::Mutex;

/// A request that went out more than this after its intended send time
/// counts as late: every worker was still waiting for an answer, or the
/// load generator itself fell behind.
pub const LATE_AFTER: Duration = Duration::from_micros(100);

/// The intended send times of one open-loop phase, in order; cloned to
/// every worker.
#[derive(Clone)]
pub struct Arrivals {
    queue: Arc<Mutex<UnboundedReceiver<Instant>>>,
}

impl Arrivals {
    /// Starts the pacing thread: arrivals at `rate` requests per second
    /// (finite, above 0) from `start`, the last one before `deadline`.
    pub fn start(rate: f64, start: Instant, deadline: Instant) -> Arrivals {
        let (tx, rx) = unbounded_channel();
        std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || {
                fine_timer_slack();
                for k in 0u64.. {
                    let intended = start + Duration::from_secs_f64(k as f64 / rate);
                    if intended >= deadline {
                        break;
                    }
                    let now = Instant::now();
                    if intended > now {
                        std::thread::sleep(intended - now);
                    }
                    if tx.send(intended).is_err() {
                        break; // the workers are gone
                    }
                }
            })
            .expect("spawn the pacing thread");
        Arrivals {
            queue: Arc::new(Mutex::new(rx)),
        }
    }

    /// The next request's intended send time, once it is due; `None` when
    /// the phase has no more arrivals. A time already past means the
    /// request waited in the queue for a free worker: that wait is the
    /// server's, and the caller counts latency from this time.
    pub async fn next(&self) -> Option<Instant> {
        self.queue.lock().await.recv().await
    }
}

/// Asks Linux to wake this thread's sleeps within 1 ns of the time asked
/// (`PR_SET_TIMERSLACK`, prctl(2)) rather than the default 50 µs slack;
/// elsewhere, or if refused, sleeps keep the default slack.
fn fine_timer_slack() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and changes only
    // the calling thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn arrivals_come_at_the_rate_in_order_and_end_at_the_deadline() {
        let start = Instant::now();
        let arrivals = Arrivals::start(10_000.0, start, start + Duration::from_millis(50));
        let mut times = Vec::new();
        while let Some(t) = arrivals.next().await {
            // Released no earlier than intended.
            assert!(Instant::now() >= t);
            times.push(t);
        }
        assert_eq!(times.len(), 500, "50 ms at 10,000 req/s");
        let step = Duration::from_micros(100);
        assert!(times
            .windows(2)
            .all(|w| (w[1] - w[0]).abs_diff(step) <= Duration::from_nanos(2)));
    }
}
