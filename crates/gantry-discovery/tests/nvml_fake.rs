//! The NVML backend through the real dlopen and FFI path, against the fake NVML library.
// Integration tests: helpers may unwrap, a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gantry_discovery::{
    discover, watch_xids, Backend, BackendChoice, BackendKind, DiscoveryConfig, InventoryBackend,
    NvmlBackend, NVML_FUNCTIONS,
};
use gantry_testkit::{
    fake_nvml_copy, fake_nvml_library, inventory_fixture, load_inventory, mig_minors_table,
    INVENTORY_FIXTURES,
};

/// A root holding only the driver's MIG minor table, which NVML does not expose.
fn caps_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("proc/driver/nvidia-caps");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mig-minors"), mig_minors_table(8)).unwrap();
    root
}

fn fixture_yaml(name: &str, faults: &str) -> String {
    format!("inventory: {}\n{faults}", inventory_fixture(name).display())
}

#[test]
#[allow(unsafe_code)] // dlopen/dlsym of the fake, to list its exports
fn fake_exports_every_function_gantry_calls() {
    let path = fake_nvml_library();
    // SAFETY: loading the fake runs no initialisers with side effects beyond Rust's own statics.
    let lib = unsafe { libloading::Library::new(&path) }.unwrap();
    let missing: Vec<&str> = NVML_FUNCTIONS
        .iter()
        .copied()
        .filter(|name| {
            // SAFETY: the symbol is only looked up, never called, so its type does not matter.
            unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the fake NVML does not export {missing:?}"
    );
}

#[test]
fn nvml_gives_the_same_inventory_as_the_fixture() {
    let root = caps_root();
    for name in INVENTORY_FIXTURES {
        let dir = tempfile::tempdir().unwrap();
        let lib = fake_nvml_copy(dir.path(), &fixture_yaml(name, ""));
        let found = NvmlBackend::new(Some(lib), root.path().to_owned())
            .discover()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = InventoryBackend::new(inventory_fixture(name))
            .discover()
            .unwrap();
        assert!(found.warnings.is_empty(), "{name}: {:?}", found.warnings);
        assert_eq!(found.inventory, expected.inventory, "{name}");
    }
}

#[test]
fn mig_devices_come_through_nvml() {
    let root = caps_root();
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_nvml_copy(dir.path(), &fixture_yaml("a100-mig-4.yaml", ""));
    let found = NvmlBackend::new(Some(lib), root.path().to_owned())
        .discover()
        .unwrap()
        .inventory;
    let profiles: Vec<&str> = found.gpus[1]
        .mig_devices
        .iter()
        .map(|m| m.profile.as_str())
        .collect();
    assert_eq!(profiles, ["3g.40gb", "2g.20gb", "1g.10gb"]);
    assert_eq!(found.gpus[0].mig_devices.len(), 7);
    assert!(found.gpus[2].mig_devices.is_empty());
    // Without the driver's minor table the caps minors are unknown, not invented.
    let bare = tempfile::tempdir().unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let lib2 = fake_nvml_copy(dir2.path(), &fixture_yaml("a100-mig-4.yaml", ""));
    let found = NvmlBackend::new(Some(lib2), bare.path().to_owned())
        .discover()
        .unwrap()
        .inventory;
    assert!(found.gpus[0]
        .mig_devices
        .iter()
        .all(|m| m.caps_minors.is_none()));
}

#[test]
fn a_lost_gpu_is_left_out_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_nvml_copy(
        dir.path(),
        &fixture_yaml(
            "t4-pcie-4.yaml",
            "faults:\n  lost:\n    - { gpu: 2, after_calls: 0 }\n",
        ),
    );
    let found = NvmlBackend::new(Some(lib), "/nonexistent".into())
        .discover()
        .unwrap();
    let indices: Vec<u32> = found.inventory.gpus.iter().map(|g| g.index).collect();
    assert_eq!(indices, [0, 1, 3]);
    assert_eq!(found.warnings.len(), 1);
    assert!(
        found.warnings[0].contains("GPU 2 is lost"),
        "{:?}",
        found.warnings
    );
    assert!(found.inventory.topology.link(1, 2).is_none());
    assert!(found.inventory.topology.link(1, 3).is_some());
}

