//! Every verb over real HTTP, with JSON shaped as kube-scheduler sends and expects it, and bad
//! input answered with a reason while the server keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use gantry_extender::ServerConfig;
use serde_json::{json, Value};
use support::*;

fn running() -> Running {
    start(
        extender_with(&[
            ("t4", Some("t4-pcie-4.yaml")),
            ("h100", Some("h100-nvswitch-8.yaml")),
            ("cpu", None),
        ]),
        FakeApi::new(Duration::from_millis(1)),
        ServerConfig {
            body_limit: 64 << 10,
        },
    )
}

fn args(pod: Value, names: &[&str]) -> Value {
    json!({"Pod": pod, "Nodes": null, "NodeNames": names})
}

#[test]
fn filter_prioritize_bind_round_trip() {
    let s = running();
    let pod = pod_json("train-0", 2, 0);
    let (code, r) = post_json(
        s.addr,
        "/filter",
        &args(pod.clone(), &["t4", "h100", "cpu", "gone"]),
    );
    assert_eq!(code, 200);
    let keys: Vec<_> = r.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "Error",
            "FailedAndUnresolvableNodes",
            "FailedNodes",
            "NodeNames",
            "Nodes"
        ]
    );
    assert_eq!(r["Error"], "");
    assert_eq!(r["Nodes"], Value::Null);
    assert_eq!(r["NodeNames"], json!(["t4", "h100"]));
    assert!(r["FailedAndUnresolvableNodes"]["cpu"]
        .as_str()
        .unwrap()
        .contains("annotation"));
    assert!(r["FailedAndUnresolvableNodes"]["gone"]
        .as_str()
        .unwrap()
        .contains("unknown"));

    let (code, r) = post_json(s.addr, "/prioritize", &args(pod, &["t4", "h100"]));
    assert_eq!(code, 200);
    let list = r.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for h in list {
        let o = h.as_object().unwrap();
        assert_eq!(o.keys().collect::<Vec<_>>(), ["Host", "Score"]);
        assert!((0..=10).contains(&h["Score"].as_i64().unwrap()));
    }
    let best = list.iter().max_by_key(|h| h["Score"].as_i64()).unwrap()["Host"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        list.iter().filter(|h| h["Score"] == 10).count(),
        1,
        "{list:?}"
    );

    let (code, r) = post_json(
        s.addr,
        "/bind",
        &json!({"PodName": "train-0", "PodNamespace": "ml", "PodUID": "uid-train-0", "Node": best}),
    );
    assert_eq!(code, 200);
    assert_eq!(r, json!({"Error": ""}));
    assert_eq!(s.api.bindings.lock().unwrap()["ml/train-0"], best);
    let annotation = s.api.annotations.lock().unwrap()["ml/train-0"].clone();
    let a = gantry_scheduler::GpuAssignment::parse("ml/train-0", &annotation).unwrap();
    assert_eq!(a.node, best);
    assert_eq!(a.gpus.len(), 2);
}

#[test]
fn bad_input_gets_a_reason_and_the_server_keeps_serving() {
    let s = running();
    // Malformed JSON.
    let (code, body) = post(s.addr, "/filter", b"{\"Pod\": ");
    assert_eq!(code, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["Error"]
            .as_str()
            .unwrap()
            .contains("malformed request JSON"),
        "{v}"
    );
    let (code, body) = post(s.addr, "/prioritize", b"[1,2]");
    assert_eq!(code, 400);
    assert!(body.contains("malformed"), "{body}");
    let (code, body) = post(s.addr, "/bind", b"{\"PodName\": 3}");
    assert_eq!(code, 400);
    assert!(body.contains("malformed"), "{body}");
    // A pod without GPU requests.
    let (code, r) = post_json(
        s.addr,
        "/filter",
        &args(pod_json("cpu-only", 0, 0), &["t4"]),
    );
    assert_eq!(code, 200);
    assert!(
        r["Error"].as_str().unwrap().contains("requests neither"),
        "{r}"
    );
    let (code, _) = post_json(
        s.addr,
        "/prioritize",
        &args(pod_json("cpu-only", 0, 0), &["t4"]),
    );
    assert_eq!(code, 400);
    // A bind for a pod never filtered, or to an unknown node.
    let (_, r) = post_json(
        s.addr,
        "/bind",
        &json!({"PodName": "x", "PodNamespace": "ml", "PodUID": "nope", "Node": "t4"}),
    );
    assert!(
        r["Error"].as_str().unwrap().contains("not seen by filter"),
        "{r}"
    );
    post_json(s.addr, "/filter", &args(pod_json("y", 1, 0), &["t4"]));
    let (_, r) = post_json(
        s.addr,
        "/bind",
        &json!({"PodName": "y", "PodNamespace": "ml", "PodUID": "uid-y", "Node": "gone"}),
    );
    assert!(r["Error"].as_str().unwrap().contains("unknown"), "{r}");
    // Over the body limit (64 KiB here).
    let names: Vec<String> = (0..10_000).map(|i| format!("node-{i:05}")).collect();
    let big = json!({"Pod": pod_json("z", 1, 0), "Nodes": null, "NodeNames": names});
    let (code, body) = post(s.addr, "/filter", big.to_string().as_bytes());
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("length limit"), "{body}");
    // Still serving.
    let (code, r) = post_json(s.addr, "/filter", &args(pod_json("ok", 1, 0), &["t4"]));
    assert_eq!(code, 200);
    assert_eq!(r["NodeNames"], json!(["t4"]));
}

#[test]
fn a_failed_write_is_reported_and_releases_the_gpus() {
    let s = running();
    s.api.fail_pods.lock().unwrap().push("ml/big".into());
    post_json(s.addr, "/filter", &args(pod_json("big", 8, 0), &["h100"]));
    let (_, r) = post_json(
        s.addr,
        "/bind",
        &json!({"PodName": "big", "PodNamespace": "ml", "PodUID": "uid-big", "Node": "h100"}),
    );
    assert!(r["Error"].as_str().unwrap().contains("500"), "{r}");
    // The eight GPUs are free again.
    let (_, r) = post_json(s.addr, "/filter", &args(pod_json("big2", 8, 0), &["h100"]));
    assert_eq!(r["NodeNames"], json!(["h100"]));
}

#[test]
fn full_node_objects_come_back_as_a_node_list() {
    let s = start(
        extender_with(&[]),
        FakeApi::new(Duration::ZERO),
        ServerConfig::default(),
    );
    let body = json!({
        "Pod": pod_json("p", 1, 0),
        "Nodes": {"metadata": {}, "items": [node_json("t4", 32, Some("t4-pcie-4.yaml")), node_json("cpu", 32, None)]},
        "NodeNames": null
    });
    let (code, r) = post_json(s.addr, "/filter", &body);
    assert_eq!(code, 200);
    assert_eq!(r["NodeNames"], Value::Null);
    assert_eq!(r["Nodes"]["items"].as_array().unwrap().len(), 1);
    assert_eq!(r["Nodes"]["items"][0]["metadata"]["name"], "t4");
}
