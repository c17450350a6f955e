//! The last step of an enforced decision: one log line, the anomaly
//! detector's feed, the audit record (the answer waits as
//! `audit.durability` says; in `fail_closed` mode until the record is
//! written, and a decision that cannot be recorded comes back as a 503
//! denial) and the decision metrics. The single place where real decisions
//! reach the audit trail, so every adapter's answer waits here.

use std::time::Instant;

use super::{Ask, Door, Live};
use crate::anomaly::{Detector, Observed, Subject};
use crate::audit::{AuditRecord, AuditSink, Kind};
use crate::decision::{Decision, DenyReason};
use crate::metrics;
use crate::request::AccessRequest;

/// Logs, feeds the detector, records and counts one enforced decision.
pub(super) async fn record(
    live: &Live<'_>,
    ask: Ask<'_>,
    d: Decision,
    started: Instant,
) -> Decision {
    let (req, kind) = match ask {
        Ask::Access(req) => (req, "access"),
        Ask::RateLimit(call) => (call.request, "ratelimit"),
        Ask::Admin(call) => (call.request, "admin"),
    };
    log(&d, req, kind, started);
    if let (Ask::Access(req), Some(detector)) = (ask, live.anomalies) {
        watch(detector, live.audit, &d, req);
    }
    let Some(audit) = live.audit else {
        return d;
    };
    match ask {
        Ask::Access(req) => {
            let d = audit
                .record_decision(d, req, live.door.as_str(), started.elapsed())
                .await;
            let service = match live.door {
                Door::ForwardAuth => metrics::Service::ForwardAuth,
                _ => metrics::Service::ExtAuthz,
            };
            metrics::global().decision(service, &d, started.elapsed());
            d
        }
        Ask::RateLimit(call) => {
            let d = audit
                .record_ratelimit_decision(d, call.request, live.door.as_str(), started.elapsed())
                .await;
            metrics::global().decision(metrics::Service::RateLimit, &d, started.elapsed());
            d
        }
        Ask::Admin(call) => {
            audit
                .record_admin_call(d, call.request, call.rpc, live.door.as_str())
                .await
        }
    }
}

/// Logs a decision. Credentials and bodies never reach the log. Debug
/// level: the audit trail records every decision with one write per group
/// of decisions, off the request's task, while a log line per request is a
/// blocking write on the request's; shadow disagreements stay warnings.
fn log(d: &Decision, req: &AccessRequest, kind: &'static str, started: Instant) {
    tracing::debug!(
        target: "portcullis::decision",
        kind,
        decision_id = %d.id,
        request_id = %req.request_id,
        decision = ?d.decision,
        status = d.status,
        reason = d.reason.map(|r| r.code()),
        principal = d.principal.as_deref(),
        action = d.action.as_deref(),
        resource = d.resource.as_deref(),
        route = d.route.as_deref(),
        determining_policies = ?d.determining_policies,
        errors = ?d.errors,
        policy_version = %d.policy_version,
        quota = d.quota.as_ref().map(|q| q.descriptor.as_str()),
        quota_remaining = d.quota.as_ref().map(|q| q.remaining),
        quota_degraded = d.quota.as_ref().and_then(|q| q.degraded).map(|m| m.as_str()),
        latency_us = started.elapsed().as_micros() as u64,
        "decision"
    );
    if let Some(shadow) = d.shadow.as_ref().filter(|s| s.disagrees) {
        tracing::warn!(
            target: "portcullis::shadow",
            decision_id = %d.id,
            principal = d.principal.as_deref(),
            action = d.action.as_deref(),
            resource = d.resource.as_deref(),
            enforced = ?d.decision,
            shadow = ?shadow.decision,
            enforced_policies = ?d.determining_policies,
            shadow_policies = ?shadow.determining_policies,
            "shadow policies disagree with the enforced decision"
        );
    }
}

/// Feeds a decision to the anomaly detector; every event it sets off
/// becomes a metric, a log line and an audit record.
fn watch(detector: &Detector, audit: Option<&AuditSink>, d: &Decision, req: &AccessRequest) {
    let observed = match d.reason {
        None => Observed::Allowed,
        Some(DenyReason::InvalidCredentials) => Observed::AuthnFailure,
        Some(DenyReason::Forbidden) => Observed::Forbidden,
        // Refusals of an already blocked client are not new evidence.
        Some(DenyReason::AnomalyBlocked | DenyReason::TooManyFailedAttempts) => return,
        Some(_) => Observed::Denied,
    };
    let events = detector.observe(super::stages::watched_principal(d), req.source_ip, observed);
    let config = detector.config();
    for event in events {
        let detail = event.detail(config.interval_seconds, config.failure_window_seconds);
        metrics::global().anomaly(event.kind.code(), event.subject.kind());
        if event.blocked_for.is_some() {
            metrics::global().anomaly_block();
        }
        let (principal, source_ip) = match &event.subject {
            Subject::Principal(p) => (p.clone(), String::new()),
            Subject::Source(ip) => (String::new(), ip.to_string()),
        };
        tracing::warn!(
            target: "portcullis::anomaly",
            kind = event.kind.code(),
            subject = event.subject.kind(),
            principal = %principal,
            source_ip = %source_ip,
            risk = event.risk,
            blocked_seconds = event.blocked_for.map(|b| b.as_secs()),
            request_id = %req.request_id,
            decision_id = %d.id,
            "anomaly: {detail}"
        );
        if let Some(audit) = audit {
            audit.record(AuditRecord {
                principal,
                source_ip,
                reason: event.kind.code().into(),
                decision: if event.blocked_for.is_some() {
                    "block".into()
                } else {
                    "".into()
                },
                detail,
                request_id: req.request_id.clone(),
                policy_version: d.policy_version.clone(),
                ..AuditRecord::new(Kind::Anomaly)
            });
        }
    }
}
