//! The crate's one error type.

use std::fmt;

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One validation failure: the field path (Kubernetes style, e.g.
/// `spec.tfReplicaSpecs[Worker].replicas`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, as a path from the object root.
    pub field: String,
    /// What is wrong, lower case.
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a TFJob could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not YAML/JSON, or a field has the wrong type or value.
    #[error("{source_name}: {message}")]
    Syntax {
        /// The file (or `-`) the text came from.
        source_name: String,
        /// serde's message, with the field path and the line.
        message: String,
    },
    /// `apiVersion`/`kind` are not `kubeflow.org/v1`/`TFJob`.
    #[error("{source_name}: expected apiVersion kubeflow.org/v1 and kind TFJob, got apiVersion {api_version:?} and kind {kind:?}")]
    WrongKind {
        source_name: String,
        api_version: String,
        kind: String,
    },
    /// Unknown fields, refused under `strict`.
    #[error("{source_name}: unknown field(s) {}; remove them or run without --strict", fields.join(", "))]
    UnknownFields {
        source_name: String,
        fields: Vec<String>,
    },
    /// The job fails validation.
    #[error("invalid TFJob {name:?}: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The job's name.
        name: String,
        /// Every failure found, in field order.
        errors: Vec<FieldError>,
    },
}

impl Error {
    /// A stable label for metrics and condition reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Syntax { .. } => "syntax",
            Error::WrongKind { .. } => "wrong_kind",
            Error::UnknownFields { .. } => "unknown_fields",
            Error::Invalid { .. } => "invalid",
        }
    }
}
