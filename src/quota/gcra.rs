//! GCRA (the generic cell rate algorithm, a token bucket kept as one
//! timestamp) over integer microseconds. Both stores run exactly this
//! arithmetic: the in-process store calls [`assess`], and the Redis Lua
//! script in `redis.rs` is a line-by-line transcription of it.
//!
//! A key's state is its theoretical arrival time (TAT): the instant at which
//! the bucket would be full again. A state with `tat <= now` is the same as no
//! state, which is why idle keys can be evicted (and expire in Redis) without
//! changing any answer.

/// The parameters of one limit in GCRA terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Microseconds one unit of cost takes to replenish (window / requests).
    pub emission_us: u64,
    /// How far ahead of `now` the TAT may run: `emission_us * burst`.
    pub tolerance_us: u64,
}

impl Rate {
    /// `requests` per `window_us`, at most `burst` at once.
    pub fn new(requests: u64, window_us: u64, burst: u64) -> Rate {
        let emission_us = (window_us / requests.max(1)).max(1);
        Rate {
            emission_us,
            tolerance_us: emission_us.saturating_mul(burst),
        }
    }

    /// The number of units a full bucket holds.
    pub fn burst(&self) -> u64 {
        self.tolerance_us / self.emission_us
    }

    /// This rate divided among `replicas` processes that each enforce it
    /// alone (the `local` degraded mode).
    pub fn divided(self, replicas: u64) -> Rate {
        if replicas <= 1 {
            return self;
        }
        let emission_us = self.emission_us.saturating_mul(replicas);
        let burst = (self.burst() / replicas).max(1);
        Rate {
            emission_us,
            tolerance_us: emission_us.saturating_mul(burst),
        }
    }
}

/// What charging `cost` against a key would do, at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assessment {
    /// True when the charge does not fit.
    pub over: bool,
    /// The TAT to store if the charge is applied (only when `!over`).
    pub new_tat: u64,
    /// Units left after this charge (or, when over, left now).
    pub remaining: u64,
    /// Microseconds until the bucket is full again.
    pub reset_us: u64,
    /// When over: microseconds until this charge would fit. Else 0.
    pub retry_us: u64,
}

/// Assesses a charge of `cost` units against a key whose stored TAT is
/// `tat` (0 when the key has no state).
pub fn assess(tat: u64, now: u64, rate: Rate, cost: u64) -> Assessment {
    let base = tat.max(now);
    let new_tat = base.saturating_add(cost.saturating_mul(rate.emission_us));
    let ahead = new_tat - now;
    if ahead > rate.tolerance_us {
        let used = base - now;
        Assessment {
            over: true,
            new_tat: base,
            remaining: rate.tolerance_us.saturating_sub(used) / rate.emission_us,
            reset_us: used,
            retry_us: ahead - rate.tolerance_us,
        }
    } else {
        Assessment {
            over: false,
            new_tat,
            remaining: (rate.tolerance_us - ahead) / rate.emission_us,
            reset_us: ahead,
            retry_us: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    #[test]
    fn a_fresh_bucket_allows_exactly_burst() {
        let rate = Rate::new(10, 60 * SECOND, 10);
        let (mut tat, now) = (0, 1_000 * SECOND);
        for i in 0..10 {
            let a = assess(tat, now, rate, 1);
            assert!(!a.over, "request {i}");
            assert_eq!(a.remaining, 9 - i);
            tat = a.new_tat;
        }
        let a = assess(tat, now, rate, 1);
        assert!(a.over);
        assert_eq!(a.remaining, 0);
        assert_eq!(a.retry_us, 6 * SECOND);
        assert_eq!(a.reset_us, 60 * SECOND);
    }

    #[test]
    fn replenishes_one_unit_per_emission_interval() {
        let rate = Rate::new(10, 60 * SECOND, 10);
        let now = 1_000 * SECOND;
        let full = assess(0, now, rate, 10);
        assert!(!full.over);
        assert!(assess(full.new_tat, now + 6 * SECOND - 1, rate, 1).over);
        assert!(!assess(full.new_tat, now + 6 * SECOND, rate, 1).over);
    }

    #[test]
    fn cost_is_weighted_and_an_over_charge_reports_without_consuming() {
        let rate = Rate::new(1000, SECOND, 1000);
        let now = 5 * SECOND;
        let a = assess(0, now, rate, 800);
        assert_eq!(a.remaining, 200);
        let b = assess(a.new_tat, now, rate, 300);
        assert!(b.over);
        assert_eq!(b.new_tat, a.new_tat);
        assert_eq!(b.remaining, 200);
        assert_eq!(b.retry_us, 100 * 1000);
    }

    #[test]
    fn check_only_never_consumes() {
        let rate = Rate::new(2, SECOND, 2);
        let a = assess(0, SECOND, rate, 2);
        let c = assess(a.new_tat, SECOND, rate, 0);
        assert!(!c.over);
        assert_eq!(c.new_tat, a.new_tat);
        assert_eq!(c.remaining, 0);
    }

    #[test]
    fn burst_smaller_than_rate_caps_a_boundary_straddle() {
        // 10 per minute, at most 5 at once: a fixed window would allow 20
        // across a boundary; GCRA allows burst plus what replenished.
        let rate = Rate::new(10, 60 * SECOND, 5);
        let mut tat = 0;
        let mut allowed = 0;
        let start = 59 * SECOND;
        for i in 0..20u64 {
            let now = start + i * 100_000; // 2 s straddling t = 60 s
            let a = assess(tat, now, rate, 1);
            if !a.over {
                allowed += 1;
                tat = a.new_tat;
            }
        }
        assert_eq!(allowed, 5);
    }
}
