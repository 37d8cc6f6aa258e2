#![doc = include_str!("../README.md")]
// Test support: a panic here is a test failure with a message, which is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cdi_schema;
mod driver_libs;
mod driver_root;
#[cfg(feature = "kubelet")]
mod fake_kubelet;
mod fake_nvml;
#[cfg(feature = "kube")]
pub mod kube_api;

use std::path::PathBuf;

pub use cdi_schema::validate_cdi_specs;
pub use driver_libs::{busybox_rootfs, stand_in_content, DriverLibraries, LIB_DIR};
pub use driver_root::{mig_minors_table, DeviceNodes, DriverRoot, DriverRootBuilder};
#[cfg(feature = "kubelet")]
pub use fake_kubelet::FakeKubelet;
pub use fake_nvml::{fake_nvml_copy, fake_nvml_library};

/// The repository root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// A shipped inventory fixture by file name, e.g. `t4-pcie-4.yaml`.
pub fn inventory_fixture(name: &str) -> PathBuf {
    workspace_root().join("fixtures/inventory").join(name)
}

/// The three shipped inventory fixtures.
pub const INVENTORY_FIXTURES: [&str; 3] =
    ["h100-nvswitch-8.yaml", "t4-pcie-4.yaml", "a100-mig-4.yaml"];

/// Loads a shipped inventory fixture.
pub fn load_inventory(name: &str) -> gantry_gpu::NodeInventory {
    let path = inventory_fixture(name);
    let text = std::fs::read_to_string(&path).expect("read fixture");
    gantry_gpu::NodeInventory::from_yaml(&text, &path).expect("valid fixture")
}

/// The YAML documents of a shipped manifest, e.g. `deploy_manifest("scheduler", "rbac.yaml")`
/// for `deploy/scheduler/rbac.yaml`.
pub fn deploy_manifest(dir: &str, file: &str) -> Vec<serde_yaml::Value> {
    let path = workspace_root().join("deploy").join(dir).join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

/// Whether this process runs as root (needed for `mknod` and the container engines).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}
