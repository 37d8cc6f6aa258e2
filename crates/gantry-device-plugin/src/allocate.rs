//! What a container receives for the device IDs the kubelet allocated to it. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use gantry_gpu::{DeviceUuid, Health};

use crate::resources::{parse_milli_device_id, PluginDevice, Resource};

/// Where the container runtime learns which devices to inject (NVIDIA's spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceListStrategy {
    /// `ContainerAllocateResponse.cdi_devices`: the kubelet passes CDI names to the runtime (CRI).
    CdiCri,
    /// `cdi.k8s.io/...` annotations, for runtimes that read CDI annotations.
    CdiAnnotations,
    /// `NVIDIA_VISIBLE_DEVICES=<uuids>`, for runtimes that accept environment requests.
    Envvar,
    /// One `/dev/null` mount per device under `/var/run/nvidia-container-devices/`, read by gantry-runtime.
    VolumeMounts,
}

impl FromStr for DeviceListStrategy {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim() {
            "cdi-cri" => Ok(Self::CdiCri),
            "cdi-annotations" => Ok(Self::CdiAnnotations),
            "envvar" => Ok(Self::Envvar),
            "volume-mounts" => Ok(Self::VolumeMounts),
            other => Err(format!(
                "unknown device list strategy {other:?}: use cdi-cri, cdi-annotations, envvar or volume-mounts"
            )),
        }
    }
}

impl fmt::Display for DeviceListStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CdiCri => "cdi-cri",
            Self::CdiAnnotations => "cdi-annotations",
            Self::Envvar => "envvar",
            Self::VolumeMounts => "volume-mounts",
        })
    }
}

/// Parses `cdi-cri,cdi-annotations`.
pub fn parse_strategies(list: &str) -> Result<Vec<DeviceListStrategy>, String> {
    let strategies: BTreeSet<DeviceListStrategy> = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if strategies.is_empty() {
        return Err("the device list strategy is empty: name at least one".to_owned());
    }
    Ok(strategies.into_iter().collect())
}

/// How Allocate answers, from the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatePolicy {
    pub strategies: Vec<DeviceListStrategy>,
    pub pass_device_specs: bool,
    /// The CDI kind of the generated spec, e.g. `nvidia.com/gpu`.
    pub cdi_kind: String,
}

/// The directory gantry-runtime reads volume-mount requests from.
pub const VOLUME_MOUNT_DIR: &str = "/var/run/nvidia-container-devices";
pub const VISIBLE_DEVICES_ENV: &str = "NVIDIA_VISIBLE_DEVICES";
/// Device nodes every GPU container needs besides its GPUs.
pub const CONTROL_NODES: [&str; 3] = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountSpec {
    pub container_path: String,
    pub host_path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceNodeSpec {
    pub container_path: String,
    pub host_path: String,
    pub permissions: String,
}

/// One container's answer, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerAllocation {
    pub envs: BTreeMap<String, String>,
    pub mounts: Vec<MountSpec>,
    pub devices: Vec<DeviceNodeSpec>,
    pub annotations: BTreeMap<String, String>,
    pub cdi_devices: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    #[error("device {0:?} is not advertised by this resource")]
    UnknownDevice(String),
    #[error("device {id} is unhealthy: {reason}")]
    Unhealthy { id: String, reason: String },
    #[error("device {0} is requested twice")]
    Duplicate(String),
    #[error("{resource} refuses requests for more than one shared device (failRequestsGreaterThanOne), got {count}")]
    TooManyShared { resource: String, count: usize },
    #[error("no device IDs in the request")]
    Empty,
    #[error("the GPU {0} recorded for the pod is not a shareable GPU of this node")]
    UnknownTarget(String),
}

