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
    /// Gantry's policy: FGD whose fragmentation also counts CPU-stranded GPU, the free GPU of a
    /// node whose CPU, at the workload's mean CPU per GPU, is already gone. Scored like FGD
    /// (`⌊sigmoid(−growth/1000) × 100⌋`).
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
                known: Policy::ALL
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", "),
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
            let node_v = [
                f64::from(node.cpu_free) / MAX_SPEC_CPU,
                gpu_left as f64 / MAX_SPEC_GPU,
            ];
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
/// `frag-cpu` adds the growth of CPU-stranded GPU to the growth before scoring the same way.
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
                let gain = delta
                    - STRANDED_WEIGHT * (stranded(cpu_after, gpu_left_after) - stranded_before);
                trunc(sigmoid(gain / 1000.0) * MAX_SCORE as f64)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Cluster, NodeSpec, PodSpec};
    use crate::workload::TargetWorkload;

    fn g2() -> Cluster {
        Cluster::new(&[NodeSpec {
            name: "n".into(),
            cpu_milli: 96_000,
            memory_mib: 1 << 20,
            gpus: 8,
            gpu_model: Some("G2".into()),
        }])
        .unwrap()
    }

    fn pod(cpu: u32, num_gpu: u8, gpu_milli: u16) -> PodSpec {
        PodSpec {
            cpu_milli: cpu,
            memory_mib: 0,
            num_gpu,
            gpu_milli,
            gpu_models: vec![],
        }
    }

    fn score(
        policy: Policy,
        c: &Cluster,
        p: &PodSpec,
        w: Option<&TargetWorkload>,
    ) -> (i64, Vec<usize>) {
        let req = c.request(p).unwrap();
        let frag = w.map(|w| Fragmentation::new(w, c));
        let n = c.node(0);
        let nf = frag
            .as_ref()
            .map_or(0.0, |f| f.node(n.model, n.cpu_free, n.gpus()));
        let e = evaluate(policy, n, &req, frag.as_ref(), nf).unwrap();
        (e.score, e.gpus.iter().collect())
    }

    fn with(c: &mut Cluster, p: PodSpec, gpu: usize) {
        let req = c.request(&p).unwrap();
        let mut set = GpuSet::default();
        set.insert(gpu);
        c.allocate(0, &req, set).unwrap();
    }

    #[test]
    fn baseline_scores_table() {
        let empty = g2();
        let p = pod(8000, 1, 500);
        // dot: (0.75*0.0625 + 1*0.0625)/2 = 0.0546875 -> 94
        assert_eq!(score(Policy::DotProduct, &empty, &p, None), (94, vec![0]));
        // best fit: 0.5*88/128 + 0.5*7.5/8 = 0.8125 -> 18
        assert_eq!(score(Policy::BestFit, &empty, &p, None), (18, vec![0]));
        // packing, idle node: 33 - 8
        assert_eq!(score(Policy::GpuPacking, &empty, &p, None).0, 25);
        // clustering, idle node: 0 + 25
        assert_eq!(score(Policy::GpuClustering, &empty, &p, None).0, 25);
        assert_eq!(score(Policy::Random, &empty, &p, None).0, 0);
        // CPU-only pods: packing and clustering give every node 0
        assert_eq!(
            score(Policy::GpuPacking, &empty, &pod(1000, 0, 0), None).0,
            0
        );
        assert_eq!(
            score(Policy::GpuClustering, &empty, &pod(1000, 0, 0), None).0,
            0
        );

        let mut used = g2();
        with(&mut used, pod(1000, 1, 700), 3); // GPU 3 has 300 left
                                               // packing: a 250 pod fits the shared GPU 3: 100 - 30/10
        assert_eq!(
            score(Policy::GpuPacking, &used, &pod(1000, 1, 250), None),
            (97, vec![3])
        );
        // a 500 pod needs a fully free GPU of a used node: 50 - 1
        assert_eq!(
            score(Policy::GpuPacking, &used, &pod(1000, 1, 500), None),
            (49, vec![0])
        );
        // clustering: same class only: 25*700/8000 = 2 (integer) + 75; other class: 2 + 0
        assert_eq!(
            score(Policy::GpuClustering, &used, &pod(1000, 1, 250), None).0,
            77
        );
        assert_eq!(
            score(Policy::GpuClustering, &used, &pod(1000, 1, 1000), None).0,
            2
        );
        // best-fit GPU choice: tightest GPU that fits, lowest-index whole GPUs
        assert_eq!(
            score(Policy::BestFit, &used, &pod(1000, 1, 250), None).1,
            vec![3]
        );
        assert_eq!(
            score(Policy::BestFit, &used, &pod(1000, 2, 1000), None).1,
            vec![0, 1]
        );
    }

    #[test]
    fn fgd_scores_the_fragmentation_growth() {
        let empty = g2();
        // workload of whole-GPU tasks: taking 500 of a GPU leaves 500 of fragment
        let whole = TargetWorkload::from_pods(&[pod(1000, 1, 1000)], 1.0);
        // sigmoid(-0.5) = 0.3775 -> 37
        assert_eq!(
            score(Policy::Fgd, &empty, &pod(1000, 1, 500), Some(&whole)),
            (37, vec![0])
        );
        // a whole GPU leaves no fragment: sigmoid(0) -> 50
        assert_eq!(
            score(Policy::Fgd, &empty, &pod(1000, 1, 1000), Some(&whole)).0,
            50
        );
        // FGD prefers the GPU whose use removes fragment: GPU 3 with 500 left is filled
        let mut used = g2();
        with(&mut used, pod(1000, 1, 500), 3);
        let (s, gpus) = score(Policy::Fgd, &used, &pod(1000, 1, 500), Some(&whole));
        assert_eq!(gpus, vec![3]);
        assert_eq!(s, 62, "sigmoid(0.5) = 0.622");
        // frag-cpu agrees where no CPU is stranded
        let (s, gpus) = score(Policy::FragCpu, &used, &pod(1000, 1, 500), Some(&whole));
        assert_eq!((s, gpus), (62, vec![3]));
    }

    #[test]
    fn frag_cpu_counts_cpu_stranded_gpu() {
        // a workload of 1-GPU tasks needing 12 cores each; the node has 96 cores for 8 GPUs
        let w = TargetWorkload::from_pods(&[pod(12_000, 1, 1000)], 1.0);
        let empty = g2();
        // a CPU-only pod of 48 cores leaves 48 cores for 8 free GPUs: 4 GPUs' CPU is gone.
        // FGD sees no fragment (every GPU still fits a 12-core task); frag-cpu sees 4000 stranded
        let cpu_pod = pod(48_000, 0, 0);
        assert_eq!(score(Policy::Fgd, &empty, &cpu_pod, Some(&w)).0, 50);
        // sigmoid(-4000/1000) = 0.018
        assert_eq!(score(Policy::FragCpu, &empty, &cpu_pod, Some(&w)).0, 1);
        // a 12-core 1-GPU task strands nothing: both 50
        assert_eq!(
            score(Policy::FragCpu, &empty, &pod(12_000, 1, 1000), Some(&w)).0,
            50
        );
    }

    #[test]
    fn policy_names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.name().parse::<Policy>().unwrap(), p);
        }
        let err = "nope".parse::<Policy>().unwrap_err().to_string();
        assert!(
            err.contains("known policies") && err.contains("fgd"),
            "{err}"
        );
    }
}
