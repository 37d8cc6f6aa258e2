//! Driver-file discovery on fake driver roots laid out by gantry-testkit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure with a message

use std::path::Path;

use gantry_cdi::Capability;
use gantry_driver::{create_dev_char_links, device_numbers, discover_driver_files, Error};
use gantry_testkit::{is_root, load_inventory, DeviceNodes, DriverLibraries, DriverRootBuilder};

fn container_paths(files: &[gantry_cdi::HostFile]) -> Vec<&str> {
    files.iter().map(|f| f.container_path.as_str()).collect()
}

#[test]
fn finds_nodes_libraries_binaries_and_firmware() {
    let root = DriverRootBuilder::new(load_inventory("t4-pcie-4.yaml")).build();
    DriverLibraries {
        persistenced_socket: true,
        ..DriverLibraries::default()
    }
    .install(root.path());
    let files = discover_driver_files(root.path(), Some("550.54.15")).unwrap();
    assert_eq!(
        container_paths(&files.control_nodes),
        [
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools",
            "/dev/nvidia-modeset"
        ]
    );
    let compute = container_paths(&files.libraries[&Capability::Compute]);
    assert_eq!(
        compute,
        [
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
            "/usr/lib/x86_64-linux-gnu/libnvidia-nvvm.so.4",
            "/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1"
        ]
    );
    // The host path is the real file behind the soname link, so a bind mount never dangles.
    let cuda = &files.libraries[&Capability::Compute][0];
    assert_eq!(
        Path::new(&cuda.host_path),
        root.path()
            .join("usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15")
    );
    assert_eq!(
        container_paths(&files.libraries[&Capability::Utility]),
        ["/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"]
    );
    assert_eq!(files.libraries[&Capability::Video].len(), 2);
    assert_eq!(files.libraries[&Capability::Graphics].len(), 1);
    assert!(!files
        .libraries
        .values()
        .flatten()
        .any(|f| f.container_path.contains("libc.so")));
    assert_eq!(
        container_paths(&files.binaries[&Capability::Utility]),
        ["/usr/bin/nvidia-smi"]
    );
    assert_eq!(
        container_paths(&files.firmware),
        ["/lib/firmware/nvidia/550.54.15/gsp_ga10x.bin"]
    );
    assert_eq!(
        container_paths(&files.ipc),
        ["/run/nvidia-persistenced/socket"]
    );
    // Another driver version has no firmware here.
    assert!(discover_driver_files(root.path(), Some("535.1"))
        .unwrap()
        .firmware
        .is_empty());
}

#[test]
fn falls_back_to_the_search_path_without_an_ld_cache() {
    let root = DriverRootBuilder::new(load_inventory("t4-pcie-4.yaml")).build();
    DriverLibraries {
        ld_cache: false,
        ..DriverLibraries::default()
    }
    .install(root.path());
    let files = discover_driver_files(root.path(), None).unwrap();
    let compute = container_paths(&files.libraries[&Capability::Compute]);
    // Both the soname link and the versioned file, each resolved to the real file.
    assert!(
        compute.contains(&"/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        "{compute:?}"
    );
    assert!(
        compute.contains(&"/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15"),
        "{compute:?}"
    );
    assert!(files.firmware.is_empty(), "no driver version, no firmware");
}

#[test]
fn a_malformed_ld_cache_is_an_error_naming_it() {
    let root = DriverRootBuilder::new(load_inventory("t4-pcie-4.yaml")).build();
    DriverLibraries::default().install(root.path());
    std::fs::write(
        root.path().join("etc/ld.so.cache"),
        b"glibc-ld.so.cache1.1\x05\0\0\0",
    )
    .unwrap();
    let err = discover_driver_files(root.path(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("etc/ld.so.cache") && err.contains("ldconfig"),
        "{err}"
    );
}

#[test]
fn an_unreadable_or_missing_root_is_an_error() {
    let err = discover_driver_files(Path::new("/nonexistent/gantry-root"), None).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/gantry-root"));
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = discover_driver_files(file.path(), None).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn dev_char_links_point_at_every_nvidia_node() {
    if !is_root() {
        eprintln!("SKIP: needs root to mknod the stand-in device nodes");
        return;
    }
    let root = DriverRootBuilder::new(load_inventory("a100-mig-4.yaml"))
        .device_nodes(DeviceNodes::Mknod)
        .build();
    let made = create_dev_char_links(root.path()).unwrap();
    assert!(!made.is_empty());
    let link = root.path().join("dev/char/195:255");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("../nvidiactl")
    );
    let uvm = root.path().join(format!("dev/char/{}:0", root.uvm_major));
    assert_eq!(
        std::fs::read_link(&uvm).unwrap(),
        Path::new("../nvidia-uvm")
    );
    let numbers = device_numbers(&uvm).unwrap();
    assert_eq!(
        (numbers.node_type, numbers.major, numbers.minor),
        ('c', root.uvm_major, 0)
    );
    let cap = root.path().join(format!("dev/char/{}:66", root.caps_major));
    assert_eq!(
        std::fs::read_link(&cap).unwrap(),
        Path::new("../nvidia-caps/nvidia-cap66")
    );
    // A stale link is corrected; a second run changes nothing.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("../null", &link).unwrap();
    assert_eq!(
        create_dev_char_links(root.path()).unwrap(),
        vec![link.clone()]
    );
    assert!(create_dev_char_links(root.path()).unwrap().is_empty());
}
