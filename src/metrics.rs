//! Prometheus metrics: the process's counters and latency histograms,
//! recorded on the request path with atomics only (no lock is taken per
//! request except the shared read side of a label family), and their text
//! exposition, which also reads the shared state (audit queue, reloads,
//! quota store, readiness) at scrape time. Serving them over HTTP is
//! `http.rs`'s job; deciding what to record is the caller's.
//!
//! Labels are bounded: outcomes, reason codes, stages, methods, limit names
//! from `quotas.yaml`. Never a principal, address or path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::decision::{Decision, Outcome};

/// Upper bounds of the latency buckets, seconds: 50 µs to 2.5 s.
const BUCKETS: [f64; 15] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];

/// A latency histogram with fixed buckets, each an atomic: observing is a
/// few relaxed atomic adds, never a lock (prometheus-client's own
/// `Histogram` takes a mutex per observation).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS.len()],
    /// Observations above the last bucket.
    overflow: AtomicU64,
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        match BUCKETS.iter().position(|b| secs <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.overflow.load(Ordering::Relaxed)
    }

    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(le, n)| (*le, n.load(Ordering::Relaxed)))
            .chain([(f64::INFINITY, self.overflow.load(Ordering::Relaxed))])
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Histograms under one label name, one per fixed label value.
#[derive(Debug, Clone)]
struct LabelledHistograms {
    label: &'static str,
    values: &'static [&'static str],
    histograms: Arc<Vec<LatencyHistogram>>,
}

impl LabelledHistograms {
    fn new(label: &'static str, values: &'static [&'static str]) -> Self {
        LabelledHistograms {
            label,
            values,
            histograms: Arc::new(values.iter().map(|_| LatencyHistogram::default()).collect()),
        }
    }
}

impl TypedMetric for LabelledHistograms {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LabelledHistograms {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (value, h) in self.values.iter().zip(self.histograms.iter()) {
            let labels = [(self.label, *value)];
            h.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A label family that is described (`# HELP`, `# TYPE`) even before its
/// first sample, so that dashboards, alerts and tests see every metric the
/// service exports from the first scrape.
#[derive(Debug, Clone)]
struct Described<M>(M);

impl<M: TypedMetric> TypedMetric for Described<M> {
    const TYPE: MetricType = M::TYPE;
}

impl<M: EncodeMetric> EncodeMetric for Described<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// A stage of the decision pipeline, for its latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Route matching.
    Route,
    /// Authentication (credential verification, JWKS, introspection).
    Authn,
    /// Cedar authorization (and shadow policies).
    Authz,
    /// Request-body validation. The validation stage records itself with
    /// `metrics::global().stage(Stage::Validation, elapsed)`.
    Validation,
    /// Quota check-and-charge.
    Quota,
}

const STAGES: &[&str] = &["route", "authn", "authz", "validation", "quota"];

impl Stage {
    fn index(self) -> usize {
        self as usize
    }
}

/// Which API decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Envoy ext_authz `Check`.
    ExtAuthz,
    /// Envoy RLS `ShouldRateLimit`.
    RateLimit,
    /// The forward-auth HTTP listener.
    ForwardAuth,
}

const SERVICES: &[&str] = &["ext_authz", "ratelimit", "forward_auth"];

impl Service {
    fn as_str(self) -> &'static str {
        SERVICES[self as usize]
    }
}

/// A token/answer cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Verified JWTs.
    Token,
    /// Token introspection answers.
    Introspection,
    /// Whole Cedar decisions (per policy snapshot).
    Decision,
}

type Labels2 = [(&'static str, &'static str); 2];
type Labels3 = [(&'static str, &'static str); 3];

