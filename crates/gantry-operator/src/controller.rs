//! The kube-rs `Controller` that drives [`reconcile`](crate::reconcile::reconcile): it watches TFJobs
//! and the pods and services they own (by the operator-name label and controller owner references).

use std::future::Future;
use std::sync::Arc;

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use gantry_planner::OPERATOR_NAME_LABEL;
use gantry_tfjob::TFJob;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::controller::{Config, Controller};
use kube::runtime::watcher;
use kube::Api;

use crate::reconcile::{error_policy, reconcile, Context, ErrorChain};

/// Runs the controller until `shutdown` completes: in-flight reconciles may finish within `grace`,
/// then the rest is dropped (kube-runtime's graceful shutdown alone can wait forever when it fires
/// before the first list, or while requeues are scheduled).
///
/// `namespace` limits it to one namespace (a Role instead of a ClusterRole suffices then);
/// `concurrency` bounds parallel reconciles (0: unbounded). A job is never reconciled twice at once.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    concurrency: u16,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let client = ctx.client.clone();
    let (jobs, pods, services): (Api<TFJob>, Api<Pod>, Api<Service>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    let owned = watcher::Config::default().labels(&format!(
        "{OPERATOR_NAME_LABEL}={}",
        ctx.plan_config.operator_name
    ));
    let controller = Controller::new(jobs, watcher::Config::default())
        .with_config(Config::default().concurrency(concurrency))
        .owns(pods, owned.clone())
        .owns(services, owned)
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((job, _)) => tracing::debug!(job = %job, "reconciled"),
                Err(err) => tracing::debug!(error = %ErrorChain(&err), "controller"),
            }
        });
    tokio::select! {
        () = controller => {}
        () = async { shutdown.await; tokio::time::sleep(grace).await } => {
            tracing::info!(?grace, "stopped after the shutdown grace period");
        }
    }
}
