#![doc = include_str!("../README.md")]

mod atomic_write;
mod console;
mod executor;
mod launch;
mod process;

use std::path::PathBuf;

pub use console::{Console, ConsoleOptions};
pub use executor::{run, Outcome, ReplicaReport, RunOptions};
pub use launch::{
    allocate_gpus, prepare, GpuProvider, Launch, NoGpus, PrepareOptions, Prepared, ReplicaLaunch,
};

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a job could not be run locally. Every variant but [`Error::Io`] is raised before any process
/// starts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job fails validation.
    #[error(transparent)]
    Invalid(#[from] gantry_tfjob::Error),
    /// A replica cannot be started as a local process.
    #[error("replica {replica}: {field}: {message}")]
    Replica {
        /// `worker-1`.
        replica: String,
        /// The field path in the manifest.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// GPUs were requested but cannot be provided.
    #[error("{0}")]
    Gpu(String),
    /// The planner refused.
    #[error(transparent)]
    Plan(#[from] gantry_planner::Error),
    /// A file or process operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::Replica { .. } => "replica",
            Error::Gpu(_) => "gpu",
            Error::Plan(_) => "plan",
            Error::Io { .. } => "io",
        }
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
