//! Writing a file so that readers see the old content or the new, never a mix.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{Error, Result};

/// Replaces `path` with `contents` atomically.
///
/// # Flow
/// Writes a temporary file in the same directory (so the rename never crosses a file system), fsyncs it,
/// gives it `mode`, renames it over `path`, then fsyncs the directory so the rename itself is durable.
///
/// # Guarantees
/// A crash at any point leaves either the old file or the new one, complete. A symlink at `path` is
/// replaced, not followed. The temporary file is removed on error.
///
/// # Errors
/// Any I/O error, naming the path it happened on.
pub fn atomic_write(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    write_and_rename(path, contents, mode, true)
}

/// Replaces `path` with `contents` atomically for readers, without the two fsyncs of [`atomic_write`].
///
/// For files that are regenerated on every use and worthless after a crash, such as a container's
/// `/etc/ld.so.cache`, which the `createContainer` hook rewrites at every start: readers still see the old
/// file or the new one, never a mix, but after a power loss the file may be empty. On a disk the fsyncs
/// cost more than the rest of the hook together (about 18 ms of 23 on the CI VM).
///
/// # Errors
/// Any I/O error, naming the path it happened on.
pub fn atomic_replace(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    write_and_rename(path, contents, mode, false)
}

fn write_and_rename(path: &Path, contents: &[u8], mode: u32, durable: bool) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Io {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
        })?
        .to_string_lossy()
        .into_owned();
    let mut attempt = 0u32;
    let (tmp, mut file) = loop {
        let tmp = dir.join(format!(".{name}.tmp-{}-{attempt}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(0o400_000) // O_NOFOLLOW
            .open(&tmp)
        {
            Ok(file) => break (tmp, file),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1;
            }
            Err(err) => return Err(Error::io(&tmp)(err)),
        }
    };
    let result = (|| {
        file.write_all(contents).map_err(Error::io(&tmp))?;
        // The umask may have narrowed `mode`: set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(Error::io(&tmp))?;
        if durable {
            file.sync_all().map_err(Error::io(&tmp))?;
        }
        drop(file);
        std::fs::rename(&tmp, path).map_err(Error::io(path))?;
        if durable {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(Error::io(dir))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_content_and_mode_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "old").unwrap();
        atomic_write(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn atomic_replace_replaces_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ld.so.cache");
        atomic_replace(&path, b"one", 0o644).unwrap();
        atomic_replace(&path, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn replaces_a_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        atomic_write(&link, b"new", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_path() {
        let err = atomic_write(Path::new("/nonexistent-gantry/x.json"), b"x", 0o644).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-gantry"), "{err}");
    }
}
