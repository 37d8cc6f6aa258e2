use std::path::PathBuf;

/// Errors of driver-file discovery and the file helpers; each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: not a valid ld.so.cache: {reason}", path.display())]
    LdCache { path: PathBuf, reason: String },

    #[error("driver root {}: {reason}", path.display())]
    DriverRoot { path: PathBuf, reason: String },

    #[error("{}: not a character or block device node", path.display())]
    NotADevice { path: PathBuf },

    #[error("{}: symlinks nest too deeply or loop inside the root", path.display())]
    SymlinkLoop { path: PathBuf },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// A short stable label for metrics and error reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::LdCache { .. } => "ld_cache",
            Error::DriverRoot { .. } => "driver_root",
            Error::NotADevice { .. } => "not_a_device",
            Error::SymlinkLoop { .. } => "symlink_loop",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
