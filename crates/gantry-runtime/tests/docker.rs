//! dockerd (Debian's docker.io) with the shim as runtime `gantry`, as nvidia-docker was used.
//! Needs root, dockerd, docker, runc and busybox-static; skips with a message elsewhere (fails under CI=true).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{text, unique_id, Dockerd, Node};
use gantry_testkit::stand_in_content;

const LIB: &str = "/usr/lib/x86_64-linux-gnu";

#[test]
fn docker_run_with_the_gantry_runtime() {
    require!("dockerd", "docker", "runc", "busybox");
    let node = Node::new("docker", 2, true);
    let docker_dir = node.dir.path().join("docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    let dockerd = Dockerd::start(&docker_dir, &node.config_path);
    let image = unique_id("gantry-busybox").to_lowercase();
    dockerd.import_busybox(&docker_dir, &image);
    let script = format!(
        "ls /dev; stat -c 'STAT %n %F %t:%T' /dev/nvidia*; echo LIB $(cat {LIB}/libcuda.so.1 2>&1); \
         echo LDCACHE $(grep -c libcuda.so.1 /etc/ld.so.cache 2>&1); echo END"
    );

    // 1. NVIDIA_VISIBLE_DEVICES=1 with accept-env-requests: true, as nvidia-docker did.
    let out = dockerd.docker(&[
        "run",
        "--rm",
        "--runtime",
        "gantry",
        "--network",
        "none",
        "-e",
        "NVIDIA_VISIBLE_DEVICES=1",
        &image,
        "sh",
        "-c",
        &script,
    ]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "{all}\nshim log:\n{}",
        std::fs::read_to_string(&node.log_file).unwrap_or_default()
    );
    assert!(
        all.contains("STAT /dev/nvidia1 character special file c3:1"),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            "STAT /dev/nvidia-uvm character special file {:x}:0",
            node.driver_root.uvm_major
        )),
        "{all}"
    );
    assert!(!all.contains("/dev/nvidia0 "), "{all}");
    assert!(
        all.contains(&format!("LIB {}", stand_in_content("libcuda.so.1").trim())),
        "{all}"
    );
    assert!(all.contains("LDCACHE 1"), "{all}");

    // 2. A GPU the node does not have: docker shows the shim's message (from the --log JSON line).
    let out = dockerd.docker(&[
        "run",
        "--rm",
        "--runtime",
        "gantry",
        "--network",
        "none",
        "-e",
        "NVIDIA_VISIBLE_DEVICES=7",
        &image,
        "true",
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "GPU 7 of 2 must fail");
    assert!(
        stderr.contains("the node has no such device") && stderr.contains("=7"),
        "{stderr}"
    );

    // 3. The secure default: accept-env-requests false, the image says all, the container gets nothing.
    node.write_config(false, "runc");
    let out = dockerd.docker(&[
        "run",
        "--rm",
        "--runtime",
        "gantry",
        "--network",
        "none",
        "-e",
        "NVIDIA_VISIBLE_DEVICES=all",
        &image,
        "sh",
        "-c",
        &format!("ls /dev {LIB}; echo END"),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("END") && !stdout.contains("nvidia") && !stdout.contains("libcuda"),
        "{stdout}"
    );

    // 4. Plain runc with no request: nothing either (the baseline the benchmark compares against).
    let out = dockerd.docker(&[
        "run",
        "--rm",
        "--runtime",
        "runc",
        "--network",
        "none",
        &image,
        "ls",
        "/dev",
    ]);
    assert!(
        out.status.success() && !text(&out.stdout).contains("nvidia"),
        "{}",
        text(&out.stdout)
    );
    let _ = dockerd.docker(&["rmi", "-f", &image]);
}
