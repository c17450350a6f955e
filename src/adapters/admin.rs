//! The admin gRPC API (`portcullis.admin.v1`): what an operator or auditor
//! asks with grpcurl. Served on its own listener. Every call is
//! authenticated (bearer JWT from a configured issuer, else Anonymous),
//! authorized by the snapshot's Cedar policies, and recorded in the audit
//! trail: `admit` asks the pipeline, as every front door does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::app::State;
use crate::audit::{self, query::Filter, AuditRecord};
use crate::authn::entity_uid;
use crate::pipeline::{self, AdminCall, Ask, Mode};
use crate::proto;
use crate::proto::audit_service_server::AuditService;
use crate::proto::policy_service_server::PolicyService;
use crate::proto::{GetVersionRequest, GetVersionResponse};
use crate::request::AccessRequest;

const POLICY_SERVICE: &str = "portcullis.admin.v1.PolicyService";
const AUDIT_SERVICE: &str = "portcullis.admin.v1.AuditService";
const SERVICE: (&str, &str) = ("Service", "portcullis");
const AUDIT_LOG: (&str, &str) = ("AuditLog", "main");
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// Decides one admin call through the pipeline (authentication, Cedar
/// authorization of `action` on `resource`, the audit record) and
/// translates a refusal into its gRPC status (outcome table).
async fn admit<T: Sync>(
    state: &State,
    request: &Request<T>,
    rpc: &str,
    action: &str,
    resource: (&str, &str),
) -> Result<(), Status> {
    let mut headers = HashMap::new();
    if let Some(value) = request.metadata().get("authorization") {
        // Not ASCII: the authenticator refuses it as a malformed credential.
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.insert("authorization".to_string(), value);
    }
    let access = AccessRequest {
        method: "POST".into(),
        path: format!("/{rpc}"),
        host: String::new(),
        headers,
        source_ip: request.remote_addr().map(|a| a.ip()),
        source_principal: None,
        request_id: String::new(),
        time: SystemTime::now(),
        body: None,
        gateway_region: None,
    };
    let call = AdminCall {
        request: &access,
        rpc,
        action,
        resource: entity_uid(resource.0, resource.1).expect("admin resource types are valid names"),
    };
    let snapshot = state.policies.current();
    let d = pipeline::decide(&snapshot, Ask::Admin(&call), Mode::Enforce(state.live())).await;
    if d.is_allowed() {
        return Ok(());
    }
    Err(Status::new(tonic::Code::from(d.grpc() as i32), d.detail))
}

fn rpc_name(service: &str, method: &str) -> String {
    format!("{service}/{method}")
}

/// `PolicyService`: the serving policy snapshot.
#[derive(Debug, Clone)]
pub struct PolicyAdmin {
    state: Arc<State>,
}

impl PolicyAdmin {
    /// The service over the shared state.
    pub fn new(state: Arc<State>) -> Self {
        PolicyAdmin { state }
    }
}

