//! The fake's state and answers, in safe Rust: what each NVML call returns for a fixture.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gantry_gpu::{Link, MigMode, NodeInventory, PciBusId, PcieDistance};
use nvml_wrapper_sys::bindings as sys;
use serde::Deserialize;

pub type Code = sys::nvmlReturn_t;
pub const SUCCESS: Code = sys::nvmlReturn_enum_NVML_SUCCESS;
pub const INVALID_ARGUMENT: Code = sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
pub const NOT_SUPPORTED: Code = sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
pub const NOT_FOUND: Code = sys::nvmlReturn_enum_NVML_ERROR_NOT_FOUND;
pub const UNINITIALIZED: Code = sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED;
pub const GPU_IS_LOST: Code = sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST;
pub const TIMEOUT: Code = sys::nvmlReturn_enum_NVML_ERROR_TIMEOUT;
pub const DRIVER_NOT_LOADED: Code = sys::nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED;
pub const UNKNOWN: Code = sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN;

const MAX_LINKS: u32 = sys::NVML_NVLINK_MAX_LINKS;
const XID_EVENT: u64 = sys::nvmlEventTypeXidCriticalError as u64;
const MAX_MIG_DEVICES: u32 = 7;

/// A GPU falls off the bus once `after_calls` NVML calls have been made.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LostFault {
    pub gpu: u32,
    #[serde(default)]
    pub after_calls: u64,
}

/// An XID error on a GPU, delivered by the `after_waits`-th `nvmlEventSetWait` on a set that listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XidFault {
    pub gpu: u32,
    pub xid: u64,
    #[serde(default)]
    pub after_waits: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    pub init_error: Option<u32>,
    #[serde(default)]
    pub lost: Vec<LostFault>,
    #[serde(default)]
    pub xids: Vec<XidFault>,
}

/// The wrapper form of a fixture: an inventory file plus faults to inject.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeConfig {
    pub inventory: PathBuf,
    #[serde(default)]
    pub faults: Faults,
}

#[derive(Debug, Default)]
struct EventSet {
    registered: BTreeSet<u32>,
    waits: u64,
}

/// One device handle: a whole GPU (by inventory position) or one of its MIG devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handle {
    Gpu(usize),
    Mig(usize, usize),
}

impl Handle {
    /// Handles travel through C as opaque non-null pointers; the fake encodes positions in them.
    pub fn encode(self) -> usize {
        match self {
            Handle::Gpu(g) => (g + 1) << 8,
            Handle::Mig(g, m) => ((g + 1) << 8) | (m + 1),
        }
    }

    pub fn decode(value: usize) -> Option<Self> {
        let gpu = (value >> 8).checked_sub(1)?;
        match value & 0xff {
            0 => Some(Handle::Gpu(gpu)),
            m => Some(Handle::Mig(gpu, m - 1)),
        }
    }
}

/// A loaded fixture and everything NVML calls have changed since.
#[derive(Debug)]
pub struct Fake {
    inventory: NodeInventory,
    faults: Faults,
    nvlinks: Vec<Vec<PciBusId>>,
    pub init_count: u32,
    calls: u64,
    sets: BTreeMap<usize, EventSet>,
    next_set: usize,
    delivered: BTreeSet<usize>,
}

