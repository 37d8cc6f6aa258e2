//! One reconcile of one TFJob: observe → plan → apply, and the decision of when to look again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_planner::{
    EventType as PlanEventType, GangScheduler, Observed, ObservedPodGroup, Plan, PlanConfig,
    JOB_NAME_LABEL,
};
use gantry_tfjob::{JobStatus, TFJob};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource};
use serde_json::{json, Value};

use crate::error::{status_code, Error, Result};
use crate::metrics::Metrics;
use crate::pod_group;

/// A clock, injected so tests and benchmarks control `now`.
pub type Clock = Arc<dyn Fn() -> Time + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| Time(k8s_openapi::jiff::Timestamp::now()))
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Gang mode, scheduler name, cluster domain, operator name.
    pub plan_config: PlanConfig,
    /// Publishes Kubernetes events.
    pub recorder: Recorder,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// `now`.
    pub clock: Clock,
    /// How long to wait after a failed reconcile.
    pub error_requeue: Duration,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("plan_config", &self.plan_config)
            .field("error_requeue", &self.error_requeue)
            .finish_non_exhaustive()
    }
}

fn object(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

fn api_err(verb: &'static str, object: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Api {
        verb,
        object,
        source,
    }
}

/// Reads what the planner needs: the job's pods and services (by the job-name label, and only those
/// this job controls) and, under Volcano or scheduler-plugins, its PodGroup.
///
/// The reads go to the API server rather than a watch cache, so a reconcile never acts on a stale
/// view (Kubeflow needs "expectations" to avoid duplicate pods for that reason): two lists per
/// reconcile, answered from the API server's own watch cache.
///
/// # Errors
/// [`Error::Api`] when a list or get fails (a missing PodGroup is not an error).
pub async fn observe(client: &Client, config: &PlanConfig, job: &TFJob) -> Result<Observed> {
    let namespace = job.namespace();
    let selector = format!("{JOB_NAME_LABEL}={}", job.name().replace('/', "-"));
    let params = ListParams::default().labels(&selector);
    let uid = job.metadata.uid.as_deref();
    let controlled = |meta: &ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = pods
        .list(&params)
        .await
        .map_err(api_err("list", object("pods", namespace, &selector)))?
        .items
        .into_iter()
        .filter(|p| controlled(&p.metadata))
        .collect();
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let services = services
        .list(&params)
        .await
        .map_err(api_err("list", object("services", namespace, &selector)))?
        .items
        .into_iter()
        .filter(|s| controlled(&s.metadata))
        .collect();
    let pod_group = match pod_group::api_resource(config.gang) {
        Some(resource) => {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &resource);
            api.get_opt(job.name())
                .await
                .map_err(api_err("get", object("podgroups", namespace, job.name())))?
                .map(|group| pod_group::observe(config.gang, &group))
        }
        // Gantry's extender reads pod labels: nothing to create, nothing to wait for.
        None if config.gang == GangScheduler::Gantry => Some(ObservedPodGroup { admitted: true }),
        None => None,
    };
    Ok(Observed {
        pods,
        services,
        pod_group,
    })
}

/// The merge patch that turns `old` into `new` on the status subresource: the whole new status, with
/// `null` for every top-level field `new` dropped (a plain merge patch would keep it).
///
/// # Errors
/// [`Error::Serialise`] (not expected for these types).
pub fn status_patch(old: Option<&JobStatus>, new: &JobStatus) -> Result<Value> {
    let to_value = |s: &JobStatus| {
        serde_json::to_value(s).map_err(|source| Error::Serialise {
            what: "status".to_string(),
            source,
        })
    };
    let mut patch = to_value(new)?;
    if let (Some(old), Some(fields)) = (old, patch.as_object_mut()) {
        if let Value::Object(old) = to_value(old)? {
            for key in old.keys() {
                fields.entry(key.clone()).or_insert(Value::Null);
            }
        }
    }
    Ok(json!({ "status": patch }))
}

