//! Bad input to the shim: each case exits non-zero with a message that says what to fix, writes one
//! runc-style JSON error line to the caller's `--log`, and leaves `config.json` byte-for-byte unchanged.
//! The lower runtime is `/bin/true`, so a case the shim wrongly let through would exit 0 and fail here.
//! Runs unprivileged (the device-node case included).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{text, unique_id, Node, SHIM};
use serde_json::{json, Value};

struct Case {
    name: &'static str,
    config_json: String,
    expected: &'static str,
}

fn config_with(annotations: Value, env: &[&str], mounts: Value) -> String {
    let mut env_list = vec!["PATH=/bin".to_owned()];
    env_list.extend(env.iter().map(|e| (*e).to_owned()));
    serde_json::to_string_pretty(&json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "env": env_list, "cwd": "/"},
        "root": {"path": "rootfs"},
        "annotations": annotations,
        "mounts": mounts,
        "linux": {}
    }))
    .unwrap()
}

/// Runs `create` on a bundle holding `config_json`; asserts failure, the message, the log line and the
/// unchanged file.
fn assert_rejected(node: &Node, case: &Case) {
    let bundle = node.dir.path().join(format!("bundle-{}", case.name));
    std::fs::create_dir_all(&bundle).unwrap();
    let config_path = bundle.join("config.json");
    std::fs::write(&config_path, &case.config_json).unwrap();
    let log = bundle.join("log.json");
    let out = std::process::Command::new(SHIM)
        .arg("--gantry-config")
        .arg(&node.config_path)
        .args(["--root", "/nonexistent-state", "--log"])
        .arg(&log)
        .args(["--log-format", "json", "create", "--bundle"])
        .arg(&bundle)
        .arg(unique_id(case.name))
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{}: the shim accepted it\n{stderr}",
        case.name
    );
    assert!(
        stderr.contains(case.expected),
        "{}: expected {:?} in\n{stderr}",
        case.name,
        case.expected
    );
    assert!(
        text(&out.stdout).is_empty(),
        "{}: stdout belongs to the container",
        case.name
    );
    let line =
        std::fs::read_to_string(&log).unwrap_or_else(|_| panic!("{}: no --log line", case.name));
    let value: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(value["level"], "error", "{}", case.name);
    assert!(
        value["msg"].as_str().unwrap().contains(case.expected),
        "{}: {line}",
        case.name
    );
    assert!(value["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        std::fs::read_to_string(&config_path).unwrap(),
        case.config_json,
        "{}: config.json changed",
        case.name
    );
}

#[test]
fn bad_requests_are_refused_and_config_json_is_unchanged() {
    let node = Node::new("bad-input", 2, true);
    node.write_config(true, "/bin/true");
    let kind = node.kind.clone();
    let cases = [
        Case {
            name: "malformed",
            config_json: "{\"process\": {\"env\": [\n".to_owned(),
            expected: "malformed JSON at line",
        },
        Case {
            name: "not-an-object",
            config_json: "[1, 2]".to_owned(),
            expected: "must be a JSON object",
        },
        Case {
            name: "gpu-7-of-2",
            config_json: config_with(json!({}), &["NVIDIA_VISIBLE_DEVICES=7"], json!([])),
            expected: "the node has no such device",
        },
        Case {
            name: "annotation-dotdot",
            config_json: config_with(
                json!({"cdi.k8s.io/x": format!("{kind}=../../../etc/passwd")}),
                &[],
                json!([]),
            ),
            expected: "invalid CDI device name",
        },
        Case {
            name: "annotation-absolute",
            config_json: config_with(
                json!({"cdi.k8s.io/x": "/etc/cdi/evil.json"}),
                &[],
                json!([]),
            ),
            expected: "expected VENDOR/CLASS=NAME",
        },
        Case {
            name: "annotation-kind-dotdot",
            config_json: config_with(json!({"cdi.k8s.io/x": "../../gpu=0"}), &[], json!([])),
            expected: "invalid CDI kind",
        },
        Case {
            name: "env-dotdot",
            config_json: config_with(json!({}), &["NVIDIA_VISIBLE_DEVICES=../0"], json!([])),
            expected: "NVIDIA_VISIBLE_DEVICES",
        },
        Case {
            name: "volume-mount-dotdot",
            config_json: config_with(
                json!({}),
                &[],
                json!([{"destination": "/var/run/nvidia-container-devices/../../../etc/shadow", "source": "/dev/null"}]),
            ),
            expected: "volume-mount request",
        },
        Case {
            name: "unknown-kind",
            config_json: config_with(
                json!({"cdi.k8s.io/x": "other.example.com/gpu=0"}),
                &[],
                json!([]),
            ),
            expected: "no CDI spec for kind other.example.com/gpu",
        },
    ];
    for case in &cases {
        assert_rejected(&node, case);
    }
}

#[test]
fn a_missing_lower_runtime_is_refused_before_config_json_is_touched() {
    let node = Node::new("bad-lower", 2, true);
    node.write_config(true, "/nonexistent/bin/runc");
    let case = Case {
        name: "missing-lower",
        config_json: config_with(
            json!({"cdi.k8s.io/x": format!("{}=0", node.kind)}),
            &[],
            json!([]),
        ),
        expected: "lower runtime \"/nonexistent/bin/runc\" not found",
    };
    assert_rejected(&node, &case);
    node.write_config(true, "no-such-runtime-gantry");
    let case = Case {
        name: "missing-lower-path",
        expected: "set `lower-runtime`",
        ..case
    };
    assert_rejected(&node, &case);
}

#[test]
fn an_unreadable_driver_root_is_refused() {
    let node = Node::new("bad-root", 2, true);
    node.write_config(true, "/bin/true");
    // The spec names device nodes under the driver root; the root has gone.
    std::fs::remove_dir_all(node.driver_root.path().join("dev")).unwrap();
    let case = Case {
        name: "gone-root",
        config_json: config_with(
            json!({"cdi.k8s.io/x": format!("{}=1", node.kind)}),
            &[],
            json!([]),
        ),
        expected: "regenerate the spec",
    };
    assert_rejected(&node, &case);
}

#[test]
fn a_broken_spec_file_is_named_when_a_request_fails() {
    let node = Node::new("bad-spec", 2, true);
    node.write_config(true, "/bin/true");
    std::fs::write(&node.spec_path, "cdiVersion: 0.5.0\nkind: broken\n").unwrap();
    let case = Case {
        name: "broken-spec",
        config_json: config_with(
            json!({"cdi.k8s.io/x": format!("{}=0", node.kind)}),
            &[],
            json!([]),
        ),
        expected: "unreadable CDI spec files",
    };
    assert_rejected(&node, &case);
    assert!(Path::new(&node.spec_path).exists());
}

#[test]
fn a_bad_runtime_config_is_refused() {
    let node = Node::new("bad-config", 1, false);
    std::fs::write(&node.config_path, "accept-env-request: true\n").unwrap();
    let case = Case {
        name: "bad-runtime-config",
        config_json: config_with(json!({}), &[], json!([])),
        expected: "accept-env-request",
    };
    assert_rejected(&node, &case);
}

#[test]
fn help_goes_to_stderr_and_names_the_config() {
    let out = std::process::Command::new(SHIM)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "stdout belongs to the container");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("accept-env-requests") && stderr.contains("update-ldcache"),
        "{stderr}"
    );
}