/// The answer for one container.
///
/// # Errors
/// Any ID unknown, unhealthy or given twice; more than one device of a shared resource under
/// `failRequestsGreaterThanOne`; an empty request.
pub fn allocate_container(
    resource: &Resource,
    ids: &[String],
    policy: &AllocatePolicy,
) -> Result<ContainerAllocation, AllocateError> {
    if ids.is_empty() {
        return Err(AllocateError::Empty);
    }
    if resource.fail_requests_greater_than_one && ids.len() > 1 {
        return Err(AllocateError::TooManyShared {
            resource: resource.name.clone(),
            count: ids.len(),
        });
    }
    let mut seen = BTreeSet::new();
    let mut targets = Vec::new();
    let mut nodes = BTreeSet::new();
    for id in ids {
        if !seen.insert(id.as_str()) {
            return Err(AllocateError::Duplicate(id.clone()));
        }
        let device = resource
            .device(id)
            .ok_or_else(|| AllocateError::UnknownDevice(id.clone()))?;
        if let Health::Unhealthy { reason } = &device.health {
            return Err(AllocateError::Unhealthy {
                id: id.clone(),
                reason: reason.clone(),
            });
        }
        // Replicas of one GPU map to the same target: inject it once.
        if !targets.contains(&device.target) {
            targets.push(device.target.clone());
        }
        nodes.extend(device.dev_nodes.iter().map(|n| n.path.clone()));
    }
    Ok(render(&resource.name, &targets, nodes, policy))
}

/// The answer for one container of the shared resource (`gantry.dev/gpu-milli`): the kubelet's IDs
/// only say how many thousandths it allocated; the container gets `target`, the GPU the scheduler
/// recorded on the pod, not the GPU the IDs name.
///
/// # Errors
/// An ID that is not a share of one of the resource's GPUs, or given twice; an empty request;
/// `target` not a GPU of this resource, or unhealthy.
pub fn allocate_shared(
    resource: &Resource,
    ids: &[String],
    target: &str,
    policy: &AllocatePolicy,
) -> Result<ContainerAllocation, AllocateError> {
    let gpus = check_shared_ids(resource, ids)?;
    let gpu = gpus
        .iter()
        .find(|g| g.target.as_str() == target)
        .ok_or_else(|| AllocateError::UnknownTarget(target.to_owned()))?;
    if let Health::Unhealthy { reason } = &gpu.health {
        return Err(AllocateError::Unhealthy {
            id: target.to_owned(),
            reason: reason.clone(),
        });
    }
    let nodes = gpu.dev_nodes.iter().map(|n| n.path.clone()).collect();
    Ok(render(
        &resource.name,
        std::slice::from_ref(&gpu.target),
        nodes,
        policy,
    ))
}

/// Checks the kubelet's IDs for the shared resource: each a share of one of its GPUs, none twice.
/// Returns one device per GPU.
///
/// # Errors
/// An empty request, an ID that is no share of the resource's GPUs, or an ID given twice.
pub fn check_shared_ids<'a>(
    resource: &'a Resource,
    ids: &[String],
) -> Result<Vec<&'a PluginDevice>, AllocateError> {
    if ids.is_empty() {
        return Err(AllocateError::Empty);
    }
    // One device per GPU share: the GPUs are the runs of equal targets (devices are by GPU).
    let mut gpus: Vec<&PluginDevice> = Vec::new();
    for device in &resource.devices {
        if gpus.last().is_none_or(|last| last.target != device.target) {
            gpus.push(device);
        }
    }
    let mut seen = BTreeSet::new();
    for id in ids {
        let known = parse_milli_device_id(id)
            .is_some_and(|(uuid, _)| gpus.iter().any(|g| g.target.as_str() == uuid));
        if !known {
            return Err(AllocateError::UnknownDevice(id.clone()));
        }
        if !seen.insert(id.as_str()) {
            return Err(AllocateError::Duplicate(id.clone()));
        }
    }
    Ok(gpus)
}

