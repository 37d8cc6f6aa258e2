//! Building the pods and headless services of a job, and reading the observed ones.

use std::collections::BTreeMap;

use gantry_tfjob::{
    ReplicaSpec, ReplicaType, RestartPolicy, TFJob, DEFAULT_CONTAINER_NAME, DEFAULT_PORT,
    DEFAULT_PORT_NAME,
};
use k8s_openapi::api::core::v1::{EnvVar, Pod, PodSpec, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::tf_config::{replica_name, tf_config_in, TF_CONFIG};
use crate::{Addressing, GangScheduler, PlanConfig, Result};

/// Label: the job's name.
pub const JOB_NAME_LABEL: &str = "training.kubeflow.org/job-name";
/// Label: the controller's name.
pub const OPERATOR_NAME_LABEL: &str = "training.kubeflow.org/operator-name";
/// Label: the lower-case replica type.
pub const REPLICA_TYPE_LABEL: &str = "training.kubeflow.org/replica-type";
/// Label: the replica index.
pub const REPLICA_INDEX_LABEL: &str = "training.kubeflow.org/replica-index";
/// Label: `master` on the chief/master (worker 0 when there is none).
pub const JOB_ROLE_LABEL: &str = "training.kubeflow.org/job-role";
/// Volcano's pod annotation naming the PodGroup.
pub const VOLCANO_GROUP_ANNOTATION: &str = "scheduling.k8s.io/group-name";
/// Volcano's pod annotation naming the task.
pub const VOLCANO_TASK_ANNOTATION: &str = "volcano.sh/task-spec";
/// scheduler-plugins' pod label naming the PodGroup.
pub const SCHEDULER_PLUGINS_GROUP_LABEL: &str = "scheduling.x-k8s.io/pod-group";
/// Under `--gang-scheduler gantry`: the pod label naming the gang (the job's name) that Gantry's own
/// scheduler extender reads. There is no PodGroup object in this mode; the labels are the group.
pub const GANTRY_GROUP_LABEL: &str = "gantry.dev/pod-group";
/// Under `--gang-scheduler gantry`: the pod label with how many of the gang's GPU pods must be
/// placed together, as a decimal string (see [`gantry_min_member`]).
pub const GANTRY_MIN_MEMBER_LABEL: &str = "gantry.dev/pod-group-min-member";
/// The extended resource that counts NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Gantry's shared-GPU resource (thousandths of a GPU).
pub const GPU_MILLI_RESOURCE: &str = "gantry.dev/gpu-milli";

/// The `tfjob-port` of a replica's `tensorflow` container (2222 when it has none).
pub fn tf_port(spec: &ReplicaSpec) -> i32 {
    tensorflow_container(spec.template.spec.as_ref())
        .and_then(|c| c.ports.as_ref())
        .and_then(|ports| {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(DEFAULT_PORT_NAME))
        })
        .map_or(DEFAULT_PORT, |p| p.container_port)
}

fn tensorflow_container(spec: Option<&PodSpec>) -> Option<&k8s_openapi::api::core::v1::Container> {
    spec?
        .containers
        .iter()
        .find(|c| c.name == DEFAULT_CONTAINER_NAME)
}

/// Labels shared by all of a job's pods and services.
pub fn job_labels(job: &TFJob, config: &PlanConfig) -> BTreeMap<String, String> {
    BTreeMap::from([
        (JOB_NAME_LABEL.to_string(), job.name().replace('/', "-")),
        (
            OPERATOR_NAME_LABEL.to_string(),
            config.operator_name.clone(),
        ),
    ])
}

fn replica_labels(
    job: &TFJob,
    config: &PlanConfig,
    rtype: ReplicaType,
    index: i32,
) -> BTreeMap<String, String> {
    let mut labels = job_labels(job, config);
    labels.insert(REPLICA_TYPE_LABEL.to_string(), rtype.lower().to_string());
    labels.insert(REPLICA_INDEX_LABEL.to_string(), index.to_string());
    labels
}

/// Whether this replica carries `job-role: master`: the Chief/Master when the job has one, else worker 0.
pub fn is_master_role(job: &TFJob, rtype: ReplicaType, index: i32) -> bool {
    if job
        .spec
        .tf_replica_specs
        .keys()
        .any(|t| t.is_chief_or_master())
    {
        rtype.is_chief_or_master()
    } else {
        rtype == ReplicaType::Worker && index == 0
    }
}

