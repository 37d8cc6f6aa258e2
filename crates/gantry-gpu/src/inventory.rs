//! GPUs, MIG devices and the node inventory snapshot.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{DeviceUuid, Error, PciBusId, Topology};

/// A `MAJOR.MINOR` version pair, printed as `12.4` or `9.0`.
macro_rules! major_minor {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name {
            pub major: u32,
            pub minor: u32,
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}.{}", self.major, self.minor)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(value: &str) -> Result<Self, Error> {
                let invalid = || Error::InvalidCudaVersion {
                    value: value.to_owned(),
                };
                let (major, minor) = value.trim().split_once('.').ok_or_else(invalid)?;
                Ok(Self {
                    major: major.parse().map_err(|_| invalid())?,
                    minor: minor.parse().map_err(|_| invalid())?,
                })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                // YAML reads `9.0` as a float; accept numbers and strings alike.
                let value = serde_yaml::Value::deserialize(deserializer)?;
                let text = match value {
                    serde_yaml::Value::String(s) => s,
                    serde_yaml::Value::Number(n) => n.to_string(),
                    other => {
                        return Err(serde::de::Error::custom(format!(
                            "expected MAJOR.MINOR, found {other:?}"
                        )))
                    }
                };
                let text = if text.contains('.') {
                    text
                } else {
                    format!("{text}.0")
                };
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

major_minor!(
    ComputeCapability,
    "A CUDA compute capability such as `9.0` (H100) or `7.5` (T4)."
);
major_minor!(
    CudaVersion,
    "The CUDA driver API version the driver supports, such as `12.4`."
);

impl CudaVersion {
    /// Converts NVML's integer form (`12040`) to `12.4`.
    pub fn from_nvml(value: i32) -> Option<Self> {
        let value = u32::try_from(value).ok()?;
        Some(Self {
            major: value / 1000,
            minor: (value % 1000) / 10,
        })
    }

    /// NVML's integer form (`12.4` is `12040`).
    pub fn to_nvml(self) -> i32 {
        i32::try_from(self.major * 1000 + self.minor * 10).unwrap_or(i32::MAX)
    }
}

/// Whether a GPU is partitioned into MIG devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigMode {
    /// The GPU cannot be partitioned (pre-Ampere, or a consumer part).
    Unsupported,
    Disabled,
    Enabled,
}

/// A GPU's health as Gantry last saw it.
///
/// Written as `healthy`, or as `{unhealthy: REASON}` (plain YAML, no `!tags`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HealthRepr", into = "HealthRepr")]
pub enum Health {
    #[default]
    Healthy,
    Unhealthy {
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum HealthRepr {
    Word(String),
    Unhealthy { unhealthy: String },
}

impl TryFrom<HealthRepr> for Health {
    type Error = String;

    fn try_from(repr: HealthRepr) -> Result<Self, String> {
        match repr {
            HealthRepr::Word(word) if word == "healthy" => Ok(Health::Healthy),
            HealthRepr::Word(word) => Err(format!(
                "health {word:?} is not known: write `healthy` or `{{unhealthy: REASON}}`"
            )),
            HealthRepr::Unhealthy { unhealthy } => Ok(Health::Unhealthy { reason: unhealthy }),
        }
    }
}

impl From<Health> for HealthRepr {
    fn from(health: Health) -> Self {
        match health {
            Health::Healthy => HealthRepr::Word("healthy".to_owned()),
            Health::Unhealthy { reason } => HealthRepr::Unhealthy { unhealthy: reason },
        }
    }
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// The `nvidia-caps` device minors that grant access to one MIG device: its GPU instance and its
/// compute instance (`/dev/nvidia-caps/nvidia-cap<minor>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigCapsMinors {
    pub gpu_instance: u32,
    pub compute_instance: u32,
}

/// One MIG device carved out of a parent GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigDevice {
    pub uuid: DeviceUuid,
    /// The profile as NVIDIA names it, such as `1g.10gb` or `3g.40gb`.
    pub profile: String,
    pub gpu_instance_id: u32,
    pub compute_instance_id: u32,
    pub memory_mib: Option<u64>,
    pub caps_minors: Option<MigCapsMinors>,
}

/// One physical GPU on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// NVML's index (PCI bus order), which `nvidia-smi` shows.
    pub index: u32,
    pub uuid: DeviceUuid,
    pub product_name: String,
    pub memory_mib: Option<u64>,
    pub pci_bus_id: PciBusId,
    pub numa_node: Option<u32>,
    /// The minor of `/dev/nvidia<minor>` (major 195).
    pub minor: u32,
    pub compute_capability: Option<ComputeCapability>,
    pub mig_mode: Option<MigMode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mig_devices: Vec<MigDevice>,
    #[serde(default)]
    pub health: Health,
}

impl Gpu {
    /// The device node path relative to `/dev`.
    pub fn device_node_name(&self) -> String {
        format!("nvidia{}", self.minor)
    }
}

