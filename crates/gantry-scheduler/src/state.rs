//! The extender's picture of the cluster: each node's capacity (from its allocatable resources
//! and the [`NodeGpus`] annotation) minus what pods hold (bound pods, binds in flight, gang
//! reservations).
//!
//! # Guarantees
//! Every node sits behind its own mutex, held only for the few microseconds of a check or an
//! update, never across an API call: binds to different nodes run in parallel and a bind to a
//! node never waits for another bind's API writes. Choosing GPUs and recording the allocation
//! happen under the same node lock, so two binds can never be handed the same GPU capacity.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use gantry_placement::{
    Fragmentation, GpuSet, ModelMask, NodeSpec, NodeState, Request, TargetWorkload, ANY_MODEL,
    GPU_CLASSES, MAX_GPUS_PER_NODE,
};
use k8s_openapi::api::core::v1::{Node, Pod};

use crate::request::{parse_quantity, PodRequest};
use crate::schema::{AssignedGpu, GpuAssignment, NodeGpus, NODE_GPUS_ANNOTATION};
use crate::schema::{POD_ASSIGNMENT_ANNOTATION, SCHEMA_VERSION};
use crate::{Error, Result};

/// What holds some of a node's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// A pod bound to the node (seen in the API, or bound by us).
    Bound,
    /// A bind in flight: chosen, not yet confirmed by the API write.
    Assumed,
    /// Capacity reserved for a gang member not yet bound.
    Reserved,
}

/// One allocation on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub cpu_milli: u32,
    pub memory_mib: u64,
    /// (GPU index, milli-GPU).
    pub gpus: Vec<(u8, u16)>,
    pub hold: Hold,
    /// GPU class of the request (for the engine's GPU clustering policy).
    pub class: Option<usize>,
}

/// One node's entry.
#[derive(Debug)]
pub struct NodeEntry {
    pub name: String,
    /// `None` when the node carries no usable GPU annotation; the reason is in `problem`.
    pub gpus: Option<NodeGpus>,
    pub problem: Option<String>,
    pub state: NodeState,
    allocations: BTreeMap<String, Allocation>,
    frag_cache: Option<(u64, f64)>,
    /// The policy's recent verdicts on this node by pod shape, cleared on every change.
    score_cache: HashMap<ScoreKey, Option<(i64, GpuSet)>>,
}

/// A pod shape as the policies see it (memory is checked separately), plus the fragmentation
/// model's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScoreKey {
    pub cpu_milli: u32,
    pub num_gpu: u8,
    pub gpu_milli: u16,
    pub models: ModelMask,
    pub generation: u64,
}

/// Shapes remembered per node (the Alibaba trace has 81 distinct GPU pod shapes).
const SCORE_CACHE: usize = 256;

impl NodeEntry {
    fn recompute(&mut self) {
        let s = &mut self.state;
        s.cpu_free = s.cpu_capacity;
        s.memory_free = s.memory_capacity;
        s.class_pods = [0; GPU_CLASSES];
        let mut free = [0u16; MAX_GPUS_PER_NODE];
        if let Some(g) = &self.gpus {
            for (i, gpu) in g.gpus.iter().enumerate() {
                free[i] = gpu.milli;
            }
        }
        for a in self.allocations.values() {
            s.cpu_free = s.cpu_free.saturating_sub(a.cpu_milli);
            s.memory_free = s.memory_free.saturating_sub(a.memory_mib);
            for &(i, m) in &a.gpus {
                if let Some(f) = free.get_mut(usize::from(i)) {
                    *f = f.saturating_sub(m);
                }
            }
            if let Some(c) = a.class {
                s.class_pods[c] += 1;
            }
        }
        s.gpu_free = free;
        self.frag_cache = None;
        self.score_cache.clear();
    }

    /// A cached verdict for `key` (`Some(None)`: cached as not fitting).
    pub fn cached_score(&self, key: &ScoreKey) -> Option<Option<(i64, GpuSet)>> {
        self.score_cache.get(key).copied()
    }

