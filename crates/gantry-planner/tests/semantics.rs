//! Table tests of the planner's rules, driven through a small in-memory cluster (`support::World`).

mod support;

use gantry_tfjob::JobConditionType::{
    Created, Failed, Restarting, Running, ScaleRefused, Succeeded, Suspended,
};
use gantry_tfjob::ReplicaType;
use support::{manifest, World};

fn chief_job(worker_policy: &str, extra: &str) -> World {
    World::new(manifest(
        "j",
        &[
            ("Chief", 1, "Never"),
            ("Worker", 2, worker_policy),
            ("PS", 1, "Never"),
        ],
        extra,
    ))
}

#[test]
fn first_plan_creates_every_pod_and_service_and_marks_created() {
    let mut w = chief_job("Never", "");
    w.step();
    assert_eq!(
        w.pod_names(),
        ["j-chief-0", "j-ps-0", "j-worker-0", "j-worker-1"]
    );
    assert_eq!(w.service_names(), w.pod_names());
    assert_eq!(w.conditions(), ["Created"]);
    let svc = &w.observed.services[0];
    assert_eq!(
        svc.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("None")
    );
    assert_eq!(
        w.step().create_pods.len(),
        0,
        "a second plan creates nothing twice"
    );
}

#[test]
fn restart_policies_map_to_pod_restart_policies() {
    for (policy, pod_policy) in [
        ("Always", "Always"),
        ("OnFailure", "OnFailure"),
        ("Never", "Never"),
        ("ExitCode", "Never"),
    ] {
        let mut w = World::new(manifest("j", &[("Worker", 2, policy)], ""));
        let plan = w.step();
        let got = plan.create_pods[0]
            .spec
            .as_ref()
            .unwrap()
            .restart_policy
            .clone();
        assert_eq!(got.as_deref(), Some(pod_policy), "{policy}");
    }
}

#[test]
fn running_when_the_chief_runs() {
    let mut w = chief_job("Never", "");
    w.step();
    w.run_all();
    w.step();
    assert_eq!(w.conditions(), ["Created", "Running"]);
    let rs = &w.status().replica_statuses;
    assert_eq!(rs[&ReplicaType::Worker].active, 2);
    assert!(w.status().start_time.is_some());
}

#[test]
fn the_chief_decides_success_and_running_ps_and_workers_are_cleaned_by_default() {
    let mut w = chief_job("Never", "");
    w.step();
    w.run_all();
    w.step();
    w.set_pod("j-worker-0", "Succeeded", Some(0), 0);
    w.step();
    assert!(
        !w.is(Succeeded),
        "worker 0 does not decide while a chief exists"
    );
    w.set_pod("j-chief-0", "Succeeded", Some(0), 0);
    let plans = w.settle();
    assert!(w.is(Succeeded));
    assert!(w.status().completion_time.is_some());
    // cleanPodPolicy unset means Running in Gantry: the running PS and worker 1 are stopped.
    assert_eq!(w.pod_names(), ["j-chief-0", "j-worker-0"]);
    assert!(plans
        .iter()
        .any(|p| p.delete_pods.contains(&"j-ps-0".to_string())));
    // Running=False once succeeded; active replicas are counted as succeeded.
    let running = w.status().condition(Running).cloned().unwrap();
    assert_eq!(running.status, gantry_tfjob::ConditionStatus::False);
    assert_eq!(w.status().replica_statuses[&ReplicaType::Ps].succeeded, 1);
}

#[test]
fn clean_pod_policy_none_and_all() {
    for (policy, left) in [
        (
            "None",
            vec!["j-chief-0", "j-ps-0", "j-worker-0", "j-worker-1"],
        ),
        ("All", vec![]),
        ("Running", vec!["j-chief-0"]),
    ] {
        let mut w = chief_job(
            "Never",
            &format!("  runPolicy: {{cleanPodPolicy: {policy}}}\n"),
        );
        w.step();
        w.run_all();
        w.step();
        w.set_pod("j-chief-0", "Succeeded", Some(0), 0);
        w.settle();
        assert!(w.is(Succeeded), "{policy}");
        assert_eq!(w.pod_names(), left, "{policy}");
    }
}

