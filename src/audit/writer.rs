//! The audit writer: it owns the audit files. It takes records from the
//! bounded queue in batches, chains them (seq, prev, hash), appends each
//! batch with one write (group commit: whatever is queued when the writer
//! runs goes in one `write(2)`, then one `fdatasync(2)` in `synced` mode),
//! wakes every answer waiting for a record of the batch with the outcome,
//! signs a checkpoint every N records, at rotation and at stop, and
//! publishes written records for `Tail`. At start it resumes the chain from
//! the last record on disk.
//!
//! Where it runs ([`Driver`]): in `queued` and `written` durability, as a
//! task on the server's runtime, where handing it a record costs no thread
//! wake-up and a burst of answers shares one write (a `write(2)` to the page
//! cache does not wait for the disk; the sync of a sealed file at rotation
//! goes to the blocking pool). In `synced` durability, or when checkpoints
//! are signed by a PKCS#11 token, each of which waits for a device, on a
//! thread of its own, so that no answer waits behind that device but its
//! own.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::chain::{seal_record, CheckpointKey};
pub use super::files::{list_files, FILE_PREFIX, FILE_SUFFIX};
use super::files::{open_append, resume};
use super::signing::{Signer, SigningKey};
use super::{AuditRecord, AuditSink, Counters, Head, Kind, Message};
use crate::audit::config::{AuditConfig, Durability};

mod rotation;

const LOCK_FILE: &str = ".lock";
/// Records taken from the queue per write.
const BATCH: usize = 4096;

/// Why the audit trail could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The directory or a file could not be used.
    #[error("audit directory {dir}: {message}; set audit.directory to a directory this process may write (a relative path resolves against the config file's directory, often a read-only mount in a cluster)")]
    Directory { dir: PathBuf, message: String },
    /// The directory, or a directory above it, is a file.
    #[error("{}", super::files::not_a_directory(dir, file))]
    NotADirectory {
        /// The audit directory.
        dir: PathBuf,
        /// The file in its place: `dir` itself or a path above it.
        file: PathBuf,
    },
    /// Another process holds the directory.
    #[error("audit directory {0} is in use by another Portcullis process (two writers would break the chain); give each process its own audit.directory")]
    Locked(PathBuf),
    /// The HMAC key is unusable.
    #[error("audit.hmac_key_file: {0}")]
    Key(String),
    /// The Ed25519 signing key is unusable.
    #[error("audit.signing_key_file: {0}")]
    SigningKey(String),
    /// The PKCS#11 token or its key is unusable.
    #[error("{0}")]
    Pkcs11(String),
    /// The export to a collector cannot start.
    #[error("{0}")]
    Export(String),
    /// The last record on disk is damaged: the chain cannot continue from it.
    #[error("audit file {file}: the last record is damaged ({reason}); run `portcullis audit verify` on the directory's files, and move them aside to start a new chain")]
    DamagedTail { file: PathBuf, reason: String },
}

/// The writer, owned by the server; `stop` flushes and ends it.
#[derive(Debug)]
pub struct AuditWriter {
    tx: mpsc::Sender<Message>,
    driver: Option<Driver>,
    export: Option<super::export::Exporter>,
}

/// Where the writer runs (see the module documentation).
#[derive(Debug)]
enum Driver {
    /// A thread of its own: `synced` durability or a PKCS#11 signer.
    Thread(std::thread::JoinHandle<()>),
    /// A task on the runtime that started it.
    Task(tokio::task::JoinHandle<()>),
}

impl AuditWriter {
    /// Writes everything queued so far, signs a final checkpoint, syncs
    /// the file and ends the thread; then gives the export its
    /// `timeout_ms` to send what it holds.
    pub async fn stop(mut self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Message::Stop(ack)).await.is_ok() {
            let _ = done.await;
        }
        match self.driver.take() {
            Some(Driver::Thread(thread)) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            Some(Driver::Task(task)) => {
                let _ = task.await;
            }
            None => {}
        }
        if let Some(export) = self.export.take() {
            export.stop().await;
        }
    }
}

