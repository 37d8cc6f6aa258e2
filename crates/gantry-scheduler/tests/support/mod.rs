//! Kubernetes objects for the tests, built as kube-scheduler would send them (JSON).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use gantry_scheduler::schema::{NODE_GPUS_ANNOTATION, POD_GROUP_LABEL, POD_GROUP_MIN_MEMBER_LABEL};
use gantry_scheduler::NodeGpus;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};

/// A node with `cpu` cores, `mem_gi` GiB and the GPUs of an inventory fixture as its annotation.
pub fn node_json(name: &str, cpu: u32, mem_gi: u32, fixture: Option<&str>) -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(f) = fixture {
        let inv = gantry_testkit::load_inventory(f);
        annotations.insert(
            NODE_GPUS_ANNOTATION.into(),
            NodeGpus::from_inventory(&inv).to_annotation().into(),
        );
    }
    json!({
        "metadata": {"name": name, "annotations": annotations},
        "status": {"allocatable": {"cpu": cpu.to_string(), "memory": format!("{mem_gi}Gi"), "pods": "110"}}
    })
}

pub fn node(name: &str, cpu: u32, mem_gi: u32, fixture: Option<&str>) -> Node {
    serde_json::from_value(node_json(name, cpu, mem_gi, fixture)).unwrap()
}

/// A pending pod asking for `gpu` whole GPUs or `milli` shared milli-GPU.
pub fn pod_json(name: &str, cpu: &str, gpu: u32, milli: u32, gang: Option<(&str, u32)>) -> Value {
    let mut limits = serde_json::Map::new();
    if gpu > 0 {
        limits.insert("nvidia.com/gpu".into(), gpu.to_string().into());
    }
    if milli > 0 {
        limits.insert("gantry.dev/gpu-milli".into(), milli.to_string().into());
    }
    let mut labels = serde_json::Map::new();
    if let Some((g, n)) = gang {
        labels.insert(POD_GROUP_LABEL.into(), g.into());
        labels.insert(POD_GROUP_MIN_MEMBER_LABEL.into(), n.to_string().into());
    }
    json!({
        "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"), "labels": labels},
        "spec": {
            "schedulerName": "gantry-scheduler",
            "containers": [{
                "name": "main",
                "image": "tensorflow/tensorflow:latest-gpu",
                "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}, "limits": limits}
            }]
        },
        "status": {"phase": "Pending"}
    })
}

pub fn pod(name: &str, cpu: &str, gpu: u32, milli: u32, gang: Option<(&str, u32)>) -> Pod {
    serde_json::from_value(pod_json(name, cpu, gpu, milli, gang)).unwrap()
}

/// `ExtenderArgs` with node names only (`nodeCacheCapable: true`).
pub fn args_names(pod: &Value, names: &[&str]) -> Value {
    json!({"Pod": pod, "Nodes": null, "NodeNames": names})
}
