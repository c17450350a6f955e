//! The response side of a decision: settling the token reservation its
//! `Check` made, from what the response says (through ext_proc) or, when
//! no response settles it in time, on expiry (the sweeper on every
//! replica). Each settlement is counted and recorded as a `response`
//! record linked to its decision (`decision_id`, `request_id`).

use crate::audit::{AuditRecord, AuditSink, ResponseRecord};
use crate::metrics;
use crate::quota::reserve::{settlement_summary, LimitSettled, Missing, Outcome, Reservation};
use crate::quota::Quotas;

/// How many expired reservations one sweep claims at most.
pub const SWEEP_BATCH: usize = 256;

/// Settles `r` from the response (`status`, `outcome`), counts and records
/// it; answers what each limit still open held and now counts (empty when
/// another replica or the sweeper settled it first, or the store failed:
/// then it stays open and expires).
pub async fn settle(
    quotas: &Quotas,
    audit: Option<&AuditSink>,
    adapter: &'static str,
    r: &Reservation,
    status: u16,
    outcome: &Outcome<'_>,
    findings: &[String],
) -> Vec<LimitSettled> {
    let limits = match quotas.settle(r, outcome).await {
        Ok(limits) => limits,
        Err(e) => {
            metrics::global().reservation("settle_failed");
            tracing::warn!(
                target: "portcullis::quota",
                error = %e,
                request_id = %r.request_id,
                "token reservation not settled; it settles by its rule when it expires"
            );
            return Vec::new();
        }
    };
    count(&limits, outcome);
    let settlement = settlement_summary(&limits);
    let reason = limits
        .iter()
        .find_map(|l| l.missing)
        .map(Missing::as_str)
        .unwrap_or_default();
    tracing::debug!(
        target: "portcullis::quota",
        request_id = %r.request_id,
        decision_id = %r.decision_id,
        settlement = %settlement,
        "token reservation settled"
    );
    if let Some(audit) = audit {
        audit.record(AuditRecord::response(ResponseRecord {
            adapter,
            request_id: &r.request_id,
            decision_id: &r.decision_id,
            route: &r.route,
            status,
            reservation: &r.summary(),
            settlement: &settlement,
            reason,
            findings,
        }));
    }
    limits
}

/// A response, as its record names it.
#[derive(Debug, Clone, Copy)]
pub struct Answered<'a> {
    /// The door (`ext_proc`).
    pub adapter: &'static str,
    /// The gateway's request id.
    pub request_id: &'a str,
    /// The decision it answers (the `x-portcullis-decision-id` ext_authz
    /// set), when known.
    pub decision_id: &'a str,
    /// The route.
    pub route: &'a str,
    /// The upstream's status.
    pub status: u16,
}

/// Records what a response's checks found, for a response without a
/// reservation (with one, [`settle`] records both).
pub fn record_findings(audit: Option<&AuditSink>, response: &Answered<'_>, findings: &[String]) {
    if let Some(audit) = audit {
        audit.record(AuditRecord::response(ResponseRecord {
            adapter: response.adapter,
            request_id: response.request_id,
            decision_id: response.decision_id,
            route: response.route,
            status: response.status,
            findings,
            ..ResponseRecord::default()
        }));
    }
}

fn count(limits: &[LimitSettled], outcome: &Outcome<'_>) {
    let m = metrics::global();
    if limits.is_empty() {
        m.reservation("already_settled");
        return;
    }
    m.reservation(
        match (outcome, limits.iter().any(|l| l.missing.is_some())) {
            (Outcome::Missing(Missing::Expired), _) => "expired",
            (_, true) => "settled_without_usage",
            (_, false) => "settled",
        },
    );
    for l in limits {
        m.tokens("used", l.charged);
        if l.charged < l.reserved {
            m.tokens("returned", l.reserved - l.charged);
        } else {
            m.tokens("excess", l.charged - l.reserved);
        }
    }
}

/// One sweep: claims this replica's share of expired reservations and
/// settles each by its rule. Answers how many it settled.
pub async fn sweep(quotas: &Quotas, audit: Option<&AuditSink>) -> usize {
    let expired = match quotas.claim_expired(SWEEP_BATCH).await {
        Ok(expired) => expired,
        Err(e) => {
            tracing::debug!(target: "portcullis::quota", error = %e, "expired reservations not claimed; retried at the next sweep");
            return 0;
        }
    };
    let mut settled = 0;
    for r in &expired {
        let limits = settle(
            quotas,
            audit,
            "sweeper",
            r,
            0,
            &Outcome::Missing(Missing::Expired),
            &[],
        )
        .await;
        settled += usize::from(!limits.is_empty());
    }
    settled
}
