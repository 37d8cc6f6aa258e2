//! `gantry gpus` end to end: the built binary against fixture trees, the fake NVML and inventory files.
// Integration tests: helpers may unwrap, a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use gantry_testkit::{
    fake_nvml_copy, inventory_fixture, load_inventory, DriverRootBuilder, INVENTORY_FIXTURES,
};
use serde_json::Value;

fn gantry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .env_remove("GANTRY_BACKEND")
        .env_remove("GANTRY_INVENTORY")
        .env_remove("GANTRY_NVML_LIB")
        .env_remove("GANTRY_ROOT")
        .env_remove("GANTRY_FAKE_NVML_FIXTURE")
        .output()
        .unwrap()
}

fn json(args: &[&str]) -> Value {
    let out = gantry(args);
    assert!(
        out.status.success(),
        "gantry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stdout(args: &[&str]) -> String {
    let out = gantry(args);
    assert!(
        out.status.success(),
        "gantry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn driver_files_lists_every_gpu_of_a_tree() {
    let fixture = load_inventory("h100-nvswitch-8.yaml");
    let root = DriverRootBuilder::new(fixture.clone()).build();
    let report = json(&[
        "gpus",
        "--backend",
        "driver-files",
        "--root",
        root.path().to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(report["backend"], "driver-files");
    let gpus = report["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 8);
    for (got, want) in gpus.iter().zip(&fixture.gpus) {
        assert_eq!(got["uuid"], want.uuid.as_str());
        assert_eq!(got["minor"], want.minor);
        assert_eq!(got["numa_node"], want.numa_node.unwrap());
        assert_eq!(
            got["memory_mib"],
            Value::Null,
            "unknown to driver files: null, not invented"
        );
    }
}

#[test]
fn nvml_and_inventory_backends_agree_on_every_fixture() {
    let caps = tempfile::tempdir().unwrap();
    let caps_dir = caps.path().join("proc/driver/nvidia-caps");
    std::fs::create_dir_all(&caps_dir).unwrap();
    std::fs::write(
        caps_dir.join("mig-minors"),
        gantry_testkit::mig_minors_table(8),
    )
    .unwrap();
    for name in INVENTORY_FIXTURES {
        let fixture = inventory_fixture(name);
        let dir = tempfile::tempdir().unwrap();
        let lib = fake_nvml_copy(dir.path(), &format!("inventory: {}\n", fixture.display()));
        let mut from_nvml = json(&[
            "gpus",
            "--backend",
            "nvml",
            "--nvml-lib",
            lib.to_str().unwrap(),
            "--root",
            caps.path().to_str().unwrap(),
            "-o",
            "json",
        ]);
        let mut from_file = json(&[
            "gpus",
            "--backend",
            "inventory",
            "--inventory",
            fixture.to_str().unwrap(),
            "-o",
            "json",
        ]);
        assert_eq!(from_nvml["backend"], "nvml");
        from_nvml.as_object_mut().unwrap().remove("backend");
        from_file.as_object_mut().unwrap().remove("backend");
        assert_eq!(from_nvml, from_file, "{name}");
    }
}

#[test]
fn topology_matrix_shows_nvlink_and_numa_distance() {
    let h100 = inventory_fixture("h100-nvswitch-8.yaml");
    let text = stdout(&["gpus", "--inventory", h100.to_str().unwrap(), "--topology"]);
    let rows: Vec<&str> = text.lines().skip(1).take(8).collect();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], format!("GPU{i}"));
        for (j, cell) in cells[1..9].iter().enumerate() {
            assert_eq!(*cell, if i == j { "X" } else { "NV18" }, "row {row}");
        }
    }
    let t4 = inventory_fixture("t4-pcie-4.yaml");
    let text = stdout(&["gpus", "--inventory", t4.to_str().unwrap(), "--topology"]);
    let cells: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .take(4)
        .map(|l| l.split_whitespace().collect())
        .collect();
    // GPUs 0-1 on NUMA 0, 2-3 on NUMA 1: SYS across.
    for (a, b) in [(0, 2), (0, 3), (1, 2), (1, 3)] {
        assert_eq!(cells[a][b + 1], "SYS");
        assert_eq!(cells[b][a + 1], "SYS");
    }
    assert_eq!(cells[0][2], "PIX");
}

#[test]
fn table_output_names_backend_and_mig_devices() {
    let a100 = inventory_fixture("a100-mig-4.yaml");
    let text = stdout(&["gpus", "--inventory", a100.to_str().unwrap()]);
    assert!(text.starts_with("backend: inventory"), "{text}");
    assert_eq!(text.matches("└ MIG 1g.10gb").count(), 8, "{text}");
    assert!(text.contains("└ MIG 3g.40gb"));
    let yaml = stdout(&["gpus", "--inventory", a100.to_str().unwrap(), "-o", "yaml"]);
    assert!(yaml.contains("profile: 2g.20gb"));
}

#[test]
fn bad_inventory_names_file_and_line_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(inventory_fixture("t4-pcie-4.yaml"))
        .unwrap()
        .replacen("    minor: 1\n", "    minor: 1\n    colour: green\n", 1);
    std::fs::write(&path, text).unwrap();
    let out = gantry(&["gpus", "--inventory", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}: line ", path.display())), "{err}");
    assert!(err.contains("unknown field `colour`"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn missing_nvml_says_what_to_do() {
    let out = gantry(&[
        "gpus",
        "--backend",
        "nvml",
        "--nvml-lib",
        "/nonexistent/libnvidia-ml.so.1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--backend driver-files"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn every_command_has_help() {
    for args in [&["--help"][..], &["gpus", "--help"]] {
        let text = stdout(args);
        assert!(text.contains("Usage: gantry"), "{text}");
    }
    let text = stdout(&["gpus", "--help"]);
    for flag in [
        "--backend",
        "--root",
        "--inventory",
        "--nvml-lib",
        "--output",
        "--topology",
        "GANTRY_ROOT",
    ] {
        assert!(text.contains(flag), "gpus --help lacks {flag}");
    }
}
