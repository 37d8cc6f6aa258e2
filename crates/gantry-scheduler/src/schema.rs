//! The Kubernetes object schema Gantry's scheduler reads and writes: the Node annotation with
//! the node's GPUs (written by the device plugin), GPU node labels, the pod annotation with the
//! GPUs a pod was given (written by the extender at bind), and the gang labels (written by the
//! operator). The full description is `docs/scheduler.md`; this module is its source of truth.

use std::collections::BTreeMap;

use gantry_gpu::{Health, MigMode, NodeInventory};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Node annotation: the node's GPUs as [`NodeGpus`] JSON.
pub const NODE_GPUS_ANNOTATION: &str = "gantry.dev/gpus";
/// Pod annotation: the GPUs the extender assigned at bind, as [`GpuAssignment`] JSON.
pub const POD_ASSIGNMENT_ANNOTATION: &str = "gantry.dev/gpu-assignment";
/// Pod annotation: comma-separated GPU models (products) the pod accepts; absent = any.
pub const POD_GPU_MODELS_ANNOTATION: &str = "gantry.dev/gpu-models";
/// Pod label: the name of the pod's group (gang) within its namespace.
pub const POD_GROUP_LABEL: &str = "gantry.dev/pod-group";
/// Pod label: how many pods of the group must be placed together (a decimal integer ≥ 1).
pub const POD_GROUP_MIN_MEMBER_LABEL: &str = "gantry.dev/pod-group-min-member";

/// Node label: GPU product, label-safe (`Tesla-T4`).
pub const LABEL_PRODUCT: &str = "gantry.dev/gpu.product";
/// Node label: number of GPUs.
pub const LABEL_COUNT: &str = "gantry.dev/gpu.count";
/// Node label: per-GPU memory in MiB.
pub const LABEL_MEMORY: &str = "gantry.dev/gpu.memory-mib";
/// Node label: driver version.
pub const LABEL_DRIVER: &str = "gantry.dev/gpu.driver";
/// Node label: CUDA driver API version.
pub const LABEL_CUDA: &str = "gantry.dev/gpu.cuda";

/// Whole GPUs, as the device plugin advertises them.
pub const RESOURCE_GPU: &str = "nvidia.com/gpu";
/// Shared GPU in thousandths: the device plugin advertises 1000 per GPU.
pub const RESOURCE_GPU_MILLI: &str = "gantry.dev/gpu-milli";

/// The schema version this crate writes and reads.
pub const SCHEMA_VERSION: &str = "v1";

/// The value of [`NODE_GPUS_ANNOTATION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeGpus {
    /// Always [`SCHEMA_VERSION`]; readers reject other versions.
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_version: Option<String>,
    /// By index, ascending.
    pub gpus: Vec<NodeGpu>,
    /// Links between pairs of GPUs, by index (smaller first), sorted.
    #[serde(default)]
    pub topology: Vec<GpuPairLink>,
}

/// One GPU in [`NodeGpus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeGpu {
    pub index: u32,
    pub uuid: String,
    pub product: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Schedulable capacity in milli-GPU: 1000, or 0 for a GPU that is unhealthy or split
    /// into MIG devices (those are not placed by the extender).
    pub milli: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
}

/// A link between two GPUs (`NV18`, `PIX`, `SYS`, ...; the `nvidia-smi topo` names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuPairLink {
    pub gpus: [u32; 2],
    pub link: String,
}

impl NodeGpus {
    /// Renders a node's inventory: what the device plugin publishes.
    pub fn from_inventory(inventory: &NodeInventory) -> Self {
        let mut gpus: Vec<NodeGpu> = inventory
            .gpus
            .iter()
            .map(|g| NodeGpu {
                index: g.index,
                uuid: g.uuid.as_str().to_string(),
                product: g.product_name.clone(),
                memory_mib: g.memory_mib,
                milli: if matches!(g.health, Health::Healthy)
                    && g.mig_mode != Some(MigMode::Enabled)
                    && g.mig_devices.is_empty()
                {
                    gantry_placement::MILLI
                } else {
                    0
                },
                numa_node: g.numa_node,
            })
            .collect();
        gpus.sort_by_key(|g| g.index);
        let topology = inventory
            .topology
            .links
            .iter()
            .map(|l| GpuPairLink {
                gpus: l.gpus,
                link: l.link.to_string(),
            })
            .collect();
        Self {
            version: SCHEMA_VERSION.to_string(),
            driver_version: inventory.driver_version.clone(),
            cuda_version: inventory.cuda_driver_version.map(|v| v.to_string()),
            gpus,
            topology,
        }
    }

