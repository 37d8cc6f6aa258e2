#![doc = include_str!("../README.md")]

mod conditions;
mod pods;
mod tf_config;

use std::collections::BTreeMap;

use gantry_tfjob::{
    CleanPodPolicy, ConditionStatus, JobConditionType, JobStatus, ReplicaStatus, ReplicaType,
    RestartPolicy, SuccessPolicy, TFJob,
};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;

pub use pods::{
    exit_code, gantry_min_member, gpu_count, is_master_role, job_labels, label, phase,
    pod_tf_config, replica_of, restart_count, tf_port, GANTRY_GROUP_LABEL, GANTRY_MIN_MEMBER_LABEL,
    GPU_MILLI_RESOURCE, GPU_RESOURCE, JOB_NAME_LABEL, JOB_ROLE_LABEL, OPERATOR_NAME_LABEL,
    REPLICA_INDEX_LABEL, REPLICA_TYPE_LABEL, SCHEDULER_PLUGINS_GROUP_LABEL,
    VOLCANO_GROUP_ANNOTATION, VOLCANO_TASK_ANNOTATION,
};
pub use tf_config::{cluster_spec, is_distributed, replica_name, tf_config, TF_CONFIG};

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why no plan could be made. A job that fails validation is *not* an error: its plan fails the job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Loopback addressing without a port for this pod (an executor bug).
    #[error("no local port chosen for replica {pod}")]
    MissingPort { pod: String },
    /// `TF_CONFIG` could not be serialised.
    #[error("serialising TF_CONFIG: {0}")]
    Serialise(String),
}

impl Error {
    /// A stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::MissingPort { .. } => "missing_port",
            Error::Serialise(_) => "serialise",
        }
    }
}

/// The retryable exit codes of `restartPolicy: ExitCode`: 128 and above (killed by a signal: 137 is
/// SIGKILL, the OOM killer's signal; 143 SIGTERM). 1-127 are permanent.
pub fn is_retryable_exit_code(code: i32) -> bool {
    code >= 128
}

/// What the executor currently sees of a job: its pods (with status), services and PodGroup.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The job's pods (others are ignored by label).
    pub pods: Vec<Pod>,
    /// The job's headless services.
    pub services: Vec<Service>,
    /// The job's PodGroup, when gang scheduling is on.
    pub pod_group: Option<ObservedPodGroup>,
}

/// The part of a PodGroup the planner reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObservedPodGroup {
    /// Admitted by the gang scheduler (Volcano `Inqueue`/`Running`). The local executor always says yes.
    pub admitted: bool,
}

/// How gangs are scheduled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GangScheduler {
    /// No PodGroup.
    #[default]
    None,
    /// `scheduling.volcano.sh/v1beta1` PodGroup; pods are created only once it is admitted.
    Volcano,
    /// `scheduling.x-k8s.io/v1alpha1` PodGroup.
    SchedulerPlugins,
    /// Gantry's own scheduler extender (a pod label).
    Gantry,
}

/// How replicas reach each other, i.e. the addresses in `TF_CONFIG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressing {
    /// `<job>-<type>-<i>.<namespace>.svc[.<cluster domain>]:<port>`, through the headless services.
    ClusterDns {
        /// Appended after `.svc` when set (Kubeflow's `CUSTOM_CLUSTER_DOMAIN`).
        cluster_domain: Option<String>,
    },
    /// `127.0.0.1:<port>` with a port per pod name, chosen once per local run so that a restarted
    /// replica keeps its address.
    Loopback {
        /// Pod name to port.
        ports: BTreeMap<String, u16>,
    },
}

/// Planner configuration: what the executor decides, not the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanConfig {
    /// Gang scheduling mode.
    pub gang: GangScheduler,
    /// `schedulerName` of the pods under gang scheduling (a per-mode default when unset).
    pub scheduler_name: Option<String>,
    /// Addresses in `TF_CONFIG`.
    pub addressing: Addressing,
    /// Value of the `training.kubeflow.org/operator-name` label.
    pub operator_name: String,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            gang: GangScheduler::None,
            scheduler_name: None,
            addressing: Addressing::ClusterDns {
                cluster_domain: None,
            },
            operator_name: "tfjob-controller".to_string(),
        }
    }
}