#[test]
fn without_a_chief_worker_zero_decides_and_ps_never_counts() {
    let mut w = World::new(manifest(
        "j",
        &[("Worker", 2, "Never"), ("PS", 1, "Never")],
        "",
    ));
    w.step();
    w.run_all();
    w.step();
    w.set_pod("j-ps-0", "Succeeded", Some(0), 0);
    w.step();
    assert!(!w.is(Succeeded), "PS success never counts");
    w.set_pod("j-worker-1", "Succeeded", Some(0), 0);
    w.step();
    assert!(!w.is(Succeeded), "worker 1 is not worker 0");
    w.set_pod("j-worker-0", "Succeeded", Some(0), 0);
    w.step();
    assert!(w.is(Succeeded));
}

#[test]
fn all_workers_success_policy_waits_for_every_worker() {
    let mut w = World::new(manifest(
        "j",
        &[
            ("Worker", 2, "Never"),
            ("PS", 1, "Never"),
            ("Evaluator", 1, "Never"),
        ],
        "  successPolicy: AllWorkers\n",
    ));
    w.step();
    w.run_all();
    w.step();
    w.set_pod("j-worker-0", "Succeeded", Some(0), 0);
    w.step();
    assert!(!w.is(Succeeded));
    w.set_pod("j-worker-1", "Succeeded", Some(0), 0);
    w.step();
    assert!(w.is(Succeeded), "evaluator still running does not matter");
}

#[test]
fn never_policy_a_failed_worker_fails_the_job_and_stops_the_rest() {
    let mut w = chief_job("Never", "");
    w.step();
    w.run_all();
    w.step();
    w.set_pod("j-worker-1", "Failed", Some(1), 0);
    w.settle();
    assert!(w.is(Failed));
    let failed = w.status().condition(Failed).cloned().unwrap();
    assert_eq!(failed.reason, "TFJobFailed");
    assert_eq!(
        failed.message,
        "TFJob ml/j has failed because 1 Worker replica(s) failed."
    );
    assert_eq!(
        w.pod_names(),
        ["j-worker-1"],
        "running replicas are stopped"
    );
}

#[test]
fn exit_code_retryable_failures_recreate_the_pod() {
    for code in [128, 137, 143, 255] {
        let mut w = chief_job("ExitCode", "");
        w.step();
        w.run_all();
        w.step();
        w.set_pod("j-worker-1", "Failed", Some(code), 0);
        let plan = w.step();
        assert_eq!(plan.delete_pods, ["j-worker-1"], "exit {code}");
        assert!(w.is(Restarting), "exit {code}: {:?}", w.conditions());
        assert!(!w.is(Failed));
        let plan = w.step();
        assert_eq!(plan.create_pods.len(), 1, "exit {code}: re-created");
        assert_eq!(
            w.status().replica_statuses[&ReplicaType::Worker].recreated,
            1
        );
        w.run_all();
        w.step();
        assert!(w.is(Running), "back to Running: {:?}", w.conditions());
        assert!(!w.is(Restarting));
    }
}

#[test]
fn exit_code_permanent_failures_fail_the_job() {
    for code in [1, 2, 127] {
        let mut w = chief_job("ExitCode", "");
        w.step();
        w.run_all();
        w.step();
        w.set_pod("j-worker-0", "Failed", Some(code), 0);
        let plan = w.step();
        assert!(!plan.delete_pods.contains(&"j-worker-0".to_string()));
        assert!(w.is(Failed), "exit {code}");
    }
}

#[test]
fn a_permanent_failure_fails_the_job_even_while_another_replica_restarts() {
    let mut w = chief_job("ExitCode", "");
    w.step();
    w.run_all();
    w.step();
    w.set_pod("j-worker-0", "Failed", Some(137), 0);
    w.set_pod("j-worker-1", "Failed", Some(1), 0);
    w.settle();
    assert!(w.is(Failed), "{:?}", w.conditions());
}