    /// The annotation value (compact JSON, byte-stable).
    pub fn to_annotation(&self) -> String {
        // Plain structs of strings and numbers: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and checks an annotation value of node `node`.
    pub fn parse(node: &str, value: &str) -> Result<Self> {
        let bad = |reason: String| Error::BadNodeAnnotation {
            node: node.to_string(),
            reason,
        };
        let parsed: NodeGpus =
            serde_json::from_str(value).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if parsed.version != SCHEMA_VERSION {
            return Err(bad(format!(
                "schema version {:?}, this scheduler reads {SCHEMA_VERSION:?}",
                parsed.version
            )));
        }
        if parsed.gpus.len() > gantry_placement::MAX_GPUS_PER_NODE {
            return Err(bad(format!(
                "{} GPUs, at most {} are supported",
                parsed.gpus.len(),
                gantry_placement::MAX_GPUS_PER_NODE
            )));
        }
        for (i, g) in parsed.gpus.iter().enumerate() {
            if usize::try_from(g.index).ok() != Some(i) {
                return Err(bad(format!(
                    "GPU indices must be 0..{} in order, found {} at position {i}",
                    parsed.gpus.len(),
                    g.index
                )));
            }
            if g.milli > gantry_placement::MILLI {
                return Err(bad(format!("GPU {} has milli {} > 1000", g.index, g.milli)));
            }
        }
        let products: std::collections::BTreeSet<&str> =
            parsed.gpus.iter().map(|g| g.product.as_str()).collect();
        if products.len() > 1 {
            return Err(bad(format!(
                "GPUs of several products ({}); one product per node is supported",
                products.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(parsed)
    }

    /// The node's GPU product, if it has GPUs.
    pub fn product(&self) -> Option<&str> {
        self.gpus.first().map(|g| g.product.as_str())
    }

    /// The node labels for this inventory (product, count, memory, driver, CUDA), with values
    /// made label-safe.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_COUNT.to_string(), self.gpus.len().to_string());
        if let Some(p) = self.product() {
            labels.insert(LABEL_PRODUCT.to_string(), label_value(p));
        }
        if let Some(m) = self.gpus.first().and_then(|g| g.memory_mib) {
            labels.insert(LABEL_MEMORY.to_string(), m.to_string());
        }
        if let Some(d) = &self.driver_version {
            labels.insert(LABEL_DRIVER.to_string(), label_value(d));
        }
        if let Some(c) = &self.cuda_version {
            labels.insert(LABEL_CUDA.to_string(), label_value(c));
        }
        labels
    }
}

/// Makes `value` a valid label value: at most 63 characters of `[A-Za-z0-9._-]`, starting and
/// ending alphanumeric; other characters become `-`.
pub fn label_value(value: &str) -> String {
    let mapped: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The value of [`POD_ASSIGNMENT_ANNOTATION`]: what the extender planned for the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuAssignment {
    pub version: String,
    pub node: String,
    /// By index, ascending.
    pub gpus: Vec<AssignedGpu>,
}

/// One GPU of a [`GpuAssignment`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignedGpu {
    pub index: u32,
    pub uuid: String,
    /// Milli-GPU taken on this GPU (1000 for a whole GPU).
    pub milli: u16,
}

impl GpuAssignment {
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the annotation of pod `pod` (`namespace/name`).
    pub fn parse(pod: &str, value: &str) -> Result<Self> {
        let bad = |reason: String| Error::BadPodAnnotation {
            pod: pod.to_string(),
            reason,
        };
        let parsed: GpuAssignment =
            serde_json::from_str(value).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if parsed.version != SCHEMA_VERSION {
            return Err(bad(format!(
                "schema version {:?}, this scheduler reads {SCHEMA_VERSION:?}",
                parsed.version
            )));
        }
        Ok(parsed)
    }

    /// The device IDs the device plugin's `Allocate` must hand out for this pod, for a
    /// resource advertised as `<uuid>::<n>` replicas (shared) or `<uuid>` (whole): the GPU
    /// UUIDs in index order. This is the bind-to-Allocate handshake's pure half.
    pub fn gpu_uuids(&self) -> Vec<&str> {
        self.gpus.iter().map(|g| g.uuid.as_str()).collect()
    }
}

/// The bind-to-Allocate handshake, device plugin side: an `Allocate` of `units` of
/// `gantry.dev/gpu-milli` arrives on node `node` without saying for which pod. It is for the
/// first pod in `bound` (the device plugin passes the node's bound pods oldest first, with their
/// assignment annotations) that is assigned to `node`, whose assignment totals `units`, and that
/// is not in `allocated` yet. Returns that pod's key and the GPU UUIDs to hand out.
pub fn allocate_target<'a>(
    node: &str,
    units: u32,
    bound: &'a [(String, GpuAssignment)],
    allocated: &std::collections::BTreeSet<String>,
) -> Option<(&'a str, Vec<&'a str>)> {
    bound
        .iter()
        .find(|(pod, a)| {
            a.node == node
                && !allocated.contains(pod)
                && a.gpus.iter().map(|g| u32::from(g.milli)).sum::<u32>() == units
        })
        .map(|(pod, a)| (pod.as_str(), a.gpu_uuids()))
}
