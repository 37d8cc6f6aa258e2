//! GPU hand-out for `gantry run` over the inventory fixtures.
// Test helpers may panic: a panic is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::path::{Path, PathBuf};

use gantry_gpu::NodeInventory;
use gantry_local::allocate_gpus;

fn inventory(name: &str) -> NodeInventory {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/inventory")
        .join(name);
    NodeInventory::from_yaml(&std::fs::read_to_string(&path).unwrap(), Path::new(&path)).unwrap()
}

fn wanted(pods: &[(&str, u32)]) -> Vec<(String, u32)> {
    pods.iter().map(|(p, n)| (p.to_string(), *n)).collect()
}

#[test]
fn mig_enabled_gpus_are_not_handed_out_whole() {
    let inv = inventory("a100-mig-4.yaml");
    let usable: Vec<&str> = inv
        .gpus
        .iter()
        .filter(|g| g.mig_mode != Some(gantry_gpu::MigMode::Enabled))
        .map(|g| g.uuid.as_str())
        .collect();
    let got = allocate_gpus(&inv, &wanted(&[("w0", 1), ("w1", 1)])).unwrap();
    let mut handed: Vec<&str> = got.values().flatten().map(String::as_str).collect();
    handed.sort_unstable();
    let mut want = usable.clone();
    want.sort_unstable();
    assert_eq!(handed, want);
    let err = allocate_gpus(&inv, &wanted(&[("w0", 3)]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("this machine has {} usable", usable.len())),
        "{err}"
    );
}

#[test]
fn every_pod_gets_its_count_and_no_gpu_twice() {
    let inv = inventory("h100-nvswitch-8.yaml");
    let got = allocate_gpus(
        &inv,
        &wanted(&[("chief", 0), ("w0", 4), ("w1", 2), ("ps", 0), ("w2", 2)]),
    )
    .unwrap();
    assert_eq!(got.len(), 3, "pods without GPUs get no entry: {got:?}");
    assert_eq!(got["w0"].len(), 4);
    assert_eq!(got["w1"].len(), 2);
    let mut all: Vec<&String> = got.values().flatten().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 8);
    assert!(allocate_gpus(&inv, &wanted(&[("w0", 9)])).is_err());
}