#[test]
fn on_failure_and_always_restarts_count_against_the_backoff_limit() {
    for policy in ["OnFailure", "Always"] {
        let mut w = chief_job(policy, "  runPolicy: {backoffLimit: 3}\n");
        w.step();
        w.run_all();
        w.step();
        w.set_pod("j-worker-0", "Running", None, 2);
        w.step();
        assert!(!w.is(Failed), "{policy}: 2 restarts < 3");
        w.set_pod("j-worker-1", "Running", None, 1);
        w.step();
        assert!(w.is(Failed), "{policy}: 3 restarts reach the limit");
        let failed = w.status().condition(Failed).cloned().unwrap();
        assert_eq!(
            failed.message,
            "Job j has failed because it has reached the specified backoff limit"
        );
        w.settle();
        assert!(w.pod_names().is_empty(), "{policy}: every pod is deleted");
    }
}

#[test]
fn backoff_limit_counts_exit_code_recreations() {
    let mut w = chief_job("ExitCode", "  runPolicy: {backoffLimit: 1}\n");
    w.step();
    w.run_all();
    w.step();
    w.set_pod("j-worker-0", "Failed", Some(137), 0);
    w.step();
    w.step();
    assert!(!w.is(Failed), "one re-creation is allowed");
    assert_eq!(
        w.status().replica_statuses[&ReplicaType::Worker].recreated,
        1
    );
    w.run_all();
    w.step();
    w.set_pod("j-worker-0", "Failed", Some(137), 0);
    w.step();
    assert!(w.is(Failed), "the second would exceed backoffLimit 1");
}

#[test]
fn backoff_limit_zero_fails_on_the_first_restart() {
    let mut w = chief_job("OnFailure", "  runPolicy: {backoffLimit: 0}\n");
    w.step();
    w.run_all();
    w.step();
    assert!(!w.is(Failed));
    w.set_pod("j-worker-1", "Running", None, 1);
    w.step();
    assert!(w.is(Failed));
}

#[test]
fn active_deadline_fails_the_job_and_requeues_until_then() {
    let mut w = chief_job("Never", "  runPolicy: {activeDeadlineSeconds: 60}\n");
    let plan = w.step();
    assert_eq!(plan.requeue_after_seconds, Some(60));
    w.run_all();
    w.now = 30;
    assert_eq!(w.step().requeue_after_seconds, Some(30));
    assert!(!w.is(Failed));
    w.now = 60;
    w.step();
    assert!(w.is(Failed));
    let failed = w.status().condition(Failed).cloned().unwrap();
    assert_eq!(
        failed.message,
        "Job j has failed because it was active longer than specified deadline"
    );
}

#[test]
fn ttl_deletes_the_job_after_it_finished() {
    let mut w = chief_job("Never", "  runPolicy: {ttlSecondsAfterFinished: 100}\n");
    w.step();
    w.run_all();
    w.step();
    w.now = 10;
    w.set_pod("j-chief-0", "Succeeded", Some(0), 0);
    w.settle();
    assert!(w.is(Succeeded));
    assert!(!w.deleted_job);
    w.now = 50;
    assert_eq!(w.step().requeue_after_seconds, Some(61));
    w.now = 110;
    assert!(!w.step().delete_job, "not after the expiry yet");
    w.now = 111;
    assert!(w.step().delete_job);
}

#[test]
fn suspend_deletes_everything_and_resume_recreates() {
    let mut w = chief_job("Never", "");
    w.step();
    w.run_all();
    w.step();
    w.job.spec.run_policy.suspend = Some(true);
    w.settle();
    assert!(w.pod_names().is_empty());
    assert!(w.service_names().is_empty());
    assert!(w.is(Suspended));
    assert!(!w.is(Running));
    assert!(w.status().start_time.is_none());
    w.job.spec.run_policy.suspend = Some(false);
    w.now = 100;
    let plan = w.step();
    assert_eq!(plan.create_pods.len(), 4);
    assert!(!w.is(Suspended));
    assert_eq!(w.status().start_time, Some(support::at(100)));
    assert!(plan.events.iter().any(|e| e.reason == "TFJobResumed"));
}

