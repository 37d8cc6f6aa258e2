//! Discovery and XID events through NVML, loaded at run time by `nvml-wrapper`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_gpu::{
    ComputeCapability, CudaVersion, DeviceUuid, Gpu, Health, Link, MigCapsMinors, MigDevice,
    MigMode, NodeInventory, PciBusId, PcieDistance, Topology,
};
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::TopologyLevel;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use crate::proc_files::{parse_mig_minors, MigMinors};
use crate::{Backend, BackendKind, Discovered, Error, Result};

/// The library name the NVIDIA driver installs, found through the loader's search path.
pub const DEFAULT_NVML_LIB: &str = "libnvidia-ml.so.1";

/// NVML exposes at most this many NVLinks per GPU (`NVML_NVLINK_MAX_LINKS`).
const MAX_NVLINKS: u32 = 18;

const MIB: u64 = 1024 * 1024;

/// Discovery through NVML. `root` is only used for `/proc/driver/nvidia-caps/mig-minors`, which NVML
/// does not expose.
#[derive(Debug, Clone)]
pub struct NvmlBackend {
    lib: Option<PathBuf>,
    root: PathBuf,
}

impl NvmlBackend {
    pub fn new(lib: Option<PathBuf>, root: PathBuf) -> Self {
        Self { lib, root }
    }
}

fn open(lib: Option<&Path>) -> Result<Nvml> {
    let name = lib.map_or(OsStr::new(DEFAULT_NVML_LIB), Path::as_os_str);
    let mut builder = Nvml::builder();
    builder.lib_path(name);
    builder.init().map_err(|err| match err {
        NvmlError::LibloadingError(_) | NvmlError::FailedToLoadSymbol(_) => Error::NvmlLoad {
            lib: name.to_string_lossy().into_owned(),
            reason: err.to_string(),
        },
        other => Error::NvmlLoad {
            lib: name.to_string_lossy().into_owned(),
            reason: format!("nvmlInit failed: {other}"),
        },
    })
}

fn nvml_error(call: &'static str, device: Option<u32>, err: &NvmlError) -> Error {
    Error::Nvml {
        call,
        device,
        reason: err.to_string(),
    }
}

/// Maps "this GPU or driver cannot tell" to `None`; a lost GPU and real failures stay errors.
fn optional<T>(
    result: std::result::Result<T, NvmlError>,
) -> std::result::Result<Option<T>, NvmlError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_) | NvmlError::NotFound) => {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// The GPU and compute instance ids of a MIG device handle: NVML has them, `nvml-wrapper` does not wrap them.
#[allow(unsafe_code)]
fn instance_ids(nvml: &Nvml, device: &Device<'_>) -> std::result::Result<(u32, u32), NvmlError> {
    let lib = nvml.lib();
    let gpu_instance = lib
        .nvmlDeviceGetGpuInstanceId
        .as_ref()
        .map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    let compute_instance = lib
        .nvmlDeviceGetComputeInstanceId
        .as_ref()
        .map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    let (mut gi, mut ci) = (0u32, 0u32);
    // SAFETY: the handle comes from this `Nvml`, which outlives the call; `gi` and `ci` are valid
    // out-parameters on this stack frame; the symbols have the signatures NVML's header gives.
    let codes = unsafe {
        let handle = device.handle();
        (
            gpu_instance(handle, &mut gi),
            compute_instance(handle, &mut ci),
        )
    };
    nvml_wrapper::error::nvml_try(codes.0)?;
    nvml_wrapper::error::nvml_try(codes.1)?;
    Ok((gi, ci))
}

/// The profile from a MIG device name such as `NVIDIA A100-SXM4-80GB MIG 1g.10gb`.
fn mig_profile(name: &str) -> Option<&str> {
    name.rsplit_once(" MIG ").map(|(_, profile)| profile.trim())
}

fn level_distance(level: TopologyLevel) -> Option<PcieDistance> {
    match level {
        TopologyLevel::Internal => None,
        TopologyLevel::Single => Some(PcieDistance::Pix),
        TopologyLevel::Multiple => Some(PcieDistance::Pxb),
        TopologyLevel::HostBridge => Some(PcieDistance::Phb),
        TopologyLevel::Node => Some(PcieDistance::Node),
        TopologyLevel::System => Some(PcieDistance::Sys),
    }
}

struct Probed<'nvml> {
    gpu: Gpu,
    device: Device<'nvml>,
}

