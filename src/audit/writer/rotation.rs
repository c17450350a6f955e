//! Rotation of the audit file: when the file reaches `rotate_bytes`, a
//! signed checkpoint seals it, it is synced, and the next file (named by its
//! first sequence number) takes the records that follow.

use std::fs::File;
use std::sync::atomic::Ordering;

use super::super::files::{file_name, open_append};
use super::Chain;

impl Chain {
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
