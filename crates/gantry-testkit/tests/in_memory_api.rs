//! The in-memory API server through a real `kube::Client`: watches stream the changes made after
//! their version, through selectors; no-op writes are silent; compaction forces a re-list; a
//! write delay lets concurrent writes overlap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use gantry_testkit::kube_api::InMemoryApiServer;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::Api;
use serde_json::json;

const PODS: &str = "/api/v1/namespaces/ml/pods";

fn pod(name: &str, node: Option<&str>, phase: &str) -> serde_json::Value {
    json!({"metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}")},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
           "status": {"phase": phase}})
}

/// The next event as (type, pod name).
async fn next(
    events: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin),
) -> (&'static str, String) {
    let e = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an event")
        .expect("stream open")
        .expect("decodable");
    let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    match e {
        WatchEvent::Added(p) => ("ADDED", name(&p)),
        WatchEvent::Modified(p) => ("MODIFIED", name(&p)),
        WatchEvent::Deleted(p) => ("DELETED", name(&p)),
        WatchEvent::Bookmark(_) => ("BOOKMARK", String::new()),
        WatchEvent::Error(s) => ("ERROR", s.code.to_string()),
    }
}

#[tokio::test]
async fn a_watch_with_a_field_selector_sees_objects_enter_and_leave_it() {
    let server = InMemoryApiServer::default();
    server.insert(PODS, pod("a", Some("n1"), "Running"));
    server.insert(PODS, pod("pending", None, "Pending"));
    let api: Api<Pod> = Api::all(server.client());
    let selector = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed";
    let list = api
        .list(&ListParams::default().fields(selector))
        .await
        .unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["a"]);
    let version = list.metadata.resource_version.unwrap();
    let mut events = api
        .watch(&WatchParams::default().fields(selector), &version)
        .await
        .unwrap()
        .boxed();

    // Bound through the binding subresource: enters the selection.
    let pods: Api<Pod> = Api::namespaced(server.client(), "ml");
    pods.create_subresource::<_, serde_json::Value>(
        "binding",
        "pending",
        &Default::default(),
        &json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "pending"},
                "target": {"kind": "Node", "name": "n2"}}),
    )
    .await
    .unwrap();
    assert_eq!(next(&mut events).await, ("ADDED", "pending".into()));
    // A no-op patch: no event, same version.
    let before = pods.get("a").await.unwrap().metadata.resource_version;
    let patch = json!({"status": {"phase": "Running"}});
    let after = pods
        .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(after.metadata.resource_version, before);
    // Finished: leaves the selection, so this watch sees it deleted.
    server.update(PODS, "a", &json!({"status": {"phase": "Succeeded"}}));
    assert_eq!(next(&mut events).await, ("DELETED", "a".into()));
    server.update(
        PODS,
        "pending",
        &json!({"metadata": {"labels": {"x": "y"}}}),
    );
    assert_eq!(next(&mut events).await, ("MODIFIED", "pending".into()));
    server.remove(PODS, "pending").unwrap();
    assert_eq!(next(&mut events).await, ("DELETED", "pending".into()));

    // A second bind of a bound pod is refused.
    server.insert(PODS, pod("b", Some("n1"), "Running"));
    let err = pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            "b",
            &Default::default(),
            &json!({"metadata": {"name": "b"}, "target": {"kind": "Node", "name": "n2"}}),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
    // A Binding for another incarnation of the pod (its UID) is refused too.
    server.insert(PODS, pod("c", None, "Pending"));
    let err = pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            "c",
            &Default::default(),
            &json!({"metadata": {"name": "c", "uid": "uid-old-c"}, "target": {"kind": "Node", "name": "n2"}}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.message.contains("UID")),
        "{err}"
    );
    assert!(pods
        .get("c")
        .await
        .unwrap()
        .spec
        .unwrap()
        .node_name
        .is_none());
}

#[tokio::test]
async fn a_watch_resumed_from_before_a_compaction_gets_410() {
    let server = InMemoryApiServer::default();
    server.insert(PODS, pod("a", Some("n1"), "Running"));
    server.insert(PODS, pod("b", Some("n1"), "Running"));
    let api: Api<Pod> = Api::all(server.client());
    let version = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut open = api
        .watch(&WatchParams::default(), &version)
        .await
        .unwrap()
        .boxed();
    server.remove_unseen("/api/v1/pods", "ml/a").unwrap();
    // The open watch ends without the event...
    let end = tokio::time::timeout(Duration::from_secs(5), open.next())
        .await
        .unwrap();
    assert!(end.is_none(), "{end:?}");
    // ...resuming it is refused, and a re-list tells.
    let mut resumed = api
        .watch(&WatchParams::default(), &version)
        .await
        .unwrap()
        .boxed();
    assert_eq!(next(&mut resumed).await, ("ERROR", "410".into()));
    let names: Vec<_> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_write_delay_concurrent_writes_overlap() {
    let server = InMemoryApiServer::with_write_delay(Duration::from_millis(50));
    for i in 0..4 {
        server.insert(PODS, pod(&format!("p{i}"), None, "Pending"));
    }
    let pods: Api<Pod> = Api::namespaced(server.client(), "ml");
    let writes = (0..4).map(|i| {
        let pods = pods.clone();
        async move {
            let patch = json!({"metadata": {"labels": {"i": i.to_string()}}});
            pods.patch(
                &format!("p{i}"),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        }
    });
    let (results, read) = tokio::join!(futures::future::join_all(writes), pods.get("p0"));
    assert_eq!(read.unwrap().metadata.name.as_deref(), Some("p0"));
    results.into_iter().collect::<Result<Vec<_>, _>>().unwrap();
    let log = server.writes();
    assert_eq!(log.len(), 4);
    assert!(server.max_writes_in_flight() > 1);
    assert!(log
        .iter()
        .any(|a| log.iter().any(|b| a.path != b.path && a.overlaps(b))));
}