impl NvmlBackend {
    fn mig_minors(&self) -> Result<Option<MigMinors>> {
        let path = self.root.join("proc/driver/nvidia-caps/mig-minors");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(parse_mig_minors(&text, &path)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Reads one GPU; `Ok(None)` with a warning when it is lost.
    fn probe<'n>(
        &self,
        nvml: &'n Nvml,
        index: u32,
        caps: Option<&MigMinors>,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Probed<'n>>> {
        let lost = |warnings: &mut Vec<String>, what: &str| {
            warnings.push(format!(
                "GPU {index} is lost (fallen off the bus) and was left out: {what} failed; check `dmesg` for XID 79 and reset or drain the node"
            ));
        };
        let e = |call| move |err: NvmlError| (call, err);
        let required = (|| {
            let device = nvml
                .device_by_index(index)
                .map_err(e("nvmlDeviceGetHandleByIndex"))?;
            let uuid = device.uuid().map_err(e("nvmlDeviceGetUUID"))?;
            let name = device.name().map_err(e("nvmlDeviceGetName"))?;
            let pci = device.pci_info().map_err(e("nvmlDeviceGetPciInfo"))?;
            let minor = device
                .minor_number()
                .map_err(e("nvmlDeviceGetMinorNumber"))?;
            Ok((device, uuid, name, pci.bus_id, minor))
        })();
        let (device, uuid, name, bus_id, minor) = match required {
            Ok(values) => values,
            Err((call, NvmlError::GpuLost)) => {
                lost(warnings, call);
                return Ok(None);
            }
            Err((call, err)) => return Err(nvml_error(call, Some(index), &err)),
        };
        let uuid = DeviceUuid::gpu(&uuid)?;
        let pci_bus_id: PciBusId = bus_id.parse()?;

        let mut health = Health::Healthy;
        let mut note_lost = |call: &str, err: NvmlError| -> Result<()> {
            if matches!(err, NvmlError::GpuLost) {
                health = Health::Unhealthy {
                    reason: format!("GPU is lost ({call})"),
                };
                Ok(())
            } else {
                Err(Error::Nvml {
                    call: "device query",
                    device: Some(index),
                    reason: format!("{call}: {err}"),
                })
            }
        };
        let memory_mib = match optional(device.memory_info()) {
            Ok(info) => info.map(|m| m.total / MIB),
            Err(err) => {
                note_lost("nvmlDeviceGetMemoryInfo", err)?;
                None
            }
        };
        let compute_capability = match optional(device.cuda_compute_capability()) {
            Ok(cc) => cc.and_then(|cc| {
                Some(ComputeCapability {
                    major: u32::try_from(cc.major).ok()?,
                    minor: u32::try_from(cc.minor).ok()?,
                })
            }),
            Err(err) => {
                note_lost("nvmlDeviceGetCudaComputeCapability", err)?;
                None
            }
        };
        let numa_node = match optional(device.numa_node_id()) {
            Ok(node) => node,
            Err(err) => {
                note_lost("nvmlDeviceGetNumaNodeId", err)?;
                None
            }
        };
        let mig_mode = match device.mig_mode() {
            Ok(mode) if mode.current == 1 => Some(MigMode::Enabled),
            Ok(_) => Some(MigMode::Disabled),
            Err(NvmlError::NotSupported) => Some(MigMode::Unsupported),
            Err(NvmlError::FailedToLoadSymbol(_)) => None,
            Err(err) => {
                note_lost("nvmlDeviceGetMigMode", err)?;
                None
            }
        };
        let mig_devices = if mig_mode == Some(MigMode::Enabled) && health.is_healthy() {
            self.mig_devices(nvml, &device, index, minor, caps)?
        } else {
            Vec::new()
        };
        Ok(Some(Probed {
            gpu: Gpu {
                index,
                uuid,
                product_name: name,
                memory_mib,
                pci_bus_id,
                numa_node,
                minor,
                compute_capability,
                mig_mode,
                mig_devices,
                health,
            },
            device,
        }))
    }

    fn mig_devices(
        &self,
        nvml: &Nvml,
        device: &Device<'_>,
        index: u32,
        gpu_minor: u32,
        caps: Option<&MigMinors>,
    ) -> Result<Vec<MigDevice>> {
        let err = |call| move |e: NvmlError| nvml_error(call, Some(index), &e);
        let slots = device
            .mig_device_count()
            .map_err(err("nvmlDeviceGetMaxMigDeviceCount"))?;
        let mut devices = Vec::new();
        for slot in 0..slots {
            let mig = match device.mig_device_by_index(slot) {
                Ok(mig) => mig,
                // Empty slots answer NOT_FOUND (or INVALID_ARGUMENT on some drivers).
                Err(NvmlError::NotFound | NvmlError::InvalidArg) => continue,
                Err(e) => {
                    return Err(nvml_error(
                        "nvmlDeviceGetMigDeviceHandleByIndex",
                        Some(index),
                        &e,
                    ))
                }
            };
            let uuid = DeviceUuid::mig(&mig.uuid().map_err(err("nvmlDeviceGetUUID"))?)?;
            let name = mig.name().map_err(err("nvmlDeviceGetName"))?;
            let profile = mig_profile(&name)
                .ok_or_else(|| Error::Nvml {
                    call: "nvmlDeviceGetName",
                    device: Some(index),
                    reason: format!("MIG device name {name:?} names no profile"),
                })?
                .to_owned();
            let memory_mib = optional(mig.memory_info())
                .map_err(err("nvmlDeviceGetMemoryInfo"))?
                .map(|m| m.total / MIB);
            let (gpu_instance_id, compute_instance_id) =
                instance_ids(nvml, &mig).map_err(err("nvmlDeviceGetGpuInstanceId"))?;
            let caps_minors = caps.and_then(|c| {
                Some(MigCapsMinors {
                    gpu_instance: *c.gpu_instance.get(&(gpu_minor, gpu_instance_id))?,
                    compute_instance: *c.compute_instance.get(&(
                        gpu_minor,
                        gpu_instance_id,
                        compute_instance_id,
                    ))?,
                })
            });
            devices.push(MigDevice {
                uuid,
                profile,
                gpu_instance_id,
                compute_instance_id,
                memory_mib,
                caps_minors,
            });
        }
        Ok(devices)
    }
}

/// The remote PCI address of each active NVLink of a GPU.
fn nvlink_remotes(device: &Device<'_>, index: u32) -> Result<Vec<PciBusId>> {
    let mut remotes = Vec::new();
    for link in 0..MAX_NVLINKS {
        let wrapper = device.link_wrapper_for(link);
        match wrapper.is_active() {
            Ok(true) => {}
            Ok(false) => continue,
            // No NVLink on this GPU, or fewer links than the maximum.
            Err(
                NvmlError::NotSupported | NvmlError::InvalidArg | NvmlError::FailedToLoadSymbol(_),
            ) => break,
            Err(e) => return Err(nvml_error("nvmlDeviceGetNvLinkState", Some(index), &e)),
        }
        let remote = wrapper
            .remote_pci_info()
            .map_err(|e| nvml_error("nvmlDeviceGetNvLinkRemotePciInfo", Some(index), &e))?;
        remotes.push(remote.bus_id.parse()?);
    }
    Ok(remotes)
}

fn topology(nvml: &Nvml, probed: &[Probed<'_>]) -> Result<Topology> {
    let by_bus: BTreeMap<PciBusId, u32> = probed
        .iter()
        .map(|p| (p.gpu.pci_bus_id, p.gpu.index))
        .collect();
    let mut direct: BTreeMap<(u32, u32), u32> = BTreeMap::new();
    let mut switch_lanes: BTreeMap<u32, u32> = BTreeMap::new();
    for p in probed.iter().filter(|p| p.gpu.health.is_healthy()) {
        for remote in nvlink_remotes(&p.device, p.gpu.index)? {
            match by_bus.get(&remote) {
                Some(&peer) if peer != p.gpu.index => {
                    *direct.entry((p.gpu.index, peer)).or_default() += 1;
                }
                Some(_) => {}
                // Not a GPU: an NVSwitch, through which every switch-attached GPU reaches every other.
                None => *switch_lanes.entry(p.gpu.index).or_default() += 1,
            }
        }
    }
    let mut pairs = Vec::new();
    for (i, a) in probed.iter().enumerate() {
        for b in &probed[i + 1..] {
            let (ia, ib) = (a.gpu.index, b.gpu.index);
            let switched = match (switch_lanes.get(&ia), switch_lanes.get(&ib)) {
                (Some(x), Some(y)) => *x.min(y),
                _ => 0,
            };
            let lanes = direct.get(&(ia, ib)).copied().unwrap_or(0) + switched;
            if lanes > 0 {
                pairs.push((ia, ib, Link::NvLink { lanes }));
                continue;
            }
            match optional(nvml.topology_common_ancestor(&a.device, &b.device)) {
                Ok(Some(level)) => {
                    if let Some(distance) = level_distance(level) {
                        pairs.push((ia, ib, Link::Pcie(distance)));
                    }
                }
                Ok(None) | Err(NvmlError::GpuLost) => {}
                Err(e) => {
                    return Err(nvml_error(
                        "nvmlDeviceGetTopologyCommonAncestor",
                        Some(ia),
                        &e,
                    ))
                }
            }
        }
    }
    Ok(Topology::from_pairs(pairs)?)
}

impl Backend for NvmlBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Nvml
    }

