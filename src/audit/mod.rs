//! The audit trail: one record per decision, authentication failure,
//! policy reload or rejection, and admin call, appended to hash-chained JSON
//! lines by one writer (`writer`) fed through a bounded queue. A decision's answer
//! waits for its record as `audit.durability` says (queued, written, synced;
//! in `fail_closed` mode at least written); no request's task ever writes a
//! file itself. This module holds the record and the sending side; `chain`
//! the tamper evidence, `signing` the Ed25519 checkpoints, `writer` the
//! files, `loss` the counters and the loss line, `query` the reading.
//! Records never carry tokens, secrets or request bodies.

mod canonical;
pub mod chain;
pub mod config;
pub mod export;
pub mod files;
pub mod loss;
pub mod pkcs11;
pub mod query;
mod record;
pub mod sampling;
pub mod signing;
pub mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::decision::{Decision, DenyReason};
use crate::request::AccessRequest;
pub use config::{AuditConfig, Durability};
pub use loss::Counters;
pub use record::ResponseRecord;

pub use writer::{start, AuditWriter, StartError};

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A decision on a request (allow or deny).
    #[default]
    Decision,
    /// Credentials were presented and refused.
    AuthnFailure,
    /// A policy snapshot was loaded (at start) or swapped in.
    PolicyReload,
    /// A policy change was rejected; the last good snapshot kept serving.
    PolicyRejected,
    /// A call to the admin API (allowed or refused).
    AdminCall,
    /// A signed statement of the chain's head (HMAC, Ed25519 or both).
    Checkpoint,
    /// The Ed25519 key that signs the checkpoints from here on (written at
    /// every start with a signing key, so a rotation is in the chain).
    SigningKey,
    /// The anomaly detector saw a surge or repeated failures.
    Anomaly,
    /// A response to an allowed request (ext_proc): its token reservation
    /// settled and what its response checks found, linked to its decision
    /// by `decision_id` and `request_id`.
    Response,
}

