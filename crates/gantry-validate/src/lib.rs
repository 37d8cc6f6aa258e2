#![doc = include_str!("../README.md")]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use serde::Serialize;

/// The CUDA source of the kernel, compiled with NVRTC where available.
pub const KERNEL_CUDA: &str = include_str!("vector_add.cu");
/// The same kernel as hand-written PTX, for nodes without NVRTC.
pub const KERNEL_PTX: &str = include_str!("vector_add.ptx");
const KERNEL_NAME: &str = "vector_add";

/// The seed's size: 2^26 floats per vector (256 MiB each).
pub const DEFAULT_ELEMENTS: usize = 1 << 26;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no CUDA driver library could be loaded (tried {tried}); this node has no NVIDIA GPU driver, or its libraries are not on the loader path (in a container, request a GPU or mount the driver)")]
    NoCudaDriver { tried: String },

    #[error("the CUDA driver reports no GPU")]
    NoDevices,

    #[error("GPU {ordinal}: {call} failed: {message}")]
    Cuda {
        ordinal: usize,
        call: &'static str,
        message: String,
    },

    #[error("GPU {ordinal} does not exist: the driver reports {count} GPU(s)")]
    UnknownDevice { ordinal: usize, count: usize },

    #[error("invalid size: {0}")]
    InvalidSize(String),
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NoCudaDriver { .. } => "no_cuda_driver",
            Error::NoDevices => "no_devices",
            Error::Cuda { .. } => "cuda",
            Error::UnknownDevice { .. } => "unknown_device",
            Error::InvalidSize(_) => "invalid_size",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the kernel came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelSource {
    Nvrtc,
    Ptx,
}

#[derive(Debug, Clone)]
pub struct ValidateConfig {
    pub elements: usize,
    /// Timed launches per GPU, after one warm-up launch.
    pub repeats: u32,
    /// GPU ordinals (CUDA order) to validate; all when `None`.
    pub devices: Option<Vec<usize>>,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        Self {
            elements: DEFAULT_ELEMENTS,
            repeats: 20,
            devices: None,
        }
    }
}

/// The outcome on one GPU.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    pub ordinal: usize,
    pub name: String,
    pub kernel: KernelSource,
    pub elements: usize,
    pub mismatches: usize,
    pub max_abs_error: f32,
    /// Median time of one launch, in milliseconds.
    pub kernel_ms: f64,
    /// Bytes read and written per launch (`3 × elements × 4`) over the median launch time.
    pub achieved_gb_per_s: f64,
    /// 2 × memory clock × bus width, when the driver reports both.
    pub peak_gb_per_s: Option<f64>,
    pub percent_of_peak: Option<f64>,
    pub passed: bool,
}

/// Theoretical memory bandwidth in GB/s from the clock (kHz) and bus width (bits): double data rate.
pub fn peak_bandwidth_gb_per_s(memory_clock_khz: i32, bus_width_bits: i32) -> Option<f64> {
    if memory_clock_khz <= 0 || bus_width_bits <= 0 {
        return None;
    }
    Some(2.0 * f64::from(memory_clock_khz) * 1e3 * f64::from(bus_width_bits) / 8.0 / 1e9)
}

/// Deterministic inputs whose sums are exact in `f32`, so any mismatch is a real fault.
pub fn inputs(elements: usize) -> (Vec<f32>, Vec<f32>) {
    let a = (0..elements).map(|i| (i % 4096) as f32).collect();
    let b = (0..elements)
        .map(|i| ((i / 4096) % 2048) as f32 * 0.5)
        .collect();
    (a, b)
}

