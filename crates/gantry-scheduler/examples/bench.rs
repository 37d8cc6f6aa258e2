//! Benchmark: `filter` + `prioritize` latency (p50, p99) at 1,000 and 5,000 nodes, node names
//! only (`nodeCacheCapable: true`), with the JSON decoding and encoding of both calls included
//! (everything the server does except the socket).
//!
//! The cluster is the Alibaba `openb` GPU node list replicated to size; it is first filled to
//! about 60 % of its GPU capacity by binding pods drawn from the trace's default pod list, then
//! pods drawn from the same list are filtered and prioritized (not bound, so the state stays
//! put). Policy `frag-cpu` with the trace's target workload.
//!
//! ```text
//! cargo run --release -p gantry-scheduler --example bench [-- TRACE_DIR [SAMPLES [SIZES]]]
//! ```
//!
//! `SIZES` is a comma-separated list of node counts (default `1000,5000`). Progress goes to
//! stderr, so a profiler can be attached once `measuring` shows:
//!
//! ```text
//! perf record -g -p $(pgrep -n bench) -- sleep 10
//! ```
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gantry_placement::{PodSpec, Rng, TargetWorkload};
use gantry_scheduler::schema::{AssignedGpu, NodeGpu, NODE_GPUS_ANNOTATION, SCHEMA_VERSION};
use gantry_scheduler::wire::{ExtenderArgs, ExtenderBindingArgs, ExtenderFilterResult};
use gantry_scheduler::{Config, Extender, NodeGpus};
use serde_json::json;

fn node_object(name: &str, spec: &gantry_placement::NodeSpec) -> k8s_openapi::api::core::v1::Node {
    let gpus = NodeGpus {
        version: SCHEMA_VERSION.into(),
        driver_version: Some("535.161.08".into()),
        cuda_version: Some("12.2".into()),
        gpus: (0..u32::from(spec.gpus))
            .map(|i| NodeGpu {
                index: i,
                uuid: format!("GPU-{name}-{i}"),
                product: spec.gpu_model.clone().unwrap_or_default(),
                memory_mib: None,
                milli: 1000,
                numa_node: None,
            })
            .collect(),
        topology: Vec::new(),
    };
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {NODE_GPUS_ANNOTATION: gpus.to_annotation()}},
        "status": {"allocatable": {"cpu": format!("{}m", spec.cpu_milli), "memory": format!("{}Mi", spec.memory_mib)}}
    }))
    .unwrap()
}

fn pod_json(i: usize, p: &PodSpec) -> serde_json::Value {
    let limits = if p.gpu_milli >= 1000 {
        json!({"nvidia.com/gpu": p.num_gpu.to_string()})
    } else {
        json!({"gantry.dev/gpu-milli": p.gpu_milli.to_string()})
    };
    let mut meta =
        json!({"name": format!("pod-{i}"), "namespace": "bench", "uid": format!("uid-{i}")});
    if !p.gpu_models.is_empty() {
        meta["annotations"] = json!({"gantry.dev/gpu-models": p.gpu_models.join(",")});
    }
    json!({
        "metadata": meta,
        "spec": {"schedulerName": "gantry-scheduler", "containers": [{"name": "main", "image": "tf",
            "resources": {"requests": {"cpu": format!("{}m", p.cpu_milli), "memory": format!("{}Mi", p.memory_mib)}, "limits": limits}}]}
    })
}