/// The PodGroup a job needs under gang scheduling; the operator renders it for its scheduler.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodGroupPlan {
    /// The group's name (the job's).
    pub name: String,
    /// Replicas that must be placed together.
    pub min_member: i32,
    /// The queue (`default` when unset).
    pub queue: String,
    /// Priority class, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority_class: Option<String>,
    /// Resources of the group, from `schedulingPolicy.minResources` or summed over the replicas,
    /// GPUs set only in `limits` included.
    pub min_resources: BTreeMap<String, Quantity>,
    /// How long the group may wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_timeout_seconds: Option<i32>,
}

/// Kubernetes event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventType {
    Normal,
    Warning,
}

/// An event to record on the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanEvent {
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: EventType,
    /// CamelCase reason.
    pub reason: String,
    /// Message.
    pub message: String,
}

/// What to do next for one job. Executors apply it in field order: PodGroup, deletions, creations,
/// status, events; then call the planner again after `requeue_after_seconds` or on any change.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Create this PodGroup (it does not exist yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_pod_group: Option<PodGroupPlan>,
    /// Delete the job's PodGroup.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub delete_pod_group: bool,
    /// Pods to delete, by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delete_pods: Vec<String>,
    /// Services to delete, by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delete_services: Vec<String>,
    /// Pods to create.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub create_pods: Vec<Pod>,
    /// Headless services to create.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub create_services: Vec<Service>,
    /// The new status, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
    /// Events to record.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<PlanEvent>,
    /// Plan again after this many seconds even if nothing changes (deadline, TTL, PodGroup wait).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requeue_after_seconds: Option<i64>,
    /// Delete the job itself (its TTL after finishing has passed).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub delete_job: bool,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.create_pod_group.is_none()
            && !self.delete_pod_group
            && self.delete_pods.is_empty()
            && self.delete_services.is_empty()
            && self.create_pods.is_empty()
            && self.create_services.is_empty()
            && self.status.is_none()
            && !self.delete_job
    }

    fn requeue_within(&mut self, seconds: i64) {
        let seconds = seconds.max(0);
        self.requeue_after_seconds = Some(
            self.requeue_after_seconds
                .map_or(seconds, |s| s.min(seconds)),
        );
    }

    fn event(&mut self, type_: EventType, reason: &str, message: impl Into<String>) {
        self.events.push(PlanEvent {
            type_,
            reason: reason.to_string(),
            message: message.into(),
        });
    }
}

fn seconds_between(from: &Time, to: &Time) -> i64 {
    to.0.as_second() - from.0.as_second()
}

