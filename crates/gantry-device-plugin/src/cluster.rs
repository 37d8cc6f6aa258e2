//! The plugin's Kubernetes side, the only module that talks to the API server: it publishes the
//! node's GPUs on its own Node, looks up the pod a shared-GPU `Allocate` is for, and keeps the
//! scheduler's record of whole-GPU pods right. The decisions are pure ([`node_patch`],
//! [`crate::handshake::choose`], [`crate::handshake::prefer_whole`],
//! [`crate::handshake::allocate_whole`]); this module sends them.
//!
//! The client is injected ([`ClusterOptions::client`]): the binary builds it from the in-cluster
//! configuration, tests point it at a fake API server.

use std::sync::Arc;
use std::time::Duration;

use gantry_scheduler::schema::{
    NodeGpus, LABEL_COUNT, LABEL_CUDA, LABEL_DRIVER, LABEL_MEMORY, LABEL_PRODUCT,
    NODE_GPUS_ANNOTATION,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::Api;
use tokio::sync::{watch, Mutex};

use crate::handshake::{
    allocate_whole, choose, prefer_whole, whole_candidates, Choice, Served, WholeAllocation,
};
use crate::{Error, Result};

/// How the plugin reaches the cluster, injected by the binary.
#[derive(Clone)]
pub struct ClusterOptions {
    pub client: kube::Client,
    /// This node's name (the downward API's `spec.nodeName`).
    pub node: String,
    /// Advertise `gantry.dev/gpu-milli` (1000 devices per shareable GPU).
    pub gpu_milli: bool,
    /// The first wait after a failed Node patch; it doubles up to `retry_max`.
    pub retry: Duration,
    pub retry_max: Duration,
    /// How long one API call of an `Allocate` or `GetPreferredAllocation` may take.
    pub api_timeout: Duration,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("node", &self.node)
            .field("gpu_milli", &self.gpu_milli)
            .field("retry", &self.retry)
            .field("retry_max", &self.retry_max)
            .field("api_timeout", &self.api_timeout)
            .finish_non_exhaustive()
    }
}

impl ClusterOptions {
    /// Defaults: `gantry.dev/gpu-milli` on, retries from 1 s up to 60 s, 5 s per API call.
    pub fn new(client: kube::Client, node: impl Into<String>) -> Self {
        Self {
            client,
            node: node.into(),
            gpu_milli: true,
            retry: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            api_timeout: Duration::from_secs(5),
        }
    }
}

/// The merge patch that publishes `gpus` on the Node: the `gantry.dev/gpus` annotation and the
/// labels of [`NodeGpus::labels`]; a label the inventory no longer has is removed (`null`).
pub fn node_patch(gpus: &NodeGpus) -> serde_json::Value {
    let mut labels = serde_json::Map::new();
    for key in [
        LABEL_PRODUCT,
        LABEL_COUNT,
        LABEL_MEMORY,
        LABEL_DRIVER,
        LABEL_CUDA,
    ] {
        labels.insert(key.to_owned(), serde_json::Value::Null);
    }
    for (key, value) in gpus.labels() {
        labels.insert(key, value.into());
    }
    serde_json::json!({
        "metadata": {
            "annotations": {NODE_GPUS_ANNOTATION: gpus.to_annotation()},
            "labels": labels,
        }
    })
}

async fn within<T>(
    limit: Duration,
    action: impl Fn() -> String,
    call: impl std::future::Future<Output = std::result::Result<T, kube::Error>>,
) -> Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Error::Kube {
            action: action(),
            error: error.to_string(),
        }),
        Err(_) => Err(Error::Kube {
            action: action(),
            error: format!("no answer within {limit:?}"),
        }),
    }
}

/// Patches the Node with `gpus`.
///
/// # Errors
/// The API server refuses or does not answer within `limit`.
pub async fn publish_node_gpus(
    client: &kube::Client,
    node: &str,
    gpus: &NodeGpus,
    limit: Duration,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = Patch::Merge(node_patch(gpus));
    within(
        limit,
        || format!("patching node {node} with its GPUs"),
        nodes.patch(node, &PatchParams::default(), &patch),
    )
    .await
    .map(drop)
}