/// CDI names, annotations, environment, mounts and device nodes for `targets`, as the strategies say.
fn render(
    resource_name: &str,
    targets: &[DeviceUuid],
    nodes: BTreeSet<String>,
    policy: &AllocatePolicy,
) -> ContainerAllocation {
    let cdi_names: Vec<String> = targets
        .iter()
        .map(|t| format!("{}={t}", policy.cdi_kind))
        .collect();
    let uuids: Vec<String> = targets.iter().map(ToString::to_string).collect();
    let mut answer = ContainerAllocation::default();
    for strategy in &policy.strategies {
        match strategy {
            DeviceListStrategy::CdiCri => answer.cdi_devices.clone_from(&cdi_names),
            DeviceListStrategy::CdiAnnotations => {
                let key = format!("cdi.k8s.io/gantry_{}", resource_name.replace('/', "_"));
                answer.annotations.insert(key, cdi_names.join(","));
            }
            DeviceListStrategy::Envvar => {
                answer
                    .envs
                    .insert(VISIBLE_DEVICES_ENV.to_owned(), uuids.join(","));
            }
            DeviceListStrategy::VolumeMounts => {
                answer
                    .envs
                    .insert(VISIBLE_DEVICES_ENV.to_owned(), VOLUME_MOUNT_DIR.to_owned());
                answer.mounts.extend(uuids.iter().map(|uuid| MountSpec {
                    container_path: format!("{VOLUME_MOUNT_DIR}/{uuid}"),
                    host_path: "/dev/null".to_owned(),
                    read_only: true,
                }));
            }
        }
    }
    if policy.pass_device_specs {
        let all: BTreeSet<String> = CONTROL_NODES
            .iter()
            .map(|s| (*s).to_owned())
            .chain(nodes)
            .collect();
        answer.devices = all
            .into_iter()
            .map(|path| DeviceNodeSpec {
                container_path: path.clone(),
                host_path: path,
                permissions: "rw".to_owned(),
            })
            .collect();
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginConfig;
    use crate::resources::plan_resources;
    use gantry_testkit::load_inventory;
    use std::path::Path;

    fn policy(list: &str, specs: bool) -> AllocatePolicy {
        AllocatePolicy {
            strategies: parse_strategies(list).unwrap(),
            pass_device_specs: specs,
            cdi_kind: "nvidia.com/gpu".into(),
        }
    }

    fn t4(config: &str) -> (gantry_gpu::NodeInventory, Resource) {
        let inventory = load_inventory("t4-pcie-4.yaml");
        let config = PluginConfig::from_yaml(config, Path::new("c")).unwrap();
        let resource = plan_resources(&inventory, &config).unwrap().remove(0);
        (inventory, resource)
    }

    #[test]
    fn every_strategy_names_the_same_devices() {
        let (inv, resource) = t4("");
        let ids = vec![inv.gpus[2].uuid.to_string(), inv.gpus[0].uuid.to_string()];
        let all = allocate_container(
            &resource,
            &ids,
            &policy("cdi-cri,cdi-annotations,envvar", true),
        )
        .unwrap();
        let names = [
            format!("nvidia.com/gpu={}", inv.gpus[2].uuid),
            format!("nvidia.com/gpu={}", inv.gpus[0].uuid),
        ];
        assert_eq!(all.cdi_devices, names);
        assert_eq!(
            all.annotations["cdi.k8s.io/gantry_nvidia.com_gpu"],
            names.join(",")
        );
        assert_eq!(
            all.envs[VISIBLE_DEVICES_ENV],
            format!("{},{}", inv.gpus[2].uuid, inv.gpus[0].uuid)
        );
        let paths: Vec<&str> = all.devices.iter().map(|d| d.host_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/dev/nvidia-uvm",
                "/dev/nvidia-uvm-tools",
                "/dev/nvidia0",
                "/dev/nvidia2",
                "/dev/nvidiactl"
            ]
        );

        let mounts =
            allocate_container(&resource, &ids[..1], &policy("volume-mounts", false)).unwrap();
        assert_eq!(mounts.envs[VISIBLE_DEVICES_ENV], VOLUME_MOUNT_DIR);
        assert_eq!(
            mounts.mounts[0].container_path,
            format!("{VOLUME_MOUNT_DIR}/{}", inv.gpus[2].uuid)
        );
        assert!(mounts.cdi_devices.is_empty() && mounts.devices.is_empty());
    }

    #[test]
    fn bad_ids_are_named() {
        let (mut inv, resource) = t4("");
        let ok = inv.gpus[0].uuid.to_string();
        let p = policy("cdi-cri", false);
        assert_eq!(
            allocate_container(&resource, &["GPU-nope".into()], &p),
            Err(AllocateError::UnknownDevice("GPU-nope".into()))
        );
        assert_eq!(
            allocate_container(&resource, &[ok.clone(), ok.clone()], &p),
            Err(AllocateError::Duplicate(ok.clone()))
        );
        assert_eq!(
            allocate_container(&resource, &[], &p),
            Err(AllocateError::Empty)
        );
        inv.gpus[1].health = Health::Unhealthy {
            reason: "XID 79".into(),
        };
        let sick = plan_resources(&inv, &PluginConfig::default())
            .unwrap()
            .remove(0);
        let err = allocate_container(&sick, &[inv.gpus[1].uuid.to_string()], &p).unwrap_err();
        assert!(err.to_string().contains("unhealthy: XID 79"), "{err}");
    }

    #[test]
    fn replicas_of_one_gpu_inject_it_once_and_may_be_limited() {
        let (inv, resource) = t4(
            "sharing:\n  timeSlicing:\n    resources:\n    - {name: nvidia.com/gpu, replicas: 4}\n",
        );
        let u = &inv.gpus[1].uuid;
        let got = allocate_container(
            &resource,
            &[format!("{u}::0"), format!("{u}::3")],
            &policy("envvar", false),
        )
        .unwrap();
        assert_eq!(got.envs[VISIBLE_DEVICES_ENV], u.to_string());
        let (_, strict) = t4("sharing:\n  timeSlicing:\n    failRequestsGreaterThanOne: true\n    resources:\n    - {name: nvidia.com/gpu, replicas: 4}\n");
        let err = allocate_container(
            &strict,
            &[format!("{u}::0"), format!("{u}::1")],
            &policy("envvar", false),
        )
        .unwrap_err();
        assert!(
            matches!(err, AllocateError::TooManyShared { count: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn shared_allocation_hands_out_the_target_not_the_ids() {
        let mut inv = load_inventory("t4-pcie-4.yaml");
        let milli = crate::resources::plan_milli_resource(&inv);
        let ids: Vec<String> = (0..250)
            .map(|n| crate::resources::milli_device_id(&inv.gpus[0].uuid, n))
            .collect();
        let target = inv.gpus[2].uuid.to_string();
        let got = allocate_shared(
            &milli,
            &ids,
            &target,
            &policy("cdi-cri,cdi-annotations,envvar", true),
        )
        .unwrap();
        assert_eq!(got.cdi_devices, [format!("nvidia.com/gpu={target}")]);
        assert_eq!(
            got.annotations["cdi.k8s.io/gantry_gantry.dev_gpu-milli"],
            format!("nvidia.com/gpu={target}")
        );
        assert_eq!(got.envs[VISIBLE_DEVICES_ENV], target);
        let paths: Vec<&str> = got.devices.iter().map(|d| d.host_path.as_str()).collect();
        assert!(paths.contains(&"/dev/nvidia2") && !paths.contains(&"/dev/nvidia0"));

        let p = policy("cdi-cri", false);
        let whole = inv.gpus[1].uuid.to_string();
        assert_eq!(
            allocate_shared(&milli, std::slice::from_ref(&whole), &target, &p),
            Err(AllocateError::UnknownDevice(whole))
        );
        assert_eq!(
            allocate_shared(&milli, &[ids[0].clone(), ids[0].clone()], &target, &p),
            Err(AllocateError::Duplicate(ids[0].clone()))
        );
        assert_eq!(
            allocate_shared(&milli, &ids, "GPU-elsewhere", &p),
            Err(AllocateError::UnknownTarget("GPU-elsewhere".into()))
        );
        assert_eq!(
            allocate_shared(&milli, &[], &target, &p),
            Err(AllocateError::Empty)
        );
        inv.gpus[2].health = Health::Unhealthy {
            reason: "XID 79".into(),
        };
        let sick = crate::resources::plan_milli_resource(&inv);
        let err = allocate_shared(&sick, &ids, &target, &p).unwrap_err();
        assert!(err.to_string().contains("unhealthy: XID 79"), "{err}");
    }

    #[test]
    fn strategies_parse_as_nvidia_spells_them() {
        assert_eq!(
            parse_strategies("cdi-cri,cdi-annotations").unwrap(),
            [
                DeviceListStrategy::CdiCri,
                DeviceListStrategy::CdiAnnotations
            ]
        );
        assert!(parse_strategies("cdi-cri,bogus")
            .unwrap_err()
            .contains("bogus"));
        assert!(parse_strategies("").is_err());
    }
}
