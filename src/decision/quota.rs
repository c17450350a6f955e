//! The quota part of a decision: which limit decided, what is left, and
//! what the client is told (`RateLimit-*` headers, the refusal's detail).
//! Filled by the quota stage; nothing here counts anything.

use serde::Serialize;

use super::DenyReason;

/// What to do when the store fails to answer within its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Refuse the request (503 with Retry-After).
    Deny,
    /// Let the request through uncounted.
    Allow,
    /// Enforce in-process limits (divided by `replicas`) until the store
    /// answers again.
    Local,
}

impl OnStoreError {
    /// The mode's name for logs and records.
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::Deny => "deny",
            OnStoreError::Allow => "allow",
            OnStoreError::Local => "local",
        }
    }
}

/// A token reservation made by a decision, as its audit record shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// The id it is kept under (the request's `x-request-id`), which the
    /// response's record carries as its `request_id`.
    pub request_id: String,
    /// Per token limit: its name (or counter key) and the tokens it holds.
    pub limits: Vec<(String, u64)>,
    /// How long it may stay open, milliseconds.
    pub ttl_ms: u64,
    /// False when it could not be recorded (no request id, a degraded
    /// store, a store failure): the estimate then stays charged.
    pub recorded: bool,
}

impl Reserved {
    /// Tokens reserved over all limits.
    pub fn tokens(&self) -> u64 {
        self.limits.iter().map(|(_, n)| n).sum()
    }

    /// `1008 tokens (tokens 1008), ttl 600s, request r-1`; with `, not
    /// recorded: the estimate is kept` when it was not recorded.
    pub fn summary(&self) -> String {
        let each: Vec<String> = self
            .limits
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        let mut s = format!(
            "{} tokens ({}), ttl {}s",
            self.tokens(),
            each.join(", "),
            self.ttl_ms.div_ceil(1000)
        );
        if !self.request_id.is_empty() {
            s.push_str(&format!(", request {}", self.request_id));
        }
        if !self.recorded {
            s.push_str(", not recorded: the estimate is kept");
        }
        s
    }
}

/// What a decision records about quotas, and what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaOutcome {
    /// The counter key of the limit that decided (on a refusal, the one that
    /// refused; on an allow, the one with the least left).
    pub descriptor: String,
    /// That limit's name, if configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// envoyproxy/ratelimit's statistics key for that limit
    /// (`domain.key_value.key`, or the request's values with
    /// `detailed_metric` / `value_to_metric`); empty when no limit decided.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stats_key: String,
    /// Its size: units a full bucket holds.
    pub limit: u64,
    /// Its window in seconds.
    pub window_seconds: u64,
    /// Units left.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_seconds: u64,
    /// On a refusal: seconds until the request would fit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// Shadow-mode limits this request exceeded (reported, not enforced).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadow_exceeded: Vec<String>,
    /// Set when the store failed and the configured mode decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<OnStoreError>,
    /// Set when the request's cost is larger than this limit ever allows at
    /// once (its burst): waiting cannot help, so there is no Retry-After.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_too_large: Option<u64>,
}

