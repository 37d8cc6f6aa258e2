#![doc = include_str!("../README.md")]

mod apiserver;
mod server;

pub use apiserver::{ApiServer, SyncStats};
pub use server::{router, serve, Binder, Clock, ServerConfig, SystemClock};

/// Errors of the extender's shell.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("binding pod {pod} to node {node}: {reason}")]
    Bind {
        pod: String,
        node: String,
        reason: String,
    },
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
    #[error("API server {method} {path}: {reason}")]
    Api {
        method: &'static str,
        path: String,
        reason: String,
    },
}

impl Error {
    /// A stable label for metrics and condition reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Bind { .. } => "bind",
            Error::Serve(_) => "serve",
            Error::Api { .. } => "api",
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
