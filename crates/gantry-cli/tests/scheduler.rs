//! `gantry scheduler` as a process: its flags, and a clear error without a cluster.
// Integration tests: a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn help_documents_every_flag_with_its_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["scheduler", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for (flag, env) in [
        ("--listen", "GANTRY_SCHEDULER_LISTEN"),
        ("--health-listen", "GANTRY_SCHEDULER_HEALTH_LISTEN"),
        ("--policy", "GANTRY_SCHEDULER_POLICY"),
        ("--workload", "GANTRY_SCHEDULER_WORKLOAD"),
        ("--body-limit", "GANTRY_SCHEDULER_BODY_LIMIT"),
        ("--gang-timeout", "GANTRY_SCHEDULER_GANG_TIMEOUT"),
    ] {
        assert!(
            text.contains(flag) && text.contains(env),
            "{flag} / {env} missing from --help:\n{text}"
        );
    }
}

#[test]
fn without_a_cluster_it_says_so_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["scheduler", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connecting to the Kubernetes API"), "{err}");
}

#[test]
fn an_unknown_policy_is_refused_before_anything_starts() {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["scheduler", "--policy", "fastest"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fastest"), "{err}");
}