/// Compares the GPU's `c` with `a + b` on the CPU: the number of mismatches and the largest error.
pub fn compare(a: &[f32], b: &[f32], c: &[f32]) -> (usize, f32) {
    let mut mismatches = if c.len() == a.len() {
        0
    } else {
        a.len().abs_diff(c.len())
    };
    let mut max_error = 0.0f32;
    for ((x, y), z) in a.iter().zip(b).zip(c) {
        let error = (x + y - z).abs();
        if error.is_nan() || error > 0.0 {
            mismatches += 1;
        }
        if error.is_nan() {
            max_error = f32::NAN;
        } else if !max_error.is_nan() {
            max_error = max_error.max(error);
        }
    }
    (mismatches, max_error)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// Whether one of the names cudarc would try for `lib` loads here.
#[allow(unsafe_code)]
fn library_loads(lib: &str) -> std::result::Result<(), String> {
    let mut candidates = cudarc::get_lib_name_candidates(lib);
    let mut seen = std::collections::BTreeSet::new();
    candidates.retain(|name| seen.insert(name.clone()));
    for name in &candidates {
        // SAFETY: loading the NVIDIA driver's (or toolkit's) own library runs only its initialisers, as
        // cudarc itself would a moment later; the handle is dropped at once.
        if unsafe { libloading::Library::new(name) }.is_ok() {
            return Ok(());
        }
    }
    Err(candidates.join(", "))
}

/// Runs `f`, turning a cudarc panic (a library that vanished mid-run) into an error.
fn guarded<T>(ordinal: usize, call: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panicked".to_owned());
        Err(Error::Cuda {
            ordinal,
            call,
            message,
        })
    })
}

fn cuda_err(ordinal: usize, call: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Cuda {
        ordinal,
        call,
        message: e.to_string(),
    }
}

/// The kernel's PTX: NVRTC's compilation of the CUDA source when NVRTC loads, else the hand-written PTX.
fn kernel() -> (Ptx, KernelSource) {
    if library_loads("nvrtc").is_ok() {
        let compiled = catch_unwind(|| cudarc::nvrtc::compile_ptx(KERNEL_CUDA));
        if let Ok(Ok(ptx)) = compiled {
            return (ptx, KernelSource::Nvrtc);
        }
    }
    (Ptx::from_src(KERNEL_PTX), KernelSource::Ptx)
}

/// Runs the vector add on each selected GPU.
///
/// # Flow
/// Checks that `libcuda` loads (no cudarc panic on a GPU-less node), counts GPUs, builds the kernel
/// once, then per GPU: copies `a` and `b` in, launches once to warm up, times `repeats` launches, copies
/// `c` back and compares it with the CPU's sum.
///
/// # Errors
/// [`Error::NoCudaDriver`] without a driver, [`Error::NoDevices`] without a GPU, [`Error::UnknownDevice`]
/// for an ordinal the driver does not have, [`Error::Cuda`] for a failing driver call. A wrong result is
/// not an error: the report says `passed: false`.
pub fn validate(config: &ValidateConfig) -> Result<Vec<DeviceReport>> {
    library_loads("cuda").map_err(|tried| Error::NoCudaDriver { tried })?;
    let n = u32::try_from(config.elements)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            Error::InvalidSize(format!(
                "{} elements; use 1 to {}",
                config.elements,
                u32::MAX
            ))
        })?;
    let count = guarded(0, "cuDeviceGetCount", || {
        CudaContext::device_count().map_err(cuda_err(0, "cuDeviceGetCount"))
    })?;
    let count = usize::try_from(count).unwrap_or(0);
    if count == 0 {
        return Err(Error::NoDevices);
    }
    let ordinals = config
        .devices
        .clone()
        .unwrap_or_else(|| (0..count).collect());
    if let Some(&ordinal) = ordinals.iter().find(|o| **o >= count) {
        return Err(Error::UnknownDevice { ordinal, count });
    }
    let (ptx, source) = kernel();
    let (a, b) = inputs(config.elements);
    ordinals
        .into_iter()
        .map(|ordinal| {
            guarded(ordinal, "vector add", || {
                run_on(ordinal, &ptx, source, &a, &b, n, config.repeats.max(1))
            })
        })
        .collect()
}

