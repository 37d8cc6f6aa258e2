//! Shared set-up for the runtime's integration tests: a fake driver root with stand-in nodes and libraries,
//! a CDI spec of a kind of the test's own in a temporary spec directory, a runtime config file, and OCI
//! bundles on a busybox-static root file system.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use gantry_cdi::{GenerateOptions, NamingStrategy};
use gantry_testkit::{
    busybox_rootfs, is_root, load_inventory, DriverLibraries, DriverRoot, DriverRootBuilder,
};
use serde_json::{json, Value};
use tempfile::TempDir;

pub const SHIM: &str = env!("CARGO_BIN_EXE_gantry-runtime");

/// A name unique to this test run and test: for CDI kinds, container ids and images.
pub fn unique_id(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{test}-{}-{}-{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos & 0xffff
    )
    .replace('_', "-")
}

/// Whether a command is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Returns a reason to skip when the test cannot run here (not root, or a tool missing); under `CI=true`
/// a missing requirement is a failure instead, because CI runs as root with everything installed.
pub fn requirements(tools: &[&str]) -> Option<String> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root".to_owned());
    }
    for tool in tools {
        if !have(tool) {
            missing.push((*tool).to_owned());
        }
    }
    if missing.is_empty() {
        return None;
    }
    let reason = format!(
        "needs {} (run as root with runc, podman, docker.io, busybox-static installed)",
        missing.join(", ")
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run this test: {reason}"
    );
    Some(reason)
}

#[macro_export]
macro_rules! require {
    ($($tool:expr),*) => {
        if let Some(reason) = common::requirements(&[$($tool),*]) {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
}

/// A node with GPUs and a CDI spec for them, all in temporary directories.
pub struct Node {
    pub dir: TempDir,
    pub driver_root: DriverRoot,
    pub kind: String,
    pub spec_dir: PathBuf,
    pub spec_path: PathBuf,
    pub config_path: PathBuf,
    pub log_file: PathBuf,
}

impl Node {
    /// `gpus` GPUs of the T4 fixture, stand-in libraries, a spec of kind `test-<id>.gantry.dev/gpu`.
    pub fn new(test: &str, gpus: usize, accept_env_requests: bool) -> Node {
        let mut inventory = load_inventory("t4-pcie-4.yaml");
        inventory.gpus.truncate(gpus);
        inventory.topology = Default::default();
        let driver_root = DriverRootBuilder::new(inventory.clone()).build();
        DriverLibraries {
            driver_version: inventory.driver_version.clone().unwrap(),
            ..DriverLibraries::default()
        }
        .install(driver_root.path());
        let dir = tempfile::tempdir().unwrap();
        let kind = format!("test-{}.gantry.dev/gpu", unique_id(test).to_lowercase());
        let spec_dir = dir.path().join("cdi");
        std::fs::create_dir_all(&spec_dir).unwrap();
        let files = gantry_driver::discover_driver_files(
            driver_root.path(),
            inventory.driver_version.as_deref(),
        )
        .unwrap();
        let options = GenerateOptions {
            kind: kind.parse().unwrap(),
            naming: NamingStrategy::Both,
            hook_path: Some(SHIM.to_owned()),
        };
        let spec = gantry_cdi::generate(&inventory, &files, &options).unwrap();
        let spec_path = spec_dir.join(format!("{}.yaml", spec.kind.file_stem()));
        std::fs::write(&spec_path, spec.to_yaml().unwrap()).unwrap();
        let log_file = dir.path().join("gantry-runtime.log");
        let config_path = dir.path().join("runtime.yaml");
        let node = Node {
            dir,
            driver_root,
            kind,
            spec_dir,
            spec_path,
            config_path,
            log_file,
        };
        node.write_config(accept_env_requests, "runc");
        node
    }

    pub fn write_config(&self, accept_env_requests: bool, lower_runtime: &str) {
        std::fs::write(
            &self.config_path,
            format!(
                "accept-env-requests: {accept_env_requests}\nlower-runtime: {lower_runtime}\nspec-dirs: [{}]\ndefault-kind: {}\nlog-file: {}\nlog-level: debug\n",
                self.spec_dir.display(),
                self.kind,
                self.log_file.display()
            ),
        )
        .unwrap();
    }

    /// A fresh bundle (from `runc spec`) running `script` under busybox `sh`.
    pub fn bundle(&self, name: &str, script: &str) -> PathBuf {
        let bundle = self.dir.path().join(name);
        std::fs::create_dir_all(&bundle).unwrap();
        busybox_rootfs(&bundle).expect("busybox");
        let out = Command::new("runc")
            .arg("spec")
            .arg("--bundle")
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runc spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut config = read_json(&bundle.join("config.json"));
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(["sh", "-c", script]);
        // Under the sandbox's hard limits.
        config["process"]["rlimits"] = json!([
            {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
            {"type": "RLIMIT_NPROC", "hard": 1024, "soft": 1024}
        ]);
        config["root"]["readonly"] = json!(false);
        write_json(&bundle.join("config.json"), &config);
        bundle
    }

    /// Runs `gantry-runtime --gantry-config ... --root <state> [args]` with a timeout.
    pub fn shim(&self, args: &[&str]) -> Output {
        let state = self.dir.path().join("runc-state");
        let mut command = Command::new(SHIM);
        command
            .arg("--gantry-config")
            .arg(&self.config_path)
            .arg("--root")
            .arg(&state)
            .args(args);
        run_with_timeout(command, Duration::from_secs(120))
    }
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

pub fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

/// Runs a command with stdin closed, capturing stdout and stderr; kills it after `limit`.
pub fn run_with_timeout(mut command: Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {command:?}: {err}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{command:?} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A dockerd of the test's own: private socket, data root and exec root, no bridge, no iptables, with the
/// shim registered as runtime `gantry` (its config file named by `GANTRY_RUNTIME_CONFIG`, which dockerd
/// passes down through containerd to the runtime). Stopped with SIGTERM (and waited for) when dropped.
pub struct Dockerd {
    pub socket: PathBuf,
    child: std::process::Child,
    pub log: PathBuf,
}

impl Dockerd {
    pub fn start(dir: &Path, runtime_config: &Path) -> Dockerd {
        let socket = dir.join("docker.sock");
        let log = dir.join("dockerd.log");
        std::fs::write(dir.join("daemon.json"), "{}").unwrap();
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .arg(format!("--add-runtime=gantry={SHIM}"))
            .env("GANTRY_RUNTIME_CONFIG", runtime_config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("dockerd.err")).unwrap())
            .spawn()
            .expect("start dockerd");
        let dockerd = Dockerd { socket, child, log };
        let start = Instant::now();
        loop {
            let out = dockerd.docker(&["version", "--format", "{{.Server.Version}}"]);
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "dockerd did not come up: {}",
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        dockerd
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        let mut command = Command::new("docker");
        command
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        run_with_timeout(command, Duration::from_secs(180))
    }

    /// Imports a busybox-static root file system as image `name`.
    pub fn import_busybox(&self, dir: &Path, name: &str) {
        let rootfs = busybox_rootfs(&dir.join("image")).expect("busybox");
        let script = format!(
            "tar -C '{}' -c . | docker --host 'unix://{}' import - '{name}'",
            rootfs.display(),
            self.socket.display()
        );
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "docker import: {}", text(&out.stderr));
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