#[tonic::async_trait]
impl PolicyService for PolicyAdmin {
    async fn get_version(
        &self,
        request: Request<GetVersionRequest>,
    ) -> Result<Response<GetVersionResponse>, Status> {
        admit(
            &self.state,
            &request,
            &rpc_name(POLICY_SERVICE, "GetVersion"),
            "policy:version",
            SERVICE,
        )
        .await?;
        let snapshot = self.state.policies.current();
        let stats = self.state.policies.stats();
        let loaded = snapshot
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Response::new(GetVersionResponse {
            version: snapshot.version.clone(),
            loaded_at: crate::time::rfc3339(loaded),
            directory: snapshot.directory.display().to_string(),
            files: snapshot.files.clone(),
            policy_count: snapshot.policy_count() as u32,
            route_count: snapshot.routes.routes().len() as u32,
            reloads: stats.reloads,
            rejected_reloads: stats.rejected,
            last_reload_errors: stats.last_errors,
        }))
    }

    async fn list_policies(
        &self,
        request: Request<proto::ListPoliciesRequest>,
    ) -> Result<Response<proto::ListPoliciesResponse>, Status> {
        admit(
            &self.state,
            &request,
            &rpc_name(POLICY_SERVICE, "ListPolicies"),
            "policy:read",
            SERVICE,
        )
        .await?;
        let snapshot = self.state.policies.current();
        let mut policies: Vec<proto::PolicyInfo> = snapshot
            .policies
            .policies()
            .map(|p| {
                let id = p.id().to_string();
                let source = snapshot.sources.get(&id);
                proto::PolicyInfo {
                    effect: match p.effect() {
                        cedar_policy::Effect::Permit => "permit".into(),
                        cedar_policy::Effect::Forbid => "forbid".into(),
                    },
                    file: source.map(|s| s.file.clone()).unwrap_or_default(),
                    line: source.map(|s| s.line as u32).unwrap_or_default(),
                    id,
                }
            })
            .collect();
        policies.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        Ok(Response::new(proto::ListPoliciesResponse {
            version: snapshot.version.clone(),
            policies,
        }))
    }

    async fn explain(
        &self,
        request: Request<proto::ExplainRequest>,
    ) -> Result<Response<proto::ExplainResponse>, Status> {
        admit(
            &self.state,
            &request,
            &rpc_name(POLICY_SERVICE, "Explain"),
            "policy:explain",
            SERVICE,
        )
        .await?;
        let Some(fields) = request.into_inner().request else {
            return Err(Status::invalid_argument(
                "give the request to explain as {\"request\": {\"method\": ..., \"path\": ...}}",
            ));
        };
        let value = struct_to_json(fields);
        let input: crate::adapters::offline::check::CheckInput = serde_json::from_value(value)
            .map_err(|e| Status::invalid_argument(format!("request: {e}")))?;
        let identity = input
            .identity()
            .map_err(|e| Status::invalid_argument(format!("request.{e}")))?;
        let access = input.to_access_request();
        let snapshot = self.state.policies.current();
        let mode = match identity {
            Some(identity) => Mode::As {
                identity: Some(identity),
                risk: 0,
            },
            None => Mode::Explain(&self.state.authenticator),
        };
        let d = pipeline::decide(&snapshot, Ask::Access(&access), mode).await;
        Ok(Response::new(proto::ExplainResponse {
            decision: if d.is_allowed() { "allow" } else { "deny" }.into(),
            status: u32::from(d.status),
            reason: d.reason.map(|r| r.code().to_string()).unwrap_or_default(),
            detail: d.detail,
            principal: d.principal.unwrap_or_default(),
            auth_method: d.auth_method.unwrap_or_default().into(),
            action: d.action.unwrap_or_default(),
            resource: d.resource.unwrap_or_default(),
            route: d.route.unwrap_or_default(),
            determining_policies: d.determining_policies,
            errors: d.errors,
            policy_version: d.policy_version,
        }))
    }

    async fn reload(
        &self,
        request: Request<proto::ReloadRequest>,
    ) -> Result<Response<proto::ReloadResponse>, Status> {
        admit(
            &self.state,
            &request,
            &rpc_name(POLICY_SERVICE, "Reload"),
            "policy:reload",
            SERVICE,
        )
        .await?;
        let before = self.state.policies.current().version.clone();
        let response = match self.state.policies.reload_async().await {
            Ok(crate::policy::reload::ReloadOutcome::Swapped { from, to }) => {
                proto::ReloadResponse {
                    outcome: "swapped".into(),
                    version: to,
                    previous_version: from,
                    errors: Vec::new(),
                }
            }
            Ok(crate::policy::reload::ReloadOutcome::Unchanged { version }) => {
                proto::ReloadResponse {
                    outcome: "unchanged".into(),
                    version: version.clone(),
                    previous_version: version,
                    errors: Vec::new(),
                }
            }
            Err(errors) => proto::ReloadResponse {
                outcome: "rejected".into(),
                version: before.clone(),
                previous_version: before,
                errors: errors.errors.iter().map(ToString::to_string).collect(),
            },
        };
        Ok(Response::new(response))
    }
}

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
        let dir = self.state.audit.directory().to_path_buf();
        let key = self.state.audit.checkpoint_key().cloned();
        let from = q.from_seq;
        let (v, files) =
            blocking(move || audit::query::verify_dir(&dir, key.as_ref(), from, to)).await?;
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
            checkpoint_key_configured: self.state.audit.checkpoints_enabled(),
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
        }))
    }
}

/// The filter of a `Query`, with times parsed; `now_ms` anchors
/// `within_seconds`.
pub fn query_filter(q: &proto::QueryRequest, now_ms: i64) -> Result<Filter, Status> {
    let time = |field: &str, text: &str| -> Result<Option<i64>, Status> {
        if text.is_empty() {
            return Ok(None);
        }
        crate::time::parse_rfc3339_ms(text)
            .map(Some)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{field}: '{text}' is not an RFC 3339 time like 2026-11-25T21:00:00Z"
                ))
            })
    };
    let mut since = time("since", &q.since)?;
    let until = time("until", &q.until)?;
    if q.within_seconds > 0 {
        let floor = now_ms.saturating_sub((q.within_seconds as i64).saturating_mul(1000));
        since = Some(since.map_or(floor, |s| s.max(floor)));
    }
    if !q.decision.is_empty() && q.decision != "allow" && q.decision != "deny" {
        return Err(Status::invalid_argument("decision: 'allow' or 'deny'"));
    }
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

