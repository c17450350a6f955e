//! When a caller waiting on a remote store may judge its silence a stall:
//! only from checks that woke on time, twice, with this process idle at
//! some moment between them, so that a silence this process caused (too
//! busy to read a reply that has arrived) is not taken for the store's.

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
    /// The runtime's park count at the first check that found the store
    /// silent, if the last check did.
    silent_at: Option<u64>,
    stalled: bool,
}

/// Times the runtime's workers have parked (gone idle) so far.
fn parks() -> u64 {
    let m = tokio::runtime::Handle::current().metrics();
    (0..m.num_workers()).map(|w| m.worker_park_count(w)).sum()
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
        match self.silent_at {
            None => self.silent_at = Some(parks()),
            // Silent on two checks on time, and this process went idle
            // between them (so it had read whatever had arrived).
            Some(at) => self.stalled = parks() > at,
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
