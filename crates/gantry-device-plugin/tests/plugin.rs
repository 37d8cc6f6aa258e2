//! The device plugin end to end: a fake kubelet over real unix sockets and real gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gantry_device_plugin::allocate::{parse_strategies, AllocatePolicy};
use gantry_device_plugin::config::PluginConfig;
use gantry_device_plugin::{start, PluginOptions, Running};
use gantry_discovery::{BackendChoice, BackendKind, DiscoveryConfig};
use gantry_kubelet_proto::deviceplugin::v1beta1 as api;
use gantry_testkit::{fake_nvml_copy, inventory_fixture, load_inventory, FakeKubelet};
use tokio_stream::StreamExt;

const WAIT: Duration = Duration::from_secs(10);

fn options(plugin_dir: &Path, discovery: DiscoveryConfig, config: &str) -> PluginOptions {
    PluginOptions {
        plugin_dir: plugin_dir.to_owned(),
        discovery,
        config: PluginConfig::from_yaml(config, Path::new("config.yaml")).unwrap(),
        policy: AllocatePolicy {
            strategies: parse_strategies("cdi-cri,cdi-annotations").unwrap(),
            pass_device_specs: true,
            cdi_kind: "nvidia.com/gpu".into(),
        },
        health_interval: Duration::from_millis(100),
        recovery_hold: Duration::from_millis(600),
        kubelet_poll: Duration::from_millis(50),
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        cdi: None,
        cluster: None,
    }
}

fn inventory_discovery(path: PathBuf) -> DiscoveryConfig {
    DiscoveryConfig {
        backend: BackendChoice::Only(BackendKind::Inventory),
        root: "/".into(),
        inventory: Some(path),
        nvml_lib: None,
    }
}

/// NVML through the fake library at `lib`; no driver root (the MIG minor table is not needed).
fn nvml_discovery(lib: PathBuf) -> DiscoveryConfig {
    DiscoveryConfig {
        backend: BackendChoice::Only(BackendKind::Nvml),
        root: "/nonexistent".into(),
        inventory: None,
        nvml_lib: Some(lib),
    }
}

async fn started(
    kubelet_dir: &Path,
    discovery: DiscoveryConfig,
    config: &str,
) -> (FakeKubelet, Running) {
    let kubelet = FakeKubelet::start(kubelet_dir).await;
    let running = start(options(kubelet_dir, discovery, config))
        .await
        .unwrap();
    (kubelet, running)
}

/// Reads ListAndWatch until `done` holds for a list, or fails after `WAIT`.
async fn wait_for_list(
    stream: &mut tonic::Streaming<api::ListAndWatchResponse>,
    done: impl Fn(&api::ListAndWatchResponse) -> bool,
) -> api::ListAndWatchResponse {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, stream.next())
            .await
            .expect("ListAndWatch update in time");
        let list = next.expect("stream open").expect("no stream error");
        if done(&list) {
            return list;
        }
    }
}

