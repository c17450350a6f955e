//! The anomaly detector's memory stays bounded: a million distinct
//! principals pass through it and it keeps at most `max_tracked`. Alone in its test binary so
//! that the resident set size it prints is its own.

use std::time::Duration;

use portcullis::anomaly::{AnomalyConfig, Detector, Observed};
use portcullis::time::ManualClock;

/// Resident set size in KiB (Linux `/proc/self/status`).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

#[test]
fn a_million_distinct_principals_keep_memory_bounded() {
    let config = AnomalyConfig {
        max_tracked: 100_000,
        ..AnomalyConfig::default()
    };
    let clock = ManualClock::at(1_800_000_000_000_000);
    let detector = Detector::new(&config, clock.clone());
    let before = rss_kib();
    let mut peak_tracked = 0;
    for i in 0u32..1_000_000 {
        let principal = format!("User::\"user-{i}\"");
        detector.observe(Some(&principal), None, Observed::Allowed);
        clock.advance(Duration::from_micros(100));
        if i % 100_000 == 99_999 {
            detector.settle();
            let (principals, _, _) = detector.tracked();
            peak_tracked = peak_tracked.max(principals);
        }
    }
    detector.settle();
    let (principals, _, blocked) = detector.tracked();
    let after = rss_kib();
    println!(
        "1,000,000 distinct principals observed: {principals} tracked (cap {}), peak {peak_tracked}; RSS {} MiB before, {} MiB after (+{} MiB)",
        config.max_tracked,
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024
    );
    assert!(principals <= config.max_tracked, "{principals}");
    assert!(peak_tracked <= config.max_tracked, "{peak_tracked}");
    assert_eq!(blocked, 0);
    // 100,000 subjects: well under 128 MiB, where a million kept would be
    // far above it.
    assert!(
        after.saturating_sub(before) < 128 * 1024,
        "RSS grew by {} MiB",
        after.saturating_sub(before) / 1024
    );
}