/// Everything Gantry knows about one node's GPUs at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInventory {
    pub driver_version: Option<String>,
    pub cuda_driver_version: Option<CudaVersion>,
    pub gpus: Vec<Gpu>,
    #[serde(default)]
    pub topology: Topology,
}

/// `/dev/nvidia255` is the control device, never a GPU.
const MAX_GPU_MINOR: u32 = 254;

impl NodeInventory {
    /// Parses and validates an inventory YAML document; errors name `path` and the line.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, Error> {
        let inventory: NodeInventory =
            serde_yaml::from_str(text).map_err(|err| Error::InventoryFile {
                path: path.to_owned(),
                message: match err.location() {
                    Some(loc) => format!(
                        "line {} column {}: {}",
                        loc.line(),
                        loc.column(),
                        strip_location(&err.to_string())
                    ),
                    None => err.to_string(),
                },
            })?;
        inventory.validated().map_err(|err| Error::InventoryFile {
            path: path.to_owned(),
            message: err.to_string(),
        })
    }

    /// Checks the invariants every consumer relies on and returns the inventory with GPUs sorted by
    /// index and topology pairs sorted: unique indices, UUIDs, minors and bus ids; MIG devices only on
    /// MIG-enabled GPUs; topology naming only GPUs that exist.
    pub fn validated(mut self) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidInventory { reason };
        self.gpus.sort_by_key(|g| g.index);
        let mut indices = BTreeSet::new();
        let mut uuids = BTreeSet::new();
        let mut minors = BTreeSet::new();
        let mut buses = BTreeSet::new();
        let mut caps = BTreeSet::new();
        for gpu in &self.gpus {
            if !indices.insert(gpu.index) {
                return Err(invalid(format!("GPU index {} appears twice", gpu.index)));
            }
            if gpu.uuid.is_mig() {
                return Err(invalid(format!(
                    "GPU {} has a MIG UUID {}",
                    gpu.index, gpu.uuid
                )));
            }
            if !uuids.insert(gpu.uuid.clone()) {
                return Err(invalid(format!("UUID {} appears twice", gpu.uuid)));
            }
            if gpu.minor > MAX_GPU_MINOR {
                return Err(invalid(format!(
                    "GPU {} has device minor {}; GPU minors are 0-{MAX_GPU_MINOR} (255 is nvidiactl)",
                    gpu.index, gpu.minor
                )));
            }
            if !minors.insert(gpu.minor) {
                return Err(invalid(format!("device minor {} appears twice", gpu.minor)));
            }
            if !buses.insert(gpu.pci_bus_id) {
                return Err(invalid(format!(
                    "PCI bus id {} appears twice",
                    gpu.pci_bus_id
                )));
            }
            if gpu.product_name.trim().is_empty() {
                return Err(invalid(format!(
                    "GPU {} has an empty product name",
                    gpu.index
                )));
            }
            if !gpu.mig_devices.is_empty() && gpu.mig_mode != Some(MigMode::Enabled) {
                return Err(invalid(format!(
                    "GPU {} lists MIG devices but its mig_mode is not enabled",
                    gpu.index
                )));
            }
            for mig in &gpu.mig_devices {
                if !mig.uuid.is_mig() {
                    return Err(invalid(format!(
                        "MIG device of GPU {} has a non-MIG UUID {}",
                        gpu.index, mig.uuid
                    )));
                }
                if !uuids.insert(mig.uuid.clone()) {
                    return Err(invalid(format!("UUID {} appears twice", mig.uuid)));
                }
                if !is_valid_mig_profile(&mig.profile) {
                    return Err(invalid(format!(
                        "MIG device {} has profile {:?}; expected a name such as 1g.10gb",
                        mig.uuid, mig.profile
                    )));
                }
                if let Some(minors) = mig.caps_minors {
                    // A GPU instance's access minor is shared by its compute instances.
                    caps.insert((gpu.index, mig.gpu_instance_id, minors.gpu_instance));
                }
            }
        }
        let mut caps_minor_owner = std::collections::BTreeMap::new();
        for (gpu, gi, minor) in caps {
            if let Some((other_gpu, other_gi)) = caps_minor_owner.insert(minor, (gpu, gi)) {
                return Err(invalid(format!(
                    "nvidia-caps minor {minor} is given to GPU {other_gpu} instance {other_gi} and GPU {gpu} instance {gi}"
                )));
            }
        }
        self.topology = std::mem::take(&mut self.topology).normalised()?;
        for link in &self.topology.links {
            for index in link.gpus {
                if !indices.contains(&index) {
                    return Err(invalid(format!(
                        "topology names GPU {index}, which the inventory does not have"
                    )));
                }
            }
        }
        Ok(self)
    }

    pub fn gpu_by_uuid(&self, uuid: &str) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.uuid.as_str() == uuid)
    }

    pub fn gpu_by_index(&self, index: u32) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.index == index)
    }

    /// The inventory as YAML, byte-stable for the same content.
    pub fn to_yaml(&self) -> Result<String, Error> {
        serde_yaml::to_string(self).map_err(|err| Error::InvalidInventory {
            reason: err.to_string(),
        })
    }
}

