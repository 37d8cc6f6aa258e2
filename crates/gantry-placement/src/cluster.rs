//! The cluster's plain data: node and pod specifications as read from a trace, the mutable
//! per-node state the engine works on, and the checks that keep an allocation within capacity.

use crate::{Error, Result};

/// Thousandths of one GPU: a whole GPU is 1000 milli-GPU.
pub const MILLI: u16 = 1000;
/// The most GPUs one node may hold (the trace's largest nodes have 8).
pub const MAX_GPUS_PER_NODE: usize = 16;
/// The most distinct GPU models a cluster may hold (a pod's accepted models are a 64-bit mask).
pub const MAX_GPU_MODELS: usize = 64;

/// A node as declared: capacity and GPU model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub cpu_milli: u32,
    pub memory_mib: u64,
    /// Number of GPUs, each of 1000 milli-GPU.
    pub gpus: u8,
    /// GPU model; `None` for a CPU-only node.
    pub gpu_model: Option<String>,
}

/// A pod's request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodSpec {
    pub cpu_milli: u32,
    pub memory_mib: u64,
    /// Number of GPUs (0 for a CPU-only pod).
    pub num_gpu: u8,
    /// Milli-GPU on each of those GPUs; below 1000 means a shared GPU. 0 when `num_gpu` is 0.
    pub gpu_milli: u16,
    /// GPU models the pod accepts; empty means any model.
    pub gpu_models: Vec<String>,
}

impl PodSpec {
    /// Total milli-GPU requested (`num_gpu × gpu_milli`).
    pub fn gpu_request(&self) -> u64 {
        u64::from(self.num_gpu) * u64::from(self.gpu_milli)
    }
}

/// A bit set of GPU model ids (bit `i` = model `i` of the cluster's model table).
pub type ModelMask = u64;
/// The mask accepting every model.
pub const ANY_MODEL: ModelMask = u64::MAX;

/// A pod request resolved against one cluster's model table: plain copyable numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Request {
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub num_gpu: u8,
    pub gpu_milli: u16,
    pub models: ModelMask,
}

impl Request {
    /// Total milli-GPU requested.
    pub fn gpu_request(&self) -> u64 {
        u64::from(self.num_gpu) * u64::from(self.gpu_milli)
    }

    /// A pod that shares one GPU with others.
    pub fn is_shared(&self) -> bool {
        self.num_gpu == 1 && self.gpu_milli < MILLI
    }

    /// The GPU class used by GPU clustering: sharing, 1, 2, 4, 8 GPUs or other; `None` for CPU-only.
    pub fn gpu_class(&self) -> Option<usize> {
        match (self.num_gpu, self.gpu_milli) {
            (0, _) => None,
            (1, m) if m < MILLI => Some(0),
            (1, _) => Some(1),
            (2, _) => Some(2),
            (4, _) => Some(3),
            (8, _) => Some(4),
            _ => Some(5),
        }
    }
}

/// Number of GPU classes counted per node (see [`Request::gpu_class`]).
pub const GPU_CLASSES: usize = 6;

/// A GPU index set on one node (bit `i` = GPU `i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GpuSet(pub u32);

impl GpuSet {
    pub fn insert(&mut self, gpu: usize) {
        self.0 |= 1 << gpu;
    }
    pub fn contains(self, gpu: usize) -> bool {
        self.0 & (1 << gpu) != 0
    }
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The indices, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..32).filter(move |&i| self.0 & (1 << i) != 0)
    }
}

/// One node's live state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub cpu_capacity: u32,
    pub memory_capacity: u64,
    pub cpu_free: u32,
    pub memory_free: u64,
    /// Index into the cluster's model table; `None` for a CPU-only node.
    pub model: Option<u8>,
    pub gpu_count: u8,
    /// Free milli-GPU of each GPU; entries at `gpu_count` and above are 0.
    pub gpu_free: [u16; MAX_GPUS_PER_NODE],
    /// Pods placed here, per GPU class (CPU-only pods are not counted).
    pub class_pods: [u32; GPU_CLASSES],
}

