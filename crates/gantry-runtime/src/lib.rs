#![doc = include_str!("../README.md")]

pub mod args;
mod bundle;
mod config;
mod error;
pub mod error_log;
pub mod hook;
mod specs;

pub use bundle::{find_lower_runtime, prepare_bundle, Outcome};
pub use config::{RuntimeConfig, DEFAULT_CONFIG_PATH};
pub use error::{Error, Result};
pub use specs::{load_specs, LoadedSpecs};