fn owner_reference(job: &TFJob) -> Option<Vec<OwnerReference>> {
    let uid = job.metadata.uid.clone()?;
    Some(vec![OwnerReference {
        api_version: gantry_tfjob::API_VERSION.to_string(),
        kind: gantry_tfjob::KIND.to_string(),
        name: job.name().to_string(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    }])
}

/// The pod of replica `index` of `rtype`.
pub(crate) fn new_pod(
    job: &TFJob,
    rtype: ReplicaType,
    spec: &ReplicaSpec,
    index: i32,
    config: &PlanConfig,
    cluster: Option<&BTreeMap<&'static str, Vec<String>>>,
) -> Result<Pod> {
    let name = replica_name(job.name(), rtype, index);
    let template = &spec.template;
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.extend(replica_labels(job, config, rtype, index));
    if is_master_role(job, rtype, index) {
        labels.insert(JOB_ROLE_LABEL.to_string(), "master".to_string());
    }
    let mut annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    let mut pod_spec = template.spec.clone().unwrap_or_default();

    if let Some(cluster) = cluster {
        let value = tf_config_in(job, cluster, rtype, index)?;
        if let Some(container) = pod_spec
            .containers
            .iter_mut()
            .find(|c| c.name == DEFAULT_CONTAINER_NAME)
        {
            container.env.get_or_insert_with(Vec::new).push(EnvVar {
                name: TF_CONFIG.to_string(),
                value: Some(value),
                value_from: None,
            });
        }
    }
    // ExitCode is implemented by the planner re-creating pods, so the pod itself never restarts.
    let restart = match spec.restart_policy.unwrap_or(RestartPolicy::Never) {
        RestartPolicy::ExitCode => RestartPolicy::Never,
        other => other,
    };
    pod_spec.restart_policy = Some(restart.as_str().to_string());

    let group = job.name().to_string();
    match config.gang {
        GangScheduler::None => {}
        GangScheduler::Volcano => {
            annotations.insert(VOLCANO_GROUP_ANNOTATION.to_string(), group);
            annotations.insert(
                VOLCANO_TASK_ANNOTATION.to_string(),
                rtype.lower().to_string(),
            );
        }
        GangScheduler::SchedulerPlugins => {
            labels.insert(SCHEDULER_PLUGINS_GROUP_LABEL.to_string(), group);
        }
        GangScheduler::Gantry => {
            labels.insert(GANTRY_GROUP_LABEL.to_string(), group);
            labels.insert(
                GANTRY_MIN_MEMBER_LABEL.to_string(),
                gantry_min_member(job).to_string(),
            );
        }
    }
    if let Some(scheduler) = config.gang_scheduler_name() {
        pod_spec.scheduler_name = Some(scheduler.to_string());
    }

    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(job.namespace().to_string()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: owner_reference(job),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    })
}