/// This process's resident memory in MiB (`VmRSS`), 0 where /proc is not there.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces/alibaba-gpu-v2023")
    });
    let samples: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let sizes: Vec<usize> = args
        .next()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 5000]);
    let base =
        gantry_simulator::trace::load_nodes(&dir.join("openb_node_list_gpu_node.csv")).unwrap();
    let pods: Vec<PodSpec> =
        gantry_simulator::trace::load_pods(&dir.join("openb_pod_list_default.csv"))
            .unwrap()
            .into_iter()
            .filter(|p| p.num_gpu > 0)
            .collect();
    let workload = TargetWorkload::from_pods(&pods, gantry_simulator::DEFAULT_COVERAGE);
    println!("| nodes | GPUs | GPU allocated | samples | filter+prioritize p50 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut parts = Vec::new();
    for size in sizes {
        eprintln!("filling {size} nodes to 60 % of their GPUs");
        let rss_before = rss_mib();
        let ext = Extender::new(Config {
            workload: Some(workload.clone()),
            ..Config::default()
        })
        .unwrap();
        let mut names = Vec::with_capacity(size);
        let mut gpus_total = 0u64;
        for i in 0..size {
            let spec = &base[i % base.len()];
            let name = format!("{}-{}", spec.name, i / base.len());
            ext.state().upsert_node(&node_object(&name, spec)).unwrap();
            gpus_total += u64::from(spec.gpus);
            names.push(name);
        }
        // Fill to ~60 % of GPU capacity through the extender's own verbs.
        let mut rng = Rng::seed_from_u64(42);
        let mut allocated = 0u64;
        let mut n = 0usize;
        let mut failures = 0;
        while allocated * 10 < gpus_total * 1000 * 6 && failures < 1000 {
            let p = &pods[rng.below(pods.len())];
            n += 1;
            let a: ExtenderArgs = serde_json::from_value(
                json!({"Pod": pod_json(n, p), "Nodes": null, "NodeNames": names}),
            )
            .unwrap();
            let f = ext.filter(&a, Instant::now());
            let ok = f.node_names.unwrap_or_default();
            if ok.is_empty() {
                failures += 1;
                continue;
            }
            let a2: ExtenderArgs = serde_json::from_value(
                json!({"Pod": pod_json(n, p), "Nodes": null, "NodeNames": ok}),
            )
            .unwrap();
            let scores = ext.prioritize(&a2, Instant::now()).unwrap();
            let best = scores.iter().max_by_key(|h| h.score).unwrap().host.clone();
            let plan = ext
                .begin_bind(
                    &ExtenderBindingArgs {
                        pod_name: format!("pod-{n}"),
                        pod_namespace: "bench".into(),
                        pod_uid: format!("uid-{n}"),
                        node: best,
                    },
                    Instant::now(),
                )
                .unwrap();
            let got: u64 = plan
                .assignment
                .gpus
                .iter()
                .map(|g: &AssignedGpu| u64::from(g.milli))
                .sum();
            ext.finish_bind(&plan, true);
            allocated += got;
        }
        // Measure.
        let state_mib = rss_mib() - rss_before;
        eprintln!("measuring {samples} pods on {size} nodes");
        let mut times = Vec::with_capacity(samples);
        let mut json_times = Vec::with_capacity(samples);
        let mut filter_times = Vec::with_capacity(samples);
        let mut prioritize_times = Vec::with_capacity(samples);
        let names_json = serde_json::to_value(&names).unwrap();
        for s in 0..samples {
            let p = &pods[rng.below(pods.len())];
            let body = serde_json::to_vec(
                &json!({"Pod": pod_json(1_000_000 + s, p), "Nodes": null, "NodeNames": names_json}),
            )
            .unwrap();
            let t = Instant::now();
            let a: ExtenderArgs = serde_json::from_slice(&body).unwrap();
            let td = Instant::now();
            let f: ExtenderFilterResult = ext.filter(&a, Instant::now());
            let tf = Instant::now();
            let out = serde_json::to_vec(&f).unwrap();
            let t1 = Instant::now();
            // kube-scheduler then sends prioritize for the nodes that passed.
            let passed = f.node_names.unwrap_or_default();
            let body2 =
                serde_json::to_vec(&json!({"Pod": a.pod, "Nodes": null, "NodeNames": passed}))
                    .unwrap();
            let t2 = Instant::now();
            let a2: ExtenderArgs = serde_json::from_slice(&body2).unwrap();
            let tp0 = Instant::now();
            let scores = ext.prioritize(&a2, Instant::now()).unwrap();
            let tp = Instant::now();
            let out2 = serde_json::to_vec(&scores).unwrap();
            let end = Instant::now();
            json_times.push((td - t) + (t1 - tf) + (tp0 - t2) + (end - tp));
            filter_times.push(tf - td);
            prioritize_times.push(tp - tp0);
            // Building body2 stands in for kube-scheduler's work: not counted.
            times.push((t1 - t) + (end - t2));
            std::hint::black_box((out, out2));
        }
        times.sort();
        json_times.sort();
        filter_times.sort();
        prioritize_times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        parts.push(format!(
            "| {size} | {:.2} ms | {:.2} ms | {:.2} ms | {state_mib:.0} MiB |",
            ms(percentile(&json_times, 0.5)),
            ms(percentile(&filter_times, 0.5)),
            ms(percentile(&prioritize_times, 0.5)),
        ));
        println!(
            "| {size} | {gpus_total} | {:.1} % | {samples} | {:.2} ms | {:.2} ms | {:.2} ms |",
            allocated as f64 / (gpus_total as f64 * 10.0),
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
            times.last().unwrap().as_secs_f64() * 1e3,
        );
    }
    println!();
    println!(
        "| nodes | JSON decode+encode p50 | filter p50 | prioritize p50 | state (RSS growth) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for line in parts {
        println!("{line}");
    }
}
