//! Device plugin benchmark: Allocate and GetPreferredAllocation latency over the real unix socket
//! (8- and 16-GPU nodes), re-registration time after a kubelet restart, the daemon's resident memory,
//! and the shared-GPU (`gantry.dev/gpu-milli`) Allocate with a fake API server answering the pod
//! list and the pod patch at the HTTP wire.
//!
//! `cargo build --release -p gantry-cli && cargo run --release -p gantry-device-plugin --example bench`
//! (`GANTRY_BIN` names the gantry binary for the memory figure; default `target/release/gantry`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
// Percentile ranks of a few thousand samples: the float round trip is exact enough.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gantry_device_plugin::allocate::{parse_strategies, AllocatePolicy};
use gantry_device_plugin::config::PluginConfig;
use gantry_device_plugin::resources::milli_device_id;
use gantry_device_plugin::{start, ClusterOptions, PluginOptions};
use gantry_discovery::{BackendChoice, BackendKind, DiscoveryConfig};
use gantry_gpu::{Link, PcieDistance, Topology};
use gantry_kubelet_proto::deviceplugin::v1beta1 as api;
use gantry_testkit::{load_inventory, FakeKubelet};

const CALLS: usize = 2000;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[rank]
}

/// Two 8-GPU NVSwitch islands on one node, joined across sockets.
fn sixteen_gpus(dir: &Path) -> PathBuf {
    let mut inventory = load_inventory("h100-nvswitch-8.yaml");
    let extra: Vec<_> = inventory
        .gpus
        .iter()
        .map(|g| {
            let mut g = g.clone();
            g.index += 8;
            g.minor += 8;
            g.uuid = format!("GPU-{:08x}-0000-4000-8000-000000000000", g.index)
                .parse()
                .unwrap();
            g.pci_bus_id = format!("0001:{:02x}:00.0", g.index).parse().unwrap();
            g
        })
        .collect();
    inventory.gpus.extend(extra);
    let mut pairs = Vec::new();
    for a in 0..16u32 {
        for b in a + 1..16 {
            let link = if a / 8 == b / 8 {
                Link::NvLink { lanes: 18 }
            } else {
                Link::Pcie(PcieDistance::Sys)
            };
            pairs.push((a, b, link));
        }
    }
    inventory.topology = Topology::from_pairs(pairs).unwrap();
    let path = dir.join("sixteen.yaml");
    std::fs::write(&path, inventory.validated().unwrap().to_yaml().unwrap()).unwrap();
    path
}

/// The plugin as both measurements run it: the inventory backend, CDI answers, no re-probing.
fn options(
    plugin_dir: &std::path::Path,
    inventory: PathBuf,
    cluster: Option<ClusterOptions>,
) -> PluginOptions {
    PluginOptions {
        plugin_dir: plugin_dir.to_owned(),
        discovery: DiscoveryConfig {
            backend: BackendChoice::Only(BackendKind::Inventory),
            root: "/".into(),
            inventory: Some(inventory),
            nvml_lib: None,
        },
        config: PluginConfig::default(),
        policy: AllocatePolicy {
            strategies: parse_strategies("cdi-cri,cdi-annotations").unwrap(),
            pass_device_specs: true,
            cdi_kind: "nvidia.com/gpu".into(),
        },
        health_interval: Duration::from_secs(3600),
        recovery_hold: Duration::from_secs(60),
        kubelet_poll: Duration::from_millis(100),
        metrics_addr: None,
        cdi: None,
        cluster,
    }
}

