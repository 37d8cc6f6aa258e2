//! The extender's cluster access through kube-rs: `KubeBinder` at the HTTP wire (each call's
//! verb, path and body asserted) and against the in-memory API server, and the watch-based cache
//! following nodes and pods through real `kube::runtime::watcher` streams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_extender::{Binder, Cache, KubeBinder, Readiness, ServerConfig};
use gantry_scheduler::wire::{ExtenderArgs, ExtenderBindingArgs};
use gantry_scheduler::{BindPlan, Config, Extender};
use gantry_testkit::kube_api::{eventually, fake_api_server, InMemoryApiServer};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::Event;
use serde_json::{json, Value};
use support::*;

const NODES: &str = "/api/v1/nodes";
const PODS: &str = "/api/v1/namespaces/ml/pods";

/// Runs `filter` for the pod and begins its bind to `node`.
fn plan_for(ext: &Extender, pod: &Value, node: &str) -> BindPlan {
    let args: ExtenderArgs =
        serde_json::from_value(json!({"Pod": pod, "Nodes": null, "NodeNames": [node]})).unwrap();
    let f = ext.filter(&args, Instant::now());
    assert_eq!(f.error, "", "{f:?}");
    let name = pod["metadata"]["name"].as_str().unwrap();
    ext.begin_bind(
        &ExtenderBindingArgs {
            pod_name: name.into(),
            pod_namespace: "ml".into(),
            pod_uid: format!("uid-{name}"),
            node: node.into(),
        },
        Instant::now(),
    )
    .unwrap()
}

/// A pod bound to `node`, running, with an assignment annotation for `gpus` (index, milli).
fn bound_pod(name: &str, node: &str, gpu: u32, milli: u32, gpus: &[(u32, u32)]) -> Value {
    let mut pod = pod_json(name, gpu, milli);
    pod["spec"]["nodeName"] = json!(node);
    pod["status"]["phase"] = json!("Running");
    let gpus: Vec<Value> = gpus
        .iter()
        .map(|(i, m)| json!({"index": i, "uuid": format!("GPU-{i}"), "milli": m}))
        .collect();
    let assignment = json!({"version": "v1", "node": node, "gpus": gpus}).to_string();
    pod["metadata"]["annotations"] = json!({"gantry.dev/gpu-assignment": assignment});
    pod
}

/// (node, pod UID, GPUs as (index, milli)) of an allocation.
type Held = (String, String, Vec<(u8, u16)>);

/// Every allocation of the extender.
fn held(ext: &Extender) -> Vec<Held> {
    ext.state()
        .all_allocations()
        .into_iter()
        .map(|(n, id, a)| (n, id, a.gpus))
        .collect()
}

/// A fresh extender with its cache watching `server`.
async fn watching(server: &InMemoryApiServer) -> (Arc<Extender>, Readiness) {
    let ext = Arc::new(Extender::new(Config::default()).unwrap());
    let cache = Arc::new(Cache::new(ext.clone()));
    let ready = cache.readiness();
    let client = server.client();
    tokio::spawn(async move { cache.run(client).await });
    eventually("both initial lists", || ready.is_ready()).await;
    (ext, ready)
}

// --- KubeBinder at the wire ---

#[tokio::test]
async fn bind_patches_the_annotation_then_creates_the_binding() {
    let (client, mut server) = fake_api_server();
    let ext = extender_with(&[("t4", Some("t4-pcie-4.yaml"))]);
    let plan = plan_for(&ext, &pod_json("p", 0, 500), "t4");
    let annotation = plan.assignment.to_annotation();
    let binder = KubeBinder::new(client);
    let bind = tokio::spawn(async move { binder.bind(&plan).await });

    let call = server.expect("PATCH", "/api/v1/namespaces/ml/pods/p").await;
    assert_eq!(call.content_type, "application/merge-patch+json");
    assert_eq!(
        call.body,
        json!({"metadata": {"annotations": {"gantry.dev/gpu-assignment": annotation}}})
    );
    call.respond(200, &pod_json("p", 0, 500));
    let call = server
        .expect("POST", "/api/v1/namespaces/ml/pods/p/binding")
        .await;
    assert_eq!(
        call.body,
        json!({"apiVersion": "v1", "kind": "Binding",
               "metadata": {"name": "p", "namespace": "ml", "uid": "uid-p"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "t4"}})
    );
    call.respond(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    );
    bind.await.unwrap().unwrap();
    server.expect_no_call(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn a_refused_binding_is_an_error_with_method_path_status_and_message() {
    let (client, mut server) = fake_api_server();
    let ext = extender_with(&[("t4", Some("t4-pcie-4.yaml"))]);
    let plan = plan_for(&ext, &pod_json("p", 1, 0), "t4");
    let binder = KubeBinder::new(client);
    let bind = tokio::spawn(async move { binder.bind(&plan).await });
    server
        .expect("PATCH", "/api/v1/namespaces/ml/pods/p")
        .await
        .respond(200, &pod_json("p", 1, 0));
    server
        .expect("POST", "/api/v1/namespaces/ml/pods/p/binding")
        .await
        .respond(
            409,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "reason": "Conflict", "code": 409, "message": "pod p is already assigned to node \"n2\""}),
        );
    let err = bind.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), "api");
    assert!(
        matches!(&err, gantry_extender::Error::Api { method: "POST", status: Some(409), path, .. }
            if path == "/api/v1/namespaces/ml/pods/p/binding"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("already assigned"), "{text}");
}

