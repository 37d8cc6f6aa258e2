//! The exported C functions: thin wrappers that lock the fake, ask `model`, and write the answer through
//! the caller's pointers. NVML's header is the safety contract: output pointers are valid for writes and
//! string buffers hold `length` bytes; null pointers are answered with `INVALID_ARGUMENT`.
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_uint, c_ulonglong, CStr};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use gantry_gpu::PciBusId;
use nvml_wrapper_sys::bindings as sys;

use crate::model::*;

static FAKE: Mutex<Option<Fake>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Fake>> {
    FAKE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f` on the initialised fake, counting the call; `UNINITIALIZED` before `nvmlInit`.
fn with_fake<T>(f: impl FnOnce(&mut Fake) -> Result<T, Code>) -> Result<T, Code> {
    let mut guard = lock();
    let fake = guard.as_mut().ok_or(UNINITIALIZED)?;
    if fake.init_count == 0 {
        return Err(UNINITIALIZED);
    }
    fake.tick();
    f(fake)
}

fn code<T>(result: Result<T, Code>, write: impl FnOnce(T) -> Code) -> Code {
    match result {
        Ok(value) => write(value),
        Err(code) => code,
    }
}

/// Writes `value` through `ptr`.
///
/// # Safety
/// `ptr` is null or valid for a write of `T` (NVML's contract for output parameters).
unsafe fn put<T>(ptr: *mut T, value: T) -> Code {
    if ptr.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: non-null, and the caller promises it is valid for writes of T.
    unsafe { ptr.write(value) };
    SUCCESS
}

/// Copies `text` and a NUL into a caller buffer of `length` bytes.
///
/// # Safety
/// `buf` is null or valid for writes of `length` bytes.
unsafe fn put_str(buf: *mut c_char, length: c_uint, text: &str) -> Code {
    if buf.is_null() {
        return INVALID_ARGUMENT;
    }
    let bytes = text.as_bytes();
    let Ok(length) = usize::try_from(length) else {
        return INVALID_ARGUMENT;
    };
    if bytes.len() + 1 > length {
        return sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
    }
    // SAFETY: the buffer holds `length` >= bytes.len() + 1 bytes, and `bytes` cannot overlap it.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, bytes.len());
        buf.add(bytes.len()).write(0);
    }
    SUCCESS
}

fn pci_info(bus: PciBusId) -> sys::nvmlPciInfo_t {
    // NVML prints an 8-digit domain in busId and a 4-digit one in busIdLegacy.
    let long = format!("{:04x}{bus}", 0);
    let mut info = sys::nvmlPciInfo_t {
        busIdLegacy: [0; 16],
        domain: bus.domain(),
        bus: u32::from(bus.bus()),
        device: 0,
        pciDeviceId: 0x2330_10de,
        pciSubSystemId: 0,
        busId: [0; 32],
    };
    for (dst, src) in info.busId.iter_mut().zip(long.bytes()) {
        *dst = c_char::from_ne_bytes([src]);
    }
    for (dst, src) in info
        .busIdLegacy
        .iter_mut()
        .zip(bus.to_string().bytes().take(15))
    {
        *dst = c_char::from_ne_bytes([src]);
    }
    info
}

fn fixture_path() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("GANTRY_FAKE_NVML_FIXTURE") {
        return Ok(PathBuf::from(path));
    }
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    let address = fixture_path as *const () as *const libc::c_void;
    // SAFETY: dladdr only reads the loader's tables and writes `info`, which lives on this stack frame.
    let found = unsafe { libc::dladdr(address, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return Err(
            "GANTRY_FAKE_NVML_FIXTURE is not set and the library's own path is unknown".into(),
        );
    }
    // SAFETY: dladdr returned a NUL-terminated path owned by the loader, valid while the library is loaded.
    let own = unsafe { CStr::from_ptr(info.dli_fname) };
    let own = PathBuf::from(own.to_string_lossy().into_owned());
    Ok(own
        .parent()
        .map(|dir| dir.join("fake-nvml.yaml"))
        .unwrap_or_else(|| PathBuf::from("fake-nvml.yaml")))
}

#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> Code {
    let mut guard = lock();
    if guard.is_none() {
        let loaded = fixture_path().and_then(|path| Fake::load(&path));
        match loaded {
            Ok(fake) => *guard = Some(fake),
            Err(message) => {
                eprintln!("gantry-fake-nvml: {message}");
                return DRIVER_NOT_LOADED;
            }
        }
    }
    let Some(fake) = guard.as_mut() else {
        return UNKNOWN;
    };
    if let Some(code) = fake.init_error() {
        return code;
    }
    fake.init_count += 1;
    SUCCESS
}

#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Code {
    nvmlInit_v2()
}

#[no_mangle]
pub extern "C" fn nvmlShutdown() -> Code {
    let mut guard = lock();
    match guard.as_mut() {
        Some(fake) if fake.init_count > 0 => {
            fake.init_count -= 1;
            if fake.init_count == 0 {
                *guard = None;
            }
            SUCCESS
        }
        _ => UNINITIALIZED,
    }
}

#[no_mangle]
pub extern "C" fn nvmlErrorString(result: Code) -> *const c_char {
    let text: &'static CStr = match result {
        SUCCESS => c"Success",
        UNINITIALIZED => c"Uninitialized",
        INVALID_ARGUMENT => c"Invalid Argument",
        NOT_SUPPORTED => c"Not Supported",
        NOT_FOUND => c"Not Found",
        DRIVER_NOT_LOADED => c"Driver Not Loaded",
        TIMEOUT => c"Timeout",
        GPU_IS_LOST => c"GPU is lost",
        _ => c"Unknown Error",
    };
    text.as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> Code {
    // SAFETY: NVML's contract for string outputs (module docs).
    code(with_fake(|f| f.driver_version()), |v| unsafe {
        put_str(version, length, &v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> Code {
    // SAFETY: NVML's contract for output parameters (module docs).
    code(with_fake(|f| f.cuda_driver_version()), |v| unsafe {
        put(version, v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Code {
    // SAFETY: NVML's contract for output parameters (module docs).
    code(with_fake(|f| Ok(f.device_count())), |v| unsafe {
        put(count, v)
    })
}

fn to_handle(value: usize) -> sys::nvmlDevice_t {
    std::ptr::without_provenance_mut(value)
}

fn from_handle(device: sys::nvmlDevice_t) -> usize {
    device.addr()
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut sys::nvmlDevice_t,
) -> Code {
    // SAFETY: NVML's contract for output parameters (module docs).
    code(with_fake(|f| f.handle_by_index(index)), |h| unsafe {
        put(device, to_handle(h))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: sys::nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> Code {
    let h = from_handle(device);
    // SAFETY: NVML's contract for string outputs (module docs).
    code(with_fake(|f| f.uuid(h)), |v| unsafe {
        put_str(uuid, length, &v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: sys::nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> Code {
    let h = from_handle(device);
    // SAFETY: NVML's contract for string outputs (module docs).
    code(with_fake(|f| f.name(h)), |v| unsafe {
        put_str(name, length, &v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: sys::nvmlDevice_t,
    memory: *mut sys::nvmlMemory_v2_t,
) -> Code {
    let h = from_handle(device);
    code(with_fake(|f| f.memory_bytes(h)), |total| {
        let info = sys::nvmlMemory_v2_t {
            version: u32::try_from(std::mem::size_of::<sys::nvmlMemory_v2_t>()).unwrap_or(0)
                | (2 << 24),
            total,
            reserved: 0,
            free: total,
            used: 0,
        };
        // SAFETY: NVML's contract for output parameters (module docs).
        unsafe { put(memory, info) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: sys::nvmlDevice_t,
    pci: *mut sys::nvmlPciInfo_t,
) -> Code {
    let h = from_handle(device);
    // SAFETY: NVML's contract for output parameters (module docs).
    code(with_fake(|f| f.pci_bus_id(h)), |bus| unsafe {
        put(pci, pci_info(bus))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(
    device: sys::nvmlDevice_t,
    minor: *mut c_uint,
) -> Code {
    let h = from_handle(device);
    // SAFETY: NVML's contract for output parameters (module docs).
    code(with_fake(|f| f.minor(h)), |v| unsafe { put(minor, v) })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: sys::nvmlDevice_t,
    major: *mut c_int,
    minor: *mut c_int,
) -> Code {
    let h = from_handle(device);
    code(with_fake(|f| f.compute_capability(h)), |(ma, mi)| {
        // SAFETY: NVML's contract for output parameters (module docs).
        match unsafe { put(major, ma) } {
            // SAFETY: as above, for the second output parameter.
            SUCCESS => unsafe { put(minor, mi) },
            other => other,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetNumaNodeId(
    device: sys::nvmlDevice_t,
    node: *mut c_uint,
) -> Code {
    let h = from_handle(device);
    // SAFETY: NVML's contract for output parameters (module docs).
    code(with_fake(|f| f.numa_node(h)), |v| unsafe { put(node, v) })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTopologyCommonAncestor(
    device1: sys::nvmlDevice_t,
    device2: sys::nvmlDevice_t,
    path_info: *mut sys::nvmlGpuTopologyLevel_t,
) -> Code {
    let (a, b) = (from_handle(device1), from_handle(device2));
    // SAFETY: NVML's contract for output parameters (module docs).
    code(with_fake(|f| f.common_ancestor(a, b)), |v| unsafe {
        put(path_info, v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkState(
    device: sys::nvmlDevice_t,
    link: c_uint,
    is_active: *mut sys::nvmlEnableState_t,
) -> Code {
    let h = from_handle(device);
    code(with_fake(|f| f.nvlink_active(h, link)), |active| {
        let state = if active {
            sys::nvmlEnableState_enum_NVML_FEATURE_ENABLED
        } else {
            sys::nvmlEnableState_enum_NVML_FEATURE_DISABLED
        };
        // SAFETY: NVML's contract for output parameters (module docs).
        unsafe { put(is_active, state) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkRemotePciInfo_v2(
    device: sys::nvmlDevice_t,
    link: c_uint,
    pci: *mut sys::nvmlPciInfo_t,
) -> Code {
    let h = from_handle(device);
    // SAFETY: NVML's contract for output parameters (module docs).
    code(with_fake(|f| f.nvlink_remote(h, link)), |bus| unsafe {
        put(pci, pci_info(bus))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: sys::nvmlDevice_t,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> Code {
    let h = from_handle(device);
    code(with_fake(|f| f.mig_mode(h)), |(c, p)| {
        // SAFETY: NVML's contract for output parameters (module docs).
        match unsafe { put(current, c) } {
            // SAFETY: as above, for the second output parameter.
            SUCCESS => unsafe { put(pending, p) },
            other => other,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(
    device: sys::nvmlDevice_t,
    count: *mut c_uint,
) -> Code {
    let h = from_handle(device);
    // SAFETY: NVML's contract for output parameters (module docs).
    code(with_fake(|f| f.max_mig_devices(h)), |v| unsafe {
        put(count, v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: sys::nvmlDevice_t,
    index: c_uint,
    mig: *mut sys::nvmlDevice_t,
) -> Code {
    let h = from_handle(device);
    // SAFETY: NVML's contract for output parameters (module docs).
    code(with_fake(|f| f.mig_handle(h, index)), |m| unsafe {
        put(mig, to_handle(m))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(
    device: sys::nvmlDevice_t,
    id: *mut c_uint,
) -> Code {
    let h = from_handle(device);
    // SAFETY: NVML's contract for output parameters (module docs).
    code(with_fake(|f| f.instance_ids(h)), |(gi, _)| unsafe {
        put(id, gi)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(
    device: sys::nvmlDevice_t,
    id: *mut c_uint,
) -> Code {
    let h = from_handle(device);
    // SAFETY: NVML's contract for output parameters (module docs).
    code(with_fake(|f| f.instance_ids(h)), |(_, ci)| unsafe {
        put(id, ci)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut sys::nvmlEventSet_t) -> Code {
    code(with_fake(|f| Ok(f.create_set())), |id| {
        // SAFETY: NVML's contract for output parameters (module docs).
        unsafe { put(set, std::ptr::without_provenance_mut(id)) }
    })
}

#[no_mangle]
pub extern "C" fn nvmlEventSetFree(set: sys::nvmlEventSet_t) -> Code {
    let id = set.addr();
    code(with_fake(|f| f.free_set(id)), |()| SUCCESS)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: sys::nvmlDevice_t,
    types: *mut c_ulonglong,
) -> Code {
    let h = from_handle(device);
    // SAFETY: NVML's contract for output parameters (module docs).
    code(with_fake(|f| f.supported_events(h)), |v| unsafe {
        put(types, v)
    })
}

#[no_mangle]
pub extern "C" fn nvmlDeviceRegisterEvents(
    device: sys::nvmlDevice_t,
    types: c_ulonglong,
    set: sys::nvmlEventSet_t,
) -> Code {
    let (h, s) = (from_handle(device), set.addr());
    code(with_fake(|f| f.register(h, types, s)), |()| SUCCESS)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: sys::nvmlEventSet_t,
    data: *mut sys::nvmlEventData_t,
    timeout_ms: c_uint,
) -> Code {
    let s = set.addr();
    match with_fake(|f| f.wait(s)) {
        Ok(Some((handle, xid))) => {
            let event = sys::nvmlEventData_t {
                device: to_handle(handle),
                eventType: c_ulonglong::from(sys::nvmlEventTypeXidCriticalError),
                eventData: xid,
                gpuInstanceId: u32::MAX,
                computeInstanceId: u32::MAX,
            };
            // SAFETY: NVML's contract for output parameters (module docs).
            unsafe { put(data, event) }
        }
        Ok(None) => {
            // Wait as NVML would, but briefly: tests should not idle for long timeouts.
            std::thread::sleep(Duration::from_millis(u64::from(timeout_ms.min(20))));
            TIMEOUT
        }
        Err(code) => code,
    }
}
