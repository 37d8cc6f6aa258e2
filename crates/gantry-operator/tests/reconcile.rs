//! The reconciler against a fake API server at the HTTP wire: a real `kube::Client` whose every
//! request is checked for verb, path and body and answered as the API server would. A missing call
//! fails the test at once (see `gantry_testkit::kube_api`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use gantry_operator::{reconcile, Context, Metrics};
use gantry_planner::{Addressing, GangScheduler, PlanConfig};
use gantry_testkit::kube_api::{fake_api_server, FakeApiServer};
use gantry_tfjob::TFJob;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{json, Value};

const NS: &str = "default";
const PODS: &str = "/api/v1/namespaces/default/pods";
const SERVICES: &str = "/api/v1/namespaces/default/services";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

fn status_path(job: &str) -> String {
    format!("/apis/kubeflow.org/v1/namespaces/default/tfjobs/{job}/status")
}

fn context(client: kube::Client, gang: GangScheduler) -> Arc<Context> {
    Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "gantry-operator".into(),
                instance: Some("test".into()),
            },
        ),
        client,
        plan_config: PlanConfig {
            gang,
            scheduler_name: None,
            addressing: Addressing::ClusterDns {
                cluster_domain: None,
            },
            operator_name: "gantry-operator".into(),
        },
        metrics: Arc::new(Metrics::new()),
        clock: Arc::new(|| Time("2026-01-01T00:00:00Z".parse().unwrap())),
        error_requeue: Duration::from_secs(5),
    })
}

/// A TFJob with `workers` workers (GPU in limits only), one PS, and `spec` merged into its spec.
fn job(name: &str, workers: i32, spec: Value, status: Value) -> TFJob {
    let container = json!({
        "name": "tensorflow", "image": "tf:2.16",
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
    });
    let mut value = json!({
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "resourceVersion": "7"},
        "spec": {"tfReplicaSpecs": {
            "Worker": {"replicas": workers, "restartPolicy": "ExitCode", "template": {"spec": {"containers": [container]}}},
            "PS": {"replicas": 1, "template": {"spec": {"containers": [{"name": "tensorflow", "image": "tf:2.16"}]}}},
        }},
    });
    merge(&mut value["spec"], spec);
    if !status.is_null() {
        value["status"] = status;
    }
    serde_json::from_value(value).unwrap()
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Runs one reconcile against the scripted server; the whole exchange must end within 10 s.
async fn run<F>(
    job: &TFJob,
    ctx: &Arc<Context>,
    server: FakeApiServer,
    script: F,
) -> (Result<Action, gantry_operator::Error>, FakeApiServer)
where
    F: AsyncFnOnce(&mut FakeApiServer),
{
    let mut server = server;
    let exchange = async {
        let script = async {
            script(&mut server).await;
            server.expect_no_call(Duration::from_millis(50)).await;
        };
        tokio::join!(reconcile(Arc::new(job.clone()), ctx.clone()), script).0
    };
    let result = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the reconcile finished");
    (result, server)
}

async fn expect_lists(
    server: &mut FakeApiServer,
    job: &str,
    pods: Vec<Value>,
    services: Vec<Value>,
) {
    let call = server.expect("GET", PODS).await;
    assert_eq!(
        call.query.trim_start_matches('&'),
        format!("labelSelector=training.kubeflow.org%2Fjob-name%3D{job}")
    );
    call.respond_list("Pod", "v1", pods);
    server
        .expect("GET", SERVICES)
        .await
        .respond_list("Service", "v1", services);
}

/// Answers `n` creates at `path`, returning the bodies.
async fn expect_creates(server: &mut FakeApiServer, path: &str, n: usize) -> Vec<Value> {
    let mut bodies = Vec::new();
    for _ in 0..n {
        let call = server.expect("POST", path).await;
        bodies.push(call.body.clone());
        call.respond_created();
    }
    bodies
}