impl Fake {
    /// Loads a fixture: an inventory file, or a [`FakeConfig`] naming one.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read fake NVML fixture {}: {e}", path.display()))?;
        let value: serde_yaml::Value = serde_yaml::from_str(&text)
            .map_err(|e| format!("fake NVML fixture {}: {e}", path.display()))?;
        let (inventory_path, inventory_text, faults) = if value.get("inventory").is_some() {
            let config: FakeConfig = serde_yaml::from_value(value)
                .map_err(|e| format!("fake NVML fixture {}: {e}", path.display()))?;
            let base = path.parent().unwrap_or(Path::new("."));
            let inv_path = base.join(&config.inventory);
            let inv_text = std::fs::read_to_string(&inv_path)
                .map_err(|e| format!("cannot read inventory {}: {e}", inv_path.display()))?;
            (inv_path, inv_text, config.faults)
        } else {
            (path.to_owned(), text, Faults::default())
        };
        let inventory = NodeInventory::from_yaml(&inventory_text, &inventory_path)
            .map_err(|e| e.to_string())?;
        Ok(Self::new(inventory, faults))
    }

    pub fn new(inventory: NodeInventory, faults: Faults) -> Self {
        let nvlinks = nvlink_remotes(&inventory);
        Self {
            inventory,
            faults,
            nvlinks,
            init_count: 0,
            calls: 0,
            sets: BTreeMap::new(),
            next_set: 1,
            delivered: BTreeSet::new(),
        }
    }

    pub fn init_error(&self) -> Option<Code> {
        self.faults.init_error
    }

    /// Counts one NVML call (the clock of `lost` faults).
    pub fn tick(&mut self) {
        self.calls += 1;
    }

    fn is_lost(&self, gpu: usize) -> bool {
        let Some(index) = self.inventory.gpus.get(gpu).map(|g| g.index) else {
            return false;
        };
        self.faults
            .lost
            .iter()
            .any(|f| f.gpu == index && self.calls > f.after_calls)
    }

    pub fn driver_version(&self) -> Result<String, Code> {
        self.inventory.driver_version.clone().ok_or(NOT_SUPPORTED)
    }

    pub fn cuda_driver_version(&self) -> Result<i32, Code> {
        self.inventory
            .cuda_driver_version
            .map(|v| v.to_nvml())
            .ok_or(NOT_SUPPORTED)
    }

    pub fn device_count(&self) -> u32 {
        u32::try_from(self.inventory.gpus.len()).unwrap_or(u32::MAX)
    }

    pub fn handle_by_index(&self, index: u32) -> Result<usize, Code> {
        let pos = usize::try_from(index).map_err(|_| INVALID_ARGUMENT)?;
        if pos >= self.inventory.gpus.len() {
            return Err(INVALID_ARGUMENT);
        }
        if self.is_lost(pos) {
            return Err(GPU_IS_LOST);
        }
        Ok(Handle::Gpu(pos).encode())
    }

    /// Resolves a handle to its GPU position, failing for lost GPUs as NVML does.
    fn resolve(&self, handle: usize) -> Result<Handle, Code> {
        let decoded = Handle::decode(handle).ok_or(INVALID_ARGUMENT)?;
        let gpu = match decoded {
            Handle::Gpu(g) => g,
            Handle::Mig(g, m) => {
                let parent = self.inventory.gpus.get(g).ok_or(INVALID_ARGUMENT)?;
                if m >= parent.mig_devices.len() {
                    return Err(INVALID_ARGUMENT);
                }
                g
            }
        };
        if gpu >= self.inventory.gpus.len() {
            return Err(INVALID_ARGUMENT);
        }
        if self.is_lost(gpu) {
            return Err(GPU_IS_LOST);
        }
        Ok(decoded)
    }

    fn gpu(&self, pos: usize) -> &gantry_gpu::Gpu {
        &self.inventory.gpus[pos]
    }

    pub fn uuid(&self, handle: usize) -> Result<String, Code> {
        Ok(match self.resolve(handle)? {
            Handle::Gpu(g) => self.gpu(g).uuid.to_string(),
            Handle::Mig(g, m) => self.gpu(g).mig_devices[m].uuid.to_string(),
        })
    }

    pub fn name(&self, handle: usize) -> Result<String, Code> {
        Ok(match self.resolve(handle)? {
            Handle::Gpu(g) => self.gpu(g).product_name.clone(),
            Handle::Mig(g, m) => format!(
                "{} MIG {}",
                self.gpu(g).product_name,
                self.gpu(g).mig_devices[m].profile
            ),
        })
    }

    pub fn memory_bytes(&self, handle: usize) -> Result<u64, Code> {
        let mib = match self.resolve(handle)? {
            Handle::Gpu(g) => self.gpu(g).memory_mib,
            Handle::Mig(g, m) => self.gpu(g).mig_devices[m].memory_mib,
        };
        mib.map(|m| m * 1024 * 1024).ok_or(NOT_SUPPORTED)
    }

    fn parent(&self, handle: usize) -> Result<usize, Code> {
        match self.resolve(handle)? {
            Handle::Gpu(g) | Handle::Mig(g, _) => Ok(g),
        }
    }

    pub fn pci_bus_id(&self, handle: usize) -> Result<PciBusId, Code> {
        Ok(self.gpu(self.parent(handle)?).pci_bus_id)
    }

    pub fn minor(&self, handle: usize) -> Result<u32, Code> {
        match self.resolve(handle)? {
            Handle::Gpu(g) => Ok(self.gpu(g).minor),
            Handle::Mig(..) => Err(NOT_SUPPORTED),
        }
    }

    pub fn compute_capability(&self, handle: usize) -> Result<(i32, i32), Code> {
        let cc = self
            .gpu(self.parent(handle)?)
            .compute_capability
            .ok_or(NOT_SUPPORTED)?;
        Ok((
            i32::try_from(cc.major).map_err(|_| UNKNOWN)?,
            i32::try_from(cc.minor).map_err(|_| UNKNOWN)?,
        ))
    }

    pub fn numa_node(&self, handle: usize) -> Result<u32, Code> {
        self.gpu(self.parent(handle)?)
            .numa_node
            .ok_or(NOT_SUPPORTED)
    }

    pub fn common_ancestor(&self, a: usize, b: usize) -> Result<u32, Code> {
        let (ga, gb) = match (self.resolve(a)?, self.resolve(b)?) {
            (Handle::Gpu(x), Handle::Gpu(y)) => (x, y),
            _ => return Err(NOT_SUPPORTED),
        };
        if ga == gb {
            return Ok(sys::nvmlGpuLevel_enum_NVML_TOPOLOGY_INTERNAL);
        }
        let (ia, ib) = (self.gpu(ga).index, self.gpu(gb).index);
        let level = match self.inventory.topology.link(ia, ib) {
            Some(Link::Pcie(distance)) => match distance {
                PcieDistance::Pix => sys::nvmlGpuLevel_enum_NVML_TOPOLOGY_SINGLE,
                PcieDistance::Pxb => sys::nvmlGpuLevel_enum_NVML_TOPOLOGY_MULTIPLE,
                PcieDistance::Phb => sys::nvmlGpuLevel_enum_NVML_TOPOLOGY_HOSTBRIDGE,
                PcieDistance::Node => sys::nvmlGpuLevel_enum_NVML_TOPOLOGY_NODE,
                PcieDistance::Sys => sys::nvmlGpuLevel_enum_NVML_TOPOLOGY_SYSTEM,
            },
            // NVLink pairs and unknown pairs: the PCIe path follows the NUMA placement.
            _ if self.gpu(ga).numa_node == self.gpu(gb).numa_node => {
                sys::nvmlGpuLevel_enum_NVML_TOPOLOGY_NODE
            }
            _ => sys::nvmlGpuLevel_enum_NVML_TOPOLOGY_SYSTEM,
        };
        Ok(level)
    }

    fn link_remote(&self, handle: usize, link: u32) -> Result<Option<PciBusId>, Code> {
        let g = match self.resolve(handle)? {
            Handle::Gpu(g) => g,
            Handle::Mig(..) => return Err(NOT_SUPPORTED),
        };
        if link >= MAX_LINKS {
            return Err(INVALID_ARGUMENT);
        }
        let pos = usize::try_from(link).map_err(|_| INVALID_ARGUMENT)?;
        Ok(self.nvlinks[g].get(pos).copied())
    }

    pub fn nvlink_active(&self, handle: usize, link: u32) -> Result<bool, Code> {
        Ok(self.link_remote(handle, link)?.is_some())
    }

    pub fn nvlink_remote(&self, handle: usize, link: u32) -> Result<PciBusId, Code> {
        self.link_remote(handle, link)?.ok_or(NOT_SUPPORTED)
    }

    pub fn mig_mode(&self, handle: usize) -> Result<(u32, u32), Code> {
        let g = match self.resolve(handle)? {
            Handle::Gpu(g) => g,
            Handle::Mig(..) => return Err(NOT_SUPPORTED),
        };
        match self.gpu(g).mig_mode {
            Some(MigMode::Enabled) => Ok((1, 1)),
            Some(MigMode::Disabled) => Ok((0, 0)),
            Some(MigMode::Unsupported) | None => Err(NOT_SUPPORTED),
        }
    }

    pub fn max_mig_devices(&self, handle: usize) -> Result<u32, Code> {
        self.mig_mode(handle)?;
        Ok(MAX_MIG_DEVICES)
    }

    pub fn mig_handle(&self, handle: usize, index: u32) -> Result<usize, Code> {
        let (current, _) = self.mig_mode(handle)?;
        let Handle::Gpu(g) = self.resolve(handle)? else {
            return Err(INVALID_ARGUMENT);
        };
        let pos = usize::try_from(index).map_err(|_| INVALID_ARGUMENT)?;
        if current == 0 || index >= MAX_MIG_DEVICES {
            return Err(INVALID_ARGUMENT);
        }
        if pos >= self.gpu(g).mig_devices.len() {
            return Err(NOT_FOUND);
        }
        Ok(Handle::Mig(g, pos).encode())
    }

    pub fn instance_ids(&self, handle: usize) -> Result<(u32, u32), Code> {
        match self.resolve(handle)? {
            Handle::Mig(g, m) => {
                let mig = &self.gpu(g).mig_devices[m];
                Ok((mig.gpu_instance_id, mig.compute_instance_id))
            }
            Handle::Gpu(_) => Err(NOT_SUPPORTED),
        }
    }

    pub fn create_set(&mut self) -> usize {
        let id = self.next_set;
        self.next_set += 1;
        self.sets.insert(id, EventSet::default());
        id
    }

    pub fn free_set(&mut self, set: usize) -> Result<(), Code> {
        self.sets.remove(&set).map(|_| ()).ok_or(INVALID_ARGUMENT)
    }

    pub fn supported_events(&self, handle: usize) -> Result<u64, Code> {
        self.parent(handle)?;
        Ok(XID_EVENT)
    }

    pub fn register(&mut self, handle: usize, types: u64, set: usize) -> Result<(), Code> {
        let g = self.parent(handle)?;
        let index = self.gpu(g).index;
        let entry = self.sets.get_mut(&set).ok_or(INVALID_ARGUMENT)?;
        if types & XID_EVENT != 0 {
            entry.registered.insert(index);
        }
        Ok(())
    }

    /// One wait on a set: an XID whose turn has come, for a GPU the set listens to, or nothing.
    pub fn wait(&mut self, set: usize) -> Result<Option<(usize, u64)>, Code> {
        let entry = self.sets.get_mut(&set).ok_or(INVALID_ARGUMENT)?;
        entry.waits += 1;
        let waits = entry.waits;
        let registered = entry.registered.clone();
        for (i, fault) in self.faults.xids.iter().enumerate() {
            if self.delivered.contains(&i)
                || waits <= fault.after_waits
                || !registered.contains(&fault.gpu)
            {
                continue;
            }
            let Some(pos) = self
                .inventory
                .gpus
                .iter()
                .position(|g| g.index == fault.gpu)
            else {
                continue;
            };
            self.delivered.insert(i);
            return Ok(Some((Handle::Gpu(pos).encode(), fault.xid)));
        }
        Ok(None)
    }
}

