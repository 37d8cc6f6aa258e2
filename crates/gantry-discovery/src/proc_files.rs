//! Parsers for the driver's text files. Pure: each takes the text and the path it came from (for errors).

use std::collections::BTreeMap;
use std::path::Path;

use gantry_gpu::{DeviceUuid, PciBusId};

use crate::{Error, Result};

fn file_error(path: &Path, message: impl Into<String>) -> Error {
    Error::DriverFile {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// The driver version from `/proc/driver/nvidia/version`, whose first line reads
/// `NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024`
/// (or `... Open Kernel Module for x86_64  550.54.15  Release Build ...`).
pub fn parse_driver_version(text: &str, path: &Path) -> Result<String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("NVRM version:"))
        .ok_or_else(|| {
            file_error(
                path,
                "no `NVRM version:` line; the file is truncated or not the NVIDIA driver's",
            )
        })?;
    let after = line
        .split_once("Module")
        .map(|(_, rest)| rest)
        .ok_or_else(|| file_error(path, format!("line 1: no kernel module named in {line:?}")))?;
    after
        .split_whitespace()
        .find(|token| {
            let parts: Vec<&str> = token.split('.').collect();
            parts.len() >= 2
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_owned)
        .ok_or_else(|| file_error(path, format!("line 1: no driver version in {line:?}")))
}

/// The fields Gantry reads from `/proc/driver/nvidia/gpus/<bus-id>/information`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInformation {
    pub model: String,
    pub uuid: DeviceUuid,
    pub bus_location: PciBusId,
    pub minor: u32,
}

/// Parses an `information` file: `Key: value` lines (`Model`, `GPU UUID`, `Bus Location`, `Device Minor`, ...).
pub fn parse_gpu_information(text: &str, path: &Path) -> Result<GpuInformation> {
    let mut fields: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if let Some((key, value)) = line.split_once(':') {
            fields.insert(key.trim(), (n + 1, value.trim()));
        }
    }
    let get = |key: &str| -> Result<(usize, &str)> {
        fields.get(key).copied().ok_or_else(|| {
            file_error(
                path,
                format!("no `{key}:` field; the file is truncated or from an unsupported driver"),
            )
        })
    };
    let (_, model) = get("Model")?;
    if model.is_empty() {
        return Err(file_error(path, "`Model:` is empty"));
    }
    let (line, uuid) = get("GPU UUID")?;
    let uuid = if uuid.contains("??") {
        return Err(file_error(
            path,
            format!("line {line}: the GPU UUID is not known yet (`{uuid}`): the GPU is not initialised; enable persistence mode (nvidia-persistenced) or use --backend nvml"),
        ));
    } else {
        DeviceUuid::gpu(uuid).map_err(|e| file_error(path, format!("line {line}: {e}")))?
    };
    let (line, bus) = get("Bus Location")?;
    let bus_location = bus
        .parse()
        .map_err(|e| file_error(path, format!("line {line}: {e}")))?;
    let (line, minor) = get("Device Minor")?;
    let minor = minor.parse().map_err(|_| {
        file_error(
            path,
            format!("line {line}: `Device Minor: {minor}` is not a number"),
        )
    })?;
    Ok(GpuInformation {
        model: model.to_owned(),
        uuid,
        bus_location,
        minor,
    })
}

/// The character-device majors from `/proc/devices`. Only `nvidia` (195) is fixed; `nvidia-uvm`,
/// `nvidia-caps` and `nvidia-modeset` majors are allocated when the modules load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcDevices {
    pub character: BTreeMap<String, u32>,
}

impl ProcDevices {
    pub fn major(&self, name: &str) -> Option<u32> {
        self.character.get(name).copied()
    }

    /// The major of the GPU nodes: `nvidia-frontend` on older drivers, `nvidia` on newer ones.
    pub fn nvidia_major(&self) -> Option<u32> {
        self.major("nvidia-frontend")
            .or_else(|| self.major("nvidia"))
    }
}

/// Parses `/proc/devices`: a `Character devices:` section of `MAJOR NAME` lines, then `Block devices:`.
pub fn parse_proc_devices(text: &str, path: &Path) -> Result<ProcDevices> {
    let mut devices = ProcDevices::default();
    let mut in_character = false;
    let mut saw_header = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.ends_with("devices:") {
            in_character = line == "Character devices:";
            saw_header = true;
            continue;
        }
        if !in_character {
            continue;
        }
        let (major, name) = line.split_once(char::is_whitespace).ok_or_else(|| {
            file_error(
                path,
                format!("line {}: expected `MAJOR NAME`, found {line:?}", n + 1),
            )
        })?;
        let major = major.parse().map_err(|_| {
            file_error(
                path,
                format!("line {}: `{major}` is not a major number", n + 1),
            )
        })?;
        devices.character.insert(name.trim().to_owned(), major);
    }
    if !saw_header {
        return Err(file_error(path, "no `Character devices:` section"));
    }
    Ok(devices)
}

/// The `nvidia-caps` minors of MIG instances, from `/proc/driver/nvidia-caps/mig-minors`
/// (`gpu0/gi1/access 12`, `gpu0/gi1/ci0/access 13`, ...; `gpuN` is the GPU's device minor).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigMinors {
    pub gpu_instance: BTreeMap<(u32, u32), u32>,
    pub compute_instance: BTreeMap<(u32, u32, u32), u32>,
}

