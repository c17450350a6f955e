//! The CPU time a server process has used, read from Linux's
//! `/proc/PID/stat` (proc(5): fields 14 `utime` and 15 `stime`, in clock
//! ticks of `sysconf(_SC_CLK_TCK)`), so that an interleaved run can say
//! how much of its core each server used during its own slices.

use std::time::Duration;

use anyhow::Context as _;

/// The user plus system CPU time process `pid` has used so far, at the
/// clock-tick resolution (10 ms at the usual 100 ticks a second). Errors
/// name the pid: no such process, or not Linux.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .with_context(|| format!("read {path} (the CPU time of process {pid}; Linux only)"))?;
    let ticks = stat_ticks(&stat).with_context(|| format!("{path}: no utime and stime fields"))?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) gave {per_second}");
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// `utime + stime` from the text of `/proc/PID/stat`, in clock ticks. The
/// second field (`comm`, in parentheses) may itself hold spaces and
/// parentheses, so the fields are counted from the last `)`: the field
/// after it is the 3rd (`state`), which makes `utime` the 12th after it.
fn stat_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The CPU one server used over a measured phase.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ServerCpu {
    /// Its CPU time over the phase's wall time: 1.0 is one core kept busy.
    pub share_of_core: f64,
    /// Its CPU time per answered call, microseconds.
    pub us_per_request: f64,
}

impl ServerCpu {
    /// `used` CPU time over `seconds` of wall time and `requests` answers;
    /// `None` without time or answers to divide by.
    pub fn of(used: Duration, seconds: f64, requests: u64) -> Option<Self> {
        (seconds > 0.0 && requests > 0).then(|| ServerCpu {
            share_of_core: used.as_secs_f64() / seconds,
            us_per_request: used.as_secs_f64() * 1e6 / requests as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_counted_from_the_last_parenthesis_of_comm() {
        // comm "a) b (c" with spaces and parentheses of its own.
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 120 0 0 0 731 269 0 0 20 0 3 0 \
                    99 1000 10 18446744073709551615";
        assert_eq!(stat_ticks(stat), Some(731 + 269));
        assert_eq!(stat_ticks("4242 (x) S 1 2"), None, "too few fields");
        assert_eq!(stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn the_cpu_time_of_a_busy_process_grows() {
        let me = std::process::id();
        let before = cpu_time(me).unwrap();
        // Spin until a clock tick or more is counted (bounded: 10 s).
        let spin = std::time::Instant::now();
        while cpu_time(me).unwrap() == before && spin.elapsed() < Duration::from_secs(10) {}
        assert!(cpu_time(me).unwrap() > before);
        let err = cpu_time(u32::MAX).unwrap_err();
        assert!(format!("{err:#}").contains("process 4294967295"), "{err:#}");
    }

    #[test]
    fn a_server_that_answered_nothing_has_no_cpu_per_request() {
        assert!(ServerCpu::of(Duration::from_secs(1), 2.0, 0).is_none());
        let cpu = ServerCpu::of(Duration::from_millis(500), 2.0, 1000).unwrap();
        assert!((cpu.share_of_core - 0.25).abs() < 1e-9);
        assert!((cpu.us_per_request - 500.0).abs() < 1e-9);
    }
}