/// MIG profiles look like `1g.10gb`, `7g.80gb` or `1g.10gb+me`.
fn is_valid_mig_profile(profile: &str) -> bool {
    let (slices, rest) = match profile.split_once("g.") {
        Some(parts) => parts,
        None => return false,
    };
    let memory = rest.split('+').next().unwrap_or_default();
    !slices.is_empty()
        && slices.bytes().all(|b| b.is_ascii_digit())
        && memory.ends_with("gb")
        && memory.len() > 2
        && memory[..memory.len() - 2]
            .bytes()
            .all(|b| b.is_ascii_digit())
        && profile
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'+')
}

/// serde_yaml appends " at line L column C" to messages; the location is printed separately.
fn strip_location(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(pos) => &message[..pos],
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Link;

    const TWO_GPUS: &str = r#"
driver_version: "550.54.15"
cuda_driver_version: "12.4"
gpus:
  - index: 0
    uuid: GPU-00000000-0000-0000-0000-000000000000
    product_name: Tesla T4
    memory_mib: 15360
    pci_bus_id: "0000:3b:00.0"
    numa_node: 0
    minor: 0
    compute_capability: 7.5
    mig_mode: unsupported
  - index: 1
    uuid: GPU-11111111-1111-1111-1111-111111111111
    product_name: Tesla T4
    memory_mib: 15360
    pci_bus_id: "0000:d8:00.0"
    numa_node: 1
    minor: 1
    compute_capability: "7.5"
    mig_mode: unsupported
    health:
      unhealthy: XID 79
topology:
  links:
    - gpus: [1, 0]
      link: SYS
"#;

    fn parse(text: &str) -> Result<NodeInventory, Error> {
        NodeInventory::from_yaml(text, Path::new("test.yaml"))
    }

    #[test]
    fn parses_and_round_trips_byte_stable() {
        let inv = parse(TWO_GPUS).unwrap();
        assert_eq!(inv.gpus.len(), 2);
        assert_eq!(
            inv.cuda_driver_version,
            Some(CudaVersion {
                major: 12,
                minor: 4
            })
        );
        assert_eq!(inv.gpus[0].compute_capability.unwrap().to_string(), "7.5");
        assert_eq!(
            inv.topology.link(0, 1),
            Some(Link::Pcie(crate::PcieDistance::Sys))
        );
        assert!(!inv.gpus[1].health.is_healthy());
        let yaml = inv.to_yaml().unwrap();
        let again = parse(&yaml).unwrap();
        assert_eq!(again, inv);
        assert_eq!(again.to_yaml().unwrap(), yaml);
    }

    #[test]
    fn unknown_field_names_file_and_line() {
        let text = TWO_GPUS.replace("    minor: 1\n", "    minor: 1\n    colour: green\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("test.yaml: line 21"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in ["", "[", "gpus: 3", "gpus:\n  - index: -1", "\u{0}\u{1}"] {
            assert!(parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn inconsistent_inventories_are_rejected() {
        let cases = [
            ("    minor: 1\n", "    minor: 0\n", "minor 0 appears twice"),
            ("index: 1", "index: 0", "index 0 appears twice"),
            (
                "GPU-11111111-1111-1111-1111-111111111111",
                "GPU-00000000-0000-0000-0000-000000000000",
                "appears twice",
            ),
            ("gpus: [1, 0]", "gpus: [1, 7]", "GPU 7"),
            ("gpus: [1, 0]", "gpus: [1, 1]", "to itself"),
            ("    minor: 1\n", "    minor: 255\n", "255 is nvidiactl"),
            ("0000:d8:00.0", "0000:3b:00.0", "bus id"),
        ];
        for (from, to, expected) in cases {
            let text = TWO_GPUS.replacen(from, to, 1);
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{from} -> {to}: {err}");
        }
    }

    #[test]
    fn mig_profiles() {
        for good in ["1g.10gb", "7g.80gb", "1g.10gb+me", "3g.40gb"] {
            assert!(is_valid_mig_profile(good), "{good}");
        }
        for bad in [
            "",
            "1g",
            "g.10gb",
            "1g.gb",
            "../1g.5gb",
            "1g.5gb/x",
            "1g.10",
        ] {
            assert!(!is_valid_mig_profile(bad), "{bad}");
        }
    }

    #[test]
    fn cuda_version_from_nvml_integer() {
        assert_eq!(CudaVersion::from_nvml(12040).unwrap().to_string(), "12.4");
        assert_eq!(CudaVersion::from_nvml(11080).unwrap().to_string(), "11.8");
        assert_eq!(CudaVersion::from_nvml(12040).unwrap().to_nvml(), 12040);
        assert_eq!(CudaVersion::from_nvml(-1), None);
    }
}
