//! The device plugin's Kubernetes side end to end: a fake kubelet over real unix sockets and real
//! gRPC, and a scripted fake API server at the HTTP wire that every request is asserted on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use gantry_device_plugin::handshake::{
    POD_ALLOCATED_ANNOTATION, POD_ALLOCATED_CONTAINERS_ANNOTATION,
};
use gantry_gpu::Health;
use gantry_kubelet_proto::deviceplugin::v1beta1 as api;
use gantry_scheduler::schema::{
    NodeGpus, LABEL_COUNT, LABEL_PRODUCT, NODE_GPUS_ANNOTATION, POD_ASSIGNMENT_ANNOTATION,
};
use gantry_scheduler::GpuAssignment;
use gantry_testkit::load_inventory;
use serde_json::json;
use support::{milli_ids, node_reply, pod, whole_pod, write_inventory, Plugin, NODE, WAIT};

const NODE_PATH: &str = "/api/v1/nodes/gpu-node-1";

/// The `gantry.dev/gpus` annotation of a Node patch, parsed.
fn published(body: &serde_json::Value) -> NodeGpus {
    NodeGpus::parse(
        NODE,
        body["metadata"]["annotations"][NODE_GPUS_ANNOTATION]
            .as_str()
            .expect("annotation"),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_the_nodes_gpus_and_republishes_on_health_changes_only() {
    let mut inventory = load_inventory("t4-pcie-4.yaml");
    let mut plugin = Plugin::start(&inventory, true).await;

    let call = plugin.api.expect("PATCH", NODE_PATH).await;
    assert_eq!(call.content_type, "application/merge-patch+json");
    let expected = NodeGpus::from_inventory(&inventory);
    assert_eq!(published(&call.body), expected);
    assert!(expected.gpus.iter().all(|g| g.milli == 1000));
    let labels = &call.body["metadata"]["labels"];
    for (key, value) in expected.labels() {
        assert_eq!(labels[&key], value.as_str(), "{key}");
    }
    assert_eq!(labels[LABEL_COUNT], "4");
    assert_eq!(labels[LABEL_PRODUCT], "Tesla-T4");
    let reply = node_reply(&call.body);
    call.respond(200, &reply);

    // Re-probes every 100 ms find nothing new: no patch.
    plugin.api.expect_no_call(Duration::from_millis(500)).await;

    // GPU 1 turns unhealthy: re-published with milli 0 for it.
    inventory.gpus[1].health = Health::Unhealthy {
        reason: "XID 79".into(),
    };
    write_inventory(&plugin.inventory, &inventory);
    let call = plugin.api.expect("PATCH", NODE_PATH).await;
    let sick = published(&call.body);
    assert_eq!(sick, NodeGpus::from_inventory(&inventory));
    let milli: Vec<u16> = sick.gpus.iter().map(|g| g.milli).collect();
    assert_eq!(milli, [1000, 0, 1000, 1000]);
    // The API server fails: the same patch comes again after the backoff, the plugin keeps going.
    call.respond_status(500, "InternalError");
    let again = plugin.api.expect("PATCH", NODE_PATH).await;
    assert_eq!(published(&again.body), sick);
    let reply = node_reply(&again.body);
    again.respond(200, &reply);
    plugin.api.expect_no_call(Duration::from_millis(400)).await;

    // Healthy again: back to 1000.
    inventory.gpus[1].health = Health::Healthy;
    write_inventory(&plugin.inventory, &inventory);
    let call = plugin.api.expect("PATCH", NODE_PATH).await;
    assert!(published(&call.body).gpus.iter().all(|g| g.milli == 1000));
    let reply = node_reply(&call.body);
    call.respond(200, &reply);
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_milli_is_advertised_a_thousand_per_gpu_with_its_health() {
    let inventory = load_inventory("t4-pcie-4.yaml");
    let mut plugin = Plugin::start(&inventory, true).await;
    plugin.answer_node_patch().await;
    let mut names = Vec::new();
    for _ in 0..2 {
        names.push(
            plugin
                .kubelet
                .next_registration(WAIT)
                .await
                .unwrap()
                .resource_name,
        );
    }
    names.sort();
    assert_eq!(names, ["gantry.dev/gpu-milli", "nvidia.com/gpu"]);
    let mut stream = plugin
        .kubelet
        .plugin("gantry-gantry.dev-gpu-milli.sock")
        .await
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    let list = support::next_list(&mut stream).await;
    assert_eq!(list.devices.len(), 4000);
    assert!(list.devices.iter().all(|d| d.health == "Healthy"));
    assert_eq!(
        list.devices[2999].id,
        format!("{}::milli-999", inventory.gpus[2].uuid)
    );
    assert!(list.devices.iter().all(|d| d.topology.is_none()));
    // Which shares the kubelet books does not matter: the must-include ones, then the first free.
    let ids: Vec<String> = list.devices.iter().map(|d| d.id.clone()).collect();
    let preferred = plugin
        .kubelet
        .plugin("gantry-gantry.dev-gpu-milli.sock")
        .await
        .get_preferred_allocation(api::PreferredAllocationRequest {
            container_requests: vec![api::ContainerPreferredAllocationRequest {
                available_device_i_ds: ids.clone(),
                must_include_device_i_ds: vec![ids[3999].clone()],
                allocation_size: 250,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let chosen = &preferred.container_responses[0].device_i_ds;
    assert_eq!(chosen.len(), 250);
    assert_eq!(chosen[0], ids[3999]);
    assert_eq!(chosen[1..], ids[..249]);

    // The GPU turns unhealthy: its thousand shares follow it.
    let mut sick = inventory.clone();
    sick.gpus[3].health = Health::Unhealthy {
        reason: "XID 79".into(),
    };
    write_inventory(&plugin.inventory, &sick);
    let list = support::next_list(&mut stream).await;
    let unhealthy: Vec<&str> = list
        .devices
        .iter()
        .filter(|d| d.health == "Unhealthy")
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(unhealthy.len(), 1000);
    assert!(unhealthy
        .iter()
        .all(|id| id.starts_with(inventory.gpus[3].uuid.as_str())));
    plugin.answer_node_patch().await;
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_milli_can_be_turned_off() {
    let inventory = load_inventory("t4-pcie-4.yaml");
    let mut plugin = Plugin::start(&inventory, false).await;
    plugin.answer_node_patch().await;
    let first = plugin.kubelet.next_registration(WAIT).await.unwrap();
    assert_eq!(first.resource_name, "nvidia.com/gpu");
    assert!(plugin
        .kubelet
        .next_registration(Duration::from_millis(300))
        .await
        .is_none());
    assert!(!plugin
        .kubelet
        .dir()
        .join("gantry-gantry.dev-gpu-milli.sock")
        .exists());
    plugin.stop().await;
}

/// One shared Allocate over the socket, with the fake API server answering the pod list with
/// `pods` and the pod patch; returns the answer and the patched pod's path and body.
async fn allocate_shared(
    plugin: &mut Plugin,
    ids: Vec<String>,
    pods: Vec<serde_json::Value>,
) -> (api::ContainerAllocateResponse, String, serde_json::Value) {
    let client = plugin.milli_client().await;
    let call = spawn_allocate(client, ids);
    let list = plugin.api.expect("GET", "/api/v1/pods").await;
    assert!(
        list.query
            .contains("fieldSelector=spec.nodeName%3Dgpu-node-1"),
        "{}",
        list.query
    );
    list.respond_list("Pod", "v1", pods);
    let patch = plugin.api.next("PATCH of the allocated pod").await;
    assert_eq!(patch.method, "PATCH");
    assert_eq!(patch.content_type, "application/merge-patch+json");
    let (path, body) = (patch.path.clone(), patch.body.clone());
    patch.respond(
        200,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}),
    );
    let response = call.await.unwrap().expect("allocate succeeds").into_inner();
    (response.container_responses[0].clone(), path, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_allocate_hands_out_the_recorded_gpu() {
    let inventory = load_inventory("t4-pcie-4.yaml");
    let uuid = |i: usize| inventory.gpus[i].uuid.to_string();
    let mut plugin = Plugin::start(&inventory, true).await;
    plugin.answer_node_patch().await;

    let older = pod("older", 10, &uuid(2), 250);
    let newer = pod("newer", 20, &uuid(3), 250);
    let other = pod("half", 5, &uuid(1), 500);
    let pods = vec![newer.clone(), older.clone(), other.clone()];

    // 250 IDs from GPU 0: the container gets GPU 2, recorded on the oldest 250 pod.
    let (answer, path, body) =
        allocate_shared(&mut plugin, milli_ids(&inventory, 0, 0..250), pods.clone()).await;
    assert_eq!(answer.cdi_devices.len(), 1);
    assert_eq!(
        answer.cdi_devices[0].name,
        format!("nvidia.com/gpu={}", uuid(2))
    );
    assert_eq!(
        answer.annotations["cdi.k8s.io/gantry_gantry.dev_gpu-milli"],
        format!("nvidia.com/gpu={}", uuid(2))
    );
    assert!(answer.devices.iter().any(|d| d.host_path == "/dev/nvidia2"));
    assert!(!answer.devices.iter().any(|d| d.host_path == "/dev/nvidia0"));
    assert_eq!(path, "/api/v1/namespaces/ml/pods/older");
    let annotations = &body["metadata"]["annotations"];
    assert_eq!(annotations[POD_ALLOCATED_CONTAINERS_ANNOTATION], "main");
    let at = annotations[POD_ALLOCATED_ANNOTATION].as_str().unwrap();
    assert!(
        at.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "RFC 3339: {at}"
    );

    // The same size again, the list not showing the record yet: the plugin remembers, the next pod
    // gets its own GPU.
    let (answer, path, _) =
        allocate_shared(&mut plugin, milli_ids(&inventory, 1, 0..250), pods.clone()).await;
    assert_eq!(
        answer.cdi_devices[0].name,
        format!("nvidia.com/gpu={}", uuid(3))
    );
    assert_eq!(path, "/api/v1/namespaces/ml/pods/newer");

    // No third 250 pod: a clear error, no patch, and the plugin keeps serving.
    let client = plugin.milli_client().await;
    let ids = milli_ids(&inventory, 0, 250..500);
    let call = spawn_allocate(client, ids);
    plugin
        .api
        .expect("GET", "/api/v1/pods")
        .await
        .respond_list("Pod", "v1", pods.clone());
    let refused = call.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    for part in ["gpu-node-1", "250", "gantry-scheduler"] {
        assert!(refused.message().contains(part), "{}", refused.message());
    }
    plugin.api.expect_no_call(Duration::from_millis(200)).await;

    // IDs that are not shares are refused before the API is asked.
    let mut client = plugin.milli_client().await;
    let refused = client
        .allocate(api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest {
                devices_ids: vec![uuid(0)],
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    plugin.api.expect_no_call(Duration::from_millis(200)).await;

    // The 500 pod is still served.
    let (answer, path, _) =
        allocate_shared(&mut plugin, milli_ids(&inventory, 3, 0..500), pods).await;
    assert_eq!(
        answer.cdi_devices[0].name,
        format!("nvidia.com/gpu={}", uuid(1))
    );
    assert_eq!(path, "/api/v1/namespaces/ml/pods/half");
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_allocate_survives_an_unreachable_api_server() {
    let inventory = load_inventory("t4-pcie-4.yaml");
    let mut plugin = Plugin::start(&inventory, true).await;
    plugin.answer_node_patch().await;
    let client = plugin.milli_client().await;
    let ids = milli_ids(&inventory, 0, 0..100);
    let call = spawn_allocate(client, ids);
    plugin
        .api
        .expect("GET", "/api/v1/pods")
        .await
        .respond_status(503, "ServiceUnavailable");
    let refused = call.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused
            .message()
            .contains("listing the pods on node gpu-node-1"),
        "{}",
        refused.message()
    );
    // A pod recorded on the pod already (a restarted plugin) is not handed out again.
    let served = {
        let mut p = pod("served", 1, &inventory.gpus[0].uuid.to_string(), 100);
        p["metadata"]["annotations"][POD_ALLOCATED_ANNOTATION] = "2026-01-01T00:00:00Z".into();
        p["metadata"]["annotations"][POD_ALLOCATED_CONTAINERS_ANNOTATION] = "main".into();
        p
    };
    let waiting = pod("waiting", 2, &inventory.gpus[1].uuid.to_string(), 100);
    let (answer, path, _) = allocate_shared(
        &mut plugin,
        milli_ids(&inventory, 0, 0..100),
        vec![served, waiting],
    )
    .await;
    assert_eq!(path, "/api/v1/namespaces/ml/pods/waiting");
    assert_eq!(
        answer.cdi_devices[0].name,
        format!("nvidia.com/gpu={}", inventory.gpus[1].uuid)
    );
    plugin.stop().await;
}

/// A GetPreferredAllocation of `size` whole GPUs, all four of the node available, with the fake API
/// server answering the pod list with `pods` (or failing with 503 for `None`).
async fn prefer_whole(
    plugin: &mut Plugin,
    uuids: &[String],
    must: &[String],
    pods: Option<Vec<serde_json::Value>>,
) -> Vec<String> {
    let mut client = plugin.gpu_client().await;
    let (available, must) = (uuids.to_vec(), must.to_vec());
    let call = tokio::spawn(async move {
        client
            .get_preferred_allocation(api::PreferredAllocationRequest {
                container_requests: vec![api::ContainerPreferredAllocationRequest {
                    available_device_i_ds: available,
                    must_include_device_i_ds: must,
                    allocation_size: 2,
                }],
            })
            .await
    });
    let list = plugin.api.expect("GET", "/api/v1/pods").await;
    assert!(
        list.query
            .contains("fieldSelector=spec.nodeName%3Dgpu-node-1"),
        "{}",
        list.query
    );
    match pods {
        Some(pods) => list.respond_list("Pod", "v1", pods),
        None => list.respond_status(503, "ServiceUnavailable"),
    }
    let answer = call
        .await
        .unwrap()
        .expect("GetPreferredAllocation never fails because of the API")
        .into_inner();
    answer.container_responses[0].device_i_ds.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_gpu_preference_follows_the_record_else_topology() {
    // T4 x4: GPUs 0-1 share a PCIe switch (PIX), 2-3 a NUMA node, the rest is SYS. Topology
    // prefers 0,1 for two GPUs, and 2,3 when 3 must be included.
    let inventory = load_inventory("t4-pcie-4.yaml");
    let uuids: Vec<String> = inventory.gpus.iter().map(|g| g.uuid.to_string()).collect();
    let gpu = |i: usize| (u32::try_from(i).unwrap(), uuids[i].clone());
    let mut plugin = Plugin::start(&inventory, false).await;
    plugin.answer_node_patch().await;

    let old = whole_pod("old", 10, &[gpu(1), gpu(2)]);
    let young = whole_pod("young", 20, &[gpu(0), gpu(3)]);
    let single = whole_pod("single", 5, &[gpu(3)]);

    // The oldest pod waiting for two GPUs: its recorded 1,2, not topology's 0,1.
    let chosen = prefer_whole(
        &mut plugin,
        &uuids,
        &[],
        Some(vec![young.clone(), old.clone(), single.clone()]),
    )
    .await;
    assert_eq!(chosen, [uuids[1].clone(), uuids[2].clone()]);

    // GPU 3 must be included: the young pod's record holds it.
    let chosen = prefer_whole(
        &mut plugin,
        &uuids,
        &[uuids[3].clone()],
        Some(vec![young, old.clone(), single.clone()]),
    )
    .await;
    assert_eq!(chosen, [uuids[0].clone(), uuids[3].clone()]);

    // No record holds GPU 3: topology's 2,3.
    let chosen = prefer_whole(
        &mut plugin,
        &uuids,
        &[uuids[3].clone()],
        Some(vec![old.clone(), single]),
    )
    .await;
    assert_eq!(chosen, [uuids[2].clone(), uuids[3].clone()]);

    // The only two-GPU pod was allocated already: topology's 0,1.
    let mut allocated = old;
    allocated["metadata"]["annotations"][POD_ALLOCATED_ANNOTATION] = "2026-01-01T00:01:00Z".into();
    let chosen = prefer_whole(&mut plugin, &uuids, &[], Some(vec![allocated])).await;
    assert_eq!(chosen, [uuids[0].clone(), uuids[1].clone()]);

    // The API server fails: topology, and no error for the kubelet.
    let chosen = prefer_whole(&mut plugin, &uuids, &[], None).await;
    assert_eq!(chosen, [uuids[0].clone(), uuids[1].clone()]);
    plugin.stop().await;
}

/// An Allocate of `ids` (one container) on `client`'s socket, in flight while the test answers
/// the API calls.
fn spawn_allocate(
    mut client: api::device_plugin_client::DevicePluginClient<tonic::transport::Channel>,
    ids: Vec<String>,
) -> tokio::task::JoinHandle<Result<tonic::Response<api::AllocateResponse>, tonic::Status>> {
    tokio::spawn(async move {
        client
            .allocate(api::AllocateRequest {
                container_requests: vec![api::ContainerAllocateRequest { devices_ids: ids }],
            })
            .await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_gpu_allocate_corrects_the_record_and_marks_the_pod() {
    let inventory = load_inventory("t4-pcie-4.yaml");
    let uuids: Vec<String> = inventory.gpus.iter().map(|g| g.uuid.to_string()).collect();
    let gpu = |i: usize| (u32::try_from(i).unwrap(), uuids[i].clone());
    let mut plugin = Plugin::start(&inventory, true).await;
    plugin.answer_node_patch().await;

    // The scheduler recorded 0,1; the kubelet hands out 3,2. A shared pod runs on GPU 2.
    let waiting = whole_pod("x", 10, &[gpu(0), gpu(1)]);
    let mut share = pod("share", 5, &uuids[2], 250);
    share["status"]["phase"] = "Running".into();
    let pods = vec![share, waiting];
    let ids = vec![uuids[3].clone(), uuids[2].clone()];
    let call = spawn_allocate(plugin.gpu_client().await, ids);
    plugin
        .api
        .expect("GET", "/api/v1/pods")
        .await
        .respond_list("Pod", "v1", pods);
    let patch = plugin
        .api
        .expect("PATCH", "/api/v1/namespaces/ml/pods/x")
        .await;
    assert_eq!(patch.content_type, "application/merge-patch+json");
    let annotations = patch.body["metadata"]["annotations"].clone();
    patch.respond(
        200,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}),
    );
    let answer = call.await.unwrap().expect("allocate succeeds").into_inner();
    let names: Vec<&str> = answer.container_responses[0]
        .cdi_devices
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            format!("nvidia.com/gpu={}", uuids[3]),
            format!("nvidia.com/gpu={}", uuids[2])
        ]
    );
    // The record now names the GPUs handed out, by index, whole.
    let corrected = GpuAssignment::parse(
        "ml/x",
        annotations[POD_ASSIGNMENT_ANNOTATION].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(corrected.node, NODE);
    let recorded: Vec<(u32, &str, u16)> = corrected
        .gpus
        .iter()
        .map(|g| (g.index, g.uuid.as_str(), g.milli))
        .collect();
    assert_eq!(
        recorded,
        [(2, uuids[2].as_str(), 1000), (3, uuids[3].as_str(), 1000)]
    );
    assert_eq!(annotations[POD_ALLOCATED_CONTAINERS_ANNOTATION], "main");
    let at = annotations[POD_ALLOCATED_ANNOTATION].as_str().unwrap();
    assert!(
        at.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "RFC 3339: {at}"
    );

    // Handed out as recorded: marked allocated, the record left alone.
    let waiting = whole_pod("y", 20, &[gpu(0), gpu(1)]);
    let ids = vec![uuids[0].clone(), uuids[1].clone()];
    let call = spawn_allocate(plugin.gpu_client().await, ids);
    plugin
        .api
        .expect("GET", "/api/v1/pods")
        .await
        .respond_list("Pod", "v1", vec![waiting]);
    let patch = plugin
        .api
        .expect("PATCH", "/api/v1/namespaces/ml/pods/y")
        .await;
    let annotations = patch.body["metadata"]["annotations"].clone();
    patch.respond(
        200,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "y"}}),
    );
    call.await.unwrap().expect("allocate succeeds");
    assert!(
        annotations.get(POD_ASSIGNMENT_ANNOTATION).is_none(),
        "{annotations}"
    );
    assert_eq!(annotations[POD_ALLOCATED_CONTAINERS_ANNOTATION], "main");
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_gpu_allocate_survives_an_unreachable_api_server() {
    let inventory = load_inventory("t4-pcie-4.yaml");
    let uuids: Vec<String> = inventory.gpus.iter().map(|g| g.uuid.to_string()).collect();
    let gpu = |i: usize| (u32::try_from(i).unwrap(), uuids[i].clone());
    let mut plugin = Plugin::start(&inventory, false).await;
    plugin.answer_node_patch().await;

    // The pod list fails: the GPUs are handed out, nothing is patched.
    let ids = vec![uuids[1].clone()];
    let call = spawn_allocate(plugin.gpu_client().await, ids);
    plugin
        .api
        .expect("GET", "/api/v1/pods")
        .await
        .respond_status(503, "ServiceUnavailable");
    let answer = call.await.unwrap().expect("allocate succeeds").into_inner();
    assert_eq!(
        answer.container_responses[0].cdi_devices[0].name,
        format!("nvidia.com/gpu={}", uuids[1])
    );
    plugin.api.expect_no_call(Duration::from_millis(200)).await;

    // The patch fails: still handed out.
    let ids = vec![uuids[2].clone()];
    let call = spawn_allocate(plugin.gpu_client().await, ids);
    plugin.api.expect("GET", "/api/v1/pods").await.respond_list(
        "Pod",
        "v1",
        vec![whole_pod("x", 10, &[gpu(0)])],
    );
    plugin
        .api
        .expect("PATCH", "/api/v1/namespaces/ml/pods/x")
        .await
        .respond_status(503, "ServiceUnavailable");
    let answer = call.await.unwrap().expect("allocate succeeds").into_inner();
    assert_eq!(
        answer.container_responses[0].cdi_devices[0].name,
        format!("nvidia.com/gpu={}", uuids[2])
    );
    plugin.stop().await;
}
