//! Holds the serving snapshot and replaces it: on file change (debounced),
//! on SIGHUP, or on demand. A new snapshot is fully validated before it is
//! swapped in atomically; an invalid change leaves the last good one serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::Watcher;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::policy::snapshot::{ContextClaim, LoadErrors, Snapshot};

/// Counters and the last failure, for the admin API.
#[derive(Debug, Clone, Default)]
pub struct ReloadStats {
    /// Snapshots swapped in since start (not counting the first).
    pub reloads: u64,
    /// Rejected reload attempts since start.
    pub rejected: u64,
    /// Errors of the last attempt, if it was rejected.
    pub last_errors: Vec<String>,
}

/// The serving snapshot of one policy directory.
#[derive(Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    /// The version every snapshot of this store carries, when it is known
    /// from outside the directory (a pinned git revision).
    version: Option<String>,
    current: ArcSwap<Snapshot>,
    // A std mutex: held only by the blocking reload, never across an await.
    // It also serialises reloads so an older load cannot overwrite a newer.
    stats: Mutex<ReloadStats>,
    /// Where reloads and rejections are recorded, once the trail is open.
    audit: std::sync::OnceLock<crate::audit::AuditSink>,
    /// Claims the configuration copies into the Cedar context: every
    /// snapshot's schema must be able to carry them.
    context_claims: Vec<ContextClaim>,
}

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// A new version now serves.
    Swapped { from: String, to: String },
    /// The directory's content did not change.
    Unchanged { version: String },
}

impl PolicyStore {
    /// Loads the directory; an invalid directory is an error (no snapshot,
    /// so nothing to serve).
    pub fn load(dir: &Path) -> Result<Self, LoadErrors> {
        Self::load_versioned(dir, None)
    }

    /// Like `load`, with the version given (a pinned git revision).
    pub fn load_versioned(dir: &Path, version: Option<String>) -> Result<Self, LoadErrors> {
        let snapshot = Snapshot::load_versioned(dir, version.clone())?;
        Ok(PolicyStore {
            dir: dir.to_path_buf(),
            version,
            current: ArcSwap::from_pointee(snapshot),
            stats: Mutex::new(ReloadStats::default()),
            audit: std::sync::OnceLock::new(),
            context_claims: Vec::new(),
        })
    }

    /// Requires this snapshot and every reloaded one to carry `claims` in
    /// `context.token.claims`; the serving snapshot is checked now (an error
    /// here stops startup), a reload that drops one is rejected.
    pub fn require_context_claims(&mut self, claims: Vec<ContextClaim>) -> Result<(), LoadErrors> {
        self.context_claims = claims;
        self.meets_requirements(self.current()).map(|_| ())
    }

    fn meets_requirements(&self, snapshot: Arc<Snapshot>) -> Result<Arc<Snapshot>, LoadErrors> {
        let errors = snapshot.check_context_claims(&self.context_claims);
        if errors.is_empty() {
            Ok(snapshot)
        } else {
            Err(LoadErrors {
                directory: self.dir.clone(),
                errors,
            })
        }
    }

    /// The snapshot serving now; a request holds it for its whole evaluation.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The policy directory.
    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// Reload statistics.
    pub fn stats(&self) -> ReloadStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the directory again and swaps the result in if it is valid.
    /// Blocking (reads files, may run git): call from a blocking context.
    pub fn reload(&self) -> Result<ReloadOutcome, LoadErrors> {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let from = old.version.clone();
        let loaded = Snapshot::load_versioned(&self.dir, self.version.clone())
            .and_then(|s| self.meets_requirements(Arc::new(s)));
        match loaded {
            Ok(snapshot) if snapshot.version == from => {
                stats.last_errors.clear();
                Ok(ReloadOutcome::Unchanged { version: from })
            }
            Ok(snapshot) => {
                let to = snapshot.version.clone();
                self.audit_reload(&snapshot, Some(&old));
                self.current.store(snapshot);
                stats.reloads += 1;
                stats.last_errors.clear();
                tracing::info!(from = %from, to = %to, "policy snapshot reloaded");
                Ok(ReloadOutcome::Swapped { from, to })
            }
            Err(errors) => {
                stats.rejected += 1;
                stats.last_errors = errors.errors.iter().map(ToString::to_string).collect();
                if let Some(audit) = self.audit.get() {
                    audit.record(crate::audit::AuditRecord {
                        previous_version: from.clone(),
                        policy_version: from.clone(),
                        errors: stats.last_errors.clone(),
                        ..crate::audit::AuditRecord::new(crate::audit::Kind::PolicyRejected)
                    });
                }
                for e in &errors.errors {
                    tracing::error!(file = %e.file, line = e.line, error = %e.message, "rejected policy change");
                }
                tracing::error!(
                    serving = %from,
                    problems = errors.errors.len(),
                    "policy reload rejected; the last good snapshot keeps serving"
                );
                Err(errors)
            }
        }
    }

