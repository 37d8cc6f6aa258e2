#![doc = include_str!("../README.md")]

mod cache;
mod kube_binder;
mod server;

pub use cache::{Cache, Readiness, POD_FIELD_SELECTOR};
pub use kube_binder::KubeBinder;
pub use server::{health_router, router, serve, Binder, Clock, ServerConfig, SystemClock};

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
    /// A call the API server refused (`status` is its HTTP status) or that got no answer
    /// (`status` is `None`).
    #[error("API server {method} {path}: {reason}")]
    Api {
        method: &'static str,
        path: String,
        status: Option<u16>,
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