    /// Remembers a verdict, forgetting the oldest beyond the cache's size.
    pub fn cache_score(&mut self, key: ScoreKey, verdict: Option<(i64, GpuSet)>) {
        if self.score_cache.len() >= SCORE_CACHE {
            self.score_cache.clear();
        }
        self.score_cache.insert(key, verdict);
    }

    /// A copy of the node's state (without its allocation list) to plan on.
    pub fn clone_for_planning(&self) -> NodeEntry {
        NodeEntry {
            name: self.name.clone(),
            gpus: None,
            problem: self.problem.clone(),
            state: self.state.clone(),
            allocations: BTreeMap::new(),
            frag_cache: None,
            score_cache: HashMap::new(),
        }
    }

    /// Applies a planned allocation to a planning copy.
    pub fn apply_planned(&mut self, req: &Request, gpus: GpuSet) {
        let s = &mut self.state;
        s.cpu_free = s.cpu_free.saturating_sub(req.cpu_milli);
        s.memory_free = s.memory_free.saturating_sub(req.memory_mib);
        for i in gpus.iter() {
            if let Some(f) = s.gpu_free.get_mut(i) {
                *f = f.saturating_sub(req.gpu_milli);
            }
        }
        if let Some(c) = req.gpu_class() {
            s.class_pods[c] += 1;
        }
        self.frag_cache = None;
        self.score_cache.clear();
    }

    pub fn allocation(&self, id: &str) -> Option<&Allocation> {
        self.allocations.get(id)
    }

    pub fn allocations(&self) -> impl Iterator<Item = (&String, &Allocation)> {
        self.allocations.iter()
    }

    /// The GPUs of `gpus` as assignment entries.
    pub fn assigned(&self, gpus: &[(u8, u16)]) -> Vec<AssignedGpu> {
        gpus.iter()
            .map(|&(i, milli)| AssignedGpu {
                index: u32::from(i),
                uuid: self
                    .gpus
                    .as_ref()
                    .and_then(|g| g.gpus.get(usize::from(i)))
                    .map(|g| g.uuid.clone())
                    .unwrap_or_default(),
                milli,
            })
            .collect()
    }
}

/// The GPU model table and the target workload's fragmentation compiled against it.
#[derive(Debug)]
struct Models {
    names: Vec<String>,
    frag: Option<Arc<Fragmentation>>,
    generation: u64,
}