#[test]
fn scale_up_and_down_create_and_delete_the_highest_indices() {
    let mut w = World::new(manifest(
        "j",
        &[("Worker", 2, "Never"), ("PS", 1, "Never")],
        "  enableDynamicWorker: true\n",
    ));
    w.step();
    w.run_all();
    w.step();
    w.job
        .spec
        .tf_replica_specs
        .get_mut(&ReplicaType::Worker)
        .unwrap()
        .replicas = Some(4);
    let plan = w.step();
    let created: Vec<_> = plan
        .create_pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(created, ["j-worker-2", "j-worker-3"]);
    assert_eq!(plan.create_services.len(), 2);
    w.run_all();
    w.job
        .spec
        .tf_replica_specs
        .get_mut(&ReplicaType::Worker)
        .unwrap()
        .replicas = Some(1);
    let plan = w.step();
    assert_eq!(plan.delete_pods, ["j-worker-1", "j-worker-2", "j-worker-3"]);
    assert_eq!(
        plan.delete_services,
        ["j-worker-1", "j-worker-2", "j-worker-3"]
    );
    assert_eq!(w.pod_names(), ["j-ps-0", "j-worker-0"]);
}

#[test]
fn scaling_a_running_job_without_dynamic_workers_is_refused_until_reverted() {
    let mut w = World::new(manifest(
        "j",
        &[("Worker", 2, "Never"), ("PS", 1, "Never")],
        "",
    ));
    w.step();
    w.run_all();
    w.step();
    let set_workers = |w: &mut World, n| {
        w.job
            .spec
            .tf_replica_specs
            .get_mut(&ReplicaType::Worker)
            .unwrap()
            .replicas = Some(n);
    };
    for n in [3, 1] {
        set_workers(&mut w, n);
        let plan = w.step();
        assert!(
            plan.create_pods.is_empty() && plan.delete_pods.is_empty(),
            "{n}: {plan:?}"
        );
        assert!(plan.create_services.is_empty() && plan.delete_services.is_empty());
        let status = w.status();
        let refused = status.condition(ScaleRefused).unwrap();
        assert_eq!(refused.reason, "TFJobScaleRefused");
        assert!(
            refused.message.contains("Worker: 2 running"),
            "{}",
            refused.message
        );
        assert!(refused.message.contains("enableDynamicWorker"));
        assert_eq!(w.pod_names(), ["j-ps-0", "j-worker-0", "j-worker-1"]);
        assert!(w.step().events.is_empty(), "the warning is not repeated");
    }
    assert!(w.conditions().contains(&"ScaleRefused".to_string()));
    set_workers(&mut w, 2);
    let plan = w.step();
    assert_eq!(plan.events[0].reason, "TFJobScaleReverted");
    assert!(!w.status().is(ScaleRefused));
    assert!(plan.create_pods.is_empty());
}

#[test]
fn dynamic_workers_may_fail_without_failing_the_job() {
    let mut w = World::new(manifest(
        "j",
        &[
            ("Chief", 1, "Never"),
            ("Worker", 2, "Never"),
            ("PS", 1, "Never"),
        ],
        "  enableDynamicWorker: true\n",
    ));
    w.step();
    w.run_all();
    w.step();
    w.set_pod("j-worker-1", "Failed", Some(1), 0);
    w.step();
    assert!(!w.is(Failed));
    w.set_pod("j-ps-0", "Failed", Some(1), 0);
    w.step();
    assert!(w.is(Failed), "a PS failure still fails it");
}

#[test]
fn an_invalid_job_fails_with_the_validation_message_and_creates_nothing() {
    let mut job = manifest("j", &[("Worker", 2, "Never")], "");
    job.spec
        .tf_replica_specs
        .get_mut(&ReplicaType::Worker)
        .unwrap()
        .replicas = Some(-1);
    let mut w = World::new(job);
    let plan = w.step();
    assert!(plan.create_pods.is_empty());
    assert!(w.is(Failed));
    let failed = w.status().condition(Failed).cloned().unwrap();
    assert_eq!(failed.reason, "TFJobFailedValidation");
    assert!(
        failed
            .message
            .contains("spec.tfReplicaSpecs[Worker].replicas"),
        "{}",
        failed.message
    );
    assert!(w.is(Created));
}

#[test]
fn planning_is_deterministic() {
    let a = chief_job("ExitCode", "").step();
    let b = chief_job("ExitCode", "").step();
    assert_eq!(a, b);
}

