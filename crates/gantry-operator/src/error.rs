//! The operator's errors.

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while reconciling or starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("{verb} {object}")]
    Api {
        /// `list`, `create`, `delete`, `patch status`, ...
        verb: &'static str,
        /// `pods/default/mnist-worker-0` or the like.
        object: String,
        #[source]
        source: kube::Error,
    },
    /// The planner could not plan (an executor bug; see `gantry_planner::Error`).
    #[error("planning {job}")]
    Plan {
        /// `namespace/name`.
        job: String,
        #[source]
        source: gantry_planner::Error,
    },
    /// An object could not be turned into JSON.
    #[error("serialising {what}")]
    Serialise {
        /// What was serialised.
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The TFJob CRD is missing or belongs to another operator.
    #[error("{0}")]
    Crd(String),
    /// The metrics/health endpoint could not listen.
    #[error("listening on {address}")]
    Listen {
        /// The address.
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// Leader election failed for good.
    #[error("leader election on lease {lease}: {message}")]
    Lease {
        /// `namespace/name` of the Lease.
        lease: String,
        /// What happened.
        message: String,
    },
}

impl Error {
    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Api { source, .. } => match source {
                kube::Error::Api(status) if status.code == 409 => "api_conflict",
                kube::Error::Api(status) if status.code == 404 => "api_not_found",
                kube::Error::Api(status) if status.code == 403 => "api_forbidden",
                kube::Error::Api(_) => "api_status",
                _ => "api_transport",
            },
            Error::Plan { .. } => "plan",
            Error::Serialise { .. } => "serialise",
            Error::Crd(_) => "crd",
            Error::Listen { .. } => "listen",
            Error::Lease { .. } => "lease",
        }
    }
}

/// The HTTP status code of an API error, if the server answered with one.
pub(crate) fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
