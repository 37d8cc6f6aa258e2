//! The shared-GPU handshake, device plugin side: which pod an `Allocate` of `gantry.dev/gpu-milli`
//! is for. Pure: the node's pods and what the plugin remembers in, a decision out.
//!
//! The kubelet's `Allocate` names only device IDs, never the pod. gantry-scheduler recorded the
//! chosen GPU on the pod (`gantry.dev/gpu-assignment`) before binding it, so the plugin lists the
//! pods on its node and picks the oldest one waiting for exactly this many thousandths
//! ([`gantry_scheduler::schema::allocate_target`]). The kubelet allocates a pod's containers one
//! `Allocate` at a time (init containers first, then the others, in spec order), so each pod offers
//! its *next* container not yet served; a served container is recorded on the pod
//! ([`POD_ALLOCATED_ANNOTATION`], [`POD_ALLOCATED_CONTAINERS_ANNOTATION`]) and in memory.
//!
//! Whole GPUs (`nvidia.com/gpu`) are chosen by the kubelet, not the plugin: [`prefer_whole`] steers
//! `GetPreferredAllocation` to the recorded GPUs, and [`allocate_whole`] says how to correct the
//! record when the kubelet handed out others.

use std::collections::{BTreeMap, BTreeSet};

use gantry_scheduler::schema::{
    allocate_target, AssignedGpu, GpuAssignment, POD_ASSIGNMENT_ANNOTATION, RESOURCE_GPU,
    RESOURCE_GPU_MILLI, SCHEMA_VERSION,
};
use k8s_openapi::api::core::v1::{Container, Pod};

/// Pod annotation: when the device plugin last handed the pod its recorded GPU (RFC 3339). Alone
/// (without [`POD_ALLOCATED_CONTAINERS_ANNOTATION`]) it means every container was served.
pub const POD_ALLOCATED_ANNOTATION: &str = "gantry.dev/gpu-allocated";
/// Pod annotation: the comma-separated containers the device plugin has served so far.
pub const POD_ALLOCATED_CONTAINERS_ANNOTATION: &str = "gantry.dev/gpu-allocated-containers";

/// What the plugin served since it started: pod identity (UID, or `namespace/name` without one) to
/// the containers served.
pub type Served = BTreeMap<String, BTreeSet<String>>;

/// The pod and container an `Allocate` is for, and the GPUs to hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub namespace: String,
    pub name: String,
    /// The key of [`Served`].
    pub id: String,
    /// The container served.
    pub container: String,
    /// The recorded GPU UUIDs (one for a shared GPU).
    pub gpus: Vec<String>,
    /// Every container served once this one is, in the kubelet's order.
    pub served: Vec<String>,
}

impl Choice {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The merge patch that records this allocation on the pod, at time `now` (RFC 3339).
    pub fn patch(&self, now: &str) -> serde_json::Value {
        let mut annotations = serde_json::Map::new();
        annotations.insert(POD_ALLOCATED_ANNOTATION.to_owned(), now.into());
        annotations.insert(
            POD_ALLOCATED_CONTAINERS_ANNOTATION.to_owned(),
            self.served.join(",").into(),
        );
        serde_json::json!({"metadata": {"annotations": annotations}})
    }
}

/// [`choose`]'s answer: the choice, if any pod matches, and a warning per pod that was skipped
/// because something on it is malformed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub choice: Option<Choice>,
    pub warnings: Vec<String>,
}

/// The identity [`Served`] is keyed by.
pub fn pod_id(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        )
    })
}

/// A container's `gantry.dev/gpu-milli`: the request, else the limit (extended resources are
/// usually given as limits). `Err` names a malformed quantity.
fn container_milli(container: &Container) -> Result<u32, String> {
    container_quantity(container, RESOURCE_GPU_MILLI)
}

/// A pod waiting for its next container's shared GPU.
#[derive(Debug)]
struct Slot {
    namespace: String,
    name: String,
    id: String,
    container: String,
    served: Vec<String>,
}