/// Opens the audit directory, resumes the chain and starts the writer.
pub fn start(config: &AuditConfig) -> Result<(AuditSink, AuditWriter), StartError> {
    let dir = config.directory.clone();
    let dir_err = |message: String| StartError::Directory {
        dir: dir.clone(),
        message,
    };
    super::files::create_directory(&dir)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| dir_err(format!("cannot open {LOCK_FILE}: {e}")))?;
    if lock.try_lock().is_err() {
        return Err(StartError::Locked(dir));
    }
    let key = config
        .hmac_key_file
        .as_deref()
        .map(CheckpointKey::from_file)
        .transpose()
        .map_err(StartError::Key)?;
    let signer = match (&config.signing_key_file, &config.signing_key_pkcs11) {
        (Some(file), _) => Some(Signer::File(
            SigningKey::from_file(file).map_err(StartError::SigningKey)?,
        )),
        (None, Some(token)) => Some(Signer::Token(
            super::pkcs11::TokenKey::open(token).map_err(StartError::Pkcs11)?,
        )),
        (None, None) => None,
    };
    if key.is_none() && signer.is_none() {
        tracing::warn!(
            directory = %dir.display(),
            "audit checkpoints are not signed: set audit.signing_key_file (or audit.hmac_key_file) so that a rewritten chain is detectable"
        );
    }

    let (feed, exporter, export) = match &config.export {
        Some(c) => {
            let (feed, exporter, status) = super::export::start(c).map_err(StartError::Export)?;
            (Some(feed), Some(exporter), Some(status))
        }
        None => (None, None, None),
    };
    let (next_seq, prev, path) = resume(&dir, &dir_err)?;
    let file =
        open_append(&path).map_err(|e| dir_err(format!("cannot open {}: {e}", path.display())))?;
    let file_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    tracing::info!(
        directory = %dir.display(),
        file = %path.display(),
        next_seq,
        "audit trail ready"
    );

    let (tx, rx) = mpsc::channel(config.queue_size);
    let (tail, _) = broadcast::channel(1024);
    let counters = Arc::new(Counters::default());
    let healthy = Arc::new(AtomicBool::new(true));
    let head = Arc::new(Mutex::new(Head {
        next_seq,
        hash: prev.clone(),
        file: path.display().to_string(),
    }));
    let sink = AuditSink {
        tx: tx.clone(),
        mode: config.on_full,
        durability: config.durability,
        write_timeout: (config.write_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(config.write_timeout_ms)),
        capacity: config.queue_size,
        healthy: Arc::clone(&healthy),
        counters: Arc::clone(&counters),
        head: Arc::clone(&head),
        tail: tail.clone(),
        directory: dir.clone(),
        key: key.clone(),
        ed25519: signer.is_some(),
        ratelimit: Arc::new(super::sampling::RateLimitSampler::new(config.ratelimit)),
        export,
    };
    let mut state = Chain {
        dir,
        file,
        path,
        file_bytes,
        committed_bytes: file_bytes,
        records_in_file: u64::from(file_bytes > 0),
        next_seq,
        prev: prev.clone(),
        committed: (next_seq, prev, 0),
        since_checkpoint: 0,
        pending: Vec::new(),
        scratch: Vec::with_capacity(1024),
        published: Vec::new(),
        waiting: Vec::new(),
        failed_writes: 0,
        file_checked: std::time::Instant::now(),
        sync: config.durability == Durability::Synced,
        on_runtime: false,
        key,
        signer,
        rotate_bytes: config.rotate_bytes,
        checkpoint_every: config.checkpoint_every,
        counters,
        healthy,
        head,
        tail,
        export: feed,
        _lock: lock,
    };
    // A device wait (fdatasync, a token) keeps the writer off the runtime.
    let waits_for_device = state.sync || matches!(state.signer, Some(Signer::Token(_)));
    let driver = match tokio::runtime::Handle::try_current() {
        Ok(runtime) if !waits_for_device => {
            state.on_runtime = true;
            Driver::Task(runtime.spawn(state.run_task(rx)))
        }
        _ => Driver::Thread(
            std::thread::Builder::new()
                .name("portcullis-audit".into())
                .spawn(move || state.run_thread(rx))
                .map_err(|e| StartError::Directory {
                    dir: config.directory.clone(),
                    message: format!("cannot start the writer thread: {e}"),
                })?,
        ),
    };
    Ok((
        sink,
        AuditWriter {
            tx,
            driver: Some(driver),
            export: exporter,
        },
    ))
}

struct Chain {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    file_bytes: u64,
    committed_bytes: u64,
    records_in_file: u64,
    next_seq: u64,
    prev: String,
    /// `(next_seq, prev, since_checkpoint)` after the last successful write,
    /// to roll back to when a write fails (so the chain on disk has no gap).
    committed: (u64, String, u64),
    since_checkpoint: u64,
    pending: Vec<u8>,
    /// Reused for each record's canonical form (`chain::seal_record`).
    scratch: Vec<u8>,
    published: Vec<Arc<AuditRecord>>,
    /// Answers waiting for records in `pending`: told the outcome of the
    /// write that takes them.
    waiting: Vec<oneshot::Sender<bool>>,
    /// Failed writes so far, to tell a waiter whose records straddled a
    /// failed write (at rotation) that they were not all written.
    failed_writes: u64,
    /// When `rotation::keep_file_in_place` last looked.
    file_checked: std::time::Instant,
    /// `fdatasync(2)` after each write, before waking the waiters.
    sync: bool,
    /// Runs as a task on the runtime: blocking syncs go to the blocking
    /// pool.
    on_runtime: bool,
    key: Option<CheckpointKey>,
    signer: Option<Signer>,
    rotate_bytes: u64,
    checkpoint_every: u64,
    counters: Arc<Counters>,
    healthy: Arc<AtomicBool>,
    head: Arc<Mutex<Head>>,
    tail: broadcast::Sender<Arc<AuditRecord>>,
    /// Written records go to the export too, when configured.
    export: Option<super::export::Feed>,
    _lock: File,
}

