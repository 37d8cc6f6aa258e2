//! `gantry run` end to end with real processes (POSIX `sh`, no TensorFlow): restart policies applied
//! live, Ctrl-C, the grace period, bad input refused before anything starts, GPU requests.
// Test helpers may panic: a panic is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

fn gantry() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
    cmd.env_remove("GANTRY_OUTPUT").env("NO_COLOR", "1");
    cmd
}

/// A job whose replicas run `sh -c SCRIPT` (one entry per replica type).
fn write_job(dir: &Path, name: &str, replicas: &[(&str, i32, &str, &str)], extra: &str) -> PathBuf {
    let mut text = format!(
        "apiVersion: kubeflow.org/v1\nkind: TFJob\nmetadata:\n  name: {name}\nspec:\n{extra}  tfReplicaSpecs:\n"
    );
    for (rtype, n, policy, script) in replicas {
        text.push_str(&format!(
            "    {rtype}:\n      replicas: {n}\n      restartPolicy: {policy}\n      template:\n        spec:\n          containers:\n            - name: tensorflow\n              image: busybox\n              command: [sh, -c, {script:?}]\n"
        ));
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn run(job: &Path, run_dir: &Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let out = gantry()
        .arg("run")
        .arg(job)
        .arg("--run-dir")
        .arg(run_dir)
        .args([
            "--output",
            "json",
            "--restart-delay",
            "0.1",
            "--grace-period",
            "2",
        ])
        .args(extra)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, json)
}

fn replica<'a>(outcome: &'a serde_json::Value, short: &str) -> &'a serde_json::Value {
    outcome["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["shortName"] == short)
        .unwrap_or_else(|| panic!("no replica {short} in {outcome:#}"))
}

