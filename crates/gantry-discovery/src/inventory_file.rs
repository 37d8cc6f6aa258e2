use std::path::PathBuf;

use gantry_gpu::NodeInventory;

use crate::{Backend, BackendKind, Discovered, Error, Result};

/// Reads a declared inventory from a YAML file.
#[derive(Debug, Clone)]
pub struct InventoryBackend {
    path: PathBuf,
}

impl InventoryBackend {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

impl Backend for InventoryBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Inventory
    }

    fn discover(&self) -> Result<Discovered> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(Discovered {
            inventory: NodeInventory::from_yaml(&text, &self.path)?,
            warnings: Vec::new(),
        })
    }
}
