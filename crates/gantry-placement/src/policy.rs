//! Node scoring policies. Every policy scores one node for one request from that node's state
//! alone (plus the fixed target workload), which is what lets the scheduler cache scores and
//! recompute only the node that changed.

use std::fmt;
use std::str::FromStr;

use crate::cluster::{best_fit_gpus, GpuSet, NodeState, Request, MAX_GPUS_PER_NODE, MILLI};
use crate::workload::Fragmentation;
use crate::Error;

/// Largest node CPU the authors normalise by (128 cores).
const MAX_SPEC_CPU: f64 = 128_000.0;
/// Largest node GPU the authors normalise by (8 GPUs).
const MAX_SPEC_GPU: f64 = 8_000.0;
const MAX_SPEC_GPU_INT: i64 = 8_000;
const MAX_SCORE: i64 = 100;
/// Weight of CPU-stranded GPU against FGD's fragmentation in `frag-cpu` (fixed before evaluation).
const STRANDED_WEIGHT: f64 = 1.0;

/// A placement policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// A feasible node uniformly at random; a random GPU that fits.
    Random,
    /// Tetris-style: smallest dot product of the node's free vector and the request.
    DotProduct,
    /// Keeps pods of the same GPU class together, then fuller nodes.
    GpuClustering,
    /// Shared GPUs first, then free GPUs on used nodes, then idle nodes.
    GpuPacking,
    /// Least weighted leftover of CPU and GPU (0.5/0.5).
    BestFit,
    /// Fragmentation gradient descent (integer sigmoid scores, random ties), as published.
    Fgd,
    /// Gantry's policy: FGD's fragmentation growth plus the growth of CPU-stranded GPU (free GPU
    /// whose CPU, at the workload's mean CPU per GPU, is gone), exact rather than rounded to an
    /// integer score; among equal growth, the node left with the least free GPU.
    FragCpu,
}

impl Policy {
    /// Every policy, baselines first.
    pub const ALL: [Policy; 7] = [
        Policy::Random,
        Policy::DotProduct,
        Policy::GpuClustering,
        Policy::GpuPacking,
        Policy::BestFit,
        Policy::Fgd,
        Policy::FragCpu,
    ];

    /// The name users type.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Random => "random",
            Policy::DotProduct => "dot-product",
            Policy::GpuClustering => "gpu-clustering",
            Policy::GpuPacking => "gpu-packing",
            Policy::BestFit => "best-fit",
            Policy::Fgd => "fgd",
            Policy::FragCpu => "frag-cpu",
        }
    }

    /// Whether the policy needs the target workload's fragmentation.
    pub fn needs_workload(self) -> bool {
        matches!(self, Policy::Fgd | Policy::FragCpu)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        Policy::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::UnknownPolicy {
                name: s.to_string(),
                known: Policy::ALL.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
            })
    }
}

/// A node's score for a request and the GPUs it would use there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation {
    pub score: i64,
    pub gpus: GpuSet,
}