/// Why a pod offers no slot: `None` (not a candidate, silently), or a warning.
fn slot(node: &str, pod: &Pod, served: &Served) -> Result<Option<(Slot, GpuAssignment)>, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(None);
    };
    if spec.node_name.as_deref() != Some(node) {
        return Ok(None);
    }
    // Terminating or finished pods start no container; a running pod was admitted (and allocated)
    // already: the kubelet allocates every container before the first one starts.
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if pod.metadata.deletion_timestamp.is_some()
        || matches!(phase, Some("Succeeded" | "Failed" | "Running"))
    {
        return Ok(None);
    }
    let annotations = pod.metadata.annotations.as_ref();
    let Some(raw) = annotations.and_then(|a| a.get(POD_ASSIGNMENT_ANNOTATION)) else {
        return Ok(None);
    };
    let assignment = GpuAssignment::parse(&key, raw).map_err(|e| e.to_string())?;
    if assignment.node != node {
        return Err(format!(
            "pod {key} is bound to node {node} but its {POD_ASSIGNMENT_ANNOTATION} names node {}",
            assignment.node
        ));
    }
    let id = pod_id(pod);
    let remembered = served.get(&id);
    let mut done: BTreeSet<String> = remembered.cloned().unwrap_or_default();
    let recorded_containers = annotations.and_then(|a| a.get(POD_ALLOCATED_CONTAINERS_ANNOTATION));
    if let Some(list) = recorded_containers {
        done.extend(list.split(',').filter(|c| !c.is_empty()).map(str::to_owned));
    } else if annotations.is_some_and(|a| a.contains_key(POD_ALLOCATED_ANNOTATION)) {
        return Ok(None); // served as a whole
    }
    // The kubelet's order: init containers, then the others.
    let mut wanting = Vec::new();
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        let milli = container_milli(container).map_err(|e| format!("pod {key}: {e}"))?;
        if milli > 0 {
            wanting.push((container.name.clone(), milli));
        }
    }
    // No container asks for shares: a whole-GPU pod.
    let Some(position) = wanting.iter().position(|(c, _)| !done.contains(c)) else {
        return Ok(None);
    };
    let (container, units) = wanting[position].clone();
    let served_names: Vec<String> = wanting[..=position]
        .iter()
        .map(|(c, _)| c.clone())
        .collect();
    if assignment.gpus.len() != 1 {
        return Err(format!(
            "pod {key} asks for {RESOURCE_GPU_MILLI} but its {POD_ASSIGNMENT_ANNOTATION} names {} GPUs, not one",
            assignment.gpus.len()
        ));
    }
    // The slot offers this container's share of the recorded GPU.
    let mut offered = assignment;
    for gpu in &mut offered.gpus {
        gpu.milli = u16::try_from(units).unwrap_or(u16::MAX);
    }
    Ok(Some((
        Slot {
            namespace,
            name,
            id,
            container,
            served: served_names,
        },
        offered,
    )))
}

/// Which pod an `Allocate` of `units` thousandths on `node` is for.
///
/// # Flow
/// The pods on `node` that are neither finished, terminating nor running and carry a
/// `gantry.dev/gpu-assignment` for `node` are ordered oldest first (creation time, then namespace and
/// name). Each offers its next container asking for `gantry.dev/gpu-milli` that is served neither
/// by the pod's annotations nor by `served`; [`allocate_target`] takes the first whose share equals
/// `units`.
///
/// # Guarantees
/// Deterministic for the same input. A pod with a malformed assignment or quantity is skipped with
/// a warning and never keeps another pod from matching.
pub fn choose(node: &str, units: u32, pods: &[Pod], served: &Served) -> Decision {
    let ordered = oldest_first(pods);
    let mut warnings = Vec::new();
    let mut slots = Vec::new();
    let mut bound = Vec::new();
    for pod in ordered {
        match slot(node, pod, served) {
            Ok(Some((slot, assignment))) => {
                bound.push((format!("{}/{}", slot.namespace, slot.name), assignment));
                slots.push(slot);
            }
            Ok(None) => {}
            Err(warning) => warnings.push(warning),
        }
    }
    // Every slot is a container not yet served: nothing to exclude.
    let choice = allocate_target(node, units, &bound, &BTreeSet::new()).and_then(|(key, gpus)| {
        let index = bound.iter().position(|(k, _)| k == key)?;
        let slot = &slots[index];
        Some(Choice {
            namespace: slot.namespace.clone(),
            name: slot.name.clone(),
            id: slot.id.clone(),
            container: slot.container.clone(),
            gpus: gpus.into_iter().map(str::to_owned).collect(),
            served: slot.served.clone(),
        })
    });
    Decision { choice, warnings }
}

// ---------------------------------------------------------------------------------------------
// Whole GPUs (`nvidia.com/gpu`): the kubelet picks the device IDs itself. The plugin steers its
// choice towards the GPUs the scheduler recorded (`GetPreferredAllocation`, [`prefer_whole`]) and,
// when the kubelet chose otherwise, corrects the record after the fact (`Allocate`,
// [`allocate_whole`]), so the extender's books follow what the containers really got.
// ---------------------------------------------------------------------------------------------

/// A pod waiting for whole GPUs: bound by gantry-scheduler to this node, not served yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholePod {
    pub namespace: String,
    pub name: String,
    /// The key of [`Served`].
    pub id: String,
    /// Its containers asking for `nvidia.com/gpu`, in the kubelet's order.
    pub containers: Vec<String>,
    /// What the scheduler recorded.
    pub assignment: GpuAssignment,
}

impl WholePod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The recorded GPU UUIDs, in the record's (index) order.
    pub fn recorded(&self) -> Vec<&str> {
        self.assignment.gpu_uuids()
    }
}

/// A container's request for `resource` (the request, else the limit). `Err` names a malformed
/// quantity.
fn container_quantity(container: &Container, resource: &str) -> Result<u32, String> {
    let Some(resources) = &container.resources else {
        return Ok(0);
    };
    let quantity = resources
        .requests
        .as_ref()
        .and_then(|r| r.get(resource))
        .or_else(|| resources.limits.as_ref().and_then(|l| l.get(resource)));
    match quantity {
        None => Ok(0),
        Some(q) => q.0.trim().parse().map_err(|_| {
            format!(
                "container {} asks for {resource} {:?}, not a whole number",
                container.name, q.0
            )
        }),
    }
}

