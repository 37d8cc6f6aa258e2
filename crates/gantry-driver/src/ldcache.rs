//! Reading and writing glibc's `/etc/ld.so.cache` without running `ldconfig`.
//!
//! Three layouts exist: the old format (magic `ld.so-1.7.0`), the new format (magic
//! `glibc-ld.so.cache1.1`, the default since glibc 2.32), and the compat format (an old table followed by a
//! new one, the default before 2.32). [`parse`] reads all three (the new table wins when both are present);
//! [`write()`] writes the new format, which every glibc since 2.3 reads.
//!
//! Layouts, from glibc's `sysdeps/generic/dl-cache.h`:
//! - old: 11-byte magic, pad to 12, `u32 nlibs`, then `nlibs` entries of `{i32 flags, u32 key, u32 value}`;
//!   string offsets are relative to the end of the entry table.
//! - new: 17-byte magic + 3-byte version, `u32 nlibs`, `u32 len_strings`, `u8 flags` (endianness), 3 pad,
//!   `u32 extension_offset`, `u32 unused[3]` (48 bytes), then entries of
//!   `{i32 flags, u32 key, u32 value, u32 osversion, u64 hwcap}`; string offsets are relative to the header.

use std::cmp::Ordering;

const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const NEW_HEADER: usize = 48;
const NEW_ENTRY: usize = 24;
const OLD_ENTRY: usize = 12;

/// `FLAG_ELF_LIBC6`: a glibc shared object.
pub const FLAG_ELF_LIBC6: i32 = 0x0003;
/// The type bits of the flags (`FLAG_TYPE_MASK`).
pub const FLAG_TYPE_MASK: i32 = 0x00ff;
/// The architecture bits of the flags (`FLAG_REQUIRED_MASK`).
pub const FLAG_ARCH_MASK: i32 = 0xff00;
/// `FLAG_X8664_LIB64`.
pub const FLAG_X8664_LIB64: i32 = 0x0300;
/// `FLAG_AARCH64_LIB64`.
pub const FLAG_AARCH64_LIB64: i32 = 0x0a00;

/// The flags ldconfig gives a 64-bit glibc library of the architecture this program was built for.
pub fn native_flags() -> i32 {
    match std::env::consts::ARCH {
        "aarch64" => FLAG_ELF_LIBC6 | FLAG_AARCH64_LIB64,
        _ => FLAG_ELF_LIBC6 | FLAG_X8664_LIB64,
    }
}

/// One cache entry: a library's soname (the key the loader searches) and the path it resolves to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub flags: i32,
    pub name: String,
    pub path: String,
}

/// Which layout [`parse`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Old,
    New,
    Compat,
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, String> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| format!("truncated at byte {at}"))
}

fn string_at(bytes: &[u8], base: usize, offset: u32) -> Result<String, String> {
    let start = base
        .checked_add(usize::try_from(offset).map_err(|_| "offset overflows".to_owned())?)
        .ok_or("offset overflows")?;
    let rest = bytes
        .get(start..)
        .ok_or_else(|| format!("string offset {offset} points past the end"))?;
    let len = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| format!("string at offset {offset} is not terminated"))?;
    String::from_utf8(rest[..len].to_vec())
        .map_err(|_| format!("string at offset {offset} is not UTF-8"))
}

fn table_len(nlibs: u32, entry: usize, at: usize, total: usize) -> Result<usize, String> {
    let nlibs = usize::try_from(nlibs).map_err(|_| "too many entries".to_owned())?;
    let end = nlibs
        .checked_mul(entry)
        .and_then(|len| len.checked_add(at))
        .ok_or("entry count overflows")?;
    if end > total {
        return Err(format!("{nlibs} entries do not fit in {total} bytes"));
    }
    Ok(end)
}

fn parse_new(bytes: &[u8], start: usize) -> Result<Vec<Entry>, String> {
    let header = bytes.get(start..).ok_or("truncated")?;
    if header.len() < NEW_HEADER {
        return Err("the header is truncated".to_owned());
    }
    let nlibs = u32_at(header, 20)?;
    let endian = header[28] & 3;
    // 0: unset (older writers), 2: little endian. 1 is invalid, 3 big endian.
    if endian == 1 || (endian == 3) != cfg!(target_endian = "big") {
        return Err(format!(
            "the byte order flag {endian} does not match this machine"
        ));
    }
    let end = table_len(nlibs, NEW_ENTRY, NEW_HEADER, header.len())?;
    (NEW_HEADER..end)
        .step_by(NEW_ENTRY)
        .map(|at| {
            let flags = i32::from_le_bytes(header[at..at + 4].try_into().map_err(|_| "truncated")?);
            Ok(Entry {
                flags,
                name: string_at(header, 0, u32_at(header, at + 4)?)?,
                path: string_at(header, 0, u32_at(header, at + 8)?)?,
            })
        })
        .collect()
}

