//! The caches `ldcache::write` produces are read by glibc's real dynamic loader: `/bin/ls` runs in a
//! chroot whose non-libc libraries sit only in `/opt/gantry-libs`, a folder the loader finds through the
//! cache alone. Dozens of decoy entries make the loader's binary search depend on our sort order.
//! Needs root (chroot) and `ldd`; skips with a message elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use gantry_driver::ldcache::{self, Entry};

/// `ldd`'s view of a binary: (soname, path) for each library, and the loader's path.
fn libraries_of(binary: &str) -> Option<(Vec<(String, PathBuf)>, PathBuf)> {
    let out = Command::new("ldd").arg(binary).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    let mut loader = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some((name, rest)) = line.split_once(" => ") {
            let path = rest.split(" (").next()?.trim();
            libs.push((name.trim().to_owned(), PathBuf::from(path)));
        } else if line.starts_with('/') {
            loader = Some(PathBuf::from(line.split(" (").next()?.trim()));
        }
    }
    Some((libs, loader?))
}

fn copy_into(root: &Path, host: &Path, inside: &Path) {
    let dest = root.join(inside.strip_prefix("/").unwrap());
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(host, &dest).unwrap();
}

#[test]
fn glibc_finds_libraries_through_our_cache() {
    if !gantry_testkit::is_root() {
        eprintln!("SKIP: needs root (chroot)");
        return;
    }
    let Some((libs, loader)) = libraries_of("/bin/ls") else {
        eprintln!("SKIP: ldd cannot list /bin/ls");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    copy_into(root, Path::new("/bin/ls"), Path::new("/bin/ls"));
    copy_into(root, &loader, &loader);
    let mut entries = Vec::new();
    let mut moved = 0;
    for (name, path) in &libs {
        // libc stays where the loader looks by default; everything else moves to a folder only the cache names.
        let inside = if name.starts_with("libc.so") {
            path.clone()
        } else {
            moved += 1;
            Path::new("/opt/gantry-libs").join(name)
        };
        copy_into(root, path, &inside);
        entries.push(Entry {
            flags: ldcache::native_flags(),
            name: name.clone(),
            path: inside.display().to_string(),
        });
    }
    if moved == 0 {
        eprintln!("SKIP: /bin/ls needs no library besides libc here");
        return;
    }
    for i in 0..60 {
        for name in [
            format!("liba{i}.so.{i}"),
            format!("libz{i}x.so.1"),
            format!("libselinux{i}.so.{}", i % 7),
        ] {
            entries.push(Entry {
                flags: ldcache::native_flags(),
                path: format!("/nonexistent/{name}"),
                name,
            });
        }
    }
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let run = || {
        Command::new("chroot")
            .arg(root)
            .args(["/bin/ls", "/opt/gantry-libs"])
            .output()
            .unwrap()
    };

    // Control: without a cache the loader cannot find the moved libraries.
    let out = run();
    assert!(
        !out.status.success(),
        "the libraries were found without the cache; the test proves nothing"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("error while loading shared libraries"));

    std::fs::write(root.join("etc/ld.so.cache"), ldcache::write(&entries)).unwrap();
    let out = run();
    assert!(
        out.status.success(),
        "loader failed with our cache: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    for (name, _) in libs.iter().filter(|(n, _)| !n.starts_with("libc.so")) {
        assert!(listing.contains(name.as_str()), "{listing}");
    }
}
