//! Device node numbers, and the `/dev/char` links systemd needs.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A device node's type (`c` or `b`) and numbers, as `stat` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceNumbers {
    pub node_type: char,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The major number of a Linux `dev_t` (glibc's `gnu_dev_major`).
pub fn dev_major(dev: u64) -> u32 {
    u32::try_from(((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)).unwrap_or(u32::MAX)
}

/// The minor number of a Linux `dev_t` (glibc's `gnu_dev_minor`).
pub fn dev_minor(dev: u64) -> u32 {
    u32::try_from((dev & 0xff) | ((dev >> 12) & !0xff)).unwrap_or(u32::MAX)
}

/// `stat`s a device node (following symlinks, as CDI runtimes do).
///
/// # Errors
/// The node is missing or unreadable, or is not a character or block device.
pub fn device_numbers(path: &Path) -> Result<DeviceNumbers> {
    let meta = std::fs::metadata(path).map_err(Error::io(path))?;
    let kind = meta.file_type();
    let node_type = if kind.is_char_device() {
        'c'
    } else if kind.is_block_device() {
        'b'
    } else {
        return Err(Error::NotADevice {
            path: path.to_owned(),
        });
    };
    Ok(DeviceNumbers {
        node_type,
        major: dev_major(meta.rdev()),
        minor: dev_minor(meta.rdev()),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Makes `<root>/dev/char/<major>:<minor>` a link to every NVIDIA character device under `<root>/dev`
/// (`nvidia*` and `nvidia-caps/*`), as udev does for other devices. Returns the links made or corrected.
///
/// # Guarantees
/// Idempotent; a link is replaced atomically (new link, rename); links for other devices are untouched.
///
/// # Errors
/// An unreadable `<root>/dev`, or a link that cannot be written.
pub fn create_dev_char_links(root: &Path) -> Result<Vec<PathBuf>> {
    let dev = root.join("dev");
    let mut nodes = Vec::new();
    for dir in [dev.clone(), dev.join("nvidia-caps")] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && dir != dev => continue,
            Err(err) => return Err(Error::io(&dir)(err)),
        };
        for entry in entries {
            let entry = entry.map_err(Error::io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("nvidia") {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(Error::io(&path))?;
            if meta.file_type().is_char_device() {
                nodes.push((path, dev_major(meta.rdev()), dev_minor(meta.rdev())));
            }
        }
    }
    nodes.sort();
    let char_dir = dev.join("char");
    std::fs::create_dir_all(&char_dir).map_err(Error::io(&char_dir))?;
    let mut made = Vec::new();
    for (path, major, minor) in nodes {
        let relative = path.strip_prefix(&dev).unwrap_or(&path);
        let target = Path::new("..").join(relative);
        let link = char_dir.join(format!("{major}:{minor}"));
        if std::fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        let tmp = char_dir.join(format!(".{major}:{minor}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, &link).map_err(Error::io(&link))?;
        made.push(link);
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_t_encoding() {
        // makedev(195, 1) and makedev(509, 300)
        assert_eq!((dev_major(0xc301), dev_minor(0xc301)), (195, 1));
        let dev: u64 = (300 & 0xff) | ((509 & 0xfff) << 8) | ((300u64 & !0xff) << 12);
        assert_eq!((dev_major(dev), dev_minor(dev)), (509, 300));
    }

    #[test]
    fn a_regular_file_is_not_a_device() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nvidia0");
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            device_numbers(&path),
            Err(Error::NotADevice { .. })
        ));
        assert!(matches!(
            device_numbers(&dir.path().join("gone")),
            Err(Error::Io { .. })
        ));
        assert_eq!(device_numbers(Path::new("/dev/null")).unwrap().major, 1);
    }
}
