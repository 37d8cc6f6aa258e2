#![doc = include_str!("../README.md")]

pub mod chart;
pub mod report;
pub mod sim;
pub mod trace;

use std::path::PathBuf;

pub use report::{summarize, PolicySummary};
pub use sim::{simulate, Record, RunResult, SimConfig, DEFAULT_COVERAGE};

/// Errors of trace loading, simulation and result writing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: line {line}: {reason}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("placement: {0}")]
    Placement(#[from] gantry_placement::Error),
    #[error("drawing chart {}: {reason}", path.display())]
    Chart { path: PathBuf, reason: String },
}

impl Error {
    /// A stable label for metrics and condition reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Malformed { .. } => "malformed",
            Error::Placement(_) => "placement",
            Error::Chart { .. } => "chart",
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
