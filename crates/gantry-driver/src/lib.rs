#![doc = include_str!("../README.md")]

mod atomic_write;
mod device;
mod error;
mod files;
pub mod ldcache;
mod root_path;

pub use atomic_write::{atomic_replace, atomic_write};
pub use device::{create_dev_char_links, dev_major, dev_minor, device_numbers, DeviceNumbers};
pub use error::{Error, Result};
pub use files::{discover_driver_files, CONTROL_NODES, IPC_PATHS, LIBRARY_SEARCH_PATH};
pub use root_path::resolve_in_root;
