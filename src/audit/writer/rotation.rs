//! Rotation of the audit file: when the file reaches `rotate_bytes`, a
//! signed checkpoint seals it, it is synced, and the next file (named by its
//! first sequence number) takes the records that follow. And when the file
//! is found gone from its path, a new one takes them at once.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::super::files::{file_name, open_append};
use super::Chain;

/// How often the writer checks that its file is still the one its path
/// names (an `fstat(2)` and a `stat(2)`).
pub(super) const IN_PLACE_CHECK: Duration = Duration::from_secs(1);

impl Chain {
    /// Checks, at most every [`IN_PLACE_CHECK`], that the file being
    /// appended to is still the one its path names, whole. A file moved
    /// aside, removed, replaced or cut short under the running writer (an archiving job, a
    /// log rotator, an operator) would take every record that follows out
    /// of the directory: into a file no reader of the directory sees, or
    /// into none. Then a new file, named by the first record not yet
    /// written, takes them, and the event is logged at error level and
    /// counted (`portcullis_audit_files_replaced`). What was written to the
    /// old file since it left stays with it (or is gone, if it was
    /// removed); `AuditService/Verify` reports those records missing.
    pub(super) fn keep_file_in_place(&mut self) {
        if self.file_checked.elapsed() < IN_PLACE_CHECK {
            return;
        }
        self.file_checked = Instant::now();
        let ours = self.file.metadata();
        let named = std::fs::metadata(&self.path);
        // The same file, and none of what was written cut off it (a
        // truncation in place would have the next record follow a gap, and
        // a failed write's roll-back pad the file with zeros).
        if let (Ok(a), Ok(b)) = (&ours, &named) {
            if (a.dev(), a.ino()) == (b.dev(), b.ino()) && a.len() >= self.committed_bytes {
                return;
            }
        }
        // The next file is named by the first record not yet written.
        let path = self.dir.join(file_name(self.committed.0));
        match open_append(&path) {
            Ok(file) => {
                self.counters.files_replaced.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    file = %self.path.display(),
                    next_file = %path.display(),
                    "the audit file was moved, removed, replaced or cut short while being written; the records that follow go to a new file (the ones written since are not in the directory)"
                );
                self.file = file;
                self.path = path;
                self.file_bytes = 0;
                self.committed_bytes = 0;
                self.records_in_file = self.published.len() as u64;
            }
            Err(e) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(file = %path.display(), error = %e, "the audit file was moved, removed, replaced or cut short, and a new one cannot be opened; still appending to the old one");
            }
        }
    }

    pub(super) fn rotation_due(&self) -> bool {
        self.records_in_file > 0 && self.file_bytes + self.pending.len() as u64 >= self.rotate_bytes
    }

    /// Seals the current file with a checkpoint and starts the next one.
    pub(super) fn rotate(&mut self) {
        // Not through `checkpoint`, which would rotate again.
        if let Some(record) = self.signs().then(|| self.checkpoint_record()).flatten() {
            let records_before = self.records_in_file;
            self.records_in_file = 0; // keep `append` from rotating
            self.append(record);
            self.records_in_file += records_before;
        }
        if !self.flush() {
            // The write failed; keep appending to the same file, which
            // gets its sealing checkpoint at the next rotation.
            return;
        }
        self.sync_sealed_file();
        let path = self.dir.join(file_name(self.next_seq));
        match open_append(&path) {
            Ok(file) => {
                tracing::info!(file = %path.display(), first_seq = self.next_seq, "audit file rotated");
                self.file = file;
                self.path = path;
                self.file_bytes = 0;
                self.committed_bytes = 0;
                self.records_in_file = 0;
            }
            Err(e) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(file = %path.display(), error = %e, "cannot open a new audit file; still appending to the old one");
            }
        }
    }

    /// Syncs the file being sealed at rotation: on the runtime in the
    /// blocking pool (the next file takes records meanwhile), else here.
    fn sync_sealed_file(&self) {
        let sync = |file: &File| {
            if let Err(e) = file.sync_all() {
                tracing::error!(error = %e, "cannot sync the audit file at rotation");
            }
        };
        match self.on_runtime.then(|| self.file.try_clone()) {
            Some(Ok(file)) => drop(tokio::task::spawn_blocking(move || sync(&file))),
            Some(Err(_)) | None => sync(&self.file),
        }
    }
}
