//! The audit trail's counters, and the one log line that reports lost
//! records: `AUDIT RECORD NOT WRITTEN: <why>`, at most once a second, with
//! the number of records lost since the previous line. Both the sending
//! side (queue full, writer stopped) and the writer (a failed write) report
//! losses here, so a full disk cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The shortest time between two `AUDIT RECORD NOT WRITTEN` lines,
/// milliseconds.
pub const LOSS_LINE_INTERVAL_MS: u64 = 1000;

/// Counters of the audit trail (exposed by `AuditService/Status`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Records queued.
    pub queued: AtomicU64,
    /// Records written to disk (checkpoints included).
    pub written: AtomicU64,
    /// Records that could not be queued (queue full or writer stopped) or
    /// written (a failed write).
    pub dropped: AtomicU64,
    /// Requests denied because their decision could not be recorded.
    pub refused: AtomicU64,
    /// Failed writes.
    pub write_errors: AtomicU64,
    /// Plain `OK` ShouldRateLimit answers left out by
    /// `audit.ratelimit.ok_sample_every` (not a loss: the rule says so).
    pub ratelimit_ok_unrecorded: AtomicU64,
    /// Answers that stopped waiting for their record's write at
    /// `audit.write_timeout_ms`.
    pub write_timeouts: AtomicU64,
    /// Checkpoints not written because the signing key could not sign
    /// (a PKCS#11 token unavailable).
    pub sign_errors: AtomicU64,
    /// Times the file being written was found moved, removed or replaced
    /// at its path, and a new file was started (see the writer's
    /// `keep_file_in_place`).
    pub files_replaced: AtomicU64,
    loss_line: LossLine,
}

impl Counters {
    /// Counts `n` lost records and, at most once a second, logs
    /// `AUDIT RECORD NOT WRITTEN: {why}` at error level with
    /// `dropped_since_last_line` (records lost since the previous line,
    /// these included) and `dropped_total`.
    pub fn lost(&self, n: u64, why: &dyn std::fmt::Display) {
        let total = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(since) = self.loss_line.lost(n, elapsed_ms()) {
            tracing::error!(
                dropped_since_last_line = since,
                dropped_total = total,
                "AUDIT RECORD NOT WRITTEN: {why}"
            );
        }
    }
}

/// Milliseconds since the first call in this process (monotonic).
fn elapsed_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The rate limit of the loss line, over a clock the caller gives.
#[derive(Debug, Default)]
struct LossLine {
    /// When the last line was logged, ms + 1 (0: never).
    last: AtomicU64,
    /// Records lost since the last line.
    unlogged: AtomicU64,
}

impl LossLine {
    /// Notes `n` lost records at `now_ms`; `Some(records lost since the
    /// last line)` when a line is due now (one caller wins a race).
    fn lost(&self, n: u64, now_ms: u64) -> Option<u64> {
        self.unlogged.fetch_add(n, Ordering::Relaxed);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now_ms + 1 >= last + LOSS_LINE_INTERVAL_MS;
        if due
            && self
                .last
                .compare_exchange(last, now_ms + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.unlogged.swap(0, Ordering::Relaxed))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_losses_gives_one_line_a_second_with_the_count_since_the_last() {
        let line = LossLine::default();
        assert_eq!(line.lost(1, 0), Some(1), "the first loss is logged at once");
        // 450 losses within the next second: no line.
        for ms in 1..=450 {
            assert_eq!(line.lost(1, ms * 2), None, "at {} ms", ms * 2);
        }
        assert_eq!(line.lost(2, 999), None);
        assert_eq!(line.lost(1, 1000), Some(453));
        assert_eq!(line.lost(5, 1500), None);
        assert_eq!(line.lost(1, 2100), Some(6));
    }

    #[test]
    fn losses_count_every_record_whether_logged_or_not() {
        let counters = Counters::default();
        for _ in 0..10 {
            counters.lost(3, &"the audit queue is full");
        }
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 30);
    }
}
