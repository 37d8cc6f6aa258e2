//! The local control loop: observe processes as pods, plan, apply, until the job finishes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_planner::{Observed, Plan};
use gantry_tfjob::{JobConditionType, JobStatus, ReplicaType};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, Pod,
    PodStatus, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nix::sys::signal::Signal;
use serde::Serialize;

use crate::console::Console;
use crate::launch::{launch_of, Prepared, ReplicaLaunch};
use crate::process::Proc;
use crate::{atomic_write, Error, Result};

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Logs, the launch plan and the final status go here (created if missing).
    pub run_dir: PathBuf,
    /// Between SIGTERM and SIGKILL when stopping a replica.
    pub grace_period: Duration,
    /// Before an in-place restart (`Always`/`OnFailure`), like the kubelet's back-off.
    pub restart_delay: Duration,
    /// How often processes are polled.
    pub poll_interval: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            run_dir: PathBuf::from("run"),
            grace_period: Duration::from_secs(10),
            restart_delay: Duration::from_secs(1),
            poll_interval: Duration::from_millis(50),
        }
    }
}

/// How one replica ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaReport {
    /// Pod name.
    pub name: String,
    /// `worker-1`.
    pub short_name: String,
    /// Replica type.
    pub replica_type: ReplicaType,
    /// Index.
    pub index: i32,
    /// `Succeeded`, `Failed`, `Stopped` (by gantry) or `Running`.
    pub state: String,
    /// The last exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// How many times its process was started (in-place restarts and re-creations included).
    pub starts: u32,
    /// Its log file.
    pub log: PathBuf,
}

/// How the job ended.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The job's name.
    pub job: String,
    /// `Succeeded`, `Failed` or `Interrupted`.
    pub result: String,
    /// The condition message explaining it.
    pub message: String,
    /// Wall-clock seconds from the first start to the last stop.
    pub seconds: f64,
    /// The run directory.
    pub run_dir: PathBuf,
    /// Every replica.
    pub replicas: Vec<ReplicaReport>,
    /// The job's final status, as the planner wrote it.
    pub status: JobStatus,
}

impl Outcome {
    /// Whether the job succeeded.
    pub fn succeeded(&self) -> bool {
        self.result == "Succeeded"
    }
}

#[derive(Debug)]
struct Replica {
    launch: ReplicaLaunch,
    pod: Pod,
    proc: Option<Proc>,
    phase: &'static str,
    exit_code: Option<i32>,
    restart_count: i32,
    restart_at: Option<Instant>,
    colour: usize,
    log: PathBuf,
}

