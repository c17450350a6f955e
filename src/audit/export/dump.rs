//! Re-verifying chains from an export: reads OTLP/JSON dumps (what the
//! OpenTelemetry collector's `file` exporter writes: one
//! `ExportLogsServiceRequest` as JSON per line), takes every audit record
//! (the log body, scope `portcullis.audit`), groups them by chain
//! (`service.instance.id`), orders each chain by `seq` and checks it with
//! the same `Verifier` as the audit files. Records delivered twice (an
//! export retried) count once; two different records with one `seq` break
//! the chain. It reads the files given; it never writes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::Value;

use super::otlp::{INSTANCE, SCOPE};
use crate::audit::chain::{Break, CheckpointKey, Location, Verification, Verifier};
use crate::audit::signing::PublicKey;

/// True when the file's first line is an OTLP/JSON export request
/// (`{"resourceLogs": ...}`) rather than an audit record.
pub fn is_dump(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut first = String::new();
    if BufReader::new(file).read_line(&mut first).is_err() {
        return false;
    }
    serde_json::from_str::<Value>(&first)
        .ok()
        .is_some_and(|v| v.get("resourceLogs").is_some())
}

/// One chain's records from the dumps, by `seq`: the record line and where
/// it was found.
#[derive(Debug, Default)]
struct Chain {
    records: BTreeMap<u64, (String, Location)>,
    /// The first `seq` claimed by two different records, and where the
    /// second was found.
    conflict: Option<(u64, Location)>,
}

/// The result of verifying one chain found in the dumps.
#[derive(Debug)]
pub struct ChainVerification {
    /// The chain's `service.instance.id`.
    pub instance: String,
    /// As for audit files; the first record found is trusted at its
    /// `prev` (an export may start in the middle of a chain).
    pub verification: Verification,
}

fn string_value(v: &Value) -> Option<&str> {
    v.get("stringValue").and_then(Value::as_str)
}

fn attribute<'a>(attributes: &'a Value, key: &str) -> Option<&'a str> {
    attributes
        .as_array()?
        .iter()
        .find(|a| a.get("key").and_then(Value::as_str) == Some(key))
        .and_then(|a| string_value(a.get("value")?))
}

/// Reads the dumps and verifies each chain in them with `key` (HMAC) and
/// `public_keys` (Ed25519), in `service.instance.id` order. Errors name
/// the file and line that cannot be read as OTLP/JSON.
pub fn verify_dumps(
    paths: &[impl AsRef<Path>],
    key: Option<&CheckpointKey>,
    public_keys: &[PublicKey],
) -> Result<Vec<ChainVerification>, String> {
    let mut chains: BTreeMap<String, Chain> = BTreeMap::new();
    for path in paths {
        let path = path.as_ref();
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for (index, line) in BufReader::new(file).lines().enumerate() {
            let at = Location {
                file: path.display().to_string(),
                line: index + 1,
            };
            let line = line.map_err(|e| format!("cannot read {at}: {e}"))?;
            if line.trim().is_empty() {
                continue;
            }
            let request: Value = serde_json::from_str(&line)
                .map_err(|e| format!("{at}: not an OTLP/JSON export request: {e}"))?;
            collect(&request, &at, &mut chains);
        }
    }
    let mut out = Vec::new();
    for (instance, chain) in chains {
        let mut verifier = Verifier::new(key).with_public_keys(public_keys);
        let until = chain.conflict.as_ref().map_or(u64::MAX, |(seq, _)| *seq);
        for (text, at) in chain.records.range(..until).map(|(_, r)| r) {
            verifier.line(text, at.clone());
            if verifier.is_broken() {
                break;
            }
        }
        let mut verification = verifier.finish();
        if let (None, Some((seq, other))) = (&verification.broken, &chain.conflict) {
            verification.broken = Some(Break {
                at: chain.records[seq].1.clone(),
                seq: Some(*seq),
                id: None,
                reason: format!(
                    "two different exported records claim this seq (the other at {other}): one of them was forged or the chain was rewritten"
                ),
            });
        }
        out.push(ChainVerification {
            instance,
            verification,
        });
    }
    Ok(out)
}