/// The cluster state. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct ClusterState {
    /// By name. Hashed, not ordered: `filter` and `prioritize` look up every candidate node on
    /// every call, and at thousands of nodes a B-tree's string comparisons (each one a pointer
    /// chase into a different heap string) cost more than the whole rest of `filter`.
    nodes: RwLock<HashMap<String, Arc<Mutex<NodeEntry>>>>,
    models: RwLock<Models>,
    workload: Option<TargetWorkload>,
    /// Pod UID → node it holds capacity on.
    pods: Mutex<BTreeMap<String, String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ClusterState {
    /// An empty state; `workload` is the target workload of the FGD-family policies.
    pub fn new(workload: Option<TargetWorkload>) -> Self {
        Self {
            nodes: RwLock::default(),
            models: RwLock::new(Models {
                names: Vec::new(),
                frag: None,
                generation: 0,
            }),
            workload,
            pods: Mutex::default(),
        }
    }

    /// The entry of node `name`.
    pub fn node(&self, name: &str) -> Option<Arc<Mutex<NodeEntry>>> {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// The entries of `names`, in order, under one read lock.
    pub fn nodes_of(&self, names: &[String]) -> Vec<Option<Arc<Mutex<NodeEntry>>>> {
        let nodes = self.nodes.read().unwrap_or_else(PoisonError::into_inner);
        names.iter().map(|n| nodes.get(n).cloned()).collect()
    }

    /// Every node's name, sorted.
    pub fn node_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort_unstable();
        names
    }

    pub fn len(&self) -> usize {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn model_id(&self, product: &str) -> Option<u8> {
        {
            let m = self.models.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(i) = m.names.iter().position(|n| n == product) {
                return u8::try_from(i).ok();
            }
        }
        let mut m = self.models.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = m.names.iter().position(|n| n == product) {
            return u8::try_from(i).ok();
        }
        if m.names.len() >= gantry_placement::MAX_GPU_MODELS {
            return None;
        }
        m.names.push(product.to_string());
        m.generation += 1;
        m.frag = self.workload.as_ref().and_then(|w| {
            let specs: Vec<NodeSpec> = m
                .names
                .iter()
                .map(|n| NodeSpec {
                    name: n.clone(),
                    cpu_milli: 0,
                    memory_mib: 0,
                    gpus: 1,
                    gpu_model: Some(n.clone()),
                })
                .collect();
            gantry_placement::Cluster::new(&specs)
                .ok()
                .map(|c| Arc::new(Fragmentation::new(w, &c)))
        });
        u8::try_from(m.names.len() - 1).ok()
    }

    /// The fragmentation model and its generation (for per-node caches).
    pub fn fragmentation(&self) -> (Option<Arc<Fragmentation>>, u64) {
        let m = self.models.read().unwrap_or_else(PoisonError::into_inner);
        (m.frag.clone(), m.generation)
    }

    /// The engine request for `pod`: its accepted products resolved to the model mask.
    pub fn engine_request(&self, pod: &PodRequest) -> Request {
        let models: ModelMask = if pod.gpu_models.is_empty() {
            ANY_MODEL
        } else {
            let m = self.models.read().unwrap_or_else(PoisonError::into_inner);
            pod.gpu_models
                .iter()
                .filter_map(|name| m.names.iter().position(|n| n == name))
                .fold(0, |mask, i| mask | (1u64 << i))
        };
        Request {
            cpu_milli: pod.cpu_milli,
            memory_mib: pod.memory_mib,
            num_gpu: pod.num_gpu,
            gpu_milli: pod.gpu_milli,
            models,
        }
    }

    /// The expected fragmentation of a node (cached per node version).
    pub fn node_fragmentation(
        entry: &mut NodeEntry,
        frag: Option<&Fragmentation>,
        generation: u64,
    ) -> f64 {
        let Some(f) = frag else { return 0.0 };
        if let Some((g, v)) = entry.frag_cache {
            if g == generation {
                return v;
            }
        }
        let s = &entry.state;
        let v = f.node(s.model, s.cpu_free, s.gpus());
        entry.frag_cache = Some((generation, v));
        v
    }

    /// Adds or updates a node from its Kubernetes object. A node without a (valid) GPU
    /// annotation is kept with its problem recorded, so `filter` can say why it is unusable.
    pub fn upsert_node(&self, node: &Node) -> Result<()> {
        let name = node.metadata.name.clone().ok_or_else(|| Error::BadNode {
            node: String::new(),
            reason: "no metadata.name".to_string(),
        })?;
        let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let amount = |res: &str, scale: f64| -> Result<u64> {
            match alloc.and_then(|a| a.get(res)) {
                None => Ok(0),
                Some(q) => parse_quantity(&q.0, scale).ok_or_else(|| Error::BadNode {
                    node: name.clone(),
                    reason: format!("allocatable {res} {:?} is not a quantity", q.0),
                }),
            }
        };
        let cpu = u32::try_from(amount("cpu", 1000.0)?).unwrap_or(u32::MAX);
        let memory = amount("memory", 1.0)? / (1024 * 1024);
        let annotation = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NODE_GPUS_ANNOTATION));
        let (gpus, problem) = match annotation {
            None => (
                None,
                Some(format!(
                    "node has no {NODE_GPUS_ANNOTATION} annotation (is the Gantry device plugin running there?)"
                )),
            ),
            Some(v) => match NodeGpus::parse(&name, v) {
                Ok(g) => (Some(g), None),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        let model = match gpus.as_ref().and_then(|g| g.product().map(str::to_string)) {
            Some(p) => match self.model_id(&p) {
                Some(id) => Some(id),
                None => {
                    return Err(Error::BadNode {
                        node: name,
                        reason: format!(
                            "more than {} GPU products in the cluster",
                            gantry_placement::MAX_GPU_MODELS
                        ),
                    })
                }
            },
            None => None,
        };
        let gpu_count = gpus
            .as_ref()
            .map_or(0, |g| u8::try_from(g.gpus.len()).unwrap_or(0));
        let state = NodeState {
            cpu_capacity: cpu,
            memory_capacity: memory,
            cpu_free: cpu,
            memory_free: memory,
            model,
            gpu_count,
            gpu_free: [0; MAX_GPUS_PER_NODE],
            class_pods: [0; GPU_CLASSES],
        };
        let existing = self.node(&name);
        match existing {
            Some(entry) => {
                let mut e = lock(&entry);
                let same = e.gpus == gpus
                    && e.problem == problem
                    && e.state.cpu_capacity == state.cpu_capacity
                    && e.state.memory_capacity == state.memory_capacity
                    && e.state.model == state.model;
                if same {
                    // A periodic re-list: keep the caches.
                    return Ok(());
                }
                e.gpus = gpus;
                e.problem = problem;
                e.state = state;
                e.recompute();
            }
            None => {
                let mut e = NodeEntry {
                    name: name.clone(),
                    gpus,
                    problem,
                    state,
                    allocations: BTreeMap::new(),
                    frag_cache: None,
                    score_cache: HashMap::new(),
                };
                e.recompute();
                self.nodes
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(name)
                    .or_insert_with(|| Arc::new(Mutex::new(e)));
            }
        }
        Ok(())
    }

    /// Forgets a node and everything on it.
    pub fn remove_node(&self, name: &str) {
        self.nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        lock(&self.pods).retain(|_, n| n != name);
    }

    /// Records a pod from the API: a pod bound to a node (`spec.nodeName`) and not finished
    /// holds its CPU, memory and the GPUs of its assignment annotation. A finished pod, or one
    /// moved elsewhere, releases what it held.
    pub fn upsert_pod(&self, pod: &Pod) -> Result<()> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let finished = crate::request::pod_finished(pod);
        let Some(node) = node.filter(|_| !finished) else {
            self.remove_pod(&uid);
            return Ok(());
        };
        let req = match PodRequest::from_pod(pod) {
            Ok(r) => r,
            // A bound pod with no GPU still holds CPU and memory; read those leniently.
            Err(_) => cpu_only(pod),
        };
        let key = req.key.clone();
        let assignment = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(POD_ASSIGNMENT_ANNOTATION))
            .map(|v| GpuAssignment::parse(&key, v))
            .transpose()?;
        let Some(entry) = self.node(&node) else {
            return Ok(());
        };
        let mut e = lock(&entry);
        let gpus: Vec<(u8, u16)> = match &assignment {
            Some(a) => a
                .gpus
                .iter()
                .filter_map(|g| u8::try_from(g.index).ok().map(|i| (i, g.milli)))
                .collect(),
            // Seen before without an annotation: keep the GPUs it was counted on.
            None if e.allocations.contains_key(&uid) => e
                .allocations
                .get(&uid)
                .map(|a| a.gpus.clone())
                .unwrap_or_default(),
            None if req.num_gpu > 0 => {
                // Bound without our annotation (whole GPUs placed by the kubelet): count the
                // best-fitting GPUs, as the engine would have.
                let r = Request {
                    cpu_milli: 0,
                    memory_mib: 0,
                    num_gpu: req.num_gpu,
                    gpu_milli: req.gpu_milli,
                    models: ANY_MODEL,
                };
                set_to_vec(e.state.best_fit_gpus(&r), req.gpu_milli)
            }
            None => Vec::new(),
        };
        let class = (req.num_gpu > 0)
            .then(|| self.engine_request(&req).gpu_class())
            .flatten();
        let allocation = Allocation {
            cpu_milli: req.cpu_milli,
            memory_mib: req.memory_mib,
            gpus,
            hold: Hold::Bound,
            class,
        };
        let unchanged = e.allocations.get(&uid).is_some_and(|a| {
            a.cpu_milli == allocation.cpu_milli
                && a.memory_mib == allocation.memory_mib
                && a.gpus == allocation.gpus
        });
        if unchanged {
            // Seen again (a re-list), or our own bind now visible in the API: same capacity,
            // so the node's caches stay valid.
            if let Some(a) = e.allocations.get_mut(&uid) {
                a.hold = Hold::Bound;
            }
        } else {
            e.allocations.insert(uid.clone(), allocation);
            e.recompute();
        }
        drop(e);
        let previous = lock(&self.pods).insert(uid.clone(), node.clone());
        if let Some(prev) = previous.filter(|p| *p != node) {
            if let Some(old) = self.node(&prev) {
                let mut o = lock(&old);
                o.allocations.remove(&uid);
                o.recompute();
            }
        }
        Ok(())
    }

    /// Forgets every *bound* pod whose UID is not in `live` (pods deleted since the last list).
    /// Binds in flight and gang reservations are kept. Returns the UIDs forgotten.
    pub fn retain_bound(&self, live: &std::collections::BTreeSet<String>) -> Vec<String> {
        let nodes: Vec<_> = self
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut gone = Vec::new();
        for n in nodes {
            let mut e = lock(&n);
            let before = e.allocations.len();
            e.allocations.retain(|id, a| {
                let keep = a.hold != Hold::Bound || live.contains(id);
                if !keep {
                    gone.push(id.clone());
                }
                keep
            });
            if e.allocations.len() != before {
                e.recompute();
            }
        }
        let mut pods = lock(&self.pods);
        for id in &gone {
            pods.remove(id);
        }
        gone
    }

    /// Releases whatever pod `uid` holds.
    pub fn remove_pod(&self, uid: &str) {
        let node = lock(&self.pods).remove(uid);
        if let Some(entry) = node.and_then(|n| self.node(&n)) {
            let mut e = lock(&entry);
            if e.allocations.remove(uid).is_some() {
                e.recompute();
            }
        }
    }

    /// Under the node's lock: lets `choose` pick GPUs on the node's current state and records
    /// the allocation under `id`. `choose` returns `None` when the request does not fit.
    pub fn allocate(
        &self,
        node: &str,
        id: &str,
        req: &Request,
        hold: Hold,
        choose: impl FnOnce(&mut NodeEntry) -> Option<GpuSet>,
    ) -> Result<Vec<AssignedGpu>> {
        let entry = self.node(node).ok_or_else(|| Error::UnknownNode {
            node: node.to_string(),
        })?;
        let mut e = lock(&entry);
        if e.allocations.contains_key(id) {
            return Err(Error::AlreadyAllocated {
                id: id.to_string(),
                node: node.to_string(),
            });
        }
        if !e.state.fits(req) {
            return Err(Error::DoesNotFit {
                node: node.to_string(),
                reason: why_not(&e, req),
            });
        }
        let set = choose(&mut e).filter(|s| s.len() == usize::from(req.num_gpu));
        let Some(set) = set.filter(|s| {
            s.iter()
                .all(|i| e.state.gpus().get(i).is_some_and(|&f| f >= req.gpu_milli))
        }) else {
            return Err(Error::DoesNotFit {
                node: node.to_string(),
                reason: "no GPU set fits".to_string(),
            });
        };
        let gpus = set_to_vec(set, req.gpu_milli);
        let assigned = e.assigned(&gpus);
        e.allocations.insert(
            id.to_string(),
            Allocation {
                cpu_milli: req.cpu_milli,
                memory_mib: req.memory_mib,
                gpus,
                hold,
                class: req.gpu_class(),
            },
        );
        e.recompute();
        drop(e);
        lock(&self.pods).insert(id.to_string(), node.to_string());
        Ok(assigned)
    }

    /// Moves allocation `from` to the name `to` with a new hold (a gang slot claimed by a pod,
    /// or given back). Returns the GPUs it holds.
    pub fn rename(&self, node: &str, from: &str, to: &str, hold: Hold) -> Result<Vec<AssignedGpu>> {
        let entry = self.node(node).ok_or_else(|| Error::UnknownNode {
            node: node.to_string(),
        })?;
        let mut e = lock(&entry);
        if e.allocations.contains_key(to) {
            return Err(Error::AlreadyAllocated {
                id: to.to_string(),
                node: node.to_string(),
            });
        }
        let mut a = e
            .allocations
            .remove(from)
            .ok_or_else(|| Error::UnknownNode {
                node: format!("{node} (no allocation {from})"),
            })?;
        a.hold = hold;
        let assigned = e.assigned(&a.gpus);
        e.allocations.insert(to.to_string(), a);
        drop(e);
        let mut pods = lock(&self.pods);
        pods.remove(from);
        pods.insert(to.to_string(), node.to_string());
        Ok(assigned)
    }

    /// Changes the hold of allocation `id` (an assumed bind confirmed by the API).
    pub fn set_hold(&self, node: &str, id: &str, hold: Hold) {
        if let Some(entry) = self.node(node) {
            if let Some(a) = lock(&entry).allocations.get_mut(id) {
                a.hold = hold;
            }
        }
    }

    /// Releases allocation `id` on `node`.
    pub fn release(&self, node: &str, id: &str) {
        if let Some(entry) = self.node(node) {
            let mut e = lock(&entry);
            if e.allocations.remove(id).is_some() {
                e.recompute();
            }
        }
        let mut pods = lock(&self.pods);
        if pods.get(id).is_some_and(|n| n == node) {
            pods.remove(id);
        }
    }

    /// Every GPU allocation in the cluster: (node, id, allocation), sorted by node and id. For
    /// checks and tests.
    pub fn all_allocations(&self) -> Vec<(String, String, Allocation)> {
        let nodes: Vec<_> = self
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for n in nodes {
            let e = lock(&n);
            for (id, a) in &e.allocations {
                out.push((e.name.clone(), id.clone(), a.clone()));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
}

/// Locks a node entry (poison is ignored: entries are consistent after every statement).
pub fn lock_entry(entry: &Mutex<NodeEntry>) -> MutexGuard<'_, NodeEntry> {
    lock(entry)
}

fn set_to_vec(set: GpuSet, milli: u16) -> Vec<(u8, u16)> {
    set.iter()
        .filter_map(|i| u8::try_from(i).ok().map(|i| (i, milli)))
        .collect()
}

fn cpu_only(pod: &Pod) -> PodRequest {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let mut cpu = 0u64;
    let mut memory = 0u64;
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        if let Some(r) = c.resources.as_ref().and_then(|r| r.requests.as_ref()) {
            cpu += r
                .get("cpu")
                .and_then(|q| parse_quantity(&q.0, 1000.0))
                .unwrap_or(0);
            memory += r
                .get("memory")
                .and_then(|q| parse_quantity(&q.0, 1.0))
                .unwrap_or(0);
        }
    }
    PodRequest {
        key: format!("{ns}/{name}"),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        cpu_milli: u32::try_from(cpu).unwrap_or(u32::MAX),
        memory_mib: memory.div_ceil(1024 * 1024),
        num_gpu: 0,
        gpu_milli: 0,
        gpu_models: Vec::new(),
        gang: None,
    }
}

