//! The `kubeflow.org/v1` TFJob types, field for field as Kubeflow's `release-1.9` Go types
//! (`tensorflow_types.go`, `common_types.go`), with BTreeMaps so serialised output is byte-stable.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::replica_type::{deserialize_replica_map, ReplicaType};

/// `apiVersion` of every TFJob.
pub const API_VERSION: &str = "kubeflow.org/v1";
/// `kind` of every TFJob.
pub const KIND: &str = "TFJob";
/// The container that runs TensorFlow and receives `TF_CONFIG`.
pub const DEFAULT_CONTAINER_NAME: &str = "tensorflow";
/// The name of the port TensorFlow servers listen on.
pub const DEFAULT_PORT_NAME: &str = "tfjob-port";
/// The default value of that port.
pub const DEFAULT_PORT: i32 = 2222;

/// The desired state of a distributed TensorFlow job.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeflow.org",
    version = "v1",
    kind = "TFJob",
    plural = "tfjobs",
    singular = "tfjob",
    shortname = "tfjob",
    namespaced,
    status = "JobStatus",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct TFJobSpec {
    /// Runtime policies: cleanup, TTL, deadline, backoff, gang scheduling, suspension.
    #[serde(default)]
    pub run_policy: RunPolicy,
    /// When the job counts as succeeded without a Chief or Master: `""` (worker 0) or `AllWorkers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_policy: Option<SuccessPolicy>,
    /// Replica type (case-insensitive key) to the spec of its replicas.
    #[serde(deserialize_with = "deserialize_replica_map")]
    pub tf_replica_specs: BTreeMap<ReplicaType, ReplicaSpec>,
    /// Workers may come and go: `TF_CONFIG` uses TensorFlow's sparse cluster form.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_dynamic_worker: bool,
    /// Gantry addition: which permanent replica failures fail the job. Unset: any (Kubeflow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<FailurePolicy>,
}

/// `failurePolicy` (Gantry addition): when a replica that failed for good (exit code 1-127, or
/// `Never`/`OnFailure` pods in phase `Failed`) fails the whole job. Evaluator failures never do under
/// a failure policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// Fail the job when the Chief or Master fails; `true` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_chief_failure: Option<bool>,
    /// Fail the job when any PS fails; `true` when unset.
    #[serde(
        default,
        rename = "onPSFailure",
        skip_serializing_if = "Option::is_none"
    )]
    pub on_ps_failure: Option<bool>,
    /// Fail the job only when more than this percentage (0-100) of the workers failed; 0 when unset
    /// (any worker failure fails the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_worker_failure_percent: Option<i32>,
}

/// The replicas of one type.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSpec {
    /// How many replicas; 1 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The pod template of every replica.
    #[serde(default)]
    pub template: PodTemplateSpec,
    /// What to do when a replica's process exits; `Never` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
}

/// How a replica is restarted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RestartPolicy {
    /// Restart in place whatever the exit code (the pod's own restart policy).
    Always,
    /// Restart in place on a non-zero exit code.
    OnFailure,
    /// Never restart.
    Never,
    /// Re-create the replica when its exit code is 128 or more (killed by a signal, e.g. 137 for
    /// SIGKILL/OOM); fail it on 1-127.
    ExitCode,
}

impl RestartPolicy {
    /// Kubeflow's name for the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "Always",
            RestartPolicy::OnFailure => "OnFailure",
            RestartPolicy::Never => "Never",
            RestartPolicy::ExitCode => "ExitCode",
        }
    }
}

/// `successPolicy`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SuccessPolicy {
    /// Chief/Master succeeded, else worker 0 exited 0.
    #[default]
    #[serde(rename = "")]
    Default,
    /// Chief/Master succeeded, else every worker exited 0.
    AllWorkers,
}

/// Which pods to delete when the job finishes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CleanPodPolicy {
    /// Every pod.
    All,
    /// Running and pending pods (PS and evaluators that never exit).
    Running,
    /// No pod.
    None,
}

/// `runPolicy`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunPolicy {
    /// Unset means `Running` in Gantry (a deliberate difference: Kubeflow's default is `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_pod_policy: Option<CleanPodPolicy>,
    /// Delete the job this many seconds after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Fail the job when it has been active longer than this, counted from `status.startTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    /// Restarts (in place, and in Gantry also re-creations) before the job fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<i32>,
    /// Gang scheduling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_policy: Option<SchedulingPolicy>,
    /// Suspend: delete every pod and service; resume re-creates them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// The controller that reconciles this job (Kubeflow's `managedBy`); kept, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

/// `runPolicy.schedulingPolicy`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingPolicy {
    /// Replicas that must be placed together; all replicas when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<i32>,
    /// The scheduler queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Resources the whole group needs before it is admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_resources: Option<BTreeMap<String, Quantity>>,
    /// Priority class of the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class: Option<String>,
    /// How long the group may wait for admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_timeout_seconds: Option<i32>,
}

/// The observed state of a TFJob.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// Conditions, in the order they were first set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<JobCondition>,
    /// Per replica type: how many replicas are active, succeeded, failed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replica_statuses: BTreeMap<ReplicaType, ReplicaStatus>,
    /// When the job was first seen running (reset by suspend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the job succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The last reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconcile_time: Option<Time>,
}

impl JobStatus {
    /// The condition of this type, if set.
    pub fn condition(&self, kind: JobConditionType) -> Option<&JobCondition> {
        self.conditions.iter().find(|c| c.type_ == kind)
    }

    /// Whether a condition of this type is `True`.
    pub fn is(&self, kind: JobConditionType) -> bool {
        self.condition(kind)
            .is_some_and(|c| c.status == ConditionStatus::True)
    }

    /// Succeeded or Failed.
    pub fn is_finished(&self) -> bool {
        self.is(JobConditionType::Succeeded) || self.is(JobConditionType::Failed)
    }
}

/// Replica counts of one type.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Running replicas.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub active: i32,
    /// Replicas that exited 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub succeeded: i32,
    /// Replicas that failed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed: i32,
    /// Gantry addition: replicas re-created after a retryable failure (`ExitCode`), counted against
    /// `backoffLimit`. Kubeflow keeps no such count.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recreated: i32,
    /// Label selector of this type's pods, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// One job condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobCondition {
    /// The condition.
    #[serde(rename = "type")]
    pub type_: JobConditionType,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// A CamelCase reason, e.g. `TFJobSucceeded`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// A human-readable message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When the condition was last updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    /// When the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// The job conditions Kubeflow defines.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum JobConditionType {
    Created,
    Running,
    Restarting,
    Succeeded,
    Failed,
    Suspended,
    /// Gantry addition: `replicas` changed on a running job without `enableDynamicWorker`, so the
    /// change is not applied (running pods would keep a stale `TF_CONFIG`). `False` once reverted.
    ScaleRefused,
}

/// A condition's status.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl TFJob {
    /// The job's name (empty when unset; validation refuses that).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    /// The job's namespace, `default` when unset.
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// The job's status, empty when unset.
    pub fn status_or_default(&self) -> JobStatus {
        self.status.clone().unwrap_or_default()
    }
}
