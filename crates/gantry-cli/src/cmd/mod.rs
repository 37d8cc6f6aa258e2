//! One module per subcommand; each exposes an `Args` struct and a `run` function.

pub mod cdi;
pub mod device_plugin;
pub mod discovery_args;
pub mod gpus;
pub mod run;
pub mod simulate;
pub mod validate;
