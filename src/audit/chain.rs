//! The tamper evidence of the audit trail: canonical JSON, the hash chain
//! (each record's hash covers its canonical form, which includes the previous
//! record's hash) and signed checkpoints (HMAC here, Ed25519 in `signing`). Verification of a sequence of
//! lines lives here too, so that the server and the offline CLI agree.
//! It does not read or write files.

use hmac::{Hmac, Mac};

use super::signing::PublicKey;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev` of the very first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation for leaf hashes and checkpoint MACs.
const LEAF_DOMAIN: &[u8] = b"portcullis-audit-leaf-v1\n";
const CHECKPOINT_DOMAIN: &[u8] = b"portcullis-audit-checkpoint-v1\n";

/// Serialises a JSON value canonically: object keys sorted by their UTF-8
/// bytes, no insignificant whitespace, serde_json's string escaping. The
/// audit records hold only strings, integers, booleans, arrays and objects,
/// so number formatting is never ambiguous.
pub fn canonical(value: &Value) -> String {
    let mut out = Vec::with_capacity(512);
    write_canonical(value, None, &mut out);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Writes `value` canonically into `out`, leaving out the top-level member
/// named `skip`. Writes straight into one buffer: this runs for every
/// audited decision.
fn write_canonical(value: &Value, skip: Option<&str>, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().filter(|k| Some(k.as_str()) != skip).collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k.as_str()).expect("a string serialises");
                out.push(b':');
                write_canonical(&map[k.as_str()], None, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, None, out);
            }
            out.push(b']');
        }
        other => serde_json::to_writer(&mut *out, other).expect("a scalar serialises"),
    }
}

/// The hash of a record: SHA-256 over its canonical form without the `hash`
/// field (the form includes `prev`, the previous record's hash), hex.
pub fn leaf_hash(record: &Value) -> String {
    let mut form = Vec::with_capacity(1024);
    form.extend_from_slice(LEAF_DOMAIN);
    write_canonical(record, Some("hash"), &mut form);
    hex::encode(Sha256::digest(&form))
}

/// Seals a record for the audit file with one canonical serialisation: the
/// canonical form of `record` without its `hash` member (built in
/// `scratch`, which is cleared first) is hashed as [`leaf_hash`] does, and
/// the same bytes become the record's line, appended to `line` with the
/// `hash` member first (`{"hash":"<hex>",...}`, no line ending). Returns
/// the hash. Verification re-canonicalises what it reads, so the member
/// order of the line does not matter to it.
pub fn seal(record: &Value, scratch: &mut Vec<u8>, line: &mut Vec<u8>) -> String {
    scratch.clear();
    scratch.extend_from_slice(LEAF_DOMAIN);
    write_canonical(record, Some("hash"), scratch);
    seal_form(scratch, line)
}

/// [`seal`] for an audit record straight from its fields (no `Value`
/// built): the same bytes, the same hash (`super::canonical`).
pub fn seal_record(
    record: &super::AuditRecord,
    scratch: &mut Vec<u8>,
    line: &mut Vec<u8>,
) -> String {
    scratch.clear();
    scratch.extend_from_slice(LEAF_DOMAIN);
    super::canonical::write(record, scratch);
    seal_form(scratch, line)
}

/// Hashes the canonical form in `scratch` (after the leaf domain) and
/// appends the record's line to `line`, `hash` first.
fn seal_form(scratch: &[u8], line: &mut Vec<u8>) -> String {
    // Hex through a stack buffer: `hex::encode` builds its `String` one
    // `char` at a time, and this runs once per audited decision.
    let mut hex = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(scratch), &mut hex).expect("64 hex digits for 32 bytes");
    let form = &scratch[LEAF_DOMAIN.len()..];
    line.extend_from_slice(b"{\"hash\":\"");
    line.extend_from_slice(&hex);
    line.push(b'"');
    if form.len() > 2 {
        line.push(b',');
    }
    line.extend_from_slice(&form[1..]);
    String::from_utf8(hex.to_vec()).expect("hex digits are ASCII")
}

/// The secret that signs checkpoints. `Debug` never shows it.
#[derive(Clone)]
pub struct CheckpointKey {
    key: Vec<u8>,
    /// The key as versions before the one secret-file rule read the same
    /// file (every byte, a final line ending included), when that differs:
    /// checkpoints they signed still verify. Never used to sign.
    earlier_reading: Option<Vec<u8>>,
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointKey(***)")
    }
}

impl CheckpointKey {
    /// A key from raw bytes (at least 32).
    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() < 32 {
            return Err(format!(
                "the HMAC key has {} bytes; use at least 32 random bytes (e.g. `head -c 32 /dev/urandom > audit.key`; {})",
                bytes.len(),
                crate::authn::secret::RULE,
            ));
        }
        Ok(CheckpointKey {
            key: bytes,
            earlier_reading: None,
        })
    }

    /// Reads a key file by the secret-file rule (`crate::authn::secret`:
    /// the file's bytes, but for a final line ending after text).
    /// Checkpoints signed with the file's every byte (how earlier versions
    /// read it) still verify.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let file = std::fs::read(path)
            .map_err(|e| format!("cannot read the HMAC key file {}: {e}", path.display()))?;
        let secret = crate::authn::secret::secret(&file).to_vec();
        let mut key = Self::new(secret).map_err(|e| format!("{}: {e}", path.display()))?;
        if key.key != file {
            key.earlier_reading = Some(file);
        }
        Ok(key)
    }

    fn mac(&self) -> Hmac<Sha256> {
        Self::mac_with(&self.key)
    }

    fn mac_with(key: &[u8]) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length")
    }

    /// Signs "the chain up to record `seq` ends in `head`".
    pub fn sign(&self, seq: u64, head: &str) -> String {
        let mut mac = self.mac();
        mac.update(CHECKPOINT_DOMAIN);
        mac.update(format!("{seq}:{head}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Checks a checkpoint signature in constant time (with the key, or
    /// with the key file as earlier versions read it).
    pub fn verify(&self, seq: u64, head: &str, signature: &str) -> bool {
        let Ok(sig) = hex::decode(signature) else {
            return false;
        };
        std::iter::once(&self.key)
            .chain(self.earlier_reading.as_ref())
            .any(|key| {
                let mut mac = Self::mac_with(key);
                mac.update(CHECKPOINT_DOMAIN);
                mac.update(format!("{seq}:{head}").as_bytes());
                mac.verify_slice(&sig).is_ok()
            })
    }
}

/// Where a line came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (as given).
    pub file: String,
    /// 1-based line.
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// The first broken link found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// Where.
    pub at: Location,
    /// The sequence number the record claims (if it could be read).
    pub seq: Option<u64>,
    /// The record's id (if it could be read).
    pub id: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.at)?;
        if let Some(seq) = self.seq {
            write!(f, "record seq {seq}")?;
            if let Some(id) = &self.id {
                write!(f, " (id {id})")?;
            }
            write!(f, ": ")?;
        }
        f.write_str(&self.reason)
    }
}

/// The outcome of verifying a sequence of lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Records checked.
    pub records: u64,
    /// First and last sequence numbers checked.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The hash of the last good record.
    pub head: String,
    /// Checkpoints whose signature verified with the key.
    pub checkpoints_verified: u64,
    /// Checkpoints seen but not checked (no key given).
    pub checkpoints_unchecked: u64,
    /// The first broken link, if any; verification stops there.
    pub broken: Option<Break>,
    /// Where the newest file ends in an incomplete line (no newline): the
    /// last write of a process killed while writing (`kill -9`, the OOM
    /// killer). In `written` and `synced` durability its answers never
    /// left (an answer waits for its record's write). The records before
    /// it verified; the writer cuts the line off when it starts again. Not
    /// a break: an incomplete line anywhere else is one.
    pub torn_tail: Option<Location>,
}

/// Verifies records line by line, in order.
#[derive(Debug)]
pub struct Verifier<'k> {
    key: Option<&'k CheckpointKey>,
    /// Ed25519 keys the auditor trusts (never keys read from the chain).
    public_keys: &'k [PublicKey],
    /// The key id the last `signing_key` record announced.
    announced: Option<String>,
    expected_seq: Option<u64>,
    prev: Option<String>,
    /// Only records with seq in this range count (the chain is still
    /// followed from the start so that links are checked).
    range: (u64, u64),
    result: Verification,
}

impl<'k> Verifier<'k> {
    /// A verifier; `key` checks checkpoint signatures when given.
    pub fn new(key: Option<&'k CheckpointKey>) -> Self {
        Self::with_range(key, 0, u64::MAX)
    }

    /// A verifier that reports on records `from..=to` only.
    pub fn with_range(key: Option<&'k CheckpointKey>, from: u64, to: u64) -> Self {
        Verifier {
            key,
            public_keys: &[],
            announced: None,
            expected_seq: None,
            prev: None,
            range: (from, to),
            result: Verification::default(),
        }
    }

    /// Checks Ed25519 checkpoint signatures with `keys` (every key in force
    /// over the records checked: a chain whose key was rotated needs each).
    pub fn with_public_keys(mut self, keys: &'k [PublicKey]) -> Self {
        self.public_keys = keys;
        self
    }

    /// True once a break was found (later lines are ignored).
    pub fn is_broken(&self) -> bool {
        self.result.broken.is_some()
    }

    /// Checks the next line. A chain that starts at seq 0 must start from
    /// the genesis hash; a chain given from the middle is trusted at its
    /// first record's `prev`.
    pub fn line(&mut self, text: &str, at: Location) {
        if self.is_broken() {
            return;
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return self.fail(at, None, None, "not a JSON object".into()),
            Err(e) => return self.fail(at, None, None, format!("not a JSON record: {e}")),
        };
        let seq = value.get("seq").and_then(Value::as_u64);
        let id = value.get("id").and_then(Value::as_str).map(str::to_string);
        let (Some(seq), Some(stored), Some(prev)) = (
            seq,
            value.get("hash").and_then(Value::as_str),
            value.get("prev").and_then(Value::as_str),
        ) else {
            return self.fail(at, seq, id, "lacks seq, prev or hash".into());
        };
        if let Some(expected) = self.expected_seq {
            if seq != expected {
                let reason = if seq > expected {
                    format!(
                        "expected seq {expected}: {} record(s) before this one are missing or out of order",
                        seq - expected
                    )
                } else {
                    format!("expected seq {expected}: records are out of order or repeated")
                };
                return self.fail(at, Some(seq), id, reason);
            }
        } else if seq == 0 && prev != GENESIS {
            return self.fail(
                at,
                Some(seq),
                id,
                "the first record does not start from the genesis hash".into(),
            );
        }
        if let Some(expected_prev) = &self.prev {
            if prev != expected_prev {
                return self.fail(
                    at,
                    Some(seq),
                    id,
                    "its prev hash does not match the previous record's hash (a record before it was changed, removed or reordered)".into(),
                );
            }
        }
        let computed = leaf_hash(&value);
        if computed != stored {
            return self.fail(
                at,
                Some(seq),
                id,
                "its content does not match its hash (the record was edited)".into(),
            );
        }
        let kind = value.get("kind").and_then(Value::as_str);
        if kind == Some("signing_key") {
            if let Err(reason) = self.signing_key(&value) {
                return self.fail(at, Some(seq), id, reason);
            }
        }
        if kind == Some("checkpoint") {
            match self.checkpoint(&value, prev) {
                Err(reason) => return self.fail(at, Some(seq), id, reason),
                Ok(checked) if self.in_range(seq) => {
                    if checked {
                        self.result.checkpoints_verified += 1;
                    } else {
                        self.result.checkpoints_unchecked += 1;
                    }
                }
                Ok(_) => {}
            }
        }
        if self.in_range(seq) {
            self.result.records += 1;
            self.result.first_seq.get_or_insert(seq);
            self.result.last_seq = Some(seq);
        }
        self.result.head = stored.to_string();
        self.prev = Some(stored.to_string());
        self.expected_seq = Some(seq.saturating_add(1));
    }

    /// A `signing_key` record: its id must be its key's, and it is the key
    /// in force for the checkpoints after it.
    fn signing_key(&mut self, value: &Value) -> Result<(), String> {
        let id = value.get("checkpoint_key").and_then(Value::as_str);
        let public = value
            .get("public_key")
            .and_then(Value::as_str)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|raw| PublicKey::from_raw(&raw));
        match (id, public) {
            (Some(id), Some(public)) if public.id() == id => {
                self.announced = Some(id.to_string());
                Ok(())
            }
            _ => Err(
                "signing_key record lacks a 32-byte public_key matching its checkpoint_key".into(),
            ),
        }
    }

    /// A checkpoint: it must cover the record before it and carry an HMAC,
    /// an Ed25519 signature or both; each signature a key was given for
    /// must verify. `Ok(true)` when a signature was checked.
    fn checkpoint(&self, value: &Value, prev: &str) -> Result<bool, String> {
        let text = |field: &str| value.get(field).and_then(Value::as_str);
        let (Some(head), Some(covered)) = (
            text("checkpoint_head"),
            value.get("checkpoint_seq").and_then(Value::as_u64),
        ) else {
            return Err("checkpoint lacks checkpoint_seq or checkpoint_head".into());
        };
        let seq = value.get("seq").and_then(Value::as_u64);
        if covered.checked_add(1) != seq || head != prev {
            return Err("checkpoint does not cover the record before it".into());
        }
        let (mac, sig) = (text("checkpoint_mac"), text("checkpoint_sig"));
        if mac.is_none() && sig.is_none() {
            return Err("checkpoint lacks a signature (checkpoint_mac or checkpoint_sig)".into());
        }
        let mut checked = false;
        if let (Some(key), Some(mac)) = (self.key, mac) {
            if !key.verify(covered, head, mac) {
                return Err("checkpoint signature does not verify with the key (the chain was rewritten, or the key is wrong)".into());
            }
            checked = true;
        }
        if let Some(sig) = sig {
            let key_id = text("checkpoint_key").unwrap_or_default();
            if self.announced.as_deref().is_some_and(|a| a != key_id) {
                return Err(format!(
                    "checkpoint signed by key {key_id}, but the chain announced key {} (a signing_key record)",
                    self.announced.as_deref().unwrap_or_default()
                ));
            }
            if !self.public_keys.is_empty() {
                let Some(public) = self.public_keys.iter().find(|k| k.id() == key_id) else {
                    return Err(format!(
                        "checkpoint signed by key {key_id}, which is not among the given public keys (across a key rotation, give each key in force)"
                    ));
                };
                if !public.verify(covered, head, sig) {
                    return Err(format!("checkpoint signature does not verify with public key {key_id} (the chain was rewritten)"));
                }
                checked = true;
            }
        }
        Ok(checked)
    }

    fn in_range(&self, seq: u64) -> bool {
        seq >= self.range.0 && seq <= self.range.1
    }

    /// Past the end of the requested range: nothing more to check.
    pub fn done(&self) -> bool {
        self.is_broken() || self.prev_seq().is_some_and(|s| s >= self.range.1)
    }

    /// Once every line is read: the chain must reach `head`, the last
    /// record a live writer has written to the files (or the range's end,
    /// when before it); a chain that ends before it was cut short, and is
    /// broken at `at`, where the next record belonged.
    pub fn reaches(&mut self, head: u64, at: Location) {
        let end = head.min(self.range.1);
        let last = self.prev_seq();
        if self.is_broken() || end < self.range.0 || last.is_some_and(|l| l >= end) {
            return;
        }
        let missing = last.map_or(0, |l| l + 1).max(self.range.0);
        let files = match last {
            Some(l) => format!("the files end at seq {l}"),
            None => "the files hold no records".to_string(),
        };
        let reason = format!(
            "{files}, but the writer's head is seq {head}: records {missing}..{end} are missing (the files were cut short or removed)"
        );
        self.fail(at, Some(missing), None, reason);
    }

    fn prev_seq(&self) -> Option<u64> {
        self.expected_seq.map(|s| s.saturating_sub(1))
    }

    fn fail(&mut self, at: Location, seq: Option<u64>, id: Option<String>, reason: String) {
        self.result.broken = Some(Break {
            at,
            seq,
            id,
            reason,
        });
    }

    /// The result so far.
    pub fn finish(self) -> Verification {
        self.result
    }
}

#[cfg(test)]
mod tests {

    /// The canonical form is what every stored hash was computed over: it
    /// must never change. This is the original formulation, kept as the
    /// reference.
    fn reference_canonical(value: &Value, out: &mut String) {
        use std::fmt::Write as _;
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    reference_canonical(&map[k.as_str()], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    reference_canonical(item, out);
                }
                out.push(']');
            }
            other => {
                let _ = write!(out, "{other}");
            }
        }
    }

    #[test]
    fn a_sealed_line_carries_the_leaf_hash_and_reads_back_as_the_same_record() {
        let values = [
            serde_json::json!({"z": 1, "a": [true, "x\"y\n\u{1}"], "hash": "", "m": {"b": -2, "a": "é😀"}}),
            serde_json::json!({"seq": 3, "prev": "00", "kind": "decision"}),
            serde_json::json!({}),
        ];
        let (mut scratch, mut line) = (Vec::new(), b"earlier\n".to_vec());
        for v in values {
            line.truncate(8);
            let hash = seal(&v, &mut scratch, &mut line);
            assert_eq!(hash, leaf_hash(&v));
            let read: Value = serde_json::from_slice(&line[8..]).expect("the line is JSON");
            assert_eq!(read["hash"], Value::String(hash.clone()), "{read}");
            assert_eq!(leaf_hash(&read), hash, "the line re-verifies");
            let mut expected = v.clone();
            expected["hash"] = Value::String(hash);
            assert_eq!(read, expected);
        }
    }

    #[test]
    fn canonical_form_and_leaf_hash_match_the_reference() {
        let values = [
            serde_json::json!({"z": 1, "a": [true, null, "x\"y\n\u{1}"], "hash": "h", "m": {"b": -2, "a": "é😀"}}),
            serde_json::json!({"seq": 18446744073709551615u64, "prev": "00", "kind": "decision", "hash": ""}),
            serde_json::json!([{"b": 1, "a": 2}, "s", 3]),
            serde_json::json!("plain"),
        ];
        for v in values {
            let mut expected = String::new();
            reference_canonical(&v, &mut expected);
            assert_eq!(canonical(&v), expected);
            let mut without = v.clone();
            if let Value::Object(map) = &mut without {
                map.remove("hash");
            }
            let mut form = String::new();
            reference_canonical(&without, &mut form);
            let mut h = Sha256::new();
            h.update(LEAF_DOMAIN);
            h.update(form.as_bytes());
            assert_eq!(leaf_hash(&v), hex::encode(h.finalize()));
        }
    }
    use super::*;
    use serde_json::json;

    fn key() -> CheckpointKey {
        CheckpointKey::new(vec![7u8; 32]).unwrap()
    }

    /// Builds a chain of `n` records (a checkpoint as the last one when
    /// `checkpoint`), returned as lines.
    fn chain(n: u64, checkpoint: bool) -> Vec<String> {
        let mut prev = GENESIS.to_string();
        let mut lines = Vec::new();
        for seq in 0..n {
            let mut v = json!({"seq": seq, "id": format!("r{seq}"), "kind": "decision",
                               "principal": "User::\"alice\"", "prev": prev});
            if checkpoint && seq == n - 1 {
                v = json!({"seq": seq, "id": format!("r{seq}"), "kind": "checkpoint",
                           "checkpoint_seq": seq - 1, "checkpoint_head": prev,
                           "checkpoint_mac": key().sign(seq - 1, &prev), "prev": prev});
            }
            let h = leaf_hash(&v);
            v["hash"] = Value::String(h.clone());
            lines.push(v.to_string());
            prev = h;
        }
        lines
    }

    fn verify(lines: &[String]) -> Verification {
        let k = key();
        let mut v = Verifier::new(Some(&k));
        for (i, l) in lines.iter().enumerate() {
            v.line(
                l,
                Location {
                    file: "f".into(),
                    line: i + 1,
                },
            );
        }
        v.finish()
    }

    #[test]
    fn canonical_sorts_keys_recursively() {
        let v = json!({"b": 1, "a": {"d": [1, "x"], "c": true}});
        assert_eq!(canonical(&v), r#"{"a":{"c":true,"d":[1,"x"]},"b":1}"#);
    }

    #[test]
    fn intact_chain_verifies_with_checkpoint() {
        let r = verify(&chain(5, true));
        assert_eq!(r.broken, None);
        assert_eq!(r.records, 5);
        assert_eq!(r.checkpoints_verified, 1);
    }

    #[test]
    fn edited_record_is_named() {
        let mut lines = chain(5, false);
        lines[2] = lines[2].replace("alice", "mallory");
        let b = verify(&lines).broken.unwrap();
        assert_eq!((b.seq, b.at.line), (Some(2), 3));
        assert!(b.reason.contains("edited"), "{b}");
    }

    #[test]
    fn deleted_record_is_named_at_the_gap() {
        let mut lines = chain(5, false);
        lines.remove(2);
        let b = verify(&lines).broken.unwrap();
        assert_eq!((b.seq, b.at.line), (Some(3), 3));
        assert!(b.reason.contains("missing"), "{b}");
    }

    #[test]
    fn swapped_records_are_named() {
        let mut lines = chain(5, false);
        lines.swap(1, 2);
        let b = verify(&lines).broken.unwrap();
        assert_eq!((b.seq, b.at.line), (Some(2), 2));
        assert!(b.reason.contains("out of order"), "{b}");
    }

    #[test]
    fn rewritten_chain_fails_the_checkpoint() {
        // An attacker who rewrites every hash cannot forge the checkpoint.
        let lines = chain(5, true);
        let mut prev = GENESIS.to_string();
        let mut forged = Vec::new();
        for l in &lines {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v["prev"] = Value::String(prev.clone());
            if v["kind"] == "checkpoint" {
                v["checkpoint_head"] = Value::String(prev.clone());
            } else {
                v["principal"] = Value::String("User::\"mallory\"".into());
            }
            let h = leaf_hash(&v);
            v["hash"] = Value::String(h.clone());
            forged.push(v.to_string());
            prev = h;
        }
        let b = verify(&forged).broken.unwrap();
        assert_eq!(b.seq, Some(4));
        assert!(b.reason.contains("signature"), "{b}");
    }

    #[test]
    fn hostile_numbers_are_reported_not_panicked_on() {
        let mut lines = chain(3, false);
        let max = u64::MAX;
        let mut v = json!({"seq": max, "id": "x", "kind": "checkpoint", "checkpoint_seq": max,
                           "checkpoint_head": "h", "checkpoint_mac": "m", "prev": "p"});
        v["hash"] = Value::String(leaf_hash(&v));
        lines.insert(0, v.to_string());
        let b = verify(&lines).broken.unwrap();
        assert_eq!(b.at.line, 1, "{b}");
    }

    #[test]
    fn short_keys_are_refused_and_debug_is_masked() {
        assert!(CheckpointKey::new(vec![1; 8]).is_err());
        assert_eq!(format!("{:?}", key()), "CheckpointKey(***)");
    }

    #[test]
    fn audit_key_file_ending_in_a_tab_keeps_all_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let mut bytes = vec![0x9du8; 31];
        bytes.push(b'\t');
        std::fs::write(&path, &bytes).unwrap();
        let from_file = CheckpointKey::from_file(&path).unwrap();
        let exact = CheckpointKey::new(bytes).unwrap();
        assert_eq!(from_file.sign(3, "h"), exact.sign(3, "h"));
    }

    #[test]
    fn a_text_audit_key_loses_its_line_ending_and_older_checkpoints_still_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        std::fs::write(&path, format!("{hex}\n")).unwrap();
        let key = CheckpointKey::from_file(&path).unwrap();
        let text = CheckpointKey::new(hex.as_bytes().to_vec()).unwrap();
        assert_eq!(key.sign(7, "h"), text.sign(7, "h"), "signs with the text");
        // Earlier versions signed with every byte of the file.
        let earlier = CheckpointKey::new(format!("{hex}\n").into_bytes()).unwrap();
        assert!(key.verify(7, "h", &earlier.sign(7, "h")));
        assert!(!text.verify(7, "h", &earlier.sign(7, "h")));
        assert!(!key.verify(
            7,
            "h",
            &CheckpointKey::new(vec![1; 32]).unwrap().sign(7, "h")
        ));
    }
}
