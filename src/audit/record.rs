//! How a decision, an admin call or a refused credential becomes an audit
//! record: the constructors of [`AuditRecord`] and the short forms of the
//! outcome and quota fields. Credentials and bodies never reach a record.

use std::time::{Duration, SystemTime};

use super::{AuditRecord, Kind};
use crate::decision::{Decision, DenyReason, Outcome};
use crate::request::AccessRequest;

impl AuditRecord {
    /// A record of `kind`, stamped now, with a fresh id.
    pub fn new(kind: Kind) -> Self {
        AuditRecord::with_id(kind, uuid::Uuid::now_v7().to_string())
    }

    /// A record of `kind`, stamped now, with the given `id` (a decision's
    /// own UUIDv7): no second id is drawn only to be replaced.
    pub fn with_id(kind: Kind, id: String) -> Self {
        AuditRecord {
            id,
            time: stamp(SystemTime::now()),
            kind,
            ..AuditRecord::default()
        }
    }

    /// The record of a decision on a request.
    pub fn decision(d: &Decision, req: &AccessRequest, latency: Duration) -> Self {
        AuditRecord {
            request_id: req.request_id.clone(),
            trace_id: crate::tracecontext::trace_id(req),
            principal: d.principal.clone().unwrap_or_default(),
            auth_method: d.auth_method.unwrap_or_default().into(),
            action: d.action.clone().unwrap_or_default(),
            resource: d.resource.clone().unwrap_or_default(),
            route: d.route.clone().unwrap_or_default(),
            decision: outcome_str(d.decision).into(),
            status: u64::from(d.status),
            reason: d.reason.map(|r| r.code()).unwrap_or_default().into(),
            determining_policies: d.determining_policies.clone(),
            errors: d.errors.clone(),
            policy_version: d.policy_version.clone(),
            latency_us: (latency.as_micros() as u64).max(1),
            source_ip: req.source_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            quota: d.quota.as_deref().map(quota_summary).unwrap_or_default(),
            reservation: d
                .reserved
                .as_deref()
                .map(crate::decision::quota::Reserved::summary)
                .unwrap_or_default(),
            shadow: d
                .shadow
                .as_ref()
                .map(|s| {
                    format!(
                        "{}{} [{}]",
                        outcome_str(s.decision),
                        if s.disagrees { " (disagrees)" } else { "" },
                        s.determining_policies.join(", ")
                    )
                })
                .unwrap_or_default(),
            ..AuditRecord::with_id(Kind::Decision, d.id.clone())
        }
    }

    /// The record of a response (ext_proc): which decision and request it
    /// answers, on which route, its status, the reservation it settled
    /// and how, and what its response checks found. `adapter` is the door it came through (`ext_proc`), or
    /// `sweeper` for a reservation settled on expiry.
    pub fn response(response: ResponseRecord<'_>) -> Self {
        AuditRecord {
            adapter: response.adapter.into(),
            request_id: response.request_id.to_string(),
            decision_id: response.decision_id.to_string(),
            route: response.route.to_string(),
            status: u64::from(response.status),
            reservation: response.reservation.to_string(),
            settlement: response.settlement.to_string(),
            reason: response.reason.to_string().into(),
            findings: response.findings.to_vec(),
            ..AuditRecord::new(Kind::Response)
        }
    }

    /// The record of an admin call: who called which RPC, and the
    /// decision on it. A refused credential's code (`expired`, ...) is the
    /// reason, as operators search for it.
    pub fn admin_call(d: &Decision, req: &AccessRequest, rpc: &str) -> Self {
        let reason = d
            .errors
            .iter()
            .find_map(|e| e.strip_prefix("authentication: "))
            .map(str::to_string)
            .or_else(|| d.reason.map(|r| r.code().to_string()))
            .unwrap_or_default();
        AuditRecord {
            rpc: rpc.to_string(),
            principal: d.principal.clone().unwrap_or_default(),
            auth_method: d.auth_method.unwrap_or_default().into(),
            action: d.action.clone().unwrap_or_default(),
            resource: d.resource.clone().unwrap_or_default(),
            decision: outcome_str(d.decision).into(),
            status: u64::from(d.status),
            reason: reason.into(),
            determining_policies: d.determining_policies.clone(),
            errors: d.errors.clone(),
            policy_version: d.policy_version.clone(),
            source_ip: req.source_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            ..AuditRecord::new(Kind::AdminCall)
        }
    }

    /// The record of refused credentials (next to the decision's record),
    /// or `None` when the decision was not about invalid credentials.
    pub fn authn_failure(d: &Decision, req: &AccessRequest) -> Option<Self> {
        if d.reason != Some(DenyReason::InvalidCredentials) {
            return None;
        }
        // The pipeline notes the failure's stable code as
        // "authentication: <code>"; the client-facing detail is not kept.
        let code = d
            .errors
            .iter()
            .find_map(|e| e.strip_prefix("authentication: "))
            .unwrap_or("invalid_credentials");
        Some(AuditRecord {
            request_id: req.request_id.clone(),
            trace_id: crate::tracecontext::trace_id(req),
            reason: code.to_string().into(),
            action: d.action.clone().unwrap_or_default(),
            route: d.route.clone().unwrap_or_default(),
            policy_version: d.policy_version.clone(),
            source_ip: req.source_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            // The decision this failure belongs to.
            errors: vec![format!("decision {}", d.id)],
            ..AuditRecord::new(Kind::AuthnFailure)
        })
    }
}