impl NodeState {
    /// The free milli-GPU of the node's GPUs.
    pub fn gpus(&self) -> &[u16] {
        &self.gpu_free[..usize::from(self.gpu_count)]
    }

    /// Total free milli-GPU.
    pub fn gpu_free_total(&self) -> u32 {
        self.gpus().iter().map(|&g| u32::from(g)).sum()
    }

    /// GPUs with nothing allocated.
    pub fn fully_free_gpus(&self) -> usize {
        self.gpus().iter().filter(|&&g| g == MILLI).count()
    }

    /// Whether the node's GPU model is one the request accepts (always true for CPU-only pods).
    pub fn model_accepts(&self, req: &Request) -> bool {
        if req.num_gpu == 0 {
            return true;
        }
        match self.model {
            Some(m) => req.models & (1u64 << m) != 0,
            None => false,
        }
    }

    /// Number of GPUs with at least `milli` free.
    pub fn gpus_with_at_least(&self, milli: u16) -> usize {
        self.gpus().iter().filter(|&&g| g >= milli).count()
    }

    /// Whether the request fits here: model, CPU, memory and enough GPUs with room.
    pub fn fits(&self, req: &Request) -> bool {
        self.cpu_free >= req.cpu_milli
            && self.memory_free >= req.memory_mib
            && (req.num_gpu == 0
                || (self.model_accepts(req)
                    && self.gpus_with_at_least(req.gpu_milli) >= usize::from(req.num_gpu)))
    }

    /// The best-fitting GPUs: among GPUs with room, the least free first, lower index on ties.
    /// For whole-GPU pods this is the lowest-index fully free GPUs. Empty if they do not fit.
    pub fn best_fit_gpus(&self, req: &Request) -> GpuSet {
        best_fit_gpus(self.gpus(), req.num_gpu, req.gpu_milli)
    }
}

/// See [`NodeState::best_fit_gpus`]; works on a plain free list so policies can use it on
/// hypothetical states.
pub fn best_fit_gpus(gpus: &[u16], num_gpu: u8, milli: u16) -> GpuSet {
    let mut set = GpuSet::default();
    if num_gpu == 0 {
        return set;
    }
    let mut need = usize::from(num_gpu);
    let mut order: [u8; MAX_GPUS_PER_NODE] = [0; MAX_GPUS_PER_NODE];
    let mut n = 0;
    for (i, &g) in gpus.iter().enumerate() {
        if g >= milli {
            // insertion sort by (free, index), stable
            let mut j = n;
            #[allow(clippy::cast_possible_truncation)]
            let idx = i as u8;
            while j > 0 && gpus[usize::from(order[j - 1])] > g {
                order[j] = order[j - 1];
                j -= 1;
            }
            order[j] = idx;
            n += 1;
        }
    }
    if n < need {
        return GpuSet::default();
    }
    for &i in &order[..n] {
        if need == 0 {
            break;
        }
        set.insert(usize::from(i));
        need -= 1;
    }
    set
}

/// Why a pod could not be placed: the first filter stage at which no node was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailReason {
    /// No node has a GPU model the pod accepts (and GPUs at all).
    GpuModel,
    /// No node of an accepted model has the CPU left.
    Cpu,
    /// Of those, none has the memory left.
    Memory,
    /// Of those, none has enough GPUs with room.
    Gpu,
}

impl FailReason {
    pub const ALL: [FailReason; 4] = [Self::GpuModel, Self::Cpu, Self::Memory, Self::Gpu];

    /// A stable lower-case label for files and tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::GpuModel => "gpu_model",
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Gpu => "gpu",
        }
    }
}

/// The nodes, their state and the model table.
#[derive(Debug, Clone)]
pub struct Cluster {
    names: Vec<String>,
    models: Vec<String>,
    nodes: Vec<NodeState>,
    total_gpu_milli: u64,
    allocated_gpu_milli: u64,
}