/// Processes whose environment contains `marker` (ours, found through /proc).
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(env) = std::fs::read(entry.path().join("environ")) {
            if env.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn worker_zero_success_ends_the_job_and_stops_the_ps() {
    let dir = TempDir::new().unwrap();
    let job = write_job(
        dir.path(),
        "ok",
        &[
            (
                "Worker",
                2,
                "Never",
                "echo \"hello from $TF_CONFIG\"; sleep 0.3",
            ),
            ("PS", 1, "Never", "exec sleep 60"),
        ],
        "",
    );
    let run_dir = dir.path().join("run");
    let (out, outcome) = run(&job, &run_dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{outcome:#}");
    assert_eq!(outcome["result"], "Succeeded");
    assert_eq!(replica(&outcome, "ps-0")["state"], "Stopped");
    assert_eq!(
        replica(&outcome, "ps-0")["exitCode"],
        143,
        "SIGTERM within the grace period"
    );
    let log = std::fs::read_to_string(run_dir.join("worker-1.log")).unwrap();
    assert!(
        log.contains(r#""task":{"type":"worker","index":1}"#),
        "{log}"
    );
    assert!(log.contains("127.0.0.1:"), "{log}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[worker-0] hello from"),
        "logs are prefixed: {stderr}"
    );
    assert!(run_dir.join("outcome.json").is_file());
    assert!(run_dir.join("launch.json").is_file());
}

#[test]
fn on_failure_restarts_in_place_and_exit_code_recreates() {
    for (policy, code) in [("OnFailure", 3), ("ExitCode", 137), ("Always", 0)] {
        let dir = TempDir::new().unwrap();
        let marker = dir.path().join("failed-once");
        let script = format!(
            "if [ ! -e {m} ]; then touch {m}; exit {code}; fi; echo second start; exit 0",
            m = marker.display()
        );
        let replicas = [
            ("Chief", 1, "Never", "sleep 1.5"),
            ("Worker", 1, policy, script.as_str()),
        ];
        let job = write_job(dir.path(), "restart", &replicas, "");
        let (out, outcome) = run(&job, &dir.path().join("run"), &[]);
        assert_eq!(out.status.code(), Some(0), "{policy}: {outcome:#}");
        let starts = replica(&outcome, "worker-0")["starts"].as_u64().unwrap();
        if policy == "Always" {
            assert!(
                starts >= 2,
                "Always restarts even after exit 0: {outcome:#}"
            );
        } else {
            assert_eq!(starts, 2, "{policy}: {outcome:#}");
        }
        let log = std::fs::read_to_string(dir.path().join("run/worker-0.log")).unwrap();
        assert!(log.contains("second start"), "{policy}: {log}");
    }
}

#[test]
fn never_and_a_permanent_exit_code_fail_the_job() {
    for policy in ["Never", "ExitCode"] {
        let dir = TempDir::new().unwrap();
        let replicas = [
            ("Chief", 1, "Never", "exec sleep 60"),
            ("Worker", 1, policy, "exit 1"),
        ];
        let job = write_job(dir.path(), "fails", &replicas, "");
        let (out, outcome) = run(&job, &dir.path().join("run"), &[]);
        assert_eq!(out.status.code(), Some(1), "{policy}");
        assert_eq!(outcome["result"], "Failed");
        assert_eq!(
            replica(&outcome, "worker-0")["starts"],
            1,
            "{policy}: no retry"
        );
        assert_eq!(replica(&outcome, "chief-0")["state"], "Stopped");
    }
}

#[test]
fn backoff_limit_stops_retrying() {
    let dir = TempDir::new().unwrap();
    let replicas = [
        ("Chief", 1, "Never", "exec sleep 60"),
        ("Worker", 1, "ExitCode", "exit 137"),
    ];
    let job = write_job(
        dir.path(),
        "backoff",
        &replicas,
        "  runPolicy: {backoffLimit: 2}\n",
    );
    let (out, outcome) = run(&job, &dir.path().join("run"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        outcome["message"]
            .as_str()
            .unwrap()
            .contains("backoff limit"),
        "{outcome:#}"
    );
    assert_eq!(
        replica(&outcome, "worker-0")["starts"],
        3,
        "2 re-creations: {outcome:#}"
    );
}

#[test]
fn active_deadline_fails_a_job_that_runs_too_long() {
    let dir = TempDir::new().unwrap();
    let replicas = [("Worker", 2, "Never", "exec sleep 60")];
    let job = write_job(
        dir.path(),
        "slow",
        &replicas,
        "  runPolicy: {activeDeadlineSeconds: 1}\n",
    );
    let started = Instant::now();
    let (out, outcome) = run(&job, &dir.path().join("run"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        outcome["message"].as_str().unwrap().contains("deadline"),
        "{outcome:#}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn ctrl_c_stops_every_replica_and_a_stubborn_one_is_killed_after_the_grace_period() {
    let dir = TempDir::new().unwrap();
    let tag = format!("GANTRY_TEST_TAG={}", dir.path().display());
    let replicas = [
        ("Worker", 2, "Never", "exec sleep 60"),
        (
            "PS",
            1,
            "Never",
            "trap '' TERM; while true; do sleep 0.1; done",
        ),
    ];
    let job = write_job(dir.path(), "interrupt", &replicas, "");
    let (key, value) = tag.split_once('=').unwrap();
    let child = gantry()
        .arg("run")
        .arg(&job)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .args(["--output", "json", "--grace-period", "1"])
        .env(key, value)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes_with(&tag).len() < 4 {
        assert!(Instant::now() < deadline, "replicas did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome["result"], "Interrupted");
    assert_eq!(
        replica(&outcome, "ps-0")["exitCode"],
        137,
        "killed after the grace period"
    );
    assert_eq!(replica(&outcome, "worker-0")["exitCode"], 143);
    assert!(processes_with(&tag).is_empty(), "no process left behind");
}

#[test]
fn bad_input_is_refused_before_anything_starts() {
    let dir = TempDir::new().unwrap();
    let started = dir.path().join("started");
    let touch = format!("touch {}; sleep 5", started.display());
    let good = write_job(
        dir.path(),
        "good",
        &[("PS", 1, "Never", touch.as_str())],
        "",
    );
    let good_text = std::fs::read_to_string(&good).unwrap();
    let tf = "containers:\n            - name: tensorflow";
    let cases: Vec<(&str, String, &str)> = vec![
        ("invalid yaml", "apiVersion: kubeflow.org/v1\nkind: TFJob\nspec: [\n".to_string(), "line"),
        (
            "unknown replica type",
            format!("{good_text}    Launcher:\n      template: {{spec: {{containers: [{{name: tensorflow, image: x}}]}}}}\n"),
            "unknown replica type `Launcher`",
        ),
        (
            "no tensorflow container",
            format!("{good_text}    Worker:\n      template: {{spec: {{containers: [{{name: main, image: x, command: [sh]}}]}}}}\n"),
            "spec.tfReplicaSpecs[Worker].template.spec.containers: must have at least one container with name tensorflow",
        ),
        (
            "negative replicas",
            format!("{good_text}    Worker:\n      replicas: -1\n      template: {{spec: {{containers: [{{name: tensorflow, image: x, command: [sh]}}]}}}}\n"),
            "spec.tfReplicaSpecs[Worker].replicas: must be non-negative, got -1",
        ),
        (
            "command that does not exist",
            format!("{good_text}    Worker:\n      template: {{spec: {{containers: [{{name: tensorflow, image: x, command: [no-such-program-xyz]}}]}}}}\n"),
            "replica worker-0: spec.tfReplicaSpecs[Worker].template.spec.containers[tensorflow].command[0]: command \"no-such-program-xyz\" not found",
        ),
        (
            "no command",
            good_text.replace("command:", "args:"),
            "containers[tensorflow].command: is empty",
        ),
        ("wrong kind", "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n".to_string(), "expected apiVersion kubeflow.org/v1 and kind TFJob"),
    ];
    let _ = tf;
    for (what, text, want) in cases {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, text).unwrap();
        let out = gantry()
            .arg("run")
            .arg(&path)
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(want), "{what}: want {want:?} in {stderr}");
        std::thread::sleep(Duration::from_millis(100));
        assert!(!started.exists(), "{what}: a replica started");
        assert!(
            !dir.path().join("run").exists(),
            "{what}: a run directory was made"
        );
    }
}

#[test]
fn unknown_fields_warn_and_fail_under_strict() {
    let dir = TempDir::new().unwrap();
    let job = write_job(dir.path(), "typo", &[("Worker", 1, "Never", "true")], "");
    let text = std::fs::read_to_string(&job)
        .unwrap()
        .replace("replicas: 1", "replicas: 1\n      replica: 2");
    std::fs::write(&job, text).unwrap();
    let out = gantry()
        .arg("run")
        .arg(&job)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("unknown field spec.tfReplicaSpecs.Worker.replica"));
    let out = gantry()
        .arg("run")
        .arg(&job)
        .args(["--dry-run", "--strict"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn dry_run_prints_every_tf_config_and_starts_nothing() {
    let dir = TempDir::new().unwrap();
    let started = dir.path().join("started");
    let touch = format!("touch {}", started.display());
    let job = write_job(
        dir.path(),
        "dry",
        &[
            ("Chief", 1, "Never", touch.as_str()),
            ("Worker", 2, "ExitCode", "true"),
            ("PS", 1, "Never", "true"),
            ("Evaluator", 1, "Never", "true"),
        ],
        "",
    );
    let out = gantry()
        .arg("run")
        .arg(&job)
        .args(["--dry-run", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let launch: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let replicas = launch["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 5);
    let mut ports = Vec::new();
    for r in replicas {
        let tf: serde_json::Value = serde_json::from_str(r["tfConfig"].as_str().unwrap()).unwrap();
        assert_eq!(
            tf["task"]["type"],
            r["replicaType"].as_str().unwrap().to_lowercase()
        );
        assert_eq!(tf["environment"], "cloud");
        assert_eq!(tf["cluster"]["worker"].as_array().unwrap().len(), 2);
        assert_eq!(tf["cluster"]["evaluator"].as_array().unwrap().len(), 1);
        let me = &tf["cluster"][tf["task"]["type"].as_str().unwrap()]
            [tf["task"]["index"].as_u64().unwrap() as usize];
        assert_eq!(me.as_str().unwrap(), format!("127.0.0.1:{}", r["port"]));
        ports.push(r["port"].as_u64().unwrap());
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 5, "a distinct port per replica");
    assert_eq!(
        replicas
            .iter()
            .find(|r| r["shortName"] == "worker-1")
            .unwrap()["restartPolicy"],
        "ExitCode"
    );
    assert!(!started.exists());
    let table = gantry()
        .arg("run")
        .arg(&job)
        .arg("--dry-run")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("TF_CONFIG evaluator-0: {\"cluster\""),
        "{text}"
    );
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/inventory")
        .join(name)
}

#[test]
fn gpu_requests_use_discovery_only_when_asked() {
    let dir = TempDir::new().unwrap();
    let job = write_job(dir.path(), "gpu", &[("Worker", 2, "Never", "true")], "");
    let gpu_job = |per_replica: u32| {
        let text = std::fs::read_to_string(&job).unwrap().replace(
            "image: busybox",
            &format!("image: busybox\n              resources: {{limits: {{nvidia.com/gpu: {per_replica}}}}}"),
        );
        let path = dir.path().join(format!("gpu-{per_replica}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let missing = dir.path().join("no-such-inventory.yaml");
    let empty_root = dir.path().join("empty-root");
    std::fs::create_dir(&empty_root).unwrap();
    let dry = |job: &Path, extra: &[&std::ffi::OsStr]| {
        gantry()
            .arg("run")
            .arg(job)
            .args(["--dry-run", "--output", "json"])
            .args(extra)
            .env_remove("GANTRY_INVENTORY")
            .env_remove("GANTRY_BACKEND")
            .env_remove("GANTRY_NVML_LIB")
            .output()
            .unwrap()
    };

    // No GPU request: discovery never runs (the inventory named does not even exist).
    let out = dry(
        &job,
        &[
            "--backend".as_ref(),
            "inventory".as_ref(),
            "--inventory".as_ref(),
            missing.as_os_str(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let launch: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(launch["replicas"][0]["env"]
        .get("CUDA_VISIBLE_DEVICES")
        .is_none());

    // A GPU request where no backend answers: refused at once, naming the backend.
    let out = dry(
        &gpu_job(1),
        &[
            "--backend".as_ref(),
            "driver-files".as_ref(),
            "--root".as_ref(),
            empty_root.as_os_str(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("asks for 2 GPU(s)"), "{stderr}");
    assert!(
        stderr.contains("driver"),
        "names the backend tried: {stderr}"
    );

    // More GPUs than the node has (4 T4s): refused before anything starts.
    let t4 = fixture("t4-pcie-4.yaml");
    let out = dry(&gpu_job(3), &["--inventory".as_ref(), t4.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("asks for 6 GPU(s) but this machine has 4 usable"),
        "{stderr}"
    );

    // Enough: distinct GPUs of the inventory per replica, by UUID, in PCI bus order.
    let out = dry(&gpu_job(2), &["--inventory".as_ref(), t4.as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let launch: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let inventory = std::fs::read_to_string(&t4).unwrap();
    let mut seen = Vec::new();
    for r in launch["replicas"].as_array().unwrap() {
        assert_eq!(r["env"]["CUDA_DEVICE_ORDER"], "PCI_BUS_ID");
        let uuids: Vec<String> = r["env"]["CUDA_VISIBLE_DEVICES"]
            .as_str()
            .unwrap()
            .split(',')
            .map(str::to_string)
            .collect();
        assert_eq!(uuids.len(), 2, "{r:#}");
        for u in &uuids {
            assert!(
                u.starts_with("GPU-") && inventory.contains(u.as_str()),
                "{u}"
            );
        }
        seen.extend(uuids);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "no GPU handed out twice");
}