impl Kind {
    /// The name used in records and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::AuthnFailure => "authn_failure",
            Kind::PolicyReload => "policy_reload",
            Kind::PolicyRejected => "policy_rejected",
            Kind::AdminCall => "admin_call",
            Kind::Checkpoint => "checkpoint",
            Kind::SigningKey => "signing_key",
            Kind::Anomaly => "anomaly",
            Kind::Response => "response",
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One line of the audit trail. Empty fields are left out of the JSON.
/// `seq`, `prev` and `hash` are set by the writer when it chains the record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 0, across files.
    pub seq: u64,
    /// Unique, time-ordered id (UUIDv7; for decisions, the decision id).
    pub id: String,
    /// When, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// What the record is about.
    pub kind: Kind,
    /// The front door the decision was asked through: `ext_authz`,
    /// `forward_auth`, `ratelimit` or `admin`. Left out when empty, so
    /// records written before the field existed hash as they did.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub adapter: Cow<'static, str>,
    /// The gateway's request id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// The W3C trace id of the request (`traceparent`), to join the record
    /// with traces. Left out when absent, so records written before the
    /// field existed hash as they did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    /// The Cedar principal.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub principal: String,
    /// How the principal authenticated (`jwt`, `mtls`, `anonymous`).
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub auth_method: Cow<'static, str>,
    /// The Cedar action.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    /// The Cedar resource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// The matched route.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub route: String,
    /// `allow` or `deny`.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub decision: Cow<'static, str>,
    /// HTTP status the client got.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub status: u64,
    /// The stable deny reason code, or the authentication failure code.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub reason: Cow<'static, str>,
    /// Ids of the policies that determined the outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub determining_policies: Vec<String>,
    /// Evaluation errors (policy ids and messages, never credentials).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The quota outcome: the limit that decided and what is left.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub quota: String,
    /// Decisions: the token reservation made (`1008 tokens (tokens
    /// 1008), ttl 600s, request <x-request-id>`); responses: the one
    /// settled. Left out when empty, so
    /// records written before the field existed hash as they did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reservation: String,
    /// Responses: the decision (its record's `id`) this response answers.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub decision_id: String,
    /// Responses: how the reservation settled (`used 300 of 1008 reserved
    /// (708 returned)`, or without usage and why).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub settlement: String,
    /// Responses: what the route's response checks found, one per check
    /// and kind: `<check>;kind=<kind>;action=<action>;count=<n>` (never
    /// the matched text).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
    /// With shadow policies: the candidate set's outcome, e.g.
    /// `deny (disagrees) [shadow-no-cn-north-1]`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub shadow: String,
    /// The policy snapshot version that decided (for reloads: the new one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_version: String,
    /// Time spent deciding, microseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latency_us: u64,
    /// The client's address (as the gateway saw it; for admin calls, the
    /// admin client's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_ip: String,
    /// Reloads: the version that served before.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub previous_version: String,
    /// Reloads: files added, removed or changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files_changed: Vec<String>,
    /// Admin calls: the RPC (`portcullis.admin.v1.AuditService/Query`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rpc: String,
    /// Anomalies: what was seen, against which threshold, and the response
    /// (risk, block).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Checkpoints: the last record covered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_seq: Option<u64>,
    /// A sampled ShouldRateLimit `OK` (`audit.ratelimit.ok_sample_every`):
    /// plain `OK` answers left unrecorded between the previous sampled one
    /// and this one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unrecorded_before: u64,
    /// Checkpoints: the hash of that record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checkpoint_head: String,
    /// Checkpoints: HMAC-SHA256 of `checkpoint_seq:checkpoint_head`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checkpoint_mac: String,
    /// Checkpoints and signing-key records: the Ed25519 key's id (see
    /// `signing::key_id`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checkpoint_key: String,
    /// Checkpoints: Ed25519 signature of `checkpoint_seq:checkpoint_head`,
    /// hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checkpoint_sig: String,
    /// Signing-key records: the 32 raw bytes of the Ed25519 public key,
    /// hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key: String,
    /// The previous record's hash (the genesis hash for seq 0).
    pub prev: String,
    /// SHA-256 over this record's canonical JSON without `hash`.
    pub hash: String,
}

/// What to do when the queue is full (or the writer cannot write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Keep serving; count every record that could not be queued and log.
    #[default]
    Drop,
    /// Deny requests whose decision cannot be recorded (503).
    FailClosed,
}

/// The chain's head as the writer last wrote it to the file: records
/// queued, or appended to the batch being written, are not in it until
/// their write returns, so every record before `next_seq` is in the files.
#[derive(Debug, Default, Clone)]
pub struct Head {
    /// The next sequence number.
    pub next_seq: u64,
    /// The last record's hash.
    pub hash: String,
    /// The file being appended to.
    pub file: String,
}

pub(crate) enum Message {
    /// A record nobody waits for.
    Record(Box<AuditRecord>),
    /// The records of one decision (its own first) and who waits for them:
    /// `true` once written (and synced, in `synced` mode), `false` when
    /// they could not be.
    Awaited(Vec<AuditRecord>, oneshot::Sender<bool>),
    Stop(oneshot::Sender<()>),
}

/// The sending side of the audit trail, shared by every request handler.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Message>,
    mode: OnFull,
    durability: Durability,
    /// `audit.write_timeout_ms`, when set.
    write_timeout: Option<Duration>,
    capacity: usize,
    /// False after a write failed, until a write succeeds again.
    healthy: Arc<AtomicBool>,
    counters: Arc<Counters>,
    head: Arc<std::sync::Mutex<Head>>,
    tail: broadcast::Sender<Arc<AuditRecord>>,
    directory: std::path::PathBuf,
    key: Option<chain::CheckpointKey>,
    /// True when checkpoints carry an Ed25519 signature too.
    ed25519: bool,
    /// `audit.ratelimit`: which ShouldRateLimit answers are recorded.
    ratelimit: Arc<sampling::RateLimitSampler>,
    /// The export to a collector, when `audit.export` is set.
    export: Option<export::ExportStatus>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("mode", &self.mode)
            .field("durability", &self.durability)
            .field("capacity", &self.capacity)
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