#[test]
fn failure_policy_decides_which_permanent_failures_fail_the_job() {
    let policy = "  failurePolicy: {onPSFailure: false, maxWorkerFailurePercent: 50}\n";
    let mut w = World::new(manifest(
        "j",
        &[
            ("Chief", 1, "Never"),
            ("Worker", 4, "Never"),
            ("PS", 1, "Never"),
        ],
        policy,
    ));
    w.step();
    w.run_all();
    w.step();
    // The PS and two of four workers (50 %, not more) fail for good: the job goes on.
    w.set_pod("j-ps-0", "Failed", Some(1), 0);
    w.set_pod("j-worker-1", "Failed", Some(1), 0);
    w.set_pod("j-worker-2", "Failed", Some(1), 0);
    w.step();
    assert!(!w.status().is(Failed), "{:?}", w.conditions());
    // A third worker (75 %): it fails.
    w.set_pod("j-worker-3", "Failed", Some(1), 0);
    w.step();
    let status = w.status();
    let failed = status.condition(Failed).unwrap();
    assert!(
        failed.message.contains("3 Worker replica(s) failed"),
        "{}",
        failed.message
    );

    // The chief still fails the job by default.
    let mut w = World::new(manifest(
        "j",
        &[("Chief", 1, "Never"), ("Worker", 2, "Never")],
        policy,
    ));
    w.step();
    w.run_all();
    w.step();
    w.set_pod("j-chief-0", "Failed", Some(2), 0);
    w.step();
    assert!(w.status().is(Failed));
}

/// Under `--gang-scheduler gantry` the gang is the GPU pods: kube-scheduler calls the extender only
/// for pods requesting a managed GPU resource, so a CPU-only parameter server never reaches it.
#[test]
fn gantry_gangs_count_the_gpu_pods_only() {
    let gpu_job = |ps_gpu: &str, worker: &str, min_available: &str| {
        support::job(&format!(
            "apiVersion: kubeflow.org/v1\nkind: TFJob\nmetadata: {{name: g, namespace: ml, uid: uid-1}}\n\
             spec:\n  runPolicy: {{schedulingPolicy: {{{min_available}}}}}\n  tfReplicaSpecs:\n\
             \x20   PS:\n      replicas: 2\n      template:\n        spec:\n          containers:\n\
             \x20           - {{name: tensorflow, image: tf, resources: {{limits: {{{ps_gpu}}}}}}}\n\
             \x20   Worker:\n      replicas: 3\n      template:\n        spec:\n          containers:\n\
             \x20           - {{name: tensorflow, image: tf, resources: {{limits: {{{worker}}}}}}}\n"
        ))
    };
    let gang = |job: &gantry_tfjob::TFJob| gantry_planner::gantry_min_member(job);
    // 2 CPU-only PS + 3 GPU workers: a gang of 3, whole or shared GPUs alike.
    assert_eq!(gang(&gpu_job("", "nvidia.com/gpu: 1", "")), 3);
    assert_eq!(gang(&gpu_job("", "gantry.dev/gpu-milli: 250", "")), 3);
    assert_eq!(
        gang(&gpu_job("nvidia.com/gpu: 0", "nvidia.com/gpu: 2", "")),
        3
    );
    // GPUs everywhere: all five.
    assert_eq!(
        gang(&gpu_job("nvidia.com/gpu: 1", "nvidia.com/gpu: 1", "")),
        5
    );
    // minAvailable smaller than the GPU pods wins; larger is capped at the GPU pods.
    assert_eq!(
        gang(&gpu_job("", "nvidia.com/gpu: 1", "minAvailable: 2")),
        2
    );
    assert_eq!(
        gang(&gpu_job("", "nvidia.com/gpu: 1", "minAvailable: 5")),
        3
    );
    // No GPU pods at all: the plain count (the extender never sees these pods).
    assert_eq!(gang(&gpu_job("", "", "")), 5);

    // And that is the label every pod carries.
    let config = gantry_planner::PlanConfig {
        gang: gantry_planner::GangScheduler::Gantry,
        ..gantry_planner::PlanConfig::default()
    };
    let mut world = World::with_config(gpu_job("", "nvidia.com/gpu: 1", ""), config);
    let plan = world.step();
    assert_eq!(plan.create_pods.len(), 5);
    for pod in &plan.create_pods {
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[gantry_planner::GANTRY_MIN_MEMBER_LABEL], "3");
    }
}