async fn measure(label: &str, inventory: PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut kubelet = FakeKubelet::start(dir.path()).await;
    let running = start(options(dir.path(), inventory, None)).await.unwrap();
    let endpoint = kubelet
        .next_registration(Duration::from_secs(10))
        .await
        .unwrap()
        .endpoint;
    let mut client = kubelet.plugin(&endpoint).await;
    let mut stream = client
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = stream
        .message()
        .await
        .unwrap()
        .unwrap()
        .devices
        .into_iter()
        .map(|d| d.id)
        .collect();

    let mut allocate = Vec::with_capacity(CALLS);
    let mut preferred = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let request = api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest {
                devices_ids: vec![ids[i % ids.len()].clone()],
            }],
        };
        let t = Instant::now();
        client.allocate(request).await.unwrap();
        allocate.push(t.elapsed());
        let request = api::PreferredAllocationRequest {
            container_requests: vec![api::ContainerPreferredAllocationRequest {
                available_device_i_ds: ids
                    .iter()
                    .filter(|id| **id != ids[i % ids.len()])
                    .cloned()
                    .collect(),
                must_include_device_i_ds: vec![],
                allocation_size: 4,
            }],
        };
        let t = Instant::now();
        client.get_preferred_allocation(request).await.unwrap();
        preferred.push(t.elapsed());
    }
    drop(stream);
    let mut reregister = Vec::new();
    for _ in 0..5 {
        kubelet.restart().await;
        let t = Instant::now();
        kubelet
            .next_registration(Duration::from_secs(10))
            .await
            .expect("re-registration");
        reregister.push(t.elapsed());
    }
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    println!(
        "| {label} | {} | {} | {} | {} | {:.0} ms | {:.0} ms |",
        us(percentile(&mut allocate, 0.5)),
        us(percentile(&mut allocate, 0.99)),
        us(percentile(&mut preferred, 0.5)),
        us(percentile(&mut preferred, 0.99)),
        percentile(&mut reregister, 0.5).as_secs_f64() * 1e3,
        percentile(&mut reregister, 1.0).as_secs_f64() * 1e3,
    );
    running.stop().await.unwrap();
}

/// Pods on the benchmark node besides the one waiting: running pods gantry-scheduler placed earlier.
const RUNNING_PODS: usize = 30;

fn bench_pod(n: usize, uuid: &str, milli: u32, running: bool) -> serde_json::Value {
    let assignment = serde_json::json!({"version": "v1", "node": "bench-node", "gpus": [{"index": 0, "uuid": uuid, "milli": milli}]});
    let mut annotations = serde_json::json!({"gantry.dev/gpu-assignment": assignment.to_string()});
    if running {
        annotations["gantry.dev/gpu-allocated"] = "2026-01-01T00:00:00Z".into();
        annotations["gantry.dev/gpu-allocated-containers"] = "main".into();
    }
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{n}"), "namespace": "bench", "uid": format!("uid-{n}"),
            "creationTimestamp": format!("2026-01-01T{:02}:{:02}:{:02}Z", n / 3600 % 24, n / 60 % 60, n % 60),
            "annotations": annotations},
        "spec": {"nodeName": "bench-node", "containers": [{"name": "main", "image": "cuda",
            "resources": {"limits": {"gantry.dev/gpu-milli": milli.to_string(), "cpu": "1", "memory": "4Gi"}}}]},
        "status": {"phase": if running { "Running" } else { "Pending" }},
    })
}

