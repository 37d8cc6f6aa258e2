//! Generating a CDI spec from a node inventory and the driver files found under a driver root.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use gantry_gpu::{Gpu, MigDevice, NodeInventory};
use serde::{Deserialize, Serialize};

use crate::spec::{ContainerEdits, Device, DeviceNode, Hook, Mount, CDI_VERSION};
use crate::{Error, Kind, Result, Spec};

/// A driver capability as `NVIDIA_DRIVER_CAPABILITIES` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Compute,
    Utility,
    Video,
    Graphics,
    Display,
}

impl Capability {
    pub const ALL: [Capability; 5] = [
        Capability::Compute,
        Capability::Utility,
        Capability::Video,
        Capability::Graphics,
        Capability::Display,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Compute => "compute",
            Capability::Utility => "utility",
            Capability::Video => "video",
            Capability::Graphics => "graphics",
            Capability::Display => "display",
        }
    }
}

/// Driver libraries by capability, by soname stem (the part before `.so`); the grouping follows
/// libnvidia-container's, so `NVIDIA_DRIVER_CAPABILITIES` means what users expect.
pub const LIBRARIES: &[(Capability, &[&str])] = &[
    (
        Capability::Compute,
        &[
            "libcuda",
            "libcudadebugger",
            "libnvidia-allocator",
            "libnvidia-gpucomp",
            "libnvidia-nvvm",
            "libnvidia-opencl",
            "libnvidia-pkcs11",
            "libnvidia-ptxjitcompiler",
        ],
    ),
    (Capability::Utility, &["libnvidia-ml", "libnvidia-cfg"]),
    (
        Capability::Video,
        &[
            "libnvcuvid",
            "libnvidia-encode",
            "libnvidia-opticalflow",
            "libvdpau_nvidia",
        ],
    ),
    (
        Capability::Graphics,
        &[
            "libEGL_nvidia",
            "libGLESv1_CM_nvidia",
            "libGLESv2_nvidia",
            "libGLX_nvidia",
            "libnvidia-cbl",
            "libnvidia-eglcore",
            "libnvidia-fbc",
            "libnvidia-glcore",
            "libnvidia-glsi",
            "libnvidia-glvkspirv",
            "libnvidia-ifr",
            "libnvidia-rtcore",
            "libnvidia-tls",
            "libnvoptix",
        ],
    ),
    (Capability::Display, &["libglxserver_nvidia"]),
];

/// Driver binaries by capability.
pub const BINARIES: &[(Capability, &[&str])] = &[
    (
        Capability::Utility,
        &["nvidia-smi", "nvidia-debugdump", "nvidia-persistenced"],
    ),
    (
        Capability::Compute,
        &["nvidia-cuda-mps-control", "nvidia-cuda-mps-server"],
    ),
];

/// The capability a driver file belongs to, by its file name (`libcuda.so.1`, `nvidia-smi`), or `None` for
/// files of no capability (firmware, sockets, unknown libraries).
///
/// CDI 0.5.0 has no spec annotations (podman 4.3 refuses specs that carry them), so the runtime classifies
/// mounts by name when it honours `NVIDIA_DRIVER_CAPABILITIES`.
pub fn capability_of(path: &str) -> Option<Capability> {
    let name = path.rsplit('/').next().unwrap_or(path);
    if let Some((stem, _)) = name.split_once(".so") {
        return LIBRARIES
            .iter()
            .find(|(_, stems)| stems.contains(&stem))
            .map(|(capability, _)| *capability);
    }
    BINARIES
        .iter()
        .find(|(_, names)| names.contains(&name))
        .map(|(capability, _)| *capability)
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == value.trim())
            .ok_or_else(|| {
                format!(
                    "unknown driver capability {value:?}: expected all or a list of compute, utility, video, graphics, display"
                )
            })
    }
}

/// A file found under the driver root: its path on the host and the path it takes in the container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostFile {
    pub host_path: String,
    pub container_path: String,
}

/// What an adapter found under a driver root, as plain paths. Device node numbers are not here: the
/// runtime reads them when it applies the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverFiles {
    /// The host directory that stands for `/` of the driver installation (`/` on a real host).
    pub root: String,
    /// Control nodes that exist: `/dev/nvidiactl`, `/dev/nvidia-uvm`, `/dev/nvidia-uvm-tools`, `/dev/nvidia-modeset`.
    pub control_nodes: Vec<HostFile>,
    /// Driver libraries by capability, each named by the path the host's ld cache gives it.
    pub libraries: BTreeMap<Capability, Vec<HostFile>>,
    /// Driver binaries (`nvidia-smi`, ...) by capability.
    pub binaries: BTreeMap<Capability, Vec<HostFile>>,
    /// GSP firmware files under `/lib/firmware/nvidia/<driver-version>/`.
    pub firmware: Vec<HostFile>,
    /// IPC endpoints: the persistenced socket, the MPS pipe directory.
    pub ipc: Vec<HostFile>,
}

