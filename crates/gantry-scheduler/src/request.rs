//! What a pod asks for: CPU, memory and GPUs from its containers' resources, the GPU models it
//! accepts, and its gang.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::schema::{
    POD_GPU_MODELS_ANNOTATION, POD_GROUP_LABEL, POD_GROUP_MIN_MEMBER_LABEL, RESOURCE_GPU,
    RESOURCE_GPU_MILLI,
};
use crate::{Error, Result};

/// A pod's request in the placement engine's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRequest {
    /// `namespace/name`.
    pub key: String,
    pub uid: String,
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub num_gpu: u8,
    /// Per GPU; 1000 for whole GPUs.
    pub gpu_milli: u16,
    /// Accepted GPU products; empty = any.
    pub gpu_models: Vec<String>,
    pub gang: Option<Gang>,
}

/// A pod's gang: its PodGroup within its namespace and the group's minimum size.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gang {
    /// `namespace/group`.
    pub group: String,
    pub min_member: u32,
}

impl PodRequest {
    /// Reads `pod`. Errors on a pod without `nvidia.com/gpu` or `gantry.dev/gpu-milli`, with
    /// both, with a malformed quantity, or with a malformed gang label.
    pub fn from_pod(pod: &Pod) -> Result<Self> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let key = format!("{ns}/{name}");
        let bad = |reason: String| Error::BadPod {
            pod: key.clone(),
            reason,
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| bad("no spec".to_string()))?;
        let sum = |res: &str| -> Result<u64> {
            let mut total = 0u64;
            for c in &spec.containers {
                total = total.saturating_add(container_amount(c, res, &key)?);
            }
            // An init container runs alone: the pod needs the larger of it and the sum.
            for c in spec.init_containers.iter().flatten() {
                total = total.max(container_amount(c, res, &key)?);
            }
            Ok(total)
        };
        let cpu = sum("cpu")?;
        let memory = sum("memory")?;
        let whole = sum(RESOURCE_GPU)?;
        let milli = sum(RESOURCE_GPU_MILLI)?;
        let (num_gpu, gpu_milli) = match (whole, milli) {
            (0, 0) => {
                return Err(bad(format!(
                    "requests neither {RESOURCE_GPU} nor {RESOURCE_GPU_MILLI}; \
                     only GPU pods should be sent to the Gantry extender"
                )))
            }
            (w, 0) => {
                let n = u8::try_from(w)
                    .ok()
                    .filter(|&n| usize::from(n) <= gantry_placement::MAX_GPUS_PER_NODE)
                    .ok_or_else(|| {
                        bad(format!(
                            "{RESOURCE_GPU} {w} exceeds the {} GPUs a node may hold",
                            gantry_placement::MAX_GPUS_PER_NODE
                        ))
                    })?;
                (n, gantry_placement::MILLI)
            }
            (0, m) => {
                let m = u16::try_from(m)
                    .ok()
                    .filter(|&m| m <= gantry_placement::MILLI)
                    .ok_or_else(|| {
                        bad(format!(
                            "{RESOURCE_GPU_MILLI} {m} exceeds one GPU (1000); \
                             ask for whole GPUs with {RESOURCE_GPU}"
                        ))
                    })?;
                (1, m)
            }
            (w, m) => {
                return Err(bad(format!(
                    "requests both {RESOURCE_GPU} ({w}) and {RESOURCE_GPU_MILLI} ({m}); ask for one"
                )))
            }
        };
        let cpu_milli =
            u32::try_from(cpu).map_err(|_| bad(format!("CPU request {cpu}m is out of range")))?;
        let memory_mib = memory.div_ceil(1024 * 1024);
        let annotations = pod.metadata.annotations.as_ref();
        let gpu_models = annotations
            .and_then(|a| a.get(POD_GPU_MODELS_ANNOTATION))
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let gang = gang_of(ns, pod.metadata.labels.as_ref()).map_err(bad)?;
        Ok(Self {
            key,
            uid,
            cpu_milli,
            memory_mib,
            num_gpu,
            gpu_milli,
            gpu_models,
            gang,
        })
    }

    pub fn pod_spec(&self) -> gantry_placement::PodSpec {
        gantry_placement::PodSpec {
            cpu_milli: self.cpu_milli,
            memory_mib: self.memory_mib,
            num_gpu: self.num_gpu,
            gpu_milli: self.gpu_milli,
            gpu_models: self.gpu_models.clone(),
        }
    }
}

fn gang_of(
    ns: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> std::result::Result<Option<Gang>, String> {
    let Some(group) = labels.and_then(|l| l.get(POD_GROUP_LABEL)) else {
        return Ok(None);
    };
    let raw = labels
        .and_then(|l| l.get(POD_GROUP_MIN_MEMBER_LABEL))
        .ok_or_else(|| format!("label {POD_GROUP_LABEL} without {POD_GROUP_MIN_MEMBER_LABEL}"))?;
    let min_member: u32 = raw.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
        format!("label {POD_GROUP_MIN_MEMBER_LABEL} {raw:?} is not an integer ≥ 1")
    })?;
    Ok(Some(Gang {
        group: format!("{ns}/{group}"),
        min_member,
    }))
}

/// A container's amount of `resource`: the request, else the limit (extended resources are set
/// as limits). CPU in milli, memory in bytes, others as integers.
fn container_amount(c: &Container, resource: &str, pod: &str) -> Result<u64> {
    let Some(res) = &c.resources else {
        return Ok(0);
    };
    let q = res
        .requests
        .as_ref()
        .and_then(|r| r.get(resource))
        .or_else(|| res.limits.as_ref().and_then(|l| l.get(resource)));
    let Some(Quantity(text)) = q else {
        return Ok(0);
    };
    let scale = if resource == "cpu" { 1000.0 } else { 1.0 };
    parse_quantity(text, scale).ok_or_else(|| Error::BadPod {
        pod: pod.to_string(),
        reason: format!(
            "container {} has {resource} {text:?}, not a Kubernetes quantity",
            c.name
        ),
    })
}

/// Whether the pod has finished (`Succeeded` or `Failed`): it holds nothing any more.
pub fn pod_finished(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
}

/// Parses a Kubernetes quantity (`500m`, `2`, `1.5`, `4Gi`, `1e3`, `128M`) and multiplies it by
/// `scale`, rounding up. `None` if malformed or negative.
pub fn parse_quantity(text: &str, scale: f64) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let (num, suffix) = if let Some(exp) = suffix.strip_prefix(['e', 'E']) {
        let e: i32 = exp.parse().ok()?;
        (num.parse::<f64>().ok()? * 10f64.powi(e), "")
    } else {
        (num.parse::<f64>().ok()?, suffix)
    };
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let v = num * factor * scale;
    if !v.is_finite() || !(0.0..=1.8e19).contains(&v) {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((v - 1e-9).ceil().max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for (text, scale, want) in [
            ("500m", 1000.0, Some(500)),
            ("2", 1000.0, Some(2000)),
            ("1.5", 1000.0, Some(1500)),
            ("4Gi", 1.0, Some(4 << 30)),
            ("128M", 1.0, Some(128_000_000)),
            ("1e3", 1.0, Some(1000)),
            ("250", 1.0, Some(250)),
            ("0.1m", 1000.0, Some(1)),
            ("abc", 1.0, None),
            ("4Qi", 1.0, None),
            ("-1", 1.0, None),
            ("", 1.0, None),
        ] {
            assert_eq!(parse_quantity(text, scale), want, "{text}");
        }
    }
}