/// The shared Allocate: each call lists the node's pods (one waiting among [`RUNNING_PODS`]
/// running ones, as the fake API server answers) and patches the chosen pod.
async fn measure_milli(label: &str, inventory: PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut kubelet = FakeKubelet::start(dir.path()).await;
    let text = std::fs::read_to_string(&inventory).unwrap();
    let gpus = gantry_gpu::NodeInventory::from_yaml(&text, &inventory)
        .unwrap()
        .gpus;
    let uuids: Vec<String> = gpus.iter().map(|g| g.uuid.to_string()).collect();
    let (client, mut api) = gantry_testkit::kube_api::fake_api_server();
    // The API server: a window of running pods and one pending pod; a patched pod starts running
    // and a new one waits.
    let server_uuids = uuids.clone();
    let server = tokio::spawn(async move {
        let mut pods: std::collections::VecDeque<serde_json::Value> = (0..RUNNING_PODS)
            .map(|n| bench_pod(n, &server_uuids[n % server_uuids.len()], 250, true))
            .collect();
        let mut next = RUNNING_PODS;
        pods.push_back(bench_pod(
            next,
            &server_uuids[next % server_uuids.len()],
            250,
            false,
        ));
        loop {
            let call = api.next("a request of the benchmark").await;
            match (call.method.as_str(), call.path.as_str()) {
                ("GET", "/api/v1/pods") => {
                    let items = pods.iter().cloned().collect();
                    call.respond_list("Pod", "v1", items);
                }
                ("PATCH", path) if path.starts_with("/api/v1/namespaces/") => {
                    call.respond(
                        200,
                        &serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}}),
                    );
                    let waiting = pods.back_mut().unwrap();
                    waiting["status"]["phase"] = "Running".into();
                    pods.pop_front();
                    next += 1;
                    pods.push_back(bench_pod(
                        next,
                        &server_uuids[next % server_uuids.len()],
                        250,
                        false,
                    ));
                }
                _ => call.respond(
                    200,
                    &serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {}}),
                ),
            }
        }
    });
    let mut cluster = ClusterOptions::new(client, "bench-node");
    cluster.api_timeout = Duration::from_secs(10);
    let running = start(options(dir.path(), inventory, Some(cluster)))
        .await
        .unwrap();
    for _ in 0..2 {
        kubelet
            .next_registration(Duration::from_secs(10))
            .await
            .unwrap();
    }
    let mut client = kubelet.plugin("gantry-gantry.dev-gpu-milli.sock").await;
    let mut samples = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let gpu = &gpus[i % gpus.len()].uuid;
        let ids = (0..250).map(|n| milli_device_id(gpu, n)).collect();
        let request = api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest { devices_ids: ids }],
        };
        let t = Instant::now();
        let answer = client.allocate(request).await.unwrap().into_inner();
        samples.push(t.elapsed());
        let expected = format!("nvidia.com/gpu={}", uuids[(RUNNING_PODS + i) % uuids.len()]);
        assert_eq!(answer.container_responses[0].cdi_devices[0].name, expected);
    }
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    println!(
        "| {label} | {} | {} | {} |",
        us(percentile(&mut samples, 0.5)),
        us(percentile(&mut samples, 0.99)),
        RUNNING_PODS + 1,
    );
    // The fake API server fails on an idle wait: end it before the plugin's shutdown.
    server.abort();
    running.stop().await.unwrap();
}

fn resident_memory() -> Option<String> {
    let bin = std::env::var_os("GANTRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| gantry_testkit::workspace_root().join("target/release/gantry"));
    if !bin.exists() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(&bin)
        .args([
            "device-plugin",
            "--metrics-addr",
            "127.0.0.1:0",
            "--plugin-dir",
        ])
        .arg(dir.path())
        .arg("--inventory")
        .arg(gantry_testkit::inventory_fixture("h100-nvswitch-8.yaml"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_secs(2));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let _ = child.kill();
    let _ = child.wait();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .map(|l| l["VmRSS:".len()..].trim().to_owned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("{CALLS} calls each over the plugin's unix socket, one client, sequential; re-registration: 5 kubelet restarts");
    println!();
    println!("| node | Allocate p50 | Allocate p99 | GetPreferredAllocation p50 | GetPreferredAllocation p99 | re-register median | re-register max |");
    println!("|---|---|---|---|---|---|---|");
    measure(
        "8× H100 NVSwitch",
        gantry_testkit::inventory_fixture("h100-nvswitch-8.yaml"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    measure("16 GPUs, 2 NVSwitch islands", sixteen_gpus(dir.path())).await;
    println!();
    println!("gantry.dev/gpu-milli Allocate, 250 shares per call, {CALLS} calls: each lists the node's pods from a fake API server (in-process, HTTP wire, JSON) and patches the chosen one");
    println!();
    println!("| node | shared Allocate p50 | shared Allocate p99 | pods listed per call |");
    println!("|---|---|---|---|");
    measure_milli(
        "8× H100 NVSwitch",
        gantry_testkit::inventory_fixture("h100-nvswitch-8.yaml"),
    )
    .await;
    measure_milli("16 GPUs, 2 NVSwitch islands", sixteen_gpus(dir.path())).await;
    println!();
    match resident_memory() {
        Some(rss) => println!("resident memory of `gantry device-plugin` (8 GPUs, idle after start): {rss}"),
        None => println!("resident memory: build the binary first (cargo build --release -p gantry-cli) or set GANTRY_BIN"),
    }
}