/// Why a node cannot take a request, by category. The texts depend on the request only, never
/// on the node's free amounts, so they are the same on every node: kube-scheduler's event for an
/// unschedulable pod counts nodes per distinct reason ("0/5000 nodes are available: 3120 not
/// enough GPU: ..."), which per-node numbers would turn into thousands of one-node entries. It
/// also lets `filter` format each text once per call rather than once per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit<'a> {
    /// The node's GPU annotation is missing or unusable; the text says why.
    Problem(&'a str),
    /// The node's GPU product is not one the pod accepts.
    Model(&'a str),
    /// The node has this many GPUs, fewer than the pod requests, even when empty (few distinct
    /// counts in a cluster, so the texts still aggregate).
    GpuCount(u8),
    Cpu,
    Memory,
    /// Not enough GPUs with enough free capacity now.
    Gpu,
}

impl Unfit<'_> {
    /// Whether waiting cannot help: preempting pods on the node would not make it fit.
    pub fn unresolvable(&self) -> bool {
        matches!(self, Self::Problem(_) | Self::Model(_) | Self::GpuCount(_))
    }

    /// The reason as kube-scheduler shows it.
    pub fn text(&self, req: &Request) -> String {
        match self {
            Self::Problem(p) => (*p).to_string(),
            Self::Model(product) => format!("GPU product {product} is not one the pod accepts"),
            Self::GpuCount(have) => format!(
                "the node has {have} GPU(s), the pod requests {}",
                req.num_gpu
            ),
            Self::Cpu => format!(
                "not enough CPU for the pod's {}m (CPU requests of pods already there)",
                req.cpu_milli
            ),
            Self::Memory => format!("not enough memory for the pod's {} MiB", req.memory_mib),
            Self::Gpu => format!(
                "not enough GPU: {} GPU(s) with {} milli-GPU free needed",
                req.num_gpu, req.gpu_milli
            ),
        }
    }
}

