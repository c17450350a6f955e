//! `PolicyService`: the serving policy snapshot (version, policies),
//! `Explain` of a hypothetical request, and `Reload`.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use tonic::{Request, Response, Status};

use super::{admit, rpc_name, struct_to_json, POLICY_SERVICE, SERVICE};
use crate::app::State;
use crate::pipeline::{self, Ask, Mode};
use crate::proto;
use crate::proto::policy_service_server::PolicyService;
use crate::proto::{GetVersionRequest, GetVersionResponse};

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