/// Whether a pod still holds (or is about to hold) what it was assigned: not finished, not deleting.
fn unfinished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Pods ordered oldest first (creation time, then namespace and name).
fn oldest_first(pods: &[Pod]) -> Vec<&Pod> {
    let mut ordered: Vec<&Pod> = pods.iter().collect();
    ordered.sort_by(|a, b| {
        let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let name = |p: &Pod| (p.metadata.namespace.clone(), p.metadata.name.clone());
        created(a)
            .cmp(&created(b))
            .then_with(|| name(a).cmp(&name(b)))
    });
    ordered
}

/// Why a pod is no whole-GPU candidate: `None` (silently), or a warning.
fn whole_pod(
    node: &str,
    count: usize,
    pod: &Pod,
    served: &Served,
) -> Result<Option<WholePod>, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(None);
    };
    if spec.node_name.as_deref() != Some(node) {
        return Ok(None);
    }
    // A running pod was admitted (and allocated) already.
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    if !unfinished(pod) || running {
        return Ok(None);
    }
    let annotations = pod.metadata.annotations.as_ref();
    let Some(raw) = annotations.and_then(|a| a.get(POD_ASSIGNMENT_ANNOTATION)) else {
        return Ok(None);
    };
    if annotations.is_some_and(|a| a.contains_key(POD_ALLOCATED_ANNOTATION))
        || served.contains_key(&pod_id(pod))
    {
        return Ok(None);
    }
    let mut containers = Vec::new();
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        // A pod asking for shares is the shared handshake's.
        if container_milli(container).map_err(|e| format!("pod {key}: {e}"))? > 0 {
            return Ok(None);
        }
        if container_quantity(container, RESOURCE_GPU).map_err(|e| format!("pod {key}: {e}"))? > 0 {
            containers.push(container.name.clone());
        }
    }
    if containers.is_empty() {
        return Ok(None);
    }
    let assignment = GpuAssignment::parse(&key, raw).map_err(|e| e.to_string())?;
    if assignment.node != node {
        return Err(format!(
            "pod {key} is bound to node {node} but its {POD_ASSIGNMENT_ANNOTATION} names node {}",
            assignment.node
        ));
    }
    if assignment.gpus.len() != count || assignment.gpus.iter().any(|g| g.milli != 1000) {
        return Ok(None);
    }
    Ok(Some(WholePod {
        namespace,
        name,
        id: pod_id(pod),
        containers,
        assignment,
    }))
}

/// The pods on `node` waiting for exactly `count` whole GPUs, oldest first, and a warning per pod
/// skipped because something on it is malformed.
///
/// A candidate is bound to `node`, neither finished, terminating nor running, not marked allocated
/// (the [`POD_ALLOCATED_ANNOTATION`] or `served`), asks for `nvidia.com/gpu` and no
/// `gantry.dev/gpu-milli`, and carries a `gantry.dev/gpu-assignment` for `node` of `count` GPUs at
/// 1000 thousandths each.
pub fn whole_candidates(
    node: &str,
    count: usize,
    pods: &[Pod],
    served: &Served,
) -> (Vec<WholePod>, Vec<String>) {
    let mut candidates = Vec::new();
    let mut warnings = Vec::new();
    for pod in oldest_first(pods) {
        match whole_pod(node, count, pod, served) {
            Ok(Some(candidate)) => candidates.push(candidate),
            Ok(None) => {}
            Err(warning) => warnings.push(warning),
        }
    }
    (candidates, warnings)
}

/// `GetPreferredAllocation` of whole GPUs: the recorded GPUs of the first candidate (oldest first)
/// whose recorded GPUs are all in `available` and include every `must_include` ID. `None`: no
/// candidate fits, the caller falls back to its topology choice.
pub fn prefer_whole(
    candidates: &[WholePod],
    available: &[String],
    must_include: &[String],
) -> Option<Vec<String>> {
    let available: BTreeSet<&str> = available.iter().map(String::as_str).collect();
    candidates.iter().find_map(|pod| {
        let recorded = pod.recorded();
        let fits = recorded.iter().all(|uuid| available.contains(uuid))
            && must_include
                .iter()
                .all(|id| recorded.contains(&id.as_str()));
        fits.then(|| recorded.iter().map(|u| (*u).to_owned()).collect())
    })
}

/// A GPU handed out wholly that carries another unfinished pod's recorded assignment (shares, or a
/// stale whole-GPU record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub uuid: String,
    /// `namespace/name` of the other pod.
    pub pod: String,
    /// The thousandths recorded for it on this GPU.
    pub milli: u16,
}

/// What a whole-GPU `Allocate` changes in the books.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeAllocation {
    pub pod: WholePod,
    /// The assignment of the GPUs actually handed out, when they differ from the record.
    pub corrected: Option<GpuAssignment>,
    /// The handed-out GPUs recorded for other unfinished pods on the node.
    pub conflicts: Vec<Conflict>,
}

