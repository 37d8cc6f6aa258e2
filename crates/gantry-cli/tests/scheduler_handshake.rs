//! The bind-to-Allocate handshake across the stack, through one in-memory API server: the device
//! plugin publishes its node's GPUs (a real plugin against a fake kubelet over real unix sockets
//! and gRPC), the extender's watch cache picks the node up, `filter`/`prioritize`/`bind` place
//! shared-GPU pods and write their assignment through the API, and the kubelet's `Allocate`
//! (arbitrary `gantry.dev/gpu-milli` shares) hands each container exactly the GPU the scheduler
//! recorded. A whole-GPU pod is steered the same way: `GetPreferredAllocation` names the GPUs the
//! extender recorded, and when the kubelet hands out others the plugin corrects the record and the
//! extender's books follow.
// Integration tests: a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_device_plugin::allocate::{parse_strategies, AllocatePolicy};
use gantry_device_plugin::config::PluginConfig;
use gantry_device_plugin::handshake::POD_ALLOCATED_ANNOTATION;
use gantry_device_plugin::resources::milli_device_id;
use gantry_device_plugin::{start, ClusterOptions, PluginOptions};
use gantry_discovery::{BackendChoice, BackendKind, DiscoveryConfig};
use gantry_extender::{Binder, Cache, KubeBinder};
use gantry_kubelet_proto::deviceplugin::v1beta1 as api;
use gantry_scheduler::schema::{NODE_GPUS_ANNOTATION, POD_ASSIGNMENT_ANNOTATION};
use gantry_scheduler::wire::{ExtenderArgs, ExtenderBindingArgs};
use gantry_scheduler::{Config, Extender, GpuAssignment};
use gantry_testkit::kube_api::{eventually, InMemoryApiServer};
use gantry_testkit::{load_inventory, FakeKubelet};
use serde_json::{json, Value};

const NODE: &str = "gpu-node-1";
const NODES: &str = "/api/v1/nodes";
const PODS: &str = "/api/v1/namespaces/ml/pods";
const MILLI_SOCKET: &str = "gantry-gantry.dev-gpu-milli.sock";
const GPU_SOCKET: &str = "gantry-nvidia.com-gpu.sock";

/// A pending pod for gantry-scheduler whose one container asks for `amount` of `resource`.
fn pending(name: &str, resource: &str, amount: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}")},
        "spec": {"schedulerName": "gantry-scheduler", "containers": [{
            "name": "main", "image": "cuda",
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                          "limits": {resource: amount.to_string()}}}]},
        "status": {"phase": "Pending"}
    })
}

fn pending_pod(name: &str, milli: u32) -> Value {
    pending(name, "gantry.dev/gpu-milli", milli)
}

fn pending_whole_pod(name: &str, gpus: u32) -> Value {
    pending(name, "nvidia.com/gpu", gpus)
}

/// kube-scheduler's three calls for `pod` with node names only; returns the recorded assignment.
async fn schedule(ext: &Extender, binder: &KubeBinder, pod: &Value) -> GpuAssignment {
    let name = pod["metadata"]["name"].as_str().unwrap();
    let args: ExtenderArgs =
        serde_json::from_value(json!({"Pod": pod, "Nodes": null, "NodeNames": [NODE]})).unwrap();
    let now = Instant::now();
    let filtered = ext.filter(&args, now);
    assert_eq!(filtered.error, "");
    assert_eq!(
        filtered.node_names.as_deref(),
        Some(&[NODE.to_string()][..])
    );
    let scores = ext.prioritize(&args, now).unwrap();
    assert_eq!(scores[0].host, NODE);
    let plan = ext
        .begin_bind(
            &ExtenderBindingArgs {
                pod_name: name.into(),
                pod_namespace: "ml".into(),
                pod_uid: format!("uid-{name}"),
                node: NODE.into(),
            },
            now,
        )
        .unwrap();
    let written = binder.bind(&plan).await;
    ext.finish_bind(&plan, written.is_ok());
    written.unwrap();
    plan.assignment
}

