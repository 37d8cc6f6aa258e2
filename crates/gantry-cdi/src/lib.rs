#![doc = include_str!("../README.md")]

mod edits;
mod error;
mod generate;
mod name;
mod request;
mod spec;

pub use edits::{apply_edits, collect_edits};
pub use error::{Error, Result};
pub use generate::{
    capability_of, generate, host_path, Capability, DriverFiles, GenerateOptions, HostFile,
    NamingStrategy, BINARIES, LIBRARIES,
};
pub use name::{check_device_name, Kind, QualifiedName};
pub use request::{
    requests_from_config, RequestPolicy, Requests, Source, CDI_ANNOTATION_PREFIX, VOLUME_MOUNT_DIR,
};
pub use spec::{
    is_clean_absolute, ContainerEdits, Device, DeviceNode, Hook, Mount, Spec, CDI_VERSION,
    HOOK_NAMES,
};