fn is_being_deleted(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// Plans one reconcile of `job` (defaults are applied here; pass the job as stored).
///
/// # Flow
/// Kubeflow training-operator `release-1.9` `ReconcileJobs` + the TFJob `ReconcilePods` and
/// `UpdateJobStatus`:
/// 1. a job that fails validation gets `Failed` (reason `TFJobFailedValidation`);
/// 2. a finished job: delete pods per `cleanPodPolicy` (and their services), the PodGroup, apply the TTL;
/// 3. a suspended job: delete every pod and service, `Suspended=True`, `Running=False`; a resumed job
///    gets `Suspended=False` and a new `startTime`;
/// 4. backoff limit or active deadline exceeded: delete every pod and service, `Failed`;
/// 5. gang scheduling: create the PodGroup; under Volcano wait for admission;
/// 6. per replica type: create missing pods and services, delete those above `replicas` (scale down),
///    delete failed `ExitCode` pods with a retryable code so the next plan re-creates them (`Restarting`);
/// 7. the status: `Running`, `Succeeded` (chief/master; else worker 0, or all workers under
///    `AllWorkers`), `Failed` when a replica failed for good.
///
/// # Guarantees
/// Pure: the same inputs give the same plan. Names are deterministic, so applying a plan twice creates
/// nothing twice (an "already exists" is success). `status` is `Some` only when it changed.
///
/// # Deliberate differences from Kubeflow
/// - An unset `cleanPodPolicy` means `Running` (Kubeflow: `None`), so PS and evaluators are stopped.
/// - `backoffLimit` also counts pods re-created under `ExitCode`: a retryable failure that would make
///   the re-creations exceed the limit fails the job. Kubeflow's other backoff check, based on its
///   work-queue retry count, is not reproducible and is left out.
/// - A replica that fails with a permanent code fails the job even while another replica is
///   restarting (Kubeflow keeps such a job `Restarting` forever).
/// - Pods are never created at indices at or above `replicas` (Kubeflow fills holes below the highest
///   stale index), and services are created with `publishNotReadyAddresses: true`.
///
/// # Errors
/// Only [`Error::MissingPort`] (loopback addressing without a port for a replica).
pub fn plan(job: &TFJob, observed: &Observed, config: &PlanConfig, now: &Time) -> Result<Plan> {
    let job = job.clone().with_defaults();
    let name = job.name().to_string();
    let namespace = job.namespace().to_string();
    let old = job.status_or_default();
    let mut status = old.clone();
    let mut plan = Plan::default();
    let job_label = job.name().replace('/', "-");
    let pods: Vec<&Pod> = observed
        .pods
        .iter()
        .filter(|p| label(&p.metadata, JOB_NAME_LABEL) == Some(job_label.as_str()))
        .collect();
    let services: Vec<&Service> = observed
        .services
        .iter()
        .filter(|s| label(&s.metadata, JOB_NAME_LABEL) == Some(job_label.as_str()))
        .collect();
    let run = job.spec.run_policy.clone();

    if status.condition(JobConditionType::Created).is_none() {
        conditions::set(
            &mut status,
            JobConditionType::Created,
            ConditionStatus::True,
            "TFJobCreated",
            format!("TFJob {name} is created."),
            now,
        );
    }

    // 1. Validation: the webhook may not have run (local files, or a cluster without it).
    if let Err(err) = gantry_tfjob::validate(&job) {
        if !status.is_finished() {
            let message = err.to_string();
            plan.event(EventType::Warning, "TFJobFailedValidation", message.clone());
            status.completion_time.get_or_insert_with(|| now.clone());
            conditions::set(
                &mut status,
                JobConditionType::Failed,
                ConditionStatus::True,
                "TFJobFailedValidation",
                message,
                now,
            );
        }
        return Ok(finish(plan, &old, status));
    }

    // 2. Finished: clean up per cleanPodPolicy, the PodGroup, and the job after its TTL.
    if status.is_finished() {
        let policy = run.clean_pod_policy.unwrap_or(CleanPodPolicy::Running);
        delete_pods_and_services(&mut plan, &pods, &services, Some(policy));
        if config.gang != GangScheduler::None && observed.pod_group.is_some() {
            plan.delete_pod_group = true;
        }
        cleanup_job(&mut plan, &run, &status, now);
        if status.is(JobConditionType::Succeeded) {
            for rs in status.replica_statuses.values_mut() {
                rs.succeeded += rs.active;
                rs.active = 0;
            }
        }
        return Ok(finish(plan, &old, status));
    }

    // 3. Suspend and resume.
    if run.suspend == Some(true) {
        delete_pods_and_services(&mut plan, &pods, &services, None);
        if config.gang != GangScheduler::None && observed.pod_group.is_some() {
            plan.delete_pod_group = true;
        }
        for rs in status.replica_statuses.values_mut() {
            rs.active = 0;
        }
        let message = format!("TFJob {name} is suspended.");
        if status.is(JobConditionType::Running) {
            conditions::set(
                &mut status,
                JobConditionType::Running,
                ConditionStatus::False,
                "TFJobSuspended",
                message.clone(),
                now,
            );
        }
        if !status.is(JobConditionType::Suspended) {
            conditions::set(
                &mut status,
                JobConditionType::Suspended,
                ConditionStatus::True,
                "TFJobSuspended",
                message.clone(),
                now,
            );
            plan.event(EventType::Normal, "TFJobSuspended", message);
        }
        status.start_time = None;
        return Ok(finish(plan, &old, status));
    }
    if status.is(JobConditionType::Suspended) {
        let message = format!("TFJob {name} is resumed.");
        conditions::set(
            &mut status,
            JobConditionType::Suspended,
            ConditionStatus::False,
            "TFJobResumed",
            message.clone(),
            now,
        );
        status.start_time = Some(now.clone());
        plan.event(EventType::Normal, "TFJobResumed", message);
    }

    // 4. Backoff limit and active deadline.
    let specs = job.spec.tf_replica_specs.clone();
    let pods_of = |rtype: ReplicaType| -> Vec<&Pod> {
        pods.iter()
            .copied()
            .filter(|p| label(&p.metadata, REPLICA_TYPE_LABEL) == Some(rtype.lower()))
            .collect()
    };
    let retryable_now = |rtype: ReplicaType, pod: &Pod| -> bool {
        specs.get(&rtype).and_then(|s| s.restart_policy) == Some(RestartPolicy::ExitCode)
            && phase(pod) == "Failed"
            && !is_being_deleted(pod)
            && exit_code(pod).is_some_and(is_retryable_exit_code)
            && replica_of(&pod.metadata)
                .is_some_and(|(_, i)| i < specs[&rtype].replicas.unwrap_or(1))
    };
    let mut failure = None;
    if let Some(limit) = run.backoff_limit {
        let mut in_place = 0;
        let mut pending = 0;
        for (rtype, spec) in &specs {
            let policy = spec.restart_policy.unwrap_or(RestartPolicy::Never);
            for pod in pods_of(*rtype) {
                if matches!(policy, RestartPolicy::OnFailure | RestartPolicy::Always)
                    && phase(pod) == "Running"
                {
                    in_place += restart_count(pod);
                }
                if retryable_now(*rtype, pod) {
                    pending += 1;
                }
            }
        }
        let recreated: i32 = old.replica_statuses.values().map(|r| r.recreated).sum();
        let past_in_place = if limit == 0 {
            in_place > 0
        } else {
            in_place >= limit
        };
        let past_recreate = pending > 0 && in_place + recreated + pending > limit;
        if past_in_place || past_recreate {
            failure = Some(format!(
                "Job {name} has failed because it has reached the specified backoff limit"
            ));
        }
    }
    if failure.is_none() {
        if let (Some(deadline), Some(start)) = (run.active_deadline_seconds, &status.start_time) {
            if seconds_between(start, now) >= deadline {
                failure = Some(format!(
                    "Job {name} has failed because it was active longer than specified deadline"
                ));
            }
        }
    }
    if let Some(message) = failure {
        status.completion_time.get_or_insert_with(|| now.clone());
        // As Kubeflow: the job is not yet finished when pods are deleted, so every pod goes.
        delete_pods_and_services(&mut plan, &pods, &services, None);
        cleanup_job(&mut plan, &run, &status, now);
        if config.gang != GangScheduler::None && observed.pod_group.is_some() {
            plan.delete_pod_group = true;
        }
        plan.event(EventType::Normal, "TFJobFailed", message.clone());
        conditions::set(
            &mut status,
            JobConditionType::Failed,
            ConditionStatus::True,
            "TFJobFailed",
            message,
            now,
        );
        return Ok(finish(plan, &old, status));
    }

    // 5. Gang scheduling.
    if config.gang != GangScheduler::None {
        if observed.pod_group.is_none() {
            plan.create_pod_group = Some(pod_group(&job));
        }
        let admitted = observed.pod_group.is_some_and(|g| g.admitted);
        if config.gang == GangScheduler::Volcano && !admitted {
            plan.requeue_within(5);
            return Ok(finish(plan, &old, status));
        }
    }

    // 6. Pods and services per replica type; a change of replicas on a running job without
    //    enableDynamicWorker is refused (Gantry addition).
    let refused = scale_refusal(&job, &pods, config)?;
    match &refused {
        Some(message) => {
            if !status.is(JobConditionType::ScaleRefused) {
                plan.event(EventType::Warning, "TFJobScaleRefused", message.clone());
            }
            conditions::set(
                &mut status,
                JobConditionType::ScaleRefused,
                ConditionStatus::True,
                "TFJobScaleRefused",
                message.clone(),
                now,
            );
        }
        None if status.is(JobConditionType::ScaleRefused) => {
            let message = format!(
                "TFJob {name}: replicas match the running pods again; scaling is no longer refused."
            );
            plan.event(EventType::Normal, "TFJobScaleReverted", message.clone());
            conditions::set(
                &mut status,
                JobConditionType::ScaleRefused,
                ConditionStatus::False,
                "TFJobScaleReverted",
                message,
                now,
            );
        }
        None => {}
    }
    let refused = refused.is_some();
    let mut restarted: BTreeMap<ReplicaType, i32> = BTreeMap::new();
    // The cluster spec, computed once and only when a pod is to be created.
    let mut cluster = None;
    for (rtype, spec) in &specs {
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let previous = old.replica_statuses.get(rtype);
        let mut counts = ReplicaStatus {
            recreated: previous.map_or(0, |r| r.recreated),
            ..ReplicaStatus::default()
        };
        let mut slices: BTreeMap<i32, Vec<&Pod>> = BTreeMap::new();
        for pod in pods_of(*rtype) {
            if let Some((_, index)) = replica_of(&pod.metadata) {
                slices.entry(index).or_default().push(pod);
            }
        }
        for index in 0..replicas {
            if !refused && !slices.contains_key(&index) {
                if cluster.is_none() && is_distributed(&job) {
                    cluster = Some(cluster_spec(&job, &config.addressing)?);
                }
                plan.create_pods.push(pods::new_pod(
                    &job,
                    *rtype,
                    spec,
                    index,
                    config,
                    cluster.as_ref(),
                )?);
            }
        }
        for (index, slice) in &slices {
            let [pod] = slice.as_slice() else {
                continue; // more than one pod for an index: Kubeflow only warns
            };
            if *index < 0 || *index >= replicas {
                if !refused && !is_being_deleted(pod) {
                    plan.delete_pods.push(name_of(&pod.metadata));
                }
            } else if retryable_now(*rtype, pod) {
                plan.delete_pods.push(name_of(&pod.metadata));
                counts.recreated += 1;
                *restarted.entry(*rtype).or_default() += 1;
                let message =
                    format!("TFJob {name} is restarting because {rtype} replica(s) failed.");
                plan.event(EventType::Warning, "TFJobRestarting", message.clone());
                conditions::set(
                    &mut status,
                    JobConditionType::Restarting,
                    ConditionStatus::True,
                    "TFJobRestarting",
                    message,
                    now,
                );
            }
            match phase(pod) {
                "Running" => counts.active += 1,
                "Succeeded" => counts.succeeded += 1,
                "Failed" => counts.failed += 1,
                _ => {}
            }
        }
        status.replica_statuses.insert(*rtype, counts);

        let mut service_indices: BTreeMap<i32, &Service> = BTreeMap::new();
        for svc in services
            .iter()
            .copied()
            .filter(|s| label(&s.metadata, REPLICA_TYPE_LABEL) == Some(rtype.lower()))
        {
            if let Some((_, index)) = replica_of(&svc.metadata) {
                service_indices.insert(index, svc);
            }
        }
        for index in 0..replicas {
            if !refused && !service_indices.contains_key(&index) {
                plan.create_services
                    .push(pods::new_service(&job, *rtype, spec, index, config));
            }
        }
        for (index, svc) in &service_indices {
            if !refused && *index >= replicas {
                plan.delete_services.push(name_of(&svc.metadata));
            }
        }
    }

    // 7. Status.
    if status.start_time.is_none() {
        status.start_time = Some(now.clone());
    }
    if let (Some(deadline), Some(start)) = (run.active_deadline_seconds, &status.start_time) {
        plan.requeue_within(deadline - seconds_between(start, now));
    }
    let has_chief = specs.keys().any(|t| t.is_chief_or_master());
    let worker0_completed = match specs.get(&ReplicaType::Worker) {
        None => true,
        Some(_) => pods_of(ReplicaType::Worker).iter().any(|p| {
            replica_of(&p.metadata).map(|(_, i)| i) == Some(0)
                && phase(p) == "Succeeded"
                && exit_code(p) == Some(0)
        }),
    };
    let success_policy = job.spec.success_policy.unwrap_or_default();
    let running_message = format!("TFJob {namespace}/{name} is running.");
    let success_message = format!("TFJob {namespace}/{name} successfully completed.");
    for (rtype, spec) in &specs {
        let counts = status
            .replica_statuses
            .get(rtype)
            .cloned()
            .unwrap_or_default();
        let expected = spec.replicas.unwrap_or(1) - counts.succeeded;
        let mark_success = |status: &mut JobStatus, plan: &mut Plan| {
            if !status.is(JobConditionType::Succeeded) {
                plan.event(EventType::Normal, "TFJobSucceeded", success_message.clone());
            }
            status.completion_time.get_or_insert_with(|| now.clone());
            conditions::set(
                status,
                JobConditionType::Succeeded,
                ConditionStatus::True,
                "TFJobSucceeded",
                success_message.clone(),
                now,
            );
        };
        let mark_running = |status: &mut JobStatus| {
            conditions::set(
                status,
                JobConditionType::Running,
                ConditionStatus::True,
                "TFJobRunning",
                running_message.clone(),
                now,
            );
        };
        if has_chief {
            if rtype.is_chief_or_master() {
                if counts.active > 0 {
                    mark_running(&mut status);
                }
                if expected == 0 {
                    mark_success(&mut status, &mut plan);
                }
            }
        } else if *rtype == ReplicaType::Worker {
            if expected == 0 || (worker0_completed && success_policy != SuccessPolicy::AllWorkers) {
                mark_success(&mut status, &mut plan);
            } else if counts.active > 0 {
                mark_running(&mut status);
            }
        }
        let permanent = counts.failed - restarted.get(rtype).copied().unwrap_or(0);
        if permanent > 0 {
            if job.spec.enable_dynamic_worker && *rtype == ReplicaType::Worker {
                continue;
            }
            // Gantry's failurePolicy: which permanent failures fail the job.
            if let Some(policy) = &job.spec.failure_policy {
                let fails = match rtype {
                    ReplicaType::Chief | ReplicaType::Master => {
                        policy.on_chief_failure.unwrap_or(true)
                    }
                    ReplicaType::Ps => policy.on_ps_failure.unwrap_or(true),
                    ReplicaType::Worker => {
                        let replicas = i64::from(spec.replicas.unwrap_or(1));
                        let percent = i64::from(policy.max_worker_failure_percent.unwrap_or(0));
                        i64::from(permanent) * 100 > percent * replicas
                    }
                    ReplicaType::Evaluator => false,
                };
                if !fails {
                    continue;
                }
            }
            let message = format!(
                "TFJob {namespace}/{name} has failed because {permanent} {rtype} replica(s) failed."
            );
            if !status.is(JobConditionType::Failed) {
                plan.event(EventType::Normal, "TFJobFailed", message.clone());
            }
            status.completion_time.get_or_insert_with(|| now.clone());
            conditions::set(
                &mut status,
                JobConditionType::Failed,
                ConditionStatus::True,
                "TFJobFailed",
                message,
                now,
            );
        }
    }
    if !restarted.is_empty() {
        // Kubeflow re-appends Restarting after Running replaced it in the same reconcile.
        let types: Vec<&str> = restarted.keys().map(|t| t.as_str()).collect();
        let message = format!(
            "TFJob {name} is restarting because {} replica(s) failed.",
            types.join(", ")
        );
        conditions::set(
            &mut status,
            JobConditionType::Restarting,
            ConditionStatus::True,
            "TFJobRestarting",
            message,
            now,
        );
    }
    if status.is_finished() && !old.is_finished() {
        // Clean up in the very next plan.
        plan.requeue_within(0);
    }
    Ok(finish(plan, &old, status))
}

/// Without `enableDynamicWorker`, a live pod (pending or running, not being deleted) whose replica is
/// gone (scale down) or whose `TF_CONFIG` differs from the one the job now gives it (scale up or
/// down of any type) means the job's replicas changed under running TensorFlow servers, which would
/// keep their stale cluster. Returns the refusal message, naming the change and the ways out.
/// Local runs (loopback addressing) cannot change a job mid-run and are never refused.
fn scale_refusal(job: &TFJob, pods: &[&Pod], config: &PlanConfig) -> Result<Option<String>> {
    if job.spec.enable_dynamic_worker || matches!(config.addressing, Addressing::Loopback { .. }) {
        return Ok(None);
    }
    let specs = &job.spec.tf_replica_specs;
    let mut stale = false;
    let mut live: BTreeMap<ReplicaType, i32> = BTreeMap::new();
    for pod in pods {
        if is_being_deleted(pod) || !matches!(phase(pod), "Running" | "Pending") {
            continue;
        }
        let Some((rtype, index)) = replica_of(&pod.metadata) else {
            continue;
        };
        *live.entry(rtype).or_default() += 1;
        let replicas = specs.get(&rtype).map_or(0, |s| s.replicas.unwrap_or(1));
        if index >= replicas {
            stale = true;
        } else if !stale {
            let want = tf_config(job, rtype, index, &config.addressing)?;
            stale = want.as_deref() != pod_tf_config(pod);
        }
    }
    if !stale {
        return Ok(None);
    }
    let changes: Vec<String> = specs
        .iter()
        .map(|(rtype, spec)| {
            format!(
                "{rtype}: {} running, {} wanted",
                live.get(rtype).copied().unwrap_or(0),
                spec.replicas.unwrap_or(1)
            )
        })
        .collect();
    Ok(Some(format!(
        "TFJob {}/{}: replicas changed while it runs ({}), but enableDynamicWorker is not set, so running pods would keep a stale TF_CONFIG; the change is not applied. Restore the replicas, or delete and re-create the job, or set enableDynamicWorker: true (sparse TF_CONFIG) to scale workers live.",
        job.namespace(),
        job.name(),
        changes.join(", ")
    )))
}

fn finish(mut plan: Plan, old: &JobStatus, status: JobStatus) -> Plan {
    if &status != old {
        plan.status = Some(status);
    }
    plan
}

/// Kubeflow's `DeletePodsAndServices`: with `policy` (the job finished) `None` keeps everything and
/// `Running` only deletes running and pending pods; without (not finished) every pod goes. A pod's
/// service has its name. Pods already being deleted are skipped.
fn delete_pods_and_services(
    plan: &mut Plan,
    pods: &[&Pod],
    services: &[&Service],
    policy: Option<CleanPodPolicy>,
) {
    if policy == Some(CleanPodPolicy::None) {
        return;
    }
    for pod in pods {
        if policy == Some(CleanPodPolicy::Running) && !matches!(phase(pod), "Running" | "Pending") {
            continue;
        }
        let name = name_of(&pod.metadata);
        if !is_being_deleted(pod) {
            plan.delete_pods.push(name.clone());
        }
        if services
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some(name.as_str()))
        {
            plan.delete_services.push(name);
        }
    }
    if policy.is_none() {
        // Suspend/failure: services whose pod is already gone go too.
        for svc in services {
            let name = name_of(&svc.metadata);
            if !plan.delete_services.contains(&name) {
                plan.delete_services.push(name);
            }
        }
    }
}

