use std::path::PathBuf;

/// Errors of the GPU domain model: malformed identifiers and inconsistent inventories.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "invalid PCI bus id {value:?}: expected DOMAIN:BUS:DEVICE.FUNCTION such as 0000:17:00.0"
    )]
    InvalidPciBusId { value: String },

    #[error("invalid device UUID {value:?}: expected {prefix}- followed by hex digits and dashes")]
    InvalidUuid { value: String, prefix: &'static str },

    #[error(
        "invalid link {value:?}: expected NV<lanes> (such as NV18), PIX, PXB, PHB, NODE or SYS"
    )]
    InvalidLink { value: String },

    #[error("invalid CUDA version {value:?}: expected MAJOR.MINOR such as 12.4")]
    InvalidCudaVersion { value: String },

    #[error("invalid inventory: {reason}")]
    InvalidInventory { reason: String },

    #[error("{}: {message}", path.display())]
    InventoryFile { path: PathBuf, message: String },
}

impl Error {
    /// A short stable label for metrics and condition reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidPciBusId { .. } => "invalid_pci_bus_id",
            Error::InvalidUuid { .. } => "invalid_uuid",
            Error::InvalidLink { .. } => "invalid_link",
            Error::InvalidCudaVersion { .. } => "invalid_cuda_version",
            Error::InvalidInventory { .. } => "invalid_inventory",
            Error::InventoryFile { .. } => "inventory_file",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