impl WholeAllocation {
    /// The merge patch that records this allocation on the pod at time `now` (RFC 3339): the
    /// allocation annotations of the shared path and, when corrected, the new assignment.
    pub fn patch(&self, now: &str) -> serde_json::Value {
        let mut annotations = serde_json::Map::new();
        annotations.insert(POD_ALLOCATED_ANNOTATION.to_owned(), now.into());
        annotations.insert(
            POD_ALLOCATED_CONTAINERS_ANNOTATION.to_owned(),
            self.pod.containers.join(",").into(),
        );
        if let Some(corrected) = &self.corrected {
            annotations.insert(
                POD_ASSIGNMENT_ANNOTATION.to_owned(),
                corrected.to_annotation().into(),
            );
        }
        serde_json::json!({"metadata": {"annotations": annotations}})
    }

    /// One line per conflict, naming both pods.
    pub fn conflict_warnings(&self) -> Vec<String> {
        self.conflicts
            .iter()
            .map(|c| {
                format!(
                    "GPU {} is handed out wholly to pod {} but carries {} thousandths recorded for pod {}",
                    c.uuid,
                    self.pod.key(),
                    c.milli,
                    c.pod
                )
            })
            .collect()
    }
}

/// [`allocate_whole`]'s answer: the allocation, if any pod matches, and a warning per skipped pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WholeDecision {
    pub allocation: Option<WholeAllocation>,
    pub warnings: Vec<String>,
}

