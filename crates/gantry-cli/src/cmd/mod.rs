//! One module per subcommand; each exposes an `Args` struct and a `run` function.

pub mod crd;
pub mod discovery_args;
pub mod gpus;
pub mod operator;
pub mod run;
pub mod validate;
