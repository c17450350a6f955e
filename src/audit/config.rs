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
    /// Records that may wait for the writer.
    pub queue_size: usize,
    /// When a record cannot be queued: `drop` (serve, count, log) or
    /// `fail_closed` (deny the request with 503).
    pub on_full: super::OnFull,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            directory: PathBuf::from("audit"),
            rotate_bytes: 64 * 1024 * 1024,
            checkpoint_every: 1000,
            hmac_key_file: None,
            queue_size: 16_384,
            on_full: super::OnFull::Drop,
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
        problems
    }
}