fn to_proto(r: AuditRecord) -> proto::AuditRecord {
    proto::AuditRecord {
        seq: r.seq,
        id: r.id,
        time: r.time,
        kind: r.kind.as_str().into(),
        request_id: r.request_id,
        trace_id: r.trace_id,
        detail: r.detail,
        principal: r.principal,
        auth_method: r.auth_method,
        action: r.action,
        resource: r.resource,
        route: r.route,
        decision: r.decision,
        status: u32::try_from(r.status).unwrap_or(u32::MAX),
        reason: r.reason,
        determining_policies: r.determining_policies,
        errors: r.errors,
        quota: r.quota,
        shadow: r.shadow,
        policy_version: r.policy_version,
        latency_us: r.latency_us,
        source_ip: r.source_ip,
        previous_version: r.previous_version,
        files_changed: r.files_changed,
        rpc: r.rpc,
        checkpoint_seq: r.checkpoint_seq,
        checkpoint_head: r.checkpoint_head,
        checkpoint_mac: r.checkpoint_mac,
        prev: r.prev,
        hash: r.hash,
    }
}

/// An audit record from the wire, in the shape of the audit files (for
/// clients such as `portcullis audit query`).
pub fn from_proto(r: proto::AuditRecord) -> Result<AuditRecord, String> {
    let kind = serde_json::from_value(Value::String(r.kind.clone()))
        .map_err(|_| format!("record {}: unknown kind '{}'", r.id, r.kind))?;
    Ok(AuditRecord {
        seq: r.seq,
        id: r.id,
        time: r.time,
        kind,
        request_id: r.request_id,
        trace_id: r.trace_id,
        detail: r.detail,
        principal: r.principal,
        auth_method: r.auth_method,
        action: r.action,
        resource: r.resource,
        route: r.route,
        decision: r.decision,
        status: u64::from(r.status),
        reason: r.reason,
        determining_policies: r.determining_policies,
        errors: r.errors,
        quota: r.quota,
        shadow: r.shadow,
        policy_version: r.policy_version,
        latency_us: r.latency_us,
        source_ip: r.source_ip,
        previous_version: r.previous_version,
        files_changed: r.files_changed,
        rpc: r.rpc,
        checkpoint_seq: r.checkpoint_seq,
        checkpoint_head: r.checkpoint_head,
        checkpoint_mac: r.checkpoint_mac,
        prev: r.prev,
        hash: r.hash,
    })
}

/// A protobuf `Struct` as JSON; whole numbers become integers (protobuf
/// JSON has only doubles, the request format has integer times).
fn struct_to_json(s: prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .into_iter()
            .map(|(k, v)| (k, value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: prost_types::Value) -> Value {
    use prost_types::value::Kind as K;
    match v.kind {
        None | Some(K::NullValue(_)) => Value::Null,
        Some(K::BoolValue(b)) => Value::Bool(b),
        Some(K::StringValue(s)) => Value::String(s),
        Some(K::NumberValue(n)) => {
            if n.fract() == 0.0 && (0.0..9.0e15).contains(&n) {
                Value::from(n as u64)
            } else if n.fract() == 0.0 && (-9.0e15..0.0).contains(&n) {
                Value::from(n as i64)
            } else {
                serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
            }
        }
        Some(K::StructValue(s)) => struct_to_json(s),
        Some(K::ListValue(l)) => Value::Array(l.values.into_iter().map(value_to_json).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Kind;

    #[test]
    fn records_survive_the_wire_unchanged() {
        let mut r = AuditRecord {
            seq: 7,
            principal: "User::\"alice\"".into(),
            decision: "deny".into(),
            status: 403,
            determining_policies: vec!["p".into()],
            checkpoint_seq: Some(6),
            ..AuditRecord::new(Kind::Checkpoint)
        };
        r.prev = audit::chain::GENESIS.into();
        let value = serde_json::to_value(&r).unwrap();
        r.hash = audit::chain::leaf_hash(&value);
        let back = from_proto(to_proto(r.clone())).unwrap();
        assert_eq!(back, r);
        let mut bad = to_proto(r);
        bad.kind = "mystery".into();
        assert!(from_proto(bad).unwrap_err().contains("mystery"));
    }

    #[test]
    fn within_seconds_narrows_since() {
        let q = proto::QueryRequest {
            since: "1970-01-01T00:00:10Z".into(),
            within_seconds: 5,
            ..Default::default()
        };
        let f = query_filter(&q, 60_000).unwrap();
        assert_eq!(f.since_ms, Some(55_000));
        let bad = proto::QueryRequest {
            until: "yesterday".into(),
            ..Default::default()
        };
        assert!(query_filter(&bad, 0)
            .unwrap_err()
            .message()
            .contains("until"));
    }
}