    /// Records reloads and rejections in `audit` from now on, starting with
    /// a record of the snapshot serving now.
    pub fn set_audit(&self, audit: crate::audit::AuditSink) {
        if self.audit.set(audit).is_ok() {
            self.audit_reload(&self.current(), None);
        }
    }

    fn audit_reload(&self, new: &Snapshot, old: Option<&Snapshot>) {
        let Some(audit) = self.audit.get() else {
            return;
        };
        audit.record(crate::audit::AuditRecord {
            policy_version: new.version.clone(),
            previous_version: old.map(|o| o.version.clone()).unwrap_or_default(),
            files_changed: match old {
                Some(old) => new.files_changed_since(old),
                None => new.files.clone(),
            },
            ..crate::audit::AuditRecord::new(crate::audit::Kind::PolicyReload)
        });
    }

    /// Reloads on a blocking thread.
    pub async fn reload_async(self: &Arc<Self>) -> Result<ReloadOutcome, LoadErrors> {
        let store = Arc::clone(self);
        match tokio::task::spawn_blocking(move || store.reload()).await {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Watches the policy directory and reloads after `debounce` of quiet.
/// The returned task stops when `cancel` fires.
pub fn spawn_watcher(
    store: Arc<PolicyStore>,
    debounce: Duration,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> notify::Result<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            Ok(e) if e.kind.is_access() => {}
            // A full channel already means "reload pending".
            Ok(_) => {
                let _ = tx.try_send(());
            }
            Err(e) => tracing::warn!(error = %e, "policy directory watch error"),
        }
    })?;
    watcher.watch(store.directory(), notify::RecursiveMode::Recursive)?;
    tasks.spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                got = rx.recv() => if got.is_none() { return },
            }
            // Debounce: wait until no event arrived for `debounce`.
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(debounce) => break,
                    got = rx.recv() => if got.is_none() { return },
                }
            }
            let _ = store.reload_async().await;
        }
    });
    Ok(())
}

/// Reloads on SIGHUP until `cancel` fires.
#[cfg(unix)]
pub fn spawn_sighup(
    store: Arc<PolicyStore>,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            tracing::info!("SIGHUP: reloading policies");
            let _ = store.reload_async().await;
        }
    });
    Ok(())
}

/// Reloads every `interval` until `cancel` fires: for directories that are
/// replaced by swapping a symlink (git-sync, Kubernetes ConfigMaps) or live
/// on file systems without change notification. A reload that finds the
/// same version swaps nothing.
pub fn spawn_poller(
    store: Arc<PolicyStore>,
    interval: Duration,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) {
    tasks.spawn(crate::time::every(interval, cancel, move || {
        let store = Arc::clone(&store);
        async move {
            let _ = store.reload_async().await;
        }
    }));
}

/// When the policy directory is reloaded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Watch the directory and reload on change.
    pub watch: bool,
    /// Wait this long after the last change before reloading, so that an
    /// editor's or `git checkout`'s burst of writes becomes one reload.
    pub debounce_ms: u64,
    /// Also reload every this many seconds (0: off), for directories that
    /// change by a symlink swap (git-sync, ConfigMaps) which file watching
    /// does not follow.
    pub poll_seconds: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            debounce_ms: 250,
            poll_seconds: 0,
        }
    }
}
