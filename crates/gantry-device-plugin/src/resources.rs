//! Which resources the node advertises and which devices each holds: MIG strategies and time-slicing.

use std::collections::BTreeMap;

use gantry_gpu::{DeviceUuid, Health, MigMode, NodeInventory};

use crate::config::{MigStrategy, PluginConfig};
use crate::{Error, Result};

/// The resource whole GPUs are advertised as.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Separates a GPU's UUID from the replica number in time-sliced device IDs.
pub const REPLICA_SEPARATOR: &str = "::";
/// The shared-GPU resource in thousandths, placed by gantry-scheduler (`docs/scheduler.md`).
pub const MILLI_RESOURCE: &str = gantry_scheduler::schema::RESOURCE_GPU_MILLI;
/// Devices of [`MILLI_RESOURCE`] per whole GPU.
pub const MILLI_PER_GPU: u32 = 1000;
const MILLI_INFIX: &str = "::milli-";

/// A host device node a container needs for a device: `/dev/nvidia<minor>` or an `nvidia-caps` node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DevNode {
    /// Absolute path on the host, e.g. `/dev/nvidia3`.
    pub path: String,
}

/// One device as the kubelet sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDevice {
    /// The kubelet's device ID: a GPU or MIG UUID, or `<uuid>::<n>` for a time-sliced replica.
    pub id: String,
    /// The GPU or MIG device this ID stands for.
    pub target: DeviceUuid,
    /// The physical GPU's index (for topology).
    pub gpu_index: u32,
    pub numa_node: Option<u32>,
    pub health: Health,
    pub dev_nodes: Vec<DevNode>,
}

/// One advertised resource, served on its own socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    pub devices: Vec<PluginDevice>,
    /// Time-slicing replicas per device (1: not shared).
    pub replicas: u32,
    pub fail_requests_greater_than_one: bool,
}

impl Resource {
    /// The socket file name in the plugin directory: `gantry-nvidia.com-gpu.sock`.
    pub fn socket_name(&self) -> String {
        format!("gantry-{}.sock", self.name.replace('/', "-"))
    }

    pub fn device(&self, id: &str) -> Option<&PluginDevice> {
        self.devices.iter().find(|d| d.id == id)
    }

    /// Whether this is `nvidia.com/gpu` of whole GPUs, each advertised once under its own UUID
    /// (not time-sliced replicas, not MIG devices): the resource gantry-scheduler records whole
    /// GPUs of.
    pub fn is_whole_gpus(&self) -> bool {
        self.name == GPU_RESOURCE
            && self.replicas <= 1
            && self
                .devices
                .iter()
                .all(|d| !d.target.is_mig() && d.id == d.target.as_str())
    }
}

/// Resource names are `<domain>/<name>`, DNS-label characters only: they become socket file names.
pub fn validate_resource_name(name: &str) -> Result<()> {
    let ok_part = |part: &str| {
        !part.is_empty()
            && part.len() <= 63
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !part.starts_with('.')
            && !part.contains("..")
    };
    match name.split_once('/') {
        Some((domain, rest)) if ok_part(domain) && ok_part(rest) && domain.contains('.') => Ok(()),
        _ => Err(Error::InvalidResourceName(name.to_owned())),
    }
}

fn mig_resource_name(profile: &str) -> String {
    format!("nvidia.com/mig-{}", profile.replace('+', "."))
}

