use std::path::PathBuf;

use crate::BackendKind;

/// Discovery errors: each names the file, library or NVML call involved and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load NVML from {lib}: {reason}; is the NVIDIA driver installed? Point --nvml-lib at libnvidia-ml.so.1, or use --backend driver-files")]
    NvmlLoad { lib: String, reason: String },

    #[error("NVML {call} failed{}: {reason}", device.map(|d| format!(" for GPU {d}")).unwrap_or_default())]
    Nvml {
        call: &'static str,
        device: Option<u32>,
        reason: String,
    },

    #[error("no NVIDIA driver under {}: {} does not exist; is the nvidia kernel module loaded (lsmod | grep nvidia)? Use --root to point at the host root", root.display(), path.display())]
    DriverNotLoaded { root: PathBuf, path: PathBuf },

    #[error("{}: {message}", path.display())]
    DriverFile { path: PathBuf, message: String },

    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the inventory backend needs an inventory file: pass --inventory FILE")]
    InventoryPathMissing,

    #[error(transparent)]
    Inventory(#[from] gantry_gpu::Error),

    #[error("no GPU discovery backend answered: {}", attempts.iter().map(|(k, e)| format!("{k}: {e}")).collect::<Vec<_>>().join("; "))]
    NoBackend {
        attempts: Vec<(BackendKind, String)>,
    },
}

impl Error {
    /// A short stable label for metrics and condition reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NvmlLoad { .. } => "nvml_load",
            Error::Nvml { .. } => "nvml",
            Error::DriverNotLoaded { .. } => "driver_not_loaded",
            Error::DriverFile { .. } => "driver_file",
            Error::Io { .. } => "io",
            Error::InventoryPathMissing => "inventory_path_missing",
            Error::Inventory(_) => "inventory",
            Error::NoBackend { .. } => "no_backend",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
