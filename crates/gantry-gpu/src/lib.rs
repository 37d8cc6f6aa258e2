#![doc = include_str!("../README.md")]

mod error;
mod ids;
mod inventory;
mod topology;

pub use error::{Error, Result};
pub use ids::{DeviceUuid, PciBusId};
pub use inventory::{
    ComputeCapability, CudaVersion, Gpu, Health, MigCapsMinors, MigDevice, MigMode, NodeInventory,
};
pub use topology::{GpuLink, Link, PcieDistance, Topology};
