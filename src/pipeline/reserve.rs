//! The reservation half of a token budget, at the end of the quota stage:
//! the token limits an allowed `Check` charged (their estimate, atomically
//! with the request's other limits) are recorded as one reservation under
//! the gateway's request id, for ext_proc on any replica to settle from the
//! response (`pipeline/response.rs`).

use super::stages::Refusal;
use crate::decision::quota::Reserved;
use crate::decision::Decision;
use crate::decision::DenyReason;
use crate::metrics;
use crate::quota::apply::{Applied, Descriptor};
use crate::quota::reserve::{Recorded, Reservation, ReservedLimit};
use crate::quota::Quotas;
use crate::request::AccessRequest;

/// The id a reservation is kept under: the request's `x-request-id`,
/// which ext_proc sees too (as a request header, or the `request.id`
/// attribute). Not Envoy's `attributes.request.http.id` in `Check`: that
/// is Envoy's internal stream id, which ext_proc never sees. Without the
/// header, the request id the front door gave.
pub(crate) fn correlation_id(req: &AccessRequest) -> &str {
    req.header("x-request-id")
        .filter(|id| !id.is_empty())
        .unwrap_or(&req.request_id)
}

/// Records the reservation of the token limits `applied` charged for
/// `descriptors` (an allowed charge), and notes it on `d`. Without a
/// request id, in a degraded mode, or when the store fails, nothing is
/// recorded and the estimate stays charged (it errs towards refusing).
///
/// # Errors
/// `request_id_in_use` (409) when an open reservation holds the request
/// id already: a second request under the id of one still open could not
/// be told from it when the responses settle, so the budget would charge
/// one response's usage to the other's reservation and never count the
/// other's excess. Its estimate stays charged, as when a reservation
/// cannot be recorded.
pub(super) async fn record(
    quotas: &Quotas,
    req: &AccessRequest,
    route: &str,
    descriptors: &[Descriptor],
    applied: &[Option<Applied>],
    d: &mut Decision,
) -> Result<(), Refusal> {
    let mut limits = Vec::new();
    let mut ttl_ms = 0;
    for (desc, applied) in descriptors.iter().zip(applied) {
        let (Some(tokens), Some(a)) = (&desc.tokens, applied) else {
            continue;
        };
        if a.state.over || desc.cost == 0 || a.limit.unlimited {
            continue;
        }
        ttl_ms = ttl_ms.max(tokens.reservation_ttl_ms);
        limits.push(ReservedLimit {
            key: a.key.clone(),
            name: a.limit.name.clone(),
            emission_us: a.limit.rate().emission_us,
            reserved: desc.cost,
            usage: tokens.usage.clone(),
            on_missing: tokens.on_missing_usage,
        });
    }
    if limits.is_empty() {
        return Ok(());
    }
    let tokens: u64 = limits.iter().map(|l| l.reserved).sum();
    let key = correlation_id(req);
    let mut reserved = Reserved {
        request_id: key.to_string(),
        limits: limits
            .iter()
            .map(|l| (l.name.clone().unwrap_or_else(|| l.key.clone()), l.reserved))
            .collect(),
        ttl_ms,
        recorded: false,
    };
    let degraded = d.quota.as_ref().is_some_and(|q| q.degraded.is_some());
    if key.is_empty() || degraded {
        metrics::global().reservation(if degraded {
            "not_recorded_degraded"
        } else {
            "not_recorded_no_request_id"
        });
        d.reserved = Some(Box::new(reserved));
        return Ok(());
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_millis() as u64);
    let reservation = Reservation {
        request_id: key.to_string(),
        decision_id: d.id.clone(),
        route: route.to_string(),
        ttl_ms,
        expires_at_ms: now_ms + ttl_ms,
        limits,
    };
    match quotas.reserve(&reservation).await {
        Ok(Recorded::Yes) => {
            reserved.recorded = true;
            metrics::global().reservation("reserved");
            metrics::global().tokens("reserved", tokens);
        }
        Ok(Recorded::NoStore) => metrics::global().reservation("not_recorded_no_store"),
        Ok(Recorded::RequestIdInUse) => {
            metrics::global().reservation("refused_request_id_in_use");
            d.reserved = Some(Box::new(reserved));
            return Err(Refusal::new(
                DenyReason::RequestIdInUse,
                "another request with this x-request-id is still open; give each request its own id",
            ));
        }
        Err(e) => {
            metrics::global().reservation("not_recorded_store_error");
            tracing::warn!(
                target: "portcullis::quota",
                error = %e,
                request_id = %key,
                "token reservation not recorded; its estimate stays charged"
            );
        }
    }
    d.reserved = Some(Box::new(reserved));
    Ok(())
}
