//! The API client against a fake API server at the HTTP wire: each call's verb, URL and body
//! are asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use gantry_extender::{ApiServer, Binder};
use gantry_scheduler::wire::{ExtenderArgs, ExtenderBindingArgs};
use gantry_scheduler::{Config, Extender};
use serde_json::{json, Value};
use support::*;

type Calls = Arc<Mutex<Vec<(String, String, Option<String>, String)>>>;

/// Serves `answer(method, path)`; records (method, path+query, content-type, body).
async fn fake_api(
    answer: impl Fn(&str, &str) -> (StatusCode, Value) + Send + Sync + 'static,
) -> (std::net::SocketAddr, Calls) {
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let answer = Arc::new(answer);
    let app = Router::new().fallback(
        move |method: Method, uri: Uri, headers: axum::http::HeaderMap, body: Bytes| {
            let c = c.clone();
            let answer = answer.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string());
                c.lock().unwrap().push((
                    method.to_string(),
                    uri.to_string(),
                    ct,
                    String::from_utf8_lossy(&body).into(),
                ));
                let (status, v) = answer(method.as_str(), uri.path());
                (status, axum::Json(v)).into_response()
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, calls)
}

#[tokio::test]
async fn bind_patches_the_annotation_then_creates_the_binding() {
    let (addr, calls) = fake_api(|_, _| {
        (
            StatusCode::CREATED,
            json!({"kind": "Status", "status": "Success"}),
        )
    })
    .await;
    let ext = extender_with(&[("t4", Some("t4-pcie-4.yaml"))]);
    let args: ExtenderArgs = serde_json::from_value(
        json!({"Pod": pod_json("p", 0, 500), "Nodes": null, "NodeNames": ["t4"]}),
    )
    .unwrap();
    ext.filter(&args, std::time::Instant::now());
    let plan = ext
        .begin_bind(
            &ExtenderBindingArgs {
                pod_name: "p".into(),
                pod_namespace: "ml".into(),
                pod_uid: "uid-p".into(),
                node: "t4".into(),
            },
            std::time::Instant::now(),
        )
        .unwrap();
    ApiServer::new(addr).bind(&plan).await.unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let (m, path, ct, body) = &calls[0];
    assert_eq!(
        (m.as_str(), path.as_str(), ct.as_deref()),
        (
            "PATCH",
            "/api/v1/namespaces/ml/pods/p",
            Some("application/merge-patch+json")
        )
    );
    let body: Value = serde_json::from_str(body).unwrap();
    let annotation = body["metadata"]["annotations"]["gantry.dev/gpu-assignment"]
        .as_str()
        .unwrap();
    assert_eq!(annotation, plan.assignment.to_annotation());
    let (m, path, _, body) = &calls[1];
    assert_eq!(
        (m.as_str(), path.as_str()),
        ("POST", "/api/v1/namespaces/ml/pods/p/binding")
    );
    assert_eq!(
        serde_json::from_str::<Value>(body).unwrap(),
        json!({"apiVersion": "v1", "kind": "Binding",
               "metadata": {"name": "p", "namespace": "ml", "uid": "uid-p"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "t4"}})
    );
}

#[tokio::test]
async fn a_refused_binding_is_an_error_with_the_api_message() {
    let (addr, calls) = fake_api(|m, _| {
        if m == "POST" {
            (
                StatusCode::CONFLICT,
                json!({"kind": "Status", "message": "pod p is already assigned to node n2"}),
            )
        } else {
            (StatusCode::OK, json!({}))
        }
    })
    .await;
    let ext = extender_with(&[("t4", Some("t4-pcie-4.yaml"))]);
    let args: ExtenderArgs = serde_json::from_value(
        json!({"Pod": pod_json("p", 1, 0), "Nodes": null, "NodeNames": ["t4"]}),
    )
    .unwrap();
    ext.filter(&args, std::time::Instant::now());
    let plan = ext
        .begin_bind(
            &ExtenderBindingArgs {
                pod_name: "p".into(),
                pod_namespace: "ml".into(),
                pod_uid: "uid-p".into(),
                node: "t4".into(),
            },
            std::time::Instant::now(),
        )
        .unwrap();
    let err = ApiServer::new(addr).bind(&plan).await.unwrap_err();
    assert_eq!(err.kind(), "api");
    let text = err.to_string();
    assert!(
        text.contains("409") && text.contains("already assigned"),
        "{text}"
    );
    assert_eq!(calls.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn sync_lists_nodes_and_bound_pods_and_forgets_what_went_away() {
    let nodes = Arc::new(Mutex::new(vec![
        node_json("t4", 32, Some("t4-pcie-4.yaml")),
        node_json("old", 32, Some("t4-pcie-4.yaml")),
    ]));
    let n = nodes.clone();
    let assignment = json!({"version": "v1", "node": "t4", "gpus": [{"index": 2, "uuid": "GPU-x", "milli": 1000}]}).to_string();
    let mut bound = pod_json("b", 1, 0);
    bound["spec"]["nodeName"] = json!("t4");
    bound["metadata"]["annotations"] = json!({"gantry.dev/gpu-assignment": assignment});
    let (addr, calls) = fake_api(move |_, path| {
        if path == "/api/v1/nodes" {
            (StatusCode::OK, json!({"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": n.lock().unwrap().clone()}))
        } else {
            (StatusCode::OK, json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [bound.clone()]}))
        }
    })
    .await;
    let ext = Extender::new(Config::default()).unwrap();
    let api = ApiServer::new(addr);
    let stats = api.sync(&ext).await.unwrap();
    assert_eq!((stats.nodes, stats.pods, stats.removed_nodes), (2, 1, 0));
    let held = ext.state().all_allocations();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].0, "t4");
    assert_eq!(held[0].2.gpus, vec![(2, 1000)]);
    let urls: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.0, c.1))
        .collect();
    assert_eq!(
        urls,
        [
            "GET /api/v1/nodes",
            "GET /api/v1/pods?fieldSelector=spec.nodeName!%3D"
        ]
    );
    nodes.lock().unwrap().pop();
    let stats = api.sync(&ext).await.unwrap();
    assert_eq!(stats.removed_nodes, 1);
    assert_eq!(ext.state().node_names(), ["t4"]);
}

#[tokio::test]
async fn an_unreachable_api_server_is_an_error_naming_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = ApiServer::new(addr)
        .sync(&Extender::new(Config::default()).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connecting to"), "{err}");
}
