//! Test support for the plugin's Kubernetes side: a plugin started against a fake kubelet and a
//! scripted fake API server, and pod objects as gantry-scheduler leaves them after bind.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gantry_device_plugin::allocate::{parse_strategies, AllocatePolicy};
use gantry_device_plugin::config::PluginConfig;
use gantry_device_plugin::resources::milli_device_id;
use gantry_device_plugin::{start, ClusterOptions, PluginOptions, Running};
use gantry_discovery::{BackendChoice, BackendKind, DiscoveryConfig};
use gantry_gpu::NodeInventory;
use gantry_kubelet_proto::deviceplugin::v1beta1 as api;
use gantry_scheduler::schema::POD_ASSIGNMENT_ANNOTATION;
use gantry_testkit::kube_api::{fake_api_server, FakeApiServer};
use gantry_testkit::FakeKubelet;
use serde_json::{json, Value};
use tokio_stream::StreamExt;

pub const WAIT: Duration = Duration::from_secs(10);
pub const NODE: &str = "gpu-node-1";

/// Writes an inventory file atomically (the plugin re-reads it on every probe).
pub fn write_inventory(path: &Path, inventory: &NodeInventory) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, inventory.to_yaml().unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A started plugin with its peers; hold it for the whole test.
pub struct Plugin {
    pub kubelet: FakeKubelet,
    pub api: FakeApiServer,
    pub running: Option<Running>,
    /// The inventory file the plugin discovers from (rewrite it to change the node).
    pub inventory: PathBuf,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Plugin {
    pub async fn start(inventory: &NodeInventory, gpu_milli: bool) -> Self {
        let plugin_dir = tempfile::tempdir().unwrap();
        let inv_dir = tempfile::tempdir().unwrap();
        let path = inv_dir.path().join("node.yaml");
        write_inventory(&path, inventory);
        let kubelet = FakeKubelet::start(plugin_dir.path()).await;
        let (client, api) = fake_api_server();
        let mut cluster = ClusterOptions::new(client, NODE);
        cluster.gpu_milli = gpu_milli;
        cluster.retry = Duration::from_millis(50);
        cluster.retry_max = Duration::from_millis(200);
        cluster.api_timeout = Duration::from_secs(5);
        let running = start(PluginOptions {
            plugin_dir: plugin_dir.path().to_owned(),
            discovery: DiscoveryConfig {
                backend: BackendChoice::Only(BackendKind::Inventory),
                root: "/".into(),
                inventory: Some(path.clone()),
                nvml_lib: None,
            },
            config: PluginConfig::default(),
            policy: AllocatePolicy {
                strategies: parse_strategies("cdi-cri,cdi-annotations").unwrap(),
                pass_device_specs: true,
                cdi_kind: "nvidia.com/gpu".into(),
            },
            health_interval: Duration::from_millis(100),
            recovery_hold: Duration::from_millis(300),
            kubelet_poll: Duration::from_millis(50),
            metrics_addr: None,
            cdi: None,
            cluster: Some(cluster),
        })
        .await
        .unwrap();
        Self {
            kubelet,
            api,
            running: Some(running),
            inventory: path,
            _dirs: (plugin_dir, inv_dir),
        }
    }

    /// Answers the Node patch the plugin sends at start (or after a change).
    pub async fn answer_node_patch(&mut self) {
        let call = self.api.expect("PATCH", "/api/v1/nodes/gpu-node-1").await;
        let reply = node_reply(&call.body);
        call.respond(200, &reply);
    }

    /// The kubelet's client of the `gantry.dev/gpu-milli` socket.
    pub async fn milli_client(
        &self,
    ) -> api::device_plugin_client::DevicePluginClient<tonic::transport::Channel> {
        self.client("gantry-gantry.dev-gpu-milli.sock").await
    }

    /// The kubelet's client of the `nvidia.com/gpu` socket.
    pub async fn gpu_client(
        &self,
    ) -> api::device_plugin_client::DevicePluginClient<tonic::transport::Channel> {
        self.client("gantry-nvidia.com-gpu.sock").await
    }

    async fn client(
        &self,
        name: &str,
    ) -> api::device_plugin_client::DevicePluginClient<tonic::transport::Channel> {
        let socket = self.kubelet.dir().join(name);
        let deadline = Instant::now() + WAIT;
        while !socket.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kubelet.plugin(name).await
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
    }
}

/// What the API server answers a Node merge patch with: a Node carrying the patched metadata.
pub fn node_reply(patch: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": NODE,
        "annotations": patch["metadata"]["annotations"],
        "labels": patch["metadata"]["labels"].as_object().map(|l| l.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect::<serde_json::Map<_, _>>()),
    }})
}

/// A pending pod on [`NODE`] created at second `created`, one container `main` asking for `milli`
/// of `gantry.dev/gpu-milli`, bound by gantry-scheduler to the GPU `uuid`.
pub fn pod(name: &str, created: u32, uuid: &str, milli: u32) -> Value {
    let assignment = json!({"version": "v1", "node": NODE, "gpus": [{"index": 0, "uuid": uuid, "milli": milli}]});
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"),
            "creationTimestamp": format!("2026-01-01T00:00:{created:02}Z"),
            "annotations": {POD_ASSIGNMENT_ANNOTATION: assignment.to_string()}},
        "spec": {"nodeName": NODE, "schedulerName": "gantry-scheduler", "containers": [
            {"name": "main", "image": "cuda", "resources": {"limits": {"gantry.dev/gpu-milli": milli.to_string()}}}]},
        "status": {"phase": "Pending"},
    })
}

/// A pending pod on [`NODE`] created at second `created`, one container `main` asking for
/// `uuids.len()` of `nvidia.com/gpu`, bound by gantry-scheduler to the GPUs `(index, uuid)`.
pub fn whole_pod(name: &str, created: u32, gpus: &[(u32, String)]) -> Value {
    let recorded: Vec<Value> = gpus
        .iter()
        .map(|(index, uuid)| json!({"index": index, "uuid": uuid, "milli": 1000}))
        .collect();
    let assignment = json!({"version": "v1", "node": NODE, "gpus": recorded});
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"),
            "creationTimestamp": format!("2026-01-01T00:00:{created:02}Z"),
            "annotations": {POD_ASSIGNMENT_ANNOTATION: assignment.to_string()}},
        "spec": {"nodeName": NODE, "schedulerName": "gantry-scheduler", "containers": [
            {"name": "main", "image": "cuda", "resources": {"limits": {"nvidia.com/gpu": gpus.len().to_string()}}}]},
        "status": {"phase": "Pending"},
    })
}

/// `gantry.dev/gpu-milli` device IDs of GPU `gpu`, shares `range`.
pub fn milli_ids(
    inventory: &NodeInventory,
    gpu: usize,
    range: std::ops::Range<u32>,
) -> Vec<String> {
    range
        .map(|n| milli_device_id(&inventory.gpus[gpu].uuid, n))
        .collect()
}

/// The next ListAndWatch list, within [`WAIT`].
pub async fn next_list(
    stream: &mut tonic::Streaming<api::ListAndWatchResponse>,
) -> api::ListAndWatchResponse {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("ListAndWatch update in time")
        .expect("stream open")
        .expect("no stream error")
}