/// Whether the task writer, woken by a record, lets the ready tasks run
/// before it writes (group commit): when its last write took more than one
/// message (`last_taken`), or when more requests are `in_progress` than
/// have their records `queued` (the others may queue theirs in this pass of
/// the scheduler).
fn under_load(last_taken: usize, in_progress: u64, queued: u64) -> bool {
    last_taken > 1 || in_progress > queued
}

impl Chain {
    /// The writer on a thread of its own.
    fn run_thread(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut stop = None;
        self.announce_signing_key();
        while let Some(first) = rx.blocking_recv() {
            self.take(first, &mut rx, &mut stop);
            if stop.is_some() {
                break;
            }
            self.flush();
        }
        self.finish(rx, stop);
    }

    /// The writer as a task on the runtime. Woken by a record under load,
    /// it first lets the other tasks that are ready run (answers being
    /// decided on this worker queue their records meanwhile), so that one
    /// write takes them all instead of one write per answer. Under load
    /// means: the last write took more than one message, or more requests
    /// are in progress (`portcullis_requests_in_progress`) than have
    /// records queued. Otherwise, as at a low request rate, it writes at
    /// once: a yield would only cost a pass of the scheduler and a poll of
    /// the I/O driver that find nothing more to take.
    async fn run_task(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut stop = None;
        self.announce_signing_key();
        let mut last_taken = 0;
        while let Some(first) = rx.recv().await {
            // The request whose record woke the writer is in progress (it
            // waits for the write), as is each one whose record is queued.
            let queued = rx.len() as u64 + 1;
            if under_load(
                last_taken,
                crate::metrics::global().requests_in_progress(),
                queued,
            ) {
                tokio::task::yield_now().await;
            }
            last_taken = self.take(first, &mut rx, &mut stop);
            if stop.is_some() {
                break;
            }
            self.flush();
        }
        self.finish(rx, stop);
    }

    /// Appends `first` and what else is queued now, up to [`BATCH`]
    /// messages; a stop request goes to `stop`. Returns how many messages
    /// it took.
    fn take(
        &mut self,
        first: Message,
        rx: &mut mpsc::Receiver<Message>,
        stop: &mut Option<oneshot::Sender<()>>,
    ) -> usize {
        let mut message = Some(first);
        let mut taken = 0;
        while let Some(m) = message.take() {
            match m {
                Message::Record(r) => self.append(*r),
                Message::Awaited(records, ack) => self.append_awaited(records, ack),
                Message::Stop(ack) => *stop = Some(ack),
            }
            taken += 1;
            if taken < BATCH {
                message = rx.try_recv().ok();
            }
        }
        taken
    }

    /// Stopping (or every sender is gone): takes what was queued before
    /// the queue closed, seals the file with a checkpoint and syncs it.
    fn finish(&mut self, mut rx: mpsc::Receiver<Message>, stop: Option<oneshot::Sender<()>>) {
        rx.close();
        while let Ok(message) = rx.try_recv() {
            match message {
                Message::Record(r) => self.append(*r),
                Message::Awaited(records, ack) => self.append_awaited(records, ack),
                Message::Stop(ack) => {
                    let _ = ack.send(());
                }
            }
        }
        if self.signs() && self.since_checkpoint > 0 {
            self.checkpoint();
        }
        self.flush();
        if let Err(e) = self.file.sync_all() {
            tracing::error!(error = %e, "cannot sync the audit file at stop");
        }
        tracing::info!(next_seq = self.next_seq, "audit trail flushed and closed");
        if let Some(ack) = stop {
            let _ = ack.send(());
        }
    }

    /// Appends one decision's records; `ack` learns whether they were all
    /// written.
    fn append_awaited(&mut self, records: Vec<AuditRecord>, ack: oneshot::Sender<bool>) {
        let failed_before = self.failed_writes;
        for record in records {
            self.append(record);
        }
        if self.failed_writes == failed_before {
            self.waiting.push(ack);
        } else {
            // A write at rotation took part of them and failed.
            let _ = ack.send(false);
        }
    }

    fn append(&mut self, mut record: AuditRecord) {
        if self.rotation_due() {
            self.rotate();
        }
        record.seq = self.next_seq;
        record.prev = std::mem::take(&mut self.prev);
        record.hash.clear();
        let hash = seal_record(&record, &mut self.scratch, &mut self.pending);
        self.pending.push(b'\n');
        record.hash = hash.clone();
        self.prev = hash;
        self.next_seq += 1;
        self.records_in_file += 1;
        let is_checkpoint = record.kind == Kind::Checkpoint;
        self.published.push(Arc::new(record));
        if is_checkpoint {
            self.since_checkpoint = 0;
        } else {
            self.since_checkpoint += 1;
            if self.signs() && self.since_checkpoint >= self.checkpoint_every {
                self.checkpoint();
            }
        }
    }

    /// True when checkpoints are written (a key of either kind).
    fn signs(&self) -> bool {
        self.key.is_some() || self.signer.is_some()
    }