/// How devices are named in the generated spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NamingStrategy {
    /// `0`, `1`, and `0:1` for MIG device 1 of GPU 0 (as `NVIDIA_VISIBLE_DEVICES` writes them).
    #[default]
    Index,
    /// `GPU-…` and `MIG-…`.
    Uuid,
    /// Both names, each a device of its own with the same edits.
    Both,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub kind: Kind,
    pub naming: NamingStrategy,
    /// Absolute host path of `gantry-runtime`, for the hook that refreshes the container's ld cache;
    /// `None` leaves the hook out.
    pub hook_path: Option<String>,
}

/// Joins a container path onto the driver root: `/` + `/dev/x` is `/dev/x`, `/r` + `/dev/x` is `/r/dev/x`.
pub fn host_path(root: &str, container_path: &str) -> String {
    let root = root.trim_end_matches('/');
    format!("{root}{container_path}")
}

fn node(root: &str, path: &str) -> DeviceNode {
    DeviceNode::new(path, &host_path(root, path))
}

fn gpu_nodes(root: &str, gpu: &Gpu) -> Vec<DeviceNode> {
    vec![node(root, &format!("/dev/{}", gpu.device_node_name()))]
}

fn mig_nodes(root: &str, gpu: &Gpu, mig: &MigDevice) -> Vec<DeviceNode> {
    let mut nodes = gpu_nodes(root, gpu);
    if let Some(caps) = mig.caps_minors {
        for minor in [caps.gpu_instance, caps.compute_instance] {
            nodes.push(node(root, &format!("/dev/nvidia-caps/nvidia-cap{minor}")));
        }
    }
    nodes
}

fn names(strategy: NamingStrategy, index_name: String, uuid: &str) -> Vec<String> {
    match strategy {
        NamingStrategy::Index => vec![index_name],
        NamingStrategy::Uuid => vec![uuid.to_owned()],
        NamingStrategy::Both => vec![index_name, uuid.to_owned()],
    }
}

fn mount(file: &HostFile, options: &[&str]) -> Mount {
    Mount {
        host_path: file.host_path.clone(),
        container_path: file.container_path.clone(),
        options: options.iter().map(|o| (*o).to_owned()).collect(),
        mount_type: None,
    }
}

const READ_ONLY: &[&str] = &["ro", "nosuid", "nodev", "bind"];

/// The directory part of a container path (`/usr/lib/x86_64-linux-gnu` for `/usr/lib/x86_64-linux-gnu/libcuda.so.1`).
fn parent_dir(path: &str) -> Option<&str> {
    path.rsplit_once('/')
        .map(|(dir, _)| if dir.is_empty() { "/" } else { dir })
}