fn names(bodies: &[Value]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| b["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

async fn expect_status(server: &mut FakeApiServer, job: &str) -> Value {
    let call = server.expect("PATCH", &status_path(job)).await;
    assert_eq!(call.content_type, "application/merge-patch+json");
    assert_eq!(
        call.body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["status"],
        "only the status is written"
    );
    let status = call.body["status"].clone();
    call.respond(200, &json!({"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": job, "namespace": NS}, "spec": {"tfReplicaSpecs": {}}, "status": status}));
    status
}

async fn expect_event(server: &mut FakeApiServer, reason: &str) -> Value {
    let call = server.expect("POST", EVENTS).await;
    assert_eq!(call.body["reason"], reason, "{}", call.body);
    assert_eq!(call.body["regarding"]["kind"], "TFJob");
    let body = call.body.clone();
    call.respond_created();
    body
}

fn condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// A created pod as the API server would list it, in `phase` with the tensorflow container's exit code.
fn pod_in(mut pod: Value, phase: &str, exit: Option<i32>) -> Value {
    let state = match exit {
        Some(code) => json!({"terminated": {"exitCode": code}}),
        None => json!({"running": {}}),
    };
    pod["status"] = json!({"phase": phase, "containerStatuses": [{"name": "tensorflow", "ready": false, "restartCount": 0, "image": "tf", "imageID": "", "state": state}]});
    pod
}

/// What a first reconcile creates for `job` without gang scheduling: (pods, services).
async fn created(job: &TFJob) -> (Vec<Value>, Vec<Value>) {
    let (client, server) = fake_api_server();
    let ctx = context(client, GangScheduler::None);
    let n = job
        .spec
        .tf_replica_specs
        .values()
        .map(|s| usize::try_from(s.replicas.unwrap_or(1)).unwrap())
        .sum();
    let mut out = (Vec::new(), Vec::new());
    let (result, _) = run(job, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, job.name(), vec![], vec![]).await;
        out.1 = expect_creates(s, SERVICES, n).await;
        out.0 = expect_creates(s, PODS, n).await;
        expect_status(s, job.name()).await;
    })
    .await;
    result.unwrap();
    out
}

#[tokio::test]
async fn a_new_job_under_volcano_creates_its_pod_group_and_pods_only_once_admitted() {
    let job = job(
        "mnist",
        2,
        json!({"runPolicy": {"schedulingPolicy": {"queue": "gpu"}}}),
        Value::Null,
    );
    let group_path = "/apis/scheduling.volcano.sh/v1beta1/namespaces/default/podgroups";
    let (client, server) = fake_api_server();
    let ctx = context(client, GangScheduler::Volcano);

    // First reconcile: no PodGroup yet. Create it, no pod, look again soon.
    let (action, server) = run(&job, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "mnist", vec![], vec![]).await;
        s.expect("GET", &format!("{group_path}/mnist"))
            .await
            .respond_status(404, "NotFound");
        let group = s.expect("POST", group_path).await;
        assert_eq!(
            group.body["spec"],
            json!({"minMember": 3, "minResources": {"nvidia.com/gpu": "2"}, "queue": "gpu"}),
            "GPUs set only in limits count"
        );
        assert_eq!(
            group.body["metadata"]["ownerReferences"][0]["uid"],
            "uid-mnist"
        );
        assert_eq!(
            group.body["metadata"]["ownerReferences"][0]["controller"],
            true
        );
        group.respond_created();
        let status = expect_status(s, "mnist").await;
        assert_eq!(condition(&status, "Created").unwrap()["status"], "True");
    })
    .await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(5)));

    // Second reconcile: the group is still Pending: nothing is created.
    let (action, server) = run(&job, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "mnist", vec![], vec![]).await;
        s.expect("GET", &format!("{group_path}/mnist")).await.respond(200, &json!({"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup", "metadata": {"name": "mnist"}, "status": {"phase": "Pending"}}));
        expect_status(s, "mnist").await;
    })
    .await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(5)));

    // Admitted: services, then pods, with the group annotation and Volcano's scheduler.
    let (action, _) = run(&job, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "mnist", vec![], vec![]).await;
        s.expect("GET", &format!("{group_path}/mnist")).await.respond(200, &json!({"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup", "metadata": {"name": "mnist"}, "status": {"phase": "Inqueue"}}));
        let services = expect_creates(s, SERVICES, 3).await;
        assert_eq!(names(&services), ["mnist-ps-0", "mnist-worker-0", "mnist-worker-1"]);
        for svc in &services {
            assert_eq!(svc["spec"]["clusterIP"], "None");
            assert_eq!(svc["spec"]["publishNotReadyAddresses"], true);
        }
        let pods = expect_creates(s, PODS, 3).await;
        assert_eq!(names(&pods), ["mnist-ps-0", "mnist-worker-0", "mnist-worker-1"]);
        for pod in &pods {
            assert_eq!(pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"], "mnist");
            assert_eq!(pod["spec"]["schedulerName"], "volcano");
            assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "TFJob");
            assert_eq!(pod["metadata"]["labels"]["training.kubeflow.org/operator-name"], "gantry-operator");
        }
        let tf_config = pods[2]["spec"]["containers"][0]["env"][0]["value"].as_str().unwrap();
        assert!(tf_config.contains("mnist-worker-1.default.svc:2222"), "{tf_config}");
        expect_status(s, "mnist").await;
    })
    .await;
    assert_eq!(action.unwrap(), Action::await_change());
}

