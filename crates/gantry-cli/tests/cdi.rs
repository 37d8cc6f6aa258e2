//! `gantry cdi generate` end to end: the built binary against fake driver roots from gantry-testkit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use gantry_testkit::{
    is_root, load_inventory, DeviceNodes, DriverLibraries, DriverRoot, DriverRootBuilder,
};
use serde_json::Value;

fn gantry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .env_remove("GANTRY_BACKEND")
        .env_remove("GANTRY_INVENTORY")
        .env_remove("GANTRY_NVML_LIB")
        .env_remove("GANTRY_ROOT")
        .env_remove("GANTRY_CDI_KIND")
        .env_remove("GANTRY_HOOK_PATH")
        .env_remove("GANTRY_CDI_DEVICE_NAME_STRATEGY")
        .output()
        .unwrap()
}

fn root(fixture: &str) -> DriverRoot {
    let inventory = load_inventory(fixture);
    let root = DriverRootBuilder::new(inventory.clone()).build();
    DriverLibraries {
        driver_version: inventory.driver_version.unwrap(),
        ..DriverLibraries::default()
    }
    .install(root.path());
    root
}

fn kind(test: &str) -> String {
    format!("test-{test}-{}.gantry.dev/gpu", std::process::id())
}

#[test]
fn generates_a_spec_file_atomically_and_deterministically() {
    let root = root("t4-pcie-4.yaml");
    let out_dir = tempfile::tempdir().unwrap();
    let spec = out_dir.path().join("cdi/test.json");
    let kind = kind("file");
    let args = [
        "cdi",
        "generate",
        "--backend",
        "driver-files",
        "--root",
        root.path().to_str().unwrap(),
        "--kind",
        &kind,
        "--device-name-strategy",
        "both",
        "--hook-path",
        "/usr/bin/gantry-runtime",
        "--out",
        spec.to_str().unwrap(),
    ];
    let out = gantry(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "the spec goes to --out, not stdout");
    let first = std::fs::read(&spec).unwrap();
    let value: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(value["cdiVersion"], "0.5.0");
    assert_eq!(value["kind"], kind.as_str());
    let names: Vec<&str> = value["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        9,
        "4 GPUs by index and by UUID, and all: {names:?}"
    );
    assert!(names.contains(&"3") && names.contains(&"GPU-7400b002-0000-4000-8002-0e0461448dde"));
    let dev3 = &value["devices"][3]["containerEdits"]["deviceNodes"][0];
    assert_eq!(dev3["path"], "/dev/nvidia1");
    assert_eq!(
        dev3["hostPath"].as_str().unwrap(),
        root.path().join("dev/nvidia1").to_str().unwrap()
    );
    let mounts = value["containerEdits"]["mounts"].as_array().unwrap();
    assert!(mounts
        .iter()
        .any(|m| m["containerPath"] == "/usr/lib/x86_64-linux-gnu/libcuda.so.1"));
    let hook = &value["containerEdits"]["hooks"][0];
    assert_eq!(hook["path"], "/usr/bin/gantry-runtime");
    assert_eq!(hook["args"][3], "--folder");
    // Same input, same bytes; no temporary files left beside it.
    assert!(gantry(&args).status.success());
    assert_eq!(std::fs::read(&spec).unwrap(), first);
    assert_eq!(
        std::fs::read_dir(spec.parent().unwrap()).unwrap().count(),
        1
    );
    validate_with_schema(&spec);
}

fn validate_with_schema(spec: &Path) {
    let Some(out) = gantry_testkit::validate_cdi_specs(&[spec]) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn yaml_to_stdout_with_mig_devices() {
    // The driver files do not describe MIG devices (NVML does); an inventory file does.
    let root = root("a100-mig-4.yaml");
    let inventory = gantry_testkit::inventory_fixture("a100-mig-4.yaml");
    let out = gantry(&[
        "cdi",
        "generate",
        "--inventory",
        inventory.to_str().unwrap(),
        "--root",
        root.path().to_str().unwrap(),
        "--kind",
        &kind("stdout"),
        "--no-ldcache-hook",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let spec = gantry_cdi::Spec::parse(&text, "stdout").unwrap();
    let mig = spec.device("0:0").expect("MIG device 0:0");
    let nodes: Vec<&str> = mig
        .container_edits
        .device_nodes
        .iter()
        .map(|n| n.path.as_str())
        .collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(spec.container_edits.hooks.is_empty());
}

#[test]
fn bad_flags_and_roots_say_what_to_fix() {
    let out = gantry(&[
        "cdi",
        "generate",
        "--backend",
        "driver-files",
        "--root",
        "/nonexistent/gantry-root",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gantry-root"));
    let root = root("t4-pcie-4.yaml");
    let r = root.path().to_str().unwrap();
    for (args, expected) in [
        (vec!["--kind", "nvidia.com"], "VENDOR/CLASS"),
        (vec!["--kind", "../x/gpu"], "invalid CDI kind"),
        (vec!["--hook-path", "gantry-runtime"], "must be absolute"),
    ] {
        let mut all = vec!["cdi", "generate", "--backend", "driver-files", "--root", r];
        all.extend(args);
        let out = gantry(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{all:?}: {stderr}"
        );
    }
}

#[test]
fn create_dev_char_links_on_the_driver_root() {
    if !is_root() {
        eprintln!("SKIP: needs root to mknod stand-in device nodes");
        return;
    }
    let inventory = load_inventory("t4-pcie-4.yaml");
    let root = DriverRootBuilder::new(inventory)
        .device_nodes(DeviceNodes::Mknod)
        .build();
    let out = gantry(&[
        "cdi",
        "generate",
        "--backend",
        "driver-files",
        "--root",
        root.path().to_str().unwrap(),
        "--kind",
        &kind("links"),
        "--create-dev-char-links",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_link(root.path().join("dev/char/195:3")).unwrap(),
        Path::new("../nvidia3")
    );
    let uvm = format!("dev/char/{}:1", root.uvm_major);
    assert_eq!(
        std::fs::read_link(root.path().join(uvm)).unwrap(),
        Path::new("../nvidia-uvm-tools")
    );
}
