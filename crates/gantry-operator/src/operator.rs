//! The whole operator process: CRD check, `/metrics` and health endpoint, leader election, the
//! controller. The binary builds the [`kube::Client`] and the options; nothing here reads the
//! environment.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gantry_planner::PlanConfig;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::crd::{check_ownership, CRD_NAME};
use crate::endpoint::{serve, Health};
use crate::error::{Error, Result};
use crate::lease::LeaseLock;
use crate::metrics::Metrics;
use crate::reconcile::{system_clock, Context};

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// How often to try to acquire or renew.
    pub retry: Duration,
}

/// Everything `gantry operator` is told.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// Watch one namespace only.
    pub namespace: Option<String>,
    /// Gang mode, scheduler name, cluster domain, operator name.
    pub plan: PlanConfig,
    /// Where `/metrics`, `/healthz`, `/readyz` listen.
    pub metrics_address: SocketAddr,
    /// `None`: this replica reconciles at once.
    pub leader_election: Option<LeaderElection>,
    /// Parallel reconciles (0: unbounded).
    pub concurrency: u16,
    /// The events' reporting instance (the pod name).
    pub instance: String,
    /// After shutdown, how long in-flight reconciles may take.
    pub shutdown_grace: Duration,
}

/// Runs the operator until `shutdown` resolves (SIGTERM in the binary).
///
/// # Flow
/// 1. refuse to start unless the TFJob CRD is installed and Gantry's ([`check_ownership`]);
/// 2. serve `/metrics`, `/healthz`, `/readyz` (ready once started, leading or following);
/// 3. with leader election, wait until this replica holds the Lease, then renew it in the background;
/// 4. run the controller until shutdown or until leadership is lost.
///
/// # Errors
/// [`Error::Crd`], [`Error::Listen`], [`Error::Api`] (CRD read, Lease), and [`Error::Lease`] when the
/// leadership was lost (the process should exit and restart as a follower).
pub async fn run(
    client: Client,
    options: OperatorOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds.get_opt(CRD_NAME).await.map_err(|source| Error::Api {
        verb: "get",
        object: format!("customresourcedefinitions/{CRD_NAME}"),
        source,
    })?;
    check_ownership(crd.as_ref())?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = {
        let stop_tx = stop_tx.clone();
        async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        }
    };
    tokio::spawn(stop);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(options.metrics_address)
        .await
        .map_err(|source| Error::Listen {
            address: options.metrics_address.to_string(),
            source,
        })?;
    tracing::info!(address = %options.metrics_address, "serving /metrics, /healthz, /readyz");
    tokio::spawn(serve(
        listener,
        Health {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
        stopped(stop_rx.clone()),
    ));

    // Ready once started: a follower is ready too, or a rolling update of two replicas would stall.
    ready.store(true, Ordering::SeqCst);
    let lost = Arc::new(AtomicBool::new(false));
    if let Some(election) = &options.leader_election {
        let api: Api<Lease> = Api::namespaced(client.clone(), &election.namespace);
        let lock = LeaseLock::new(
            api,
            &election.name,
            &election.identity,
            election.duration,
            system_clock(),
        );
        let mut rx = stop_rx.clone();
        tracing::info!(lease = %election.name, identity = %election.identity, "waiting for leadership");
        loop {
            match lock.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(error = %crate::reconcile::ErrorChain(&err), "leader election")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(election.retry) => {}
                _ = rx.wait_for(|s| *s) => return Ok(()),
            }
        }
        tracing::info!(identity = %election.identity, "leading");
        let (retry, duration) = (election.retry, election.duration);
        let (lost, stop_tx, mut rx) = (lost.clone(), stop_tx.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut last_renewal = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    _ = rx.wait_for(|s| *s) => return,
                }
                match lock.try_acquire_or_renew().await {
                    Ok(true) => last_renewal = tokio::time::Instant::now(),
                    Ok(false) => break,
                    Err(err) => {
                        tracing::warn!(error = %crate::reconcile::ErrorChain(&err), "renewing the lease");
                        if last_renewal.elapsed() < duration {
                            continue;
                        }
                        break;
                    }
                }
            }
            lost.store(true, Ordering::SeqCst);
            let _ = stop_tx.send(true);
        });
    }

    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "gantry-operator".to_string(),
                instance: Some(options.instance.clone()),
            },
        ),
        client,
        plan_config: options.plan.clone(),
        metrics,
        clock: system_clock(),
        error_requeue: Duration::from_secs(5),
    });
    crate::controller::run(
        ctx,
        options.namespace.as_deref(),
        options.concurrency,
        options.shutdown_grace,
        stopped(stop_rx),
    )
    .await;
    ready.store(false, Ordering::SeqCst);
    if lost.load(Ordering::SeqCst) {
        let lease = options
            .leader_election
            .as_ref()
            .map(|e| format!("{}/{}", e.namespace, e.name))
            .unwrap_or_default();
        return Err(Error::Lease {
            lease,
            message: "leadership lost; exiting so that this replica restarts as a follower"
                .to_string(),
        });
    }
    Ok(())
}
