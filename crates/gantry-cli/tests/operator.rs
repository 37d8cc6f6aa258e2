//! `gantry crd` and `gantry operator` at the command line (the operator itself is tested against fake
//! API servers in `gantry-operator`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn gantry(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

#[test]
fn crd_prints_the_committed_crd_and_writes_it_atomically() {
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/operator/crd.yaml"),
    )
    .unwrap();
    let out = gantry(&["crd"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crd.yaml");
    let out = gantry(&["crd", "--out", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), committed);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
}

#[test]
fn operator_help_documents_every_flag_with_its_environment_variable() {
    let out = gantry(&["operator", "--help"]);
    let help = String::from_utf8(out.stdout).unwrap();
    for env in [
        "GANTRY_OPERATOR_NAMESPACE",
        "GANTRY_GANG_SCHEDULER",
        "GANTRY_SCHEDULER_NAME",
        "GANTRY_METRICS_ADDRESS",
        "GANTRY_LEADER_ELECT",
        "GANTRY_LEADER_ELECTION_LEASE",
        "GANTRY_LEADER_ELECTION_NAMESPACE",
        "GANTRY_LEADER_ELECTION_DURATION",
        "GANTRY_POD_NAME",
        "GANTRY_CLUSTER_DOMAIN",
        "GANTRY_OPERATOR_NAME",
        "GANTRY_SHUTDOWN_GRACE",
        "GANTRY_OPERATOR_CONCURRENCY",
    ] {
        assert!(help.contains(env), "{env} missing from:\n{help}");
    }
    for mode in ["none", "volcano", "scheduler-plugins", "gantry"] {
        assert!(help.contains(&format!("- {mode}:")), "{mode}");
    }
}

#[test]
fn operator_without_a_cluster_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["operator", "--metrics-address", "127.0.0.1:0"])
        .env("KUBECONFIG", dir.path().join("missing"))
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("connecting to Kubernetes"), "{stderr}");
}
