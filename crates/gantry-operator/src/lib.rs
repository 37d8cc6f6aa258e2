#![doc = include_str!("../README.md")]

pub mod controller;
pub mod crd;
pub mod endpoint;
mod error;
pub mod lease;
pub mod metrics;
pub mod operator;
pub mod pod_group;
pub mod reconcile;

pub use error::{Error, Result};
pub use metrics::Metrics;
pub use reconcile::{
    apply, next_action, observe, reconcile, status_patch, system_clock, Clock, Context,
};