/// The resources and devices to advertise for an inventory under a config.
///
/// # Errors
/// The MIG strategy `single` on a node whose GPUs are not all MIG-enabled with one profile; a
/// time-sliced resource the node does not have.
pub fn plan_resources(inventory: &NodeInventory, config: &PluginConfig) -> Result<Vec<Resource>> {
    let strategy = config.flags.mig_strategy.unwrap_or_default();
    let mut by_name: BTreeMap<String, Vec<PluginDevice>> = BTreeMap::new();
    let gpu_nodes = |minor: u32| {
        vec![DevNode {
            path: format!("/dev/nvidia{minor}"),
        }]
    };
    // A whole GPU as one device, under its own UUID.
    let whole_gpu = |gpu: &gantry_gpu::Gpu| PluginDevice {
        id: gpu.uuid.to_string(),
        target: gpu.uuid.clone(),
        gpu_index: gpu.index,
        numa_node: gpu.numa_node,
        health: gpu.health.clone(),
        dev_nodes: gpu_nodes(gpu.minor),
    };
    match strategy {
        MigStrategy::None => {
            by_name.entry(GPU_RESOURCE.to_owned()).or_default();
            for gpu in &inventory.gpus {
                by_name
                    .entry(GPU_RESOURCE.to_owned())
                    .or_default()
                    .push(whole_gpu(gpu));
            }
        }
        MigStrategy::Single | MigStrategy::Mixed => {
            let mut profiles = std::collections::BTreeSet::new();
            for gpu in &inventory.gpus {
                let mig_enabled = gpu.mig_mode == Some(MigMode::Enabled);
                if strategy == MigStrategy::Single && (!mig_enabled || gpu.mig_devices.is_empty()) {
                    return Err(Error::MigStrategy(format!(
                        "migStrategy single needs every GPU in MIG mode with MIG devices, but GPU {} ({}) has none; use migStrategy mixed, or partition it",
                        gpu.index, gpu.uuid
                    )));
                }
                if !mig_enabled {
                    by_name
                        .entry(GPU_RESOURCE.to_owned())
                        .or_default()
                        .push(whole_gpu(gpu));
                    continue;
                }
                for mig in &gpu.mig_devices {
                    profiles.insert(mig.profile.clone());
                    let name = match strategy {
                        MigStrategy::Single => GPU_RESOURCE.to_owned(),
                        _ => mig_resource_name(&mig.profile),
                    };
                    let mut dev_nodes = gpu_nodes(gpu.minor);
                    if let Some(caps) = mig.caps_minors {
                        for minor in [caps.gpu_instance, caps.compute_instance] {
                            dev_nodes.push(DevNode {
                                path: format!("/dev/nvidia-caps/nvidia-cap{minor}"),
                            });
                        }
                    }
                    by_name.entry(name).or_default().push(PluginDevice {
                        id: mig.uuid.to_string(),
                        target: mig.uuid.clone(),
                        gpu_index: gpu.index,
                        numa_node: gpu.numa_node,
                        health: gpu.health.clone(),
                        dev_nodes,
                    });
                }
            }
            if strategy == MigStrategy::Single && profiles.len() > 1 {
                return Err(Error::MigStrategy(format!(
                    "migStrategy single needs one MIG profile on every GPU, but the node has {}; use migStrategy mixed",
                    profiles.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
        }
    }
    let sharing = &config.sharing.time_slicing;
    for shared in &sharing.resources {
        if !by_name.contains_key(&shared.name) {
            return Err(Error::MigStrategy(format!(
                "sharing.timeSlicing names {}, which this node does not advertise (it has {})",
                shared.name,
                by_name.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let mut resources = Vec::new();
    for (name, devices) in by_name {
        let shared = config.replicas_for(&name);
        let replicas = shared.map_or(1, |s| s.replicas);
        let rename =
            shared.is_some_and(|s| s.rename.unwrap_or(sharing.rename_by_default) && s.replicas > 1);
        let devices = if replicas > 1 {
            devices
                .into_iter()
                .flat_map(|d| {
                    (0..replicas).map(move |n| PluginDevice {
                        id: format!("{}{REPLICA_SEPARATOR}{n}", d.id),
                        ..d.clone()
                    })
                })
                .collect()
        } else {
            devices
        };
        let name = if rename {
            format!("{name}.shared")
        } else {
            name
        };
        validate_resource_name(&name)?;
        resources.push(Resource {
            name,
            devices,
            replicas,
            fail_requests_greater_than_one: replicas > 1 && sharing.fail_requests_greater_than_one,
        });
    }
    Ok(resources)
}

/// The device ID of the `n`th thousandth of a GPU: `<uuid>::milli-<n>`.
pub fn milli_device_id(gpu: &DeviceUuid, n: u32) -> String {
    format!("{gpu}{MILLI_INFIX}{n}")
}

/// The GPU UUID and share number of a [`MILLI_RESOURCE`] device ID; `None` if it is not one.
pub fn parse_milli_device_id(id: &str) -> Option<(&str, u32)> {
    let (uuid, n) = id.rsplit_once(MILLI_INFIX)?;
    let n: u32 = n.parse().ok().filter(|n| *n < MILLI_PER_GPU)?;
    (!uuid.is_empty()).then_some((uuid, n))
}

/// Whether a GPU can be shared in thousandths: a whole GPU, not in MIG mode. The same rule as the
/// `milli` capacity of the `gantry.dev/gpus` node annotation (`NodeGpus::from_inventory`).
pub fn shares_in_milli(gpu: &gantry_gpu::Gpu) -> bool {
    gpu.mig_mode != Some(MigMode::Enabled) && gpu.mig_devices.is_empty()
}

/// The [`MILLI_RESOURCE`]: [`MILLI_PER_GPU`] devices per GPU not in MIG mode, each with its GPU's
/// health (the kubelet counts only healthy devices, so an unhealthy GPU offers none).
///
/// The devices carry no NUMA node: the kubelet picks arbitrary IDs and `Allocate` hands out the GPU
/// the scheduler recorded on the pod, so a topology hint from the IDs would be wrong.
pub fn plan_milli_resource(inventory: &NodeInventory) -> Resource {
    let mut devices = Vec::new();
    for gpu in inventory.gpus.iter().filter(|g| shares_in_milli(g)) {
        let dev_nodes = vec![DevNode {
            path: format!("/dev/nvidia{}", gpu.minor),
        }];
        devices.extend((0..MILLI_PER_GPU).map(|n| PluginDevice {
            id: milli_device_id(&gpu.uuid, n),
            target: gpu.uuid.clone(),
            gpu_index: gpu.index,
            numa_node: None,
            health: gpu.health.clone(),
            dev_nodes: dev_nodes.clone(),
        }));
    }
    Resource {
        name: MILLI_RESOURCE.to_owned(),
        devices,
        replicas: MILLI_PER_GPU,
        fail_requests_greater_than_one: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_testkit::load_inventory;
    use std::path::Path;

    fn config(text: &str) -> PluginConfig {
        PluginConfig::from_yaml(text, Path::new("c.yaml")).unwrap()
    }

    fn names(resources: &[Resource]) -> Vec<(String, usize)> {
        resources
            .iter()
            .map(|r| (r.name.clone(), r.devices.len()))
            .collect()
    }

    #[test]
    fn whole_gpus_by_default() {
        let resources = plan_resources(
            &load_inventory("h100-nvswitch-8.yaml"),
            &PluginConfig::default(),
        )
        .unwrap();
        assert_eq!(names(&resources), [("nvidia.com/gpu".to_owned(), 8)]);
        assert_eq!(resources[0].socket_name(), "gantry-nvidia.com-gpu.sock");
        assert_eq!(resources[0].devices[3].dev_nodes[0].path, "/dev/nvidia3");
        assert_eq!(resources[0].devices[5].numa_node, Some(1));
        assert!(resources[0].is_whole_gpus());
    }

    #[test]
    fn mixed_mig_strategy_has_one_resource_per_profile() {
        let a100 = load_inventory("a100-mig-4.yaml");
        let resources = plan_resources(&a100, &config("flags:\n  migStrategy: mixed\n")).unwrap();
        assert_eq!(
            names(&resources),
            [
                ("nvidia.com/gpu".to_owned(), 2),
                ("nvidia.com/mig-1g.10gb".to_owned(), 8),
                ("nvidia.com/mig-2g.20gb".to_owned(), 1),
                ("nvidia.com/mig-3g.40gb".to_owned(), 1),
            ]
        );
        // The two GPUs without MIG are whole GPUs; the profiles are not.
        assert!(resources[0].is_whole_gpus());
        assert!(!resources[1].is_whole_gpus());
        let mig = &resources[1].devices[0];
        assert!(mig.id.starts_with("MIG-"));
        assert_eq!(
            mig.dev_nodes.len(),
            3,
            "GPU node plus both caps nodes: {:?}",
            mig.dev_nodes
        );
    }

    #[test]
    fn single_mig_strategy_refuses_mixed_nodes() {
        let a100 = load_inventory("a100-mig-4.yaml");
        let err = plan_resources(&a100, &config("flags:\n  migStrategy: single\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("GPU 2"), "{err}");
        let mut only_first = a100.clone();
        only_first.gpus.truncate(1);
        only_first.topology = Default::default();
        let resources =
            plan_resources(&only_first, &config("flags:\n  migStrategy: single\n")).unwrap();
        assert_eq!(names(&resources), [("nvidia.com/gpu".to_owned(), 7)]);
        assert!(
            !resources[0].is_whole_gpus(),
            "MIG devices under nvidia.com/gpu"
        );
    }

    #[test]
    fn time_slicing_replicates_and_renames() {
        let t4 = load_inventory("t4-pcie-4.yaml");
        let shared = "sharing:\n  timeSlicing:\n    renameByDefault: true\n    failRequestsGreaterThanOne: true\n    resources:\n    - {name: nvidia.com/gpu, replicas: 3}\n";
        let resources = plan_resources(&t4, &config(shared)).unwrap();
        assert_eq!(
            names(&resources),
            [("nvidia.com/gpu.shared".to_owned(), 12)]
        );
        assert_eq!(
            resources[0].devices[4].id,
            format!("{}::1", t4.gpus[1].uuid)
        );
        assert!(resources[0].fail_requests_greater_than_one);
        assert!(!resources[0].is_whole_gpus());
        // Replicas without renaming keep the name but are still not whole GPUs.
        let kept =
            "sharing:\n  timeSlicing:\n    resources:\n    - {name: nvidia.com/gpu, replicas: 2}\n";
        let resources = plan_resources(&t4, &config(kept)).unwrap();
        assert_eq!(resources[0].name, "nvidia.com/gpu");
        assert!(!resources[0].is_whole_gpus());
        let err = plan_resources(&t4, &config("sharing:\n  timeSlicing:\n    resources:\n    - {name: nvidia.com/mig-1g.10gb, replicas: 2}\n")).unwrap_err();
        assert!(err.to_string().contains("does not advertise"), "{err}");
    }

    #[test]
    fn milli_resource_has_a_thousand_devices_per_whole_gpu() {
        let mut t4 = load_inventory("t4-pcie-4.yaml");
        t4.gpus[3].health = Health::Unhealthy {
            reason: "XID 79".into(),
        };
        let milli = plan_milli_resource(&t4);
        assert_eq!(milli.name, "gantry.dev/gpu-milli");
        assert!(!milli.is_whole_gpus());
        assert_eq!(milli.socket_name(), "gantry-gantry.dev-gpu-milli.sock");
        assert!(validate_resource_name(&milli.name).is_ok());
        assert_eq!(milli.devices.len(), 4000);
        let first = &milli.devices[1000];
        assert_eq!(first.id, format!("{}::milli-0", t4.gpus[1].uuid));
        assert_eq!(first.target, t4.gpus[1].uuid);
        assert_eq!(first.dev_nodes[0].path, "/dev/nvidia1");
        assert_eq!(first.numa_node, None);
        let healthy = milli
            .devices
            .iter()
            .filter(|d| d.health.is_healthy())
            .count();
        assert_eq!(healthy, 3000, "the unhealthy GPU's shares follow it");
        assert_eq!(
            milli.devices[3999].id,
            format!("{}::milli-999", t4.gpus[3].uuid)
        );

        // GPUs in MIG mode offer no shares.
        let a100 = load_inventory("a100-mig-4.yaml");
        let whole = a100.gpus.iter().filter(|g| shares_in_milli(g)).count();
        assert_eq!(plan_milli_resource(&a100).devices.len(), whole * 1000);
        assert!(whole < a100.gpus.len());
    }

    #[test]
    fn milli_device_ids_round_trip() {
        let t4 = load_inventory("t4-pcie-4.yaml");
        let uuid = &t4.gpus[2].uuid;
        let id = milli_device_id(uuid, 417);
        assert_eq!(parse_milli_device_id(&id), Some((uuid.as_str(), 417)));
        for bad in [
            uuid.to_string(),
            format!("{uuid}::3"),
            format!("{uuid}::milli-1000"),
            format!("{uuid}::milli-x"),
            "::milli-1".to_owned(),
        ] {
            assert_eq!(parse_milli_device_id(&bad), None, "{bad}");
        }
    }

    #[test]
    fn resource_names_are_checked() {
        for good in [
            "nvidia.com/gpu",
            "nvidia.com/mig-1g.10gb",
            "example.com/gpu.shared",
        ] {
            assert!(validate_resource_name(good).is_ok(), "{good}");
        }
        for bad in [
            "gpu",
            "nvidia.com/",
            "/gpu",
            "nvidia.com/../x",
            "nvidia.com/a/b",
            "Nvidia.com/gpu",
            "x/y",
        ] {
            assert!(validate_resource_name(bad).is_err(), "{bad}");
        }
    }
}