impl Replica {
    fn observed(&self) -> Pod {
        let state = match (self.proc.is_some(), self.exit_code) {
            (false, Some(code)) => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            },
            _ => ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..ContainerState::default()
            },
        };
        let mut pod = self.pod.clone();
        pod.status = Some(PodStatus {
            phase: Some(self.phase.to_string()),
            container_statuses: Some(vec![ContainerStatus {
                name: gantry_tfjob::DEFAULT_CONTAINER_NAME.to_string(),
                restart_count: self.restart_count,
                state: Some(state),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        pod
    }
}

/// The supervisor: owns every process, so an early return or a panic still stops them (`Proc` drop).
struct Supervisor<'a> {
    prepared: &'a Prepared,
    options: &'a RunOptions,
    console: Arc<Console>,
    replicas: BTreeMap<String, Replica>,
    reports: BTreeMap<String, ReplicaReport>,
    starts: BTreeMap<String, u32>,
    colours: BTreeMap<String, usize>,
}

impl Supervisor<'_> {
    fn start(&mut self, pod: &Pod) -> Result<()> {
        let ports = match &self.prepared.config.addressing {
            gantry_planner::Addressing::Loopback { ports } => ports.clone(),
            gantry_planner::Addressing::ClusterDns { .. } => BTreeMap::new(),
        };
        let (launch, _) = launch_of(
            &self.prepared.job,
            pod,
            &self.prepared.options,
            &ports,
            &self.prepared.gpus,
        )?;
        let next_colour = self.colours.len();
        let colour = *self
            .colours
            .entry(launch.name.clone())
            .or_insert(next_colour);
        let log = self
            .options
            .run_dir
            .join(format!("{}.log", launch.short_name));
        let starts = self.starts.entry(launch.name.clone()).or_default();
        if *starts > 0 {
            self.console.notice(&format!(
                "re-creating {} (start {})",
                launch.short_name,
                *starts + 1
            ));
        }
        *starts += 1;
        let proc = Proc::spawn(&launch, &log, &self.console, colour)?;
        self.replicas.insert(
            launch.name.clone(),
            Replica {
                launch,
                pod: pod.clone(),
                proc: Some(proc),
                phase: "Running",
                exit_code: None,
                restart_count: 0,
                restart_at: None,
                colour,
                log,
            },
        );
        Ok(())
    }

    /// Polls every process; applies the pod restart policy like the kubelet.
    fn poll(&mut self) {
        let now = Instant::now();
        for r in self.replicas.values_mut() {
            if let Some(proc) = r.proc.as_mut() {
                if let Some(code) = proc.poll() {
                    if let Some(mut p) = r.proc.take() {
                        p.drain();
                    }
                    r.exit_code = Some(code);
                    self.console
                        .notice(&format!("{} exited with code {code}", r.launch.short_name));
                    let restart = match r.launch.pod_restart_policy.as_str() {
                        "Always" => true,
                        "OnFailure" => code != 0,
                        _ => false,
                    };
                    if restart {
                        r.restart_at = Some(now + self.options.restart_delay);
                        r.phase = "Running";
                    } else {
                        r.phase = if code == 0 { "Succeeded" } else { "Failed" };
                    }
                }
            }
            if r.restart_at.is_some_and(|t| now >= t) {
                r.restart_at = None;
                r.restart_count += 1;
                *self.starts.entry(r.launch.name.clone()).or_default() += 1;
                self.console.notice(&format!(
                    "restarting {} in place (restart {})",
                    r.launch.short_name, r.restart_count
                ));
                match Proc::spawn(&r.launch, &r.log, &self.console, r.colour) {
                    Ok(p) => {
                        r.proc = Some(p);
                        r.exit_code = None;
                    }
                    Err(e) => {
                        self.console
                            .notice(&format!("{}: {e}", r.launch.short_name));
                        r.exit_code = Some(127);
                        r.phase = "Failed";
                    }
                }
            }
        }
    }

    /// SIGTERM to every named replica, SIGKILL to those still alive after the grace period.
    fn stop(&mut self, names: &[String]) {
        for name in names {
            if let Some(p) = self.replicas.get(name).and_then(|r| r.proc.as_ref()) {
                p.signal(Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + self.options.grace_period;
        for name in names {
            let Some(r) = self.replicas.get_mut(name) else {
                continue;
            };
            if r.restart_at.take().is_some() {
                r.phase = "Stopped";
            }
            let Some(mut proc) = r.proc.take() else {
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let code = match proc.wait_for(left) {
                Some(code) => code,
                None => {
                    self.console.notice(&format!(
                        "{} did not stop within {:?}; killing it",
                        r.launch.short_name, self.options.grace_period
                    ));
                    proc.kill()
                }
            };
            proc.drain();
            r.exit_code = Some(code);
            r.restart_at = None;
            r.phase = "Stopped";
        }
    }

    fn report(r: &Replica) -> ReplicaReport {
        ReplicaReport {
            name: r.launch.name.clone(),
            short_name: r.launch.short_name.clone(),
            replica_type: r.launch.replica_type,
            index: r.launch.index,
            state: r.phase.to_string(),
            exit_code: r.exit_code,
            starts: 0,
            log: r.log.clone(),
        }
    }

    fn remove(&mut self, name: &str) {
        self.stop(&[name.to_string()]);
        if let Some(r) = self.replicas.remove(name) {
            self.reports.insert(name.to_string(), Self::report(&r));
        }
    }

    fn status_line(&self, started: Instant) -> String {
        let parts: Vec<String> = self
            .replicas
            .values()
            .map(|r| {
                let state = if r.restart_at.is_some() {
                    "Restarting"
                } else {
                    r.phase
                };
                let restarts = self.starts.get(&r.launch.name).copied().unwrap_or(1);
                if restarts > 1 {
                    format!("{} {state} (start {restarts})", r.launch.short_name)
                } else {
                    format!("{} {state}", r.launch.short_name)
                }
            })
            .collect();
        format!(
            "[{} {:.0}s] {}",
            self.prepared.launch.job,
            started.elapsed().as_secs_f64(),
            parts.join(" | ")
        )
    }
}

impl Drop for Supervisor<'_> {
    fn drop(&mut self) {
        let names: Vec<String> = self.replicas.keys().cloned().collect();
        let any_alive = self.replicas.values().any(|r| r.proc.is_some());
        if any_alive {
            // Already an abnormal path: no grace.
            for name in names {
                if let Some(mut p) = self.replicas.get_mut(&name).and_then(|r| r.proc.take()) {
                    p.kill();
                }
            }
        }
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Runs a prepared job to its end.
///
/// # Flow
/// Each turn: poll the processes (restarting in place under `Always`/`OnFailure`), describe them as
/// pods, call the planner, apply its plan (stop deleted replicas: SIGTERM, grace, SIGKILL; start created
/// ones), keep the status. The run ends when the job has succeeded or failed and the plan's clean-up is
/// applied (replicas still running then are stopped: a local run ends with its job), or when `stop` is
/// set (Ctrl-C), which stops every replica.
///
/// # Errors
/// [`Error::Io`] when the run directory or a log cannot be written or a process cannot start;
/// every replica is stopped first.
pub fn run(
    prepared: &Prepared,
    options: &RunOptions,
    console: Arc<Console>,
    stop: &AtomicBool,
) -> Result<Outcome> {
    std::fs::create_dir_all(&options.run_dir)
        .map_err(|e| Error::io("creating run directory", &options.run_dir, e))?;
    let launch_json = serde_json::to_vec_pretty(&prepared.launch).unwrap_or_default();
    atomic_write::write(&options.run_dir.join("launch.json"), &launch_json)?;

    let mut job = prepared.job.clone();
    let mut services: Vec<Service> = Vec::new();
    let mut sup = Supervisor {
        prepared,
        options,
        console: Arc::clone(&console),
        replicas: BTreeMap::new(),
        reports: BTreeMap::new(),
        starts: BTreeMap::new(),
        colours: BTreeMap::new(),
    };
    let started = Instant::now();
    let mut last_status = Instant::now() - Duration::from_secs(1);
    let mut interrupted = false;
    loop {
        sup.poll();
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            console.notice("interrupted: stopping every replica");
            break;
        }
        let observed = Observed {
            pods: sup.replicas.values().map(Replica::observed).collect(),
            services: services.clone(),
            pod_group: None,
        };
        let plan: Plan = gantry_planner::plan(&job, &observed, &prepared.config, &now())?;
        for event in &plan.events {
            console.notice(&event.message);
        }
        let deleted: Vec<String> = plan.delete_pods.clone();
        sup.stop(&deleted);
        for name in &deleted {
            sup.remove(name);
        }
        services.retain(|s| {
            !plan
                .delete_services
                .iter()
                .any(|n| s.metadata.name.as_deref() == Some(n.as_str()))
        });
        services.extend(plan.create_services.iter().cloned());
        for pod in &plan.create_pods {
            sup.start(pod)?;
        }
        if let Some(status) = &plan.status {
            job.status = Some(status.clone());
        }
        let status = job.status_or_default();
        if status.is_finished() && plan.is_empty() {
            break;
        }
        if last_status.elapsed() >= Duration::from_millis(250) {
            console.set_status(sup.status_line(started));
            last_status = Instant::now();
        }
        if plan.is_empty() {
            std::thread::sleep(options.poll_interval);
        }
    }

    // Whatever is still running (cleanPodPolicy None, or an interrupt) stops with the run.
    let alive: Vec<String> = sup
        .replicas
        .iter()
        .filter(|(_, r)| r.proc.is_some() || r.restart_at.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    sup.stop(&alive);
    console.finish();
    let seconds = started.elapsed().as_secs_f64();

    let mut reports = std::mem::take(&mut sup.reports);
    for (name, r) in &sup.replicas {
        reports.insert(name.clone(), Supervisor::report(r));
    }
    let mut replicas: Vec<ReplicaReport> = reports.into_values().collect();
    for r in &mut replicas {
        r.starts = sup.starts.get(&r.name).copied().unwrap_or(0);
    }
    let status = job.status_or_default();
    let (result, message) = if interrupted {
        ("Interrupted", "stopped by a signal".to_string())
    } else if let Some(c) = status
        .condition(JobConditionType::Succeeded)
        .filter(|_| status.is(JobConditionType::Succeeded))
    {
        ("Succeeded", c.message.clone())
    } else {
        let message = status
            .condition(JobConditionType::Failed)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ("Failed", message)
    };
    let outcome = Outcome {
        job: prepared.launch.job.clone(),
        result: result.to_string(),
        message,
        seconds,
        run_dir: options.run_dir.clone(),
        replicas,
        status,
    };
    let outcome_json = serde_json::to_vec_pretty(&outcome).unwrap_or_default();
    atomic_write::write(&options.run_dir.join("outcome.json"), &outcome_json)?;
    Ok(outcome)
}
