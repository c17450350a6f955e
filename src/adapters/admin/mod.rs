//! The admin gRPC API (`portcullis.admin.v1`): what an operator or auditor
//! asks with grpcurl. Served on its own listener. Every call is
//! authenticated (bearer JWT from a configured issuer, else Anonymous),
//! authorized by the snapshot's Cedar policies, and recorded in the audit
//! trail: `admit` asks the pipeline, as every front door does.

use serde_json::Value;
use tonic::{Request, Status};

use crate::app::State;
use crate::audit::AuditRecord;
use crate::authn::entity_uid;
use crate::pipeline::{self, AdminCall, Ask, Mode};
use crate::proto;
use crate::request::AccessRequest;

mod audit_service;
mod policy_service;

pub use audit_service::{query_filter, AuditAdmin};
pub use policy_service::PolicyAdmin;

pub(super) const POLICY_SERVICE: &str = "portcullis.admin.v1.PolicyService";
pub(super) const AUDIT_SERVICE: &str = "portcullis.admin.v1.AuditService";
pub(super) const SERVICE: (&str, &str) = ("Service", "portcullis");
pub(super) const AUDIT_LOG: (&str, &str) = ("AuditLog", "main");

/// Decides one admin call through the pipeline (authentication, Cedar
/// authorization of `action` on `resource`, the audit record) and
/// translates a refusal into its gRPC status (outcome table).
pub(super) async fn admit<T: Sync>(
    state: &State,
    request: &Request<T>,
    rpc: &str,
    action: &str,
    resource: (&str, &str),
) -> Result<(), Status> {
    let mut headers = crate::request::Headers::default();
    if let Some(value) = request.metadata().get("authorization") {
        // Not ASCII: the authenticator refuses it as a malformed credential.
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.insert("authorization".to_string(), value);
    }
    let access = AccessRequest {
        headers,
        source_ip: request.remote_addr().map(|a| a.ip()),
        ..AccessRequest::bare("POST".into(), format!("/{rpc}"))
    };
    let call = AdminCall {
        request: &access,
        rpc,
        action,
        resource: entity_uid(resource.0, resource.1).expect("admin resource types are valid names"),
    };
    let snapshot = state.policies.current();
    let d = pipeline::decide(
        &snapshot,
        Ask::Admin(&call),
        Mode::Enforce(state.live(pipeline::Door::Admin)),
    )
    .await;
    if d.is_allowed() {
        return Ok(());
    }
    Err(Status::new(tonic::Code::from(d.grpc() as i32), d.detail))
}

pub(super) fn rpc_name(service: &str, method: &str) -> String {
    format!("{service}/{method}")
}

/// An audit record (`$record`) as `$target`, every field that has the same
/// name and type on both sides copied, plus the given ones (`kind` and
/// `status` differ in type between the file shape and the wire).
macro_rules! audit_record {
    ($($target:ident)::+, $record:ident, { $($field:ident: $value:expr),* $(,)? }) => {
        $($target)::+ {
            $($field: $value,)*
            seq: $record.seq,
            id: $record.id,
            time: $record.time,
            request_id: $record.request_id,
            adapter: $record.adapter.into(),
            trace_id: $record.trace_id,
            detail: $record.detail,
            principal: $record.principal,
            auth_method: $record.auth_method.into(),
            action: $record.action,
            resource: $record.resource,
            route: $record.route,
            decision: $record.decision.into(),
            reason: $record.reason.into(),
            determining_policies: $record.determining_policies,
            errors: $record.errors,
            quota: $record.quota,
            reservation: $record.reservation,
            decision_id: $record.decision_id,
            settlement: $record.settlement,
            findings: $record.findings,
            shadow: $record.shadow,
            policy_version: $record.policy_version,
            latency_us: $record.latency_us,
            source_ip: $record.source_ip,
            previous_version: $record.previous_version,
            files_changed: $record.files_changed,
            rpc: $record.rpc,
            checkpoint_seq: $record.checkpoint_seq,
            checkpoint_head: $record.checkpoint_head,
            checkpoint_mac: $record.checkpoint_mac,
            checkpoint_key: $record.checkpoint_key,
            checkpoint_sig: $record.checkpoint_sig,
            public_key: $record.public_key,
            unrecorded_before: $record.unrecorded_before,
            prev: $record.prev,
            hash: $record.hash,
        }
    };
}

