//! Time as the rest of the crate needs it: seconds and microseconds since
//! the Unix epoch, RFC 3339 text (formatting and parsing, through `jiff`),
//! `Retry-After` rounding, the [`Clock`] that time-dependent logic takes so
//! tests can move it by hand, and a loop that runs until cancelled.
//! Nothing here knows a request or a policy.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

/// Whole seconds from the Unix epoch to `t` (0 before the epoch).
pub fn epoch_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whole seconds since the Unix epoch, now.
pub fn now_seconds() -> u64 {
    epoch_seconds(SystemTime::now())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds for a `Retry-After` header (RFC 9110 section 10.2.3): rounded
/// up, so a client that waits that long finds the wait over.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-11-25T21:00:00Z`).
pub fn rfc3339(epoch_seconds: u64) -> String {
    jiff::Timestamp::from_second(i64::try_from(epoch_seconds).unwrap_or(i64::MAX))
        .unwrap_or(jiff::Timestamp::MAX)
        .to_string()
}

/// An instant as RFC 3339 UTC with milliseconds (`2026-11-25T21:00:00.123Z`).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let ts = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::MAX);
    format!("{ts:.3}")
}

/// Why a text is not a usable time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadTime {
    /// Not written in the format asked for (or a date that does not exist).
    Format,
    /// Written correctly, but past the last instant Portcullis represents
    /// ([`LATEST_TIME`]): RFC 3339 allows years up to 9999, `jiff` stops
    /// in the last hours of 9999-12-30 in UTC.
    OutOfRange,
}

/// The first time an RFC 3339 text can name, in UTC.
pub const EARLIEST_TIME: &str = "0000-01-01T00:00:00Z";

/// The last whole second Portcullis represents, in UTC.
pub const LATEST_TIME: &str = "9999-12-30T22:00:00Z";

/// The first `full-date` [`read_date`] reads.
pub const EARLIEST_DATE: &str = "0000-01-01";

/// The last `full-date` whose midnight (UTC) Portcullis represents.
pub const LATEST_DATE: &str = "9999-12-30";

/// Parses RFC 3339 (section 5.6: `2026-11-25T21:00:00Z`, an optional
/// fraction, `Z` or a `+hh:mm`/`-hh:mm` offset) into milliseconds since
/// the epoch; `None` for anything else, including a time without offset.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    read_rfc3339_ms(s).ok()
}

/// As [`parse_rfc3339_ms`], telling a text that is not a time from one
/// past [`LATEST_TIME`] (`9999-12-31T00:00:00Z`).
pub fn read_rfc3339_ms(s: &str) -> Result<i64, BadTime> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    // A date, a time and an offset that still make no instant are out of
    // range (the civil date itself is checked by the parse).
    let pieces = jiff::fmt::temporal::Pieces::parse(s).map_err(|_| BadTime::Format)?;
    let (Some(time), Some(offset)) = (pieces.time(), pieces.to_numeric_offset()) else {
        return Err(BadTime::Format);
    };
    match jiff::tz::TimeZone::fixed(offset).to_timestamp(pieces.date().to_datetime(time)) {
        Err(_) => Err(BadTime::OutOfRange),
        Ok(_) => Err(BadTime::Format),
    }
}

/// `YYYY-MM-DD` (RFC 3339 `full-date`) -> seconds since the epoch at 00:00
/// UTC; `None` for anything else, including dates that do not exist.
pub fn parse_date(s: &str) -> Option<i64> {
    read_date(s).ok()
}

/// As [`parse_date`], telling a text that is not a date from a date whose
/// midnight (UTC) is past [`LATEST_TIME`] (`9999-12-31`).
pub fn read_date(s: &str) -> Result<i64, BadTime> {
    if s.len() != 10 {
        return Err(BadTime::Format);
    }
    let date: jiff::civil::Date = s.parse().map_err(|_| BadTime::Format)?;
    date.to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp().as_second())
        .map_err(|_| BadTime::OutOfRange)
}

/// Where time comes from for time-dependent logic (quota refill, anomaly
/// windows): the system clock in production, a [`ManualClock`] in tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Microseconds since the Unix epoch.
    fn now_us(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock at `us` microseconds.
    pub fn at(us: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(us)))
    }
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Runs `tick` every `interval` (first after one interval) until `stop`
/// is cancelled; a tick in progress finishes first.
pub async fn every<F, Fut>(interval: Duration, stop: CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = timer.tick() => tick().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_time_past_the_supported_range_is_out_of_range_not_malformed() {
        let latest = jiff::Timestamp::MAX.as_second();
        assert_eq!(rfc3339(latest as u64), LATEST_TIME);
        assert_eq!(read_rfc3339_ms(LATEST_TIME), Ok(latest * 1000));
        assert_eq!(read_rfc3339_ms(EARLIEST_TIME).map(|_| ()), Ok(()));
        for past in [
            "9999-12-30T22:00:01Z",
            "9999-12-31T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "9999-12-30T21:00:00-05:00",
        ] {
            assert_eq!(read_rfc3339_ms(past), Err(BadTime::OutOfRange), "{past}");
        }
        for malformed in [
            "",
            "yesterday",
            "2026-11-25",
            "2026-11-25T21:00:00",
            "2026-02-30T21:00:00Z",
            "2026-11-25T25:00:00Z",
            "10000-01-01T00:00:00Z",
        ] {
            assert_eq!(
                read_rfc3339_ms(malformed),
                Err(BadTime::Format),
                "{malformed}"
            );
        }
        assert_eq!(read_date(LATEST_DATE), Ok(253_402_128_000));
        assert_eq!(read_date(EARLIEST_DATE).map(|_| ()), Ok(()));
        assert_eq!(read_date("9999-12-31"), Err(BadTime::OutOfRange));
        assert_eq!(read_date("2023-02-29"), Err(BadTime::Format));
        assert_eq!(read_date("99999-01-01"), Err(BadTime::Format));
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_564_800 + 3_723), "2026-11-25T01:02:03Z");
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_564_800_123);
        let s = rfc3339_millis(t);
        assert_eq!(s, "2026-11-25T00:00:00.123Z");
        assert_eq!(parse_rfc3339_ms(&s), Some(1_795_564_800_123));
        assert_eq!(
            parse_rfc3339_ms("2026-11-25T00:00:00Z"),
            Some(1_795_564_800_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-25T01:00:00+01:00"),
            Some(1_795_564_800_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00.5Z"),
            Some(951_782_400_500)
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-25T00:00:00",
            "2026-11-25T00:00:00.Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_are_strict_full_dates() {
        assert_eq!(parse_date("1970-01-02"), Some(86_400));
        assert_eq!(parse_date("2000-02-29"), Some(951_782_400));
        for bad in ["2001-02-29", "2026-13-01", "2026-1-01", "20260101", "soon"] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_seconds(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_seconds(Duration::from_millis(3_001)), 4);
        assert_eq!(retry_after_seconds(Duration::ZERO), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn every_ticks_until_cancelled() {
        let stop = CancellationToken::new();
        let count = Arc::new(AtomicU64::new(0));
        let (c, s) = (Arc::clone(&count), stop.clone());
        let task = tokio::spawn(every(Duration::from_secs(1), s, move || {
            let c = Arc::clone(&c);
            async move {
                c.fetch_add(1, Ordering::SeqCst);
            }
        }));
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        stop.cancel();
        task.await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }
}