impl Cluster {
    /// Builds an empty cluster. Errors on a node with too many GPUs or a cluster with too many
    /// models, or a GPU node without a model.
    pub fn new(specs: &[NodeSpec]) -> Result<Self> {
        let mut models: Vec<String> = Vec::new();
        let mut nodes = Vec::with_capacity(specs.len());
        let mut total = 0u64;
        for spec in specs {
            if usize::from(spec.gpus) > MAX_GPUS_PER_NODE {
                return Err(Error::TooManyGpus {
                    node: spec.name.clone(),
                    gpus: spec.gpus,
                });
            }
            let model = match (&spec.gpu_model, spec.gpus) {
                (_, 0) => None,
                (None, _) => {
                    return Err(Error::MissingModel {
                        node: spec.name.clone(),
                    })
                }
                (Some(name), _) => {
                    let id = match models.iter().position(|m| m == name) {
                        Some(i) => i,
                        None => {
                            if models.len() == MAX_GPU_MODELS {
                                return Err(Error::TooManyModels {
                                    max: MAX_GPU_MODELS,
                                });
                            }
                            models.push(name.clone());
                            models.len() - 1
                        }
                    };
                    #[allow(clippy::cast_possible_truncation)]
                    Some(id as u8)
                }
            };
            let mut gpu_free = [0u16; MAX_GPUS_PER_NODE];
            for g in gpu_free.iter_mut().take(usize::from(spec.gpus)) {
                *g = MILLI;
            }
            total += u64::from(spec.gpus) * u64::from(MILLI);
            nodes.push(NodeState {
                cpu_capacity: spec.cpu_milli,
                memory_capacity: spec.memory_mib,
                cpu_free: spec.cpu_milli,
                memory_free: spec.memory_mib,
                model,
                gpu_count: spec.gpus,
                gpu_free,
                class_pods: [0; GPU_CLASSES],
            });
        }
        Ok(Self {
            names: specs.iter().map(|s| s.name.clone()).collect(),
            models,
            nodes,
            total_gpu_milli: total,
            allocated_gpu_milli: 0,
        })
    }

    /// Resolves a pod's accepted models to a mask. Models no node has are ignored, so a pod that
    /// accepts only such models accepts nothing. Errors on an inconsistent GPU request.
    pub fn request(&self, pod: &PodSpec) -> Result<Request> {
        if pod.num_gpu > 0 && (pod.gpu_milli == 0 || pod.gpu_milli > MILLI) {
            return Err(Error::BadRequest {
                reason: format!(
                    "num_gpu {} needs gpu_milli in 1..=1000, got {}",
                    pod.num_gpu, pod.gpu_milli
                ),
            });
        }
        if pod.num_gpu == 0 && pod.gpu_milli != 0 {
            return Err(Error::BadRequest {
                reason: format!("num_gpu 0 with gpu_milli {}", pod.gpu_milli),
            });
        }
        if usize::from(pod.num_gpu) > MAX_GPUS_PER_NODE {
            return Err(Error::BadRequest {
                reason: format!("num_gpu {} exceeds {MAX_GPUS_PER_NODE}", pod.num_gpu),
            });
        }
        Ok(Request {
            cpu_milli: pod.cpu_milli,
            memory_mib: pod.memory_mib,
            num_gpu: pod.num_gpu,
            gpu_milli: pod.gpu_milli,
            models: self.model_mask(&pod.gpu_models),
        })
    }

    /// The mask of the named models (empty list = any model).
    pub fn model_mask(&self, names: &[String]) -> ModelMask {
        if names.is_empty() {
            return ANY_MODEL;
        }
        let mut mask = 0;
        for name in names {
            if let Some(i) = self.models.iter().position(|m| m == name) {
                mask |= 1u64 << i;
            }
        }
        mask
    }