/// Kubeflow's `CleanupJob`: delete the job `ttlSecondsAfterFinished` after completion.
fn cleanup_job(plan: &mut Plan, run: &gantry_tfjob::RunPolicy, status: &JobStatus, now: &Time) {
    let Some(ttl) = run.ttl_seconds_after_finished else {
        return;
    };
    let Some(done) = status.completion_time.as_ref() else {
        return;
    };
    let remaining = i64::from(ttl) - seconds_between(done, now);
    if remaining < 0 {
        plan.delete_job = true;
    } else {
        // Kubeflow deletes once the current time is *after* the expiry.
        plan.requeue_within(remaining + 1);
    }
}

fn pod_group(job: &TFJob) -> PodGroupPlan {
    let specs = &job.spec.tf_replica_specs;
    let total: i32 = specs.values().map(|s| s.replicas.unwrap_or(1)).sum();
    let policy = job
        .spec
        .run_policy
        .scheduling_policy
        .clone()
        .unwrap_or_default();
    let min_resources = policy.min_resources.clone().unwrap_or_else(|| {
        let mut gpus: u64 = 0;
        for spec in specs.values() {
            if let Some(pod) = spec.template.spec.as_ref() {
                let replicas = u64::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
                gpus += replicas * u64::from(gpu_count(pod));
            }
        }
        let mut out = BTreeMap::new();
        if gpus > 0 {
            out.insert(GPU_RESOURCE.to_string(), Quantity(gpus.to_string()));
        }
        out
    });
    PodGroupPlan {
        name: job.name().to_string(),
        min_member: policy.min_available.unwrap_or(total),
        queue: policy
            .queue
            .filter(|q| !q.is_empty())
            .unwrap_or_else(|| "default".to_string()),
        priority_class: policy.priority_class.filter(|p| !p.is_empty()),
        min_resources,
        schedule_timeout_seconds: policy.schedule_timeout_seconds,
    }
}