/// Whether `req` fits on `node`, ignoring memory (checked separately so that scores can be
/// cached per pod shape without memory).
pub fn fits_except_memory(node: &NodeState, req: &Request) -> bool {
    node.cpu_free >= req.cpu_milli
        && (req.num_gpu == 0
            || (node.model_accepts(req)
                && node.gpus_with_at_least(req.gpu_milli) >= usize::from(req.num_gpu)))
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[allow(clippy::cast_possible_truncation)]
fn trunc(x: f64) -> i64 {
    x as i64
}

/// Scores `node` for `req` under `policy`, or `None` if it does not fit (memory aside).
/// `frag` and `node_frag` (the node's current fragmentation) are used by the FGD family.
pub fn evaluate(
    policy: Policy,
    node: &NodeState,
    req: &Request,
    frag: Option<&Fragmentation>,
    node_frag: f64,
) -> Option<Evaluation> {
    if !fits_except_memory(node, req) {
        return None;
    }
    let best_fit = || best_fit_gpus(node.gpus(), req.num_gpu, req.gpu_milli);
    let gpu_left = i64::from(node.gpu_free_total());
    let gpu_req = i64::try_from(req.gpu_request()).unwrap_or(i64::MAX);
    let eval = match policy {
        // The GPUs are drawn at random by the scheduler, once the node is chosen.
        Policy::Random => Evaluation {
            score: 0,
            gpus: GpuSet::default(),
        },
        Policy::DotProduct => {
            let node_v = [f64::from(node.cpu_free) / MAX_SPEC_CPU, gpu_left as f64 / MAX_SPEC_GPU];
            let pod_v = [
                f64::from(req.cpu_milli) / MAX_SPEC_CPU,
                gpu_req as f64 / MAX_SPEC_GPU,
            ];
            let dot = (node_v[0] * pod_v[0] + node_v[1] * pod_v[1]) / 2.0;
            Evaluation {
                score: trunc(MAX_SCORE as f64 * (1.0 - dot)),
                gpus: best_fit(),
            }
        }
        Policy::GpuClustering => {
            let score = match req.gpu_class() {
                None => 0,
                Some(class) => {
                    let base = MAX_SCORE / 4 * (MAX_SPEC_GPU_INT - gpu_left) / MAX_SPEC_GPU_INT;
                    let kinds = node.class_pods.iter().filter(|&&c| c > 0).count();
                    if node.class_pods[class] > 0 {
                        if kinds == 1 {
                            base + MAX_SCORE * 3 / 4
                        } else {
                            base + MAX_SCORE * 2 / 4
                        }
                    } else if kinds == 0 {
                        base + MAX_SCORE / 4
                    } else {
                        base
                    }
                }
            };
            Evaluation {
                score,
                gpus: best_fit(),
            }
        }
        Policy::GpuPacking => Evaluation {
            score: packing_score(node, req),
            gpus: best_fit(),
        },
        Policy::BestFit => {
            let left = (f64::from(node.cpu_free - req.cpu_milli) / MAX_SPEC_CPU) * 0.5
                + ((gpu_left - gpu_req) as f64 / MAX_SPEC_GPU) * 0.5;
            Evaluation {
                score: trunc((1.0 - left) * MAX_SCORE as f64),
                gpus: best_fit(),
            }
        }
        Policy::Fgd | Policy::FragCpu => {
            let frag = frag?;
            fgd(policy, node, req, frag, node_frag)
        }
    };
    Some(eval)
}

/// The authors' GPU packing score: (a) only already-shared GPUs are used:
/// `100 − free%/10` of those GPUs, at least 50; (b) some fully free GPU of a used node is used:
/// `50 − number of them`, at least 33; (c) the node is idle: `33 − free GPUs`.
fn packing_score(node: &NodeState, req: &Request) -> i64 {
    if req.gpu_milli == 0 {
        return 0;
    }
    let fully_free = i64::try_from(node.fully_free_gpus()).unwrap_or(0);
    if fully_free == i64::from(node.gpu_count) {
        return (MAX_SCORE / 3 - fully_free).max(fully_free);
    }
    let chosen = best_fit_gpus(node.gpus(), req.num_gpu, req.gpu_milli);
    let mut fully_free_used = 0i64;
    let mut free_pct = 0i64;
    for g in chosen.iter() {
        let free = i64::from(node.gpu_free[g]);
        if free == i64::from(MILLI) {
            fully_free_used += 1;
        }
        free_pct += free * 100 / i64::from(MILLI);
    }
    if fully_free_used > 0 {
        (MAX_SCORE / 2 - fully_free_used).max(MAX_SCORE / 3)
    } else {
        (MAX_SCORE - free_pct / 10).max(MAX_SCORE / 2)
    }
}

/// Fragmentation growth of every distinct way to place `req` on `node`: FGD scores
/// `⌊sigmoid((before − after)/1000) × 100⌋` and keeps the first GPU of the best score; Gantry's
/// `frag-cpu` adds the growth of CPU-stranded GPU, keeps it exact, and breaks ties by the least
/// free GPU left.
fn fgd(
    policy: Policy,
    node: &NodeState,
    req: &Request,
    frag: &Fragmentation,
    before: f64,
) -> Evaluation {
    let cpu_after = node.cpu_free - req.cpu_milli;
    let gpus = node.gpus();
    // CPU-stranded GPU: free GPU a node cannot use because the CPU its GPU tasks would need
    // (at the workload's mean CPU per GPU) is gone.
    let r = frag.cpu_per_gpu_milli();
    let stranded = |cpu: u32, gpu: u32| -> f64 {
        if r > 0.0 {
            (r * f64::from(gpu) - f64::from(cpu)).max(0.0) / r
        } else {
            0.0
        }
    };
    let stranded_before = stranded(node.cpu_free, node.gpu_free_total());
    let score_of = |after: f64, gpu_left_after: u32| -> i64 {
        let delta = before - after;
        match policy {
            Policy::Fgd => trunc(sigmoid(delta / 1000.0) * MAX_SCORE as f64),
            _ => {
                let growth =
                    delta - STRANDED_WEIGHT * (stranded(cpu_after, gpu_left_after) - stranded_before);
                // exact to a thousandth of a milli-GPU; then the node left with the least free GPU
                (trunc((growth * 1000.0).round()) << 16) + (65_535 - i64::from(gpu_left_after))
            }
        }
    };
    let gpu_left = node.gpu_free_total();
    let left_after = gpu_left - u32::try_from(req.gpu_request()).unwrap_or(0);
    if req.is_shared() {
        let mut best: Option<Evaluation> = None;
        let mut seen = [u16::MAX; MAX_GPUS_PER_NODE];
        let mut n_seen = 0;
        for (i, &g) in gpus.iter().enumerate() {
            if g < req.gpu_milli || seen[..n_seen].contains(&g) {
                continue;
            }
            seen[n_seen] = g;
            n_seen += 1;
            let mut after = node.gpu_free;
            after[i] -= req.gpu_milli;
            let f = frag.node(node.model, cpu_after, &after[..gpus.len()]);
            let score = score_of(f, left_after);
            if best.is_none_or(|b| score > b.score) {
                let mut set = GpuSet::default();
                set.insert(i);
                best = Some(Evaluation { score, gpus: set });
            }
        }
        best.unwrap_or(Evaluation {
            score: i64::MIN,
            gpus: GpuSet::default(),
        })
    } else {
        let set = best_fit_gpus(gpus, req.num_gpu, req.gpu_milli);
        let mut after = node.gpu_free;
        for g in set.iter() {
            after[g] -= req.gpu_milli;
        }
        let f = frag.node(node.model, cpu_after, &after[..gpus.len()]);
        Evaluation {
            score: score_of(f, left_after),
            gpus: set,
        }
    }
}
