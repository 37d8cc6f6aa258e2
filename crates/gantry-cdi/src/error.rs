/// Errors of the CDI domain: invalid names and specs, requests that cannot be satisfied, malformed OCI configs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid CDI kind {value:?}: {reason}; write VENDOR/CLASS such as nvidia.com/gpu")]
    InvalidKind { value: String, reason: &'static str },

    #[error("invalid CDI device name {value:?}: {reason}")]
    InvalidDeviceName { value: String, reason: &'static str },

    #[error("invalid CDI spec: {reason}")]
    InvalidSpec { reason: String },

    #[error("invalid OCI config.json: {reason}")]
    InvalidConfig { reason: String },

    #[error("unresolvable device request {request:?}: {reason}")]
    UnresolvableRequest { request: String, reason: String },

    #[error("cannot serialise CDI spec: {message}")]
    Serialise { message: String },
}

impl Error {
    /// A short stable label for metrics and error reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidKind { .. } => "invalid_kind",
            Error::InvalidDeviceName { .. } => "invalid_device_name",
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::InvalidConfig { .. } => "invalid_config",
            Error::UnresolvableRequest { .. } => "unresolvable_request",
            Error::Serialise { .. } => "serialise",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