/// The headless service of replica `index` of `rtype`: every port of the `tensorflow` container.
pub(crate) fn new_service(
    job: &TFJob,
    rtype: ReplicaType,
    spec: &ReplicaSpec,
    index: i32,
    config: &PlanConfig,
) -> Service {
    let labels = replica_labels(job, config, rtype, index);
    let ports: BTreeMap<String, i32> = tensorflow_container(spec.template.spec.as_ref())
        .and_then(|c| c.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| Some((p.name.clone()?, p.container_port)))
                .collect()
        })
        .unwrap_or_default();
    Service {
        metadata: ObjectMeta {
            name: Some(replica_name(job.name(), rtype, index)),
            namespace: Some(job.namespace().to_string()),
            labels: Some(labels.clone()),
            owner_references: owner_reference(job),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(labels),
            ports: Some(
                ports
                    .into_iter()
                    .map(|(name, port)| ServicePort {
                        name: Some(name),
                        port,
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            // Gantry fix: peers resolve each other before every pod is Ready.
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The `TF_CONFIG` of a pod's `tensorflow` container, if set.
pub fn pod_tf_config(pod: &Pod) -> Option<&str> {
    tensorflow_container(pod.spec.as_ref())?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == TF_CONFIG)?
        .value
        .as_deref()
}

/// A pod's phase (`Pending` when it has no status yet).
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// The exit code of the terminated `tensorflow` container, if it has terminated.
pub fn exit_code(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .filter(|s| s.name == DEFAULT_CONTAINER_NAME)
        .find_map(|s| s.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
}

/// Sum of container restart counts of a pod.
pub fn restart_count(pod: &Pod) -> i32 {
    let Some(status) = pod.status.as_ref() else {
        return 0;
    };
    status
        .init_container_statuses
        .iter()
        .chain(status.container_statuses.iter())
        .flatten()
        .map(|s| s.restart_count)
        .sum()
}

/// A label of an object.
pub fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// The replica type and index labels of a pod or service, if well-formed.
pub fn replica_of(meta: &ObjectMeta) -> Option<(ReplicaType, i32)> {
    let rtype = ReplicaType::parse(label(meta, REPLICA_TYPE_LABEL)?)?;
    let index = label(meta, REPLICA_INDEX_LABEL)?.parse().ok()?;
    Some((rtype, index))
}

/// The gang size Gantry's extender holds a job's GPU pods to.
///
/// kube-scheduler calls an extender only for pods that request one of its `managedResources`
/// (`nvidia.com/gpu`, `gantry.dev/gpu-milli`), so the extender never sees a CPU-only replica such
/// as a parameter server: counting those would have it wait for (and reserve GPUs for) pods that
/// never come. The gang is therefore the GPU pods: all of them, or `minAvailable` when that is
/// smaller. A job without GPU pods keeps the plain count (nothing reads it).
pub fn gantry_min_member(job: &gantry_tfjob::TFJob) -> i32 {
    let group = crate::pod_group(job).min_member;
    let gpu_pods: i32 = job
        .spec
        .tf_replica_specs
        .values()
        .filter(|s| s.template.spec.as_ref().is_some_and(requests_gpu))
        .map(|s| s.replicas.unwrap_or(1))
        .sum();
    if gpu_pods == 0 {
        group
    } else {
        gpu_pods.min(group)
    }
}

/// Whether any container of the pod requests whole or shared GPUs.
fn requests_gpu(spec: &PodSpec) -> bool {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter_map(|c| c.resources.as_ref())
        .flat_map(|r| r.requests.iter().chain(r.limits.iter()))
        .any(|m| {
            [GPU_RESOURCE, GPU_MILLI_RESOURCE]
                .iter()
                .any(|k| m.get(*k).is_some_and(|q| q.0.trim() != "0"))
        })
}

/// GPUs a pod spec asks for: `nvidia.com/gpu` of every container, from `limits` when `requests` lacks
/// it (Kubernetes copies limits to requests for extended resources; Kubeflow and Volcano read only
/// requests and so miss GPUs set in limits).
pub fn gpu_count(spec: &PodSpec) -> u32 {
    spec.containers
        .iter()
        .map(|c| {
            let Some(resources) = c.resources.as_ref() else {
                return 0;
            };
            resources
                .requests
                .as_ref()
                .and_then(|r| r.get(GPU_RESOURCE))
                .or_else(|| resources.limits.as_ref().and_then(|l| l.get(GPU_RESOURCE)))
                .and_then(|q| q.0.trim().parse::<u32>().ok())
                .unwrap_or(0)
        })
        .sum()
}

impl PlanConfig {
    fn gang_scheduler_name(&self) -> Option<&str> {
        match self.gang {
            GangScheduler::None => None,
            GangScheduler::Volcano => Some(self.scheduler_name.as_deref().unwrap_or("volcano")),
            GangScheduler::SchedulerPlugins => Some(
                self.scheduler_name
                    .as_deref()
                    .unwrap_or("scheduler-plugins-scheduler"),
            ),
            GangScheduler::Gantry => {
                Some(self.scheduler_name.as_deref().unwrap_or("gantry-scheduler"))
            }
        }
    }
}

impl Addressing {
    /// Loopback addressing with the given port per pod name.
    pub fn loopback(ports: BTreeMap<String, u16>) -> Self {
        Addressing::Loopback { ports }
    }
}
