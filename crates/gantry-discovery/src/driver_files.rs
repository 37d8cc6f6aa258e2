//! Discovery from the driver's files under a host root: works where NVML is missing or broken.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use gantry_gpu::{Gpu, Health, NodeInventory, PciBusId, Topology};

use crate::pci_path::{pcie_distance, PciPath};
use crate::proc_files::{
    dev_major, dev_minor, parse_driver_version, parse_gpu_information, parse_proc_devices,
};
use crate::{Backend, BackendKind, Discovered, Error, Result};

/// The major of `/dev/nvidia*` GPU nodes when `/proc/devices` does not say.
const NVIDIA_MAJOR: u32 = 195;

/// Reads `/proc/driver/nvidia`, `/proc/devices`, `/sys/bus/pci/devices` and `/dev` under `root`.
#[derive(Debug, Clone)]
pub struct DriverFilesBackend {
    root: PathBuf,
}

impl DriverFilesBackend {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

impl Backend for DriverFilesBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::DriverFiles
    }

    fn discover(&self) -> Result<Discovered> {
        let version_path = self.path("proc/driver/nvidia/version");
        if !version_path.exists() {
            return Err(Error::DriverNotLoaded {
                root: self.root.clone(),
                path: version_path,
            });
        }
        let driver_version = parse_driver_version(&read(&version_path)?, &version_path)?;
        let mut warnings = Vec::new();

        let devices_path = self.path("proc/devices");
        let nvidia_major = if devices_path.exists() {
            let devices = parse_proc_devices(&read(&devices_path)?, &devices_path)?;
            devices.nvidia_major().unwrap_or_else(|| {
                warnings.push(format!(
                    "{} names no nvidia character device; assuming major {NVIDIA_MAJOR}",
                    devices_path.display()
                ));
                NVIDIA_MAJOR
            })
        } else {
            NVIDIA_MAJOR
        };

        let gpus_dir = self.path("proc/driver/nvidia/gpus");
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(&gpus_dir) {
            Ok(dir) => dir
                .map(|entry| entry.map(|e| e.path()))
                .collect::<std::io::Result<_>>()
                .map_err(|e| Error::io(&gpus_dir, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(&gpus_dir, e)),
        };
        entries.sort();

        let mut found = Vec::new();
        for dir in entries {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let bus: PciBusId = name.parse().map_err(|e| Error::DriverFile {
                path: dir.clone(),
                message: format!("directory name is not a PCI bus id: {e}"),
            })?;
            let info_path = dir.join("information");
            if !info_path.exists() {
                return Err(Error::DriverFile {
                    path: dir.clone(),
                    message: "has no `information` file; the driver may still be probing this GPU: retry, or check `dmesg` for NVRM errors".into(),
                });
            }
            let info = parse_gpu_information(&read(&info_path)?, &info_path)?;
            if info.bus_location != bus {
                return Err(Error::DriverFile {
                    path: info_path,
                    message: format!(
                        "`Bus Location: {}` does not match its directory {bus}",
                        info.bus_location
                    ),
                });
            }
            let numa_node = self.numa_node(bus)?;
            let pci_path = std::fs::read_link(self.path(&format!("sys/bus/pci/devices/{bus}")))
                .ok()
                .and_then(|target| PciPath::from_sysfs_target(&target));
            let health = self.device_node_health(info.minor, nvidia_major);
            found.push((info, numa_node, pci_path, health));
        }
        // NVML numbers GPUs in PCI bus order; so does nvidia-smi by default.
        found.sort_by_key(|(info, ..)| info.bus_location);

        let gpus: Vec<Gpu> = found
            .iter()
            .enumerate()
            .map(|(index, (info, numa_node, _, health))| Gpu {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                uuid: info.uuid.clone(),
                product_name: info.model.clone(),
                memory_mib: None,
                pci_bus_id: info.bus_location,
                numa_node: *numa_node,
                minor: info.minor,
                compute_capability: None,
                mig_mode: None,
                mig_devices: Vec::new(),
                health: health.clone(),
            })
            .collect();
        let mut pairs = Vec::new();
        for (i, (_, numa_a, path_a, _)) in found.iter().enumerate() {
            for (j, (_, numa_b, path_b, _)) in found.iter().enumerate().skip(i + 1) {
                if let Some(distance) =
                    pcie_distance(path_a.as_ref(), path_b.as_ref(), *numa_a, *numa_b)
                {
                    pairs.push((
                        gpus[i].index,
                        gpus[j].index,
                        gantry_gpu::Link::Pcie(distance),
                    ));
                }
            }
        }
        let inventory = NodeInventory {
            driver_version: Some(driver_version),
            cuda_driver_version: None,
            gpus,
            topology: Topology::from_pairs(pairs)?,
        }
        .validated()?;
        Ok(Discovered {
            inventory,
            warnings,
        })
    }
}

impl DriverFilesBackend {
    /// `/sys/bus/pci/devices/<bus>/numa_node`: `-1` (no affinity) and a missing file are `None`.
    fn numa_node(&self, bus: PciBusId) -> Result<Option<u32>> {
        let path = self.path(&format!("sys/bus/pci/devices/{bus}/numa_node"));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let value: i64 = text.trim().parse().map_err(|_| Error::DriverFile {
            path: path.clone(),
            message: format!("expected a NUMA node number, found {:?}", text.trim()),
        })?;
        Ok(u32::try_from(value).ok())
    }

    /// A GPU is usable only through `/dev/nvidia<minor>`, a character device `<major>:<minor>`.
    fn device_node_health(&self, minor: u32, major: u32) -> Health {
        let path = self.path(&format!("dev/nvidia{minor}"));
        let shown = format!("/dev/nvidia{minor}");
        let reason = match std::fs::symlink_metadata(&path) {
            Err(_) => format!("{shown} is missing"),
            Ok(meta) if !meta.file_type().is_char_device() => {
                format!("{shown} is not a character device")
            }
            Ok(meta) => {
                let (got_major, got_minor) = (dev_major(meta.rdev()), dev_minor(meta.rdev()));
                if (got_major, got_minor) == (major, minor) {
                    return Health::Healthy;
                }
                format!("{shown} is {got_major}:{got_minor}, expected {major}:{minor}")
            }
        };
        Health::Unhealthy { reason }
    }
}