    pub fn nodes(&self) -> &[NodeState] {
        &self.nodes
    }
    pub fn node(&self, i: usize) -> &NodeState {
        &self.nodes[i]
    }
    pub fn node_name(&self, i: usize) -> &str {
        &self.names[i]
    }
    pub fn models(&self) -> &[String] {
        &self.models
    }
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    /// Total milli-GPU capacity.
    pub fn total_gpu_milli(&self) -> u64 {
        self.total_gpu_milli
    }
    /// Milli-GPU allocated so far.
    pub fn allocated_gpu_milli(&self) -> u64 {
        self.allocated_gpu_milli
    }

    /// Places `req` on `node` using `gpus`, after checking everything fits: the right number of
    /// distinct valid GPUs, each with room, and CPU and memory left. Nothing changes on error.
    pub fn allocate(&mut self, node: usize, req: &Request, gpus: GpuSet) -> Result<()> {
        let state = self.nodes.get_mut(node).ok_or(Error::NoSuchNode { node })?;
        let bad = |reason: String| Error::DoesNotFit { node, reason };
        if state.cpu_free < req.cpu_milli {
            return Err(bad(format!(
                "cpu {} > free {}",
                req.cpu_milli, state.cpu_free
            )));
        }
        if state.memory_free < req.memory_mib {
            return Err(bad(format!(
                "memory {} > free {}",
                req.memory_mib, state.memory_free
            )));
        }
        if gpus.len() != usize::from(req.num_gpu) {
            return Err(bad(format!(
                "{} GPUs chosen for a {}-GPU pod",
                gpus.len(),
                req.num_gpu
            )));
        }
        if req.num_gpu > 0 && !state.model_accepts(req) {
            return Err(bad("GPU model not accepted".into()));
        }
        for g in gpus.iter() {
            if g >= usize::from(state.gpu_count) {
                return Err(bad(format!("GPU index {g} out of range")));
            }
            if state.gpu_free[g] < req.gpu_milli {
                return Err(bad(format!(
                    "GPU {g} has {} free, {} asked",
                    state.gpu_free[g], req.gpu_milli
                )));
            }
        }
        state.cpu_free -= req.cpu_milli;
        state.memory_free -= req.memory_mib;
        for g in gpus.iter() {
            state.gpu_free[g] -= req.gpu_milli;
        }
        if let Some(class) = req.gpu_class() {
            state.class_pods[class] += 1;
        }
        self.allocated_gpu_milli += req.gpu_request();
        Ok(())
    }