impl QuotaOutcome {
    /// `RateLimit-*` headers (and `Retry-After` on a refusal) for the
    /// client, each handed to `f` as name and value (the IETF RateLimit
    /// header fields draft's `RateLimit-Limit`, `-Remaining`, `-Reset`,
    /// `-Policy` as `LIMIT;w=WINDOW`; RFC 9110 section 10.2.3's
    /// `Retry-After` in seconds). The numbers are written on the stack:
    /// no allocation per call.
    pub fn for_each_header(&self, mut f: impl FnMut(&'static str, &str)) {
        match self.degraded {
            // Nothing was counted: no numbers to tell.
            Some(OnStoreError::Allow) => return,
            Some(OnStoreError::Deny) => return f("retry-after", "1"),
            _ => {}
        }
        let mut number = itoa::Buffer::new();
        f("ratelimit-limit", number.format(self.limit));
        // The counter was not read when the cost can never fit: describe
        // the limit, not its state.
        if self.cost_too_large.is_none() {
            f("ratelimit-remaining", number.format(self.remaining));
            f("ratelimit-reset", number.format(self.reset_seconds));
        }
        let mut policy = [0u8; 43]; // u64::MAX is 20 digits: 20 + ";w=" + 20
        let mut len = 0;
        for part in [
            number.format(self.limit).as_bytes(),
            b";w=",
            itoa::Buffer::new().format(self.window_seconds).as_bytes(),
        ] {
            policy[len..len + part.len()].copy_from_slice(part);
            len += part.len();
        }
        f(
            "ratelimit-policy",
            std::str::from_utf8(&policy[..len]).unwrap_or_default(),
        );
        if let (None, Some(retry)) = (self.cost_too_large, self.retry_after_seconds) {
            f("retry-after", number.format(retry));
        }
    }

    /// Why a refused request is denied: the store could not be asked (and
    /// the mode denies), the cost can never fit, or the limit is spent.
    pub fn deny_reason(&self) -> super::DenyReason {
        if self.degraded == Some(OnStoreError::Deny) {
            DenyReason::QuotaUnavailable
        } else if self.cost_too_large.is_some() {
            DenyReason::BadQuotaCost
        } else {
            DenyReason::QuotaExceeded
        }
    }

    /// The client-safe explanation of a refusal.
    pub fn detail(&self) -> String {
        if let Some(cost) = self.cost_too_large {
            return format!(
                "the request costs {cost}, more than quota '{}' allows at once ({} per {} s); ask for less",
                self.name.as_deref().unwrap_or(&self.descriptor),
                self.limit,
                self.window_seconds
            );
        }
        match (self.degraded, self.retry_after_seconds) {
            (Some(OnStoreError::Deny), _) => {
                "quota could not be checked right now; retry shortly".to_string()
            }
            (_, Some(retry)) => format!(
                "quota '{}' exceeded: {} per {} s; retry after {} s",
                self.name.as_deref().unwrap_or(&self.descriptor),
                self.limit,
                self.window_seconds,
                retry
            ),
            _ => String::new(),
        }
    }
}

/// The state of one descriptor's limit after a charge, as RLS reports it
/// per descriptor (`RateLimitResponse.statuses`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitStatus {
    /// The limit's name, if configured.
    pub name: Option<String>,
    /// Units a full bucket holds.
    pub requests: u64,
    /// The window, microseconds.
    pub window_us: u64,
    /// Shadow mode: reported, never enforced.
    pub shadow: bool,
    /// True when this descriptor is over its limit.
    pub over: bool,
    /// Units left.
    pub remaining: u64,
    /// Microseconds until the bucket is full again (fixed windows: until
    /// the window ends).
    pub reset_us: u64,
    /// `unlimited: true`: never counted (RLS reports the maximum uint32
    /// remaining, as envoyproxy/ratelimit does).
    pub unlimited: bool,
    /// The descriptor's `metadata`, for the RLS dynamic metadata when it
    /// passes.
    pub metadata: Option<std::sync::Arc<serde_json::Map<String, serde_json::Value>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`QuotaOutcome::for_each_header`] collected: name, value.
    fn headers(q: &QuotaOutcome) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        q.for_each_header(|k, v| h.push((k, v.to_string())));
        h
    }

    fn outcome() -> QuotaOutcome {
        QuotaOutcome {
            descriptor: "org:acme".into(),
            name: None,
            stats_key: String::new(),
            limit: 100,
            window_seconds: 60,
            remaining: 7,
            reset_seconds: 31,
            retry_after_seconds: None,
            shadow_exceeded: Vec::new(),
            degraded: None,
            cost_too_large: None,
        }
    }

    #[test]
    fn ratelimit_headers_name_the_counter_state_in_order_for_each_outcome() {
        let allowed = outcome();
        assert_eq!(
            headers(&allowed),
            [
                ("ratelimit-limit", "100".to_string()),
                ("ratelimit-remaining", "7".into()),
                ("ratelimit-reset", "31".into()),
                ("ratelimit-policy", "100;w=60".into()),
            ]
        );
        let refused = QuotaOutcome {
            remaining: 0,
            retry_after_seconds: Some(12),
            ..outcome()
        };
        assert_eq!(headers(&refused)[1], ("ratelimit-remaining", "0".into()));
        assert_eq!(headers(&refused)[4], ("retry-after", "12".into()));
        // A cost that can never fit: the limit, not the counter, and no
        // Retry-After (waiting cannot help).
        let too_large = QuotaOutcome {
            cost_too_large: Some(500),
            retry_after_seconds: Some(12),
            ..outcome()
        };
        assert_eq!(
            headers(&too_large),
            [
                ("ratelimit-limit", "100".to_string()),
                ("ratelimit-policy", "100;w=60".into()),
            ]
        );
        // The store failed: nothing was counted.
        let failed_open = QuotaOutcome {
            degraded: Some(OnStoreError::Allow),
            ..outcome()
        };
        assert!(headers(&failed_open).is_empty());
        let failed_closed = QuotaOutcome {
            degraded: Some(OnStoreError::Deny),
            ..outcome()
        };
        assert_eq!(headers(&failed_closed), [("retry-after", "1".to_string())]);
    }

    #[test]
    fn the_largest_numbers_fit_the_policy_header() {
        let widest = QuotaOutcome {
            limit: u64::MAX,
            window_seconds: u64::MAX,
            ..outcome()
        };
        assert_eq!(
            headers(&widest)[3],
            ("ratelimit-policy", format!("{};w={}", u64::MAX, u64::MAX))
        );
    }
}
