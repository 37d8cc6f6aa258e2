//! The extender v1 wire format, pinned: JSON exactly as kube-scheduler (Go,
//! `k8s.io/kube-scheduler/extender/v1`, no json tags) writes and reads it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gantry_scheduler::wire::{
    ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult, ExtenderFilterResult, HostPriority,
    HostPriorityList,
};
use serde_json::{json, Value};

/// What kube-scheduler posts to `filter`/`prioritize` with `nodeCacheCapable: true`: a pod from
/// its informer cache (no kind/apiVersion), `Nodes: null`.
const ARGS_NODE_NAMES: &str = r#"{
  "Pod": {
    "metadata": {"name": "train-0", "namespace": "ml", "uid": "7c1d5f3e-1111-2222-3333-444455556666",
                 "creationTimestamp": "2026-11-29T19:00:00Z", "labels": {"app": "train"}},
    "spec": {"schedulerName": "gantry-scheduler", "priority": 0,
             "containers": [{"name": "main", "image": "tf", "resources": {
                "limits": {"nvidia.com/gpu": "2"}, "requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}}}]},
    "status": {"phase": "Pending", "qosClass": "Burstable"}
  },
  "Nodes": null,
  "NodeNames": ["node-a", "node-b"]
}"#;

#[test]
fn extender_args_with_node_names() {
    let a: ExtenderArgs = serde_json::from_str(ARGS_NODE_NAMES).unwrap();
    assert_eq!(a.pod.metadata.name.as_deref(), Some("train-0"));
    assert!(a.nodes.is_none());
    assert_eq!(a.candidate_names(), vec!["node-a", "node-b"]);
    // Re-encoded, the top-level keys are exactly Go's.
    let v = serde_json::to_value(&a).unwrap();
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, vec!["NodeNames", "Nodes", "Pod"]);
}

#[test]
fn extender_args_with_full_nodes_and_missing_node_names() {
    let body = json!({
        "Pod": {"metadata": {"name": "p"}},
        "Nodes": {"metadata": {"resourceVersion": "12"}, "items": [
            {"metadata": {"name": "node-a"}, "status": {"allocatable": {"cpu": "64"}}}
        ]}
    });
    let a: ExtenderArgs = serde_json::from_value(body).unwrap();
    assert!(a.node_names.is_none());
    assert_eq!(a.candidate_names(), vec!["node-a"]);
}

#[test]
fn filter_result_keys_are_go_field_names() {
    let mut r = ExtenderFilterResult {
        node_names: Some(vec!["node-a".into()]),
        ..Default::default()
    };
    r.failed_nodes
        .insert("node-b".into(), "not enough GPU".into());
    r.failed_and_unresolvable_nodes
        .insert("node-c".into(), "no gantry.dev/gpus annotation".into());
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(
        v,
        json!({
            "Nodes": null,
            "NodeNames": ["node-a"],
            "FailedNodes": {"node-b": "not enough GPU"},
            "FailedAndUnresolvableNodes": {"node-c": "no gantry.dev/gpus annotation"},
            "Error": ""
        })
    );
    // And Go's encoding of an error-only result (nil maps are null) reads back.
    let go: ExtenderFilterResult = serde_json::from_value(json!({
        "Nodes": null, "NodeNames": null, "FailedNodes": null,
        "FailedAndUnresolvableNodes": null, "Error": "boom"
    }))
    .unwrap();
    assert_eq!(go, ExtenderFilterResult::error("boom"));
}

#[test]
fn host_priority_list_is_an_array_of_host_and_score() {
    let list: HostPriorityList = vec![
        HostPriority {
            host: "node-a".into(),
            score: 10,
        },
        HostPriority {
            host: "node-b".into(),
            score: 0,
        },
    ];
    assert_eq!(
        serde_json::to_string(&list).unwrap(),
        r#"[{"Host":"node-a","Score":10},{"Host":"node-b","Score":0}]"#
    );
}

#[test]
fn binding_args_and_result() {
    let go = r#"{"PodName":"train-0","PodNamespace":"ml","PodUID":"7c1d5f3e","Node":"node-a"}"#;
    let b: ExtenderBindingArgs = serde_json::from_str(go).unwrap();
    assert_eq!(b.pod_name, "train-0");
    assert_eq!(b.pod_uid, "7c1d5f3e");
    assert_eq!(serde_json::to_string(&b).unwrap(), go);
    assert_eq!(
        serde_json::to_value(ExtenderBindingResult::default()).unwrap(),
        json!({"Error": ""})
    );
    let r: ExtenderBindingResult = serde_json::from_value(json!({"Error": null})).unwrap();
    assert_eq!(r.error, "");
}

#[test]
fn a_node_list_reencodes_as_a_v1_node_list() {
    let a: ExtenderArgs = serde_json::from_value(json!({
        "Pod": {"metadata": {"name": "p"}},
        "Nodes": {"metadata": {}, "items": [{"metadata": {"name": "node-a"}}]},
        "NodeNames": null
    }))
    .unwrap();
    let v: Value = serde_json::to_value(a.nodes.unwrap()).unwrap();
    assert_eq!(v["kind"], "NodeList");
    assert_eq!(v["items"][0]["metadata"]["name"], "node-a");
}