#[tokio::test]
async fn scheduler_plugins_and_gantry_gangs() {
    let job = job("g", 2, json!({}), Value::Null);
    let group_path = "/apis/scheduling.x-k8s.io/v1alpha1/namespaces/default/podgroups";
    let (client, server) = fake_api_server();
    let ctx = context(client, GangScheduler::SchedulerPlugins);
    let (action, _) = run(&job, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "g", vec![], vec![]).await;
        s.expect("GET", &format!("{group_path}/g"))
            .await
            .respond_status(404, "NotFound");
        let group = s.expect("POST", group_path).await;
        assert_eq!(
            group.body["spec"],
            json!({"minMember": 3, "minResources": {"nvidia.com/gpu": "2"}})
        );
        group.respond_created();
        expect_creates(s, SERVICES, 3).await;
        let pods = expect_creates(s, PODS, 3).await;
        assert_eq!(
            pods[0]["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"],
            "g"
        );
        expect_status(s, "g").await;
    })
    .await;
    action.unwrap();

    // Gantry's extender: no PodGroup object, the labels are the group.
    let (client, server) = fake_api_server();
    let ctx = context(client, GangScheduler::Gantry);
    let (action, _) = run(&job, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "g", vec![], vec![]).await;
        expect_creates(s, SERVICES, 3).await;
        let pods = expect_creates(s, PODS, 3).await;
        for pod in &pods {
            assert_eq!(
                pod["metadata"]["labels"][gantry_planner::GANTRY_GROUP_LABEL],
                "g"
            );
            // The two GPU workers: the CPU-only PS never reaches the extender.
            assert_eq!(
                pod["metadata"]["labels"][gantry_planner::GANTRY_MIN_MEMBER_LABEL],
                "2"
            );
            assert_eq!(pod["spec"]["schedulerName"], "gantry-scheduler");
        }
        expect_status(s, "g").await;
    })
    .await;
    action.unwrap();
}

#[tokio::test]
async fn succeeded_pods_succeed_the_job_then_ps_pods_are_cleaned() {
    let fresh = job("ok", 2, json!({}), Value::Null);
    let (pods, services) = created(&fresh).await;
    let running = job(
        "ok",
        2,
        json!({}),
        json!({"conditions": [{"type": "Created", "status": "True", "reason": "TFJobCreated"}, {"type": "Running", "status": "True", "reason": "TFJobRunning"}], "startTime": "2026-01-01T00:00:00Z"}),
    );
    let listed = vec![
        pod_in(pods[0].clone(), "Running", None),
        pod_in(pods[1].clone(), "Succeeded", Some(0)),
        pod_in(pods[2].clone(), "Running", None),
    ];
    let (client, server) = fake_api_server();
    let ctx = context(client, GangScheduler::None);
    let mut after = Value::Null;
    let (action, server) = run(&running, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "ok", listed.clone(), services.clone()).await;
        after = expect_status(s, "ok").await;
        expect_event(s, "TFJobSucceeded").await;
    })
    .await;
    assert_eq!(condition(&after, "Succeeded").unwrap()["status"], "True");
    assert_eq!(condition(&after, "Running").unwrap()["status"], "False");
    assert_eq!(
        action.unwrap(),
        Action::requeue(Duration::from_secs(1)),
        "cleanup comes next"
    );

    let succeeded = job("ok", 2, json!({}), after);
    let (action, _) = run(&succeeded, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "ok", listed.clone(), services.clone()).await;
        // cleanPodPolicy unset means Running in Gantry: the PS and the still-running worker go.
        for name in ["ok-ps-0", "ok-worker-1"] {
            let call = s.expect("DELETE", &format!("{PODS}/{name}")).await;
            call.respond(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
        }
        for name in ["ok-ps-0", "ok-worker-1"] {
            s.expect("DELETE", &format!("{SERVICES}/{name}"))
                .await
                .respond_status(404, "NotFound");
        }
        expect_status(s, "ok").await;
    })
    .await;
    action.unwrap();
}