#[allow(unsafe_code)]
fn run_on(
    ordinal: usize,
    ptx: &Ptx,
    source: KernelSource,
    a: &[f32],
    b: &[f32],
    n: u32,
    repeats: u32,
) -> Result<DeviceReport> {
    let ctx = CudaContext::new(ordinal).map_err(cuda_err(ordinal, "cuCtxCreate"))?;
    let name = ctx.name().map_err(cuda_err(ordinal, "cuDeviceGetName"))?;
    let clock = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)
        .unwrap_or(0);
    let bus = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)
        .unwrap_or(0);
    let module = ctx
        .load_module(ptx.clone())
        .map_err(cuda_err(ordinal, "cuModuleLoadData"))?;
    let function = module
        .load_function(KERNEL_NAME)
        .map_err(cuda_err(ordinal, "cuModuleGetFunction"))?;
    let stream = ctx.default_stream();
    let a_dev = stream
        .clone_htod(a)
        .map_err(cuda_err(ordinal, "cuMemcpyHtoD"))?;
    let b_dev = stream
        .clone_htod(b)
        .map_err(cuda_err(ordinal, "cuMemcpyHtoD"))?;
    let mut c_dev = stream
        .alloc_zeros::<f32>(a.len())
        .map_err(cuda_err(ordinal, "cuMemAlloc"))?;
    let launch_config = LaunchConfig::for_num_elems(n);
    let mut samples = Vec::new();
    for round in 0..=repeats {
        let started = Instant::now();
        let mut launch = stream.launch_builder(&function);
        launch.arg(&mut c_dev).arg(&a_dev).arg(&b_dev).arg(&n);
        // SAFETY: the kernel takes (float*, const float*, const float*, unsigned int) as pushed; all
        // three buffers hold `n` floats and the grid covers exactly `n` threads, the rest returning early.
        unsafe { launch.launch(launch_config) }.map_err(cuda_err(ordinal, "cuLaunchKernel"))?;
        stream
            .synchronize()
            .map_err(cuda_err(ordinal, "cuStreamSynchronize"))?;
        if round > 0 {
            samples.push(started.elapsed());
        }
    }
    let c = stream
        .clone_dtoh(&c_dev)
        .map_err(cuda_err(ordinal, "cuMemcpyDtoH"))?;
    let (mismatches, max_abs_error) = compare(a, b, &c);
    let kernel = median(samples);
    let bytes = 3.0 * a.len() as f64 * std::mem::size_of::<f32>() as f64;
    let achieved = bytes / kernel.as_secs_f64().max(f64::MIN_POSITIVE) / 1e9;
    let peak = peak_bandwidth_gb_per_s(clock, bus);
    Ok(DeviceReport {
        ordinal,
        name,
        kernel: source,
        elements: a.len(),
        mismatches,
        max_abs_error,
        kernel_ms: kernel.as_secs_f64() * 1e3,
        achieved_gb_per_s: achieved,
        peak_gb_per_s: peak,
        percent_of_peak: peak.map(|p| 100.0 * achieved / p),
        passed: mismatches == 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_bandwidth_of_known_cards() {
        // H100 SXM5: 2619 MHz HBM3 on a 5120-bit bus, about 3.35 TB/s.
        let h100 = peak_bandwidth_gb_per_s(2_619_000, 5120).unwrap();
        assert!((h100 - 3352.3).abs() < 1.0, "{h100}");
        // T4: 5001 MHz GDDR6 on 256 bits, 320 GB/s.
        let t4 = peak_bandwidth_gb_per_s(5_001_000, 256).unwrap();
        assert!((t4 - 320.06).abs() < 0.1, "{t4}");
        assert_eq!(peak_bandwidth_gb_per_s(0, 256), None);
    }

    #[test]
    fn inputs_sum_exactly_and_compare_finds_faults() {
        let (a, b) = inputs(1 << 16);
        let mut c: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_eq!(compare(&a, &b, &c), (0, 0.0));
        c[77] += 1.0;
        c[4000] = f32::NAN;
        let (mismatches, max_error) = compare(&a, &b, &c);
        assert_eq!(mismatches, 2);
        assert!(max_error.is_nan());
        assert_eq!(
            compare(&a, &b, &c[..10]).0,
            (1 << 16) - 10 + compare(&a[..10], &b[..10], &c[..10]).0
        );
    }

    #[test]
    fn ptx_declares_the_kernel_the_cuda_source_defines() {
        assert!(KERNEL_PTX.contains(".visible .entry vector_add("));
        assert!(KERNEL_CUDA.contains("extern \"C\" __global__ void vector_add("));
        assert_eq!(KERNEL_PTX.matches("    .param .u").count(), 4, "c, a, b, n");
    }
}
