//! The driver-files backend against fake driver roots laid out on disk.
// Integration tests: helpers may unwrap, a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use gantry_discovery::{Backend, DriverFilesBackend, Error};
use gantry_gpu::{Health, Link, PcieDistance};
use gantry_testkit::{is_root, load_inventory, DeviceNodes, DriverRoot, DriverRootBuilder};

/// The T4 fixture's PCIe layout: GPUs 0-1 behind one switch on NUMA 0, GPUs 2-3 on separate root
/// complexes of NUMA 1.
fn t4_root(nodes: DeviceNodes) -> DriverRoot {
    DriverRootBuilder::new(load_inventory("t4-pcie-4.yaml"))
        .device_nodes(nodes)
        .pci_path(
            "0000:3b:00.0",
            "pci0000:36/0000:36:00.0/0000:37:00.0/0000:38:08.0/0000:3b:00.0",
        )
        .pci_path(
            "0000:3c:00.0",
            "pci0000:36/0000:36:00.0/0000:37:00.0/0000:38:10.0/0000:3c:00.0",
        )
        .pci_path("0000:af:00.0", "pci0000:ae/0000:ae:00.0/0000:af:00.0")
        .pci_path("0000:d8:00.0", "pci0000:d7/0000:d7:00.0/0000:d8:00.0")
        .build()
}

fn discover(root: &Path) -> Result<gantry_discovery::Discovered, Error> {
    DriverFilesBackend::new(root.to_owned()).discover()
}

#[test]
fn lists_every_gpu_with_identity_and_pcie_topology() {
    let fixture = load_inventory("t4-pcie-4.yaml");
    let root = t4_root(DeviceNodes::RegularFiles);
    let found = discover(root.path()).unwrap().inventory;
    assert_eq!(found.driver_version, fixture.driver_version);
    assert_eq!(
        found.cuda_driver_version, None,
        "files cannot tell the CUDA version"
    );
    assert_eq!(found.gpus.len(), 4);
    for (got, want) in found.gpus.iter().zip(&fixture.gpus) {
        assert_eq!(got.index, want.index);
        assert_eq!(got.uuid, want.uuid);
        assert_eq!(got.minor, want.minor);
        assert_eq!(got.numa_node, want.numa_node);
        assert_eq!(got.pci_bus_id, want.pci_bus_id);
        assert_eq!(got.product_name, want.product_name);
        assert_eq!(got.memory_mib, None, "never invented");
        assert_eq!(got.compute_capability, None, "never invented");
    }
    // The PCIe distances derived from /sys equal the ones the fixture declares.
    assert_eq!(found.topology, fixture.topology);
    assert_eq!(
        found.topology.link(0, 1),
        Some(Link::Pcie(PcieDistance::Pix))
    );
    assert_eq!(
        found.topology.link(2, 3),
        Some(Link::Pcie(PcieDistance::Node))
    );
    assert_eq!(
        found.topology.link(1, 2),
        Some(Link::Pcie(PcieDistance::Sys))
    );
}

#[test]
fn regular_files_in_dev_are_not_gpus() {
    let root = t4_root(DeviceNodes::RegularFiles);
    let found = discover(root.path()).unwrap().inventory;
    for gpu in &found.gpus {
        assert_eq!(
            gpu.health,
            Health::Unhealthy {
                reason: format!("/dev/nvidia{} is not a character device", gpu.minor)
            }
        );
    }
}

