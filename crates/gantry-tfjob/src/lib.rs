#![doc = include_str!("../README.md")]

mod api;
mod defaults;
mod error;
mod parse;
mod replica_type;
mod validate;

pub use api::{
    CleanPodPolicy, ConditionStatus, FailurePolicy, JobCondition, JobConditionType, JobStatus,
    ReplicaSpec, ReplicaStatus, RestartPolicy, RunPolicy, SchedulingPolicy, SuccessPolicy, TFJob,
    TFJobSpec, API_VERSION, DEFAULT_CONTAINER_NAME, DEFAULT_PORT, DEFAULT_PORT_NAME, KIND,
};
pub use error::{Error, FieldError, Result};
pub use parse::{parse_tfjob, Parsed};
pub use replica_type::ReplicaType;
pub use validate::{is_dns1035_label, validate};
