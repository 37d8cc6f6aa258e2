//! Finding the driver's files under a driver root.

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use gantry_cdi::{Capability, DriverFiles, HostFile, BINARIES};

use crate::ldcache::{self, FLAG_ARCH_MASK, FLAG_TYPE_MASK};
use crate::root_path::resolve_in_root;
use crate::{Error, Result};

/// Control nodes shared by every GPU, in the container paths they keep.
pub const CONTROL_NODES: &[&str] = &[
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
];

/// Where libraries are looked for when the ld cache names none (inside the root).
pub const LIBRARY_SEARCH_PATH: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib",
    "/lib",
];

const BINARY_SEARCH_PATH: &[&str] = &["/usr/bin", "/usr/sbin", "/bin", "/sbin"];

/// IPC endpoints: the persistenced socket and the MPS pipe directory.
pub const IPC_PATHS: &[&str] = &["/run/nvidia-persistenced/socket", "/tmp/nvidia-mps"];

/// The capability of a driver library file name; `None` for other files.
fn capability_of(name: &str) -> Option<Capability> {
    name.contains(".so")
        .then(|| gantry_cdi::capability_of(name))
        .flatten()
}

/// Finds the driver's files under `root`.
///
/// # Flow
/// Control nodes that exist (character devices, or any file in unprivileged test roots); libraries from
/// `<root>/etc/ld.so.cache` (entries of this machine's architecture whose soname is a known driver library),
/// or, when the cache is missing or names none, from files `lib*.so.*` in the standard library folders;
/// binaries in the standard `bin` folders; firmware under `/lib/firmware/nvidia/<driver_version>/`; the IPC
/// endpoints that exist. Every host path is resolved inside `root`, so a mount never shows a dangling link.
///
/// # Errors
/// An unreadable or missing root, or a malformed ld cache (the message names it and suggests `ldconfig`).
pub fn discover_driver_files(root: &Path, driver_version: Option<&str>) -> Result<DriverFiles> {
    let meta = std::fs::metadata(root).map_err(Error::io(root))?;
    if !meta.is_dir() {
        return Err(Error::DriverRoot {
            path: root.to_owned(),
            reason: "not a directory".to_owned(),
        });
    }
    std::fs::read_dir(root).map_err(Error::io(root))?;
    let host = |container: &str| -> Result<HostFile> {
        let resolved = resolve_in_root(root, Path::new(container))?;
        Ok(HostFile {
            host_path: resolved.to_string_lossy().into_owned(),
            container_path: container.to_owned(),
        })
    };

    let mut files = DriverFiles {
        root: root.to_string_lossy().into_owned(),
        ..DriverFiles::default()
    };
    for node in CONTROL_NODES {
        let path = root.join(node.trim_start_matches('/'));
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.file_type().is_char_device() || meta.is_file() {
                files.control_nodes.push(HostFile {
                    host_path: path.to_string_lossy().into_owned(),
                    container_path: (*node).to_owned(),
                });
            }
        }
    }

    let mut libraries: BTreeMap<Capability, BTreeMap<String, HostFile>> = BTreeMap::new();
    for (capability, container_path) in libraries_from_cache(root)? {
        let file = host(&container_path)?;
        if Path::new(&file.host_path).is_file() {
            libraries
                .entry(capability)
                .or_default()
                .insert(container_path, file);
        }
    }
    if libraries.is_empty() {
        for (capability, container_path) in libraries_from_search_path(root) {
            let file = host(&container_path)?;
            libraries
                .entry(capability)
                .or_default()
                .insert(container_path, file);
        }
    }
    files.libraries = libraries
        .into_iter()
        .map(|(c, files)| (c, files.into_values().collect()))
        .collect();

    for (capability, names) in BINARIES {
        for name in *names {
            let found = BINARY_SEARCH_PATH
                .iter()
                .map(|dir| format!("{dir}/{name}"))
                .find(|p| root.join(p.trim_start_matches('/')).is_file());
            if let Some(path) = found {
                files
                    .binaries
                    .entry(*capability)
                    .or_default()
                    .push(host(&path)?);
            }
        }
    }

    if let Some(version) =
        driver_version.filter(|v| !v.is_empty() && !v.contains('/') && !v.contains(".."))
    {
        let dir = format!("/lib/firmware/nvidia/{version}");
        if let Ok(entries) = std::fs::read_dir(root.join(dir.trim_start_matches('/'))) {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for name in names {
                files.firmware.push(host(&format!("{dir}/{name}"))?);
            }
        }
    }

    for path in IPC_PATHS {
        let host_path = root.join(path.trim_start_matches('/'));
        if let Ok(meta) = std::fs::metadata(&host_path) {
            if meta.file_type().is_socket() || meta.is_dir() {
                files.ipc.push(HostFile {
                    host_path: host_path.to_string_lossy().into_owned(),
                    container_path: (*path).to_owned(),
                });
            }
        }
    }
    Ok(files)
}

/// Driver libraries the root's ld cache names: (capability, path in the root). An absent cache is empty.
fn libraries_from_cache(root: &Path) -> Result<Vec<(Capability, String)>> {
    let path = root.join("etc/ld.so.cache");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(Error::io(&path)(err)),
    };
    let (_, entries) = ldcache::parse(&bytes).map_err(|reason| Error::LdCache {
        path: path.clone(),
        reason: format!("{reason}; rebuild it with `ldconfig`"),
    })?;
    let native = ldcache::native_flags();
    let mut found = Vec::new();
    for entry in entries {
        let same_arch = entry.flags & (FLAG_ARCH_MASK | FLAG_TYPE_MASK) == native;
        if !same_arch || !entry.path.starts_with('/') {
            continue;
        }
        if let Some(capability) = capability_of(&entry.name) {
            found.push((capability, entry.path));
        }
    }
    Ok(found)
}

fn libraries_from_search_path(root: &Path) -> Vec<(Capability, String)> {
    let mut found = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for dir in LIBRARY_SEARCH_PATH {
        let Ok(entries) = std::fs::read_dir(root.join(dir.trim_start_matches('/'))) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            // `libcuda.so.1` (the soname) and the fully versioned file; not the `libcuda.so` dev link.
            let Some(capability) = capability_of(&name) else {
                continue;
            };
            if !name.contains(".so.") || !seen.insert(name.clone()) {
                continue;
            }
            let path: PathBuf = Path::new(dir).join(&name);
            found.push((capability, path.to_string_lossy().into_owned()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_names_map_to_capabilities() {
        assert_eq!(capability_of("libcuda.so.1"), Some(Capability::Compute));
        assert_eq!(
            capability_of("libcuda.so.550.54.15"),
            Some(Capability::Compute)
        );
        assert_eq!(
            capability_of("libnvidia-ml.so.1"),
            Some(Capability::Utility)
        );
        assert_eq!(capability_of("libcudart.so.12"), None);
        assert_eq!(capability_of("libnvidia-mlx.so.1"), None);
        assert_eq!(capability_of("libc.so.6"), None);
    }
}
