#![doc = include_str!("../README.md")]

pub mod extender;
pub mod request;
pub mod schema;
pub mod state;
pub mod wire;

pub use extender::{default_workload, scale_scores, BindPlan, Config, Extender};
pub use request::{Gang, PodRequest};
pub use schema::{AssignedGpu, GpuAssignment, NodeGpu, NodeGpus};
pub use state::{ClusterState, Hold};

/// Errors of the extender's decisions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("pod {pod}: {reason}")]
    BadPod { pod: String, reason: String },
    #[error("node {node}: {reason}")]
    BadNode { node: String, reason: String },
    #[error("node {node}: annotation gantry.dev/gpus: {reason}")]
    BadNodeAnnotation { node: String, reason: String },
    #[error("pod {pod}: annotation gantry.dev/gpu-assignment: {reason}")]
    BadPodAnnotation { pod: String, reason: String },
    #[error("node {node} is unknown to the Gantry extender")]
    UnknownNode { node: String },
    #[error("pod {pod} was not seen by filter before bind; kube-scheduler retries it")]
    UnknownPod { pod: String },
    #[error("pod does not fit on node {node}: {reason}")]
    DoesNotFit { node: String, reason: String },
    #[error("{id} already holds capacity on node {node}")]
    AlreadyAllocated { id: String, node: String },
    #[error("bad configuration: {reason}")]
    Config { reason: String },
}

impl Error {
    /// A stable label for metrics and condition reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadPod { .. } => "bad_pod",
            Error::BadNode { .. } => "bad_node",
            Error::BadNodeAnnotation { .. } => "bad_node_annotation",
            Error::BadPodAnnotation { .. } => "bad_pod_annotation",
            Error::UnknownNode { .. } => "unknown_node",
            Error::UnknownPod { .. } => "unknown_pod",
            Error::DoesNotFit { .. } => "does_not_fit",
            Error::AlreadyAllocated { .. } => "already_allocated",
            Error::Config { .. } => "config",
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
