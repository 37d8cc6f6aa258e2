//! The link between every pair of GPUs, as `nvidia-smi topo -m` shows it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// How far apart two GPUs are on PCIe, nearest first (the legend of `nvidia-smi topo -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PcieDistance {
    /// At most a single PCIe bridge between them.
    Pix,
    /// Multiple PCIe bridges, without crossing the host bridge.
    Pxb,
    /// Through a PCIe host bridge (typically the CPU).
    Phb,
    /// Through the interconnect between host bridges within one NUMA node.
    Node,
    /// Across NUMA nodes, through the SMP interconnect (QPI/UPI/Infinity Fabric).
    Sys,
}

impl PcieDistance {
    pub const ALL: [PcieDistance; 5] = [Self::Pix, Self::Pxb, Self::Phb, Self::Node, Self::Sys];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pix => "PIX",
            Self::Pxb => "PXB",
            Self::Phb => "PHB",
            Self::Node => "NODE",
            Self::Sys => "SYS",
        }
    }
}

/// The connection between two GPUs: NVLink with its lane count, or a PCIe distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    NvLink { lanes: u32 },
    Pcie(PcieDistance),
}

impl Link {
    /// A bandwidth rank: higher is better. NVLink beats any PCIe path, and more lanes beat fewer;
    /// PCIe distances rank by how few hops they take.
    pub fn rank(&self) -> u32 {
        match self {
            Link::NvLink { lanes } => 100 + lanes,
            Link::Pcie(PcieDistance::Pix) => 50,
            Link::Pcie(PcieDistance::Pxb) => 40,
            Link::Pcie(PcieDistance::Phb) => 30,
            Link::Pcie(PcieDistance::Node) => 20,
            Link::Pcie(PcieDistance::Sys) => 10,
        }
    }

    pub fn is_nvlink(&self) -> bool {
        matches!(self, Link::NvLink { .. })
    }
}

impl PartialOrd for Link {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Orders links from best (highest bandwidth) to worst.
impl Ord for Link {
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank().cmp(&self.rank())
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Link::NvLink { lanes } => write!(f, "NV{lanes}"),
            Link::Pcie(distance) => f.write_str(distance.as_str()),
        }
    }
}

impl FromStr for Link {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self, Error> {
        let text = value.trim();
        let invalid = || Error::InvalidLink {
            value: value.to_owned(),
        };
        if let Some(lanes) = text.strip_prefix("NV") {
            let lanes: u32 = lanes.parse().map_err(|_| invalid())?;
            if lanes == 0 || lanes > 64 {
                return Err(invalid());
            }
            return Ok(Link::NvLink { lanes });
        }
        PcieDistance::ALL
            .into_iter()
            .find(|d| d.as_str() == text)
            .map(Link::Pcie)
            .ok_or_else(invalid)
    }
}

impl Serialize for Link {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Link {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The link between one pair of GPUs, named by GPU index (smaller index first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuLink {
    pub gpus: [u32; 2],
    pub link: Link,
}

/// The link matrix of a node, stored as one entry per unordered pair, sorted by pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub links: Vec<GpuLink>,
}

impl Topology {
    /// Builds a topology from pairs in any order; a pair given twice must agree with itself.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u32, u32, Link)>) -> Result<Self, Error> {
        let mut map: BTreeMap<(u32, u32), Link> = BTreeMap::new();
        for (a, b, link) in pairs {
            if a == b {
                return Err(Error::InvalidInventory {
                    reason: format!("topology links GPU {a} to itself"),
                });
            }
            let key = (a.min(b), a.max(b));
            if let Some(previous) = map.insert(key, link) {
                if previous != link {
                    return Err(Error::InvalidInventory {
                        reason: format!(
                            "topology gives GPUs {} and {} two different links: {previous} and {link}",
                            key.0, key.1
                        ),
                    });
                }
            }
        }
        Ok(Self {
            links: map
                .into_iter()
                .map(|((a, b), link)| GpuLink { gpus: [a, b], link })
                .collect(),
        })
    }

    /// The link between GPUs `a` and `b` (by index), if the topology knows it.
    pub fn link(&self, a: u32, b: u32) -> Option<Link> {
        let key = [a.min(b), a.max(b)];
        self.links
            .binary_search_by(|l| l.gpus.cmp(&key))
            .ok()
            .map(|i| self.links[i].link)
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Re-establishes the sorted, one-entry-per-pair invariant (after deserialising).
    pub(crate) fn normalised(self) -> Result<Self, Error> {
        Self::from_pairs(
            self.links
                .into_iter()
                .map(|l| (l.gpus[0], l.gpus[1], l.link)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_parse_and_print_as_nvidia_smi() {
        for text in ["NV18", "NV1", "PIX", "PXB", "PHB", "NODE", "SYS"] {
            assert_eq!(text.parse::<Link>().unwrap().to_string(), text);
        }
        for text in ["NV0", "NV", "nv4", "X", "", "SOC?"] {
            assert!(text.parse::<Link>().is_err(), "{text:?}");
        }
    }

    #[test]
    fn links_order_best_first() {
        let mut links: Vec<Link> = ["SYS", "PIX", "NV4", "NODE", "NV12", "PHB", "PXB"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        links.sort();
        let names: Vec<String> = links.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["NV12", "NV4", "PIX", "PXB", "PHB", "NODE", "SYS"]);
    }

    #[test]
    fn pairs_are_symmetric_and_conflicts_rejected() {
        let nv = Link::NvLink { lanes: 4 };
        let topo =
            Topology::from_pairs([(1, 0, nv), (0, 2, Link::Pcie(PcieDistance::Sys))]).unwrap();
        assert_eq!(topo.link(0, 1), Some(nv));
        assert_eq!(topo.link(1, 0), Some(nv));
        assert_eq!(topo.link(1, 2), None);
        assert_eq!(topo.links[0].gpus, [0, 1]);
        assert!(Topology::from_pairs([(0, 1, nv), (1, 0, Link::Pcie(PcieDistance::Pix))]).is_err());
        assert!(Topology::from_pairs([(3, 3, nv)]).is_err());
    }
}