    /// A checkpoint of the chain's head: the last record appended, signed
    /// with each configured key.
    /// `None` when the Ed25519 key cannot sign (a PKCS#11 token
    /// unavailable): then no checkpoint is written, never one without the
    /// signature it should carry; the failure is counted and logged, and
    /// the next checkpoint, `checkpoint_every` records on, tries again
    /// (it covers the whole chain before it).
    fn checkpoint_record(&mut self) -> Option<AuditRecord> {
        let covered = self.next_seq - 1;
        let (key, sig) = match &self.signer {
            None => (String::new(), String::new()),
            Some(signer) => match signer.sign(covered, &self.prev) {
                Ok(sig) => (signer.public_key().id().to_string(), sig),
                Err(e) => {
                    self.counters.sign_errors.fetch_add(1, Ordering::Relaxed);
                    self.since_checkpoint = 0;
                    tracing::error!(
                        covered_seq = covered,
                        error = %e,
                        "AUDIT CHECKPOINT NOT WRITTEN: the signing key cannot sign; records are still written and chained, and the next checkpoint covers them"
                    );
                    return None;
                }
            },
        };
        Some(AuditRecord {
            checkpoint_seq: Some(covered),
            checkpoint_head: self.prev.clone(),
            checkpoint_mac: (self.key.as_ref())
                .map(|k| k.sign(covered, &self.prev))
                .unwrap_or_default(),
            checkpoint_key: key,
            checkpoint_sig: sig,
            ..AuditRecord::new(Kind::Checkpoint)
        })
    }

    /// Records which Ed25519 key signs from here on, so that a rotation
    /// (a new key at a start) is in the chain, covered by the next
    /// checkpoint.
    fn announce_signing_key(&mut self) {
        let Some(signer) = &self.signer else { return };
        let public = signer.public_key();
        let record = AuditRecord {
            checkpoint_key: public.id().to_string(),
            public_key: public.hex(),
            ..AuditRecord::new(Kind::SigningKey)
        };
        self.append(record);
        self.flush();
    }

    fn checkpoint(&mut self) {
        if !self.signs() {
            return;
        }
        if self.rotation_due() {
            // Rotation signs a checkpoint of its own.
            self.rotate();
            return;
        }
        if let Some(record) = self.checkpoint_record() {
            self.append(record);
        }
    }