#[tokio::test]
async fn a_retryable_failure_recreates_the_pod_and_backoff_exhaustion_fails_the_job() {
    let fresh = job(
        "rt",
        2,
        json!({"runPolicy": {"backoffLimit": 1}}),
        Value::Null,
    );
    let (pods, services) = created(&fresh).await;
    let running_status = json!({"conditions": [{"type": "Created", "status": "True", "reason": "TFJobCreated"}, {"type": "Running", "status": "True", "reason": "TFJobRunning"}], "startTime": "2026-01-01T00:00:00Z"});
    let running = job(
        "rt",
        2,
        json!({"runPolicy": {"backoffLimit": 1}}),
        running_status,
    );
    let killed = vec![
        pod_in(pods[0].clone(), "Running", None),
        pod_in(pods[1].clone(), "Running", None),
        pod_in(pods[2].clone(), "Failed", Some(137)),
    ];
    let (client, server) = fake_api_server();
    let ctx = context(client, GangScheduler::None);
    let mut after = Value::Null;
    let (action, server) = run(&running, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "rt", killed.clone(), services.clone()).await;
        s.expect("DELETE", &format!("{PODS}/rt-worker-1"))
            .await
            .respond(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
        after = expect_status(s, "rt").await;
        expect_event(s, "TFJobRestarting").await;
    })
    .await;
    action.unwrap();
    assert_eq!(condition(&after, "Restarting").unwrap()["status"], "True");
    assert_eq!(after["replicaStatuses"]["Worker"]["recreated"], 1);

    // The pod is gone: the next reconcile re-creates it, with the same name and TF_CONFIG.
    let restarting = job(
        "rt",
        2,
        json!({"runPolicy": {"backoffLimit": 1}}),
        after.clone(),
    );
    let (action, server) = run(&restarting, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "rt", killed[..2].to_vec(), services.clone()).await;
        let again = expect_creates(s, PODS, 1).await;
        assert_eq!(again[0], pods[2], "the same pod again");
        expect_status(s, "rt").await;
    })
    .await;
    action.unwrap();

    // Killed once more: a second re-creation would pass backoffLimit 1, so the job fails and every
    // pod and service goes.
    let (action, _) = run(&restarting, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "rt", killed.clone(), services.clone()).await;
        for name in ["rt-ps-0", "rt-worker-0", "rt-worker-1"] {
            s.expect("DELETE", &format!("{PODS}/{name}")).await.respond(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
        }
        for name in ["rt-ps-0", "rt-worker-0", "rt-worker-1"] {
            s.expect("DELETE", &format!("{SERVICES}/{name}"))
                .await
                .respond(
                    200,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                );
        }
        let status = expect_status(s, "rt").await;
        let failed = condition(&status, "Failed").unwrap();
        assert!(
            failed["message"]
                .as_str()
                .unwrap()
                .contains("backoff limit"),
            "{failed}"
        );
        expect_event(s, "TFJobFailed").await;
    })
    .await;
    action.unwrap();
}

