#![doc = include_str!("../README.md")]

mod driver_files;
mod error;
mod inventory_file;
mod nvml;
mod pci_path;
mod proc_files;

use std::fmt;
use std::path::PathBuf;

use gantry_gpu::NodeInventory;
use serde::Serialize;

pub use driver_files::DriverFilesBackend;
pub use error::{Error, Result};
pub use inventory_file::InventoryBackend;
pub use nvml::{watch_xids, NvmlBackend, XidEvent, DEFAULT_NVML_LIB};
pub use pci_path::{pcie_distance, PciPath};
pub use proc_files::{
    dev_major, dev_minor, parse_driver_version, parse_gpu_information, parse_mig_minors,
    parse_proc_devices, GpuInformation, MigMinors, ProcDevices,
};

/// Every NVML function Gantry calls (through `nvml-wrapper`, under the versioned names it resolves).
/// The fake NVML used in tests must export each one; a test checks it does.
pub const NVML_FUNCTIONS: &[&str] = &[
    "nvmlInit_v2",
    "nvmlShutdown",
    "nvmlSystemGetDriverVersion",
    "nvmlSystemGetCudaDriverVersion_v2",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetPciInfo_v3",
    "nvmlDeviceGetMinorNumber",
    "nvmlDeviceGetCudaComputeCapability",
    "nvmlDeviceGetNumaNodeId",
    "nvmlDeviceGetTopologyCommonAncestor",
    "nvmlDeviceGetNvLinkState",
    "nvmlDeviceGetNvLinkRemotePciInfo_v2",
    "nvmlDeviceGetMigMode",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId",
    "nvmlEventSetCreate",
    "nvmlDeviceRegisterEvents",
    "nvmlEventSetWait_v2",
    "nvmlEventSetFree",
];

/// Which discovery backend produced an inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    Nvml,
    DriverFiles,
    Inventory,
}

impl BackendKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::Nvml => "nvml",
            BackendKind::DriverFiles => "driver-files",
            BackendKind::Inventory => "inventory",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a backend found: the inventory, and anything the user should know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub inventory: NodeInventory,
    /// GPUs that could not be read (lost, half-probed), said in words; they are not in the inventory.
    pub warnings: Vec<String>,
}

/// One way of finding the node's GPUs.
pub trait Backend {
    fn kind(&self) -> BackendKind;
    fn discover(&self) -> Result<Discovered>;
}

/// The backend to use, as `--backend` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// The inventory file when one is given; else NVML, then the driver files.
    Auto,
    Only(BackendKind),
}

/// Everything discovery needs, injected: no defaults are read from the environment here.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    pub backend: BackendChoice,
    /// The host root holding `/proc`, `/sys` and `/dev` (`/` on a real node).
    pub root: PathBuf,
    pub inventory: Option<PathBuf>,
    /// The NVML library to load; `libnvidia-ml.so.1` from the loader's search path when `None`.
    pub nvml_lib: Option<PathBuf>,
}

/// The result of [`discover`]: the answer and which backend gave it.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub backend: BackendKind,
    pub inventory: NodeInventory,
    pub warnings: Vec<String>,
    /// Backends tried before the one that answered, with why each failed.
    pub skipped: Vec<(BackendKind, String)>,
}

impl DiscoveryConfig {
    /// The backend of one kind, configured from this config.
    pub fn backend(&self, kind: BackendKind) -> Result<Box<dyn Backend>> {
        Ok(match kind {
            BackendKind::Nvml => {
                Box::new(NvmlBackend::new(self.nvml_lib.clone(), self.root.clone()))
            }
            BackendKind::DriverFiles => Box::new(DriverFilesBackend::new(self.root.clone())),
            BackendKind::Inventory => {
                let path = self.inventory.clone().ok_or(Error::InventoryPathMissing)?;
                Box::new(InventoryBackend::new(path))
            }
        })
    }
}

/// Finds the node's GPUs with the configured backend.
///
/// # Flow
/// `Only(kind)` runs that backend. `Auto` runs the inventory backend when an inventory file is
/// configured, else NVML and, if NVML fails for any reason, the driver files.
///
/// # Errors
/// The chosen backend's error; under `Auto`, [`Error::NoBackend`] naming each backend tried and why it
/// failed.
pub fn discover(config: &DiscoveryConfig) -> Result<Discovery> {
    let order: Vec<BackendKind> = match config.backend {
        BackendChoice::Only(kind) => vec![kind],
        BackendChoice::Auto if config.inventory.is_some() => vec![BackendKind::Inventory],
        BackendChoice::Auto => vec![BackendKind::Nvml, BackendKind::DriverFiles],
    };
    let mut skipped = Vec::new();
    let last = order.len().saturating_sub(1);
    for (i, kind) in order.iter().copied().enumerate() {
        match config.backend(kind)?.discover() {
            Ok(found) => {
                tracing::debug!(backend = %kind, gpus = found.inventory.gpus.len(), "discovery answered");
                return Ok(Discovery {
                    backend: kind,
                    inventory: found.inventory,
                    warnings: found.warnings,
                    skipped,
                });
            }
            Err(err) if i == last && skipped.is_empty() => return Err(err),
            Err(err) => {
                tracing::debug!(backend = %kind, error = %err, "discovery backend failed");
                skipped.push((kind, err.to_string()));
            }
        }
    }
    Err(Error::NoBackend { attempts: skipped })
}
