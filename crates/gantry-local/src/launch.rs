//! Everything decided and checked before the first process starts: the plan's pods turned into
//! concrete local launches (program, arguments, environment, directory, port, GPUs).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gantry_gpu::NodeInventory;
use gantry_planner::{gpu_count, replica_of, Addressing, Observed, PlanConfig, TF_CONFIG};
use gantry_tfjob::{ReplicaType, TFJob, DEFAULT_CONTAINER_NAME};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;

use crate::{Error, Result};

/// Where GPUs come from: the node's inventory, from discovery (NVML, the driver's files, or an
/// inventory file). Called only when some replica requests `nvidia.com/gpu`.
pub trait GpuProvider {
    /// The node's GPUs; or why none could be found (naming the discovery backends tried).
    fn inventory(&self) -> std::result::Result<NodeInventory, String>;
}

/// A provider for callers without discovery: any GPU request fails with its message.
#[derive(Debug, Clone)]
pub struct NoGpus(pub String);

impl GpuProvider for NoGpus {
    fn inventory(&self) -> std::result::Result<NodeInventory, String> {
        Err(self.0.clone())
    }
}

/// Hands out whole GPUs to pods: healthy GPUs not in MIG mode, chosen per pod by the topology-aware
/// selection of `gantry-allocation` (NVLink-connected, same NUMA node), pods in plan order.
///
/// # Errors
/// [`Error::Gpu`] when the job asks for more GPUs than the node has usable.
pub fn allocate_gpus(
    inventory: &NodeInventory,
    wanted: &[(String, u32)],
) -> Result<BTreeMap<String, Vec<String>>> {
    let usable: Vec<&gantry_gpu::Gpu> = inventory
        .gpus
        .iter()
        .filter(|g| matches!(g.health, gantry_gpu::Health::Healthy))
        .filter(|g| {
            !g.mig_mode
                .is_some_and(|m| m == gantry_gpu::MigMode::Enabled)
        })
        .collect();
    let total: u32 = wanted.iter().map(|(_, n)| n).sum();
    if usize::try_from(total).unwrap_or(usize::MAX) > usable.len() {
        return Err(Error::Gpu(format!(
            "the job asks for {total} GPU(s) but this machine has {} usable (of {}; unhealthy and MIG-enabled GPUs are not handed out whole); lower nvidia.com/gpu or the replica counts",
            usable.len(),
            inventory.gpus.len()
        )));
    }
    let view = gantry_allocation::TopologyView::new(inventory);
    let mut available: Vec<u32> = usable.iter().map(|g| g.index).collect();
    let mut assigned = BTreeMap::new();
    for (pod, count) in wanted {
        if *count == 0 {
            continue;
        }
        let chosen = gantry_allocation::preferred_gpus(&view, &available, &[], *count as usize)
            .map_err(|e| Error::Gpu(format!("choosing GPUs for {pod}: {e}")))?;
        available.retain(|i| !chosen.contains(i));
        let uuids = chosen
            .iter()
            .filter_map(|i| usable.iter().find(|g| g.index == *i))
            .map(|g| g.uuid.as_str().to_string())
            .collect();
        assigned.insert(pod.clone(), uuids);
    }
    Ok(assigned)
}

/// Inputs of [`prepare`].
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Relative `workingDir`s and relative command paths resolve against this directory (the
    /// manifest's); it is also the working directory of containers without `workingDir`.
    pub base_dir: PathBuf,
    /// `PATH` to look commands up in (the caller's environment).
    pub search_path: Option<OsString>,
    /// Fixed ports per pod name (tests, benchmarks); others are chosen free on 127.0.0.1.
    pub ports: BTreeMap<String, u16>,
}

/// How one replica is started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaLaunch {
    /// Pod name, `<job>-<type>-<index>`.
    pub name: String,
    /// Short name used in log prefixes, `worker-1`.
    pub short_name: String,
    /// The replica type.
    pub replica_type: ReplicaType,
    /// The replica index.
    pub index: i32,
    /// The replica's `restartPolicy` (`Always`, `OnFailure`, `Never`, `ExitCode`).
    pub restart_policy: String,
    /// The pod's restart policy, applied in place by the executor (`ExitCode` replicas are `Never` pods
    /// that the planner re-creates).
    pub pod_restart_policy: String,
    /// The resolved program.
    pub program: PathBuf,
    /// Its arguments (`command[1..]` then `args`).
    pub args: Vec<String>,
    /// The working directory.
    pub working_dir: PathBuf,
    /// Variables set on top of the caller's environment (container `env`, `TF_CONFIG`, CUDA).
    pub env: BTreeMap<String, String>,
    /// The replica's `TF_CONFIG`, if any (also in `env`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tf_config: Option<String>,
    /// The port on 127.0.0.1 its TensorFlow server listens on.
    pub port: u16,
    /// GPU UUIDs handed to it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
}

