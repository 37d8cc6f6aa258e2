//! filter, prioritize and bind against clusters built from the inventory fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gantry_scheduler::wire::{ExtenderArgs, ExtenderBindingArgs};
use gantry_scheduler::{Config, Extender, Hold, NodeGpus};
use serde_json::json;
use support::*;

/// t4: 4× T4 (32 cores), h100: 8× H100 (128 cores), a100: A100 in MIG mode, cpu: no GPUs.
fn cluster() -> Extender {
    let ext = Extender::new(Config::default()).unwrap();
    let s = ext.state();
    s.upsert_node(&node("t4", 32, 128, Some("t4-pcie-4.yaml")))
        .unwrap();
    s.upsert_node(&node("h100", 128, 1024, Some("h100-nvswitch-8.yaml")))
        .unwrap();
    s.upsert_node(&node("a100", 64, 512, Some("a100-mig-4.yaml")))
        .unwrap();
    s.upsert_node(&node("cpu", 64, 256, None)).unwrap();
    ext
}

fn args(pod: serde_json::Value, names: &[&str]) -> ExtenderArgs {
    serde_json::from_value(args_names(&pod, names)).unwrap()
}

fn bind(ext: &Extender, name: &str, node: &str, now: Instant) -> gantry_scheduler::BindPlan {
    let plan = ext
        .begin_bind(
            &ExtenderBindingArgs {
                pod_name: name.into(),
                pod_namespace: "ml".into(),
                pod_uid: format!("uid-{name}"),
                node: node.into(),
            },
            now,
        )
        .unwrap();
    ext.finish_bind(&plan, true);
    plan
}

const ALL: [&str; 5] = ["t4", "h100", "a100", "cpu", "ghost"];

#[test]
fn filter_gives_a_reason_for_every_node_it_removes() {
    let ext = cluster();
    let now = Instant::now();
    let r = ext.filter(&args(pod_json("p", "4", 8, 0, None), &ALL), now);
    assert_eq!(r.error, "");
    assert_eq!(r.node_names.as_deref(), Some(&["h100".to_string()][..]));
    let t4 = &r.failed_and_unresolvable_nodes["t4"];
    assert_eq!(t4, "the node has 4 GPU(s), the pod requests 8");
    assert!(r.failed_and_unresolvable_nodes["cpu"].contains("no gantry.dev/gpus annotation"));
    assert!(r.failed_and_unresolvable_nodes["ghost"].contains("unknown"));
    assert_eq!(
        r.failed_and_unresolvable_nodes["a100"],
        "the node has 4 GPU(s), the pod requests 8"
    );
    // Every candidate is accounted for exactly once.
    let total =
        r.node_names.unwrap().len() + r.failed_nodes.len() + r.failed_and_unresolvable_nodes.len();
    assert_eq!(total, ALL.len());
}

#[test]
fn filter_reports_cpu_as_resolvable() {
    let ext = cluster();
    let r = ext.filter(
        &args(pod_json("p", "64", 1, 0, None), &["t4", "h100"]),
        Instant::now(),
    );
    assert_eq!(r.node_names.as_deref(), Some(&["h100".to_string()][..]));
    assert!(r.failed_nodes["t4"].contains("not enough CPU"), "{r:?}");
}

#[test]
fn reasons_depend_on_the_request_not_on_each_nodes_free_amounts() {
    // kube-scheduler's event counts nodes per distinct reason; per-node numbers would make one
    // entry per node. t4 and h100 end up with different free CPU, and the same reason.
    let ext = cluster();
    let now = Instant::now();
    let p = ext.filter(&args(pod_json("small", "8", 1, 0, None), &["t4"]), now);
    assert_eq!(p.node_names.as_deref(), Some(&["t4".to_string()][..]));
    bind(&ext, "small", "t4", now);
    let r = ext.filter(
        &args(pod_json("big", "200", 1, 0, None), &["t4", "h100"]),
        now,
    );
    assert_eq!(r.failed_nodes["t4"], r.failed_nodes["h100"], "{r:?}");
    assert!(r.failed_nodes["t4"].contains("200000m"), "{r:?}");

    // Two of a100's four GPUs are MIG-split (no schedulable capacity): three whole GPUs do not
    // fit there, and the node does have four GPUs, so it is "not enough GPU".
    let r = ext.filter(
        &args(pod_json("three", "1", 3, 0, None), &["a100", "h100"]),
        now,
    );
    assert_eq!(r.node_names.as_deref(), Some(&["h100".to_string()][..]));
    assert_eq!(
        r.failed_nodes["a100"],
        "not enough GPU: 3 GPU(s) with 1000 milli-GPU free needed"
    );
}

