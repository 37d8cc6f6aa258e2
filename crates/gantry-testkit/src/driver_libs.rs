//! Stand-in driver libraries, binaries, firmware and an `ld.so.cache` naming them, in a driver root.
//!
//! Separate from [`crate::DriverRootBuilder`] (which lays out `/proc`, `/sys` and `/dev`): call
//! [`DriverLibraries::install`] on the same root after building it.

use std::path::{Path, PathBuf};

use gantry_driver::ldcache;

/// The library folder the stand-ins go to, inside the root.
pub const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";

/// What to put in the root.
#[derive(Debug, Clone)]
pub struct DriverLibraries {
    pub driver_version: String,
    /// Sonames (`libcuda.so.1`); each becomes a symlink to `<stem>.so.<driver_version>`, a small text file.
    pub libraries: Vec<String>,
    pub binaries: Vec<String>,
    /// Write `/etc/ld.so.cache` naming the libraries (else discovery must fall back to the search path).
    pub ld_cache: bool,
    /// Extra cache entries that are not driver libraries (they must be ignored).
    pub unrelated_cache_entries: Vec<(String, String)>,
    pub firmware: bool,
    pub persistenced_socket: bool,
}

impl Default for DriverLibraries {
    fn default() -> Self {
        Self {
            driver_version: "550.54.15".to_owned(),
            libraries: [
                "libcuda.so.1",
                "libnvidia-ptxjitcompiler.so.1",
                "libnvidia-nvvm.so.4",
                "libnvidia-ml.so.1",
                "libnvcuvid.so.1",
                "libnvidia-encode.so.1",
                "libGLX_nvidia.so.0",
            ]
            .map(str::to_owned)
            .to_vec(),
            binaries: vec!["nvidia-smi".to_owned()],
            ld_cache: true,
            unrelated_cache_entries: vec![(
                "libc.so.6".to_owned(),
                "/lib/x86_64-linux-gnu/libc.so.6".to_owned(),
            )],
            firmware: true,
            persistenced_socket: false,
        }
    }
}

/// The text inside a stand-in library file, so a test can check which file it sees.
pub fn stand_in_content(soname: &str) -> String {
    format!("gantry stand-in for {soname}\n")
}

impl DriverLibraries {
    /// Lays the files out under `root`; returns the container paths of the library sonames.
    pub fn install(&self, root: &Path) -> Vec<String> {
        let lib_dir = root.join(LIB_DIR.trim_start_matches('/'));
        std::fs::create_dir_all(&lib_dir).unwrap();
        let mut entries = Vec::new();
        let mut paths = Vec::new();
        for soname in &self.libraries {
            let stem = soname.split_once(".so").unwrap().0;
            let real = format!("{stem}.so.{}", self.driver_version);
            std::fs::write(lib_dir.join(&real), stand_in_content(soname)).unwrap();
            std::os::unix::fs::symlink(&real, lib_dir.join(soname)).unwrap();
            let path = format!("{LIB_DIR}/{soname}");
            entries.push(ldcache::Entry {
                flags: ldcache::native_flags(),
                name: soname.clone(),
                path: path.clone(),
            });
            paths.push(path);
        }
        for (name, path) in &self.unrelated_cache_entries {
            entries.push(ldcache::Entry {
                flags: ldcache::native_flags(),
                name: name.clone(),
                path: path.clone(),
            });
        }
        if self.ld_cache {
            std::fs::create_dir_all(root.join("etc")).unwrap();
            std::fs::write(root.join("etc/ld.so.cache"), ldcache::write(&entries)).unwrap();
        }
        let bin = root.join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        for name in &self.binaries {
            let path = bin.join(name);
            std::fs::write(&path, format!("#!/bin/sh\necho gantry stand-in {name}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        if self.firmware {
            let dir = root.join(format!("lib/firmware/nvidia/{}", self.driver_version));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("gsp_ga10x.bin"), "firmware").unwrap();
        }
        if self.persistenced_socket {
            let dir = root.join("run/nvidia-persistenced");
            std::fs::create_dir_all(&dir).unwrap();
            drop(std::os::unix::net::UnixListener::bind(dir.join("socket")).unwrap());
        }
        paths
    }
}

/// A busybox-static root file system for containers (`/bin/busybox` and links for the applets tests use),
/// or `None` when busybox is not installed.
pub fn busybox_rootfs(dir: &Path) -> Option<PathBuf> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())?;
    let rootfs = dir.join("rootfs");
    for sub in [
        "bin",
        "dev",
        "proc",
        "sys",
        "etc",
        "tmp",
        "usr/lib/x86_64-linux-gnu",
        "lib64",
    ] {
        std::fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "ls", "cat", "stat", "echo", "env", "test", "true", "sleep", "find", "grep", "head",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
    Some(rootfs)
}
