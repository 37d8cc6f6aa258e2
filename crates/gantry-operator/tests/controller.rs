//! The real kube-rs `Controller`, the operator's startup checks, leader election and `/metrics`,
//! against the stateful in-memory API server of `gantry-testkit` (same HTTP wire, real client).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gantry_operator::endpoint::{serve, Health};
use gantry_operator::lease::LeaseLock;
use gantry_operator::operator::OperatorOptions;
use gantry_operator::{Context, Metrics};
use gantry_planner::{Addressing, GangScheduler, PlanConfig};
use gantry_testkit::kube_api::{eventually, in_memory_api_server, InMemoryApiServer};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Recorder, Reporter};
use kube::Api;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JOBS: &str = "/apis/kubeflow.org/v1/namespaces/default/tfjobs";
const PODS: &str = "/api/v1/namespaces/default/pods";
const SERVICES: &str = "/api/v1/namespaces/default/services";
const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

fn plan_config() -> PlanConfig {
    PlanConfig {
        gang: GangScheduler::None,
        scheduler_name: None,
        addressing: Addressing::ClusterDns {
            cluster_domain: None,
        },
        operator_name: "tfjob-controller".into(),
    }
}

fn context(client: kube::Client, metrics: Arc<Metrics>) -> Arc<Context> {
    Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "gantry-operator".into(),
                instance: None,
            },
        ),
        client,
        plan_config: plan_config(),
        metrics,
        clock: Arc::new(|| Time("2026-01-01T00:00:00Z".parse().unwrap())),
        error_requeue: Duration::from_secs(1),
    })
}

fn tfjob(name: &str, workers: i32) -> Value {
    json!({
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"tfReplicaSpecs": {
            "Worker": {"replicas": workers, "template": {"spec": {"containers": [{"name": "tensorflow", "image": "tf"}]}}},
            "PS": {"template": {"spec": {"containers": [{"name": "tensorflow", "image": "tf"}]}}},
        }},
    })
}

#[tokio::test]
async fn the_controller_reconciles_listed_jobs_and_stops_on_shutdown() {
    let (client, server) = in_memory_api_server();
    server.insert(JOBS, tfjob("a", 2));
    server.insert(JOBS, tfjob("b", 1));
    let ctx = context(client, Arc::new(Metrics::new()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(gantry_operator::controller::run(
        ctx.clone(),
        Some("default"),
        4,
        Duration::from_secs(5),
        async move {
            let _ = stopped.await;
        },
    ));
    eventually("5 pods and both statuses", || {
        server.objects(PODS).len() == 5
            && server
                .objects(JOBS)
                .iter()
                .all(|j| j["status"]["conditions"][0]["type"] == "Created")
    })
    .await;
    assert_eq!(server.objects(SERVICES).len(), 5);
    let names: Vec<Value> = server
        .objects(PODS)
        .iter()
        .map(|p| p["metadata"]["name"].clone())
        .collect();
    assert_eq!(
        names,
        ["a-ps-0", "a-worker-0", "a-worker-1", "b-ps-0", "b-worker-0"]
    );
    for pod in server.objects(PODS) {
        assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
    }
    // Spec untouched: the operator writes only the status.
    let stored = server.objects(JOBS);
    assert_eq!(stored[0]["spec"], tfjob("a", 2)["spec"]);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), controller)
        .await
        .expect("graceful shutdown")
        .unwrap();
}