#[tokio::test]
async fn an_unreachable_api_server_is_an_error_naming_the_call() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let ext = extender_with(&[("t4", Some("t4-pcie-4.yaml"))]);
    let plan = plan_for(&ext, &pod_json("p", 1, 0), "t4");
    let err = KubeBinder::new(client).bind(&plan).await.unwrap_err();
    assert!(
        matches!(
            &err,
            gantry_extender::Error::Api {
                method: "PATCH",
                status: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("/api/v1/namespaces/ml/pods/p"),
        "{err}"
    );
}

// --- KubeBinder against the in-memory API server ---

#[tokio::test]
async fn bind_through_the_api_annotates_and_binds_the_pod() {
    let server = InMemoryApiServer::default();
    server.insert(PODS, pod_json("p", 2, 0));
    let ext = extender_with(&[("h100", Some("h100-nvswitch-8.yaml"))]);
    let plan = plan_for(&ext, &pod_json("p", 2, 0), "h100");
    KubeBinder::new(server.client()).bind(&plan).await.unwrap();
    ext.finish_bind(&plan, true);
    let pod = &server.objects(PODS)[0];
    assert_eq!(pod["spec"]["nodeName"], "h100");
    let text = pod["metadata"]["annotations"]["gantry.dev/gpu-assignment"]
        .as_str()
        .unwrap();
    let a = gantry_scheduler::GpuAssignment::parse("ml/p", text).unwrap();
    assert_eq!(a, plan.assignment);
    assert_eq!(a.gpus.len(), 2);
    // Bound once: a second Binding is refused by the API server.
    let again = KubeBinder::new(server.client()).bind(&plan).await;
    assert!(
        matches!(
            again,
            Err(gantry_extender::Error::Api {
                status: Some(409),
                ..
            })
        ),
        "{again:?}"
    );
}

#[test]
fn a_failed_write_is_an_error_to_kube_scheduler_and_releases_the_gpus() {
    let server = InMemoryApiServer::default();
    server.insert(PODS, pod_json("there", 8, 0));
    let s = start_with(
        extender_with(&[("h100", Some("h100-nvswitch-8.yaml"))]),
        ServerConfig::default(),
        {
            let server = server.clone();
            move |_| (KubeBinder::new(server.client()), Readiness::ready())
        },
    );
    let args = |pod: Value| json!({"Pod": pod, "Nodes": null, "NodeNames": ["h100"]});
    // The pod is not in the API (deleted meanwhile): the annotation patch gets 404.
    let (_, f) = post_json(s.addr, "/filter", &args(pod_json("gone", 8, 0)));
    assert_eq!(f["NodeNames"], json!(["h100"]));
    let (code, r) = post_json(
        s.addr,
        "/bind",
        &json!({"PodName": "gone", "PodNamespace": "ml", "PodUID": "uid-gone", "Node": "h100"}),
    );
    assert_eq!(code, 200);
    let error = r["Error"].as_str().unwrap();
    assert!(
        error.contains("PATCH /api/v1/namespaces/ml/pods/gone") && error.contains("404"),
        "{error}"
    );
    assert!(s.extender.state().all_allocations().is_empty());
    // The eight GPUs are free again: the next pod binds to them.
    post_json(s.addr, "/filter", &args(pod_json("there", 8, 0)));
    let (_, r) = post_json(
        s.addr,
        "/bind",
        &json!({"PodName": "there", "PodNamespace": "ml", "PodUID": "uid-there", "Node": "h100"}),
    );
    assert_eq!(r["Error"], "", "{r}");
    assert_eq!(server.objects(PODS)[0]["spec"]["nodeName"], "h100");
}

#[test]
fn until_the_cache_is_ready_the_verbs_refuse_and_readyz_says_why() {
    let s = start_with(
        extender_with(&[("t4", Some("t4-pcie-4.yaml"))]),
        ServerConfig::default(),
        |_| (FakeApi::new(Duration::ZERO), Readiness::new()),
    );
    assert_eq!(get(s.addr, "/healthz"), (200, "ok".into()));
    let (code, body) = get(s.addr, "/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("initial list of nodes and pods"), "{body}");
    let (code, r) = post_json(
        s.addr,
        "/filter",
        &json!({"Pod": pod_json("p", 1, 0), "Nodes": null, "NodeNames": ["t4"]}),
    );
    assert_eq!(code, 200);
    assert!(r["Error"].as_str().unwrap().contains("not ready"), "{r}");
    let (code, _) = post_json(
        s.addr,
        "/prioritize",
        &json!({"Pod": pod_json("p", 1, 0), "Nodes": null, "NodeNames": ["t4"]}),
    );
    assert_eq!(code, 503);
    let (_, r) = post_json(
        s.addr,
        "/bind",
        &json!({"PodName": "p", "PodNamespace": "ml", "PodUID": "uid-p", "Node": "t4"}),
    );
    assert!(r["Error"].as_str().unwrap().contains("not ready"), "{r}");
    assert!(s.api.bindings.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_probe_listener_serves_health_and_readiness_only() {
    let ext = Arc::new(Extender::new(Config::default()).unwrap());
    let cache = Cache::new(ext);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = gantry_extender::health_router(cache.readiness());
    tokio::spawn(gantry_extender::serve(
        listener,
        app,
        std::future::pending(),
    ));
    // The blocking test client, off the runtime's threads.
    let get = move |path: &'static str| tokio::task::spawn_blocking(move || get(addr, path));

    assert_eq!(get("/healthz").await.unwrap(), (200, "ok".into()));
    let (code, body) = get("/readyz").await.unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("initial list of nodes and pods"), "{body}");
    // The verbs are not served there.
    assert_eq!(get("/filter").await.unwrap().0, 404);

    cache.apply_node(Event::Init);
    cache.apply_node(Event::InitDone);
    cache.apply_pod(Event::Init);
    cache.apply_pod(Event::InitDone);
    assert_eq!(get("/readyz").await.unwrap(), (200, "ok".into()));
}

// --- The cache, event by event ---

fn node(name: &str, fixture: &str) -> Node {
    serde_json::from_value(node_json(name, 64, Some(fixture))).unwrap()
}

fn pod(v: Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

#[test]
fn readiness_waits_for_both_lists_and_a_pod_listed_before_its_node_counts_when_it_comes() {
    let ext = Arc::new(Extender::new(Config::default()).unwrap());
    let cache = Cache::new(ext.clone());
    let ready = cache.readiness();
    assert!(!ready.is_ready());
    cache.apply_pod(Event::Init);
    cache.apply_pod(Event::InitApply(pod(bound_pod(
        "a",
        "t4",
        1,
        0,
        &[(3, 1000)],
    ))));
    cache.apply_pod(Event::InitDone);
    assert!(!ready.is_ready());
    assert_eq!(ready.waiting_for(), "the initial list of nodes");
    assert!(held(&ext).is_empty(), "no node t4 yet");
    cache.apply_node(Event::Init);
    cache.apply_node(Event::InitApply(node("t4", "t4-pcie-4.yaml")));
    cache.apply_node(Event::InitDone);
    assert!(ready.is_ready());
    assert_eq!(held(&ext), [("t4".into(), "uid-a".into(), vec![(3, 1000)])]);
}

#[test]
fn a_relist_forgets_what_it_no_longer_returns_but_keeps_binds_in_flight() {
    let ext = Arc::new(Extender::new(Config::default()).unwrap());
    let cache = Cache::new(ext.clone());
    cache.apply_node(Event::Init);
    cache.apply_node(Event::InitApply(node("t4", "t4-pcie-4.yaml")));
    cache.apply_node(Event::InitApply(node("h100", "h100-nvswitch-8.yaml")));
    cache.apply_node(Event::InitDone);
    cache.apply_pod(Event::Init);
    cache.apply_pod(Event::InitApply(pod(bound_pod(
        "a",
        "t4",
        1,
        0,
        &[(0, 1000)],
    ))));
    cache.apply_pod(Event::InitDone);
    // A bind in flight (assumed, not yet in the API).
    let plan = plan_for(&ext, &pod_json("flying", 1, 0), "t4");
    assert_eq!(held(&ext).len(), 2);

    // The watches broke; the re-lists no longer return h100 and pod a.
    cache.apply_node(Event::Init);
    cache.apply_node(Event::InitApply(node("t4", "t4-pcie-4.yaml")));
    cache.apply_node(Event::InitDone);
    cache.apply_pod(Event::Init);
    cache.apply_pod(Event::InitDone);
    assert_eq!(ext.state().node_names(), ["t4"]);
    let left = held(&ext);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].1, "uid-flying");
    ext.finish_bind(&plan, true);
}

// --- The cache against the in-memory API server, through real watches ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_follows_nodes_through_watches() {
    let server = InMemoryApiServer::default();
    server.insert(NODES, node_json("t4", 32, Some("t4-pcie-4.yaml")));
    let (ext, _) = watching(&server).await;
    assert_eq!(ext.state().node_names(), ["t4"]);

    server.insert(NODES, node_json("h100", 64, Some("h100-nvswitch-8.yaml")));
    eventually("h100 added", || ext.state().node_names() == ["h100", "t4"]).await;

    // The device plugin's annotation goes away: the node stays, unusable, with the reason.
    server.update(
        NODES,
        "t4",
        &json!({"metadata": {"annotations": {"gantry.dev/gpus": null}}}),
    );
    let problem = || {
        let e = ext.state().node("t4").unwrap();
        let p = gantry_scheduler::state::lock_entry(&e).problem.clone();
        p
    };
    eventually("t4 changed", || problem().is_some()).await;
    assert!(problem().unwrap().contains("annotation"));

    server.remove(NODES, "h100").unwrap();
    eventually("h100 deleted", || ext.state().node_names() == ["t4"]).await;

    // Deleted while every watch was broken: only the re-list after `410 Gone` can tell.
    server.remove_unseen(NODES, "t4").unwrap();
    eventually("t4 gone after the re-list", || ext.state().is_empty()).await;
    server.insert(NODES, node_json("a100", 64, Some("a100-mig-4.yaml")));
    eventually("watching again after the re-list", || {
        ext.state().node_names() == ["a100"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_bound_elsewhere_count_and_finished_or_deleted_pods_release_their_gpus() {
    let server = InMemoryApiServer::default();
    server.insert(NODES, node_json("t4", 32, Some("t4-pcie-4.yaml")));
    server.insert(PODS, bound_pod("a", "t4", 1, 0, &[(2, 1000)]));
    server.insert(PODS, pod_json("pending", 1, 0));
    let mut done = bound_pod("done", "t4", 1, 0, &[(3, 1000)]);
    done["status"]["phase"] = json!("Succeeded");
    server.insert(PODS, done);
    let (ext, _) = watching(&server).await;
    assert_eq!(held(&ext), [("t4".into(), "uid-a".into(), vec![(2, 1000)])]);

    // Bound by another party after start, with its assignment.
    server.insert(PODS, bound_pod("b", "t4", 0, 500, &[(1, 500)]));
    eventually("pod b counted", || held(&ext).len() == 2).await;
    assert_eq!(held(&ext)[1], ("t4".into(), "uid-b".into(), vec![(1, 500)]));

    // Running → Succeeded: the pod leaves the watch's selection and releases its GPU.
    server.update(PODS, "a", &json!({"status": {"phase": "Succeeded"}}));
    eventually("pod a released", || held(&ext).len() == 1).await;
    assert_eq!(held(&ext)[0].1, "uid-b");

    server.remove(PODS, "b").unwrap();
    eventually("pod b released", || held(&ext).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_extender_rebuilds_the_same_allocations_from_the_annotations() {
    let server = InMemoryApiServer::default();
    server.insert(NODES, node_json("h100", 128, Some("h100-nvswitch-8.yaml")));
    server.insert(NODES, node_json("t4", 128, Some("t4-pcie-4.yaml")));
    let pods = [
        ("w0", 2, 0, "h100"),
        ("w1", 1, 0, "h100"),
        ("s0", 0, 500, "t4"),
        ("s1", 0, 250, "t4"),
        ("s2", 0, 300, "h100"),
    ];
    for (name, gpu, milli, _) in pods {
        server.insert(PODS, pod_json(name, gpu, milli));
    }
    let (first, _) = watching(&server).await;
    let binder = KubeBinder::new(server.client());
    for (name, gpu, milli, node) in pods {
        let plan = plan_for(&first, &pod_json(name, gpu, milli), node);
        binder.bind(&plan).await.unwrap();
        first.finish_bind(&plan, true);
    }
    let before = held(&first);
    assert_eq!(before.len(), 5);
    // The first extender's watch sees its own binds without changing its books.
    eventually("binds seen", || {
        server
            .objects(PODS)
            .iter()
            .all(|p| p["spec"]["nodeName"].is_string())
    })
    .await;
    assert_eq!(held(&first), before);

    let (second, _) = watching(&server).await;
    assert_eq!(held(&second), before);
}
