//! The discovery flags, one argument group shared by every command that finds GPUs.

use std::path::PathBuf;

use anyhow::Context;
use gantry_discovery::{BackendChoice, BackendKind, Discovery, DiscoveryConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// The inventory file if --inventory is given, else NVML, then the driver files.
    Auto,
    /// NVML (libnvidia-ml.so.1), loaded at run time.
    Nvml,
    /// The driver's files under --root: /proc/driver/nvidia, /proc/devices, /sys, /dev.
    DriverFiles,
    /// A declared inventory (YAML) named by --inventory.
    Inventory,
}

/// How to find the node's GPUs.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "GPU discovery")]
pub struct DiscoveryArgs {
    /// Discovery backend.
    #[arg(long, value_enum, default_value = "auto", env = "GANTRY_BACKEND")]
    pub backend: BackendArg,

    /// Host root holding /proc, /sys and /dev (for a containerised agent, the host's / mounted inside).
    #[arg(long, default_value = "/", env = "GANTRY_ROOT")]
    pub root: PathBuf,

    /// Inventory file (YAML) for --backend inventory; see fixtures/inventory/ for examples.
    #[arg(long, env = "GANTRY_INVENTORY", value_name = "FILE")]
    pub inventory: Option<PathBuf>,

    /// NVML library to load instead of libnvidia-ml.so.1 from the loader's search path.
    #[arg(long, env = "GANTRY_NVML_LIB", value_name = "PATH")]
    pub nvml_lib: Option<PathBuf>,
}

impl DiscoveryArgs {
    pub fn config(&self) -> DiscoveryConfig {
        DiscoveryConfig {
            backend: match self.backend {
                BackendArg::Auto => BackendChoice::Auto,
                BackendArg::Nvml => BackendChoice::Only(BackendKind::Nvml),
                BackendArg::DriverFiles => BackendChoice::Only(BackendKind::DriverFiles),
                BackendArg::Inventory => BackendChoice::Only(BackendKind::Inventory),
            },
            root: self.root.clone(),
            inventory: self.inventory.clone(),
            nvml_lib: self.nvml_lib.clone(),
        }
    }

    /// Runs discovery, logging which backend answered and why others did not.
    pub fn discover(&self) -> anyhow::Result<Discovery> {
        let found =
            gantry_discovery::discover(&self.config()).context("finding the node's GPUs")?;
        for (backend, reason) in &found.skipped {
            tracing::info!("{backend} backend did not answer: {reason}");
        }
        tracing::info!(
            "{} GPU(s) found by the {} backend",
            found.inventory.gpus.len(),
            found.backend
        );
        for warning in &found.warnings {
            tracing::warn!("{warning}");
        }
        Ok(found)
    }
}
