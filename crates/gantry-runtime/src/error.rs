use std::path::PathBuf;

/// Errors of the runtime shim; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("runtime config {}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: malformed JSON at line {line} column {column}: {message}; fix the bundle's config.json", path.display())]
    MalformedConfig {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("{}: {source}", path.display())]
    Cdi {
        path: PathBuf,
        #[source]
        source: gantry_cdi::Error,
    },

    #[error("{source}{}", spec_errors_note(spec_errors))]
    Request {
        #[source]
        source: gantry_cdi::Error,
        /// Spec files that could not be read, which may explain a missing device.
        spec_errors: Vec<String>,
    },

    #[error("device node {path} of CDI device {device}: {source}; regenerate the spec with `gantry cdi generate` or check the driver")]
    DeviceNode {
        path: String,
        device: String,
        #[source]
        source: gantry_driver::Error,
    },

    #[error("lower runtime {name:?} not found{searched}; install it or set `lower-runtime` in the runtime config")]
    LowerRuntimeMissing { name: String, searched: String },

    #[error("cannot exec lower runtime {}: {source}", path.display())]
    Exec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Driver(#[from] gantry_driver::Error),

    #[error("invalid arguments: {0}")]
    Usage(String),

    #[error("hook state on stdin: {0}")]
    HookState(String),
}

fn spec_errors_note(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(" (unreadable CDI spec files: {})", errors.join("; "))
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// A short stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::Io { .. } => "io",
            Error::MalformedConfig { .. } => "malformed_config",
            Error::Cdi { .. } => "cdi",
            Error::Request { .. } => "request",
            Error::DeviceNode { .. } => "device_node",
            Error::LowerRuntimeMissing { .. } => "lower_runtime_missing",
            Error::Exec { .. } => "exec",
            Error::Driver(_) => "driver",
            Error::Usage(_) => "usage",
            Error::HookState(_) => "hook_state",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
