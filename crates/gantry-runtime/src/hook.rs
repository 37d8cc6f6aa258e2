//! `gantry-runtime hook update-ldcache`: refresh the container's ld cache from the host side.

use std::io::Read;
use std::path::{Path, PathBuf};

use gantry_driver::{ldcache, resolve_in_root};
use serde_json::Value;

use crate::{Error, Result};

/// The container's root file system, from the OCI state a hook reads on stdin.
///
/// # Errors
/// State that is not JSON or has no `bundle`; a bundle whose `config.json` has no `root.path`.
pub fn rootfs_from_state(state: &mut dyn Read) -> Result<PathBuf> {
    let mut text = String::new();
    state
        .read_to_string(&mut text)
        .map_err(|err| Error::HookState(err.to_string()))?;
    let state: Value =
        serde_json::from_str(&text).map_err(|err| Error::HookState(err.to_string()))?;
    let bundle = state
        .get("bundle")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::HookState("no \"bundle\" in the container state".to_owned()))?;
    let config_path = Path::new(bundle).join("config.json");
    let bytes = std::fs::read(&config_path).map_err(Error::io(&config_path))?;
    let config: Value = serde_json::from_slice(&bytes).map_err(|err| Error::MalformedConfig {
        path: config_path.clone(),
        line: err.line(),
        column: err.column(),
        message: err.to_string(),
    })?;
    let root = config
        .pointer("/root/path")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::HookState(format!("{} has no root.path", config_path.display())))?;
    Ok(Path::new(bundle).join(root))
}

/// Writes `<rootfs>/etc/ld.so.cache` naming every `lib*.so*` file in `folders` (container paths), keeping
/// the entries of the container's existing cache that are not shadowed. Returns the number of entries.
///
/// # Flow
/// Every path is resolved inside `rootfs` as if it were `/`, so a symlink in the image can never make the
/// hook (which runs as root on the host side) read or write outside the container's root. The cache is
/// written in glibc's new format, atomically (without fsync: it is rewritten at every start). No `ldconfig`
/// is needed in the image.
///
/// # Errors
/// An unreadable folder or an unwritable `/etc` in the root file system.
pub fn update_ldcache(rootfs: &Path, folders: &[String]) -> Result<usize> {
    let flags = ldcache::native_flags();
    let mut entries = Vec::new();
    for folder in folders {
        if !folder.starts_with('/') {
            return Err(Error::Usage(format!(
                "--folder {folder:?} must be an absolute container path"
            )));
        }
        let dir = resolve_in_root(rootfs, Path::new(folder))?;
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(Error::io(&dir)(err)),
        };
        let mut names: Vec<String> = listing
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("lib") && n.contains(".so"))
            .collect();
        names.sort();
        for name in names {
            entries.push(ldcache::Entry {
                flags,
                path: format!("{}/{name}", folder.trim_end_matches('/')),
                name,
            });
        }
    }
    let cache_path = resolve_in_root(rootfs, Path::new("/etc/ld.so.cache"))?;
    if let Ok(bytes) = std::fs::read(&cache_path) {
        match ldcache::parse(&bytes) {
            Ok((_, existing)) => entries.extend(existing),
            Err(reason) => {
                tracing::warn!("replacing unreadable {}: {reason}", cache_path.display())
            }
        }
    }
    if let Some(dir) = cache_path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    let bytes = ldcache::write(&entries);
    let count = ldcache::parse(&bytes).map_or(0, |(_, e)| e.len());
    // Regenerated at every container start: atomic for the loader, no fsync (see `atomic_replace`).
    gantry_driver::atomic_replace(&cache_path, &bytes, 0o644)?;
    tracing::info!(cache = %cache_path.display(), entries = count, "updated the container's ld cache");
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_cache_inside_the_rootfs_only() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let lib = rootfs.join("usr/lib/x86_64-linux-gnu");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libcuda.so.1"), "x").unwrap();
        std::fs::write(lib.join("README"), "x").unwrap();
        // A hostile image: /etc is a link to the host's /etc.
        let outside = dir.path().join("host-etc");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, rootfs.join("etc")).unwrap();
        let count = update_ldcache(&rootfs, &["/usr/lib/x86_64-linux-gnu".to_owned()]).unwrap();
        assert_eq!(count, 1);
        assert!(
            !outside.join("ld.so.cache").exists(),
            "the hook followed a link out of the rootfs"
        );
        let written = resolve_in_root(&rootfs, Path::new("/etc/ld.so.cache")).unwrap();
        assert!(written.starts_with(&rootfs));
        let (_, entries) = ldcache::parse(&std::fs::read(written).unwrap()).unwrap();
        assert_eq!(entries[0].path, "/usr/lib/x86_64-linux-gnu/libcuda.so.1");
    }

    #[test]
    fn state_must_name_a_bundle() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"root": {"path": "rootfs"}}"#,
        )
        .unwrap();
        let state = format!(r#"{{"bundle": "{}", "pid": 1}}"#, dir.path().display());
        assert_eq!(
            rootfs_from_state(&mut state.as_bytes()).unwrap(),
            dir.path().join("rootfs")
        );
        assert!(rootfs_from_state(&mut &b"{}"[..]).is_err());
        assert!(rootfs_from_state(&mut &b"nope"[..]).is_err());
        assert!(update_ldcache(dir.path(), &["relative".to_owned()]).is_err());
    }
}