#[test]
fn pods_without_gpu_requests_and_bad_quantities_are_errors() {
    let ext = cluster();
    let r = ext.filter(&args(pod_json("p", "1", 0, 0, None), &ALL), Instant::now());
    assert!(
        r.error
            .contains("requests neither nvidia.com/gpu nor gantry.dev/gpu-milli"),
        "{}",
        r.error
    );
    let r = ext.filter(
        &args(pod_json("p", "lots", 1, 0, None), &ALL),
        Instant::now(),
    );
    assert!(r.error.contains("not a Kubernetes quantity"), "{}", r.error);
    let r = ext.filter(
        &args(pod_json("p", "1", 0, 1500, None), &ALL),
        Instant::now(),
    );
    assert!(r.error.contains("exceeds one GPU"), "{}", r.error);
    let r = ext.filter(
        &args(pod_json("p", "1", 1, 500, None), &ALL),
        Instant::now(),
    );
    assert!(r.error.contains("both"), "{}", r.error);
}

#[test]
fn prioritize_prefers_packing_shared_pods_onto_a_shared_gpu() {
    let ext = cluster();
    let now = Instant::now();
    // A half GPU on the T4 node, then a quarter: frag-cpu puts the second beside the first.
    let r = ext.filter(
        &args(pod_json("a", "2", 0, 500, None), &["t4", "h100"]),
        now,
    );
    assert_eq!(r.node_names.unwrap().len(), 2);
    let scores = ext
        .prioritize(
            &args(pod_json("a", "2", 0, 500, None), &["t4", "h100"]),
            now,
        )
        .unwrap();
    assert!(scores.iter().all(|h| (0..=10).contains(&h.score)));
    let best = scores.iter().max_by_key(|h| h.score).unwrap().host.clone();
    let plan = bind(&ext, "a", &best, now);
    assert_eq!(plan.assignment.gpus.len(), 1);
    assert_eq!(plan.assignment.gpus[0].milli, 500);

    let b = pod_json("b", "2", 0, 250, None);
    ext.filter(&args(b.clone(), &["t4", "h100"]), now);
    let scores = ext.prioritize(&args(b, &["t4", "h100"]), now).unwrap();
    let top = scores.iter().find(|h| h.score == 10).unwrap();
    assert_eq!(top.host, best, "{scores:?}");
    let plan_b = bind(&ext, "b", &best, now);
    assert_eq!(
        plan_b.assignment.gpus[0].index, plan.assignment.gpus[0].index,
        "shares the used GPU"
    );
    assert_eq!(plan_b.assignment.gpus[0].uuid, plan.assignment.gpus[0].uuid);
}

#[test]
fn prioritize_scores_infeasible_nodes_zero() {
    let ext = cluster();
    let now = Instant::now();
    let p = pod_json("p", "4", 8, 0, None);
    let scores = ext
        .prioritize(&args(p, &["t4", "h100", "ghost"]), now)
        .unwrap();
    let by: std::collections::BTreeMap<_, _> =
        scores.iter().map(|h| (h.host.as_str(), h.score)).collect();
    assert_eq!(by["h100"], 10);
    assert_eq!(by["t4"], 0);
    assert_eq!(by["ghost"], 0);
}