/// Adds the audit records of one export request to their chains.
fn collect(request: &Value, at: &Location, chains: &mut BTreeMap<String, Chain>) {
    let empty = Vec::new();
    let arr = |v: Option<&Value>| -> Vec<Value> {
        v.and_then(Value::as_array).cloned().unwrap_or_default()
    };
    for resource_logs in request
        .get("resourceLogs")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
    {
        let instance = resource_logs
            .get("resource")
            .and_then(|r| attribute(r.get("attributes")?, INSTANCE))
            .unwrap_or_default()
            .to_string();
        for scope_logs in arr(resource_logs.get("scopeLogs")) {
            let scope = scope_logs
                .get("scope")
                .and_then(|s| s.get("name"))
                .and_then(Value::as_str);
            if scope != Some(SCOPE) {
                continue;
            }
            for log in arr(scope_logs.get("logRecords")) {
                let Some(body) = log.get("body").and_then(string_value) else {
                    continue;
                };
                let seq = serde_json::from_str::<Value>(body)
                    .ok()
                    .and_then(|v| v.get("seq").and_then(Value::as_u64));
                let chain = chains.entry(instance.clone()).or_default();
                // A body that is not a record sorts first and breaks there.
                let seq = seq.unwrap_or(0);
                match chain.records.get(&seq) {
                    Some((text, _)) if text == body => {}
                    Some(_) => {
                        if chain.conflict.as_ref().is_none_or(|(s, _)| seq < *s) {
                            chain.conflict = Some((seq, at.clone()));
                        }
                    }
                    None => {
                        chain.records.insert(seq, (body.to_string(), at.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{leaf_hash, GENESIS};

    /// A chain of `n` records from `GENESIS`, as file lines.
    fn chain(n: u64) -> Vec<String> {
        let mut prev = GENESIS.to_string();
        (0..n)
            .map(|seq| {
                let mut v = serde_json::json!({
                    "seq": seq, "id": format!("r{seq}"), "time": "2026-01-01T00:00:00.000Z",
                    "kind": "decision", "decision": "allow", "prev": prev,
                });
                let hash = leaf_hash(&v);
                v["hash"] = Value::String(hash.clone());
                prev = hash;
                v.to_string()
            })
            .collect()
    }

    /// One OTLP/JSON export request line holding `lines` for `instance`.
    fn request(instance: &str, lines: &[String]) -> String {
        let logs: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::json!({ "body": { "stringValue": l } }))
            .collect();
        serde_json::json!({ "resourceLogs": [{
            "resource": { "attributes": [
                { "key": "service.instance.id", "value": { "stringValue": instance } }
            ]},
            "scopeLogs": [
                { "scope": { "name": "another.scope" }, "logRecords": [{ "body": { "stringValue": "x" } }] },
                { "scope": { "name": SCOPE }, "logRecords": logs }
            ]
        }]})
        .to_string()
    }

    fn verify(text: &str) -> Vec<ChainVerification> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dump.json");
        std::fs::write(&path, text).unwrap();
        assert!(is_dump(&path));
        verify_dumps(&[&path], None, &[]).unwrap()
    }

    #[test]
    fn chains_are_told_apart_ordered_by_seq_and_retried_batches_count_once() {
        let a = chain(6);
        let b = chain(3);
        // Out of order, a batch delivered twice, two replicas interleaved.
        let text = [
            request("a", &a[3..]),
            request("b", &b),
            request("a", &a[..3]),
            request("a", &a[3..]),
        ]
        .join("\n");
        let chains = verify(&text);
        let found: Vec<(&str, u64, Option<u64>)> = chains
            .iter()
            .map(|c| {
                assert_eq!(c.verification.broken, None, "{c:?}");
                (
                    c.instance.as_str(),
                    c.verification.records,
                    c.verification.last_seq,
                )
            })
            .collect();
        assert_eq!(found, vec![("a", 6, Some(5)), ("b", 3, Some(2))]);
    }

    #[test]
    fn a_missing_record_and_two_records_with_one_seq_are_named() {
        let a = chain(5);
        let gap = [a[..2].to_vec(), a[3..].to_vec()].concat();
        let broken = verify(&request("a", &gap))
            .remove(0)
            .verification
            .broken
            .unwrap();
        assert_eq!(broken.seq, Some(3));
        assert!(broken.reason.contains("missing"), "{broken}");

        let mut forged = a.clone();
        forged[2] = forged[2].replace("allow", "deny");
        let text = [request("a", &a), request("a", &forged[2..3])].join("\n");
        let broken = verify(&text).remove(0).verification.broken.unwrap();
        assert_eq!(broken.seq, Some(2));
        assert!(
            broken.reason.contains("two different exported records"),
            "{broken}"
        );
        assert!(broken.reason.contains("dump.json:2"), "{broken}");
    }

    #[test]
    fn an_export_that_starts_mid_chain_is_trusted_at_its_first_prev() {
        let a = chain(8);
        let chains = verify(&request("a", &a[4..]));
        let v = &chains[0].verification;
        assert_eq!(
            (v.broken.as_ref(), v.first_seq, v.records),
            (None, Some(4), 4)
        );
    }

    #[test]
    fn audit_files_are_not_taken_for_dumps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-00000000000000000000.jsonl");
        std::fs::write(&path, chain(2).join("\n") + "\n").unwrap();
        assert!(!is_dump(&path));
    }
}