/// Keeps the Node's GPUs current: patches whenever `wanted` changes to something not yet
/// published, retries a failed patch with doubling waits, and never gives up until `stop`.
pub(crate) async fn keep_published(
    options: ClusterOptions,
    mut wanted: watch::Receiver<Option<NodeGpus>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut published: Option<NodeGpus> = None;
    let mut wait = options.retry;
    loop {
        let want = wanted.borrow_and_update().clone();
        if let Some(gpus) = want.filter(|w| published.as_ref() != Some(w)) {
            let patched = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                patched = publish_node_gpus(&options.client, &options.node, &gpus, options.api_timeout) => patched,
            };
            match patched {
                Ok(()) => {
                    tracing::info!(node = %options.node, gpus = gpus.gpus.len(), "published the node's GPUs");
                    published = Some(gpus);
                    wait = options.retry;
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?wait, "publishing the node's GPUs failed; will retry");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(options.retry_max);
                    continue;
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = wanted.changed() => if changed.is_err() { return },
        }
    }
}

/// The API side of the bind-to-Allocate handshake: lists the pods on the node, chooses with
/// [`choose`] (shares) or [`prefer_whole`] and [`allocate_whole`] (whole GPUs), and records the
/// allocation on the pod and in memory. Point it at any client.
pub struct PodAllocator {
    client: kube::Client,
    node: String,
    api_timeout: Duration,
    served: Mutex<Served>,
}

