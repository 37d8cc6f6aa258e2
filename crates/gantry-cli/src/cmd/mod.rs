//! One module per subcommand; each exposes an `Args` struct and a `run` function.

pub mod cdi;
pub mod crd;
pub mod device_plugin;
pub mod discovery_args;
pub mod gpus;
pub mod operator;
pub mod run;
pub mod scheduler;
pub mod simulate;
pub mod validate;