#[test]
fn bind_records_distinct_gpus_until_the_node_is_full() {
    let ext = cluster();
    let now = Instant::now();
    let mut seen = BTreeSet::new();
    for i in 0..4 {
        let name = format!("w{i}");
        ext.filter(&args(pod_json(&name, "4", 1, 0, None), &["t4"]), now);
        let plan = bind(&ext, &name, "t4", now);
        assert_eq!(plan.assignment.node, "t4");
        for g in &plan.assignment.gpus {
            assert_eq!(g.milli, 1000);
            assert!(
                seen.insert(g.uuid.clone()),
                "GPU {} handed out twice",
                g.uuid
            );
        }
    }
    // The fifth does not fit: filter says so and a bind anyway is refused.
    let r = ext.filter(&args(pod_json("w4", "4", 1, 0, None), &["t4"]), now);
    assert!(
        r.failed_nodes.contains_key("t4") || r.failed_and_unresolvable_nodes.contains_key("t4")
    );
    let err = ext
        .begin_bind(
            &ExtenderBindingArgs {
                pod_name: "w4".into(),
                pod_namespace: "ml".into(),
                pod_uid: "uid-w4".into(),
                node: "t4".into(),
            },
            now,
        )
        .unwrap_err();
    assert_eq!(err.kind(), "does_not_fit");
}

#[test]
fn a_failed_api_write_gives_the_gpus_back() {
    let ext = cluster();
    let now = Instant::now();
    ext.filter(&args(pod_json("p", "4", 4, 0, None), &["t4"]), now);
    let b = ExtenderBindingArgs {
        pod_name: "p".into(),
        pod_namespace: "ml".into(),
        pod_uid: "uid-p".into(),
        node: "t4".into(),
    };
    let plan = ext.begin_bind(&b, now).unwrap();
    assert_eq!(plan.assignment.gpus.len(), 4);
    // While the write is in flight the GPUs are held.
    let r = ext.filter(&args(pod_json("q", "1", 1, 0, None), &["t4"]), now);
    assert!(r.node_names.unwrap().is_empty());
    ext.finish_bind(&plan, false);
    let r = ext.filter(&args(pod_json("q", "1", 1, 0, None), &["t4"]), now);
    assert_eq!(r.node_names.unwrap(), vec!["t4".to_string()]);
    // The pod is forgotten too: a second bind needs a new filter.
    assert_eq!(ext.begin_bind(&b, now).unwrap_err().kind(), "unknown_pod");
}

#[test]
fn state_is_rebuilt_from_bound_pods_annotations() {
    let ext = cluster();
    let now = Instant::now();
    ext.filter(&args(pod_json("p", "4", 0, 700, None), &["t4"]), now);
    let plan = bind(&ext, "p", "t4", now);
    // A fresh extender (a restart) learns the same from the pod object as the API returns it.
    let fresh = cluster();
    let mut bound = pod_json("p", "4", 0, 700, None);
    bound["spec"]["nodeName"] = json!("t4");
    bound["metadata"]["annotations"] =
        json!({ "gantry.dev/gpu-assignment": plan.assignment.to_annotation() });
    fresh
        .observe_pod(&serde_json::from_value(bound.clone()).unwrap())
        .unwrap();
    let mine: Vec<_> = ext
        .state()
        .all_allocations()
        .into_iter()
        .map(|(n, _, a)| (n, a.gpus))
        .collect();
    let theirs: Vec<_> = fresh
        .state()
        .all_allocations()
        .into_iter()
        .map(|(n, _, a)| (n, a.gpus))
        .collect();
    assert_eq!(mine, theirs);
    // The pod finishing releases it.
    bound["status"]["phase"] = json!("Succeeded");
    fresh
        .observe_pod(&serde_json::from_value(bound).unwrap())
        .unwrap();
    assert!(fresh.state().all_allocations().is_empty());
}

