#![doc = include_str!("../README.md")]

mod cluster;
mod policy;
mod rng;
mod scheduler;
mod workload;

pub use cluster::{
    best_fit_gpus, Cluster, FailReason, GpuSet, ModelMask, NodeSpec, NodeState, PodSpec, Request,
    ANY_MODEL, GPU_CLASSES, MAX_GPUS_PER_NODE, MAX_GPU_MODELS, MILLI,
};
pub use policy::{evaluate, fits_except_memory, Evaluation, Policy};
pub use rng::Rng;
pub use scheduler::{Placement, Scheduler, TieBreak};
pub use workload::{Fragmentation, Shape, TargetWorkload};

/// Errors of the placement engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("node {node} has {gpus} GPUs, more than the supported {max}", max = MAX_GPUS_PER_NODE)]
    TooManyGpus { node: String, gpus: u8 },
    #[error("node {node} has GPUs but no GPU model")]
    MissingModel { node: String },
    #[error("the cluster has more than {max} GPU models")]
    TooManyModels { max: usize },
    #[error("bad pod request: {reason}")]
    BadRequest { reason: String },
    #[error("no node {node}")]
    NoSuchNode { node: usize },
    #[error("pod does not fit on node {node}: {reason}")]
    DoesNotFit { node: usize, reason: String },
    #[error("unknown policy {name:?}; known policies: {known}")]
    UnknownPolicy { name: String, known: String },
    #[error("policy {policy} needs a target workload")]
    NeedsWorkload { policy: &'static str },
}

impl Error {
    /// A stable label for metrics and condition reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::TooManyGpus { .. } => "too_many_gpus",
            Error::MissingModel { .. } => "missing_model",
            Error::TooManyModels { .. } => "too_many_models",
            Error::BadRequest { .. } => "bad_request",
            Error::NoSuchNode { .. } => "no_such_node",
            Error::DoesNotFit { .. } => "does_not_fit",
            Error::UnknownPolicy { .. } => "unknown_policy",
            Error::NeedsWorkload { .. } => "needs_workload",
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
