use std::path::{Path, PathBuf};

/// The built fake NVML library: `GANTRY_FAKE_NVML_LIB` when set (scripts/test sets it), else the
/// workspace's `target/debug/libgantry_fake_nvml.so`.
///
/// Cargo builds a `cdylib` for no other crate's tests, so it must have been built first.
pub fn fake_nvml_library() -> PathBuf {
    let path = std::env::var_os("GANTRY_FAKE_NVML_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target/debug/libgantry_fake_nvml.so"));
    assert!(
        path.exists(),
        "the fake NVML library {} is not built: run `cargo build -p gantry-fake-nvml` (scripts/test does), or set GANTRY_FAKE_NVML_LIB",
        path.display()
    );
    path
}

/// Copies the fake NVML into `dir` as `libnvidia-ml.so.1` with `fake-nvml.yaml` beside it holding
/// `fixture`. Each copy is its own library to the loader, so tests in one process never share state.
pub fn fake_nvml_copy(dir: &Path, fixture: &str) -> PathBuf {
    let lib = dir.join("libnvidia-ml.so.1");
    std::fs::copy(fake_nvml_library(), &lib).expect("copy fake NVML");
    std::fs::write(dir.join("fake-nvml.yaml"), fixture).expect("write fake NVML fixture");
    lib
}
