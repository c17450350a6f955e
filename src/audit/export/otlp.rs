//! An audit record as an OpenTelemetry log record (OTLP, `logs.proto`):
//! the body is the record exactly as its line in the audit file (the
//! canonical JSON with `hash`), so any log system that keeps the message
//! keeps what re-verification needs; the chain fields and the fields
//! auditors search by are attributes as well; the resource names the
//! chain (`service.instance.id`). It does no I/O.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};

use crate::audit::AuditRecord;

/// The instrumentation scope of exported records.
pub const SCOPE: &str = "portcullis.audit";
/// Attribute keys of the chain fields (`seq` is an int, the rest strings).
pub const SEQ: &str = "portcullis.audit.seq";
/// See [`SEQ`].
pub const PREV: &str = "portcullis.audit.prev";
/// See [`SEQ`].
pub const HASH: &str = "portcullis.audit.hash";
/// Resource attribute naming the chain (one per audit directory).
pub const INSTANCE: &str = "service.instance.id";

/// The resource every exported record belongs to.
#[derive(Debug, Clone)]
pub struct Resource {
    /// `service.name`.
    pub service: String,
    /// `service.instance.id`: the chain's name.
    pub instance: String,
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: u64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value as i64)),
        }),
        ..Default::default()
    }
}

impl Resource {
    /// The resource of `service` and its chain `instance`.
    pub fn new(service: &str, instance: &str) -> Self {
        Resource {
            service: service.to_string(),
            instance: instance.to_string(),
        }
    }

    /// One export call's request: `records` under this resource.
    pub fn request(&self, records: &[Arc<AuditRecord>]) -> ExportLogsServiceRequest {
        let observed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: vec![
                        string("service.name", &self.service),
                        string(INSTANCE, &self.instance),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: SCOPE.into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    log_records: records.iter().map(|r| log_record(r, observed)).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }
}

/// The log record of one audit record. `event_name` is
/// `portcullis.audit.<kind>`; `trace_id` the request's, when it had one.
pub fn log_record(record: &AuditRecord, observed_unix_nano: u64) -> LogRecord {
    // The same bytes as the record's line in the file: serde_json writes
    // a record's members in one fixed order, and the line is this form.
    let line =
        serde_json::to_string(&serde_json::to_value(record).expect("audit records serialise"))
            .expect("a JSON value serialises");
    let mut attributes = vec![
        int(SEQ, record.seq),
        string(PREV, &record.prev),
        string(HASH, &record.hash),
        string("portcullis.audit.kind", record.kind.as_str()),
        string("portcullis.audit.id", &record.id),
    ];
    for (key, value) in [
        ("portcullis.audit.decision", &*record.decision),
        ("portcullis.audit.principal", &record.principal),
        ("portcullis.audit.action", &record.action),
        ("portcullis.audit.resource", &record.resource),
        ("portcullis.audit.reason", &*record.reason),
        ("portcullis.audit.policy_version", &record.policy_version),
        ("portcullis.audit.request_id", &record.request_id),
        ("portcullis.audit.rpc", &record.rpc),
    ] {
        if !value.is_empty() {
            attributes.push(string(key, value));
        }
    }
    if record.status != 0 {
        attributes.push(int("http.response.status_code", record.status));
    }
    let time = crate::time::parse_rfc3339_ms(&record.time)
        .and_then(|ms| u64::try_from(ms).ok())
        .map_or(0, |ms| ms * 1_000_000);
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: observed_unix_nano,
        severity_number: SeverityNumber::Info as i32,
        severity_text: "INFO".into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(line)),
        }),
        attributes,
        trace_id: hex::decode(&record.trace_id)
            .ok()
            .filter(|id| id.len() == 16)
            .unwrap_or_default(),
        event_name: format!("{SCOPE}.{}", record.kind.as_str()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::leaf_hash;
    use crate::audit::Kind;

    fn attribute<'a>(log: &'a LogRecord, key: &str) -> Option<&'a any_value::Value> {
        log.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn the_body_is_the_file_line_and_the_chain_fields_are_attributes() {
        let mut record = AuditRecord {
            seq: 7,
            principal: "User::\"alice\"".into(),
            decision: "allow".into(),
            status: 200,
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            prev: "ab".repeat(32),
            ..AuditRecord::new(Kind::Decision)
        };
        // As the writer chains it.
        let mut value = serde_json::to_value(&record).unwrap();
        record.hash = leaf_hash(&value);
        value["hash"] = serde_json::Value::String(record.hash.clone());
        let file_line = value.to_string();

        let log = log_record(&record, 1);
        let Some(any_value::Value::StringValue(body)) =
            log.body.as_ref().and_then(|b| b.value.as_ref())
        else {
            panic!("a string body")
        };
        assert_eq!(body, &file_line);
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(leaf_hash(&parsed), record.hash, "the body re-verifies");
        assert_eq!(attribute(&log, SEQ), Some(&any_value::Value::IntValue(7)));
        assert_eq!(
            attribute(&log, PREV),
            Some(&any_value::Value::StringValue(record.prev.clone()))
        );
        assert_eq!(
            attribute(&log, HASH),
            Some(&any_value::Value::StringValue(record.hash.clone()))
        );
        assert_eq!(hex::encode(&log.trace_id), record.trace_id);
        assert_eq!(log.event_name, "portcullis.audit.decision");
        assert!(
            log.time_unix_nano > 1_600_000_000_000_000_000,
            "{}",
            log.time_unix_nano
        );
        assert!(
            attribute(&log, "portcullis.audit.rpc").is_none(),
            "empty fields are left out"
        );
    }
}
