//! `gantry device-plugin` as a process: registers with a fake kubelet, stops cleanly on SIGTERM.
// Integration tests: a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gantry_testkit::{
    inventory_fixture, load_inventory, DriverLibraries, DriverRootBuilder, FakeKubelet,
};

#[test]
fn help_documents_every_flag_with_its_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["device-plugin", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for (flag, env) in [
        ("--plugin-dir", "GANTRY_PLUGIN_DIR"),
        ("--config", "GANTRY_DEVICE_PLUGIN_CONFIG"),
        ("--mig-strategy", "GANTRY_MIG_STRATEGY"),
        ("--time-slicing-replicas", "GANTRY_TIME_SLICING_REPLICAS"),
        ("--device-list-strategy", "GANTRY_DEVICE_LIST_STRATEGY"),
        ("--pass-device-specs", "GANTRY_PASS_DEVICE_SPECS"),
        ("--health-interval", "GANTRY_HEALTH_INTERVAL"),
        ("--metrics-addr", "GANTRY_METRICS_ADDR"),
        ("--backend", "GANTRY_BACKEND"),
        ("--nvml-lib", "GANTRY_NVML_LIB"),
        ("--node-name", "NODE_NAME"),
        ("--no-gpu-milli", "GANTRY_NO_GPU_MILLI"),
    ] {
        assert!(
            text.contains(flag) && text.contains(env),
            "{flag} / {env} missing from --help"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_then_stops_on_sigterm_leaving_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    let cdi = tempfile::tempdir().unwrap();
    let root = DriverRootBuilder::new(load_inventory("h100-nvswitch-8.yaml")).build();
    DriverLibraries::default().install(root.path());
    let mut kubelet = FakeKubelet::start(dir.path()).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "device-plugin",
            "--metrics-addr",
            "off",
            "--hook-path",
            "/usr/bin/gantry-runtime",
            "--plugin-dir",
        ])
        .arg(dir.path())
        .arg("--cdi-spec-dir")
        .arg(cdi.path())
        .arg("--root")
        .arg(root.path())
        .arg("--inventory")
        .arg(inventory_fixture("h100-nvswitch-8.yaml"))
        // Local development: no node name, so no API server is needed.
        .env_remove("NODE_NAME")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let registration = kubelet.next_registration(Duration::from_secs(20)).await;
    let socket = dir.path().join("gantry-nvidia.com-gpu.sock");
    let registered = registration.is_some() && socket.exists();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(registered, "the plugin did not register");
    assert_eq!(registration.unwrap().resource_name, "nvidia.com/gpu");
    assert!(status.expect("exits after SIGTERM").success());
    assert!(!socket.exists(), "socket left behind");
    // The names Allocate hands out (nvidia.com/gpu=<uuid>) resolve in the spec written at start.
    let spec =
        std::fs::read_to_string(cdi.path().join("nvidia.com-gpu.yaml")).expect("CDI spec written");
    for gpu in load_inventory("h100-nvswitch-8.yaml").gpus {
        assert!(
            spec.contains(&format!("name: {}", gpu.uuid)),
            "{} missing from the spec",
            gpu.uuid
        );
    }
}

#[test]
fn a_config_that_does_not_fit_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "device-plugin",
            "--metrics-addr",
            "off",
            "--mig-strategy",
            "single",
            "--plugin-dir",
        ])
        .arg(dir.path())
        .arg("--inventory")
        .arg(inventory_fixture("t4-pcie-4.yaml"))
        .env_remove("NODE_NAME")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("migStrategy single"), "{err}");
    let config = dir.path().join("bad.yaml");
    std::fs::write(&config, "flags:\n  migStrategy: [\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "device-plugin",
            "--metrics-addr",
            "off",
            "--no-cdi-spec",
            "--config",
        ])
        .arg(&config)
        .arg("--plugin-dir")
        .arg(dir.path())
        .arg("--inventory")
        .arg(inventory_fixture("t4-pcie-4.yaml"))
        .env_remove("NODE_NAME")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml"));
}

#[test]
fn a_node_name_without_a_cluster_fails_at_start_naming_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "device-plugin",
            "--metrics-addr",
            "off",
            "--no-cdi-spec",
            "--plugin-dir",
        ])
        .arg(dir.path())
        .arg("--inventory")
        .arg(inventory_fixture("t4-pcie-4.yaml"))
        .env("NODE_NAME", "gpu-node-7")
        .env("KUBECONFIG", home.path().join("missing-kubeconfig"))
        .env("HOME", home.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gpu-node-7") && err.contains("NODE_NAME"),
        "{err}"
    );
    assert!(
        !dir.path().join("gantry-nvidia.com-gpu.sock").exists(),
        "nothing is served"
    );
}
