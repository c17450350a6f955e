//! The admin gRPC API (`portcullis.admin.v1`): what an operator asks with
//! grpcurl. Served on its own listener.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use tonic::{Request, Response, Status};

use crate::proto::policy_service_server::PolicyService;
use crate::proto::{GetVersionRequest, GetVersionResponse};
use crate::server::State;

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
        _request: Request<GetVersionRequest>,
    ) -> Result<Response<GetVersionResponse>, Status> {
        let snapshot = self.state.policies.current();
        let stats = self.state.policies.stats();
        let loaded = snapshot
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Response::new(GetVersionResponse {
            version: snapshot.version.clone(),
            loaded_at: rfc3339(loaded),
            directory: snapshot.directory.display().to_string(),
            files: snapshot.files.clone(),
            policy_count: snapshot.policy_count() as u32,
            route_count: snapshot.routes.routes().len() as u32,
            reloads: stats.reloads,
            rejected_reloads: stats.rejected,
            last_reload_errors: stats.last_errors,
        }))
    }
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-11-25T21:00:00Z`).
pub fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        (secs % 3_600) / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_564_800 + 3_723), "2026-11-25T01:02:03Z");
    }
}