#[test]
fn device_nodes_decide_health() {
    if !is_root() {
        eprintln!("SKIPPED device_nodes_decide_health: needs root for mknod");
        return;
    }
    let root = t4_root(DeviceNodes::Mknod);
    let found = discover(root.path()).unwrap().inventory;
    assert!(
        found.gpus.iter().all(|g| g.health.is_healthy()),
        "{:?}",
        found.gpus
    );

    std::fs::remove_file(root.path().join("dev/nvidia2")).unwrap();
    std::fs::remove_file(root.path().join("dev/nvidia3")).unwrap();
    let status = std::process::Command::new("mknod")
        .arg(root.path().join("dev/nvidia3"))
        .args(["c", "195", "7"])
        .status()
        .unwrap();
    assert!(status.success());
    let found = discover(root.path()).unwrap().inventory;
    assert!(found.gpus[0].health.is_healthy());
    assert_eq!(
        found.gpus[2].health,
        Health::Unhealthy {
            reason: "/dev/nvidia2 is missing".into()
        }
    );
    assert_eq!(
        found.gpus[3].health,
        Health::Unhealthy {
            reason: "/dev/nvidia3 is 195:7, expected 195:3".into()
        }
    );
}

#[test]
fn default_layout_gives_node_and_sys_distances() {
    let fixture = load_inventory("h100-nvswitch-8.yaml");
    let root = DriverRootBuilder::new(fixture.clone()).build();
    let found = discover(root.path()).unwrap().inventory;
    assert_eq!(found.gpus.len(), 8);
    for a in &found.gpus {
        for b in found.gpus.iter().filter(|b| b.index > a.index) {
            let expected = if a.numa_node == b.numa_node {
                PcieDistance::Node
            } else {
                PcieDistance::Sys
            };
            assert_eq!(
                found.topology.link(a.index, b.index),
                Some(Link::Pcie(expected))
            );
        }
    }
}

#[test]
fn no_driver_is_a_clear_error() {
    let empty = tempfile::tempdir().unwrap();
    let err = discover(empty.path()).unwrap_err();
    assert_eq!(err.kind(), "driver_not_loaded");
    let text = err.to_string();
    assert!(
        text.contains("proc/driver/nvidia/version does not exist"),
        "{text}"
    );
    assert!(text.contains("--root"), "{text}");
}

#[test]
fn damaged_driver_files_name_the_file() {
    let bus = "0000:3b:00.0";
    let info = format!("proc/driver/nvidia/gpus/{bus}/information");
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(Damage, String)> = vec![
        (
            Box::new(move |root: &Path| {
                std::fs::remove_file(
                    root.join(format!("proc/driver/nvidia/gpus/{bus}/information")),
                )
                .unwrap()
            }),
            format!("gpus/{bus}: has no `information` file"),
        ),
        (
            Box::new({
                let info = info.clone();
                move |root: &Path| {
                    std::fs::write(root.join(&info), "Model: \t Tesla T4\nGPU UUID: GPU-12")
                        .unwrap()
                }
            }),
            format!("{info}: no `Bus Location:` field"),
        ),
        (
            Box::new(move |root: &Path| {
                std::fs::write(root.join(format!("sys/devices/pci0000:36/0000:36:00.0/0000:37:00.0/0000:38:08.0/{bus}/numa_node")), "zero\n").unwrap()
            }),
            "numa_node: expected a NUMA node number, found \"zero\"".to_owned(),
        ),
        (
            Box::new(|root: &Path| {
                std::fs::create_dir(root.join("proc/driver/nvidia/gpus/not-a-bus")).unwrap()
            }),
            "not-a-bus: directory name is not a PCI bus id".to_owned(),
        ),
        (
            Box::new(|root: &Path| {
                std::fs::write(root.join("proc/driver/nvidia/version"), "garbage\n").unwrap()
            }),
            "version: no `NVRM version:` line".to_owned(),
        ),
        (
            Box::new(|root: &Path| {
                std::fs::write(
                    root.join("proc/driver/nvidia/gpus/0000:3c:00.0/information"),
                    std::fs::read_to_string(
                        root.join("proc/driver/nvidia/gpus/0000:3b:00.0/information"),
                    )
                    .unwrap(),
                )
                .unwrap()
            }),
            "does not match its directory 0000:3c:00.0".to_owned(),
        ),
    ];
    for (damage, expected) in cases {
        let root = t4_root(DeviceNodes::RegularFiles);
        damage(root.path());
        let err = discover(root.path()).unwrap_err().to_string();
        assert!(err.contains(&expected), "expected {expected:?} in: {err}");
    }
}