#[test]
fn full_node_objects_are_read_when_not_node_cache_capable() {
    let ext = Extender::new(Config::default()).unwrap();
    let body = json!({
        "Pod": pod_json("p", "1", 2, 0, None),
        "Nodes": {"metadata": {}, "items": [
            node_json("t4", 32, 128, Some("t4-pcie-4.yaml")),
            node_json("cpu", 8, 16, None),
        ]},
        "NodeNames": null
    });
    let a: ExtenderArgs = serde_json::from_value(body).unwrap();
    let r = ext.filter(&a, Instant::now());
    assert!(r.node_names.is_none());
    let kept: Vec<_> = r
        .nodes
        .unwrap()
        .items
        .into_iter()
        .map(|n| n.metadata.name.unwrap())
        .collect();
    assert_eq!(kept, vec!["t4".to_string()]);
    assert!(r.failed_and_unresolvable_nodes.contains_key("cpu"));
}

#[test]
fn node_annotation_round_trips_from_every_fixture() {
    for f in gantry_testkit::INVENTORY_FIXTURES {
        let inv = gantry_testkit::load_inventory(f);
        let a = NodeGpus::from_inventory(&inv);
        let text = a.to_annotation();
        assert_eq!(NodeGpus::parse("n", &text).unwrap(), a, "{f}");
        assert_eq!(a.gpus.len(), inv.gpus.len());
        let labels = a.labels();
        assert_eq!(labels["gantry.dev/gpu.count"], inv.gpus.len().to_string());
        for v in labels.values() {
            assert!(
                v.len() <= 63
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)),
                "{v}"
            );
        }
    }
    let t4 = NodeGpus::from_inventory(&gantry_testkit::load_inventory("t4-pcie-4.yaml"));
    assert_eq!(t4.labels()["gantry.dev/gpu.product"], "Tesla-T4");
    assert!(NodeGpus::parse("n", r#"{"version":"v2","gpus":[]}"#)
        .unwrap_err()
        .to_string()
        .contains("v2"));
    assert!(NodeGpus::parse("n", "{")
        .unwrap_err()
        .to_string()
        .contains("node n"));
}

#[test]
fn gpu_model_annotation_restricts_nodes() {
    let ext = cluster();
    let mut p = pod_json("p", "1", 1, 0, None);
    p["metadata"]["annotations"] = json!({"gantry.dev/gpu-models": "Tesla T4"});
    let r = ext.filter(&args(p, &["t4", "h100"]), Instant::now());
    assert_eq!(r.node_names.unwrap(), vec!["t4".to_string()]);
    assert!(r.failed_and_unresolvable_nodes["h100"].contains("not one the pod accepts"));
}

// Gangs ---------------------------------------------------------------------------------------

fn gang_cluster(timeout: Duration) -> Extender {
    let ext = Extender::new(Config {
        gang_timeout: timeout,
        ..Config::default()
    })
    .unwrap();
    for n in ["n1", "n2"] {
        ext.state()
            .upsert_node(&node(n, 32, 128, Some("t4-pcie-4.yaml")))
            .unwrap();
    }
    ext
}

#[test]
fn a_gang_that_does_not_fit_is_held_on_every_node() {
    let ext = gang_cluster(Duration::from_secs(30));
    // 3 pods × 4 GPUs on two 4-GPU nodes.
    let r = ext.filter(
        &args(pod_json("g0", "1", 4, 0, Some(("job", 3))), &["n1", "n2"]),
        Instant::now(),
    );
    assert!(r.node_names.as_ref().unwrap().is_empty());
    assert_eq!(r.failed_and_unresolvable_nodes.len(), 2);
    assert!(
        r.failed_and_unresolvable_nodes["n1"].contains("gang ml/job is held: 2 of 3"),
        "{r:?}"
    );
    assert!(ext.reservation("ml/job").is_none());
    assert!(
        ext.state().all_allocations().is_empty(),
        "nothing reserved for a held gang"
    );
}