pub fn parse_mig_minors(text: &str, path: &Path) -> Result<MigMinors> {
    let mut minors = MigMinors::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || file_error(path, format!("line {}: unexpected {line:?}", n + 1));
        let (name, minor) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
        let minor: u32 = minor.trim().parse().map_err(|_| bad())?;
        let parts: Vec<&str> = name.split('/').collect();
        let number = |part: &str, prefix: &str| -> Result<u32> {
            part.strip_prefix(prefix)
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)
        };
        match parts.as_slice() {
            ["config"] | ["monitor"] => {}
            [gpu, gi, "access"] => {
                minors
                    .gpu_instance
                    .insert((number(gpu, "gpu")?, number(gi, "gi")?), minor);
            }
            [gpu, gi, ci, "access"] => {
                minors.compute_instance.insert(
                    (number(gpu, "gpu")?, number(gi, "gi")?, number(ci, "ci")?),
                    minor,
                );
            }
            _ => return Err(bad()),
        }
    }
    Ok(minors)
}

/// The major number of a Linux `dev_t` (glibc's `gnu_dev_major`).
pub fn dev_major(dev: u64) -> u32 {
    let value = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// The minor number of a Linux `dev_t` (glibc's `gnu_dev_minor`).
pub fn dev_minor(dev: u64) -> u32 {
    let value = (dev & 0xff) | ((dev >> 12) & !0xff);
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/proc/x")
    }

    #[test]
    fn driver_version_from_proprietary_and_open_modules() {
        let proprietary = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\nGCC version:  gcc version 12.2.0\n";
        assert_eq!(parse_driver_version(proprietary, p()).unwrap(), "550.54.15");
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  560.35.03  Release Build  (dvs-builder@U16-I3-B03-4-3)  Fri Aug 16 21:42:42 UTC 2024\n";
        assert_eq!(parse_driver_version(open, p()).unwrap(), "560.35.03");
        for bad in [
            "",
            "garbage",
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module",
            "NVRM version: nothing",
        ] {
            let err = parse_driver_version(bad, p()).unwrap_err().to_string();
            assert!(err.starts_with("/proc/x: "), "{err}");
        }
    }

    const INFO: &str = "Model: \t\t Tesla T4\nIRQ:   \t\t 38\nGPU UUID: \t GPU-6d3b1e0a-2f14-4c41-9a43-3e2ab8e1c6f0\nVideo BIOS: \t 90.04.38.00.03\nBus Type: \t PCIe\nDMA Size: \t 47 bits\nDMA Mask: \t 0x7fffffffffff\nBus Location: \t 0000:3b:00.0\nDevice Minor: \t 2\nGPU Excluded:\t No\n";

    #[test]
    fn information_file_fields() {
        let info = parse_gpu_information(INFO, p()).unwrap();
        assert_eq!(info.model, "Tesla T4");
        assert_eq!(
            info.uuid.as_str(),
            "GPU-6d3b1e0a-2f14-4c41-9a43-3e2ab8e1c6f0"
        );
        assert_eq!(info.bus_location.to_string(), "0000:3b:00.0");
        assert_eq!(info.minor, 2);
    }

    #[test]
    fn information_file_damage_is_named() {
        let cases = [
            (
                INFO.replace("Device Minor: \t 2\n", ""),
                "no `Device Minor:` field",
            ),
            (
                INFO.replace("Device Minor: \t 2", "Device Minor: \t two"),
                "line 9: `Device Minor: two`",
            ),
            (
                INFO.replace("GPU-6d3b1e0a-2f14-4c41-9a43-3e2ab8e1c6f0", "GPU-../../x"),
                "line 3",
            ),
            (
                INFO.replace(
                    "GPU-6d3b1e0a-2f14-4c41-9a43-3e2ab8e1c6f0",
                    "GPU-????????-????-????-????-????????????",
                ),
                "persistence",
            ),
            (INFO.replace("0000:3b:00.0", "3b"), "line 8"),
            (INFO[..20].to_owned(), "no `GPU UUID:`"),
            (String::new(), "no `Model:`"),
        ];
        for (text, expected) in cases {
            let err = parse_gpu_information(&text, p()).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        }
    }

    #[test]
    fn proc_devices_majors() {
        let text = "Character devices:\n  1 mem\n195 nvidia-frontend\n234 nvidia-uvm\n237 nvidia-caps\n\nBlock devices:\n  8 sd\n";
        let devices = parse_proc_devices(text, p()).unwrap();
        assert_eq!(devices.nvidia_major(), Some(195));
        assert_eq!(devices.major("nvidia-uvm"), Some(234));
        assert_eq!(devices.major("sd"), None);
        assert!(parse_proc_devices("Character devices:\nabc def\n", p()).is_err());
        assert!(parse_proc_devices("", p()).is_err());
    }

    #[test]
    fn mig_minors_table() {
        let text =
            "config 1\nmonitor 2\ngpu0/gi0/access 3\ngpu0/gi0/ci0/access 4\ngpu1/gi2/access 156\n";
        let minors = parse_mig_minors(text, p()).unwrap();
        assert_eq!(minors.gpu_instance[&(0, 0)], 3);
        assert_eq!(minors.compute_instance[&(0, 0, 0)], 4);
        assert_eq!(minors.gpu_instance[&(1, 2)], 156);
        assert!(parse_mig_minors("gpu0/gi0/access x\n", p()).is_err());
        assert!(parse_mig_minors("gpuX/gi0/access 3\n", p()).is_err());
    }

    #[test]
    fn dev_t_split_matches_glibc_encoding() {
        // makedev(195, 3) and makedev(511, 70000) in glibc's encoding.
        let make = |major: u64, minor: u64| {
            ((major & 0xfffff000) << 32)
                | ((major & 0xfff) << 8)
                | ((minor & 0xffffff00) << 12)
                | (minor & 0xff)
        };
        for (major, minor) in [(195u64, 3u64), (511, 70000), (0, 0), (4095, 255)] {
            let dev = make(major, minor);
            assert_eq!(
                (u64::from(dev_major(dev)), u64::from(dev_minor(dev))),
                (major, minor)
            );
        }
    }
}