/// Parses a cache in any of the three layouts.
///
/// # Errors
/// A message saying what is wrong (bad magic, truncation, an offset out of bounds); never panics.
pub fn parse(bytes: &[u8]) -> Result<(Format, Vec<Entry>), String> {
    if bytes.starts_with(NEW_MAGIC) {
        return Ok((Format::New, parse_new(bytes, 0)?));
    }
    if !bytes.starts_with(OLD_MAGIC) {
        return Err("the file starts with neither ld.so-1.7.0 nor glibc-ld.so.cache1.1".to_owned());
    }
    let nlibs = u32_at(bytes, 12)?;
    let end = table_len(nlibs, OLD_ENTRY, 16, bytes.len())?;
    let new_start = (end + 7) & !7;
    if bytes
        .get(new_start..)
        .is_some_and(|rest| rest.starts_with(NEW_MAGIC))
    {
        return Ok((Format::Compat, parse_new(bytes, new_start)?));
    }
    let entries = (16..end)
        .step_by(OLD_ENTRY)
        .map(|at| {
            let flags = i32::from_le_bytes(bytes[at..at + 4].try_into().map_err(|_| "truncated")?);
            Ok(Entry {
                flags,
                name: string_at(bytes, end, u32_at(bytes, at + 4)?)?,
                path: string_at(bytes, end, u32_at(bytes, at + 8)?)?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok((Format::Old, entries))
}

/// glibc's `_dl_cache_libcmp`: runs of digits compare as numbers, so `libfoo.so.10` sorts after `libfoo.so.9`.
pub fn libcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() {
        if j >= b.len() {
            return Ordering::Greater;
        }
        let (x, y) = (a[i], b[j]);
        if x.is_ascii_digit() {
            if !y.is_ascii_digit() {
                return Ordering::Greater;
            }
            let (mut v1, mut v2) = (0u128, 0u128);
            while i < a.len() && a[i].is_ascii_digit() {
                v1 = v1
                    .saturating_mul(10)
                    .saturating_add(u128::from(a[i] - b'0'));
                i += 1;
            }
            while j < b.len() && b[j].is_ascii_digit() {
                v2 = v2
                    .saturating_mul(10)
                    .saturating_add(u128::from(b[j] - b'0'));
                j += 1;
            }
            if v1 != v2 {
                return v1.cmp(&v2);
            }
        } else if y.is_ascii_digit() {
            return Ordering::Less;
        } else if x != y {
            return x.cmp(&y);
        } else {
            i += 1;
            j += 1;
        }
    }
    if j < b.len() {
        Ordering::Less
    } else {
        Ordering::Equal
    }
}

/// Writes a new-format cache holding `entries`, sorted as the loader's binary search expects
/// (descending by [`libcmp`], as ldconfig writes them). Duplicate names keep the first entry given.
pub fn write(entries: &[Entry]) -> Vec<u8> {
    let mut sorted: Vec<&Entry> = Vec::new();
    for entry in entries {
        if !sorted
            .iter()
            .any(|e| e.name == entry.name && e.flags == entry.flags)
        {
            sorted.push(entry);
        }
    }
    sorted.sort_by(|a, b| libcmp(&b.name, &a.name).then(b.flags.cmp(&a.flags)));
    let mut strings: Vec<u8> = Vec::new();
    let base = NEW_HEADER + sorted.len() * NEW_ENTRY;
    let mut table = Vec::with_capacity(sorted.len() * NEW_ENTRY);
    let offset_of = |text: &str, strings: &mut Vec<u8>| -> u32 {
        let offset = base + strings.len();
        strings.extend_from_slice(text.as_bytes());
        strings.push(0);
        u32::try_from(offset).unwrap_or(u32::MAX)
    };
    for entry in &sorted {
        let key = offset_of(&entry.name, &mut strings);
        let value = offset_of(&entry.path, &mut strings);
        table.extend_from_slice(&entry.flags.to_le_bytes());
        table.extend_from_slice(&key.to_le_bytes());
        table.extend_from_slice(&value.to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes()); // osversion
        table.extend_from_slice(&0u64.to_le_bytes()); // hwcap
    }
    let mut out = Vec::with_capacity(base + strings.len());
    out.extend_from_slice(NEW_MAGIC);
    out.extend_from_slice(
        &u32::try_from(sorted.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(
        &u32::try_from(strings.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.push(if cfg!(target_endian = "big") { 3 } else { 2 });
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&0u32.to_le_bytes()); // extension_offset: none
    out.extend_from_slice(&[0; 12]);
    out.extend_from_slice(&table);
    out.extend_from_slice(&strings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    fn entry(name: &str, path: &str) -> Entry {
        Entry {
            flags: native_flags(),
            name: name.to_owned(),
            path: path.to_owned(),
        }
    }

    #[test]
    fn libcmp_matches_glibc() {
        assert_eq!(libcmp("libfoo.so.10", "libfoo.so.9"), Ordering::Greater);
        assert_eq!(libcmp("libc.so.6", "libc.so.6"), Ordering::Equal);
        assert_eq!(libcmp("liba.so", "libb.so"), Ordering::Less);
        assert_eq!(libcmp("libx.so.1", "libx.so"), Ordering::Greater);
        assert_eq!(
            libcmp("lib1", "liba"),
            Ordering::Greater,
            "digits sort after letters"
        );
    }

    #[test]
    fn write_then_parse_round_trips() {
        let entries = vec![
            entry("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
            entry(
                "libnvidia-ml.so.1",
                "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
            ),
            entry("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
        ];
        let (format, mut parsed) = parse(&write(&entries)).unwrap();
        assert_eq!(format, Format::New);
        let mut expected = entries.clone();
        parsed.sort();
        expected.sort();
        assert_eq!(parsed, expected);
    }

    fn ldconfig_available() -> bool {
        Command::new("ldconfig")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// glibc's own ldconfig reads what we write.
    #[test]
    fn real_ldconfig_reads_our_cache() {
        if !ldconfig_available() {
            eprintln!("SKIP: ldconfig is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ld.so.cache");
        let entries = [
            entry("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
            entry("libnvidia-ml.so.1", "/opt/nv/libnvidia-ml.so.1"),
        ];
        std::fs::write(&path, write(&entries)).unwrap();
        let out = Command::new("ldconfig")
            .arg("-p")
            .arg("-C")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("2 libs found in cache"), "{text}");
        assert!(
            text.contains("libnvidia-ml.so.1 (libc6,x86-64) => /opt/nv/libnvidia-ml.so.1"),
            "{text}"
        );
    }

    /// We read what glibc's ldconfig writes, in all three formats, and agree with `ldconfig -p`.
    #[test]
    fn parses_real_caches_in_all_formats() {
        if !ldconfig_available() {
            eprintln!("SKIP: ldconfig is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("lib")).unwrap();
        // A real shared object with a soname: the host's libc, copied twice under other names.
        let libc = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/libc.so.6",
            "/usr/lib/libc.so.6",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
        let Some(libc) = libc else {
            eprintln!("SKIP: no libc.so.6 to copy");
            return;
        };
        std::fs::copy(libc, root.join("lib/libc.so.6")).unwrap();
        std::fs::write(root.join("etc/ld.so.conf"), "/lib\n").unwrap();
        for (flag, expected) in [
            ("old", Format::Old),
            ("compat", Format::Compat),
            ("new", Format::New),
        ] {
            let cache = root.join(format!("etc/ld.so.cache.{flag}"));
            let status = Command::new("ldconfig")
                .args(["-c", flag, "-r"])
                .arg(root)
                .arg("-C")
                .arg(format!("/etc/ld.so.cache.{flag}"))
                .arg("-f")
                .arg("/etc/ld.so.conf")
                .output()
                .unwrap();
            if !status.status.success() {
                eprintln!("SKIP {flag}: {}", String::from_utf8_lossy(&status.stderr));
                continue;
            }
            let (format, entries) = parse(&std::fs::read(&cache).unwrap()).unwrap();
            assert_eq!(format, expected, "{flag}");
            assert!(
                entries
                    .iter()
                    .any(|e| e.name == "libc.so.6" && e.path == "/lib/libc.so.6"),
                "{flag}: {entries:?}"
            );
        }
    }

    #[test]
    fn the_hosts_cache_agrees_with_ldconfig_p() {
        let Ok(bytes) = std::fs::read("/etc/ld.so.cache") else {
            eprintln!("SKIP: no /etc/ld.so.cache");
            return;
        };
        if !ldconfig_available() {
            eprintln!("SKIP: ldconfig is not installed");
            return;
        }
        let (_, entries) = parse(&bytes).unwrap();
        let out = Command::new("ldconfig").arg("-p").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("{} libs found", entries.len())),
            "{first} vs {}",
            entries.len()
        );
        for entry in entries.iter().take(20) {
            assert!(
                text.contains(&format!("\t{} (", entry.name)),
                "{}",
                entry.name
            );
            assert!(
                text.contains(&format!("=> {}\n", entry.path)),
                "{}",
                entry.path
            );
        }
    }

    #[test]
    fn garbage_is_an_error() {
        for bytes in [
            &b""[..],
            b"ld.so-1.7.0",
            b"glibc-ld.so.cache1.1\xff\xff\xff\xff",
            b"hello world",
        ] {
            assert!(parse(bytes).is_err(), "{bytes:?}");
        }
        let mut cache = write(&[entry("liba.so.1", "/a")]);
        cache.truncate(cache.len() - 3);
        assert!(parse(&cache).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), new in any::<bool>()) {
            let mut data = if new { NEW_MAGIC.to_vec() } else { OLD_MAGIC.to_vec() };
            data.extend(bytes);
            let _ = parse(&data);
        }

        #[test]
        fn written_caches_are_sorted_for_the_loader(names in proptest::collection::btree_set("lib[a-z0-9]{1,6}\\.so\\.[0-9]{1,3}", 1..20)) {
            let entries: Vec<Entry> = names.iter().map(|n| entry(n, &format!("/lib/{n}"))).collect();
            let (_, parsed) = parse(&write(&entries)).unwrap();
            for pair in parsed.windows(2) {
                prop_assert_ne!(libcmp(&pair[0].name, &pair[1].name), Ordering::Less);
            }
        }
    }
}