/// Why `req` does not fit on the node (call it when [`NodeState::fits`] said no, or the node has
/// a problem; a node that fits is reported as [`Unfit::Gpu`]).
pub fn unfit<'a>(e: &'a NodeEntry, req: &Request) -> Unfit<'a> {
    let s = &e.state;
    if let Some(p) = &e.problem {
        return Unfit::Problem(p);
    }
    if req.num_gpu > 0 && !s.model_accepts(req) {
        return Unfit::Model(
            e.gpus
                .as_ref()
                .and_then(|g| g.product())
                .unwrap_or("(none)"),
        );
    }
    if s.gpu_count < req.num_gpu {
        return Unfit::GpuCount(s.gpu_count);
    }
    if s.cpu_free < req.cpu_milli {
        return Unfit::Cpu;
    }
    if s.memory_free < req.memory_mib {
        return Unfit::Memory;
    }
    Unfit::Gpu
}

/// The text of [`unfit`].
pub fn why_not(e: &NodeEntry, req: &Request) -> String {
    unfit(e, req).text(req)
}

/// The texts of one `filter` call's reasons, each formatted once (see [`Unfit`]).
#[derive(Debug, Default)]
pub struct ReasonTexts {
    fixed: [Option<String>; 3],
    counts: Vec<(u8, String)>,
    models: Vec<(String, String)>,
}

impl ReasonTexts {
    pub fn text(&mut self, why: Unfit<'_>, req: &Request) -> String {
        let slot = match why {
            Unfit::Problem(p) => return p.to_string(),
            Unfit::Model(product) => {
                if let Some((_, t)) = self.models.iter().find(|(p, _)| p == product) {
                    return t.clone();
                }
                let t = why.text(req);
                self.models.push((product.to_string(), t.clone()));
                return t;
            }
            Unfit::GpuCount(have) => {
                if let Some((_, t)) = self.counts.iter().find(|(c, _)| *c == have) {
                    return t.clone();
                }
                let t = why.text(req);
                self.counts.push((have, t.clone()));
                return t;
            }
            Unfit::Cpu => 0,
            Unfit::Memory => 1,
            Unfit::Gpu => 2,
        };
        self.fixed[slot]
            .get_or_insert_with(|| why.text(req))
            .clone()
    }
}

/// The assignment annotation for GPUs on `node`.
pub fn assignment(node: &str, gpus: Vec<AssignedGpu>) -> GpuAssignment {
    GpuAssignment {
        version: SCHEMA_VERSION.to_string(),
        node: node.to_string(),
        gpus,
    }
}