async fn allocate(
    kubelet: &FakeKubelet,
    ids: Vec<String>,
) -> Result<api::ContainerAllocateResponse, tonic::Status> {
    let mut client = kubelet.plugin(MILLI_SOCKET).await;
    client
        .allocate(api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest { devices_ids: ids }],
        })
        .await
        .map(|r| r.into_inner().container_responses.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_container_gets_the_gpu_the_scheduler_recorded() {
    let server = InMemoryApiServer::default();
    server.insert(
        NODES,
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
               "status": {"allocatable": {"cpu": "32", "memory": "128Gi"}}}),
    );
    let inventory = load_inventory("t4-pcie-4.yaml");

    // The device plugin on the node, with a fake kubelet.
    let plugin_dir = tempfile::tempdir().unwrap();
    let kubelet = FakeKubelet::start(plugin_dir.path()).await;
    let plugin = start(PluginOptions {
        plugin_dir: plugin_dir.path().to_owned(),
        discovery: DiscoveryConfig {
            backend: BackendChoice::Only(BackendKind::Inventory),
            root: "/".into(),
            inventory: Some(gantry_testkit::inventory_fixture("t4-pcie-4.yaml")),
            nvml_lib: None,
        },
        config: PluginConfig::default(),
        policy: AllocatePolicy {
            strategies: parse_strategies("cdi-cri").unwrap(),
            pass_device_specs: false,
            cdi_kind: "nvidia.com/gpu".into(),
        },
        health_interval: Duration::from_millis(200),
        recovery_hold: Duration::from_secs(1),
        kubelet_poll: Duration::from_millis(50),
        metrics_addr: None,
        cdi: None,
        cluster: Some(ClusterOptions::new(server.client(), NODE)),
    })
    .await
    .unwrap();

    // It publishes the node's GPUs on the Node.
    eventually("the plugin's gantry.dev/gpus annotation", || {
        server.objects(NODES)[0]["metadata"]["annotations"][NODE_GPUS_ANNOTATION].is_string()
    })
    .await;

    // The extender learns the node from its watch: four T4s, 4000 milli-GPU.
    let ext = Arc::new(Extender::new(Config::default()).unwrap());
    let cache = Arc::new(Cache::new(ext.clone()));
    let ready = cache.readiness();
    let client = server.client();
    let watch = tokio::spawn({
        let cache = cache.clone();
        async move { cache.run(client).await }
    });
    eventually("the extender's cache", || {
        ready.is_ready()
            && ext
                .state()
                .node(NODE)
                .is_some_and(|n| n.lock().unwrap().gpus.is_some())
    })
    .await;

    let binder = KubeBinder::new(server.client());
    // A whole-GPU pod first: the extender records two GPUs, and the kubelet, asking the plugin
    // which of the four to prefer, is told exactly those (not the topology's choice).
    let whole = pending_whole_pod("w", 2);
    server.insert(PODS, whole.clone());
    let planned = schedule(&ext, &binder, &whole).await;
    assert_eq!(planned.gpus.len(), 2);
    let uuids: Vec<String> = inventory.gpus.iter().map(|g| g.uuid.to_string()).collect();
    let mut gpu_client = kubelet.plugin(GPU_SOCKET).await;
    let preferred = gpu_client
        .get_preferred_allocation(api::PreferredAllocationRequest {
            container_requests: vec![api::ContainerPreferredAllocationRequest {
                available_device_i_ds: uuids.clone(),
                must_include_device_i_ds: vec![],
                allocation_size: 2,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        preferred.container_responses[0].device_i_ds,
        planned.gpu_uuids()
    );
    // The kubelet hands out the other two GPUs anyway: the plugin corrects the record on the pod,
    // and the extender's watch moves the pod in its books.
    let handed: Vec<usize> = (0..4)
        .filter(|&g| !planned.gpu_uuids().contains(&uuids[g].as_str()))
        .collect();
    gpu_client
        .allocate(api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest {
                devices_ids: handed.iter().map(|&g| uuids[g].clone()).collect(),
            }],
        })
        .await
        .unwrap();
    let pod_w = server
        .objects(PODS)
        .into_iter()
        .find(|p| p["metadata"]["name"] == "w")
        .unwrap();
    let corrected = GpuAssignment::parse(
        "ml/w",
        pod_w["metadata"]["annotations"][POD_ASSIGNMENT_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let handed_indexes: Vec<(u8, u16)> = handed
        .iter()
        .map(|&g| (u8::try_from(g).unwrap(), 1000))
        .collect();
    assert_eq!(
        corrected
            .gpus
            .iter()
            .map(|g| (u8::try_from(g.index).unwrap(), g.milli))
            .collect::<Vec<_>>(),
        handed_indexes
    );
    eventually(
        "the extender's books to follow the corrected record",
        || {
            ext.state().node(NODE).is_some_and(|n| {
                n.lock()
                    .unwrap()
                    .allocation("uid-w")
                    .is_some_and(|a| a.gpus == handed_indexes)
            })
        },
    )
    .await;

    // Three shared pods, scheduled one after the other. a and b (600 each) cannot share a GPU;
    // whatever GPUs the policy chose are what the containers must get.
    let mut recorded = Vec::new();
    for (name, milli) in [("a", 600), ("b", 600), ("c", 300)] {
        let pod = pending_pod(name, milli);
        server.insert(PODS, pod.clone());
        let a = schedule(&ext, &binder, &pod).await;
        assert_eq!(a.gpus.len(), 1);
        recorded.push((name, milli, a.gpus[0].uuid.clone()));
    }
    // What the API holds is what the extender planned.
    for (name, _, uuid) in &recorded {
        let pod = server
            .objects(PODS)
            .into_iter()
            .find(|p| p["metadata"]["name"] == *name)
            .unwrap();
        assert_eq!(pod["spec"]["nodeName"], NODE);
        let text = pod["metadata"]["annotations"][POD_ASSIGNMENT_ANNOTATION]
            .as_str()
            .unwrap();
        assert_eq!(
            &GpuAssignment::parse(name, text).unwrap().gpus[0].uuid,
            uuid
        );
    }

    assert_ne!(recorded[0].2, recorded[1].2);
    // They share the GPUs the whole-GPU pod really left free.
    for (name, _, uuid) in &recorded {
        assert!(
            !handed.iter().any(|&g| uuids[g] == *uuid),
            "pod {name} on {uuid}, a GPU pod w holds wholly"
        );
    }

    // The kubelet admits the pods in creation order and books shares of whatever GPU it likes:
    // here always shares of a GPU other than the one recorded for the pod.
    let mut booked = [0u32; 4];
    for (name, milli, uuid) in &recorded {
        let g = (0..4)
            .find(|&g| inventory.gpus[g].uuid.to_string() != *uuid && booked[g] + milli <= 1000)
            .unwrap();
        let ids: Vec<String> = (booked[g]..booked[g] + milli)
            .map(|n| milli_device_id(&inventory.gpus[g].uuid, n))
            .collect();
        booked[g] += milli;
        let answer = allocate(&kubelet, ids).await.unwrap();
        assert_eq!(
            answer
                .cdi_devices
                .iter()
                .map(|d| d.name.clone())
                .collect::<Vec<_>>(),
            [format!("nvidia.com/gpu={uuid}")],
            "pod {name}"
        );
    }
    // Each pod is marked served, so a plugin restart does not hand its GPU out again.
    for pod in server.objects(PODS) {
        assert!(
            pod["metadata"]["annotations"][POD_ALLOCATED_ANNOTATION].is_string(),
            "{pod}"
        );
    }

    // No fourth pod was scheduled: an Allocate for it is refused with the reason, and the plugin
    // keeps serving.
    let ids: Vec<String> = (0..100)
        .map(|n| milli_device_id(&inventory.gpus[2].uuid, n))
        .collect();
    let refused = allocate(&kubelet, ids).await.unwrap_err();
    assert!(refused.message().contains(NODE), "{refused:?}");

    watch.abort();
    plugin.stop().await.unwrap();
}
