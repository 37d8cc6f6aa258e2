//! Planner throughput: plans 1,000 jobs of 10 replicas (1 chief, 7 workers, 2 PS), first from scratch
//! (every pod and service to create) and then at steady state (every pod running), and prints jobs/s.
//!
//! `cargo run --release -p gantry-planner --example plan_bench [-- JOBS ROUNDS]`
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::cast_precision_loss)]

use std::time::Instant;

use gantry_planner::{plan, Observed, PlanConfig};
use gantry_tfjob::{parse_tfjob, TFJob};
use k8s_openapi::api::core::v1::PodStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

fn job(i: usize) -> TFJob {
    let mut text = format!(
        "apiVersion: kubeflow.org/v1\nkind: TFJob\nmetadata: {{name: job-{i}, namespace: bench}}\nspec:\n  tfReplicaSpecs:\n"
    );
    for (rtype, n) in [("Chief", 1), ("Worker", 7), ("PS", 2)] {
        text.push_str(&format!(
            "    {rtype}:\n      replicas: {n}\n      restartPolicy: ExitCode\n      template:\n        spec:\n          containers: [{{name: tensorflow, image: tf, command: [python, train.py]}}]\n"
        ));
    }
    parse_tfjob(&text, "bench", true).unwrap().job
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let jobs = args.first().copied().unwrap_or(1000);
    let rounds = args.get(1).copied().unwrap_or(5);
    let config = PlanConfig::default();
    let now = Time(Timestamp::from_second(1_800_000_000).unwrap());
    let all: Vec<TFJob> = (0..jobs).map(job).collect();

    // Steady state: the first plan's pods, all running, with the status it wrote.
    let steady: Vec<(TFJob, Observed)> = all
        .iter()
        .map(|j| {
            let p = plan(j, &Observed::default(), &config, &now).unwrap();
            let mut pods = p.create_pods.clone();
            for pod in &mut pods {
                pod.status = Some(PodStatus {
                    phase: Some("Running".into()),
                    ..PodStatus::default()
                });
            }
            let mut j = j.clone();
            j.status = p.status.clone();
            let observed = Observed {
                pods,
                services: p.create_services.clone(),
                pod_group: None,
            };
            let p2 = plan(&j, &observed, &config, &now).unwrap();
            j.status = p2.status.or(j.status);
            (j, observed)
        })
        .collect();

    println!(
        "{:<28} {:>8} {:>10} {:>12} {:>12}",
        "scenario", "jobs", "replicas", "seconds", "jobs/s"
    );
    for (label, run) in [
        ("create (empty cluster)", 0),
        ("steady state (all running)", 1),
    ] {
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let start = Instant::now();
            let mut pods = 0usize;
            if run == 0 {
                for j in &all {
                    pods += plan(j, &Observed::default(), &config, &now)
                        .unwrap()
                        .create_pods
                        .len();
                }
                assert_eq!(pods, jobs * 10);
            } else {
                for (j, observed) in &steady {
                    let p = plan(j, observed, &config, &now).unwrap();
                    assert!(p.is_empty(), "steady state must plan nothing");
                }
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "{:<28} {:>8} {:>10} {:>12.4} {:>12.0}",
            label,
            jobs,
            10,
            best,
            jobs as f64 / best
        );
    }
    println!("(best of {rounds} rounds, one thread)");
}
