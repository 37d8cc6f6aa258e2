//! podman (Debian's 4.3) consumes the generated CDI spec, and runs containers through the shim.
//! Needs root, podman, runc, unshare and busybox-static; skips with a message elsewhere (fails under CI=true).
//!
//! podman 4.3 reads CDI specs only from /etc/cdi and /var/run/cdi. So that a test never writes to the
//! host's spec directories, each podman call runs in a private mount namespace (`unshare --mount`) with a
//! fresh tmpfs on /run (and on /dev/shm, where podman keeps its lock file), and the test's spec is copied to
//! /run/cdi there. Storage, run root and temporary
//! files live in the test's own directory; podman runs with `--runtime runc` (crun refuses the hybrid cgroup
//! layout of these machines) and ulimits under the sandbox's hard limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{run_with_timeout, text, unique_id, Node, SHIM};
use gantry_testkit::{busybox_rootfs, stand_in_content};

const LIB: &str = "/usr/lib/x86_64-linux-gnu";

/// Runs podman with `args` in a private mount namespace where /run/cdi holds the node's spec;
/// imports a busybox image first. Returns stdout+stderr and success.
fn podman(node: &Node, runtime: &str, args: &[String]) -> (bool, String) {
    let dir = node.dir.path();
    let rootfs = busybox_rootfs(&dir.join(unique_id("img"))).expect("busybox");
    let image = format!("localhost/{}", unique_id("gantry-busybox"));
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let podman = format!(
        "podman --root {d}/storage --runroot {d}/runroot --tmpdir {d}/tmp --storage-driver vfs \
         --cgroup-manager cgroupfs --events-backend file --runtime {runtime}",
        d = dir.display()
    );
    let run_args: Vec<String> = args.iter().map(|a| quote(a)).collect();
    let script = format!(
        "set -e; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /dev/shm; mkdir -p /run/cdi; cp {spec} /run/cdi/; \
         tar -C {rootfs} -c . | {podman} import - {image} >/dev/null; \
         {podman} run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 {run} {image} sh -c {inner}",
        spec = quote(node.spec_path.to_str().unwrap()),
        rootfs = quote(rootfs.to_str().unwrap()),
        run = run_args[..run_args.len() - 1].join(" "),
        inner = run_args[run_args.len() - 1],
    );
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let out = run_with_timeout(command, Duration::from_secs(240));
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

fn inspect_script() -> String {
    format!(
        "ls /dev; stat -c 'STAT %n %F %t:%T' /dev/nvidia* ; echo LIB $(cat {LIB}/libcuda.so.1 2>&1); \
         echo LDCACHE $(grep -c libcuda.so.1 /etc/ld.so.cache 2>&1); echo ENV $NVIDIA_VISIBLE_DEVICES; \
         echo NODES $(ls -d /dev/nvidia*); echo LIBS $(ls {LIB}); echo SMI $(nvidia-smi); \
         echo FIRMWARE $(ls /lib/firmware/nvidia/*); echo END"
    )
}

#[test]
fn podman_consumes_the_generated_spec() {
    require!("podman", "runc", "unshare", "busybox");
    let node = Node::new("podman-cdi", 4, false);
    let (ok, out) = podman(
        &node,
        "runc",
        &[
            "--device".to_owned(),
            format!("{}=1", node.kind),
            inspect_script(),
        ],
    );
    assert!(ok, "{out}");
    let uvm = format!("{:x}", node.driver_root.uvm_major);
    assert!(
        out.contains("STAT /dev/nvidia1 character special file c3:1"),
        "{out}"
    );
    assert!(
        out.contains("STAT /dev/nvidiactl character special file c3:ff"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "STAT /dev/nvidia-uvm character special file {uvm}:0"
        )),
        "{out}"
    );
    assert!(
        !out.contains("/dev/nvidia0 ") && !out.contains("nvidia2") && !out.contains("nvidia3"),
        "{out}"
    );
    assert!(
        out.contains(&format!("LIB {}", stand_in_content("libcuda.so.1").trim())),
        "{out}"
    );
    assert!(
        out.contains("LDCACHE 1"),
        "the ld-cache hook ran under podman: {out}"
    );
    assert!(out.contains("ENV void"), "{out}");
    // Exactly the expected nodes and driver files, nothing more.
    assert!(
        out.contains("NODES /dev/nvidia-modeset /dev/nvidia-uvm /dev/nvidia-uvm-tools /dev/nvidia1 /dev/nvidiactl\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "LIBS libGLX_nvidia.so.0 libcuda.so.1 libnvcuvid.so.1 libnvidia-encode.so.1 libnvidia-ml.so.1 \
             libnvidia-nvvm.so.4 libnvidia-ptxjitcompiler.so.1\n"
        ),
        "{out}"
    );
    assert!(out.contains("SMI gantry stand-in nvidia-smi"), "{out}");
    assert!(out.contains("FIRMWARE gsp_ga10x.bin"), "{out}");
    assert!(out.contains("END"));
}

#[test]
fn podman_through_the_shim_without_a_request_gets_nothing() {
    require!("podman", "runc", "unshare", "busybox");
    let node = Node::new("podman-none", 2, false);
    let flag = format!("gantry-config={}", node.config_path.display());
    let runtime = format!("{SHIM} --runtime-flag {flag}");
    let (ok, out) = podman(
        &node,
        &runtime,
        &[
            "-e".to_owned(),
            "NVIDIA_VISIBLE_DEVICES=all".to_owned(),
            format!("ls /dev {LIB}; echo END"),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("END"), "{out}");
    assert!(!out.contains("nvidia") && !out.contains("libcuda"), "{out}");
    assert!(
        Path::new(&node.log_file).exists(),
        "the shim ran (it logs to its file)"
    );
}

#[test]
fn podman_through_the_shim_with_a_cdi_annotation() {
    require!("podman", "runc", "unshare", "busybox");
    let node = Node::new("podman-shim", 2, false);
    let flag = format!("gantry-config={}", node.config_path.display());
    let runtime = format!("{SHIM} --runtime-flag {flag}");
    let (ok, out) = podman(
        &node,
        &runtime,
        &[
            "--annotation".to_owned(),
            format!("cdi.k8s.io/test={}=0", node.kind),
            inspect_script(),
        ],
    );
    assert!(
        ok,
        "{out}\nlog:\n{}",
        std::fs::read_to_string(&node.log_file).unwrap_or_default()
    );
    assert!(
        out.contains("STAT /dev/nvidia0 character special file c3:0"),
        "{out}"
    );
    assert!(!out.contains("nvidia1"), "{out}");
    assert!(out.contains("LDCACHE 1"), "{out}");
}
