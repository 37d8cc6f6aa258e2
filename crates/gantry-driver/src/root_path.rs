//! Resolving a path inside a root directory as if the root were `/`.

use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

const MAX_LINKS: usize = 40;

/// Resolves `path` (absolute, as seen from inside `root`) to a host path under `root`, following
/// symlinks the way the kernel would after `chroot(root)`: absolute targets restart at `root`, `..` never
/// climbs above it. The result need not exist; the part that exists is resolved.
///
/// # Errors
/// A symlink loop (more than 40 links), or an I/O error other than "not found" while reading a link.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate: PathBuf = root.to_owned();
        candidate.extend(&resolved);
        candidate.push(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Error::SymlinkLoop {
                        path: path.to_owned(),
                    });
                }
                let target = std::fs::read_link(&candidate).map_err(Error::io(&candidate))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(name) => pending.push(name.to_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(_) => resolved.push(part),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => resolved.push(part),
            Err(err) => return Err(Error::io(&candidate)(err)),
        }
    }
    let mut out = root.to_owned();
    out.extend(resolved);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(root.join("usr/lib/libcuda.so.550"), "x").unwrap();
        symlink("libcuda.so.550", root.join("usr/lib/libcuda.so.1")).unwrap();
        symlink("/usr/lib", root.join("lib64")).unwrap();
        symlink("../../../../../etc/passwd", root.join("usr/lib/evil")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/lib64/libcuda.so.1")).unwrap(),
            root.join("usr/lib/libcuda.so.550")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/usr/lib/evil")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/../../x")).unwrap(),
            root.join("x")
        );
        assert!(matches!(
            resolve_in_root(root, Path::new("/loop")),
            Err(Error::SymlinkLoop { .. })
        ));
    }
}