#[tokio::test]
async fn an_invalid_job_gets_a_failed_condition_and_an_event_not_a_crash_loop() {
    let bad = job(
        "bad",
        1,
        json!({"tfReplicaSpecs": {"Worker": {"template": {"spec": {"containers": [{"name": "main", "image": "tf"}]}}}}}),
        Value::Null,
    );
    let (client, server) = fake_api_server();
    let ctx = context(client, GangScheduler::None);
    let mut after = Value::Null;
    let (action, server) = run(&bad, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "bad", vec![], vec![]).await;
        after = expect_status(s, "bad").await;
        let event = expect_event(s, "TFJobFailedValidation").await;
        assert_eq!(event["type"], "Warning");
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .contains("container with name tensorflow"),
            "{event}"
        );
    })
    .await;
    assert_eq!(
        action.unwrap(),
        Action::await_change(),
        "no error, so no retry loop"
    );
    let failed = condition(&after, "Failed").unwrap();
    assert_eq!(failed["reason"], "TFJobFailedValidation");
    assert!(failed["message"]
        .as_str()
        .unwrap()
        .contains("spec.tfReplicaSpecs[Worker]"));

    // Once failed, a reconcile changes nothing and publishes nothing.
    let failed_job = job(
        "bad",
        1,
        json!({"tfReplicaSpecs": {"Worker": {"template": {"spec": {"containers": [{"name": "main", "image": "tf"}]}}}}}),
        after,
    );
    let (action, _) = run(&failed_job, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "bad", vec![], vec![]).await;
    })
    .await;
    assert_eq!(action.unwrap(), Action::await_change());
}

fn ok() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})
}

fn running_status() -> Value {
    json!({"conditions": [{"type": "Created", "status": "True", "reason": "TFJobCreated"}, {"type": "Running", "status": "True", "reason": "TFJobRunning"}], "startTime": "2026-01-01T00:00:00Z"})
}

#[tokio::test]
async fn suspend_deletes_everything_and_resume_recreates_it() {
    let fresh = job("sus", 1, json!({}), Value::Null);
    let (pods, services) = created(&fresh).await;
    let listed: Vec<Value> = pods
        .iter()
        .map(|p| pod_in(p.clone(), "Running", None))
        .collect();
    let suspended = job(
        "sus",
        1,
        json!({"runPolicy": {"suspend": true}}),
        running_status(),
    );
    let (client, server) = fake_api_server();
    let ctx = context(client, GangScheduler::None);
    let mut after = Value::Null;
    let (action, server) = run(&suspended, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "sus", listed.clone(), services.clone()).await;
        for path in [PODS, SERVICES] {
            for name in ["sus-ps-0", "sus-worker-0"] {
                s.expect("DELETE", &format!("{path}/{name}"))
                    .await
                    .respond(200, &ok());
            }
        }
        after = expect_status(s, "sus").await;
        expect_event(s, "TFJobSuspended").await;
    })
    .await;
    action.unwrap();
    assert_eq!(condition(&after, "Suspended").unwrap()["status"], "True");
    assert_eq!(condition(&after, "Running").unwrap()["status"], "False");
    assert_eq!(
        after["startTime"],
        Value::Null,
        "startTime is removed, not left behind by the merge patch"
    );

    // Resume: everything comes back, Suspended turns False.
    let mut stored = after.clone();
    stored.as_object_mut().unwrap().remove("startTime");
    let resumed = job("sus", 1, json!({"runPolicy": {"suspend": false}}), stored);
    let (action, _) = run(&resumed, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "sus", vec![], vec![]).await;
        assert_eq!(
            names(&expect_creates(s, SERVICES, 2).await),
            ["sus-ps-0", "sus-worker-0"]
        );
        assert_eq!(expect_creates(s, PODS, 2).await, pods);
        let status = expect_status(s, "sus").await;
        assert_eq!(condition(&status, "Suspended").unwrap()["status"], "False");
        assert_eq!(status["startTime"], "2026-01-01T00:00:00Z");
        expect_event(s, "TFJobResumed").await;
    })
    .await;
    action.unwrap();
}