/// For each GPU (by position), the remote PCI address of each active NVLink, in link order.
fn nvlink_remotes(inventory: &NodeInventory) -> Vec<Vec<PciBusId>> {
    inventory
        .gpus
        .iter()
        .enumerate()
        .map(|(pos, gpu)| {
            let peers: Vec<(PciBusId, u32)> = inventory
                .gpus
                .iter()
                .filter(|peer| peer.index != gpu.index)
                .filter_map(
                    |peer| match inventory.topology.link(gpu.index, peer.index) {
                        Some(Link::NvLink { lanes }) => Some((peer.pci_bus_id, lanes)),
                        _ => None,
                    },
                )
                .collect();
            let total: u32 = peers.iter().map(|(_, lanes)| lanes).sum();
            if total <= MAX_LINKS {
                peers
                    .into_iter()
                    .flat_map(|(bus, lanes)| (0..lanes).map(move |_| bus))
                    .collect()
            } else {
                // More lanes than a GPU has: the peers are reached through NVSwitches.
                let lanes = peers.iter().map(|(_, l)| *l).max().unwrap_or(0);
                (0..lanes)
                    .map(|link| {
                        let switch = u8::try_from(link % 4).unwrap_or(0);
                        PciBusId::new(0, 0xfe, switch, 0)
                            .unwrap_or_else(|_| inventory.gpus[pos].pci_bus_id)
                    })
                    .collect()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip() {
        for h in [
            Handle::Gpu(0),
            Handle::Gpu(7),
            Handle::Mig(0, 0),
            Handle::Mig(3, 6),
        ] {
            assert_eq!(Handle::decode(h.encode()), Some(h));
            assert_ne!(h.encode(), 0);
        }
        assert_eq!(Handle::decode(0), None);
    }
}