    /// Why no node fits `req` (only meaningful when none does): the first stage of
    /// model → CPU → memory → GPU filtering that leaves no node.
    pub fn fail_reason(&self, req: &Request) -> FailReason {
        let mut model = false;
        let mut cpu = false;
        let mut memory = false;
        for n in &self.nodes {
            if !n.model_accepts(req) || (req.num_gpu > 0 && n.gpu_count < req.num_gpu) {
                continue;
            }
            model = true;
            if n.cpu_free < req.cpu_milli {
                continue;
            }
            cpu = true;
            if n.memory_free < req.memory_mib {
                continue;
            }
            memory = true;
        }
        if !model {
            FailReason::GpuModel
        } else if !cpu {
            FailReason::Cpu
        } else if !memory {
            FailReason::Memory
        } else {
            FailReason::Gpu
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, gpus: u8, model: &str) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            cpu_milli: 32_000,
            memory_mib: 65_536,
            gpus,
            gpu_model: (!model.is_empty()).then(|| model.to_string()),
        }
    }

    fn pod(cpu: u32, num_gpu: u8, milli: u16, models: &[&str]) -> PodSpec {
        PodSpec {
            cpu_milli: cpu,
            memory_mib: 1024,
            num_gpu,
            gpu_milli: milli,
            gpu_models: models.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn best_fit_table() {
        // (free list, num_gpu, milli) -> chosen indices
        let cases: &[(&[u16], u8, u16, &[usize])] = &[
            (&[1000, 1000, 1000, 1000], 2, 1000, &[0, 1]),
            (&[500, 1000, 1000, 1000], 2, 1000, &[1, 2]),
            (&[1000, 300, 600, 1000], 1, 250, &[1]),
            (&[1000, 300, 600, 1000], 1, 400, &[2]),
            (&[1000, 300, 600, 600], 1, 400, &[2]),
            (&[1000, 300, 600, 1000], 1, 700, &[0]),
            (&[900, 900], 2, 1000, &[]),
            (&[0, 0], 0, 0, &[]),
        ];
        for (gpus, n, m, want) in cases {
            let got: Vec<usize> = best_fit_gpus(gpus, *n, *m).iter().collect();
            assert_eq!(&got, want, "gpus {gpus:?} n {n} m {m}");
        }
    }

    #[test]
    fn request_resolves_models_and_rejects_nonsense() {
        let c =
            Cluster::new(&[node("a", 2, "T4"), node("b", 8, "V100"), node("c", 0, "")]).unwrap();
        assert_eq!(c.models(), ["T4".to_string(), "V100".to_string()]);
        assert_eq!(c.request(&pod(1, 1, 500, &[])).unwrap().models, ANY_MODEL);
        assert_eq!(c.request(&pod(1, 1, 500, &["V100"])).unwrap().models, 0b10);
        assert_eq!(c.request(&pod(1, 1, 500, &["A100"])).unwrap().models, 0);
        assert!(c.request(&pod(1, 1, 0, &[])).is_err());
        assert!(c.request(&pod(1, 1, 1001, &[])).is_err());
        assert!(c.request(&pod(1, 0, 5, &[])).is_err());
        assert_eq!(c.total_gpu_milli(), 10_000);
    }

    #[test]
    fn allocate_checks_capacity_and_changes_nothing_on_error() {
        let mut c = Cluster::new(&[node("a", 2, "T4")]).unwrap();
        let r = c.request(&pod(1000, 1, 600, &[])).unwrap();
        let mut g0 = GpuSet::default();
        g0.insert(0);
        c.allocate(0, &r, g0).unwrap();
        let before = c.node(0).clone();
        assert!(c.allocate(0, &r, g0).is_err(), "400 left < 600");
        let mut g5 = GpuSet::default();
        g5.insert(5);
        assert!(c.allocate(0, &r, g5).is_err(), "index out of range");
        assert!(
            c.allocate(0, &r, GpuSet::default()).is_err(),
            "no GPU chosen"
        );
        let wrong = c.request(&pod(1000, 1, 600, &["V100"])).unwrap();
        let mut g1 = GpuSet::default();
        g1.insert(1);
        assert!(c.allocate(0, &wrong, g1).is_err(), "model");
        let big = c.request(&pod(64_000, 0, 0, &[])).unwrap();
        assert!(c.allocate(0, &big, GpuSet::default()).is_err(), "cpu");
        assert_eq!(c.node(0), &before);
        assert_eq!(c.allocated_gpu_milli(), 600);
        c.allocate(0, &r, g1).unwrap();
        assert_eq!(c.node(0).gpus(), &[400, 400]);
        assert_eq!(c.node(0).class_pods[0], 2);
    }

    #[test]
    fn fail_reason_names_first_empty_stage() {
        let c = Cluster::new(&[node("a", 2, "T4")]).unwrap();
        let r = |p: PodSpec| c.request(&p).unwrap();
        assert_eq!(
            c.fail_reason(&r(pod(1, 1, 500, &["V100"]))),
            FailReason::GpuModel
        );
        assert_eq!(
            c.fail_reason(&r(pod(1, 4, 1000, &[]))),
            FailReason::GpuModel
        );
        assert_eq!(c.fail_reason(&r(pod(64_000, 1, 500, &[]))), FailReason::Cpu);
        let mut p = pod(1, 1, 500, &[]);
        p.memory_mib = 1 << 30;
        assert_eq!(c.fail_reason(&r(p)), FailReason::Memory);
    }
}