#[test]
fn a_gang_that_fits_is_reserved_whole_and_binds_into_its_reservation() {
    let ext = gang_cluster(Duration::from_secs(30));
    let now = Instant::now();
    let r = ext.filter(
        &args(pod_json("g0", "1", 2, 0, Some(("job", 3))), &["n1", "n2"]),
        now,
    );
    assert!(!r.node_names.unwrap().is_empty());
    let slots = ext.reservation("ml/job").unwrap();
    assert_eq!(slots.len(), 3);
    // The reservation holds 6 GPUs: an outside pod wanting 4 on one node no longer fits
    // anywhere.
    let r = ext.filter(&args(pod_json("x", "1", 4, 0, None), &["n1", "n2"]), now);
    assert!(
        r.node_names.unwrap().is_empty(),
        "reserved capacity must not be taken"
    );
    // Members bind one by one into the slots.
    let mut gpus = BTreeSet::new();
    for i in 0..3 {
        let name = format!("g{i}");
        let p = pod_json(&name, "1", 2, 0, Some(("job", 3)));
        let r = ext.filter(&args(p.clone(), &["n1", "n2"]), now);
        let ok = r.node_names.unwrap();
        assert!(!ok.is_empty(), "member {i} has a slot");
        let scores = ext.prioritize(&args(p, &["n1", "n2"]), now).unwrap();
        let node = &scores.iter().max_by_key(|h| h.score).unwrap().host;
        assert!(ok.contains(node));
        let plan = bind(&ext, &name, node, now);
        for g in plan.assignment.gpus {
            // Both nodes come from the same fixture, so UUIDs repeat across nodes.
            assert!(gpus.insert((node.clone(), g.uuid)));
        }
    }
    assert_eq!(gpus.len(), 6);
    // Complete: the reservation is gone, the pods hold the GPUs.
    assert!(ext.reservation("ml/job").is_none());
    assert!(ext
        .state()
        .all_allocations()
        .iter()
        .all(|(_, _, a)| a.hold == Hold::Bound));
    // A late filter of a complete gang's member shape is an ordinary filter.
    let r = ext.filter(
        &args(pod_json("g9", "1", 2, 0, Some(("job", 3))), &["n1", "n2"]),
        now,
    );
    assert_eq!(r.node_names.unwrap().len(), 1);
}

#[test]
fn gang_reservations_expire_and_release_their_capacity() {
    let timeout = Duration::from_secs(30);
    let ext = gang_cluster(timeout);
    let t0 = Instant::now();
    ext.filter(
        &args(pod_json("g0", "1", 4, 0, Some(("job", 2))), &["n1", "n2"]),
        t0,
    );
    assert_eq!(ext.reservation("ml/job").unwrap().len(), 2);
    bind(
        &ext,
        "g0",
        &ext.reservation("ml/job").unwrap()[0].0.clone(),
        t0,
    );
    // Before the deadline, the outside pod is kept out.
    let outside = pod_json("x", "1", 4, 0, None);
    let r = ext.filter(
        &args(outside.clone(), &["n1", "n2"]),
        t0 + timeout - Duration::from_secs(1),
    );
    assert!(r.node_names.unwrap().is_empty());
    // After it, the unclaimed slot is released; the bound member keeps its GPUs.
    let r = ext.filter(&args(outside, &["n1", "n2"]), t0 + timeout);
    assert_eq!(r.node_names.unwrap().len(), 1);
    assert!(ext.reservation("ml/job").is_none());
    let held: Vec<_> = ext.state().all_allocations();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].1, "uid-g0");
}

#[test]
fn a_failed_member_bind_returns_its_slot() {
    let ext = gang_cluster(Duration::from_secs(30));
    let now = Instant::now();
    ext.filter(
        &args(pod_json("g0", "1", 4, 0, Some(("job", 2))), &["n1", "n2"]),
        now,
    );
    let node = ext.reservation("ml/job").unwrap()[0].0.clone();
    let plan = ext
        .begin_bind(
            &ExtenderBindingArgs {
                pod_name: "g0".into(),
                pod_namespace: "ml".into(),
                pod_uid: "uid-g0".into(),
                node: node.clone(),
            },
            now,
        )
        .unwrap();
    assert!(ext
        .reservation("ml/job")
        .unwrap()
        .iter()
        .any(|(_, c)| c.as_deref() == Some("uid-g0")));
    ext.finish_bind(&plan, false);
    let slots = ext.reservation("ml/job").unwrap();
    assert!(slots.iter().all(|(_, c)| c.is_none()), "{slots:?}");
    assert!(ext
        .state()
        .all_allocations()
        .iter()
        .all(|(_, _, a)| a.hold == Hold::Reserved));
}

