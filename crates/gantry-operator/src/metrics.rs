//! Prometheus metrics: reconciles, errors by kind, jobs by phase, reconcile latency.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use gantry_tfjob::{JobConditionType, JobStatus, TFJob};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::error::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

/// The operator's metrics, registered under the `gantry_operator` prefix.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<KindLabel, Counter>,
    latency: Histogram,
    jobs: Family<PhaseLabel, Gauge>,
    /// Pods created.
    pub pods_created: Counter,
    phases: Mutex<BTreeMap<String, &'static str>>,
}

/// The phases a job is counted under.
pub const PHASES: [&str; 6] = [
    "Created",
    "Running",
    "Restarting",
    "Suspended",
    "Succeeded",
    "Failed",
];

/// A job's phase: its terminal or most telling condition.
pub fn phase(status: Option<&JobStatus>) -> &'static str {
    let Some(status) = status else {
        return "Created";
    };
    for (kind, name) in [
        (JobConditionType::Failed, "Failed"),
        (JobConditionType::Succeeded, "Succeeded"),
        (JobConditionType::Suspended, "Suspended"),
        (JobConditionType::Restarting, "Restarting"),
        (JobConditionType::Running, "Running"),
    ] {
        if status.is(kind) {
            return name;
        }
    }
    "Created"
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gantry_operator");
        let reconciles = Counter::default();
        let errors = Family::<KindLabel, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let jobs = Family::<PhaseLabel, Gauge>::default();
        let pods_created = Counter::default();
        registry.register("reconciles", "TFJob reconciles", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error kind",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile",
            latency.clone(),
        );
        registry.register("jobs", "TFJobs by phase", jobs.clone());
        registry.register("pods_created", "Pods created", pods_created.clone());
        for phase in PHASES {
            jobs.get_or_create(&PhaseLabel {
                phase: phase.to_string(),
            })
            .set(0);
        }
        Self {
            registry,
            reconciles,
            errors,
            latency,
            jobs,
            pods_created,
            phases: Mutex::new(BTreeMap::new()),
        }
    }

    /// Reconciles so far.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.get()
    }

    /// Counts one reconcile and its outcome.
    pub fn observe_reconcile(&self, took: Duration, error: Option<&Error>) {
        self.reconciles.inc();
        self.latency.observe(took.as_secs_f64());
        if let Some(err) = error {
            self.errors
                .get_or_create(&KindLabel {
                    kind: err.kind().to_string(),
                })
                .inc();
        }
    }

    /// Records the phase of `job` after a reconcile.
    pub fn set_phase(&self, job: &TFJob, status: Option<&JobStatus>) {
        let key = format!("{}/{}", job.namespace(), job.name());
        let phase = phase(status);
        let Ok(mut phases) = self.phases.lock() else {
            return;
        };
        let old = phases.insert(key, phase);
        if old != Some(phase) {
            if let Some(old) = old {
                self.jobs
                    .get_or_create(&PhaseLabel {
                        phase: old.to_string(),
                    })
                    .dec();
            }
            self.jobs
                .get_or_create(&PhaseLabel {
                    phase: phase.to_string(),
                })
                .inc();
        }
    }

    /// Forgets a deleted job.
    pub fn forget(&self, namespace: &str, name: &str) {
        let Ok(mut phases) = self.phases.lock() else {
            return;
        };
        if let Some(old) = phases.remove(&format!("{namespace}/{name}")) {
            self.jobs
                .get_or_create(&PhaseLabel {
                    phase: old.to_string(),
                })
                .dec();
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
