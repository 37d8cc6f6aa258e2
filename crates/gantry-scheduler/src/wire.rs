//! kube-scheduler's HTTP extender protocol, `k8s.io/kube-scheduler/extender/v1`, as JSON.
//!
//! The Go structs carry no `json` tags, so their keys are the Go field names (PascalCase).
//! kube-scheduler decodes case-insensitively but we always write the exact names. Go writes a
//! nil pointer or map as `null`, so every optional field here reads `null` and absence alike.
//! The embedded Pod and Node objects are ordinary Kubernetes JSON (`k8s-openapi`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde::{Deserialize, Serialize};

/// The highest score an extender may give (`MaxExtenderPriority`).
pub const MAX_EXTENDER_PRIORITY: i64 = 10;

/// `v1.NodeList` (`kind`/`apiVersion` optional on read, as Go omits them for cached objects).
pub type NodeList = k8s_openapi::List<Node>;

/// Node name → reason it was filtered out (`FailedNodesMap`).
pub type FailedNodesMap = BTreeMap<String, String>;

/// The body of `filter` and `prioritize` (`ExtenderArgs`). With `nodeCacheCapable: true`
/// kube-scheduler sends `NodeNames` and `Nodes: null`; otherwise full `Nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtenderArgs {
    #[serde(rename = "Pod")]
    pub pod: Pod,
    #[serde(rename = "Nodes", default)]
    pub nodes: Option<NodeList>,
    #[serde(rename = "NodeNames", default)]
    pub node_names: Option<Vec<String>>,
}

impl ExtenderArgs {
    /// The candidate node names, from `NodeNames` or else from `Nodes`.
    pub fn candidate_names(&self) -> Vec<String> {
        if let Some(names) = &self.node_names {
            return names.clone();
        }
        self.nodes
            .as_ref()
            .map(|list| {
                list.items
                    .iter()
                    .filter_map(|n| n.metadata.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The full node objects when kube-scheduler sent them.
    pub fn node_objects(&self) -> &[Node] {
        self.nodes.as_ref().map_or(&[], |l| l.items.as_slice())
    }
}

/// The answer to `filter` (`ExtenderFilterResult`). Exactly one of `Nodes`/`NodeNames` is set,
/// mirroring the request. `FailedAndUnresolvableNodes` tells kube-scheduler not to try
/// preemption for those nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtenderFilterResult {
    #[serde(rename = "Nodes", default)]
    pub nodes: Option<NodeList>,
    #[serde(rename = "NodeNames", default)]
    pub node_names: Option<Vec<String>>,
    #[serde(rename = "FailedNodes", default, deserialize_with = "null_as_default")]
    pub failed_nodes: FailedNodesMap,
    #[serde(
        rename = "FailedAndUnresolvableNodes",
        default,
        deserialize_with = "null_as_default"
    )]
    pub failed_and_unresolvable_nodes: FailedNodesMap,
    #[serde(rename = "Error", default, deserialize_with = "null_as_default")]
    pub error: String,
}

impl ExtenderFilterResult {
    /// A result that fails the whole call with `error`.
    pub fn error(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            ..Self::default()
        }
    }
}

/// One node's score (`HostPriority`), 0 to [`MAX_EXTENDER_PRIORITY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPriority {
    #[serde(rename = "Host")]
    pub host: String,
    #[serde(rename = "Score")]
    pub score: i64,
}

/// The answer to `prioritize` (`HostPriorityList`): a JSON array.
pub type HostPriorityList = Vec<HostPriority>;

/// The body of `bind` (`ExtenderBindingArgs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtenderBindingArgs {
    #[serde(rename = "PodName")]
    pub pod_name: String,
    #[serde(rename = "PodNamespace")]
    pub pod_namespace: String,
    #[serde(rename = "PodUID")]
    pub pod_uid: String,
    #[serde(rename = "Node")]
    pub node: String,
}

/// The answer to `bind` (`ExtenderBindingResult`); an empty `Error` means bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtenderBindingResult {
    #[serde(rename = "Error", default, deserialize_with = "null_as_default")]
    pub error: String,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
