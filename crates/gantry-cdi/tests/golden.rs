//! Golden-file tests: the specs generated from the shared inventory fixtures are committed under
//! `tests/golden/` and must match byte for byte. Set `GANTRY_UPDATE_GOLDEN=1` to rewrite them after an
//! intended change (and review the diff). Every golden file is also validated against the CDI JSON schema.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure with a message

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gantry_cdi::{
    generate, Capability, DriverFiles, GenerateOptions, HostFile, NamingStrategy, Spec,
};
use gantry_gpu::NodeInventory;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn file(path: &str) -> HostFile {
    HostFile {
        host_path: path.to_owned(),
        container_path: path.to_owned(),
    }
}

/// A driver installation as found on a Debian host with driver 535.
fn driver_files() -> DriverFiles {
    let lib = |name: &str| file(&format!("/usr/lib/x86_64-linux-gnu/{name}"));
    DriverFiles {
        root: "/".to_owned(),
        control_nodes: [
            "/dev/nvidia-modeset",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools",
            "/dev/nvidiactl",
        ]
        .into_iter()
        .map(file)
        .collect(),
        libraries: BTreeMap::from([
            (
                Capability::Compute,
                vec![
                    lib("libcuda.so.1"),
                    lib("libnvidia-nvvm.so.4"),
                    lib("libnvidia-ptxjitcompiler.so.1"),
                ],
            ),
            (Capability::Utility, vec![lib("libnvidia-ml.so.1")]),
            (
                Capability::Video,
                vec![lib("libnvcuvid.so.1"), lib("libnvidia-encode.so.1")],
            ),
            (
                Capability::Graphics,
                vec![lib("libEGL_nvidia.so.0"), lib("libGLX_nvidia.so.0")],
            ),
        ]),
        binaries: BTreeMap::from([(Capability::Utility, vec![file("/usr/bin/nvidia-smi")])]),
        firmware: vec![file("/lib/firmware/nvidia/535.161.08/gsp_tu10x.bin")],
        ipc: vec![file("/run/nvidia-persistenced/socket")],
    }
}

const CASES: &[(&str, NamingStrategy, &str)] = &[
    ("t4-pcie-4", NamingStrategy::Index, "json"),
    ("t4-pcie-4", NamingStrategy::Uuid, "yaml"),
    ("a100-mig-4", NamingStrategy::Both, "json"),
    ("h100-nvswitch-8", NamingStrategy::Index, "yaml"),
];

fn render(fixture: &str, naming: NamingStrategy, format: &str) -> String {
    let path = repo().join(format!("fixtures/inventory/{fixture}.yaml"));
    let inventory =
        NodeInventory::from_yaml(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    let options = GenerateOptions {
        kind: "nvidia.com/gpu".parse().unwrap(),
        naming,
        hook_path: Some("/usr/bin/gantry-runtime".to_owned()),
    };
    let spec = generate(&inventory, &driver_files(), &options).unwrap();
    let text = if format == "json" {
        spec.to_json().unwrap()
    } else {
        spec.to_yaml().unwrap()
    };
    // What we write must read back as the same spec.
    assert_eq!(Spec::parse(&text, fixture).unwrap(), spec);
    text
}

fn golden_path(fixture: &str, naming: NamingStrategy, format: &str) -> PathBuf {
    let strategy = format!("{naming:?}").to_lowercase();
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/golden/{fixture}-{strategy}.{format}"))
}

#[test]
fn generated_specs_match_the_golden_files() {
    let update = std::env::var_os("GANTRY_UPDATE_GOLDEN").is_some();
    let mut drift = Vec::new();
    for &(fixture, naming, format) in CASES {
        let text = render(fixture, naming, format);
        assert_eq!(
            text,
            render(fixture, naming, format),
            "generation is deterministic"
        );
        let path = golden_path(fixture, naming, format);
        if update {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(golden) if golden == text => {}
            _ => drift.push(path.display().to_string()),
        }
    }
    assert!(
        drift.is_empty(),
        "generated specs differ from {drift:?}; if the change is intended, rerun with GANTRY_UPDATE_GOLDEN=1 and review the diff"
    );
}

#[test]
fn golden_specs_have_the_expected_devices() {
    let spec = Spec::parse(&render("a100-mig-4", NamingStrategy::Both, "json"), "a100").unwrap();
    let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
    assert!(
        names.contains(&"0") && names.contains(&"0:0") && names.contains(&"all"),
        "{names:?}"
    );
    let mig = spec.device("0:0").unwrap();
    let nodes: Vec<&str> = mig
        .container_edits
        .device_nodes
        .iter()
        .map(|n| n.path.as_str())
        .collect();
    assert_eq!(
        nodes,
        [
            "/dev/nvidia0",
            "/dev/nvidia-caps/nvidia-cap66",
            "/dev/nvidia-caps/nvidia-cap67"
        ]
    );
    assert_eq!(spec.cdi_version, "0.5.0");
    for node in spec
        .devices
        .iter()
        .flat_map(|d| &d.container_edits.device_nodes)
    {
        assert_eq!(
            (node.major, node.minor),
            (None, None),
            "numbers are resolved at apply time"
        );
    }
}

/// Validates the golden files with the CDI JSON schema (Python `jsonschema`). Outside CI a missing
/// `python3`/`jsonschema` skips with a message; under `CI=true` it fails.
#[test]
fn golden_specs_validate_against_the_cdi_schema() {
    let files: Vec<PathBuf> = CASES
        .iter()
        .map(|&(f, n, fmt)| golden_path(f, n, fmt))
        .collect();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let Some(out) = gantry_testkit::validate_cdi_specs(&paths) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schema validation failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches(": valid").count(), files.len(), "{text}");
}

#[test]
fn the_schema_check_rejects_a_bad_spec() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"cdiVersion": "0.5.0", "kind": "x.com/y", "devices": [{"name": "0"}]}"#,
    )
    .unwrap();
    let Some(out) = gantry_testkit::validate_cdi_specs(&[&bad]) else {
        return;
    };
    assert!(
        !out.status.success(),
        "a device without containerEdits must fail the schema"
    );
}
