//! `gantry scheduler`: the kube-scheduler HTTP extender.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gantry_extender::{health_router, router, serve, Cache, KubeBinder, ServerConfig, SystemClock};
use gantry_placement::{Policy, TargetWorkload};
use gantry_scheduler::{default_workload, Config, Extender};

/// Serve kube-scheduler's extender protocol (filter, prioritize, bind): place GPU pods on nodes
/// and GPUs with Gantry's placement engine.
///
/// The cluster state comes from the API server through watches (kube-rs): Nodes with the device
/// plugin's `gantry.dev/gpus` annotation and the pods bound to them. The client is the
/// in-cluster service account, or KUBECONFIG / ~/.kube/config outside a cluster (the `--help`
/// text is the `Scheduler` variant's in `main.rs`). Every flag has an environment variable.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to serve the extender on (kube-scheduler's `urlPrefix` points here).
    #[arg(long, env = "GANTRY_SCHEDULER_LISTEN", default_value = "0.0.0.0:8888")]
    pub listen: SocketAddr,

    /// Also serve only `/healthz` and `/readyz` here, for the kubelet's probes when `--listen` is
    /// a localhost address (as in deploy/scheduler/, where only kube-scheduler calls the verbs).
    #[arg(long, env = "GANTRY_SCHEDULER_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// Node scoring policy: random, dot-product, gpu-clustering, gpu-packing, best-fit, fgd,
    /// frag-cpu (Gantry's best in the simulator).
    #[arg(long, env = "GANTRY_SCHEDULER_POLICY", default_value = "frag-cpu")]
    pub policy: String,

    /// Target workload for fgd/frag-cpu: a pod list CSV in the Alibaba `openb` format. Default:
    /// a built-in mix of shared, 1-, 2-, 4- and 8-GPU pods.
    #[arg(long, env = "GANTRY_SCHEDULER_WORKLOAD")]
    pub workload: Option<PathBuf>,

    /// Largest request body accepted, in bytes (node names only: ~20 bytes a node; full Node
    /// objects: ~10 KiB a node).
    #[arg(long, env = "GANTRY_SCHEDULER_BODY_LIMIT", default_value_t = 16 << 20)]
    pub body_limit: usize,

    /// Seconds a gang's reservation waits for its members to bind before it is released.
    #[arg(long, env = "GANTRY_SCHEDULER_GANG_TIMEOUT", default_value_t = 60)]
    pub gang_timeout: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let policy: Policy = args.policy.parse()?;
    let workload = match &args.workload {
        Some(path) => {
            let pods = gantry_simulator::trace::load_pods(path)
                .with_context(|| format!("reading the target workload {}", path.display()))?;
            TargetWorkload::from_pods(&pods, gantry_simulator::DEFAULT_COVERAGE)
        }
        None => default_workload(),
    };
    let extender = Arc::new(Extender::new(Config {
        policy,
        workload: Some(workload),
        gang_timeout: Duration::from_secs(args.gang_timeout),
        ..Config::default()
    })?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let client = kube::Client::try_default().await.context(
            "connecting to the Kubernetes API: run it in the cluster (deploy/scheduler/) \
                 or point KUBECONFIG at a kubeconfig",
        )?;
        let cache = Arc::new(Cache::new(extender.clone()));
        let readiness = cache.readiness();
        let watch_client = client.clone();
        tokio::spawn(async move { cache.run(watch_client).await });
        let binder = Arc::new(KubeBinder::new(client));
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        if let Some(addr) = args.health_listen {
            let health = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for probes on {addr}"))?;
            let app = health_router(readiness.clone());
            tracing::info!(listen = %addr, "serving /healthz and /readyz for probes");
            tokio::spawn(async move {
                if let Err(e) = serve(health, app, std::future::pending()).await {
                    tracing::error!(error = %e, "the probe listener stopped");
                }
            });
        }
        tracing::info!(listen = %args.listen, %policy, "gantry scheduler extender serving");
        let app = router(
            extender,
            binder,
            SystemClock,
            readiness,
            ServerConfig {
                body_limit: args.body_limit,
            },
        );
        serve(listener, app, async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
        Ok(())
    })
}
