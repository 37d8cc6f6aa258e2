//! Many binds at once, from 8 client threads against a 4-thread server, with an API that takes
//! 20 ms per bind: no GPU is handed out twice, and binds overlap (also to different nodes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gantry_extender::ServerConfig;
use serde_json::json;
use support::*;

const NODES: usize = 8;
const THREADS: usize = 8;
const PODS_PER_THREAD: usize = 12;

#[test]
fn concurrent_binds_never_share_a_gpu() {
    let nodes: Vec<String> = (0..NODES).map(|i| format!("h100-{i}")).collect();
    let spec: Vec<(&str, Option<&str>)> = nodes
        .iter()
        .map(|n| (n.as_str(), Some("h100-nvswitch-8.yaml")))
        .collect();
    // 8 nodes × 8 GPUs = 64,000 milli-GPU; the pods ask for 96 × (a mix averaging < 600).
    let s = start(
        extender_with(&spec),
        FakeApi::new(Duration::from_millis(20)),
        ServerConfig::default(),
    );
    let addr = s.addr;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let nodes = nodes.clone();
            std::thread::spawn(move || {
                let mut bound = 0;
                for i in 0..PODS_PER_THREAD {
                    let name = format!("p-{t}-{i}");
                    let (gpu, milli) = match i % 4 {
                        0 => (1, 0),
                        1 => (0, 500),
                        2 => (0, 250),
                        _ => (0, 300),
                    };
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
    let bindings = s.api.bindings.lock().unwrap().clone();
    assert_eq!(bindings.len(), bound);

    // From the API's point of view (the annotations written), no GPU is over-committed and no
    // whole GPU is shared.
    let mut used: BTreeMap<(String, u32), u32> = BTreeMap::new();
    let mut whole: BTreeMap<(String, u32), u32> = BTreeMap::new();
    for (pod, text) in s.api.annotations.lock().unwrap().iter() {
        let a = gantry_scheduler::GpuAssignment::parse(pod, text).unwrap();
        assert_eq!(bindings[pod], a.node, "annotation and Binding agree");
        for g in a.gpus {
            *used.entry((a.node.clone(), g.index)).or_default() += u32::from(g.milli);
            if g.milli == 1000 {
                *whole.entry((a.node.clone(), g.index)).or_default() += 1;
            }
        }
    }
    for (gpu, milli) in &used {
        assert!(*milli <= 1000, "GPU {gpu:?} handed out {milli} milli-GPU");
        if whole.contains_key(gpu) {
            assert_eq!(*milli, 1000, "whole GPU {gpu:?} also shared");
        }
    }
    // And the extender's own books agree with the API's.
    let books: u32 = s
        .extender
        .state()
        .all_allocations()
        .iter()
        .flat_map(|(_, _, a)| a.gpus.iter().map(|g| u32::from(g.1)))
        .sum();
    assert_eq!(books, used.values().sum::<u32>());
    // Binds overlapped: several at once, to different nodes.
    assert!(s.api.max_in_flight.load(Ordering::SeqCst) > 1);
    assert!(s.api.max_distinct_nodes_in_flight.load(Ordering::SeqCst) > 1);
}
