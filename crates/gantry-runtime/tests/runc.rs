//! The shim in front of real runc, on stand-in device nodes and a busybox-static root file system.
//! Needs root, runc and busybox-static; skips with a message elsewhere (fails under CI=true).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{read_json, text, unique_id, write_json, Node};
use gantry_testkit::stand_in_content;
use serde_json::json;

const LIB: &str = "/usr/lib/x86_64-linux-gnu";

#[test]
fn gpu_1_by_cdi_annotation_gets_exactly_its_node_and_the_driver() {
    require!("runc", "busybox");
    let node = Node::new("runc-annotation", 4, false);
    let script = format!(
        "ls /dev; stat -c 'STAT %n %F %t:%T' /dev/nvidia1 /dev/nvidiactl /dev/nvidia-uvm; \
         echo LIB $(cat {LIB}/libcuda.so.1); cat /dev/nvidia1; cat /dev/nvidia0; echo ENV $NVIDIA_VISIBLE_DEVICES; echo END"
    );
    let bundle = node.bundle("bundle", &script);
    let mut config = read_json(&bundle.join("config.json"));
    config["annotations"] = json!({"cdi.k8s.io/test": format!("{}=1", node.kind)});
    // /dev/nvidia0 exists in the container but the device cgroup does not allow it.
    config["linux"]["devices"] =
        json!([{"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0, "fileMode": 438}]);
    write_json(&bundle.join("config.json"), &config);

    let id = unique_id("gpu1");
    let out = node.shim(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}\nlog:\n{}",
        std::fs::read_to_string(&node.log_file).unwrap_or_default()
    );
    let all = format!("{stdout}{stderr}");
    let uvm = format!("{:x}", node.driver_root.uvm_major);
    assert!(
        all.contains("STAT /dev/nvidia1 character special file c3:1"),
        "{all}"
    );
    assert!(
        all.contains("STAT /dev/nvidiactl character special file c3:ff"),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            "STAT /dev/nvidia-uvm character special file {uvm}:0"
        )),
        "{all}"
    );
    assert!(
        all.contains(&format!("LIB {}", stand_in_content("libcuda.so.1").trim())),
        "{all}"
    );
    assert!(
        all.contains("can't open '/dev/nvidia1': No such device or address"),
        "allowed node: ENXIO\n{all}"
    );
    assert!(
        all.contains("can't open '/dev/nvidia0': Operation not permitted"),
        "denied node: EPERM\n{all}"
    );
    assert!(
        !stdout.contains("nvidia2") && !stdout.contains("nvidia3"),
        "{stdout}"
    );
    assert!(all.contains("ENV void"), "{all}");
    assert!(all.contains("END"));

    // The createContainer hook wrote the container's ld cache, naming the mounted libraries.
    let cache =
        std::fs::read(bundle.join("rootfs/etc/ld.so.cache")).expect("hook wrote /etc/ld.so.cache");
    let (_, entries) = gantry_driver::ldcache::parse(&cache).unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.name == "libcuda.so.1" && e.path == format!("{LIB}/libcuda.so.1")),
        "{entries:?}"
    );
    let _ = node.shim(&["delete", "--force", &id]);
}

#[test]
fn no_request_gets_nothing_even_when_the_image_says_all() {
    require!("runc", "busybox");
    let node = Node::new("runc-none", 2, false);
    let bundle = node.bundle("bundle", &format!("ls /dev; ls {LIB}; echo END"));
    let mut config = read_json(&bundle.join("config.json"));
    config["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!("NVIDIA_VISIBLE_DEVICES=all"));
    write_json(&bundle.join("config.json"), &config);
    let before = std::fs::read(bundle.join("config.json")).unwrap();

    let id = unique_id("none");
    let out = node.shim(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("END"));
    assert!(!stdout.contains("nvidia"), "{stdout}");
    assert!(!stdout.contains("libcuda"), "{stdout}");
    assert_eq!(
        std::fs::read(bundle.join("config.json")).unwrap(),
        before,
        "config.json untouched"
    );
    let _ = node.shim(&["delete", "--force", &id]);
}

#[test]
fn env_request_is_honoured_when_accepted() {
    require!("runc", "busybox");
    let node = Node::new("runc-env", 2, true);
    let bundle = node.bundle("bundle", &format!("ls /dev; ls {LIB}; echo END"));
    let mut config = read_json(&bundle.join("config.json"));
    let env = config["process"]["env"].as_array_mut().unwrap();
    env.push(json!("NVIDIA_VISIBLE_DEVICES=0"));
    env.push(json!("NVIDIA_DRIVER_CAPABILITIES=utility"));
    write_json(&bundle.join("config.json"), &config);
    let id = unique_id("env");
    let out = node.shim(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("nvidia0") && !stdout.contains("nvidia1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("libnvidia-ml.so.1"),
        "utility libraries: {stdout}"
    );
    assert!(
        !stdout.contains("libcuda.so.1"),
        "compute was not asked for: {stdout}"
    );
    let _ = node.shim(&["delete", "--force", &id]);
}

#[test]
fn other_subcommands_pass_straight_through() {
    require!("runc");
    let node = Node::new("runc-pass", 1, false);
    let out = node.shim(&["list", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // runc's own output, unchanged: an empty list is `null`.
    assert_eq!(text(&out.stdout).trim(), "null");
    let out = node.shim(&["state", "no-such-container"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("container does not exist"),
        "runc's own error: {}",
        text(&out.stderr)
    );
}

/// As gantry-device-plugin's volume-mounts strategy allocates: one `/dev/null` mount per GPU UUID under
/// `/var/run/nvidia-container-devices/`, and `NVIDIA_VISIBLE_DEVICES` set to that directory (which must not
/// be read as a device name, even with environment requests accepted).
#[test]
fn device_plugin_volume_mounts_strategy() {
    require!("runc", "busybox");
    for accept_env in [false, true] {
        let node = Node::new("runc-volume", 2, accept_env);
        let uuid = gantry_testkit::load_inventory("t4-pcie-4.yaml").gpus[1]
            .uuid
            .to_string();
        let bundle = node.bundle("bundle", "ls /dev; echo END");
        let mut config = read_json(&bundle.join("config.json"));
        config["process"]["env"].as_array_mut().unwrap().push(json!(
            "NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices"
        ));
        config["mounts"].as_array_mut().unwrap().push(json!({
            "destination": format!("/var/run/nvidia-container-devices/{uuid}"),
            "type": "bind", "source": "/dev/null", "options": ["rbind", "ro"]
        }));
        write_json(&bundle.join("config.json"), &config);
        let id = unique_id("volume");
        let out = node.shim(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "accept-env {accept_env}: {stdout}{}",
            text(&out.stderr)
        );
        assert!(
            stdout.contains("nvidia1") && !stdout.contains("nvidia0"),
            "{stdout}"
        );
        let _ = node.shim(&["delete", "--force", &id]);
    }
}
