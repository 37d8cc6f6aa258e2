//! `gantry operator`: the TFJob operator on Kubernetes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use gantry_operator::operator::{LeaderElection, OperatorOptions};
use gantry_planner::{Addressing, GangScheduler, PlanConfig};

/// Gang scheduling modes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Gang {
    /// No PodGroup.
    None,
    /// Volcano PodGroup (scheduling.volcano.sh/v1beta1); pods only once it is admitted.
    Volcano,
    /// scheduler-plugins PodGroup (scheduling.x-k8s.io/v1alpha1).
    SchedulerPlugins,
    /// Gantry's scheduler extender: gantry.dev/pod-group labels, scheduler gantry-scheduler.
    Gantry,
}

/// Reconcile TFJobs (kubeflow.org/v1) on Kubernetes: pods, headless services, PodGroups, status.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "GANTRY_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Gang scheduler for every job's PodGroup.
    #[arg(
        long,
        value_enum,
        default_value = "none",
        env = "GANTRY_GANG_SCHEDULER"
    )]
    gang_scheduler: Gang,
    /// `schedulerName` of the pods under gang scheduling (default: volcano,
    /// scheduler-plugins-scheduler or gantry-scheduler).
    #[arg(long, env = "GANTRY_SCHEDULER_NAME")]
    scheduler_name: Option<String>,
    /// Where /metrics, /healthz and /readyz listen.
    #[arg(long, default_value = "0.0.0.0:8080", env = "GANTRY_METRICS_ADDRESS")]
    metrics_address: SocketAddr,
    /// Elect a leader through a coordination.k8s.io Lease, so several replicas can run.
    #[arg(long, env = "GANTRY_LEADER_ELECT")]
    leader_elect: bool,
    /// Name of the Lease.
    #[arg(
        long,
        default_value = "gantry-operator",
        env = "GANTRY_LEADER_ELECTION_LEASE"
    )]
    leader_election_lease: String,
    /// Namespace of the Lease (default: --namespace, else `default`; the Deployment sets the pod's own).
    #[arg(long, env = "GANTRY_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Seconds a lease lasts without renewal.
    #[arg(long, default_value_t = 15, env = "GANTRY_LEADER_ELECTION_DURATION")]
    leader_election_duration: u64,
    /// This replica's identity for the Lease and events (the Deployment passes the pod name).
    #[arg(long, default_value = "gantry-operator", env = "GANTRY_POD_NAME")]
    identity: String,
    /// Cluster domain appended to replica addresses in TF_CONFIG (`<pod>.<ns>.svc.<domain>`); none
    /// by default, as Kubeflow (whose variable is CUSTOM_CLUSTER_DOMAIN).
    #[arg(long, env = "GANTRY_CLUSTER_DOMAIN")]
    cluster_domain: Option<String>,
    /// Value of the training.kubeflow.org/operator-name label (Kubeflow's, so migrated jobs' pods are
    /// recognised).
    #[arg(long, default_value = "tfjob-controller", env = "GANTRY_OPERATOR_NAME")]
    operator_name: String,
    /// Seconds in-flight reconciles may take after SIGTERM.
    #[arg(long, default_value_t = 20, env = "GANTRY_SHUTDOWN_GRACE")]
    shutdown_grace: u64,
    /// Jobs reconciled in parallel (0: unbounded).
    #[arg(long, default_value_t = 16, env = "GANTRY_OPERATOR_CONCURRENCY")]
    concurrency: u16,
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
        let gang = match args.gang_scheduler {
            Gang::None => GangScheduler::None,
            Gang::Volcano => GangScheduler::Volcano,
            Gang::SchedulerPlugins => GangScheduler::SchedulerPlugins,
            Gang::Gantry => GangScheduler::Gantry,
        };
        let leader_election = args.leader_elect.then(|| LeaderElection {
            namespace: args
                .leader_election_namespace
                .clone()
                .or_else(|| args.namespace.clone())
                .unwrap_or_else(|| "default".to_string()),
            name: args.leader_election_lease.clone(),
            identity: args.identity.clone(),
            duration: Duration::from_secs(args.leader_election_duration.max(2)),
            retry: Duration::from_secs((args.leader_election_duration / 3).max(1)),
        });
        let options = OperatorOptions {
            namespace: args.namespace,
            plan: PlanConfig {
                gang,
                scheduler_name: args.scheduler_name,
                addressing: Addressing::ClusterDns {
                    cluster_domain: args.cluster_domain,
                },
                operator_name: args.operator_name,
            },
            metrics_address: args.metrics_address,
            leader_election,
            concurrency: args.concurrency,
            instance: args.identity,
            shutdown_grace: Duration::from_secs(args.shutdown_grace),
        };
        gantry_operator::operator::run(client, options, shutdown_signal())
            .await
            .context("gantry operator")
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("shutting down");
}
