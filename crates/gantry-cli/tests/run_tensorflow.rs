//! `gantry run` with real TensorFlow: the `examples/tf-ps` ParameterServerStrategy job.
//!
//! Needs a Python with `tensorflow-cpu`: `GANTRY_TEST_PYTHON` (set by `scripts/test` to `.venv/bin/python`,
//! which `.ci/run` creates). Without it the tests say so and pass locally; under `CI=true` they fail.
// Test helpers may panic: a panic is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use tempfile::TempDir;

/// The three jobs each start four TensorFlow processes; one at a time keeps a 2-core machine usable.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn python() -> Option<PathBuf> {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let python = std::env::var_os("GANTRY_TEST_PYTHON").map(PathBuf::from);
    let usable = python.as_ref().is_some_and(|p| {
        Command::new(p)
            .args(["-c", "import tensorflow"])
            .env("TF_CPP_MIN_LOG_LEVEL", "3")
            .status()
            .is_ok_and(|s| s.success())
    });
    if usable {
        return python;
    }
    let why = format!(
        "GANTRY_TEST_PYTHON={python:?} is not a Python with tensorflow; run `scripts/test` (after `.ci/run` or `python3 -m venv .venv && .venv/bin/pip install tensorflow-cpu`)"
    );
    assert!(
        !in_ci,
        "CI=true: TensorFlow tests must not be skipped: {why}"
    );
    eprintln!("skipping: {why}");
    None
}

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/tf-ps/tfjob.yaml")
}

struct Run {
    code: Option<i32>,
    outcome: serde_json::Value,
    stderr: String,
}

fn run_example(python: &Path, state: &Path, crash: Option<&str>) -> Run {
    let bin_dir = python.parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
    cmd.arg("run")
        .arg(example())
        .arg("--run-dir")
        .arg(state.join("run"))
        .args(["--output", "json", "--grace-period", "5"])
        .env("PATH", path)
        .env("NO_COLOR", "1")
        .env("TF_PS_EXAMPLE_STATE_DIR", state);
    match crash {
        Some(spec) => cmd.env("TF_PS_EXAMPLE_CRASH", spec),
        None => cmd.env_remove("TF_PS_EXAMPLE_CRASH"),
    };
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let outcome = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}); stderr:\n{stderr}"));
    Run {
        code: out.status.code(),
        outcome,
        stderr,
    }
}

fn replica<'a>(outcome: &'a serde_json::Value, short: &str) -> &'a serde_json::Value {
    outcome["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["shortName"] == short)
        .unwrap()
}

/// The chief's `RESULT {...}` line.
fn result(state: &Path) -> serde_json::Value {
    let log = std::fs::read_to_string(state.join("run/chief-0.log")).unwrap();
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in the chief's log:\n{log}"));
    serde_json::from_str(line).unwrap()
}

/// Processes whose environment mentions this test's state directory.
fn leftovers(state: &Path) -> Vec<String> {
    let needle = format!("TF_PS_EXAMPLE_STATE_DIR={}", state.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn the_example_learns_the_linear_function() {
    let Some(python) = python() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let state = TempDir::new().unwrap();
    let run = run_example(&python, state.path(), None);
    assert_eq!(run.code, Some(0), "{:#}\n{}", run.outcome, run.stderr);
    assert_eq!(run.outcome["result"], "Succeeded");
    let result = result(state.path());
    let (w, b) = (result["w"].as_f64().unwrap(), result["b"].as_f64().unwrap());
    assert!((w - 3.0).abs() < 1e-2, "w = {w}");
    assert!((b + 2.0).abs() < 1e-2, "b = {b}");
    assert_eq!(result["workers"], 2);
    assert_eq!(result["ps"], 1);
    let per_worker = result["steps_per_worker"].as_object().unwrap();
    assert_eq!(per_worker.len(), 2, "both workers ran steps: {result}");
    // The PS and workers never exit on their own: cleanPodPolicy Running stops them.
    assert_eq!(replica(&run.outcome, "ps-0")["state"], "Stopped");
    assert!(leftovers(state.path()).is_empty());
}

#[test]
fn a_worker_killed_with_137_is_recreated_and_the_job_succeeds() {
    let Some(python) = python() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let state = TempDir::new().unwrap();
    let run = run_example(&python, state.path(), Some("worker:1:137"));
    assert_eq!(run.code, Some(0), "{:#}\n{}", run.outcome, run.stderr);
    assert_eq!(
        std::fs::read_to_string(state.path().join("crashed")).unwrap(),
        "137",
        "the failure was injected"
    );
    assert_eq!(
        replica(&run.outcome, "worker-1")["starts"],
        2,
        "re-created once"
    );
    assert!(
        run.stderr
            .contains("is restarting because Worker replica(s) failed"),
        "{}",
        run.stderr
    );
    let result = result(state.path());
    assert!(
        (result["w"].as_f64().unwrap() - 3.0).abs() < 1e-2,
        "{result}"
    );
    assert!(
        (result["b"].as_f64().unwrap() + 2.0).abs() < 1e-2,
        "{result}"
    );
    assert!(leftovers(state.path()).is_empty());
}

#[test]
fn a_worker_exiting_1_fails_the_job_and_every_replica_is_stopped() {
    let Some(python) = python() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let state = TempDir::new().unwrap();
    let run = run_example(&python, state.path(), Some("worker:1:1"));
    assert_eq!(run.code, Some(1), "{:#}\n{}", run.outcome, run.stderr);
    assert_eq!(run.outcome["result"], "Failed");
    assert!(
        run.outcome["message"]
            .as_str()
            .unwrap()
            .contains("1 Worker replica(s) failed"),
        "{:#}",
        run.outcome
    );
    assert_eq!(replica(&run.outcome, "worker-1")["exitCode"], 1);
    assert_eq!(
        replica(&run.outcome, "worker-1")["starts"],
        1,
        "exit 1 is not retried"
    );
    for other in ["chief-0", "worker-0", "ps-0"] {
        assert_eq!(replica(&run.outcome, other)["state"], "Stopped", "{other}");
    }
    assert!(leftovers(state.path()).is_empty(), "no process left behind");
}