/// What a response record says.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseRecord<'a> {
    /// `ext_proc`, or `sweeper` for an expired reservation.
    pub adapter: &'static str,
    /// The gateway's request id.
    pub request_id: &'a str,
    /// The decision it answers.
    pub decision_id: &'a str,
    /// The route.
    pub route: &'a str,
    /// The upstream's HTTP status (0 when the response never came).
    pub status: u16,
    /// The reservation, short form.
    pub reservation: &'a str,
    /// How it settled.
    pub settlement: &'a str,
    /// Why it settled without usage (`no_usage`, `broken`, ...), if so.
    pub reason: &'a str,
    /// What its response checks found.
    pub findings: &'a [String],
}

fn outcome_str(o: Outcome) -> &'static str {
    match o {
        Outcome::Allow => "allow",
        Outcome::Deny => "deny",
    }
}

/// `name: remaining/limit per Ns`, with the degraded mode when a store
/// failure decided, e.g. `principal-requests: 41/600 per 60s (degraded: local)`.
/// Built piece by piece: this runs for every audited decision with a quota.
fn quota_summary(q: &crate::quota::apply::QuotaOutcome) -> String {
    let name = q.name.as_deref().unwrap_or(&q.descriptor);
    let mut s = String::with_capacity(name.len() + 64);
    let mut n = itoa::Buffer::new();
    s.push_str(name);
    s.push_str(": ");
    s.push_str(n.format(q.remaining));
    s.push('/');
    s.push_str(n.format(q.limit));
    s.push_str(" per ");
    s.push_str(n.format(q.window_seconds));
    s.push('s');
    if let Some(mode) = q.degraded {
        s.push_str(" (degraded: ");
        s.push_str(mode.as_str());
        s.push(')');
    }
    s
}

/// `time::rfc3339_millis(t)`: the text up to the seconds' dot is kept per
/// thread and reused within the same second, so that a record's stamp is
/// the milliseconds written onto a copy of it rather than a formatted
/// date every time.
fn stamp(t: SystemTime) -> String {
    thread_local! {
        /// The second last stamped, and its text up to the milliseconds.
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let Ok(since) = t.duration_since(std::time::UNIX_EPOCH) else {
        return crate::time::rfc3339_millis(t);
    };
    let (second, ms) = (since.as_secs(), since.subsec_millis());
    let tail = [
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ];
    let tail = std::str::from_utf8(&tail).expect("ASCII digits");
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            // Kept when it reads `<date>T<time>.<ms>Z` with these
            // milliseconds (not a time past what the formatter can write).
            let text = crate::time::rfc3339_millis(t);
            match text.strip_suffix(tail) {
                Some(prefix) if prefix.ends_with('.') => *cached = (second, prefix.to_string()),
                _ => return text,
            }
        }
        let mut text = String::with_capacity(cached.1.len() + tail.len());
        text.push_str(&cached.1);
        text.push_str(tail);
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn stamps_are_the_time_module_s_text() {
        let mut times = vec![
            UNIX_EPOCH,
            UNIX_EPOCH - Duration::from_millis(1),
            SystemTime::now(),
            UNIX_EPOCH + Duration::from_secs(253_402_300_799), // 9999-12-31T23:59:59
            UNIX_EPOCH + Duration::from_secs(253_402_300_800),
        ];
        // Every millisecond of two seconds, in and out of order, across a
        // minute, a day and a year boundary.
        for base in [1_767_225_599u64, 1_798_761_599, 59] {
            for ms in (0..2000).chain([999, 0, 1999, 500]) {
                times.push(UNIX_EPOCH + Duration::from_secs(base) + Duration::from_millis(ms));
            }
        }
        times.push(UNIX_EPOCH + Duration::new(1_767_225_600, 999_999_999));
        for t in times {
            assert_eq!(stamp(t), crate::time::rfc3339_millis(t), "{t:?}");
        }
    }

    #[test]
    fn quota_summaries_read_as_before() {
        use crate::decision::quota::{OnStoreError, QuotaOutcome};
        let mut q = QuotaOutcome {
            descriptor: "principal".into(),
            name: None,
            stats_key: String::new(),
            limit: 600,
            window_seconds: 60,
            remaining: 41,
            reset_seconds: 0,
            retry_after_seconds: None,
            shadow_exceeded: Vec::new(),
            degraded: None,
            cost_too_large: None,
        };
        assert_eq!(quota_summary(&q), "principal: 41/600 per 60s");
        q.name = Some("principal-requests".into());
        q.remaining = u64::MAX;
        q.degraded = Some(OnStoreError::Local);
        assert_eq!(
            quota_summary(&q),
            format!(
                "principal-requests: {}/600 per 60s (degraded: {})",
                u64::MAX,
                OnStoreError::Local.as_str()
            )
        );
    }
}