    fn discover(&self) -> Result<Discovered> {
        let nvml = open(self.lib.as_deref())?;
        let driver_version = optional(nvml.sys_driver_version())
            .map_err(|e| nvml_error("nvmlSystemGetDriverVersion", None, &e))?;
        let cuda_driver_version = optional(nvml.sys_cuda_driver_version())
            .map_err(|e| nvml_error("nvmlSystemGetCudaDriverVersion", None, &e))?
            .and_then(CudaVersion::from_nvml);
        let count = nvml
            .device_count()
            .map_err(|e| nvml_error("nvmlDeviceGetCount", None, &e))?;
        let caps = self.mig_minors()?;
        let mut warnings = Vec::new();
        let mut probed = Vec::new();
        for index in 0..count {
            if let Some(p) = self.probe(&nvml, index, caps.as_ref(), &mut warnings)? {
                probed.push(p);
            }
        }
        let topology = topology(&nvml, &probed)?;
        let inventory = NodeInventory {
            driver_version,
            cuda_driver_version,
            gpus: probed.into_iter().map(|p| p.gpu).collect(),
            topology,
        }
        .validated()?;
        Ok(Discovered {
            inventory,
            warnings,
        })
    }
}

/// A critical XID error NVML reported for a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidEvent {
    pub uuid: DeviceUuid,
    /// `None` when NVML could not say which XID it was.
    pub xid: Option<u64>,
}

