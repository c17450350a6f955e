//! When a caller waiting on a remote store may judge its silence a stall:
//! only from checks that woke on time, twice, with every worker of the
//! runtime idle at some moment between them, so that a silence this
//! process caused (too busy to read a reply that has arrived) is not taken
//! for the store's.
//!
//! Every worker, not any: on a multi-thread runtime a worker that the
//! operating system has not run for a while (two cores shared with other
//! processes) holds the tasks queued on it, and the one in its LIFO slot
//! cannot be taken by another worker; the connection's task reading the
//! reply may be one of them. Another worker going idle meanwhile says
//! nothing about those. (A 200-call burst on a Redis Cluster from three
//! replicas on a loaded 2-core machine was judged stalled that way after
//! 29 ms of such a silence, with one of four workers parked between the
//! checks; 26 calls were then admitted by the `local` fallback.)

use std::time::Duration;

/// The shortest wait between two stall checks of one caller.
const MIN_CHECK: Duration = Duration::from_millis(1);

/// One caller's stall checks (see `Quotas::enforce`).
#[derive(Debug)]
pub(super) struct StallWatch {
    stall_us: u64,
    /// How late a check may wake and still count.
    grace: Duration,
    /// The last check woke late: this process is busy.
    late: bool,
    /// Each worker's park/unpark count at the first check that found the
    /// store silent, if the last check did.
    silent_at: Option<Vec<u64>>,
    stalled: bool,
}

/// Each worker's park/unpark count (Tokio's `worker_park_unpark_count`):
/// one more at every park and every unpark, so odd while parked (idle).
fn park_states() -> Vec<u64> {
    let m = tokio::runtime::Handle::current().metrics();
    (0..m.num_workers())
        .map(|w| m.worker_park_unpark_count(w))
        .collect()
}

/// True when every worker, its count `before` then `now` (see
/// [`park_states`]), was idle at some moment since: parked now, or parked
/// at least once in between (a worker parks only with its queues empty).
fn every_worker_idle_since(before: &[u64], now: &[u64]) -> bool {
    before.len() == now.len()
        && before.iter().zip(now).all(|(&b, &n)| {
            let next_park = if b % 2 == 0 { b + 1 } else { b + 2 };
            n % 2 == 1 || n >= next_park
        })
}

impl StallWatch {
    pub(super) fn new(stall: Duration) -> StallWatch {
        StallWatch {
            stall_us: stall.as_micros() as u64,
            grace: (stall / 4).max(MIN_CHECK),
            late: false,
            silent_at: None,
            stalled: false,
        }
    }

    /// The threshold, in microseconds.
    pub(super) fn stall_us(&self) -> u64 {
        self.stall_us
    }

    /// When to check next, the store having been silent `silent_us`.
    pub(super) fn next_check(&self, silent_us: u64) -> tokio::time::Instant {
        let wait = if self.late {
            // Busy: look again a while later, not every millisecond.
            self.grace
        } else if self.silent_at.is_some() {
            MIN_CHECK
        } else {
            Duration::from_micros(self.stall_us.saturating_sub(silent_us)).max(MIN_CHECK)
        };
        tokio::time::Instant::now() + wait
    }

    /// A check due at `due` woke: lets the tasks woken before it run (the
    /// connection reading a reply, then the batch taking it), then reads
    /// the silence with `silent_us`.
    pub(super) async fn check(&mut self, due: tokio::time::Instant, silent_us: impl Fn() -> u64) {
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.late = due.elapsed() > self.grace;
        if self.late || silent_us() < self.stall_us {
            self.silent_at = None;
            return;
        }
        match &self.silent_at {
            None => self.silent_at = Some(park_states()),
            // Silent on two checks on time, and every worker went idle
            // between them (so this process had read whatever had arrived).
            Some(before) => self.stalled = every_worker_idle_since(before, &park_states()),
        }
    }

    /// True once the checks judged a stall (then reset for the next).
    pub(super) fn take_stalled(&mut self) -> bool {
        let stalled = self.stalled;
        self.stalled = false;
        if stalled {
            self.silent_at = None;
        }
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::every_worker_idle_since;

    #[test]
    fn a_worker_busy_since_the_first_check_keeps_the_silence_unjudged() {
        // Worker 1 was active at the first check and never parked since:
        // the reply may sit in its queue.
        assert!(!every_worker_idle_since(&[3, 8], &[5, 8]));
        // Woken since and active now, without parking again.
        assert!(!every_worker_idle_since(&[3, 7], &[5, 8]));
    }

    #[test]
    fn every_worker_parked_since_or_parked_now_is_idle() {
        // Worker 0 parked and woke again since; worker 1 parked throughout.
        assert!(every_worker_idle_since(&[2, 7], &[4, 7]));
        // Worker 0 parked now; worker 1 woke, parked again and woke.
        assert!(every_worker_idle_since(&[2, 7], &[3, 10]));
    }
}