/// Applies `plan` for `job`, in the planner's order: PodGroup, deletions, creations, status, events,
/// and last the job itself when its TTL has passed.
///
/// # Guarantees
/// Idempotent: names are deterministic, a create answered `409 AlreadyExists` counts as done and a
/// delete answered `404 NotFound` too, so applying a plan again after a crash creates nothing twice.
/// Never writes `.spec`: the status goes through the status subresource as a merge patch.
///
/// # Errors
/// [`Error::Api`] for the first call that fails otherwise; what was applied before it stays applied,
/// and the next reconcile plans from what it observes.
pub async fn apply(ctx: &Context, job: &TFJob, plan: &Plan) -> Result<()> {
    let client = &ctx.client;
    let namespace = job.namespace();
    let name = job.name();
    let gang = ctx.plan_config.gang;

    if let Some(resource) = pod_group::api_resource(gang) {
        let groups: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        if let Some(group) = plan
            .create_pod_group
            .as_ref()
            .and_then(|g| pod_group::render(gang, job, g))
        {
            ignore_code(groups.create(&PostParams::default(), &group).await, 409)
                .map_err(api_err("create", object("podgroups", namespace, name)))?;
        }
        if plan.delete_pod_group {
            ignore_code(groups.delete(name, &DeleteParams::default()).await, 404)
                .map_err(api_err("delete", object("podgroups", namespace, name)))?;
        }
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    for pod in &plan.delete_pods {
        ignore_code(pods.delete(pod, &DeleteParams::default()).await, 404)
            .map_err(api_err("delete", object("pods", namespace, pod)))?;
    }
    for svc in &plan.delete_services {
        ignore_code(services.delete(svc, &DeleteParams::default()).await, 404)
            .map_err(api_err("delete", object("services", namespace, svc)))?;
    }
    // Services first: a pod's peers resolve its name as soon as it starts.
    for svc in &plan.create_services {
        let svc_name = svc.metadata.name.clone().unwrap_or_default();
        ignore_code(services.create(&PostParams::default(), svc).await, 409)
            .map_err(api_err("create", object("services", namespace, &svc_name)))?;
    }
    for pod in &plan.create_pods {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        ignore_code(pods.create(&PostParams::default(), pod).await, 409)
            .map_err(api_err("create", object("pods", namespace, &pod_name)))?;
        ctx.metrics.pods_created.inc();
    }

    if let Some(status) = &plan.status {
        let jobs: Api<TFJob> = Api::namespaced(client.clone(), namespace);
        let patch = status_patch(job.status.as_ref(), status)?;
        jobs.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err("patch status", object("tfjobs", namespace, name)))?;
    }

    if !plan.events.is_empty() {
        let reference = job.object_ref(&());
        for event in &plan.events {
            let event = Event {
                type_: match event.type_ {
                    PlanEventType::Normal => EventType::Normal,
                    PlanEventType::Warning => EventType::Warning,
                },
                reason: event.reason.clone(),
                note: Some(event.message.clone()),
                action: "Reconcile".to_string(),
                secondary: None,
            };
            // An event that cannot be written is logged, never a reason to redo the reconcile.
            if let Err(err) = ctx.recorder.publish(&event, &reference).await {
                tracing::warn!(job = %object("tfjobs", namespace, name), error = %err, "publishing event");
            }
        }
    }

    if plan.delete_job {
        let jobs: Api<TFJob> = Api::namespaced(client.clone(), namespace);
        ignore_code(jobs.delete(name, &DeleteParams::background()).await, 404)
            .map_err(api_err("delete", object("tfjobs", namespace, name)))?;
    }
    Ok(())
}

fn ignore_code<T>(result: Result<T, kube::Error>, code: u16) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(err) if status_code(&err) == Some(code) => Ok(()),
        Err(err) => Err(err),
    }
}

/// When to look at the job again: as the plan says, else on the next change of the job or of a
/// pod or service it owns.
pub fn next_action(plan: &Plan) -> Action {
    match plan.requeue_after_seconds {
        Some(seconds) => Action::requeue(Duration::from_secs(
            u64::try_from(seconds).unwrap_or(0).max(1),
        )),
        None => Action::await_change(),
    }
}

/// One reconcile: observe, plan, apply, decide. Records metrics.
///
/// # Errors
/// What [`observe`] and [`apply`] return, and [`Error::Plan`].
pub async fn reconcile(job: Arc<TFJob>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&job, &ctx).await;
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.as_ref().err());
    if let Ok((_, status)) = &result {
        ctx.metrics.set_phase(&job, status.as_ref());
    }
    result.map(|(action, _)| action)
}

async fn reconcile_inner(job: &TFJob, ctx: &Context) -> Result<(Action, Option<JobStatus>)> {
    if job.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes what the job owns.
        return Ok((Action::await_change(), None));
    }
    let observed = observe(&ctx.client, &ctx.plan_config, job).await?;
    let now = (ctx.clock)();
    let plan = gantry_planner::plan(job, &observed, &ctx.plan_config, &now).map_err(|source| {
        Error::Plan {
            job: format!("{}/{}", job.namespace(), job.name()),
            source,
        }
    })?;
    tracing::debug!(job = %job.name(), namespace = %job.namespace(), ?plan, "plan");
    apply(ctx, job, &plan).await?;
    let status = plan.status.clone().or_else(|| job.status.clone());
    Ok((next_action(&plan), status))
}

/// After a failed reconcile: log it and look again after a pause.
pub fn error_policy(job: Arc<TFJob>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(job = %job.name(), namespace = %job.namespace(), kind = err.kind(), error = %ErrorChain(err), "reconcile failed");
    Action::requeue(ctx.error_requeue)
}

/// Displays an error with its sources, `a: b: c`.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}
