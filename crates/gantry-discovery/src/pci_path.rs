//! PCIe distance between GPUs from their place in the `/sys/devices` tree.

use std::path::Path;

use gantry_gpu::{PciBusId, PcieDistance};

/// Where a PCI device sits: its root complex (`pci0000:36`) and the chain of PCI functions from the
/// root port down to the device itself (the last element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciPath {
    pub root_complex: String,
    pub chain: Vec<PciBusId>,
}

impl PciPath {
    /// Parses the target of `/sys/bus/pci/devices/<bus-id>`, such as
    /// `../../../devices/pci0000:36/0000:36:00.0/0000:37:00.0/0000:3b:00.0`.
    pub fn from_sysfs_target(target: &Path) -> Option<Self> {
        let mut components = target.components().filter_map(|c| c.as_os_str().to_str());
        let root_complex = components
            .by_ref()
            .find(|c| c.starts_with("pci") && c.len() > 3 && c[3..].contains(':'))?
            .to_owned();
        let chain: Vec<PciBusId> = components.map_while(|c| c.parse().ok()).collect();
        if chain.is_empty() {
            return None;
        }
        Some(Self {
            root_complex,
            chain,
        })
    }

    /// The bridges above the device, root port first.
    fn bridges(&self) -> &[PciBusId] {
        &self.chain[..self.chain.len().saturating_sub(1)]
    }
}

/// The PCIe distance between two GPUs, as `nvidia-smi topo -m` names it, or `None` where the facts at
/// hand cannot tell (a path or a NUMA node unknown).
///
/// Different NUMA nodes are `SYS`; different root complexes on one NUMA node are `NODE`; on one root
/// complex, no shared bridge is `PHB`, a shared switch with one downstream port on each side is `PIX`,
/// and anything deeper is `PXB`.
pub fn pcie_distance(
    a: Option<&PciPath>,
    b: Option<&PciPath>,
    numa_a: Option<u32>,
    numa_b: Option<u32>,
) -> Option<PcieDistance> {
    if let (Some(x), Some(y)) = (numa_a, numa_b) {
        if x != y {
            return Some(PcieDistance::Sys);
        }
    }
    let (a, b) = (a?, b?);
    if a.root_complex != b.root_complex {
        return match (numa_a, numa_b) {
            (Some(_), Some(_)) => Some(PcieDistance::Node),
            _ => None,
        };
    }
    let (ba, bb) = (a.bridges(), b.bridges());
    let common = ba.iter().zip(bb).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return Some(PcieDistance::Phb);
    }
    if ba.len() - common <= 1 && bb.len() - common <= 1 {
        Some(PcieDistance::Pix)
    } else {
        Some(PcieDistance::Pxb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> PciPath {
        PciPath::from_sysfs_target(Path::new(text)).unwrap()
    }

    #[test]
    fn parses_sysfs_link_targets() {
        let p = path("../../../devices/pci0000:36/0000:36:00.0/0000:37:00.0/0000:3b:00.0");
        assert_eq!(p.root_complex, "pci0000:36");
        assert_eq!(p.chain.len(), 3);
        assert_eq!(p.chain[2].to_string(), "0000:3b:00.0");
        assert!(PciPath::from_sysfs_target(Path::new("../../../devices/platform/foo")).is_none());
        assert!(PciPath::from_sysfs_target(Path::new("")).is_none());
    }

    #[test]
    fn distances_follow_nvidia_smi_legend() {
        let switch_a =
            path("/sys/devices/pci0000:36/0000:36:00.0/0000:37:00.0/0000:38:08.0/0000:3b:00.0");
        let switch_b =
            path("/sys/devices/pci0000:36/0000:36:00.0/0000:37:00.0/0000:38:10.0/0000:3c:00.0");
        let nested = path("/sys/devices/pci0000:36/0000:36:00.0/0000:37:00.0/0000:38:18.0/0000:39:00.0/0000:3a:00.0/0000:3d:00.0");
        let port2 = path("/sys/devices/pci0000:36/0000:36:02.0/0000:40:00.0");
        let other_rc = path("/sys/devices/pci0000:ae/0000:ae:00.0/0000:af:00.0");
        let d = |a: &PciPath, b: &PciPath, na: u32, nb: u32| {
            pcie_distance(Some(a), Some(b), Some(na), Some(nb))
        };
        assert_eq!(d(&switch_a, &switch_b, 0, 0), Some(PcieDistance::Pix));
        assert_eq!(d(&switch_a, &nested, 0, 0), Some(PcieDistance::Pxb));
        assert_eq!(d(&switch_a, &port2, 0, 0), Some(PcieDistance::Phb));
        assert_eq!(d(&switch_a, &other_rc, 0, 0), Some(PcieDistance::Node));
        assert_eq!(d(&switch_a, &other_rc, 0, 1), Some(PcieDistance::Sys));
        // Symmetric.
        assert_eq!(d(&nested, &switch_a, 0, 0), Some(PcieDistance::Pxb));
        // Unknown facts give no answer rather than a guess, except NUMA nodes that differ.
        assert_eq!(
            pcie_distance(Some(&switch_a), Some(&other_rc), None, Some(0)),
            None
        );
        assert_eq!(
            pcie_distance(None, Some(&other_rc), Some(1), Some(0)),
            Some(PcieDistance::Sys)
        );
        assert_eq!(pcie_distance(None, Some(&other_rc), Some(0), Some(0)), None);
    }
}
