//! The `audit:` section of the configuration: where and how records are
//! written, and its checks.

use std::path::PathBuf;

use serde::Deserialize;

/// The audit trail: where and how records are written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Directory of the audit files (created if missing). One process per
    /// directory.
    pub directory: PathBuf,
    /// Start a new file once the current one reaches this many bytes.
    pub rotate_bytes: u64,
    /// Sign a checkpoint after this many records (and at rotation and stop).
    pub checkpoint_every: u64,
    /// File holding the HMAC key that signs checkpoints (at least 32 bytes).
    /// Without it checkpoints are not written. The key itself is never
    /// logged.
    pub hmac_key_file: Option<PathBuf>,
    /// File holding the Ed25519 private key (PKCS#8 PEM) that signs
    /// checkpoints, so that they verify with the public key alone. With
    /// `hmac_key_file` too, checkpoints carry both signatures.
    pub signing_key_file: Option<PathBuf>,
    /// An Ed25519 key in a PKCS#11 token that signs checkpoints instead of
    /// `signing_key_file` (see [`super::pkcs11`]).
    pub signing_key_pkcs11: Option<super::pkcs11::Pkcs11Config>,
    /// Records that may wait for the writer.
    pub queue_size: usize,
    /// When a record cannot be queued: `drop` (serve, count, log) or
    /// `fail_closed` (deny the request with 503).
    pub on_full: super::OnFull,
    /// When a decision's answer may leave: `queued`, `written` (default)
    /// or `synced`; see [`Durability`].
    pub durability: Durability,
    /// Which ShouldRateLimit answers are recorded (`ok_sample_every`); see
    /// [`super::sampling`].
    pub ratelimit: super::sampling::RateLimitAudit,
    /// How long an answer waits for its record's write at most,
    /// milliseconds; 0 (the default): as long as the write takes (the
    /// request deadline still bounds it). On expiry the answer leaves in
    /// `drop` mode and is a 503 in `fail_closed` mode; counted either way.
    pub write_timeout_ms: u64,
    /// Ship every written record to an OpenTelemetry collector as an OTLP
    /// log (see [`super::export`]); none by default.
    pub export: Option<super::export::ExportConfig>,
}

/// How far a decision's record must get before the answer leaves.
///
/// In `fail_closed` mode every answer waits at least until its record is
/// written, whatever this says: no allowed answer leaves unrecorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// The record is queued for the writer; the answer does not wait. The
    /// fastest; a crash (`kill -9`) loses what was still queued.
    Queued,
    /// The record has been handed to the operating system (`write(2)`
    /// returned) before the answer leaves: it survives `kill -9` of the
    /// process, not a power loss. Group commit: the writer appends
    /// whatever is queued with one write and then wakes every waiter.
    #[default]
    Written,
    /// As `written`, followed by `fdatasync(2)` of the file before the
    /// answers leave (one sync per group): survives power loss.
    Synced,
}

impl Durability {
    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Queued => "queued",
            Durability::Written => "written",
            Durability::Synced => "synced",
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            directory: PathBuf::from("audit"),
            rotate_bytes: 64 * 1024 * 1024,
            checkpoint_every: 1000,
            hmac_key_file: None,
            signing_key_file: None,
            signing_key_pkcs11: None,
            queue_size: 16_384,
            on_full: super::OnFull::Drop,
            durability: Durability::Written,
            ratelimit: super::sampling::RateLimitAudit::default(),
            write_timeout_ms: 0,
            export: None,
        }
    }
}

impl AuditConfig {
    /// Every problem with this section, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.rotate_bytes < 4096 {
            problems.push("audit.rotate_bytes: at least 4096".to_string());
        }
        if self.checkpoint_every == 0 {
            problems.push("audit.checkpoint_every: at least 1".to_string());
        }
        if self.queue_size == 0 || self.queue_size > 1 << 24 {
            problems.push("audit.queue_size: between 1 and 16777216".to_string());
        }
        if self.directory.as_os_str().is_empty() {
            problems.push("audit.directory: must not be empty".to_string());
        }
        problems.extend(self.ratelimit.problems());
        if let Some(pkcs11) = &self.signing_key_pkcs11 {
            if self.signing_key_file.is_some() {
                problems.push("audit: give signing_key_file or signing_key_pkcs11, not both (one key signs the checkpoints)".into());
            }
            problems.extend(pkcs11.problems());
        }
        if let Some(export) = &self.export {
            problems.extend(export.problems());
        }
        problems
    }
}
