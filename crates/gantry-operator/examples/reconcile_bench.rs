//! Reconcile throughput and memory against the in-memory fake API server (same HTTP wire, real
//! `kube::Client`): 1,000 TFJobs of 10 replicas (1 chief, 7 workers, 2 PS).
//!
//! 1. first reconcile of every job (lists + 10 services + 10 pods + status patch each), one by one;
//! 2. steady-state reconcile of every job (lists only, nothing to change);
//! 3. the real `Controller` started over the 1,000 jobs: resident memory of the process before and
//!    after it has listed, cached and reconciled them all (the fake server's own objects are in
//!    both figures, so the difference is the operator's).
//!
//! `cargo run --release -p gantry-operator --example reconcile_bench [-- JOBS]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_operator::{reconcile, Context, Metrics};
use gantry_planner::{Addressing, GangScheduler, PlanConfig};
use gantry_testkit::kube_api::in_memory_api_server;
use gantry_tfjob::TFJob;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::json;

const JOBS: &str = "/apis/kubeflow.org/v1/namespaces/default/tfjobs";

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn job(i: usize) -> serde_json::Value {
    let container = json!([{"name": "tensorflow", "image": "tf:2.16", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]);
    json!({
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob",
        "metadata": {"name": format!("job-{i:04}"), "namespace": "default", "uid": format!("uid-{i}")},
        "spec": {"tfReplicaSpecs": {
            "Chief": {"replicas": 1, "template": {"spec": {"containers": container}}},
            "Worker": {"replicas": 7, "restartPolicy": "ExitCode", "template": {"spec": {"containers": container}}},
            "PS": {"replicas": 2, "template": {"spec": {"containers": [{"name": "tensorflow", "image": "tf:2.16"}]}}},
        }},
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let (client, server) = in_memory_api_server();
    for i in 0..n {
        server.insert(JOBS, job(i));
    }
    let context = |client: kube::Client, metrics: Arc<Metrics>| {
        Arc::new(Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "bench".into(),
                    instance: None,
                },
            ),
            client,
            plan_config: PlanConfig {
                gang: GangScheduler::None,
                scheduler_name: None,
                addressing: Addressing::ClusterDns {
                    cluster_domain: None,
                },
                operator_name: "tfjob-controller".into(),
            },
            metrics,
            clock: Arc::new(|| Time("2026-01-01T00:00:00Z".parse().unwrap())),
            error_requeue: Duration::from_secs(5),
        })
    };
    let ctx = context(client, Arc::new(Metrics::new()));
    println!("{n} TFJobs x 10 replicas, in-memory fake API server, real kube::Client");
    println!(
        "{:<34} {:>10} {:>12} {:>12}",
        "pass", "seconds", "jobs/s", "API calls"
    );
    for pass in [
        "first reconcile (create 20 objects)",
        "steady state (nothing to do)",
    ] {
        let jobs: Vec<TFJob> = server
            .objects(JOBS)
            .into_iter()
            .map(|j| serde_json::from_value(j).unwrap())
            .collect();
        let calls = server.requests();
        let started = Instant::now();
        for job in jobs {
            reconcile(Arc::new(job), ctx.clone()).await.unwrap();
        }
        let took = started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let rate = n as f64 / took;
        println!(
            "{pass:<34} {took:>10.3} {rate:>12.0} {:>12}",
            server.requests() - calls
        );
    }

    let before = rss_kib();
    let metrics = Arc::new(Metrics::new());
    let ctx = context(server.client(), metrics.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(gantry_operator::controller::run(
        ctx,
        Some("default"),
        16,
        Duration::from_secs(1),
        async move {
            let _ = stopped.await;
        },
    ));
    let started = Instant::now();
    while metrics.reconciles() < n as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let after = rss_kib();
    println!(
        "controller: listed, cached and reconciled {n} jobs in {took:.3} s; RSS {} MiB before, {} MiB after: +{} MiB for the operator (VmRSS, 1 KiB resolution)",
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024
    );
    let _ = stop.send(());
    let _ = controller.await;
}
