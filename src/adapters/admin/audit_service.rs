//! `AuditService`: querying, fetching, tailing, verifying and reporting on
//! the audit trail.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{admit, rpc_name, to_proto, AUDIT_LOG, AUDIT_SERVICE};
use crate::app::State;
use crate::audit::{self, query::Filter};
use crate::proto;
use crate::proto::audit_service_server::AuditService;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// `AuditService`: reading and verifying the audit trail.
#[derive(Debug, Clone)]
pub struct AuditAdmin {
    state: Arc<State>,
}

impl AuditAdmin {
    /// The service over the shared state; open tails end when the state's
    /// `stop` is cancelled.
    pub fn new(state: Arc<State>) -> Self {
        AuditAdmin { state }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the audit files");
            Err(Status::internal(
                "cannot read the audit files; see the server log",
            ))
        }
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[tonic::async_trait]
impl AuditService for AuditAdmin {
    async fn query(
        &self,
        request: Request<proto::QueryRequest>,
    ) -> Result<Response<proto::QueryResponse>, Status> {
        admit(
            &self.state,
            &request,
            &rpc_name(AUDIT_SERVICE, "Query"),
            "audit:read",
            AUDIT_LOG,
        )
        .await?;
        let q = request.into_inner();
        let filter = query_filter(&q, crate::time::now_millis())?;
        let from = if q.page_token.is_empty() {
            0
        } else {
            q.page_token.parse::<u64>().map_err(|_| {
                Status::invalid_argument(
                    "page_token: pass next_page_token from a previous response",
                )
            })?
        };
        let limit = match q.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        } as usize;
        let dir = self.state.audit.directory().to_path_buf();
        let (records, next) =
            blocking(move || audit::query::query(&dir, &filter, from, limit)).await?;
        Ok(Response::new(proto::QueryResponse {
            records: records.into_iter().map(to_proto).collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::AuditRecord>, Status> {
        admit(
            &self.state,
            &request,
            &rpc_name(AUDIT_SERVICE, "Get"),
            "audit:read",
            AUDIT_LOG,
        )
        .await?;
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(Status::invalid_argument("id: give a record id"));
        }
        let dir = self.state.audit.directory().to_path_buf();
        let wanted = id.clone();
        match blocking(move || audit::query::get(&dir, &wanted)).await? {
            Some(r) => Ok(Response::new(to_proto(r))),
            None => Err(Status::not_found(format!("no audit record with id {id}"))),
        }
    }

    async fn verify(
        &self,
        request: Request<proto::VerifyRequest>,
    ) -> Result<Response<proto::VerifyResponse>, Status> {
        admit(
            &self.state,
            &request,
            &rpc_name(AUDIT_SERVICE, "Verify"),
            "audit:verify",
            AUDIT_LOG,
        )
        .await?;
        let q = request.into_inner();
        let to = q.to_seq.unwrap_or(u64::MAX);
        if to < q.from_seq {
            return Err(Status::invalid_argument(
                "to_seq must not be below from_seq",
            ));
        }
        // Read before the files: every record up to it is in them.
        let head = self.state.audit.head();
        within_the_chain(q.from_seq, &head)?;
        let dir = self.state.audit.directory().to_path_buf();
        let key = self.state.audit.checkpoint_key().cloned();
        let from = q.from_seq;
        let written = head.next_seq.checked_sub(1);
        let (v, files) =
            blocking(move || audit::query::verify_dir(&dir, key.as_ref(), from, to, written))
                .await?;
        let broken = v.broken.as_ref().map(|b| proto::BrokenLink {
            file: b.at.file.clone(),
            line: b.at.line as u64,
            seq: b.seq.unwrap_or_default(),
            id: b.id.clone().unwrap_or_default(),
            reason: b.reason.clone(),
            message: b.to_string(),
        });
        Ok(Response::new(proto::VerifyResponse {
            ok: broken.is_none(),
            records: v.records,
            first_seq: v.first_seq.unwrap_or_default(),
            last_seq: v.last_seq.unwrap_or_default(),
            head_hash: v.head,
            checkpoints_verified: v.checkpoints_verified,
            // The server checks HMAC checkpoints; Ed25519 ones are for
            // auditors (`portcullis audit verify --public-key`).
            checkpoint_key_configured: self.state.audit.checkpoint_key().is_some(),
            broken,
            files,
        }))
    }

    type TailStream = ReceiverStream<Result<proto::AuditRecord, Status>>;

    async fn tail(
        &self,
        request: Request<proto::TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        admit(
            &self.state,
            &request,
            &rpc_name(AUDIT_SERVICE, "Tail"),
            "audit:read",
            AUDIT_LOG,
        )
        .await?;
        let q = request.into_inner();
        // Checked as a `Query`'s: a filter nothing can match would hold the
        // stream open forever, silent.
        check_decision(&q.decision)?;
        let filter = Filter {
            principal: q.principal,
            action: q.action,
            resource: q.resource,
            decision: q.decision,
            policy_id: q.policy_id,
            policy_version: q.policy_version,
            kind: q.kind,
            since_ms: None,
            until_ms: None,
        };
        let mut records = self.state.audit.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let stop = self.state.stop.clone();
        self.state.tasks.spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tx.closed() => return,
                    next = records.recv() => next,
                };
                match next {
                    Ok(record) if filter.matches(&record) => {
                        if tx.send(Ok(to_proto((*record).clone()))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "the tail fell {n} records behind; catch up with Query and tail again"
                            ))))
                            .await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        admit(
            &self.state,
            &request,
            &rpc_name(AUDIT_SERVICE, "Status"),
            "audit:read",
            AUDIT_LOG,
        )
        .await?;
        use std::sync::atomic::Ordering::Relaxed;
        let sink = &self.state.audit;
        let c = sink.counters();
        let head = sink.head();
        Ok(Response::new(proto::StatusResponse {
            directory: sink.directory().display().to_string(),
            on_full: match sink.mode() {
                audit::OnFull::Drop => "drop".into(),
                audit::OnFull::FailClosed => "fail_closed".into(),
            },
            queue_capacity: sink.capacity() as u64,
            queued: c.queued.load(Relaxed),
            written: c.written.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            refused: c.refused.load(Relaxed),
            write_errors: c.write_errors.load(Relaxed),
            next_seq: head.next_seq,
            head_hash: head.hash,
            current_file: head.file,
            checkpoints_signed: sink.checkpoints_enabled(),
            durability: sink.durability().as_str().into(),
            checkpoint_sign_errors: c.sign_errors.load(Relaxed),
            write_timeouts: c.write_timeouts.load(Relaxed),
            export: sink.export().map(|e| {
                let c = &e.counters;
                proto::AuditExportStatus {
                    endpoint: e.endpoint.clone(),
                    exported: c.exported.load(Relaxed),
                    dropped: c.dropped.load(Relaxed),
                    failed: c.failed.load(Relaxed),
                    pending: c.pending(),
                    errors: c.errors.load(Relaxed),
                }
            }),
        }))
    }
}

/// A `Verify` from `from_seq` has records to check: `from_seq` is at or
/// before the chain's head (as written), else the answer would be `ok`
/// having checked nothing. `0` is the whole chain, even an empty one.
pub(super) fn within_the_chain(from_seq: u64, head: &audit::Head) -> Result<(), Status> {
    if from_seq == 0 || from_seq < head.next_seq {
        return Ok(());
    }
    Err(Status::invalid_argument(match head.next_seq {
        0 => format!("from_seq {from_seq} is past the chain's head (the chain has no records yet)"),
        next => format!(
            "from_seq {from_seq} is past the chain's head (seq {})",
            next - 1
        ),
    }))
}

/// A `decision` filter is empty, `allow` or `deny`.
fn check_decision(decision: &str) -> Result<(), Status> {
    if decision.is_empty() || decision == "allow" || decision == "deny" {
        Ok(())
    } else {
        Err(Status::invalid_argument("decision: 'allow' or 'deny'"))
    }
}

/// The filter of a `Query`, with times parsed; `now_ms` anchors
/// `within_seconds`.
pub fn query_filter(q: &proto::QueryRequest, now_ms: i64) -> Result<Filter, Status> {
    let time = |field: &str, text: &str| -> Result<Option<i64>, Status> {
        if text.is_empty() {
            return Ok(None);
        }
        use crate::time::{BadTime, EARLIEST_TIME, LATEST_TIME};
        crate::time::read_rfc3339_ms(text)
            .map(Some)
            .map_err(|bad| {
                Status::invalid_argument(match bad {
                    BadTime::Format => format!(
                        "{field}: '{text}' is not an RFC 3339 time like 2026-11-25T21:00:00Z"
                    ),
                    BadTime::OutOfRange => format!(
                        "{field}: '{text}' is out of range; give a time from {EARLIEST_TIME} to {LATEST_TIME}"
                    ),
                })
            })
    };
    let mut since = time("since", &q.since)?;
    let until = time("until", &q.until)?;
    if q.within_seconds > 0 {
        // Past i64's range, the window still reaches back to the start
        // (`as i64` wrapped to a negative window: nothing matched).
        let window_ms = i64::try_from(q.within_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let floor = now_ms.saturating_sub(window_ms);
        since = Some(since.map_or(floor, |s| s.max(floor)));
    }
    check_decision(&q.decision)?;
    Ok(Filter {
        principal: q.principal.clone(),
        action: q.action.clone(),
        resource: q.resource.clone(),
        decision: q.decision.clone(),
        policy_id: q.policy_id.clone(),
        policy_version: q.policy_version.clone(),
        kind: q.kind.clone(),
        since_ms: since,
        until_ms: until,
    })
}
