//! Many binds at once, from 8 client threads against a 4-thread server, through the real
//! `KubeBinder` and the in-memory API server whose writes each take 20 ms (answered from their
//! own tasks), with the watch-based cache running: no GPU is handed out twice, and binds overlap
//! (also to different nodes), counted in the API server's record of its writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use gantry_extender::{Cache, KubeBinder, ServerConfig};
use gantry_scheduler::{Config, Extender};
use gantry_testkit::kube_api::InMemoryApiServer;
use serde_json::json;
use support::*;

const NODES: usize = 8;
const THREADS: usize = 8;
const PODS_PER_THREAD: usize = 12;
const PODS: &str = "/api/v1/namespaces/ml/pods";

fn shape(i: usize) -> (u32, u32) {
    match i % 4 {
        0 => (1, 0),
        1 => (0, 500),
        2 => (0, 250),
        _ => (0, 300),
    }
}

#[test]
fn concurrent_binds_never_share_a_gpu() {
    let nodes: Vec<String> = (0..NODES).map(|i| format!("h100-{i}")).collect();
    let server = InMemoryApiServer::with_write_delay(Duration::from_millis(20));
    for n in &nodes {
        server.insert(
            "/api/v1/nodes",
            node_json(n, 128, Some("h100-nvswitch-8.yaml")),
        );
    }
    for t in 0..THREADS {
        for i in 0..PODS_PER_THREAD {
            let (gpu, milli) = shape(i);
            server.insert(PODS, pod_json(&format!("p-{t}-{i}"), gpu, milli));
        }
    }
    // 8 nodes × 8 GPUs = 64,000 milli-GPU; the pods ask for 96 × (a mix averaging < 600).
    let s = start_with(
        Extender::new(Config::default()).unwrap(),
        ServerConfig::default(),
        {
            let server = server.clone();
            move |extender| {
                let cache = std::sync::Arc::new(Cache::new(extender));
                let readiness = cache.readiness();
                let client = server.client();
                tokio::spawn(async move { cache.run(client).await });
                (KubeBinder::new(server.client()), readiness)
            }
        },
    );
    let addr = s.addr;
    eventually("the cache's initial lists", || {
        get(addr, "/readyz").0 == 200
    });
    assert_eq!(s.extender.state().len(), NODES);

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let nodes = nodes.clone();
            std::thread::spawn(move || {
                let mut bound = 0;
                for i in 0..PODS_PER_THREAD {
                    let name = format!("p-{t}-{i}");
                    let (gpu, milli) = shape(i);
                    // Half the threads offer every node (so they race for the best one),
                    // half offer the nodes of their own pair (so binds to different nodes run).
                    let offered: Vec<&str> = if t % 2 == 0 {
                        nodes.iter().map(String::as_str).collect()
                    } else {
                        nodes[(t % 4) * 2..(t % 4) * 2 + 2].iter().map(String::as_str).collect()
                    };
                    for _attempt in 0..20 {
                        let args = json!({"Pod": pod_json(&name, gpu, milli), "Nodes": null, "NodeNames": offered});
                        let (code, f) = post_json(addr, "/filter", &args);
                        assert_eq!(code, 200, "{f}");
                        let ok = f["NodeNames"].as_array().unwrap().clone();
                        if ok.is_empty() {
                            break;
                        }
                        let (_, p) = post_json(addr, "/prioritize", &json!({"Pod": pod_json(&name, gpu, milli), "Nodes": null, "NodeNames": ok}));
                        let best = p.as_array().unwrap().iter().max_by_key(|h| h["Score"].as_i64()).unwrap()["Host"].clone();
                        let (_, b) = post_json(addr, "/bind", &json!({"PodName": name, "PodNamespace": "ml", "PodUID": format!("uid-{name}"), "Node": best}));
                        if b["Error"] == "" {
                            bound += 1;
                            break;
                        }
                        // Lost a race for the node's last capacity: kube-scheduler retries.
                    }
                }
                bound
            })
        })
        .collect();
    let bound: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(bound >= 64, "only {bound} pods bound");

    // From the API's point of view (the pods as stored), every bound pod carries its
    // assignment, for the node it is bound to; no GPU is over-committed and no whole GPU shared.
    let pods = server.objects(PODS);
    let mut used: BTreeMap<(String, u32), u32> = BTreeMap::new();
    let mut whole: BTreeMap<(String, u32), u32> = BTreeMap::new();
    let mut bound_in_api = 0;
    for pod in &pods {
        let Some(node) = pod["spec"]["nodeName"].as_str() else {
            continue;
        };
        bound_in_api += 1;
        let name = pod["metadata"]["name"].as_str().unwrap();
        let text = pod["metadata"]["annotations"]["gantry.dev/gpu-assignment"]
            .as_str()
            .unwrap_or_else(|| panic!("bound pod {name} has no assignment"));
        let a = gantry_scheduler::GpuAssignment::parse(name, text).unwrap();
        assert_eq!(a.node, node, "annotation and Binding agree for {name}");
        for g in a.gpus {
            *used.entry((a.node.clone(), g.index)).or_default() += u32::from(g.milli);
            if g.milli == 1000 {
                *whole.entry((a.node.clone(), g.index)).or_default() += 1;
            }
        }
    }
    assert_eq!(bound_in_api, bound);
    for (gpu, milli) in &used {
        assert!(*milli <= 1000, "GPU {gpu:?} handed out {milli} milli-GPU");
        if whole.contains_key(gpu) {
            assert_eq!(*milli, 1000, "whole GPU {gpu:?} also shared");
        }
    }
    // The extender's own books agree with the API's (its watch has seen its binds, which
    // changes nothing).
    let books = || -> u32 {
        s.extender
            .state()
            .all_allocations()
            .iter()
            .flat_map(|(_, _, a)| a.gpus.iter().map(|g| u32::from(g.1)))
            .sum()
    };
    assert_eq!(books(), used.values().sum::<u32>());

    // Binds overlapped in the API server: several writes at once, and Bindings to different
    // nodes in flight together.
    assert!(server.max_writes_in_flight() > 1);
    let writes = server.writes();
    let bindings: Vec<_> = writes
        .iter()
        .filter(|w| w.path.ends_with("/binding") && w.status == 201)
        .collect();
    assert_eq!(bindings.len(), bound);
    let overlapping_nodes = bindings.iter().any(|a| {
        bindings
            .iter()
            .any(|b| a.body["target"]["name"] != b.body["target"]["name"] && a.overlaps(b))
    });
    assert!(
        overlapping_nodes,
        "no two Bindings to different nodes overlapped"
    );
}