// Bind-to-Allocate handshake and cache hygiene ------------------------------------------------

#[test]
fn allocate_hands_out_exactly_the_gpu_the_scheduler_recorded() {
    use gantry_scheduler::schema::allocate_target;
    let ext = cluster();
    let now = Instant::now();
    let mut bound = Vec::new();
    for (name, milli) in [("a", 500), ("b", 300), ("c", 500)] {
        ext.filter(&args(pod_json(name, "1", 0, milli, None), &["t4"]), now);
        let plan = bind(&ext, name, "t4", now);
        bound.push((format!("ml/{name}"), plan.assignment));
    }
    let inventory = gantry_testkit::load_inventory("t4-pcie-4.yaml");
    let mut allocated = BTreeSet::new();
    // Two Allocates of 500 units: pods a then c, each with its own recorded GPU.
    for want in ["ml/a", "ml/c"] {
        let (pod, uuids) = allocate_target("t4", 500, &bound, &allocated).unwrap();
        assert_eq!(pod, want);
        let recorded = &bound.iter().find(|(p, _)| p == want).unwrap().1;
        assert_eq!(uuids, vec![recorded.gpus[0].uuid.as_str()]);
        assert!(
            inventory.gpu_by_uuid(uuids[0]).is_some(),
            "a real GPU of the node"
        );
        allocated.insert(pod.to_string());
    }
    assert_eq!(
        allocate_target("t4", 300, &bound, &allocated).unwrap().0,
        "ml/b"
    );
    assert!(allocate_target("t4", 500, &bound, &allocated).is_none());
    assert!(allocate_target("h100", 300, &bound, &BTreeSet::new()).is_none());
}

#[test]
fn pods_gone_from_the_api_release_their_gpus_but_binds_in_flight_stay() {
    let ext = cluster();
    let now = Instant::now();
    ext.filter(&args(pod_json("done", "1", 2, 0, None), &["t4"]), now);
    bind(&ext, "done", "t4", now);
    ext.filter(&args(pod_json("flying", "1", 2, 0, None), &["t4"]), now);
    let flying = ext
        .begin_bind(
            &ExtenderBindingArgs {
                pod_name: "flying".into(),
                pod_namespace: "ml".into(),
                pod_uid: "uid-flying".into(),
                node: "t4".into(),
            },
            now,
        )
        .unwrap();
    // A list that no longer has `done`: it is forgotten; `flying` is still being written.
    assert_eq!(ext.retain_pods(&BTreeSet::new()), 1);
    let held: Vec<_> = ext
        .state()
        .all_allocations()
        .into_iter()
        .map(|(_, id, _)| id)
        .collect();
    assert_eq!(held, vec!["uid-flying".to_string()]);
    ext.finish_bind(&flying, true);
}

#[test]
fn a_relist_changes_nothing_and_an_annotation_change_is_applied() {
    let ext = cluster();
    let now = Instant::now();
    // A whole-GPU pod bound by someone else (no assignment annotation).
    let mut other = pod_json("other", "1", 1, 0, None);
    other["spec"]["nodeName"] = json!("t4");
    let other: k8s_openapi::api::core::v1::Pod = serde_json::from_value(other).unwrap();
    ext.observe_pod(&other).unwrap();
    let first = ext.state().all_allocations();
    for _ in 0..3 {
        ext.observe_pod(&other).unwrap();
        ext.state()
            .upsert_node(&node("t4", 32, 128, Some("t4-pcie-4.yaml")))
            .unwrap();
    }
    assert_eq!(
        ext.state().all_allocations(),
        first,
        "re-lists are idempotent"
    );
    // The node loses half its CPU: the next filter sees it.
    ext.state()
        .upsert_node(&node("t4", 2, 128, Some("t4-pcie-4.yaml")))
        .unwrap();
    let r = ext.filter(&args(pod_json("p", "2", 1, 0, None), &["t4"]), now);
    assert!(r.failed_nodes["t4"].contains("not enough CPU"), "{r:?}");
}