/// Builds the CDI spec for `inventory`.
///
/// # Flow
/// One device per GPU (its `/dev/nvidiaN`), one per MIG device (the parent's node and its two `nvidia-caps`
/// nodes), each under the names the strategy gives, then `all` with every node. The common edits hold the
/// control nodes, read-only mounts of libraries, binaries, firmware and IPC endpoints, `NVIDIA_VISIBLE_DEVICES=void`
/// (so no legacy hook acts a second time) and the `createContainer` hook that refreshes the container's ld cache.
///
/// # Guarantees
/// The output depends only on the inputs: devices in GPU index order, mounts sorted by container path.
/// No spec annotations (a CDI 0.6.0 feature that podman 4.3 refuses). The spec passes [`Spec::validate`].
///
/// # Errors
/// Invalid device names (cannot happen for a validated inventory) and invalid paths in `files`.
pub fn generate(
    inventory: &NodeInventory,
    files: &DriverFiles,
    options: &GenerateOptions,
) -> Result<Spec> {
    let root = files.root.as_str();
    let mut devices = Vec::new();
    let mut all_nodes: Vec<DeviceNode> = Vec::new();
    let mut push = |devices: &mut Vec<Device>, names: Vec<String>, nodes: Vec<DeviceNode>| {
        for node in &nodes {
            if !all_nodes.iter().any(|n| n.path == node.path) {
                all_nodes.push(node.clone());
            }
        }
        for name in names {
            devices.push(Device {
                name,
                annotations: BTreeMap::new(),
                container_edits: ContainerEdits {
                    device_nodes: nodes.clone(),
                    ..ContainerEdits::default()
                },
            });
        }
    };
    for gpu in &inventory.gpus {
        push(
            &mut devices,
            names(options.naming, gpu.index.to_string(), gpu.uuid.as_str()),
            gpu_nodes(root, gpu),
        );
        let mut migs: Vec<&MigDevice> = gpu.mig_devices.iter().collect();
        migs.sort_by_key(|m| (m.gpu_instance_id, m.compute_instance_id));
        for (position, mig) in migs.into_iter().enumerate() {
            push(
                &mut devices,
                names(
                    options.naming,
                    format!("{}:{position}", gpu.index),
                    mig.uuid.as_str(),
                ),
                mig_nodes(root, gpu, mig),
            );
        }
    }
    if !inventory.gpus.is_empty() {
        all_nodes.sort_by(|a, b| a.path.cmp(&b.path));
        devices.push(Device {
            name: "all".to_owned(),
            annotations: BTreeMap::new(),
            container_edits: ContainerEdits {
                device_nodes: all_nodes,
                ..ContainerEdits::default()
            },
        });
    }

    let mut common = ContainerEdits {
        env: vec!["NVIDIA_VISIBLE_DEVICES=void".to_owned()],
        ..ContainerEdits::default()
    };
    common.device_nodes = files
        .control_nodes
        .iter()
        .map(|f| DeviceNode::new(&f.container_path, &f.host_path))
        .collect();
    common.device_nodes.sort_by(|a, b| a.path.cmp(&b.path));

    let mut mounts: BTreeMap<String, Mount> = BTreeMap::new();
    let mut library_dirs = BTreeSet::new();
    for file in files.libraries.values().flatten() {
        if let Some(dir) = parent_dir(&file.container_path) {
            library_dirs.insert(dir.to_owned());
        }
        mounts.insert(file.container_path.clone(), mount(file, READ_ONLY));
    }
    for file in files.binaries.values().flatten() {
        mounts.insert(file.container_path.clone(), mount(file, READ_ONLY));
    }
    for file in &files.firmware {
        mounts.insert(file.container_path.clone(), mount(file, READ_ONLY));
    }
    for file in &files.ipc {
        mounts.insert(
            file.container_path.clone(),
            mount(file, &["nosuid", "nodev", "noexec", "bind"]),
        );
    }
    common.mounts = mounts.into_values().collect();
    if let (Some(hook_path), false) = (&options.hook_path, library_dirs.is_empty()) {
        let mut args = vec![
            "gantry-runtime".to_owned(),
            "hook".to_owned(),
            "update-ldcache".to_owned(),
        ];
        for dir in library_dirs {
            args.push("--folder".to_owned());
            args.push(dir);
        }
        common.hooks.push(Hook {
            hook_name: "createContainer".to_owned(),
            path: hook_path.clone(),
            args,
            env: Vec::new(),
            timeout: None,
        });
    }

    let spec = Spec {
        cdi_version: CDI_VERSION.to_owned(),
        kind: options.kind.clone(),
        annotations: BTreeMap::new(),
        devices,
        container_edits: common,
    };
    spec.validate().map_err(|err| match err {
        Error::InvalidSpec { reason } => Error::InvalidSpec {
            reason: format!("generated spec: {reason}"),
        },
        other => other,
    })?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_join_onto_the_root() {
        assert_eq!(host_path("/", "/dev/nvidia0"), "/dev/nvidia0");
        assert_eq!(host_path("/tmp/r/", "/dev/nvidia0"), "/tmp/r/dev/nvidia0");
        assert_eq!(host_path("/tmp/r", "/dev/nvidia0"), "/tmp/r/dev/nvidia0");
    }

    #[test]
    fn capability_names_round_trip() {
        for c in Capability::ALL {
            assert_eq!(c.as_str().parse::<Capability>().unwrap(), c);
        }
        assert!("computer".parse::<Capability>().is_err());
    }

    #[test]
    fn files_map_to_capabilities() {
        assert_eq!(
            capability_of("/usr/lib/libcuda.so.1"),
            Some(Capability::Compute)
        );
        assert_eq!(
            capability_of("libcuda.so.550.54.15"),
            Some(Capability::Compute)
        );
        assert_eq!(
            capability_of("libnvidia-ml.so.1"),
            Some(Capability::Utility)
        );
        assert_eq!(
            capability_of("/usr/bin/nvidia-smi"),
            Some(Capability::Utility)
        );
        assert_eq!(capability_of("libcudart.so.12"), None);
        assert_eq!(capability_of("libnvidia-mlx.so.1"), None);
        assert_eq!(capability_of("/lib/firmware/nvidia/1/gsp.bin"), None);
    }

    #[test]
    fn parent_dirs() {
        assert_eq!(parent_dir("/usr/lib/libcuda.so.1"), Some("/usr/lib"));
        assert_eq!(parent_dir("/libcuda.so.1"), Some("/"));
    }
}