#[test]
fn a_gpu_lost_mid_probe_is_unhealthy() {
    // Handle, UUID, name, PCI info and minor answer; the GPU is gone by the memory query.
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_nvml_copy(
        dir.path(),
        &fixture_yaml(
            "t4-pcie-4.yaml",
            "faults:\n  lost:\n    - { gpu: 0, after_calls: 9 }\n",
        ),
    );
    let found = NvmlBackend::new(Some(lib), "/nonexistent".into())
        .discover()
        .unwrap();
    assert!(found.warnings.is_empty(), "{:?}", found.warnings);
    assert!(
        !found.inventory.gpus[0].health.is_healthy(),
        "{:?}",
        found.inventory.gpus[0]
    );
    assert!(found.inventory.gpus[1].health.is_healthy());
}

#[test]
fn init_failure_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_nvml_copy(
        dir.path(),
        &fixture_yaml("t4-pcie-4.yaml", "faults:\n  init_error: 9\n"),
    );
    let err = NvmlBackend::new(Some(lib.clone()), "/".into())
        .discover()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&lib.display().to_string()), "{text}");
    assert!(text.contains("nvmlInit failed"), "{text}");
}

#[test]
fn auto_falls_back_to_driver_files_and_says_why() {
    let root = gantry_testkit::DriverRootBuilder::new(load_inventory("t4-pcie-4.yaml")).build();
    let config = DiscoveryConfig {
        backend: BackendChoice::Auto,
        root: root.path().to_owned(),
        inventory: None,
        nvml_lib: Some("/nonexistent/libnvidia-ml.so.1".into()),
    };
    let found = discover(&config).unwrap();
    assert_eq!(found.backend, BackendKind::DriverFiles);
    assert_eq!(found.inventory.gpus.len(), 4);
    assert_eq!(found.skipped.len(), 1);
    assert_eq!(found.skipped[0].0, BackendKind::Nvml);

    // With NVML answering, auto uses it.
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_nvml_copy(dir.path(), &fixture_yaml("t4-pcie-4.yaml", ""));
    let found = discover(&DiscoveryConfig {
        nvml_lib: Some(lib),
        ..config.clone()
    })
    .unwrap();
    assert_eq!(found.backend, BackendKind::Nvml);
    assert_eq!(found.inventory.gpus[0].memory_mib, Some(15360));

    // Neither answering: one error naming both.
    let empty = tempfile::tempdir().unwrap();
    let err = discover(&DiscoveryConfig {
        root: empty.path().to_owned(),
        ..config
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("nvml: cannot load NVML") && text.contains("driver-files: no NVIDIA driver"),
        "{text}"
    );
}

#[test]
fn xid_events_arrive_from_the_event_set() {
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_nvml_copy(
        dir.path(),
        &fixture_yaml("h100-nvswitch-8.yaml", "faults:\n  xids:\n    - { gpu: 3, xid: 79, after_waits: 2 }\n    - { gpu: 5, xid: 48, after_waits: 4 }\n"),
    );
    let waits = AtomicUsize::new(0);
    let mut events = Vec::new();
    watch_xids(
        Some(Path::new(&lib)),
        Duration::from_millis(5),
        &|| waits.fetch_add(1, Ordering::SeqCst) < 8,
        &mut |event| events.push(event),
    )
    .unwrap();
    let fixture = load_inventory("h100-nvswitch-8.yaml");
    let got: Vec<(String, Option<u64>)> =
        events.iter().map(|e| (e.uuid.to_string(), e.xid)).collect();
    assert_eq!(
        got,
        [
            (fixture.gpus[3].uuid.to_string(), Some(79)),
            (fixture.gpus[5].uuid.to_string(), Some(48)),
        ]
    );
}