#[tokio::test]
async fn scaling_without_dynamic_workers_is_refused_with_a_condition_and_an_event() {
    let fresh = job("sc", 2, json!({}), Value::Null);
    let (pods, services) = created(&fresh).await;
    let listed: Vec<Value> = pods
        .iter()
        .map(|p| pod_in(p.clone(), "Running", None))
        .collect();
    let scaled = job("sc", 3, json!({}), running_status());
    let (client, server) = fake_api_server();
    let ctx = context(client, GangScheduler::None);
    let (action, _) = run(&scaled, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "sc", listed.clone(), services.clone()).await;
        // No pod, no service: running pods would keep a 2-worker TF_CONFIG.
        let status = expect_status(s, "sc").await;
        let refused = condition(&status, "ScaleRefused").unwrap();
        assert_eq!(refused["status"], "True");
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("Worker: 2 running, 3 wanted"),
            "{refused}"
        );
        let event = expect_event(s, "TFJobScaleRefused").await;
        assert_eq!(event["type"], "Warning");
    })
    .await;
    action.unwrap();
}

#[tokio::test]
async fn scaling_dynamic_workers_adds_a_worker_with_a_sparse_tf_config() {
    let fresh = job("dyn", 2, json!({"enableDynamicWorker": true}), Value::Null);
    let (pods, services) = created(&fresh).await;
    let listed: Vec<Value> = pods
        .iter()
        .map(|p| pod_in(p.clone(), "Running", None))
        .collect();
    let scaled = job(
        "dyn",
        3,
        json!({"enableDynamicWorker": true}),
        running_status(),
    );
    let (client, server) = fake_api_server();
    let ctx = context(client, GangScheduler::None);
    let (action, server) = run(&scaled, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "dyn", listed.clone(), services.clone()).await;
        assert_eq!(names(&expect_creates(s, SERVICES, 1).await), ["dyn-worker-2"]);
        let new = expect_creates(s, PODS, 1).await;
        let tf_config: Value = serde_json::from_str(new[0]["spec"]["containers"][0]["env"][0]["value"].as_str().unwrap()).unwrap();
        assert_eq!(tf_config["sparseCluster"], json!({"worker": {"2": "dyn-worker-2.default.svc:2222"}, "ps": ["dyn-ps-0.default.svc:2222"]}));
        expect_status(s, "dyn").await;
    })
    .await;
    action.unwrap();

    // Scale down to 1: the highest workers go, the others keep running untouched.
    let down = job(
        "dyn",
        1,
        json!({"enableDynamicWorker": true}),
        running_status(),
    );
    let (action, _) = run(&down, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "dyn", listed.clone(), services.clone()).await;
        s.expect("DELETE", &format!("{PODS}/dyn-worker-1"))
            .await
            .respond(200, &ok());
        s.expect("DELETE", &format!("{SERVICES}/dyn-worker-1"))
            .await
            .respond(200, &ok());
        expect_status(s, "dyn").await;
    })
    .await;
    action.unwrap();
}

#[tokio::test]
async fn an_operator_restart_mid_reconcile_creates_no_duplicate() {
    let fresh = job("rs", 3, json!({}), Value::Null);
    let (client, server) = fake_api_server();
    let ctx = context(client, GangScheduler::None);
    // The first operator dies after two pods: the API server fails the third create.
    let mut first = Vec::new();
    let (result, _) = run(&fresh, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "rs", vec![], vec![]).await;
        let services = expect_creates(s, SERVICES, 4).await;
        first.push(services);
        first.push(expect_creates(s, PODS, 2).await);
        s.expect("POST", PODS)
            .await
            .respond_status(500, "InternalError");
    })
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), "api_status");
    assert!(
        err.to_string().contains("create pods/default/rs-worker-1"),
        "{err}"
    );
    let (services, created_pods) = (first[0].clone(), first[1].clone());

    // A new operator: the API server's list lags and shows one of the two pods; the other is
    // created again and answered AlreadyExists, which counts as done. Only the missing pods are new.
    let (client, server) = fake_api_server();
    let ctx = context(client, GangScheduler::None);
    let (action, _) = run(&fresh, &ctx, server, async |s: &mut FakeApiServer| {
        expect_lists(s, "rs", vec![created_pods[0].clone()], services.clone()).await;
        let again = s.expect("POST", PODS).await;
        assert_eq!(again.body["metadata"]["name"], "rs-worker-0");
        again.respond_status(409, "AlreadyExists");
        let rest = expect_creates(s, PODS, 2).await;
        assert_eq!(names(&rest), ["rs-worker-1", "rs-worker-2"]);
        expect_status(s, "rs").await;
    })
    .await;
    action.unwrap();
}