/// The launches of a whole job, as `--dry-run` prints them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Launch {
    /// The job's name.
    pub job: String,
    /// Every replica, in plan order.
    pub replicas: Vec<ReplicaLaunch>,
}

/// A job ready to run: defaults applied, ports and GPUs chosen, every replica checked.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The job with defaults applied.
    pub job: TFJob,
    /// The planner configuration (loopback addressing).
    pub config: PlanConfig,
    /// What will be started.
    pub launch: Launch,
    /// Notices for the user (ignored images, unsupported fields).
    pub warnings: Vec<String>,
    pub(crate) options: PrepareOptions,
    pub(crate) gpus: BTreeMap<String, Vec<String>>,
}

/// Checks a job and decides how every replica starts, before anything starts.
///
/// # Errors
/// [`Error::Invalid`] when validation fails, [`Error::Replica`] for a replica without a command, with a
/// command that does not exist or a missing working directory, [`Error::Gpu`] when GPUs are requested
/// and the provider fails or has too few.
pub fn prepare(job: TFJob, options: PrepareOptions, gpus: &dyn GpuProvider) -> Result<Prepared> {
    let job = job.with_defaults();
    gantry_tfjob::validate(&job)?;
    let mut ports = options.ports.clone();
    let mut listeners = Vec::new();
    for (rtype, spec) in &job.spec.tf_replica_specs {
        for index in 0..spec.replicas.unwrap_or(1) {
            let name = gantry_planner::replica_name(job.name(), *rtype, index);
            if ports.contains_key(&name) {
                continue;
            }
            // Hold every listener until all ports are chosen, so that they are distinct.
            let listener = TcpListener::bind(("127.0.0.1", 0))
                .map_err(|e| Error::io("binding a free port on", "127.0.0.1", e))?;
            let port = listener
                .local_addr()
                .map_err(|e| Error::io("reading the port of", "127.0.0.1", e))?
                .port();
            listeners.push(listener);
            ports.insert(name, port);
        }
    }
    drop(listeners);
    let config = PlanConfig {
        addressing: Addressing::loopback(ports.clone()),
        operator_name: "gantry-run".to_string(),
        ..PlanConfig::default()
    };
    let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let plan = gantry_planner::plan(&job, &Observed::default(), &config, &now)?;

    // GPUs: count first, ask the provider only when needed.
    let wanted: Vec<(String, u32)> = plan
        .create_pods
        .iter()
        .map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            (name, p.spec.as_ref().map_or(0, gpu_count))
        })
        .collect();
    let total: u32 = wanted.iter().map(|(_, n)| n).sum();
    let assigned = if total > 0 {
        let inventory = gpus
            .inventory()
            .map_err(|e| Error::Gpu(format!("the job asks for {total} GPU(s): {e}")))?;
        allocate_gpus(&inventory, &wanted)?
    } else {
        BTreeMap::new()
    };

    let mut warnings = Vec::new();
    let images: Vec<&str> = plan
        .create_pods
        .iter()
        .filter_map(|p| p.spec.as_ref())
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.image.as_deref())
        .collect();
    if !images.is_empty() {
        warnings.push(
            "container images are ignored by gantry run: each replica runs as a local process"
                .to_string(),
        );
    }
    let mut replicas = Vec::new();
    for pod in &plan.create_pods {
        let (launch, mut notes) = launch_of(&job, pod, &options, &ports, &assigned)?;
        warnings.append(&mut notes);
        replicas.push(launch);
    }
    warnings.dedup();
    Ok(Prepared {
        launch: Launch {
            job: job.name().to_string(),
            replicas,
        },
        job,
        config,
        warnings,
        options,
        gpus: assigned,
    })
}

/// `worker-1` for pod `job-worker-1`.
pub(crate) fn short_name(rtype: ReplicaType, index: i32) -> String {
    format!("{}-{index}", rtype.lower())
}