pub(super) fn to_proto(r: AuditRecord) -> proto::AuditRecord {
    audit_record!(proto::AuditRecord, r, {
        kind: r.kind.as_str().into(),
        status: u32::try_from(r.status).unwrap_or(u32::MAX),
    })
}

/// An audit record from the wire, in the shape of the audit files (for
/// clients such as `portcullis audit query`).
pub fn from_proto(r: proto::AuditRecord) -> Result<AuditRecord, String> {
    let kind = serde_json::from_value(Value::String(r.kind.clone()))
        .map_err(|_| format!("record {}: unknown kind '{}'", r.id, r.kind))?;
    Ok(audit_record!(AuditRecord, r, {
        kind: kind,
        status: u64::from(r.status),
    }))
}

/// A protobuf `Struct` as JSON; whole numbers become integers (protobuf
/// JSON has only doubles, the request format has integer times).
pub(super) fn struct_to_json(s: prost_types::Struct) -> Value {
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
    use crate::audit::{self, Kind};

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
        // A window past i64's range reaches back to the start, as a long
        // one does (it wrapped negative and matched nothing).
        for within_seconds in [i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            let q = proto::QueryRequest {
                within_seconds,
                ..Default::default()
            };
            let since = query_filter(&q, 60_000).unwrap().since_ms;
            assert_eq!(since, Some(60_000 - i64::MAX), "{within_seconds}");
        }
        let bad = proto::QueryRequest {
            until: "yesterday".into(),
            ..Default::default()
        };
        assert!(query_filter(&bad, 0)
            .unwrap_err()
            .message()
            .contains("until"));
    }

    #[test]
    fn verify_from_past_the_head_is_refused_naming_the_head() {
        use super::audit_service::within_the_chain;
        let head = |next_seq| audit::Head {
            next_seq,
            ..Default::default()
        };
        for (from, next) in [(0, 0), (0, 42), (41, 42)] {
            assert!(within_the_chain(from, &head(next)).is_ok(), "{from} {next}");
        }
        for (from, next, expected) in [
            (500, 42, "from_seq 500 is past the chain's head (seq 41)"),
            (42, 42, "from_seq 42 is past the chain's head (seq 41)"),
            (
                1,
                0,
                "from_seq 1 is past the chain's head (the chain has no records yet)",
            ),
        ] {
            let e = within_the_chain(from, &head(next)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert_eq!(e.message(), expected);
        }
    }

    #[test]
    fn a_time_filter_past_the_supported_range_is_out_of_range_not_malformed() {
        for (q, expected) in [
            (
                proto::QueryRequest {
                    until: "9999-12-31T00:00:00Z".into(),
                    ..Default::default()
                },
                "until: '9999-12-31T00:00:00Z' is out of range; give a time from 0000-01-01T00:00:00Z to 9999-12-30T22:00:00Z",
            ),
            (
                proto::QueryRequest {
                    since: "9999-12-30T23:00:00+00:30".into(),
                    ..Default::default()
                },
                "since: '9999-12-30T23:00:00+00:30' is out of range; give a time from 0000-01-01T00:00:00Z to 9999-12-30T22:00:00Z",
            ),
            (
                proto::QueryRequest {
                    until: "9999-13-01T00:00:00Z".into(),
                    ..Default::default()
                },
                "until: '9999-13-01T00:00:00Z' is not an RFC 3339 time like 2026-11-25T21:00:00Z",
            ),
        ] {
            let e = query_filter(&q, 0).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert_eq!(e.message(), expected);
        }
        let q = proto::QueryRequest {
            until: "9999-12-30T22:00:00Z".into(),
            ..Default::default()
        };
        assert_eq!(
            query_filter(&q, 0).unwrap().until_ms,
            Some(253_402_207_200_000)
        );
    }
}