/// `Allocate` of whole GPUs on `node`: the kubelet handed out `gpus` (`(index, uuid)`, any order).
///
/// # Flow
/// The candidates of [`whole_candidates`] for `gpus.len()` GPUs; the one whose record is exactly
/// `gpus` wins (the kubelet followed [`prefer_whole`]), else the oldest. When its record differs
/// from `gpus` the allocation carries the corrected assignment (same schema, indexes ascending,
/// 1000 each). Every other unfinished pod on `node` (running ones included) whose record names one of
/// `gpus` is a [`Conflict`].
///
/// # Guarantees
/// Pure and deterministic. Malformed pods are skipped with a warning.
pub fn allocate_whole(
    node: &str,
    gpus: &[(u32, String)],
    pods: &[Pod],
    served: &Served,
) -> WholeDecision {
    let (candidates, warnings) = whole_candidates(node, gpus.len(), pods, served);
    let handed: BTreeSet<&str> = gpus.iter().map(|(_, u)| u.as_str()).collect();
    let same = |pod: &WholePod| pod.recorded().into_iter().collect::<BTreeSet<_>>() == handed;
    let Some(pod) = candidates
        .iter()
        .find(|p| same(p))
        .or_else(|| candidates.first())
        .cloned()
    else {
        return WholeDecision {
            allocation: None,
            warnings,
        };
    };
    let corrected = (!same(&pod)).then(|| {
        let mut sorted = gpus.to_vec();
        sorted.sort();
        sorted.dedup();
        GpuAssignment {
            version: SCHEMA_VERSION.to_owned(),
            node: node.to_owned(),
            gpus: sorted
                .into_iter()
                .map(|(index, uuid)| AssignedGpu {
                    index,
                    uuid,
                    milli: 1000,
                })
                .collect(),
        }
    });
    let mut conflicts = Vec::new();
    for other in oldest_first(pods) {
        let Some(spec) = other.spec.as_ref() else {
            continue;
        };
        if spec.node_name.as_deref() != Some(node) || !unfinished(other) || pod_id(other) == pod.id
        {
            continue;
        }
        let key = format!(
            "{}/{}",
            other.metadata.namespace.as_deref().unwrap_or_default(),
            other.metadata.name.as_deref().unwrap_or_default()
        );
        let Some(raw) = other
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(POD_ASSIGNMENT_ANNOTATION))
        else {
            continue;
        };
        // A malformed record was warned about (or is not ours to judge): no conflict to report.
        let Ok(record) = GpuAssignment::parse(&key, raw) else {
            continue;
        };
        if record.node != node {
            continue;
        }
        for gpu in record
            .gpus
            .iter()
            .filter(|g| handed.contains(g.uuid.as_str()))
        {
            conflicts.push(Conflict {
                uuid: gpu.uuid.clone(),
                pod: key.clone(),
                milli: gpu.milli,
            });
        }
    }
    WholeDecision {
        allocation: Some(WholeAllocation {
            pod,
            corrected,
            conflicts,
        }),
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NODE: &str = "gpu-node-1";

    /// A pod on `node` created at second `created`, with one container per `milli` share, and the
    /// assignment of `gpu` when given.
    fn pod(name: &str, created: u32, node: &str, gpu: Option<&str>, milli: &[u32]) -> Pod {
        let total: u32 = milli.iter().sum();
        let mut annotations = serde_json::Map::new();
        if let Some(gpu) = gpu {
            annotations.insert(
                POD_ASSIGNMENT_ANNOTATION.into(),
                json!({"version": "v1", "node": node, "gpus": [{"index": 0, "uuid": gpu, "milli": total}]})
                    .to_string()
                    .into(),
            );
        }
        let containers: Vec<serde_json::Value> = milli
            .iter()
            .enumerate()
            .map(|(i, m)| json!({"name": format!("c{i}"), "resources": {"limits": {"gantry.dev/gpu-milli": m.to_string()}}}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"),
                "creationTimestamp": format!("2026-01-01T00:00:{created:02}Z"), "annotations": annotations},
            "spec": {"nodeName": node, "containers": containers},
            "status": {"phase": "Pending"},
        }))
        .unwrap()
    }

    fn annotate(mut pod: Pod, key: &str, value: &str) -> Pod {
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
        pod
    }

    fn chosen(units: u32, pods: &[Pod], served: &Served) -> Option<(String, String, Vec<String>)> {
        choose(NODE, units, pods, served)
            .choice
            .map(|c| (c.name, c.container, c.gpus))
    }

    #[test]
    fn oldest_matching_pod_first() {
        let pods = [
            pod("young", 30, NODE, Some("GPU-b"), &[250]),
            pod("old", 10, NODE, Some("GPU-a"), &[250]),
            pod("half", 5, NODE, Some("GPU-c"), &[500]),
        ];
        assert_eq!(
            chosen(250, &pods, &Served::new()),
            Some(("old".into(), "c0".into(), vec!["GPU-a".into()]))
        );
        assert_eq!(chosen(500, &pods, &Served::new()).unwrap().0, "half");
        assert_eq!(chosen(300, &pods, &Served::new()), None);
        // Same creation time: by name.
        let tie = [
            pod("b", 10, NODE, Some("GPU-b"), &[250]),
            pod("a", 10, NODE, Some("GPU-a"), &[250]),
        ];
        assert_eq!(chosen(250, &tie, &Served::new()).unwrap().0, "a");
    }

    #[test]
    fn allocated_pods_are_skipped_from_annotation_or_memory() {
        let old = pod("old", 10, NODE, Some("GPU-a"), &[250]);
        let young = pod("young", 30, NODE, Some("GPU-b"), &[250]);
        let recorded = annotate(
            old.clone(),
            POD_ALLOCATED_ANNOTATION,
            "2026-01-01T00:01:00Z",
        );
        assert_eq!(
            chosen(250, &[recorded, young.clone()], &Served::new())
                .unwrap()
                .0,
            "young"
        );
        let mut served = Served::new();
        served
            .entry("uid-old".into())
            .or_default()
            .insert("c0".into());
        let decision = choose(NODE, 250, &[old.clone(), young.clone()], &served);
        assert_eq!(decision.choice.unwrap().name, "young");
        served
            .entry("uid-young".into())
            .or_default()
            .insert("c0".into());
        assert_eq!(chosen(250, &[old, young], &served), None);
    }

    #[test]
    fn finished_terminating_running_and_foreign_pods_are_skipped() {
        let mut done = pod("done", 1, NODE, Some("GPU-a"), &[250]);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut failed = pod("failed", 2, NODE, Some("GPU-a"), &[250]);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let mut running = pod("running", 3, NODE, Some("GPU-a"), &[250]);
        running.status.as_mut().unwrap().phase = Some("Running".into());
        let mut deleting = pod("deleting", 4, NODE, Some("GPU-a"), &[250]);
        deleting.metadata.deletion_timestamp = deleting.metadata.creation_timestamp.clone();
        let elsewhere = pod("elsewhere", 5, "gpu-node-2", Some("GPU-x"), &[250]);
        let unassigned = pod("unassigned", 6, NODE, None, &[250]);
        let mine = pod("mine", 9, NODE, Some("GPU-b"), &[250]);
        let pods = [done, failed, running, deleting, elsewhere, unassigned, mine];
        let decision = choose(NODE, 250, &pods, &Served::new());
        assert_eq!(decision.choice.unwrap().name, "mine");
        assert!(decision.warnings.is_empty(), "{:?}", decision.warnings);
        assert_eq!(
            choose("gpu-node-2", 250, &pods, &Served::new())
                .choice
                .unwrap()
                .name,
            "elsewhere"
        );
    }

    #[test]
    fn malformed_pods_warn_and_do_not_block_others() {
        let broken = annotate(
            pod("broken", 1, NODE, None, &[250]),
            POD_ASSIGNMENT_ANNOTATION,
            "{not json",
        );
        let future = annotate(
            pod("future", 2, NODE, None, &[250]),
            POD_ASSIGNMENT_ANNOTATION,
            r#"{"version":"v9","node":"gpu-node-1","gpus":[]}"#,
        );
        let mut bad_quantity = pod("quantity", 3, NODE, Some("GPU-a"), &[250]);
        bad_quantity.spec.as_mut().unwrap().containers[0]
            .resources
            .as_mut()
            .unwrap()
            .limits
            .as_mut()
            .unwrap()
            .insert(
                RESOURCE_GPU_MILLI.into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("1/4".into()),
            );
        let misplaced = pod("misplaced", 4, NODE, None, &[250]);
        let misplaced = annotate(
            misplaced,
            POD_ASSIGNMENT_ANNOTATION,
            r#"{"version":"v1","node":"gpu-node-9","gpus":[{"index":0,"uuid":"GPU-z","milli":250}]}"#,
        );
        let good = pod("good", 9, NODE, Some("GPU-b"), &[250]);
        let decision = choose(
            NODE,
            250,
            &[broken, future, bad_quantity, misplaced, good],
            &Served::new(),
        );
        assert_eq!(decision.choice.unwrap().gpus, ["GPU-b"]);
        assert_eq!(decision.warnings.len(), 4, "{:?}", decision.warnings);
        assert!(
            decision.warnings[0].contains("ml/broken"),
            "{:?}",
            decision.warnings
        );
        assert!(
            decision.warnings[1].contains("v9"),
            "{:?}",
            decision.warnings
        );
        assert!(
            decision.warnings[2].contains("\"1/4\""),
            "{:?}",
            decision.warnings
        );
        assert!(
            decision.warnings[3].contains("gpu-node-9"),
            "{:?}",
            decision.warnings
        );
    }

    #[test]
    fn containers_are_served_one_by_one_in_the_kubelets_order() {
        // Two containers of 300 and 200 on one GPU, recorded as 500 in total.
        let multi = pod("multi", 1, NODE, Some("GPU-a"), &[300, 200]);
        let single = pod("single", 2, NODE, Some("GPU-b"), &[200]);
        let pods = [multi.clone(), single.clone()];
        // The multi pod's first container is 300: a request for 200 is the single pod's.
        assert_eq!(chosen(200, &pods, &Served::new()).unwrap().0, "single");
        let first = choose(NODE, 300, &pods, &Served::new()).choice.unwrap();
        assert_eq!(
            (first.name.as_str(), first.container.as_str()),
            ("multi", "c0")
        );
        assert_eq!(first.served, ["c0"]);
        assert_eq!(
            first.patch("2026-01-01T00:01:00Z"),
            json!({"metadata": {"annotations": {
                POD_ALLOCATED_ANNOTATION: "2026-01-01T00:01:00Z",
                POD_ALLOCATED_CONTAINERS_ANNOTATION: "c0"}}})
        );
        // After c0 (remembered, or recorded on the pod), the multi pod offers c1 (200), older than single.
        let mut served = Served::new();
        served
            .entry(first.id.clone())
            .or_default()
            .insert("c0".into());
        let second = choose(NODE, 200, &pods, &served).choice.unwrap();
        assert_eq!(
            (second.name.as_str(), second.container.as_str()),
            ("multi", "c1")
        );
        assert_eq!(second.gpus, ["GPU-a"]);
        assert_eq!(second.served, ["c0", "c1"]);
        let recorded = annotate(multi.clone(), POD_ALLOCATED_CONTAINERS_ANNOTATION, "c0");
        let recorded = annotate(recorded, POD_ALLOCATED_ANNOTATION, "2026-01-01T00:01:00Z");
        assert_eq!(
            chosen(200, &[recorded, single.clone()], &Served::new())
                .unwrap()
                .1,
            "c1"
        );
        // Both served: the 200 goes to the single pod.
        served.entry(first.id).or_default().insert("c1".into());
        assert_eq!(chosen(200, &pods, &served).unwrap().0, "single");
        // The whole pod's total matches no single container.
        assert_eq!(chosen(500, &[multi], &Served::new()), None);
    }

    #[test]
    fn init_containers_come_first() {
        let mut pod = pod("init", 1, NODE, Some("GPU-a"), &[250]);
        let spec = pod.spec.as_mut().unwrap();
        let mut init = spec.containers[0].clone();
        init.name = "setup".into();
        init.resources
            .as_mut()
            .unwrap()
            .limits
            .as_mut()
            .unwrap()
            .insert(
                RESOURCE_GPU_MILLI.into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("100".into()),
            );
        spec.init_containers = Some(vec![init]);
        assert_eq!(
            chosen(250, std::slice::from_ref(&pod), &Served::new()),
            None
        );
        assert_eq!(chosen(100, &[pod], &Served::new()).unwrap().1, "setup");
    }

    #[test]
    fn whole_gpu_pods_are_not_candidates() {
        let whole: Pod = serde_json::from_value(json!({
            "metadata": {"name": "whole", "namespace": "ml", "annotations": {POD_ASSIGNMENT_ANNOTATION:
                r#"{"version":"v1","node":"gpu-node-1","gpus":[{"index":0,"uuid":"GPU-a","milli":1000}]}"#}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
        }))
        .unwrap();
        assert_eq!(chosen(1000, &[whole], &Served::new()), None);
    }
    /// A pending whole-GPU pod on `node` created at second `created`, one container asking for
    /// `gpus.len()` of `nvidia.com/gpu`, recorded on `gpus` (`(index, uuid)`) when given.
    fn whole(name: &str, created: u32, node: &str, gpus: &[(u32, &str)]) -> Pod {
        let recorded: Vec<serde_json::Value> = gpus
            .iter()
            .map(|(i, u)| json!({"index": i, "uuid": u, "milli": 1000}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"),
                "creationTimestamp": format!("2026-01-01T00:00:{created:02}Z"),
                "annotations": {POD_ASSIGNMENT_ANNOTATION:
                    json!({"version": "v1", "node": node, "gpus": recorded}).to_string()}},
            "spec": {"nodeName": node, "containers": [{"name": "main",
                "resources": {"limits": {"nvidia.com/gpu": gpus.len().to_string()}}}]},
            "status": {"phase": "Pending"},
        }))
        .unwrap()
    }

    fn ids(uuids: &[&str]) -> Vec<String> {
        uuids.iter().map(|u| (*u).to_owned()).collect()
    }

    fn prefer(size: usize, pods: &[Pod], available: &[&str], must: &[&str]) -> Option<Vec<String>> {
        let (candidates, _) = whole_candidates(NODE, size, pods, &Served::new());
        prefer_whole(&candidates, &ids(available), &ids(must))
    }

    const ALL: [&str; 4] = ["GPU-0", "GPU-1", "GPU-2", "GPU-3"];

    #[test]
    fn whole_preference_follows_the_oldest_matching_record() {
        let pods = [
            whole("young", 30, NODE, &[(0, "GPU-0"), (1, "GPU-1")]),
            whole("old", 10, NODE, &[(1, "GPU-1"), (2, "GPU-2")]),
            whole("single", 5, NODE, &[(3, "GPU-3")]),
        ];
        assert_eq!(prefer(2, &pods, &ALL, &[]), Some(ids(&["GPU-1", "GPU-2"])));
        assert_eq!(prefer(1, &pods, &ALL, &[]), Some(ids(&["GPU-3"])));
        // No pod records 3 GPUs: fall back.
        assert_eq!(prefer(3, &pods, &ALL, &[]), None);
        // The old pod's GPU 2 is taken: the young pod's record fits.
        assert_eq!(
            prefer(2, &pods, &["GPU-0", "GPU-1", "GPU-3"], &[]),
            Some(ids(&["GPU-0", "GPU-1"]))
        );
        // Neither fits.
        assert_eq!(prefer(2, &pods, &["GPU-1", "GPU-3"], &[]), None);
    }

    #[test]
    fn whole_preference_respects_must_include() {
        let pods = [
            whole("old", 10, NODE, &[(1, "GPU-1"), (2, "GPU-2")]),
            whole("young", 30, NODE, &[(0, "GPU-0"), (3, "GPU-3")]),
        ];
        assert_eq!(
            prefer(2, &pods, &ALL, &["GPU-2"]),
            Some(ids(&["GPU-1", "GPU-2"]))
        );
        assert_eq!(
            prefer(2, &pods, &ALL, &["GPU-3"]),
            Some(ids(&["GPU-0", "GPU-3"]))
        );
        assert_eq!(prefer(2, &pods, &ALL, &["GPU-1", "GPU-3"]), None);
    }

    #[test]
    fn whole_candidates_skip_what_is_not_waiting_for_whole_gpus() {
        let two = [(0, "GPU-0"), (1, "GPU-1")];
        let mut running = whole("running", 1, NODE, &two);
        running.status.as_mut().unwrap().phase = Some("Running".into());
        let mut done = whole("done", 2, NODE, &two);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut deleting = whole("deleting", 3, NODE, &two);
        deleting.metadata.deletion_timestamp = deleting.metadata.creation_timestamp.clone();
        let allocated = annotate(
            whole("allocated", 4, NODE, &two),
            POD_ALLOCATED_ANNOTATION,
            "2026-01-01T00:01:00Z",
        );
        let remembered = whole("remembered", 5, NODE, &two);
        let elsewhere = whole("elsewhere", 6, "gpu-node-2", &two);
        // Recorded with 500 thousandths: not whole GPUs.
        let partial = annotate(
            whole("partial", 7, NODE, &two),
            POD_ASSIGNMENT_ANNOTATION,
            r#"{"version":"v1","node":"gpu-node-1","gpus":[{"index":0,"uuid":"GPU-0","milli":500},{"index":1,"uuid":"GPU-1","milli":1000}]}"#,
        );
        // A shared pod of 1000 thousandths is the shared handshake's.
        let shared = pod("shared", 8, NODE, Some("GPU-0"), &[1000]);
        let broken = annotate(
            whole("broken", 9, NODE, &two),
            POD_ASSIGNMENT_ANNOTATION,
            "{not json",
        );
        let mut served = Served::new();
        served
            .entry("uid-remembered".into())
            .or_default()
            .insert("main".into());
        let pods = [
            running, done, deleting, allocated, remembered, elsewhere, partial, shared, broken,
        ];
        let (candidates, warnings) = whole_candidates(NODE, 2, &pods, &served);
        assert!(candidates.is_empty(), "{candidates:?}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("ml/broken"), "{warnings:?}");
        let (candidates, _) = whole_candidates(NODE, 1, &pods, &served);
        assert!(candidates.is_empty(), "{candidates:?}");
        // Without the memory, the remembered pod is a candidate again.
        let (candidates, _) = whole_candidates(NODE, 2, &pods, &Served::new());
        let names: Vec<&str> = candidates.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["remembered"]);
        assert_eq!(candidates[0].containers, ["main"]);
    }

    fn handed(gpus: &[(u32, &str)]) -> Vec<(u32, String)> {
        gpus.iter().map(|(i, u)| (*i, (*u).to_owned())).collect()
    }

    #[test]
    fn whole_allocate_keeps_a_matching_record() {
        let pods = [
            whole("old", 10, NODE, &[(0, "GPU-0"), (1, "GPU-1")]),
            whole("young", 20, NODE, &[(2, "GPU-2"), (3, "GPU-3")]),
        ];
        // The kubelet followed the young pod's record (the old one's GPUs were taken), any order.
        let decision = allocate_whole(
            NODE,
            &handed(&[(3, "GPU-3"), (2, "GPU-2")]),
            &pods,
            &Served::new(),
        );
        let allocation = decision.allocation.unwrap();
        assert_eq!(allocation.pod.name, "young");
        assert_eq!(allocation.corrected, None);
        assert!(allocation.conflicts.is_empty());
        assert_eq!(
            allocation.patch("2026-01-01T00:01:00Z"),
            json!({"metadata": {"annotations": {
                POD_ALLOCATED_ANNOTATION: "2026-01-01T00:01:00Z",
                POD_ALLOCATED_CONTAINERS_ANNOTATION: "main"}}})
        );
        // No pod waits for one GPU.
        let decision = allocate_whole(NODE, &handed(&[(0, "GPU-0")]), &pods, &Served::new());
        assert_eq!(decision.allocation, None);
    }

    #[test]
    fn whole_allocate_corrects_a_record_the_kubelet_did_not_follow() {
        let pods = [
            whole("old", 10, NODE, &[(0, "GPU-0"), (1, "GPU-1")]),
            whole("young", 20, NODE, &[(0, "GPU-0"), (2, "GPU-2")]),
        ];
        let decision = allocate_whole(
            NODE,
            &handed(&[(3, "GPU-3"), (1, "GPU-1")]),
            &pods,
            &Served::new(),
        );
        let allocation = decision.allocation.unwrap();
        assert_eq!(allocation.pod.name, "old");
        let corrected = allocation.corrected.clone().unwrap();
        assert_eq!(
            corrected.to_annotation(),
            r#"{"version":"v1","node":"gpu-node-1","gpus":[{"index":1,"uuid":"GPU-1","milli":1000},{"index":3,"uuid":"GPU-3","milli":1000}]}"#
        );
        let patch = allocation.patch("2026-01-01T00:01:00Z");
        let annotations = &patch["metadata"]["annotations"];
        assert_eq!(
            annotations[POD_ASSIGNMENT_ANNOTATION],
            corrected.to_annotation()
        );
        assert_eq!(
            annotations[POD_ALLOCATED_ANNOTATION],
            "2026-01-01T00:01:00Z"
        );
        assert_eq!(
            GpuAssignment::parse(
                "ml/old",
                annotations[POD_ASSIGNMENT_ANNOTATION].as_str().unwrap()
            )
            .unwrap(),
            corrected
        );
        // The young pod's stale record does not name GPU 1 or 3: no conflict.
        assert!(
            allocation.conflicts.is_empty(),
            "{:?}",
            allocation.conflicts
        );
    }

    #[test]
    fn whole_allocate_reports_shares_recorded_on_a_handed_out_gpu() {
        let mut running_share = pod("share", 1, NODE, Some("GPU-2"), &[250]);
        running_share.status.as_mut().unwrap().phase = Some("Running".into());
        let mut finished_share = pod("finished", 2, NODE, Some("GPU-3"), &[500]);
        finished_share.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let foreign_share = pod("foreign", 3, "gpu-node-2", Some("GPU-3"), &[500]);
        let waiting = whole("x", 10, NODE, &[(0, "GPU-0"), (1, "GPU-1")]);
        let pods = [running_share, finished_share, foreign_share, waiting];
        let decision = allocate_whole(
            NODE,
            &handed(&[(2, "GPU-2"), (3, "GPU-3")]),
            &pods,
            &Served::new(),
        );
        let allocation = decision.allocation.unwrap();
        assert_eq!(allocation.pod.name, "x");
        assert!(allocation.corrected.is_some());
        assert_eq!(
            allocation.conflicts,
            [Conflict {
                uuid: "GPU-2".into(),
                pod: "ml/share".into(),
                milli: 250
            }]
        );
        let warnings = allocation.conflict_warnings();
        assert_eq!(warnings.len(), 1);
        for part in ["GPU-2", "ml/x", "ml/share", "250"] {
            assert!(warnings[0].contains(part), "{warnings:?}");
        }
    }
}