/// Turns a pod of the plan into a concrete launch.
pub(crate) fn launch_of(
    job: &TFJob,
    pod: &Pod,
    options: &PrepareOptions,
    ports: &BTreeMap<String, u16>,
    gpus: &BTreeMap<String, Vec<String>>,
) -> Result<(ReplicaLaunch, Vec<String>)> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let (rtype, index) = replica_of(&pod.metadata).unwrap_or((ReplicaType::Worker, 0));
    let replica_policy = job
        .spec
        .tf_replica_specs
        .get(&rtype)
        .and_then(|s| s.restart_policy)
        .map_or("Never", |p| p.as_str())
        .to_string();
    let short = short_name(rtype, index);
    let field =
        format!("spec.tfReplicaSpecs[{rtype}].template.spec.containers[{DEFAULT_CONTAINER_NAME}]");
    let replica_error = |field: String, message: String| Error::Replica {
        replica: short.clone(),
        field,
        message,
    };
    let spec = pod.spec.as_ref();
    let container = spec
        .and_then(|s| {
            s.containers
                .iter()
                .find(|c| c.name == DEFAULT_CONTAINER_NAME)
        })
        .ok_or_else(|| {
            replica_error(
                format!("spec.tfReplicaSpecs[{rtype}].template.spec.containers"),
                "no container named tensorflow".to_string(),
            )
        })?;
    let mut notes = Vec::new();
    let mut env = BTreeMap::new();
    for var in container.env.iter().flatten() {
        match (&var.value, &var.value_from) {
            (_, Some(_)) => notes.push(format!(
                "replica {short}: env {} uses valueFrom, which gantry run cannot resolve; it is not set",
                var.name
            )),
            (value, None) => {
                let value = expand(value.as_deref().unwrap_or_default(), &env);
                env.insert(var.name.clone(), value);
            }
        }
    }
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        notes.push(format!("replica {short}: envFrom is ignored by gantry run"));
    }
    if let Some(mine) = gpus.get(&name) {
        env.entry("CUDA_VISIBLE_DEVICES".to_string())
            .or_insert_with(|| mine.join(","));
        env.insert("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string());
    }

    let working_dir = match container.working_dir.as_deref() {
        Some(dir) if !dir.is_empty() => options.base_dir.join(dir),
        _ => options.base_dir.clone(),
    };
    if !working_dir.is_dir() {
        return Err(replica_error(
            format!("{field}.workingDir"),
            format!("directory {} does not exist", working_dir.display()),
        ));
    }
    let mut words: Vec<String> = container
        .command
        .iter()
        .flatten()
        .map(|w| expand(w, &env))
        .collect();
    if words.is_empty() {
        return Err(replica_error(
            format!("{field}.command"),
            "is empty; gantry run cannot use the image's entrypoint, so set command (e.g. [python, train.py])".to_string(),
        ));
    }
    words.extend(container.args.iter().flatten().map(|w| expand(w, &env)));
    let program_name = words.remove(0);
    let program =
        resolve(&program_name, &working_dir, options.search_path.as_ref()).ok_or_else(|| {
            replica_error(
                format!("{field}.command[0]"),
                format!(
                "command {program_name:?} not found (looked in {}); install it or fix the command",
                if program_name.contains('/') {
                    working_dir.display().to_string()
                } else {
                    "PATH".to_string()
                }
            ),
            )
        })?;
    let tf_config = env.get(TF_CONFIG).cloned();
    Ok((
        ReplicaLaunch {
            name: name.clone(),
            short_name: short.clone(),
            replica_type: rtype,
            index,
            restart_policy: replica_policy,
            pod_restart_policy: spec
                .and_then(|s| s.restart_policy.clone())
                .unwrap_or_else(|| "Never".to_string()),
            program,
            args: words,
            working_dir,
            env,
            tf_config,
            port: ports.get(&name).copied().unwrap_or_default(),
            gpus: gpus.get(&name).cloned().unwrap_or_default(),
        },
        notes,
    ))
}

/// Kubernetes' `$(VAR)` expansion: references to variables defined earlier are replaced, unknown ones
/// are kept as written, and `$$` is a literal `$`.
fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) if env.contains_key(&inner[..end]) => {
                    out.push_str(&env[&inner[..end]]);
                    rest = &inner[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn resolve(program: &str, working_dir: &Path, search_path: Option<&OsString>) -> Option<PathBuf> {
    if program.contains('/') {
        let path = working_dir.join(program);
        return is_executable(&path).then_some(path);
    }
    std::env::split_paths(search_path?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_paren_expansion_follows_kubernetes() {
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$(B)", &env), "$(B)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("cost $5", &env), "cost $5");
        assert_eq!(expand("$(A", &env), "$(A");
    }
}