/// The process's counters and histograms.
#[derive(Debug)]
pub struct Metrics {
    decisions: Family<Labels3, Counter>,
    /// Each service's `outcome="allow",reason="none"` series of
    /// `decisions`, resolved at its first allow (so that a scrape shows
    /// the same series as before it): the common answer then costs one
    /// atomic add, not a label hash and a lock.
    allowed: [OnceLock<Counter>; SERVICES.len()],
    decision_duration: LabelledHistograms,
    stage_duration: LabelledHistograms,
    authn_failures: Family<Labels2, Counter>,
    quota_rejections: Family<[(&'static str, String); 1], Counter>,
    cache: [Counter; 6],
    cache_family: Family<Labels2, Counter>,
    shadow_disagreements: Family<Labels2, Counter>,
    anomalies: Family<Labels2, Counter>,
    anomaly_blocks: Counter,
    jwks_keys_skipped: Family<[(&'static str, String); 2], Counter>,
    requests_over_budget: Counter,
    requests_in_progress: Gauge,
    reservations: Family<Labels1, Counter>,
    tokens: Family<Labels1, Counter>,
    ext_proc_streams: Family<Labels1, Counter>,
    response_checks: Family<[(&'static str, String); 2], Counter>,
}

type Labels1 = [(&'static str, &'static str); 1];

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// One request counted in `portcullis_requests_in_progress`
/// ([`Metrics::request_in_progress`]) until dropped.
#[derive(Debug)]
#[must_use = "the request counts as in progress while this lives"]
pub struct InProgress(&'static Gauge);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The process's metrics (one process, one set of counters, as Prometheus
/// expects from a scrape target).
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Metrics {
    fn new() -> Self {
        let cache_family: Family<Labels2, Counter> = Family::default();
        // Resolved once: a cache lookup then costs one atomic add.
        let cache = [
            ("token", "hit"),
            ("token", "miss"),
            ("introspection", "hit"),
            ("introspection", "miss"),
            ("decision", "hit"),
            ("decision", "miss"),
        ]
        .map(|(c, r)| cache_family.get_or_create_owned(&[("cache", c), ("result", r)]));
        Metrics {
            decisions: Family::default(),
            allowed: Default::default(),
            decision_duration: LabelledHistograms::new("service", SERVICES),
            stage_duration: LabelledHistograms::new("stage", STAGES),
            authn_failures: Family::default(),
            quota_rejections: Family::default(),
            cache,
            cache_family,
            shadow_disagreements: Family::default(),
            anomalies: Family::default(),
            anomaly_blocks: Counter::default(),
            jwks_keys_skipped: Family::default(),
            requests_over_budget: Counter::default(),
            requests_in_progress: Gauge::default(),
            reservations: Family::default(),
            tokens: Family::default(),
            ext_proc_streams: Family::default(),
            response_checks: Family::default(),
        }
    }

    /// Records a finished decision: outcome and reason, overall latency,
    /// quota rejection, shadow disagreement.
    pub fn decision(&self, service: Service, d: &Decision, elapsed: Duration) {
        let outcome = match d.decision {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
        };
        let reason = d.reason.map(|r| r.code()).unwrap_or("none");
        let labels = [
            ("service", service.as_str()),
            ("outcome", outcome),
            ("reason", reason),
        ];
        if d.decision == Outcome::Allow && d.reason.is_none() {
            self.allowed[service as usize]
                .get_or_init(|| self.decisions.get_or_create_owned(&labels))
                .inc();
        } else {
            self.decisions.get_or_create(&labels).inc();
        }
        self.decision_duration.histograms[service as usize].observe(elapsed);
        if let Some(q) = &d.quota {
            if !d.is_allowed() && d.reason == Some(crate::decision::DenyReason::QuotaExceeded) {
                let limit = q.name.clone().unwrap_or_else(|| "unnamed".into());
                self.quota_rejections
                    .get_or_create(&[("limit", limit)])
                    .inc();
            }
        }
        if let Some(shadow) = d.shadow.as_ref().filter(|s| s.disagrees) {
            let shadow_outcome = match shadow.decision {
                Outcome::Allow => "allow",
                Outcome::Deny => "deny",
            };
            self.shadow_disagreements
                .get_or_create(&[("enforced", outcome), ("shadow", shadow_outcome)])
                .inc();
        }
    }

    /// Records the time one pipeline stage took.
    pub fn stage(&self, stage: Stage, elapsed: Duration) {
        self.stage_duration.histograms[stage.index()].observe(elapsed);
    }

    /// Records refused credentials: the kind of credential presented
    /// (`bearer`, `apikey`, `mtls`) and the failure's stable reason code.
    pub fn authn_failure(&self, method: &'static str, reason: &'static str) {
        self.authn_failures
            .get_or_create(&[("method", method), ("reason", reason)])
            .inc();
    }

    /// Records a cache lookup.
    pub fn cache(&self, cache: Cache, hit: bool) {
        let i = match cache {
            Cache::Token => 0,
            Cache::Introspection => 2,
            Cache::Decision => 4,
        } + usize::from(!hit);
        self.cache[i].inc();
    }

    /// Records an anomaly event of `kind` about a `subject` kind
    /// (`principal` or `source`).
    pub fn anomaly(&self, kind: &'static str, subject: &'static str) {
        self.anomalies
            .get_or_create(&[("kind", kind), ("subject", subject)])
            .inc();
    }

    /// Records a key of an issuer's JWKS that is not used (once per key,
    /// however often the document is fetched): the issuer and the reason's
    /// stable code.
    pub fn jwks_key_skipped(&self, issuer: &str, reason: &'static str) {
        self.jwks_keys_skipped
            .get_or_create(&[
                ("issuer", issuer.to_string()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }

    /// Records a subject blocked by the anomaly detector.
    pub fn anomaly_block(&self) {
        self.anomaly_blocks.inc();
    }

    /// Records a gRPC request refused because its listener had
    /// `server.max_pending_requests` in progress.
    pub fn request_over_budget(&self) {
        self.requests_over_budget.inc();
    }

    /// Counts a request as in progress on a listener with a budget until
    /// the guard is dropped (`portcullis_requests_in_progress`).
    pub fn request_in_progress(&'static self) -> InProgress {
        self.requests_in_progress.inc();
        InProgress(&self.requests_in_progress)
    }

    /// Requests received on the gRPC and forward-auth listeners and not yet
    /// answered, over the whole process: those still being decided, those
    /// waiting for their audit record's write, and those whose HTTP/2
    /// stream has arrived but whose task has not run yet.
    pub fn requests_in_progress(&self) -> u64 {
        u64::try_from(self.requests_in_progress.get()).unwrap_or(0)
    }

    /// Records a token reservation event: `reserved`, `settled`,
    /// `settled_without_usage`, `expired`, `already_settled`,
    /// `not_recorded_*`.
    pub fn reservation(&self, event: &'static str) {
        self.reservations.get_or_create(&[("event", event)]).inc();
    }

    /// Adds `n` tokens of a `kind`: `reserved` at Check, `used` (what a
    /// settlement charged), `returned` and `excess` (charged past the
    /// estimate).
    pub fn tokens(&self, kind: &'static str, n: u64) {
        self.tokens.get_or_create(&[("kind", kind)]).inc_by(n);
    }

    /// Records an ext_proc stream's end: `settled`, `uncorrelated` (no
    /// reservation for its request id; the response passed untouched),
    /// `broken` (the stream ended mid-response), `passed` (nothing to do),
    /// `unreadable_message` (a message over `server.max_message_bytes` or
    /// undecodable ended it with an error status).
    pub fn ext_proc_stream(&self, outcome: &'static str) {
        self.ext_proc_streams
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    /// Records one match of a response check (`responses.yaml`): the
    /// check's name and its action (`tag`, `redact`, `block`).
    pub fn response_check(&self, check: &str, action: &'static str) {
        self.response_checks
            .get_or_create(&[("check", check.to_string()), ("action", action.to_string())])
            .inc();
    }

    /// Observations of a stage so far (for tests).
    pub fn stage_count(&self, stage: Stage) -> u64 {
        self.stage_duration.histograms[stage.index()].count()
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "portcullis_decisions",
            "Decisions by API (ext_authz, ratelimit), outcome and deny reason",
            Described(self.decisions.clone()),
        );
        registry.register(
            "portcullis_decision_duration_seconds",
            "Time to decide one request, by API",
            self.decision_duration.clone(),
        );
        registry.register(
            "portcullis_stage_duration_seconds",
            "Time spent in each stage of the decision pipeline",
            self.stage_duration.clone(),
        );
        registry.register(
            "portcullis_authn_failures",
            "Refused credentials by credential kind and failure reason",
            Described(self.authn_failures.clone()),
        );
        registry.register(
            "portcullis_quota_rejections",
            "Requests refused by a quota limit, by limit name",
            Described(self.quota_rejections.clone()),
        );
        registry.register(
            "portcullis_cache_requests",
            "Token, introspection and decision cache lookups by result",
            Described(self.cache_family.clone()),
        );
        registry.register(
            "portcullis_shadow_disagreements",
            "Decisions where the shadow policies disagree with the enforced ones",
            Described(self.shadow_disagreements.clone()),
        );
        registry.register(
            "portcullis_anomaly_events",
            "Anomaly events by kind and subject kind",
            Described(self.anomalies.clone()),
        );
        registry.register(
            "portcullis_jwks_keys_skipped",
            "Keys of an issuer's JWKS that are not used (encryption keys, other key types or algorithms), by issuer and reason; each key counted once",
            Described(self.jwks_keys_skipped.clone()),
        );
        registry.register(
            "portcullis_anomaly_blocks",
            "Temporary blocks imposed by the anomaly detector",
            self.anomaly_blocks.clone(),
        );
        registry.register(
            "portcullis_token_reservations",
            "Token reservation events (reserved at Check, settled from the response, expired, not recorded)",
            Described(self.reservations.clone()),
        );
        registry.register(
            "portcullis_tokens",
            "Tokens reserved at Check, used (charged at settlement), returned, and charged past the estimate",
            Described(self.tokens.clone()),
        );
        registry.register(
            "portcullis_ext_proc_streams",
            "ext_proc streams by how they ended (settled, uncorrelated, broken, passed, unreadable_message)",
            Described(self.ext_proc_streams.clone()),
        );
        registry.register(
            "portcullis_requests_over_budget",
            "gRPC requests refused (RESOURCE_EXHAUSTED) because their listener had server.max_pending_requests in progress",
            self.requests_over_budget.clone(),
        );
        registry.register(
            "portcullis_requests_in_progress",
            "Requests received on the gRPC and forward-auth listeners and not yet answered",
            self.requests_in_progress.clone(),
        );
        registry.register(
            "portcullis_response_checks",
            "Matches of response checks (responses.yaml) by check name and action",
            Described(self.response_checks.clone()),
        );
    }
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_counts_as_in_progress_until_its_guard_is_dropped() {
        let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let first = m.request_in_progress();
        let second = m.request_in_progress();
        assert_eq!(m.requests_in_progress(), 2);
        drop(first);
        assert_eq!(m.requests_in_progress(), 1);
        drop(second);
        assert_eq!(m.requests_in_progress(), 0);
    }

    #[test]
    fn allowed_decisions_count_in_their_service_series_and_create_no_other() {
        let m = Metrics::new();
        let allow = Decision::new("v1").allow();
        for _ in 0..3 {
            m.decision(Service::ExtAuthz, &allow, Duration::from_micros(5));
        }
        m.decision(Service::RateLimit, &allow, Duration::from_micros(5));
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        assert!(out.contains(
            "portcullis_decisions_total{service=\"ext_authz\",outcome=\"allow\",reason=\"none\"} 3"
        ));
        assert!(out.contains(
            "portcullis_decisions_total{service=\"ratelimit\",outcome=\"allow\",reason=\"none\"} 1"
        ));
        assert!(!out.contains("portcullis_decisions_total{service=\"forward_auth\""));
    }

    #[test]
    fn decisions_quota_rejections_and_shadow_disagreements_are_counted() {
        use crate::decision::{DenyReason, ShadowOutcome};
        let m = Metrics::new();
        let mut d = Decision::new("v1").deny(DenyReason::Forbidden, "no");
        d.shadow = Some(Box::new(ShadowOutcome {
            decision: Outcome::Allow,
            disagrees: true,
            determining_policies: vec!["candidate".into()],
            errors: Vec::new(),
        }));
        m.decision(Service::ExtAuthz, &d, Duration::from_micros(80));
        m.decision(
            Service::ExtAuthz,
            &Decision::new("v1").allow(),
            Duration::from_micros(80),
        );
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        for line in [
            "portcullis_decisions_total{service=\"ext_authz\",outcome=\"deny\",reason=\"forbidden\"} 1",
            "portcullis_decisions_total{service=\"ext_authz\",outcome=\"allow\",reason=\"none\"} 1",
            "portcullis_shadow_disagreements_total{enforced=\"deny\",shadow=\"allow\"} 1",
            "portcullis_decision_duration_seconds_count{service=\"ext_authz\"} 2",
            "portcullis_decision_duration_seconds_count{service=\"ratelimit\"} 0",
        ] {
            assert!(out.contains(line), "{line} in\n{out}");
        }
        // Families without samples are still described.
        assert!(
            out.contains("# TYPE portcullis_quota_rejections_total counter"),
            "{out}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_in_the_exposition() {
        let h = LabelledHistograms::new("stage", STAGES);
        h.histograms[1].observe(Duration::from_micros(30));
        h.histograms[1].observe(Duration::from_millis(3));
        h.histograms[1].observe(Duration::from_secs(10));
        let mut registry = Registry::default();
        registry.register("t_seconds", "test", h);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("t_seconds_bucket{stage=\"authn\",le=\"5e-05\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{stage=\"authn\",le=\"0.005\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{stage=\"authn\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_count{stage=\"authn\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_count{stage=\"quota\"} 0\n"),
            "{out}"
        );
    }
}