impl AuditSink {
    /// Queues a record without waiting. False when it could not be queued;
    /// the loss is counted and logged.
    pub fn record(&self, record: AuditRecord) -> bool {
        match self.tx.try_send(Message::Record(Box::new(record))) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.counters.lost(1, &queue_error(&e));
                false
            }
        }
    }

    /// Records a decision (and, for refused credentials, the failure). The
    /// answer waits as [`AuditConfig::durability`] says. In `fail_closed`
    /// mode it waits at least until the record is written, and a decision
    /// that cannot be recorded (queue full, or the write failing) becomes
    /// a 503 denial: no request passes unaudited.
    pub async fn record_decision(
        &self,
        d: Decision,
        req: &AccessRequest,
        adapter: &'static str,
        latency: Duration,
    ) -> Decision {
        self.record_or_refuse(d, |d| {
            let mut records = vec![AuditRecord {
                adapter: adapter.into(),
                ..AuditRecord::decision(d, req, latency)
            }];
            records.extend(AuditRecord::authn_failure(d, req));
            records
        })
        .await
    }

    /// Records an admin call's decision, with the same rules as
    /// [`AuditSink::record_decision`]: a call that cannot be recorded in
    /// `fail_closed` mode is refused.
    pub async fn record_admin_call(
        &self,
        d: Decision,
        req: &AccessRequest,
        rpc: &str,
        adapter: &'static str,
    ) -> Decision {
        self.record_or_refuse(d, |d| {
            vec![AuditRecord {
                adapter: adapter.into(),
                ..AuditRecord::admin_call(d, req, rpc)
            }]
        })
        .await
    }

    /// Hands the records `of` the decision gives to the writer and, unless
    /// the mode is `queued` with `drop`, waits for the write's outcome. In
    /// `fail_closed` mode a decision that arrives while writes fail, whose
    /// records cannot be queued or whose write fails becomes a 503 denial,
    /// and that denial is queued (without waiting: it is the writer's next
    /// attempt, and service resumes with the first write that succeeds).
    async fn record_or_refuse(
        &self,
        d: Decision,
        of: impl Fn(&Decision) -> Vec<AuditRecord>,
    ) -> Decision {
        let fail_closed = self.mode == OnFull::FailClosed;
        if fail_closed && !self.healthy.load(Ordering::Relaxed) {
            return self.refuse(d, &of);
        }
        let records = of(&d);
        if self.durability == Durability::Queued && !fail_closed {
            for record in records {
                self.record(record);
            }
            return d;
        }
        let n = records.len() as u64;
        let (ack, written) = oneshot::channel();
        match self.tx.try_send(Message::Awaited(records, ack)) {
            Ok(()) => {
                self.counters.queued.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters.lost(n, &queue_error(&e));
                // No room for the denial's record either.
                return if fail_closed {
                    self.deny_unrecorded(d)
                } else {
                    d
                };
            }
        }
        // The writer answers every waiter after each write; a writer gone
        // mid-way (stopping) drops the sender: not written.
        let written = match self.write_timeout {
            None => written.await.unwrap_or(false),
            Some(limit) => match tokio::time::timeout(limit, written).await {
                Ok(outcome) => outcome.unwrap_or(false),
                Err(_) => {
                    // Still queued: the writer writes it when it can. In
                    // `fail_closed` mode the 503's record follows it, with
                    // the same decision id.
                    self.counters.write_timeouts.fetch_add(1, Ordering::Relaxed);
                    false
                }
            },
        };
        if written || !fail_closed {
            // In `drop` mode the writer has counted and logged the loss.
            return d;
        }
        self.refuse(d, &of)
    }

    /// The 503 of `fail_closed` mode, counted, its record queued.
    fn refuse(&self, d: Decision, of: &impl Fn(&Decision) -> Vec<AuditRecord>) -> Decision {
        let d = self.deny_unrecorded(d);
        for record in of(&d) {
            self.record(record);
        }
        d
    }

    /// The 503 of `fail_closed` mode, counted.
    fn deny_unrecorded(&self, d: Decision) -> Decision {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        unavailable(d)
    }

    /// True when a call that must be audited may go ahead (always in
    /// `drop` mode).
    pub fn accepts(&self) -> bool {
        self.mode == OnFull::Drop || self.healthy.load(Ordering::Relaxed)
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The chain's head as written to the file (see [`Head`]).
    pub fn head(&self) -> Head {
        self.head.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// New records as they are written (for `Tail`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AuditRecord>> {
        self.tail.subscribe()
    }

    /// The audit directory.
    pub fn directory(&self) -> &std::path::Path {
        &self.directory
    }

    /// The configured mode.
    pub fn mode(&self) -> OnFull {
        self.mode
    }

    /// The configured durability.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The queue's capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records waiting for the writer now.
    pub fn queue_depth(&self) -> usize {
        self.capacity.saturating_sub(self.tx.capacity())
    }

    /// True when checkpoints are written and signed (an HMAC key, an
    /// Ed25519 signing key or both).
    pub fn checkpoints_enabled(&self) -> bool {
        self.key.is_some() || self.ed25519
    }

    /// The export to a collector and its counters, when configured.
    pub fn export(&self) -> Option<&export::ExportStatus> {
        self.export.as_ref()
    }

    /// The key that signs checkpoints, to verify them.
    pub fn checkpoint_key(&self) -> Option<&chain::CheckpointKey> {
        self.key.as_ref()
    }
}