/// Watches, not lists, drive the controller: a job created after it started, a pod of it deleted,
/// and a job scaled up are each acted on through their watch events alone.
#[tokio::test]
async fn watch_events_trigger_reconciles() {
    let (client, server) = in_memory_api_server();
    let ctx = context(client, Arc::new(Metrics::new()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(gantry_operator::controller::run(
        ctx.clone(),
        Some("default"),
        4,
        Duration::from_secs(5),
        async move {
            let _ = stopped.await;
        },
    ));
    // Started on an empty cluster: its watches are open before the job exists.
    eventually("the controller's watches", || server.open_watches() >= 3).await;
    assert!(server.objects(PODS).is_empty());

    server.insert(JOBS, tfjob("late", 1));
    eventually("the new job's pods", || server.objects(PODS).len() == 2).await;

    // A pod deleted behind the operator's back (an owned-pod DELETED event) comes back.
    server.remove(PODS, "late-worker-0").unwrap();
    eventually("the deleted worker re-created", || {
        server
            .objects(PODS)
            .iter()
            .any(|p| p["metadata"]["name"] == "late-worker-0")
    })
    .await;

    // Scaled up (a MODIFIED event on the job): refused while running pods would keep a stale
    // TF_CONFIG, and said so on the job ...
    assert!(server.update(
        JOBS,
        "late",
        &json!({"spec": {"tfReplicaSpecs": {"Worker": {"replicas": 2}}}})
    ));
    eventually("the refusal on the job", || {
        server.objects(JOBS)[0]["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["reason"] == "TFJobScaleRefused"))
    })
    .await;
    assert_eq!(server.objects(PODS).len(), 2);
    // ... then applied once the job opts into dynamic workers (another MODIFIED event).
    assert!(server.update(
        JOBS,
        "late",
        &json!({"spec": {"enableDynamicWorker": true}})
    ));
    eventually("the second worker", || {
        server
            .objects(PODS)
            .iter()
            .any(|p| p["metadata"]["name"] == "late-worker-1")
    })
    .await;

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), controller)
        .await
        .expect("graceful shutdown")
        .unwrap();
}

fn options() -> OperatorOptions {
    OperatorOptions {
        namespace: Some("default".into()),
        plan: plan_config(),
        metrics_address: "127.0.0.1:0".parse().unwrap(),
        leader_election: None,
        concurrency: 1,
        instance: "test".into(),
        shutdown_grace: Duration::from_millis(100),
    }
}

#[tokio::test]
async fn the_operator_refuses_a_missing_or_foreign_crd() {
    let (client, server) = in_memory_api_server();
    let err = gantry_operator::operator::run(client.clone(), options(), async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not installed"), "{err}");

    // Kubeflow's CRD: no managed-by label.
    let mut kubeflow = gantry_operator::crd::crd_json().unwrap();
    kubeflow["metadata"]["labels"] = json!({});
    server.insert(CRDS, kubeflow);
    let err = gantry_operator::operator::run(client.clone(), options(), async {})
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("belongs to another operator") && text.contains("kubectl -n kubeflow scale"),
        "{text}"
    );
    assert_eq!(err.kind(), "crd");

    // Gantry's own CRD: it starts, and stops at once when told to.
    server.insert(CRDS, gantry_operator::crd::crd_json().unwrap());
    tokio::time::timeout(
        Duration::from_secs(5),
        gantry_operator::operator::run(client, options(), async {}),
    )
    .await
    .expect("the operator stops when told to")
    .unwrap();
}

#[tokio::test]
async fn two_replicas_share_one_lease_and_only_one_leads() {
    let server = InMemoryApiServer::default();
    let now = Arc::new(AtomicI64::new(1_000));
    let clock = {
        let now = now.clone();
        Arc::new(move || {
            Time(k8s_openapi::jiff::Timestamp::from_second(now.load(Ordering::SeqCst)).unwrap())
        })
    };
    let lock = |identity: &str| {
        let api: Api<Lease> = Api::namespaced(server.client(), "gantry-system");
        LeaseLock::new(
            api,
            "gantry-operator",
            identity,
            Duration::from_secs(15),
            clock.clone(),
        )
    };
    let (a, b) = (lock("a"), lock("b"));
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a creates the lease"
    );
    assert!(!b.try_acquire_or_renew().await.unwrap(), "b follows");
    now.store(1_010, Ordering::SeqCst);
    assert!(a.try_acquire_or_renew().await.unwrap(), "a renews");
    now.store(1_020, Ordering::SeqCst);
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "renewed at 1010: valid until 1025"
    );
    let leases = server.objects("/apis/coordination.k8s.io/v1/namespaces/gantry-system/leases");
    assert_eq!(leases[0]["spec"]["holderIdentity"], "a");

    // a dies; after the lease expires b takes over, and a, back, follows.
    now.store(1_026, Ordering::SeqCst);
    assert!(b.try_acquire_or_renew().await.unwrap(), "b takes over");
    assert!(!a.try_acquire_or_renew().await.unwrap(), "a follows");
    let leases = server.objects("/apis/coordination.k8s.io/v1/namespaces/gantry-system/leases");
    assert_eq!(leases[0]["spec"]["holderIdentity"], "b");
    assert_eq!(leases[0]["spec"]["leaseTransitions"], 1);

    // Both race for an expired lease: the resourceVersion lets exactly one win.
    now.store(1_100, Ordering::SeqCst);
    let c = lock("c");
    let (won_a, won_c) = tokio::join!(a.try_acquire_or_renew(), c.try_acquire_or_renew());
    assert_eq!(
        u8::from(won_a.unwrap()) + u8::from(won_c.unwrap()),
        1,
        "exactly one leader"
    );
}

async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let code = text[9..12].parse().unwrap();
    (code, text)
}

#[tokio::test]
async fn metrics_are_scraped_after_reconciles() {
    let (client, server) = in_memory_api_server();
    server.insert(JOBS, tfjob("m", 1));
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        Health {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
        std::future::pending(),
    ));

    assert_eq!(get(address, "/healthz").await.0, 200);
    assert_eq!(get(address, "/readyz").await.0, 503);
    ready.store(true, Ordering::SeqCst);
    assert_eq!(get(address, "/readyz").await.0, 200);

    let ctx = context(client, metrics);
    let job: gantry_tfjob::TFJob = serde_json::from_value(server.objects(JOBS)[0].clone()).unwrap();
    gantry_operator::reconcile(Arc::new(job), ctx.clone())
        .await
        .unwrap();
    // A reconcile that fails: a job deleted meanwhile. Its pods are created, then the status
    // patch is answered 404.
    let ghost: gantry_tfjob::TFJob = serde_json::from_value(tfjob("ghost", 1)).unwrap();
    let err = gantry_operator::reconcile(Arc::new(ghost), ctx)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "api_not_found");

    let (code, body) = get(address, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("gantry_operator_reconciles_total 2"),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "gantry_operator_reconcile_errors_total{{kind=\"{}\"}} 1",
            err.kind()
        )),
        "{body}"
    );
    assert!(
        body.contains("gantry_operator_jobs{phase=\"Created\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("gantry_operator_pods_created_total 4"),
        "{body}"
    );
    assert!(
        body.contains("gantry_operator_reconcile_duration_seconds_count 2"),
        "{body}"
    );
    assert_eq!(get(address, "/nope").await.0, 404);
}
