//! A tiny in-memory cluster for planner tests: applies plans, lets a test set pod phases and exit codes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failure

use gantry_planner::{plan, Observed, ObservedPodGroup, Plan, PlanConfig};
use gantry_tfjob::{parse_tfjob, TFJob};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

pub fn at(second: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + second).unwrap())
}

pub fn job(yaml: &str) -> TFJob {
    parse_tfjob(yaml, "test", true).unwrap().job
}

/// A standard manifest: `specs` are (type, replicas, restartPolicy) triples.
pub fn manifest(name: &str, specs: &[(&str, i32, &str)], extra_spec: &str) -> TFJob {
    let mut text = format!(
        "apiVersion: kubeflow.org/v1\nkind: TFJob\nmetadata: {{name: {name}, namespace: ml, uid: uid-1}}\nspec:\n{extra_spec}  tfReplicaSpecs:\n"
    );
    for (rtype, replicas, policy) in specs {
        text.push_str(&format!(
            "    {rtype}:\n      replicas: {replicas}\n      restartPolicy: {policy}\n      template:\n        spec:\n          containers:\n            - name: tensorflow\n              image: tf:2\n              command: [python, train.py]\n"
        ));
    }
    job(&text)
}

#[derive(Debug)]
pub struct World {
    pub job: TFJob,
    pub config: PlanConfig,
    pub observed: Observed,
    pub now: i64,
    pub deleted_job: bool,
}

impl World {
    pub fn new(job: TFJob) -> Self {
        Self::with_config(job, PlanConfig::default())
    }

    pub fn with_config(job: TFJob, config: PlanConfig) -> Self {
        Self {
            job,
            config,
            observed: Observed::default(),
            now: 0,
            deleted_job: false,
        }
    }

    /// Plans once and applies the plan; returns it.
    pub fn step(&mut self) -> Plan {
        let plan = plan(&self.job, &self.observed, &self.config, &at(self.now)).unwrap();
        self.apply(&plan);
        plan
    }

    /// Steps until a plan changes nothing (at most 10 times); returns every plan.
    pub fn settle(&mut self) -> Vec<Plan> {
        let mut plans = Vec::new();
        for _ in 0..10 {
            let p = self.step();
            let done = p.is_empty();
            plans.push(p);
            if done {
                return plans;
            }
        }
        panic!("no steady state after 10 plans: {plans:#?}");
    }

    pub fn apply(&mut self, plan: &Plan) {
        if plan.create_pod_group.is_some() {
            self.observed.pod_group = Some(ObservedPodGroup { admitted: false });
        }
        if plan.delete_pod_group {
            self.observed.pod_group = None;
        }
        self.observed
            .pods
            .retain(|p| !plan.delete_pods.contains(p.metadata.name.as_ref().unwrap()));
        self.observed.services.retain(|s| {
            !plan
                .delete_services
                .contains(s.metadata.name.as_ref().unwrap())
        });
        for pod in &plan.create_pods {
            assert!(
                self.pod(pod.metadata.name.as_ref().unwrap()).is_none(),
                "created twice: {:?}",
                pod.metadata.name
            );
            let mut pod = pod.clone();
            pod.status = Some(PodStatus {
                phase: Some("Pending".into()),
                ..PodStatus::default()
            });
            self.observed.pods.push(pod);
        }
        self.observed
            .services
            .extend(plan.create_services.iter().cloned());
        if let Some(status) = &plan.status {
            self.job.status = Some(status.clone());
        }
        if plan.delete_job {
            self.deleted_job = true;
        }
    }

    pub fn pod(&self, name: &str) -> Option<&k8s_openapi::api::core::v1::Pod> {
        self.observed
            .pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
    }

    pub fn pod_names(&self) -> Vec<String> {
        let mut names: Vec<_> = self
            .observed
            .pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        names
    }

    pub fn service_names(&self) -> Vec<String> {
        let mut names: Vec<_> = self
            .observed
            .services
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        names
    }

    /// Sets a pod's phase; `exit` gives its `tensorflow` container a terminated state.
    pub fn set_pod(&mut self, name: &str, phase: &str, exit: Option<i32>, restarts: i32) {
        let pod = self
            .observed
            .pods
            .iter_mut()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no pod {name}"));
        let state = match exit {
            Some(code) => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            },
            None => ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..ContainerState::default()
            },
        };
        pod.status = Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "tensorflow".into(),
                restart_count: restarts,
                state: Some(state),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
    }

    pub fn run_all(&mut self) {
        for name in self.pod_names() {
            self.set_pod(&name, "Running", None, 0);
        }
    }

    pub fn status(&self) -> gantry_tfjob::JobStatus {
        self.job.status.clone().unwrap_or_default()
    }

    /// The `True` conditions, in order.
    pub fn conditions(&self) -> Vec<String> {
        self.status()
            .conditions
            .iter()
            .filter(|c| c.status == gantry_tfjob::ConditionStatus::True)
            .map(|c| format!("{:?}", c.type_))
            .collect()
    }

    pub fn is(&self, kind: gantry_tfjob::JobConditionType) -> bool {
        self.status().is(kind)
    }
}
