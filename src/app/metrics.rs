//! The metrics read from the running state at scrape time (snapshot
//! version, reloads, audit queue, stores, readiness, blocked subjects),
//! rendered with the process-wide counters of `crate::metrics` in the
//! Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::health::Readiness;
use super::State;

/// Values read from the shared state at scrape time.
#[derive(Debug)]
struct StateCollector {
    state: Arc<State>,
    readiness: Readiness,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(&[(&str, &str)], i64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.state;
        let snapshot = state.policies.current();
        gauge(
            &mut e,
            "portcullis_policy_snapshot_info",
            "The serving policy snapshot's version (value always 1)",
            &[(&[("version", snapshot.version.as_str())], 1)],
        )?;
        let stats = state.policies.stats();
        counter(
            &mut e,
            "portcullis_policy_reloads",
            "Policy reloads: snapshots swapped in (success) and changes rejected",
            &[
                (&[("result", "success")], stats.reloads),
                (&[("result", "rejected")], stats.rejected),
            ],
        )?;
        let audit = &state.audit;
        let c = audit.counters();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut e,
            "portcullis_audit_queue_depth",
            "Audit records waiting for the writer",
            &[(&[], audit.queue_depth() as i64)],
        )?;
        gauge(
            &mut e,
            "portcullis_audit_queue_capacity",
            "Audit records that may wait for the writer",
            &[(&[], audit.capacity() as i64)],
        )?;
        counter(
            &mut e,
            "portcullis_audit_records_written",
            "Audit records written to disk",
            &[(&[], load(&c.written))],
        )?;
        counter(
            &mut e,
            "portcullis_audit_records_dropped",
            "Audit records that could not be queued (queue full or writer stopped)",
            &[(&[], load(&c.dropped))],
        )?;
        counter(
            &mut e,
            "portcullis_audit_write_errors",
            "Failed writes of the audit trail",
            &[(&[], load(&c.write_errors))],
        )?;
        counter(
            &mut e,
            "portcullis_audit_files_replaced",
            "Times the audit file being written was found moved, removed or replaced at its path (a new file was started)",
            &[(&[], load(&c.files_replaced))],
        )?;
        counter(
            &mut e,
            "portcullis_audit_ratelimit_ok_unrecorded",
            "Plain OK ShouldRateLimit answers left out of the audit trail by audit.ratelimit.ok_sample_every",
            &[(&[], load(&c.ratelimit_ok_unrecorded))],
        )?;
        counter(
            &mut e,
            "portcullis_audit_refused",
            "Requests denied because their decision could not be recorded (fail_closed)",
            &[(&[], load(&c.refused))],
        )?;
        counter(
            &mut e,
            "portcullis_audit_write_timeouts",
            "Answers that stopped waiting for their audit record's write at audit.write_timeout_ms",
            &[(&[], load(&c.write_timeouts))],
        )?;
        counter(
            &mut e,
            "portcullis_audit_checkpoint_sign_errors",
            "Checkpoints not written because the signing key could not sign (a PKCS#11 token unavailable)",
            &[(&[], load(&c.sign_errors))],
        )?;
        {
            // Zeros without `audit.export`, so dashboards and alerts read
            // one set of series whatever the configuration.
            let none = crate::audit::export::ExportCounters::default();
            let x = audit.export().map_or(&none, |e| &*e.counters);
            counter(
                &mut e,
                "portcullis_audit_export_records",
                "Audit records shipped to the collector (exported), dropped from a full export queue, or given up on (failed)",
                &[
                    (&[("result", "exported")], load(&x.exported)),
                    (&[("result", "dropped")], load(&x.dropped)),
                    (&[("result", "failed")], load(&x.failed)),
                ],
            )?;
            counter(
                &mut e,
                "portcullis_audit_export_errors",
                "Failed export calls to the collector (each retry counts)",
                &[(&[], load(&x.errors))],
            )?;
            gauge(
                &mut e,
                "portcullis_audit_export_queue_depth",
                "Audit records queued for export or being sent",
                &[(&[], x.pending() as i64)],
            )?;
        }
        let quotas = &state.quotas;
        counter(
            &mut e,
            "portcullis_quota_store_errors",
            "Quota store calls that failed or timed out",
            &[(&[("store", quotas.store_name())], quotas.store_errors())],
        )?;
        counter(
            &mut e,
            "portcullis_quota_degraded_decisions",
            "Quota decisions taken in the configured degraded mode",
            &[(
                &[("mode", quotas.on_error().as_str())],
                quotas.degraded_decisions(),
            )],
        )?;
        let ready = self.readiness.current();
        gauge(
            &mut e,
            "portcullis_ready",
            "1 when the service is ready (snapshot loaded, required backends reachable)",
            &[(&[], i64::from(ready.ready))],
        )?;
        gauge(
            &mut e,
            "portcullis_jwks_issuers_unready",
            "JWT issuers whose keys are not usable (never fetched or too stale)",
            &[(&[], ready.unready_issuers as i64)],
        )?;
        if let Some(anomalies) = &state.anomalies {
            let (principals, sources, blocked) = anomalies.tracked();
            gauge(
                &mut e,
                "portcullis_anomaly_tracked_subjects",
                "Principals and source addresses with an anomaly baseline in memory",
                &[
                    (&[("subject", "principal")], principals as i64),
                    (&[("subject", "source")], sources as i64),
                ],
            )?;
            gauge(
                &mut e,
                "portcullis_anomaly_blocked_subjects",
                "Subjects blocked by the anomaly detector right now",
                &[(&[], blocked as i64)],
            )?;
        }
        Ok(())
    }
}

/// Renders every metric in the Prometheus text format (version 0.0.4).
pub fn render(state: &Arc<State>, readiness: &Readiness) -> String {
    let mut registry = Registry::default();
    crate::metrics::global().register(&mut registry);
    registry.register_collector(Box::new(StateCollector {
        state: Arc::clone(state),
        readiness: readiness.clone(),
    }));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String does not fail");
    out
}
