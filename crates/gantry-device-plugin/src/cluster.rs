//! The plugin's Kubernetes side, the only module that talks to the API server: it publishes the
//! node's GPUs on its own Node, and looks up the pod a shared-GPU `Allocate` is for. The decisions
//! are pure ([`node_patch`], [`crate::handshake::choose`]); this module sends them.
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

use crate::handshake::{choose, Choice, Served};
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
    /// How long one API call of a shared `Allocate` may take.
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

/// The API side of the shared-GPU handshake: lists the pods on the node, chooses with
/// [`choose`], and records the allocation on the pod and in memory. Point it at any client.
pub struct SharedAllocator {
    client: kube::Client,
    node: String,
    api_timeout: Duration,
    served: Mutex<Served>,
}

impl std::fmt::Debug for SharedAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedAllocator")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl SharedAllocator {
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
        let pods: Api<Pod> = Api::all(self.client.clone());
        let params = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
        let list = within(
            self.api_timeout,
            || format!("listing the pods on node {}", self.node),
            pods.list(&params),
        )
        .await?;
        // Forget pods that are gone.
        let present: std::collections::BTreeSet<String> =
            list.items.iter().map(crate::handshake::pod_id).collect();
        served.retain(|id, _| present.contains(id));
        let decision = choose(&self.node, units, &list.items, &served);
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
}

/// Shared between the daemon's tasks.
pub(crate) type Allocator = Arc<SharedAllocator>;

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