/// Listens for critical XID errors on every GPU until `keep_going` says stop, calling `on_event` for each.
///
/// # Flow
/// Opens NVML, registers every GPU for `CRITICAL_XID_ERROR` events in one event set, then waits in
/// slices of `wait` so that `keep_going` is checked at least that often.
///
/// # Errors
/// NVML cannot be loaded, a GPU cannot be registered, or a wait fails for another reason than a timeout.
pub fn watch_xids(
    lib: Option<&Path>,
    wait: Duration,
    keep_going: &dyn Fn() -> bool,
    on_event: &mut dyn FnMut(XidEvent),
) -> Result<()> {
    let nvml = open(lib)?;
    let count = nvml
        .device_count()
        .map_err(|e| nvml_error("nvmlDeviceGetCount", None, &e))?;
    let mut set = nvml
        .create_event_set()
        .map_err(|e| nvml_error("nvmlEventSetCreate", None, &e))?;
    for index in 0..count {
        let device = nvml
            .device_by_index(index)
            .map_err(|e| nvml_error("nvmlDeviceGetHandleByIndex", Some(index), &e))?;
        set = device
            .register_events(EventTypes::CRITICAL_XID_ERROR, set)
            .map_err(|e| nvml_error("nvmlDeviceRegisterEvents", Some(index), &e.error))?;
    }
    let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
    while keep_going() {
        match set.wait(wait_ms) {
            Ok(event) => {
                let uuid = event
                    .device
                    .uuid()
                    .map_err(|e| nvml_error("nvmlDeviceGetUUID", None, &e))?;
                let xid = match event.event_data {
                    Some(XidError::Value(v)) => Some(v),
                    _ => None,
                };
                on_event(XidEvent {
                    uuid: DeviceUuid::gpu(&uuid)?,
                    xid,
                });
            }
            Err(NvmlError::Timeout) => {}
            Err(e) => return Err(nvml_error("nvmlEventSetWait", None, &e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mig_profiles_from_names() {
        assert_eq!(
            mig_profile("NVIDIA A100-SXM4-80GB MIG 1g.10gb"),
            Some("1g.10gb")
        );
        assert_eq!(
            mig_profile("NVIDIA H100 80GB HBM3 MIG 3g.40gb"),
            Some("3g.40gb")
        );
        assert_eq!(mig_profile("NVIDIA A100-SXM4-80GB"), None);
    }

    #[test]
    fn missing_library_is_a_clear_error() {
        let err = open(Some(Path::new("/nonexistent/libnvidia-ml.so.1"))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/libnvidia-ml.so.1"), "{text}");
        assert!(text.contains("--backend driver-files"), "{text}");
        assert_eq!(err.kind(), "nvml_load");
    }
}