/// The 503 a request gets in `fail_closed` mode when its decision cannot be
/// recorded. The decision keeps its id so logs can still correlate.
fn unavailable(mut d: Decision) -> Decision {
    d.errors
        .push("audit: the decision could not be recorded".into());
    let mut d = d.deny(
        DenyReason::AuditUnavailable,
        "the service cannot record decisions right now; retry later",
    );
    d.determining_policies.clear();
    d
}

/// Why a record could not be queued, for the loss line.
fn queue_error<T>(e: &mpsc::error::TrySendError<T>) -> &'static str {
    match e {
        mpsc::error::TrySendError::Full(_) => "the audit queue is full",
        mpsc::error::TrySendError::Closed(_) => "the audit writer has stopped",
    }
}

/// Where a remote admin client connects from, for admin-call records.
pub fn source_of(addr: Option<SocketAddr>) -> String {
    addr.map(|a| a.ip().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(
        mode: OnFull,
        durability: Durability,
        capacity: usize,
    ) -> (AuditSink, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(capacity);
        let sink = AuditSink {
            tx,
            mode,
            durability,
            write_timeout: None,
            capacity,
            healthy: Arc::new(AtomicBool::new(true)),
            counters: Arc::new(Counters::default()),
            head: Arc::default(),
            tail: broadcast::channel(1).0,
            directory: "unused".into(),
            key: None,
            ed25519: false,
            ratelimit: Arc::new(sampling::RateLimitSampler::new(Default::default())),
            export: None,
        };
        (sink, rx)
    }

    /// A stand-in writer that answers every waiter with `written` and
    /// hands back the statuses of what it saw.
    fn writer(
        mut rx: mpsc::Receiver<Message>,
        written: bool,
    ) -> tokio::task::JoinHandle<Vec<(u64, bool)>> {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(message) = rx.recv().await {
                match message {
                    Message::Record(r) => seen.push((r.status, false)),
                    Message::Awaited(records, ack) => {
                        seen.push((records[0].status, true));
                        let _ = ack.send(written);
                    }
                    Message::Stop(_) => break,
                }
            }
            seen
        })
    }

    fn allowed() -> Decision {
        Decision::new("v1").allow()
    }

    fn req() -> AccessRequest {
        AccessRequest::for_test("GET", "/")
    }

    const US: Duration = Duration::from_micros(1);

    #[tokio::test]
    async fn full_queue_in_fail_closed_mode_denies_with_503() {
        // A queue nobody drains, already full.
        let (sink, _rx) = sink(OnFull::FailClosed, Durability::Written, 1);
        assert!(sink.record(AuditRecord::new(Kind::PolicyReload)));
        let d = sink
            .record_decision(allowed(), &req(), "ext_authz", US)
            .await;
        assert_eq!(
            (d.status, d.reason),
            (503, Some(DenyReason::AuditUnavailable))
        );
        assert_eq!(sink.counters().refused.load(Ordering::Relaxed), 1);
        assert_eq!(sink.counters().dropped.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn full_queue_in_drop_mode_serves_and_counts_every_loss() {
        for durability in [Durability::Queued, Durability::Written] {
            let (sink, _rx) = sink(OnFull::Drop, durability, 1);
            assert!(sink.record(AuditRecord::new(Kind::PolicyReload)));
            for _ in 0..5 {
                let d = sink
                    .record_decision(allowed(), &req(), "ext_authz", US)
                    .await;
                assert!(d.is_allowed(), "{durability:?}");
            }
            assert_eq!(sink.counters().queued.load(Ordering::Relaxed), 1);
            assert_eq!(sink.counters().dropped.load(Ordering::Relaxed), 5);
            assert_eq!(sink.counters().refused.load(Ordering::Relaxed), 0);
        }
    }

    #[tokio::test]
    async fn written_mode_answers_only_once_the_writer_has_written() {
        let (sink, mut rx) = sink(OnFull::Drop, Durability::Written, 16);
        let pending = tokio::spawn({
            let sink = sink.clone();
            async move {
                sink.record_decision(allowed(), &req(), "ext_authz", US)
                    .await
            }
        });
        let Some(Message::Awaited(records, ack)) = rx.recv().await else {
            panic!("the decision's records are handed over with a waiter")
        };
        assert_eq!(records.len(), 1);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!pending.is_finished(), "the answer waits for the write");
        ack.send(true).unwrap();
        assert!(pending.await.unwrap().is_allowed());
    }

    #[tokio::test]
    async fn queued_mode_in_drop_mode_does_not_wait() {
        let (sink, mut rx) = sink(OnFull::Drop, Durability::Queued, 16);
        // Nobody writes; the answer comes anyway.
        assert!(sink
            .record_decision(allowed(), &req(), "ext_authz", US)
            .await
            .is_allowed());
        assert!(matches!(rx.try_recv(), Ok(Message::Record(_))));
    }

    #[tokio::test]
    async fn a_failed_write_in_fail_closed_mode_turns_the_allow_into_a_recorded_503() {
        // Whatever the durability, fail_closed waits for the write.
        for durability in [Durability::Queued, Durability::Written, Durability::Synced] {
            let (sink, rx) = sink(OnFull::FailClosed, durability, 16);
            let writer = writer(rx, false);
            let d = sink
                .record_decision(allowed(), &req(), "ext_authz", US)
                .await;
            assert_eq!(d.status, 503, "{durability:?}");
            assert_eq!(sink.counters().refused.load(Ordering::Relaxed), 1);
            drop(sink);
            // The allow was awaited and failed; the 503 is queued.
            assert_eq!(writer.await.unwrap(), vec![(200, true), (503, false)]);
        }
    }

    #[tokio::test]
    async fn a_failed_write_in_drop_mode_still_serves() {
        let (sink, rx) = sink(OnFull::Drop, Durability::Synced, 16);
        let writer = writer(rx, false);
        assert!(sink
            .record_decision(allowed(), &req(), "ext_authz", US)
            .await
            .is_allowed());
        drop(sink);
        assert_eq!(writer.await.unwrap(), vec![(200, true)]);
    }

    #[tokio::test]
    async fn failed_writes_in_fail_closed_mode_deny() {
        let (sink, mut rx) = sink(OnFull::FailClosed, Durability::Written, 16);
        sink.healthy.store(false, Ordering::Relaxed);
        let d = sink
            .record_decision(allowed(), &req(), "ext_authz", US)
            .await;
        assert_eq!(d.status, 503);
        assert!(!sink.accepts());
        // The denial is still queued, so the writer retries and can recover.
        let Ok(Message::Record(queued)) = rx.try_recv() else {
            panic!("the denied decision is queued")
        };
        assert_eq!((queued.status, &*queued.reason), (503, "audit_unavailable"));
        assert_eq!(sink.counters().refused.load(Ordering::Relaxed), 1);
        sink.healthy.store(true, Ordering::Relaxed);
        let writer = writer(rx, true);
        let d = sink
            .record_decision(allowed(), &req(), "ext_authz", US)
            .await;
        assert!(d.is_allowed(), "serves again once writes succeed");
        drop(sink);
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_slower_than_the_write_timeout_answers_in_drop_mode_and_refuses_in_fail_closed_mode(
    ) {
        for (mode, status) in [(OnFull::Drop, 200), (OnFull::FailClosed, 503)] {
            let (mut sink, mut rx) = sink(mode, Durability::Written, 16);
            sink.write_timeout = Some(Duration::from_millis(50));
            let started = tokio::time::Instant::now();
            let d = sink
                .record_decision(allowed(), &req(), "ext_authz", US)
                .await;
            assert_eq!(d.status, status, "{mode:?}");
            assert_eq!(started.elapsed(), Duration::from_millis(50), "{mode:?}");
            assert_eq!(sink.counters().write_timeouts.load(Ordering::Relaxed), 1);
            // The allow's record is still with the writer, not lost.
            assert!(
                matches!(rx.try_recv(), Ok(Message::Awaited(..))),
                "{mode:?}"
            );
            assert_eq!(sink.counters().dropped.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn decision_records_carry_no_credentials() {
        let mut req = AccessRequest::for_test("GET", "/v1/models/x");
        req.headers
            .insert("authorization".into(), "Bearer secret.token.value".into());
        req.request_id = "rid-1".into();
        let mut d = Decision::new("v1").deny(DenyReason::InvalidCredentials, "bad");
        d.errors.push("authentication: expired".into());
        let rec = AuditRecord::decision(&d, &req, Duration::from_micros(5));
        let text = serde_json::to_string(&rec).unwrap();
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(rec.reason, "invalid_credentials");
        let failure = AuditRecord::authn_failure(&d, &req).unwrap();
        assert_eq!(failure.reason, "expired");
        assert_eq!(failure.kind, Kind::AuthnFailure);
        assert!(AuditRecord::authn_failure(&Decision::new("v1").allow(), &req).is_none());
    }

    #[test]
    fn trace_ids_come_from_traceparent_and_absent_ones_leave_the_record_as_before() {
        let mut req = AccessRequest::for_test("GET", "/v1/models/x");
        let d = Decision::new("v1").deny(DenyReason::InvalidCredentials, "bad");
        let rec = AuditRecord::decision(&d, &req, Duration::from_micros(5));
        let json = serde_json::to_value(&rec).unwrap();
        // Records without trace context serialise (and so hash) exactly as
        // records written before the fields existed.
        assert!(
            json.get("trace_id").is_none() && json.get("detail").is_none(),
            "{json}"
        );
        req.headers.insert(
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        let rec = AuditRecord::decision(&d, &req, Duration::from_micros(5));
        assert_eq!(rec.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let failure = AuditRecord::authn_failure(&d, &req).unwrap();
        assert_eq!(failure.trace_id, rec.trace_id);
    }
}