impl std::fmt::Debug for PodAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodAllocator")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl PodAllocator {
    pub fn new(client: kube::Client, node: impl Into<String>, api_timeout: Duration) -> Self {
        Self {
            client,
            node: node.into(),
            api_timeout,
            served: Mutex::new(Served::new()),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The pod an `Allocate` of `units` thousandths is for, and its recorded GPU.
    ///
    /// # Flow
    /// Lists the node's pods (`GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`), chooses
    /// ([`choose`]), remembers the container as served, then records it on the pod
    /// (`gantry.dev/gpu-allocated`, `gantry.dev/gpu-allocated-containers`, merge patch) so that a
    /// restarted plugin does not hand the same pod out twice. One call at a time.
    ///
    /// # Guarantees
    /// Two calls never choose the same container. A failed record on the pod is logged; the memory
    /// still holds it, so only a plugin restart before the pod starts could repeat it.
    ///
    /// # Errors
    /// [`Error::NoSharedPod`] when no pod waits for `units` (the pod was not placed by
    /// gantry-scheduler, or was already served); [`Error::Kube`] when the pods cannot be listed.
    pub async fn allocate(&self, units: u32) -> Result<Choice> {
        let mut served = self.served.lock().await;
        let pods = self.list_pods().await?;
        forget_gone(&mut served, &pods);
        let decision = choose(&self.node, units, &pods, &served);
        for warning in &decision.warnings {
            tracing::warn!("{warning}; skipped");
        }
        let choice = decision.choice.ok_or_else(|| Error::NoSharedPod {
            node: self.node.clone(),
            units,
        })?;
        served
            .entry(choice.id.clone())
            .or_default()
            .insert(choice.container.clone());
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let namespaced: Api<Pod> = Api::namespaced(self.client.clone(), &choice.namespace);
        let patch = Patch::Merge(choice.patch(&now));
        let recorded = within(
            self.api_timeout,
            || format!("recording the allocation on pod {}", choice.key()),
            namespaced.patch(&choice.name, &PatchParams::default(), &patch),
        )
        .await;
        if let Err(err) = recorded {
            tracing::warn!(error = %err, "the allocation is remembered in memory only");
        }
        tracing::info!(pod = %choice.key(), container = %choice.container, gpus = ?choice.gpus, units, "shared GPU allocated");
        Ok(choice)
    }

    /// The pods on the node (`GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`).
    async fn list_pods(&self) -> Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let params = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
        let list = within(
            self.api_timeout,
            || format!("listing the pods on node {}", self.node),
            pods.list(&params),
        )
        .await?;
        Ok(list.items)
    }

    /// `GetPreferredAllocation` of `size` whole GPUs out of `available`: the GPUs gantry-scheduler
    /// recorded on the pod waiting for them ([`whole_candidates`], [`prefer_whole`]).
    ///
    /// # Errors
    /// None: `None` means "no preference from the record" (no pod fits, or the pods cannot be
    /// listed within the API timeout, which is logged) and the caller prefers by topology.
    pub async fn prefer_whole(
        &self,
        size: usize,
        available: &[String],
        must_include: &[String],
    ) -> Option<Vec<String>> {
        let pods = match self.list_pods().await {
            Ok(pods) => pods,
            Err(err) => {
                tracing::warn!(error = %err, "preferring whole GPUs by topology");
                return None;
            }
        };
        let served = self.served.lock().await.clone();
        let (candidates, warnings) = whole_candidates(&self.node, size, &pods, &served);
        for warning in &warnings {
            tracing::warn!("{warning}; skipped");
        }
        let chosen = prefer_whole(&candidates, available, must_include);
        match &chosen {
            Some(gpus) => {
                tracing::info!(gpus = ?gpus, size, "preferring the GPUs recorded by gantry-scheduler")
            }
            None => tracing::debug!(size, "no recorded GPUs fit; preferring by topology"),
        }
        chosen
    }

    /// After the kubelet handed out the whole GPUs `gpus` (`(index, uuid)`): finds the pod they
    /// are for ([`allocate_whole`]), remembers it as served and records it on the pod with a merge
    /// patch: `gantry.dev/gpu-allocated`, `gantry.dev/gpu-allocated-containers`, and, when the
    /// kubelet's GPUs differ from the record, a corrected `gantry.dev/gpu-assignment` (the
    /// extender's watch then corrects its books). A handed-out GPU recorded for another unfinished
    /// pod is logged as a warning naming both pods.
    ///
    /// # Errors
    /// None: the kubelet's choice stands whatever happens here. A failed list or patch is logged
    /// and `None` (or the unrecorded allocation) is returned.
    pub async fn allocate_whole(&self, gpus: &[(u32, String)]) -> Option<WholeAllocation> {
        let mut served = self.served.lock().await;
        let pods = match self.list_pods().await {
            Ok(pods) => pods,
            Err(err) => {
                tracing::warn!(error = %err, gpus = ?gpus, "whole GPUs allocated without checking the scheduler's record");
                return None;
            }
        };
        forget_gone(&mut served, &pods);
        let decision = allocate_whole(&self.node, gpus, &pods, &served);
        for warning in &decision.warnings {
            tracing::warn!("{warning}; skipped");
        }
        let Some(allocation) = decision.allocation else {
            tracing::info!(gpus = ?gpus, "no pod on the node has these whole GPUs recorded by gantry-scheduler");
            return None;
        };
        served
            .entry(allocation.pod.id.clone())
            .or_default()
            .extend(allocation.pod.containers.iter().cloned());
        for warning in allocation.conflict_warnings() {
            tracing::warn!("{warning}");
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let namespaced: Api<Pod> = Api::namespaced(self.client.clone(), &allocation.pod.namespace);
        let patch = Patch::Merge(allocation.patch(&now));
        let recorded = within(
            self.api_timeout,
            || format!("recording the allocation on pod {}", allocation.pod.key()),
            namespaced.patch(&allocation.pod.name, &PatchParams::default(), &patch),
        )
        .await;
        if let Err(err) = recorded {
            tracing::warn!(error = %err, corrected = allocation.corrected.is_some(), "the allocation is remembered in memory only");
        }
        match &allocation.corrected {
            Some(corrected) => {
                tracing::info!(pod = %allocation.pod.key(), recorded = ?allocation.pod.recorded(), handed_out = ?corrected.gpu_uuids(), "the kubelet chose other whole GPUs than recorded; record corrected")
            }
            None => {
                tracing::info!(pod = %allocation.pod.key(), gpus = ?allocation.pod.recorded(), "whole GPUs allocated as recorded")
            }
        }
        Some(allocation)
    }
}

/// Forgets the served pods that are no longer on the node.
fn forget_gone(served: &mut Served, pods: &[Pod]) {
    let present: std::collections::BTreeSet<String> =
        pods.iter().map(crate::handshake::pod_id).collect();
    served.retain(|id, _| present.contains(id));
}

/// Shared between the daemon's tasks.
pub(crate) type Allocator = Arc<PodAllocator>;

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_testkit::load_inventory;

    #[test]
    fn the_node_patch_carries_the_annotation_and_every_label() {
        let gpus = NodeGpus::from_inventory(&load_inventory("t4-pcie-4.yaml"));
        let patch = node_patch(&gpus);
        let annotation = patch["metadata"]["annotations"][NODE_GPUS_ANNOTATION]
            .as_str()
            .unwrap();
        assert_eq!(NodeGpus::parse("n", annotation).unwrap(), gpus);
        let labels = patch["metadata"]["labels"].as_object().unwrap();
        for (key, value) in gpus.labels() {
            assert_eq!(labels[&key], value.as_str(), "{key}");
        }
        assert_eq!(labels[LABEL_COUNT], "4");

        // A label the inventory lacks is removed, not left stale.
        let mut bare = gpus.clone();
        bare.driver_version = None;
        assert!(node_patch(&bare)["metadata"]["labels"][LABEL_DRIVER].is_null());
    }
}