    /// Appends the pending batch with one write (and syncs it in `synced`
    /// mode), then tells every waiter the outcome; false when it failed.
    /// On failure the batch's records are counted as dropped and the chain
    /// rolls back, so that the records on disk stay a gapless chain.
    fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            self.wake(true);
            return true;
        }
        self.keep_file_in_place();
        let n = self.published.len() as u64;
        let written = self.file.write_all(&self.pending).and_then(|()| {
            if self.sync {
                self.file
                    .sync_data()
                    .map_err(|e| std::io::Error::new(e.kind(), format!("fdatasync: {e}")))
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {
                self.file_bytes += self.pending.len() as u64;
                self.committed_bytes = self.file_bytes;
                self.committed.0 = self.next_seq;
                self.committed.1.clone_from(&self.prev);
                self.committed.2 = self.since_checkpoint;
                self.pending.clear();
                self.counters.written.fetch_add(n, Ordering::Relaxed);
                self.healthy.store(true, Ordering::Relaxed);
                {
                    let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
                    head.next_seq = self.next_seq;
                    head.hash.clone_from(&self.prev);
                    // Formatted only when the file changed (a rotation),
                    // not at every write.
                    if Some(head.file.as_str()) != self.path.to_str() {
                        head.file = self.path.display().to_string();
                    }
                }
                for record in self.published.drain(..) {
                    if let Some(export) = &self.export {
                        export.offer(&record);
                    }
                    // No subscriber is fine.
                    let _ = self.tail.send(record);
                }
                self.wake(true);
                true
            }
            Err(e) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                self.failed_writes += 1;
                self.healthy.store(false, Ordering::Relaxed);
                // One rate-limited line, however many writes fail.
                self.counters.lost(
                    n,
                    &format_args!("cannot write {}: {e}", self.path.display()),
                );
                self.wake(false);
                // Cut a partial write off and roll the chain back.
                let _ = self.file.set_len(self.committed_bytes);
                self.file_bytes = self.committed_bytes;
                let (seq, prev, since) = self.committed.clone();
                self.next_seq = seq;
                self.prev = prev;
                self.since_checkpoint = since;
                self.pending.clear();
                self.published.clear();
                false
            }
        }
    }

    /// Tells every waiting answer whether its records were written.
    fn wake(&mut self, written: bool) {
        for ack in self.waiting.drain(..) {
            // The request may have gone (client cancelled): fine.
            let _ = ack.send(written);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{leaf_hash, GENESIS};
    use crate::audit::files::file_name;
    use crate::audit::query::{self, Filter};
    use serde_json::Value;
    use std::path::Path;

    #[test]
    fn the_writer_waits_for_more_records_only_under_load() {
        // Alone: the request whose record woke it is the only one.
        assert!(!under_load(1, 1, 1));
        assert!(!under_load(0, 0, 1));
        // Every request in progress has its record queued: nothing to wait for.
        assert!(!under_load(1, 3, 3));
        // Others in progress may queue theirs in this pass of the scheduler.
        assert!(under_load(1, 2, 1));
        // The last write took several: records are arriving together.
        assert!(under_load(2, 0, 1));
    }

    fn config(dir: &Path, key: Option<PathBuf>) -> AuditConfig {
        AuditConfig {
            directory: dir.to_path_buf(),
            rotate_bytes: 4096,
            checkpoint_every: 10,
            hmac_key_file: key,
            signing_key_file: None,
            signing_key_pkcs11: None,
            queue_size: 1024,
            on_full: crate::audit::OnFull::Drop,
            durability: Durability::Written,
            ratelimit: Default::default(),
            write_timeout_ms: 0,
            export: None,
        }
    }

    fn key_file(dir: &Path) -> PathBuf {
        let path = dir.join("key");
        std::fs::write(&path, [42u8; 32]).unwrap();
        path
    }

    fn record(i: usize) -> AuditRecord {
        AuditRecord {
            principal: format!("User::\"u{i}\""),
            decision: "allow".into(),
            ..AuditRecord::new(Kind::Decision)
        }
    }

    async fn write(config: &AuditConfig, n: usize) {
        let (sink, writer) = start(config).unwrap();
        for i in 0..n {
            assert!(sink.record(record(i)));
        }
        writer.stop().await;
    }

    fn decisions(dir: &Path) -> usize {
        let filter = Filter {
            kind: "decision".into(),
            ..Filter::default()
        };
        query::query(dir, &filter, 0, usize::MAX).unwrap().0.len()
    }

    #[tokio::test]
    async fn rotation_seals_each_file_with_a_signed_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let config = config(&dir, Some(key_file(tmp.path())));
        write(&config, 100).await;
        let files = list_files(&dir).unwrap();
        assert!(files.len() >= 3, "{files:?}");
        for (_, path) in &files {
            let text = std::fs::read_to_string(path).unwrap();
            let last: AuditRecord = serde_json::from_str(text.lines().last().unwrap()).unwrap();
            assert_eq!(last.kind, Kind::Checkpoint, "{}", path.display());
        }
        let key = CheckpointKey::from_file(config.hmac_key_file.as_deref().unwrap()).unwrap();
        let (v, _) = query::verify_dir(&dir, Some(&key), 0, u64::MAX, None).unwrap();
        assert_eq!(v.broken, None);
        assert!(v.checkpoints_verified >= 10 + 2, "{v:?}");
        assert_eq!(decisions(&dir), 100);
    }

    /// Writes an Ed25519 private key file; returns its path and public key.
    fn signing_key_file(dir: &Path, name: &str) -> (PathBuf, crate::audit::signing::PublicKey) {
        use crate::audit::signing::{generate_pkcs8, pkcs8_pem, SigningKey};
        let der = generate_pkcs8();
        let path = dir.join(name);
        std::fs::write(&path, pkcs8_pem(&der)).unwrap();
        (path, SigningKey::from_pkcs8(&der).unwrap().public_key())
    }

    /// Rewrites every record from `from` on (a principal changed, every
    /// hash, prev and checkpoint head recomputed): all an attacker without
    /// the signing key can do.
    fn forge(lines: &[String], from: u64) -> Vec<String> {
        let mut prev = GENESIS.to_string();
        let mut out = Vec::new();
        for line in lines {
            let mut v: Value = serde_json::from_str(line).unwrap();
            if v["seq"].as_u64().unwrap() >= from {
                v["prev"] = Value::String(prev.clone());
                if v["kind"] == "checkpoint" {
                    v["checkpoint_head"] = Value::String(prev.clone());
                } else if v["kind"] == "decision" {
                    v["principal"] = Value::String("User::\"mallory\"".into());
                }
                v["hash"] = Value::String(leaf_hash(&v));
            }
            prev = v["hash"].as_str().unwrap().to_string();
            out.push(v.to_string());
        }
        out
    }

    #[tokio::test]
    async fn ed25519_checkpoints_verify_with_public_keys_alone_across_a_rotation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (first, first_public) = signing_key_file(tmp.path(), "a.pem");
        let (second, second_public) = signing_key_file(tmp.path(), "b.pem");
        let base = AuditConfig {
            rotate_bytes: 1 << 20,
            ..config(&dir, None)
        };
        for key in [first, second] {
            let config = AuditConfig {
                signing_key_file: Some(key),
                ..base.clone()
            };
            write(&config, 25).await;
        }
        let files: Vec<PathBuf> = list_files(&dir).unwrap().into_iter().map(|f| f.1).collect();
        let both = [first_public.clone(), second_public.clone()];
        let v = query::verify_files(&files, None, &both).unwrap();
        assert_eq!(v.broken, None, "{v:?}");
        assert!(v.checkpoints_verified >= 6, "{v:?}");
        assert_eq!(v.checkpoints_unchecked, 0, "{v:?}");
        let text = std::fs::read_to_string(&files[0]).unwrap();
        let announced: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"signing_key\""))
            .collect();
        assert_eq!(
            announced.len(),
            2,
            "each start records its key: the rotation is in the chain"
        );

        // Only the new key: the checkpoints before the rotation name theirs.
        let v = query::verify_files(&files, None, &[second_public]).unwrap();
        let broken = v
            .broken
            .expect("the old key's checkpoints cannot be checked");
        assert!(broken.reason.contains(first_public.id()), "{broken}");
        assert!(
            broken.reason.contains("not among the given public keys"),
            "{broken}"
        );

        // A rewritten chain: hashes fine, signatures not.
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        std::fs::write(&files[0], forge(&lines, 30).join("\n") + "\n").unwrap();
        let v = query::verify_files(&files, None, &both).unwrap();
        let broken = v.broken.expect("the forged chain fails a signature");
        assert!(
            broken.reason.contains("does not verify with public key"),
            "{broken}"
        );
        assert!(broken.seq.unwrap() > 30, "{broken}");
    }

    #[tokio::test]
    async fn chain_continues_after_restart_and_a_torn_last_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let config = AuditConfig {
            rotate_bytes: 1 << 20,
            ..config(&dir, None)
        };
        write(&config, 5).await;
        let (_, path) = list_files(&dir).unwrap().pop().unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":5,\"id\":\"torn").unwrap();
        drop(file);
        write(&config, 5).await;
        let (v, _) = query::verify_dir(&dir, None, 0, u64::MAX, None).unwrap();
        assert_eq!(v.broken, None, "{v:?}");
        assert_eq!((v.records, v.last_seq), (10, Some(9)));
        assert_eq!(decisions(&dir), 10);
    }

    #[tokio::test]
    async fn offline_verify_reports_a_torn_last_line_apart_and_a_torn_older_file_as_a_break() {
        // A process killed in the middle of a write leaves the newest file
        // ending in an incomplete line: the records before it verify, and
        // the line is reported, not a break.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let config = AuditConfig {
            rotate_bytes: 4096,
            ..config(&dir, None)
        };
        write(&config, 30).await;
        let files: Vec<PathBuf> = list_files(&dir).unwrap().into_iter().map(|f| f.1).collect();
        assert!(files.len() >= 2, "rotated: {files:?}");
        let newest = files.last().unwrap();
        let lines = std::fs::read_to_string(newest).unwrap().lines().count();
        let mut file = OpenOptions::new().append(true).open(newest).unwrap();
        file.write_all(b"{\"seq\":30,\"id\":\"torn").unwrap();
        drop(file);
        let v = query::verify_files(&files, None, &[]).unwrap();
        assert_eq!(v.broken, None, "{v:?}");
        assert_eq!(v.last_seq, Some(29), "{v:?}");
        let torn = v.torn_tail.expect("the torn line is reported");
        assert_eq!(
            (torn.file.as_str(), torn.line),
            (newest.to_str().unwrap(), lines + 1)
        );

        // The same incomplete line at the end of an older file is damage:
        // the writer never writes on after one.
        let older = &files[files.len() - 2];
        let mut file = OpenOptions::new().append(true).open(older).unwrap();
        file.write_all(b"{\"seq\":").unwrap();
        drop(file);
        let v = query::verify_files(&files, None, &[]).unwrap();
        assert_eq!(v.torn_tail, None, "{v:?}");
        let broken = v
            .broken
            .expect("an older file's torn line breaks the chain");
        assert_eq!(broken.at.file, older.display().to_string(), "{broken}");
    }

    #[tokio::test]
    async fn verify_reports_on_a_range_across_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        write(&config(&dir, None), 100).await;
        assert!(list_files(&dir).unwrap().len() >= 2);
        let (v, files) = query::verify_dir(&dir, None, 60, 64, None).unwrap();
        assert_eq!(v.broken, None);
        assert_eq!(
            (v.records, v.first_seq, v.last_seq),
            (5, Some(60), Some(64))
        );
        assert!(!files.is_empty());
        let (page, next) = query::query(&dir, &Filter::default(), 60, 5).unwrap();
        let seqs: Vec<u64> = page.iter().map(|r| r.seq).collect();
        assert_eq!((seqs, next), (vec![60, 61, 62, 63, 64], Some(65)));
    }

    #[tokio::test]
    async fn verify_reports_files_cut_short_of_the_writers_head_naming_both() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let config = AuditConfig {
            rotate_bytes: 1 << 20,
            ..config(&dir, None)
        };
        write(&config, 42).await;
        let (_, path) = list_files(&dir).unwrap().pop().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: String = text.split_inclusive('\n').take(31).collect();
        std::fs::write(&path, kept).unwrap();

        let (v, _) = query::verify_dir(&dir, None, 0, u64::MAX, Some(41)).unwrap();
        let broken = v.broken.expect("the cut is reported");
        assert_eq!(
            (broken.at.file.as_str(), broken.at.line, broken.seq),
            (path.to_str().unwrap(), 32, Some(31))
        );
        assert_eq!(
            broken.reason,
            "the files end at seq 30, but the writer's head is seq 41: records 31..41 are missing (the files were cut short or removed)"
        );
        assert_eq!((v.records, v.last_seq), (31, Some(30)));
        // Within a range: what of it is missing; a range the files hold
        // is whole.
        let (v, _) = query::verify_dir(&dir, None, 35, 38, Some(41)).unwrap();
        let reason = v.broken.expect("the cut is reported").reason;
        assert!(reason.contains("records 35..38 are missing"), "{reason}");
        let (v, _) = query::verify_dir(&dir, None, 0, 30, Some(41)).unwrap();
        assert_eq!(v.broken, None);
        // Offline, or at the head as written: nothing is missing.
        for written in [None, Some(30)] {
            let (v, _) = query::verify_dir(&dir, None, 0, u64::MAX, written).unwrap();
            assert_eq!(v.broken, None, "{written:?}");
        }
        // Every file gone.
        std::fs::remove_file(&path).unwrap();
        let (v, _) = query::verify_dir(&dir, None, 0, u64::MAX, Some(41)).unwrap();
        let reason = v.broken.expect("the loss is reported").reason;
        assert!(
            reason.starts_with("the files hold no records, but the writer's head is seq 41: records 0..41 are missing"),
            "{reason}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_against_the_written_head_while_records_are_written_finds_nothing_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (sink, writer) = start(&config(&dir, None)).unwrap();
        let load = {
            let sink = sink.clone();
            tokio::spawn(async move {
                for i in 0..20_000 {
                    sink.record(record(i));
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        let mut verified = 0;
        while !load.is_finished() {
            let written = sink.head().next_seq.checked_sub(1);
            let d = dir.clone();
            let (v, _) = tokio::task::spawn_blocking(move || {
                query::verify_dir(&d, None, 0, u64::MAX, written)
            })
            .await
            .unwrap()
            .unwrap();
            assert_eq!(v.broken, None, "{v:?}");
            verified += 1;
        }
        load.await.unwrap();
        writer.stop().await;
        assert!(verified > 0);
    }

    #[tokio::test]
    async fn a_cut_line_in_an_older_file_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        write(&config(&dir, None), 100).await;
        let (_, first) = list_files(&dir).unwrap().remove(0);
        let text = std::fs::read_to_string(&first).unwrap();
        let lines = text.lines().count();
        std::fs::write(&first, &text[..text.len() - 10]).unwrap();
        let (v, _) = query::verify_dir(&dir, None, 0, u64::MAX, None).unwrap();
        let broken = v.broken.expect("the cut line is reported");
        assert_eq!(broken.at.file, first.display().to_string());
        assert_eq!(broken.at.line, lines, "{broken}");
    }

    #[tokio::test]
    async fn the_write_timeout_reaches_the_sink_and_zero_means_none() {
        let tmp = tempfile::tempdir().unwrap();
        for (ms, want) in [(0, None), (75, Some(std::time::Duration::from_millis(75)))] {
            let config = AuditConfig {
                write_timeout_ms: ms,
                ..config(&tmp.path().join("audit"), None)
            };
            let (sink, writer) = start(&config).unwrap();
            assert_eq!(sink.write_timeout, want);
            writer.stop().await;
        }
    }

    #[tokio::test]
    async fn the_writer_runs_on_the_runtime_unless_it_waits_for_a_device() {
        let tmp = tempfile::tempdir().unwrap();
        for (durability, on_runtime) in [
            (Durability::Queued, true),
            (Durability::Written, true),
            (Durability::Synced, false),
        ] {
            let mut config = config(&tmp.path().join(format!("{durability:?}")), None);
            config.durability = durability;
            let (sink, writer) = start(&config).unwrap();
            let task = matches!(writer.driver, Some(Driver::Task(_)));
            assert_eq!(task, on_runtime, "{durability:?}");
            assert!(sink.record(record(0)));
            writer.stop().await;
            assert_eq!(decisions(&config.directory), 1, "{durability:?}");
        }
    }

    #[tokio::test]
    async fn an_audit_directory_that_is_a_file_is_named_as_one() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("audit");
        std::fs::write(&file, "").unwrap();
        for (dir, expected) in [
            (
                file.clone(),
                format!(
                    "audit directory {} is a file, not a directory; ",
                    file.display()
                ),
            ),
            (
                file.join("eu"),
                format!(
                    "audit directory {}/eu cannot be created: {} is a file, not a directory; ",
                    file.display(),
                    file.display()
                ),
            ),
        ] {
            let err = start(&config(&dir, None)).unwrap_err();
            assert!(matches!(err, StartError::NotADirectory { .. }), "{err:?}");
            let err = err.to_string();
            assert!(err.starts_with(&expected), "{err}");
            assert!(!err.contains("os error"), "{err}");
        }
    }

    /// Writes `range`'s records through `sink` and waits (bounded) until
    /// the writer has written `total` in all.
    async fn write_through(sink: &AuditSink, range: std::ops::Range<usize>, total: u64) {
        for i in range {
            assert!(sink.record(record(i)));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while sink.counters().written.load(Ordering::Relaxed) < total {
            assert!(std::time::Instant::now() < deadline, "not written");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_file_moved_removed_or_cut_short_under_the_writer_is_followed_by_a_new_one() {
        for how in ["moved", "removed", "cut short"] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("audit");
            let config = AuditConfig {
                rotate_bytes: 1 << 20,
                ..config(&dir, None)
            };
            let (sink, writer) = start(&config).unwrap();
            write_through(&sink, 0..5, 5).await;
            let (_, first) = list_files(&dir).unwrap().pop().unwrap();
            let aside = tmp.path().join("archived.jsonl");
            match how {
                "moved" => std::fs::rename(&first, &aside).unwrap(),
                "removed" => std::fs::remove_file(&first).unwrap(),
                _ => {
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&first)
                        .unwrap();
                    file.set_len(10).unwrap();
                }
            }
            tokio::time::sleep(rotation::IN_PLACE_CHECK + std::time::Duration::from_millis(100))
                .await;
            write_through(&sink, 5..8, 8).await;
            assert_eq!(sink.counters().files_replaced.load(Ordering::Relaxed), 1);
            writer.stop().await;
            // The records that follow are in the directory, in a new file
            // named by the first of them.
            let files = list_files(&dir).unwrap();
            assert_eq!(files.last().map(|f| f.0), Some(5), "{how}: {files:?}");
            if how == "cut short" {
                // The cut file is left as it is, not written after its cut.
                assert_eq!(std::fs::metadata(&first).unwrap().len(), 10);
            } else {
                assert_eq!(files.len(), 1, "{how}: {files:?}");
                assert_eq!(decisions(&dir), 3, "{how}");
            }
            if how == "moved" {
                let moved = std::fs::read_to_string(&aside).unwrap();
                assert_eq!(moved.lines().count(), 5);
            }
        }
    }

    #[tokio::test]
    async fn a_directory_takes_one_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config(&tmp.path().join("audit"), None);
        let (_sink, writer) = start(&config).unwrap();
        assert!(matches!(start(&config), Err(StartError::Locked(_))));
        writer.stop().await;
    }

    #[tokio::test]
    async fn a_damaged_last_record_refuses_to_continue_the_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let config = config(&dir, None);
        write(&config, 3).await;
        let (_, path) = list_files(&dir).unwrap().pop().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("u2", "u9")).unwrap();
        let err = start(&config).unwrap_err().to_string();
        assert!(err.contains("does not match its hash"), "{err}");
    }

    #[test]
    fn a_failed_write_rolls_the_chain_back_and_tells_its_waiters() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let path = dir.join(file_name(0));
        std::fs::write(&path, b"").unwrap();
        // A read-only handle: every write fails (even for root).
        let read_only = File::open(&path).unwrap();
        let counters = Arc::new(Counters::default());
        let healthy = Arc::new(AtomicBool::new(true));
        let mut chain = Chain {
            dir: dir.clone(),
            file: read_only,
            path: path.clone(),
            file_bytes: 0,
            committed_bytes: 0,
            records_in_file: 0,
            next_seq: 0,
            prev: GENESIS.to_string(),
            committed: (0, GENESIS.to_string(), 0),
            since_checkpoint: 0,
            pending: Vec::new(),
            scratch: Vec::new(),
            published: Vec::new(),
            waiting: Vec::new(),
            failed_writes: 0,
            file_checked: std::time::Instant::now(),
            sync: false,
            on_runtime: false,
            key: None,
            signer: None,
            rotate_bytes: 1 << 20,
            checkpoint_every: 1000,
            counters: Arc::clone(&counters),
            healthy: Arc::clone(&healthy),
            head: Arc::default(),
            tail: broadcast::channel(8).0,
            export: None,
            _lock: File::open(&path).unwrap(),
        };
        let (ack, mut failed) = oneshot::channel();
        chain.append(record(0));
        chain.append_awaited(vec![record(1)], ack);
        chain.flush();
        assert_eq!(
            failed.try_recv(),
            Ok(false),
            "the waiter learns of the failure"
        );
        assert!(!healthy.load(Ordering::Relaxed));
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(counters.write_errors.load(Ordering::Relaxed), 1);
        assert_eq!(chain.next_seq, 0, "rolled back");

        chain.file = open_append(&path).unwrap();
        let (ack, mut written) = oneshot::channel();
        chain.append_awaited(vec![record(2)], ack);
        assert!(written.try_recv().is_err(), "no answer before the write");
        chain.flush();
        assert_eq!(written.try_recv(), Ok(true));
        assert!(
            healthy.load(Ordering::Relaxed),
            "recovers with the next write"
        );
        let (v, _) = query::verify_dir(&dir, None, 0, u64::MAX, None).unwrap();
        assert_eq!(v.broken, None, "{v:?}");
        assert_eq!((v.records, v.first_seq), (1, Some(0)));
    }
}