fn health_of(list: &api::ListAndWatchResponse, id: &str) -> String {
    list.devices
        .iter()
        .find(|d| d.id == id)
        .map(|d| d.health.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_and_streams_devices_with_numa_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut kubelet, running) = started(
        dir.path(),
        inventory_discovery(inventory_fixture("t4-pcie-4.yaml")),
        "",
    )
    .await;
    let registration = kubelet.next_registration(WAIT).await.expect("registration");
    assert_eq!(registration.version, "v1beta1");
    assert_eq!(registration.resource_name, "nvidia.com/gpu");
    assert_eq!(registration.endpoint, "gantry-nvidia.com-gpu.sock");
    assert!(
        registration
            .options
            .unwrap()
            .get_preferred_allocation_available
    );

    let mut client = kubelet.plugin(&registration.endpoint).await;
    let options = client
        .get_device_plugin_options(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(options.get_preferred_allocation_available && !options.pre_start_required);
    let mut stream = client
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    let list = wait_for_list(&mut stream, |_| true).await;
    let fixture = load_inventory("t4-pcie-4.yaml");
    assert_eq!(list.devices.len(), 4);
    for (device, gpu) in list.devices.iter().zip(&fixture.gpus) {
        assert_eq!(device.id, gpu.uuid.as_str());
        assert_eq!(device.health, "Healthy");
        assert_eq!(
            device.topology.as_ref().unwrap().nodes[0].id,
            i64::from(gpu.numa_node.unwrap())
        );
    }
    let socket = dir.path().join(&registration.endpoint);
    running.stop().await.unwrap();
    assert!(!socket.exists(), "a stopped plugin leaves no socket behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_and_preferred_allocation_over_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (mut kubelet, running) = started(
        dir.path(),
        inventory_discovery(inventory_fixture("t4-pcie-4.yaml")),
        "",
    )
    .await;
    let endpoint = kubelet.next_registration(WAIT).await.unwrap().endpoint;
    let mut client = kubelet.plugin(&endpoint).await;
    let gpus = load_inventory("t4-pcie-4.yaml").gpus;
    let ids: Vec<String> = gpus.iter().map(|g| g.uuid.to_string()).collect();

    let preferred = client
        .get_preferred_allocation(api::PreferredAllocationRequest {
            container_requests: vec![
                api::ContainerPreferredAllocationRequest {
                    available_device_i_ds: ids.clone(),
                    must_include_device_i_ds: vec![],
                    allocation_size: 2,
                },
                api::ContainerPreferredAllocationRequest {
                    available_device_i_ds: ids.clone(),
                    must_include_device_i_ds: vec![ids[3].clone()],
                    allocation_size: 2,
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        preferred.container_responses[0].device_i_ds,
        [ids[0].clone(), ids[1].clone()],
        "the PIX pair"
    );
    assert_eq!(
        preferred.container_responses[1].device_i_ds,
        [ids[2].clone(), ids[3].clone()],
        "same NUMA node"
    );

    let response = client
        .allocate(api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest {
                devices_ids: vec![ids[1].clone()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let container = &response.container_responses[0];
    assert_eq!(
        container.cdi_devices[0].name,
        format!("nvidia.com/gpu={}", ids[1])
    );
    assert_eq!(
        container.annotations["cdi.k8s.io/gantry_nvidia.com_gpu"],
        format!("nvidia.com/gpu={}", ids[1])
    );
    assert!(container
        .devices
        .iter()
        .any(|d| d.host_path == "/dev/nvidia1" && d.permissions == "rw"));

    let refused = client
        .allocate(api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest {
                devices_ids: vec!["GPU-deadbeef".into()],
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("GPU-deadbeef"),
        "{}",
        refused.message()
    );
    let too_many = client
        .get_preferred_allocation(api::PreferredAllocationRequest {
            container_requests: vec![api::ContainerPreferredAllocationRequest {
                available_device_i_ds: ids[..1].to_vec(),
                must_include_device_i_ds: vec![],
                allocation_size: 3,
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    // The server keeps serving after refusing.
    assert!(client
        .allocate(api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest {
                devices_ids: vec![ids[0].clone()]
            }],
        })
        .await
        .is_ok());

    let metrics = http_get(running.metrics_addr.unwrap(), "/metrics").await;
    assert!(
        metrics.contains(
            "gantry_device_plugin_allocations_total{resource=\"nvidia.com/gpu\",result=\"ok\"} 2"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("gantry_device_plugin_allocations_total{resource=\"nvidia.com/gpu\",result=\"error\"} 1"), "{metrics}");
    assert!(
        metrics.contains(
            "gantry_device_plugin_devices{resource=\"nvidia.com/gpu\",health=\"healthy\"} 4"
        ),
        "{metrics}"
    );
    assert!(http_get(running.metrics_addr.unwrap(), "/healthz")
        .await
        .ends_with("ok\n"));
    running.stop().await.unwrap();
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xid_marks_a_gpu_unhealthy_and_a_good_probe_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let lib_dir = tempfile::tempdir().unwrap();
    let fixture = inventory_fixture("h100-nvswitch-8.yaml");
    let lib = fake_nvml_copy(
        lib_dir.path(),
        &format!("inventory: {}\nfaults:\n  xids:\n    - {{ gpu: 2, xid: 43, after_waits: 1 }}\n    - {{ gpu: 5, xid: 79, after_waits: 3 }}\n", fixture.display()),
    );
    let discovery = nvml_discovery(lib);
    let (mut kubelet, running) = started(dir.path(), discovery, "").await;
    let endpoint = kubelet.next_registration(WAIT).await.unwrap().endpoint;
    let mut stream = kubelet
        .plugin(&endpoint)
        .await
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    let gpu5 = load_inventory("h100-nvswitch-8.yaml").gpus[5]
        .uuid
        .to_string();
    let gpu2 = load_inventory("h100-nvswitch-8.yaml").gpus[2]
        .uuid
        .to_string();
    let sick = wait_for_list(&mut stream, |l| health_of(l, &gpu5) == "Unhealthy").await;
    assert_eq!(
        health_of(&sick, &gpu2),
        "Healthy",
        "XID 43 is an application error"
    );
    wait_for_list(&mut stream, |l| health_of(l, &gpu5) == "Healthy").await;
    let metrics = running.metrics.render();
    assert!(
        metrics.contains("gantry_device_plugin_xids_total{xid=\"79\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gantry_device_plugin_xids_total{xid=\"43\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gantry_device_plugin_health_transitions_total{to=\"healthy\"} 1"),
        "{metrics}"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_gpu_turns_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let lib_dir = tempfile::tempdir().unwrap();
    let fixture = inventory_fixture("t4-pcie-4.yaml");
    // Initial discovery takes about 40 calls; the GPU falls off the bus during the re-probes after it.
    let lib = fake_nvml_copy(
        lib_dir.path(),
        &format!(
            "inventory: {}\nfaults:\n  lost:\n    - {{ gpu: 3, after_calls: 120 }}\n",
            fixture.display()
        ),
    );
    let discovery = nvml_discovery(lib);
    let (mut kubelet, running) = started(dir.path(), discovery, "").await;
    let endpoint = kubelet.next_registration(WAIT).await.unwrap().endpoint;
    let mut stream = kubelet
        .plugin(&endpoint)
        .await
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    let gpu3 = load_inventory("t4-pcie-4.yaml").gpus[3].uuid.to_string();
    let first = wait_for_list(&mut stream, |_| true).await;
    assert_eq!(first.devices.len(), 4);
    let lost = wait_for_list(&mut stream, |l| health_of(l, &gpu3) == "Unhealthy").await;
    assert_eq!(
        lost.devices.len(),
        4,
        "a lost GPU stays advertised, unhealthy"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_restart_re_registers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut kubelet, running) = started(
        dir.path(),
        inventory_discovery(inventory_fixture("t4-pcie-4.yaml")),
        "",
    )
    .await;
    let first = kubelet.next_registration(WAIT).await.unwrap();
    kubelet.restart().await;
    let second = kubelet
        .next_registration(WAIT)
        .await
        .expect("a second Register after the kubelet restarted");
    assert_eq!(second.resource_name, first.resource_name);
    let mut client = kubelet.plugin(&second.endpoint).await;
    let mut stream = client
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wait_for_list(&mut stream, |_| true).await.devices.len(), 4);
    // The kubelet sees the request before the plugin sees the reply: wait for the count to catch up.
    let deadline = Instant::now() + WAIT;
    while running.metrics.registrations() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(running.metrics.registrations(), 2);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mig_reconfiguration_re_advertises_and_withdraws() {
    let dir = tempfile::tempdir().unwrap();
    let inv_dir = tempfile::tempdir().unwrap();
    let inventory = inv_dir.path().join("node.yaml");
    std::fs::copy(inventory_fixture("a100-mig-4.yaml"), &inventory).unwrap();
    let (mut kubelet, running) = started(
        dir.path(),
        inventory_discovery(inventory.clone()),
        "flags:\n  migStrategy: mixed\n",
    )
    .await;
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(kubelet.next_registration(WAIT).await.unwrap().resource_name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "nvidia.com/gpu",
            "nvidia.com/mig-1g.10gb",
            "nvidia.com/mig-2g.20gb",
            "nvidia.com/mig-3g.40gb"
        ]
    );
    assert!(dir
        .path()
        .join("gantry-nvidia.com-mig-3g.40gb.sock")
        .exists());

    // GPU 1 leaves MIG mode: its three MIG devices go, it becomes a whole GPU.
    let mut node = load_inventory("a100-mig-4.yaml");
    node.gpus[1].mig_devices.clear();
    node.gpus[1].mig_mode = Some(gantry_gpu::MigMode::Disabled);
    let tmp = inv_dir.path().join("node.yaml.tmp");
    std::fs::write(&tmp, node.to_yaml().unwrap()).unwrap();
    std::fs::rename(&tmp, &inventory).unwrap();

    let mut again = Vec::new();
    while again.len() < 2 {
        again.push(
            kubelet
                .next_registration(WAIT)
                .await
                .expect("re-registration")
                .resource_name,
        );
    }
    again.sort();
    assert_eq!(again, ["nvidia.com/gpu", "nvidia.com/mig-1g.10gb"]);
    assert!(
        !dir.path()
            .join("gantry-nvidia.com-mig-3g.40gb.sock")
            .exists(),
        "withdrawn resources leave no socket"
    );
    let mut stream = kubelet
        .plugin("gantry-nvidia.com-gpu.sock")
        .await
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wait_for_list(&mut stream, |_| true).await.devices.len(), 3);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_sliced_replicas_are_advertised_and_spread() {
    let dir = tempfile::tempdir().unwrap();
    let config = "sharing:\n  timeSlicing:\n    renameByDefault: true\n    resources:\n    - {name: nvidia.com/gpu, replicas: 2}\n";
    let (mut kubelet, running) = started(
        dir.path(),
        inventory_discovery(inventory_fixture("t4-pcie-4.yaml")),
        config,
    )
    .await;
    let registration = kubelet.next_registration(WAIT).await.unwrap();
    assert_eq!(registration.resource_name, "nvidia.com/gpu.shared");
    let mut client = kubelet.plugin(&registration.endpoint).await;
    let mut stream = client
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    let list = wait_for_list(&mut stream, |_| true).await;
    assert_eq!(list.devices.len(), 8);
    let ids: Vec<String> = list.devices.iter().map(|d| d.id.clone()).collect();
    let preferred = client
        .get_preferred_allocation(api::PreferredAllocationRequest {
            container_requests: vec![api::ContainerPreferredAllocationRequest {
                available_device_i_ds: ids.clone(),
                must_include_device_i_ds: vec![],
                allocation_size: 2,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let chosen = &preferred.container_responses[0].device_i_ds;
    let gpus: std::collections::BTreeSet<&str> = chosen
        .iter()
        .map(|id| id.split("::").next().unwrap())
        .collect();
    assert_eq!(gpus.len(), 2, "spread over two GPUs: {chosen:?}");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_plugin_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-there");
    let err = start(options(
        &missing,
        inventory_discovery(inventory_fixture("t4-pcie-4.yaml")),
        "",
    ))
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("not-there"), "{text}");
    assert!(text.contains("plugin directory"), "{text}");
}
