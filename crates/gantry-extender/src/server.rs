//! The HTTP server.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gantry_scheduler::wire::{
    ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult, ExtenderFilterResult,
};
use gantry_scheduler::{BindPlan, Extender};
use serde::de::DeserializeOwned;

use crate::{Error, Readiness, Result};

/// The API writes of `bind`.
pub trait Binder: Send + Sync + 'static {
    /// Records `plan.assignment` on the pod (annotation `gantry.dev/gpu-assignment`) and then
    /// creates the pod's Binding to `plan.node`. Called with no lock held; may take as long as
    /// the API server takes.
    fn bind(&self, plan: &BindPlan) -> impl Future<Output = Result<()>> + Send;
}

/// The extender's clock (injected so tests can move time).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Server settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Largest request body accepted, in bytes (a `filter` with 5,000 full Node objects is
    /// tens of MiB; with `nodeCacheCapable: true` a few hundred KiB).
    pub body_limit: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            body_limit: 16 << 20,
        }
    }
}

struct App<B, C> {
    extender: Arc<Extender>,
    binder: Arc<B>,
    clock: C,
    readiness: Readiness,
}

impl<B, C> App<B, C> {
    /// Why the extender cannot decide yet (its cache has not listed the cluster), if so.
    fn not_ready(&self) -> Option<String> {
        not_ready(&self.readiness)
    }
}

/// The extender's routes: `POST /filter`, `POST /prioritize`, `POST /bind`, `GET /healthz`
/// (alive: always `ok`) and `GET /readyz` (`ok` once `readiness` is ready, else 503 with what
/// it waits for). Until ready, the verbs refuse with a reason (`Error` in filter and bind,
/// HTTP 503 in prioritize) and kube-scheduler retries the pod.
pub fn router<B: Binder, C: Clock>(
    extender: Arc<Extender>,
    binder: Arc<B>,
    clock: C,
    readiness: Readiness,
    config: ServerConfig,
) -> Router {
    let app = Arc::new(App {
        extender,
        binder,
        clock,
        readiness,
    });
    Router::new()
        .route("/filter", post(filter::<B, C>))
        .route("/prioritize", post(prioritize::<B, C>))
        .route("/bind", post(bind::<B, C>))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<B, C>))
        .layer(DefaultBodyLimit::max(config.body_limit))
        .with_state(app)
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}

/// A body read and decoded, or the reason it could not be.
fn decode<T: DeserializeOwned>(
    verb: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, String> {
    let bytes = body.map_err(|e| format!("{verb}: reading the request body: {}", e.body_text()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{verb}: malformed request JSON: {e}"))
}

fn bad_request<T: serde::Serialize>(body: T) -> Response {
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// Why the extender cannot decide yet (its cache has not listed the cluster), if so.
fn not_ready(readiness: &Readiness) -> Option<String> {
    (!readiness.is_ready()).then(|| {
        format!(
            "the extender's cache is not ready: waiting for {}",
            readiness.waiting_for()
        )
    })
}

fn readyz_response(readiness: &Readiness) -> Response {
    match not_ready(readiness) {
        None => "ok".into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

async fn readyz<B: Binder, C: Clock>(State(app): State<Arc<App<B, C>>>) -> Response {
    readyz_response(&app.readiness)
}

/// Only `GET /healthz` and `GET /readyz`, as in [`router`], for the kubelet's probes on an address
/// of their own: the extender itself listens on localhost, where only kube-scheduler (in the same
/// pod) reaches it, and probes come from the node to the pod's IP.
pub fn health_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || std::future::ready(readyz_response(&readiness))),
        )
}

async fn filter<B: Binder, C: Clock>(
    State(app): State<Arc<App<B, C>>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let args: ExtenderArgs = match decode("filter", body) {
        Ok(a) => a,
        Err(reason) => {
            tracing::warn!(%reason, "bad filter request");
            return bad_request(ExtenderFilterResult::error(reason));
        }
    };
    if let Some(reason) = app.not_ready() {
        return Json(ExtenderFilterResult::error(reason)).into_response();
    }
    let result = app.extender.filter(&args, app.clock.now());
    if !result.error.is_empty() {
        tracing::info!(error = %result.error, "filter refused the pod");
    }
    Json(result).into_response()
}

async fn prioritize<B: Binder, C: Clock>(
    State(app): State<Arc<App<B, C>>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let args: ExtenderArgs = match decode("prioritize", body) {
        Ok(a) => a,
        Err(reason) => {
            tracing::warn!(%reason, "bad prioritize request");
            return (StatusCode::BAD_REQUEST, reason).into_response();
        }
    };
    if let Some(reason) = app.not_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, reason).into_response();
    }
    match app.extender.prioritize(&args, app.clock.now()) {
        Ok(list) => Json(list).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("prioritize: {e}")).into_response(),
    }
}

async fn bind<B: Binder, C: Clock>(
    State(app): State<Arc<App<B, C>>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let args: ExtenderBindingArgs = match decode("bind", body) {
        Ok(a) => a,
        Err(reason) => {
            tracing::warn!(%reason, "bad bind request");
            return bad_request(ExtenderBindingResult { error: reason });
        }
    };
    if let Some(error) = app.not_ready() {
        return Json(ExtenderBindingResult { error }).into_response();
    }
    let plan = match app.extender.begin_bind(&args, app.clock.now()) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(pod = %args.pod_name, node = %args.node, error = %e, "bind refused");
            return Json(ExtenderBindingResult {
                error: e.to_string(),
            })
            .into_response();
        }
    };
    let written = app.binder.bind(&plan).await;
    app.extender.finish_bind(&plan, written.is_ok());
    let error = match written {
        Ok(()) => {
            tracing::info!(pod = %format!("{}/{}", plan.namespace, plan.name), node = %plan.node,
                gpus = ?plan.assignment.gpus.iter().map(|g| g.index).collect::<Vec<_>>(), "bound");
            String::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "bind write failed; GPUs released");
            e.to_string()
        }
    };
    Json(ExtenderBindingResult { error }).into_response()
}
