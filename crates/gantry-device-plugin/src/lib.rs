#![doc = include_str!("../README.md")]

pub mod allocate;
pub mod cluster;
pub mod config;
mod daemon;
pub mod handshake;
pub mod health;
mod metrics;
pub mod resources;
mod server;

use std::path::PathBuf;

pub use cluster::{ClusterOptions, PodAllocator};
pub use daemon::{start, CdiWriter, PluginOptions, Running};
pub use metrics::Metrics;

/// Device plugin errors: each names the file, socket or resource involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config file {}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("invalid resource name {0:?}: expected <domain>/<name> in lower-case letters, digits, '-' and '.'")]
    InvalidResourceName(String),

    #[error("{0}")]
    MigStrategy(String),

    #[error("cannot serve on {}: {source}; is the plugin directory writable and mounted from the host (/var/lib/kubelet/device-plugins)?", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Discovery(#[from] gantry_discovery::Error),

    #[error("writing the CDI spec failed: {0}")]
    Cdi(String),

    #[error("the device plugin task failed: {0}")]
    Task(String),

    #[error("{action} failed: {error}")]
    Kube { action: String, error: String },

    #[error("no pod on node {node} is waiting for {units} thousandths of a GPU (gantry.dev/gpu-milli): a pod asking for gantry.dev/gpu-milli must be scheduled by gantry-scheduler (schedulerName: gantry-scheduler), which records its GPU in the gantry.dev/gpu-assignment annotation")]
    NoSharedPod { node: String, units: u32 },
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::InvalidResourceName(_) => "invalid_resource_name",
            Error::MigStrategy(_) => "mig_strategy",
            Error::Socket { .. } => "socket",
            Error::Metrics { .. } => "metrics",
            Error::Discovery(_) => "discovery",
            Error::Cdi(_) => "cdi",
            Error::Task(_) => "task",
            Error::Kube { .. } => "kube",
            Error::NoSharedPod { .. } => "no_shared_pod",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
