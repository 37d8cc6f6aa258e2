//! Golden plans: the first plan of representative jobs, committed under `tests/golden/`. The test
//! regenerates each and fails on drift; `GANTRY_BLESS=1` rewrites the files instead.
#![allow(clippy::unwrap_used)] // test helpers: a panic is a failure

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use gantry_planner::{Addressing, GangScheduler, PlanConfig};
use support::{manifest, World};

fn check(name: &str, world: &mut World) {
    let plan = world.step();
    let text = serde_json::to_string_pretty(&plan).unwrap() + "\n";
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    if std::env::var_os("GANTRY_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with GANTRY_BLESS=1 to create it",
            path.display()
        )
    });
    assert!(
        want == text,
        "{name}: plan drifted from {}; if intended, rerun with GANTRY_BLESS=1 and review the diff\n--- got ---\n{text}",
        path.display()
    );
}

#[test]
fn all_five_replica_types_with_chief() {
    let job = manifest(
        "mnist",
        &[
            ("Chief", 1, "Never"),
            ("Worker", 2, "ExitCode"),
            ("PS", 1, "Always"),
            ("Evaluator", 1, "OnFailure"),
        ],
        "",
    );
    check("chief_worker_ps_evaluator", &mut World::new(job));
}

#[test]
fn master_instead_of_chief() {
    let job = manifest(
        "dist",
        &[("Master", 1, "Never"), ("Worker", 1, "Never")],
        "",
    );
    check("master_worker", &mut World::new(job));
}

#[test]
fn worker_zero_has_the_master_role_without_a_chief() {
    let job = manifest(
        "ps-only",
        &[("Worker", 2, "OnFailure"), ("PS", 1, "Never")],
        "",
    );
    check("worker_ps_no_chief", &mut World::new(job));
}

#[test]
fn a_single_replica_gets_no_tf_config() {
    let job = manifest("single", &[("Worker", 1, "Never")], "");
    check("single_replica", &mut World::new(job));
}

#[test]
fn dynamic_workers_get_the_sparse_form() {
    let job = manifest(
        "elastic",
        &[
            ("Chief", 1, "Never"),
            ("Worker", 2, "Never"),
            ("PS", 2, "Never"),
        ],
        "  enableDynamicWorker: true\n",
    );
    check("dynamic_worker", &mut World::new(job));
}

#[test]
fn cluster_domain_and_gang_scheduling_with_volcano() {
    let job = manifest("gang", &[("Worker", 2, "Never"), ("PS", 1, "Never")], "");
    let config = PlanConfig {
        gang: GangScheduler::Volcano,
        addressing: Addressing::ClusterDns {
            cluster_domain: Some("cluster.local".into()),
        },
        ..PlanConfig::default()
    };
    // The first plan only creates the PodGroup: Volcano must admit it before pods exist.
    check(
        "volcano_podgroup",
        &mut World::with_config(job.clone(), config.clone()),
    );
    let mut world = World::with_config(job, config);
    world.step();
    world.observed.pod_group = Some(gantry_planner::ObservedPodGroup { admitted: true });
    check("volcano_admitted", &mut world);
}

#[test]
fn loopback_addressing_for_gantry_run() {
    let job = manifest(
        "local",
        &[
            ("Chief", 1, "Never"),
            ("Worker", 2, "ExitCode"),
            ("PS", 1, "Never"),
        ],
        "",
    );
    let ports = BTreeMap::from([
        ("local-chief-0".to_string(), 41000),
        ("local-worker-0".to_string(), 41001),
        ("local-worker-1".to_string(), 41002),
        ("local-ps-0".to_string(), 41003),
    ]);
    let config = PlanConfig {
        addressing: Addressing::loopback(ports),
        ..PlanConfig::default()
    };
    check("loopback", &mut World::with_config(job, config));
}
