//! The target workload and the fragmentation measure of FGD (Weng et al., ATC'23).
//!
//! A node's fragmentation for one task is all its free GPU if the task cannot run there (lack of
//! CPU, of GPUs with room, or a GPU model it does not accept), else the free capacity of the GPUs
//! too small for the task. A node's fragmentation is the expectation of that over the target
//! workload: the most frequent pod shapes that together cover a share of all pods, weighted by
//! frequency.
//!
//! As in the authors' simulator, a CPU-only task counts all free GPU of a node as fragment (no
//! GPU can serve it), whether or not its CPU fits.

use std::collections::BTreeMap;

use crate::cluster::{Cluster, ModelMask, PodSpec, ANY_MODEL};

/// One pod shape of the target workload with its frequency.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub cpu_milli: u32,
    pub num_gpu: u8,
    pub gpu_milli: u16,
    /// Accepted GPU models, sorted and de-duplicated; empty = any.
    pub gpu_models: Vec<String>,
    /// Number of pods of this shape in the source list.
    pub count: usize,
    /// Frequency among the kept shapes (the kept weights sum to 1).
    pub weight: f64,
}

/// The most frequent pod shapes, covering at least a given share of pods.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetWorkload {
    shapes: Vec<Shape>,
    covered: f64,
}

type ShapeKey = (u32, u8, u16, Vec<String>);

impl TargetWorkload {
    /// Counts shapes `(cpu_milli, num_gpu, gpu_milli, gpu_models)` over `pods` (CPU-only pods
    /// included), keeps them from the most frequent down until they cover at least `coverage`
    /// (0..=1) of the pods, and weights them by frequency, renormalised to sum to 1. Ties in
    /// count are ordered by CPU, then milli-GPU, GPU count and models, larger first (as the
    /// authors' simulator does), so the result is deterministic.
    pub fn from_pods(pods: &[PodSpec], coverage: f64) -> Self {
        let mut counts: BTreeMap<ShapeKey, usize> = BTreeMap::new();
        for p in pods {
            let mut models = p.gpu_models.clone();
            models.sort();
            models.dedup();
            *counts
                .entry((p.cpu_milli, p.num_gpu, p.gpu_milli, models))
                .or_default() += 1;
        }
        let mut sorted: Vec<(ShapeKey, usize)> = counts.into_iter().collect();
        // as the authors: by count, then by (cpu, gpu_milli, num_gpu, models), larger first
        let order_key = |k: &ShapeKey| (k.0, k.2, k.1, k.3.clone());
        sorted.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| order_key(&b.0).cmp(&order_key(&a.0)))
        });
        let total = pods.len();
        let mut kept = Vec::new();
        let mut cum = 0usize;
        for (key, count) in sorted {
            #[allow(clippy::cast_precision_loss)]
            if total > 0 && cum as f64 >= coverage * total as f64 {
                break;
            }
            cum += count;
            kept.push((key, count));
        }
        #[allow(clippy::cast_precision_loss)]
        let shapes = kept
            .into_iter()
            .map(
                |((cpu_milli, num_gpu, gpu_milli, gpu_models), count)| Shape {
                    cpu_milli,
                    num_gpu,
                    gpu_milli,
                    gpu_models,
                    count,
                    weight: count as f64 / cum as f64,
                },
            )
            .collect();
        #[allow(clippy::cast_precision_loss)]
        let covered = if total == 0 {
            0.0
        } else {
            cum as f64 / total as f64
        };
        Self { shapes, covered }
    }

    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }

    /// The share of source pods the kept shapes cover.
    pub fn covered(&self) -> f64 {
        self.covered
    }
}

#[derive(Debug, Clone, Copy)]
struct GpuShape {
    cpu_milli: u32,
    num_gpu: u8,
    gpu_milli: u16,
    weight: f64,
}

#[derive(Debug, Clone, Default)]
struct ModelShapes {
    /// Total weight of tasks that can never use this node's GPUs (CPU-only tasks, tasks that
    /// reject the model): each counts all free GPU as fragment.
    always: f64,
    shapes: Vec<GpuShape>,
}

/// The target workload compiled against one cluster's GPU models, for fast evaluation.
#[derive(Debug, Clone)]
pub struct Fragmentation {
    per_model: Vec<ModelShapes>,
    cpu_per_gpu_milli: f64,
}

impl Fragmentation {
    pub fn new(workload: &TargetWorkload, cluster: &Cluster) -> Self {
        let masks: Vec<ModelMask> = workload
            .shapes
            .iter()
            .map(|s| {
                if s.gpu_models.is_empty() {
                    ANY_MODEL
                } else {
                    cluster.model_mask(&s.gpu_models)
                }
            })
            .collect();
        let per_model = (0..cluster.models().len())
            .map(|m| {
                let mut ms = ModelShapes::default();
                for (s, mask) in workload.shapes.iter().zip(&masks) {
                    if s.num_gpu == 0 || mask & (1u64 << m) == 0 {
                        ms.always += s.weight;
                    } else {
                        ms.shapes.push(GpuShape {
                            cpu_milli: s.cpu_milli,
                            num_gpu: s.num_gpu,
                            gpu_milli: s.gpu_milli,
                            weight: s.weight,
                        });
                    }
                }
                ms
            })
            .collect();
        let mut cpu = 0.0;
        let mut gpu = 0.0;
        for s in &workload.shapes {
            if s.num_gpu > 0 {
                cpu += s.weight * f64::from(s.cpu_milli);
                gpu += s.weight * f64::from(s.num_gpu) * f64::from(s.gpu_milli);
            }
        }
        let cpu_per_gpu_milli = if gpu > 0.0 { cpu / gpu } else { 0.0 };
        Self {
            per_model,
            cpu_per_gpu_milli,
        }
    }

