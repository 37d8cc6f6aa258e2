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

use std::collections::{BTreeMap, BTreeSet};

use gantry_scheduler::schema::{
    allocate_target, GpuAssignment, POD_ASSIGNMENT_ANNOTATION, RESOURCE_GPU_MILLI,
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
    let Some(resources) = &container.resources else {
        return Ok(0);
    };
    let quantity = resources
        .requests
        .as_ref()
        .and_then(|r| r.get(RESOURCE_GPU_MILLI))
        .or_else(|| {
            resources
                .limits
                .as_ref()
                .and_then(|l| l.get(RESOURCE_GPU_MILLI))
        });
    match quantity {
        None => Ok(0),
        Some(q) => q.0.trim().parse().map_err(|_| {
            format!(
                "container {} asks for {RESOURCE_GPU_MILLI} {:?}, not a whole number",
                container.name, q.0
            )
        }),
    }
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
    let mut ordered: Vec<&Pod> = pods.iter().collect();
    ordered.sort_by(|a, b| {
        let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let name = |p: &Pod| (p.metadata.namespace.clone(), p.metadata.name.clone());
        created(a)
            .cmp(&created(b))
            .then_with(|| name(a).cmp(&name(b)))
    });
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
}