    /// Mean CPU milli per milli-GPU of the workload's GPU tasks.
    pub fn cpu_per_gpu_milli(&self) -> f64 {
        self.cpu_per_gpu_milli
    }

    /// Expected fragmentation (milli-GPU) of a node of GPU `model` with `cpu_free` and GPU free
    /// list `gpus`. A CPU-only node (`model` `None`) has no GPU and so no fragmentation.
    pub fn node(&self, model: Option<u8>, cpu_free: u32, gpus: &[u16]) -> f64 {
        let Some(m) = model else { return 0.0 };
        let Some(ms) = self.per_model.get(usize::from(m)) else {
            return 0.0;
        };
        let total: u32 = gpus.iter().map(|&g| u32::from(g)).sum();
        if total == 0 {
            return 0.0;
        }
        let total_f = f64::from(total);
        let mut frag = ms.always * total_f;
        for s in &ms.shapes {
            if cpu_free < s.cpu_milli {
                frag += s.weight * total_f;
                continue;
            }
            let mut fit = 0u8;
            let mut small = 0u32;
            for &g in gpus {
                if g >= s.gpu_milli {
                    fit += 1;
                } else {
                    small += u32::from(g);
                }
            }
            if fit >= s.num_gpu {
                frag += s.weight * f64::from(small);
            } else {
                frag += s.weight * total_f;
            }
        }
        frag
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeSpec;

    fn pod(cpu: u32, n: u8, m: u16, models: &[&str]) -> PodSpec {
        PodSpec {
            cpu_milli: cpu,
            memory_mib: 0,
            num_gpu: n,
            gpu_milli: m,
            gpu_models: models.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn keeps_most_frequent_shapes_until_coverage() {
        let mut pods = vec![pod(1000, 1, 500, &[]); 6];
        pods.extend(vec![pod(2000, 1, 1000, &[]); 3]);
        pods.push(pod(0, 0, 0, &[]));
        let w = TargetWorkload::from_pods(&pods, 0.85);
        assert_eq!(w.shapes().len(), 2);
        assert!((w.covered() - 0.9).abs() < 1e-12);
        assert!((w.shapes()[0].weight - 6.0 / 9.0).abs() < 1e-12);
        let all = TargetWorkload::from_pods(&pods, 1.0);
        assert_eq!(all.shapes().len(), 3);
        let sum: f64 = all.shapes().iter().map(|s| s.weight).sum();
        assert!((sum - 1.0).abs() < 1e-12);
    }

    #[test]
    fn fragmentation_table() {
        let cluster = Cluster::new(&[NodeSpec {
            name: "n".into(),
            cpu_milli: 8000,
            memory_mib: 0,
            gpus: 4,
            gpu_model: Some("T4".into()),
        }])
        .unwrap();
        // one task: 1 GPU x 500 milli, 1000 CPU
        let w = TargetWorkload::from_pods(&[pod(1000, 1, 500, &[])], 1.0);
        let f = Fragmentation::new(&w, &cluster);
        let cases: &[(u32, &[u16], f64)] = &[
            (8000, &[1000, 1000, 1000, 1000], 0.0),
            (8000, &[300, 1000, 1000, 1000], 300.0),
            (8000, &[300, 200, 0, 0], 500.0), // cannot run: all free
            (500, &[1000, 1000, 1000, 1000], 4000.0), // lacks CPU: all free
            (8000, &[0, 0, 0, 0], 0.0),
        ];
        for (cpu, gpus, want) in cases {
            assert_eq!(
                f.node(Some(0), *cpu, gpus),
                *want,
                "cpu {cpu} gpus {gpus:?}"
            );
        }
        // wrong model: all free; CPU-only task: all free
        let w2 = TargetWorkload::from_pods(&[pod(1000, 1, 500, &["V100"])], 1.0);
        let f2 = Fragmentation::new(&w2, &cluster);
        assert_eq!(f2.node(Some(0), 8000, &[1000, 500, 0, 0]), 1500.0);
        let w3 = TargetWorkload::from_pods(&[pod(1000, 0, 0, &[])], 1.0);
        let f3 = Fragmentation::new(&w3, &cluster);
        assert_eq!(f3.node(Some(0), 8000, &[1000, 500, 0, 0]), 1500.0);
        // two GPUs of 1000 needed: 2 fully free of 3 -> the 500 one is fragment
        let w4 = TargetWorkload::from_pods(&[pod(1000, 2, 1000, &[])], 1.0);
        let f4 = Fragmentation::new(&w4, &cluster);
        assert_eq!(f4.node(Some(0), 8000, &[1000, 500, 1000, 0]), 500.0);
        assert_eq!(f4.node(Some(0), 8000, &[1000, 500, 0, 0]), 1500.0);
        assert_eq!(f4.node(None, 8000, &[]), 0.0);
    }
}
