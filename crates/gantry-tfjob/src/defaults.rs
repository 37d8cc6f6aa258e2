//! Kubeflow's defaulting (`SetDefaults_TFJob`), with Gantry's one deliberate difference.

use k8s_openapi::api::core::v1::ContainerPort;

use crate::api::{
    CleanPodPolicy, RestartPolicy, SuccessPolicy, TFJob, DEFAULT_CONTAINER_NAME, DEFAULT_PORT,
    DEFAULT_PORT_NAME,
};

impl TFJob {
    /// The job with every default applied:
    ///
    /// - `replicas: 1` and `restartPolicy: Never` on every replica spec;
    /// - a `tfjob-port` port of 2222 on the `tensorflow` container when it has none;
    /// - `successPolicy: ""`;
    /// - `cleanPodPolicy: Running` when unset. **Deliberate difference:** Kubeflow's default is `None`,
    ///   which leaves PS and evaluator pods (which never exit) running forever after the job ends.
    ///
    /// Replica-type keys are already canonical (they are parsed case-insensitively). Idempotent.
    #[must_use]
    pub fn with_defaults(mut self) -> TFJob {
        let spec = &mut self.spec;
        spec.run_policy
            .clean_pod_policy
            .get_or_insert(CleanPodPolicy::Running);
        spec.success_policy.get_or_insert(SuccessPolicy::Default);
        for replica in spec.tf_replica_specs.values_mut() {
            replica.replicas.get_or_insert(1);
            replica.restart_policy.get_or_insert(RestartPolicy::Never);
            let Some(pod) = replica.template.spec.as_mut() else {
                continue;
            };
            let Some(container) = pod
                .containers
                .iter_mut()
                .find(|c| c.name == DEFAULT_CONTAINER_NAME)
            else {
                continue;
            };
            let ports = container.ports.get_or_insert_with(Vec::new);
            if !ports
                .iter()
                .any(|p| p.name.as_deref() == Some(DEFAULT_PORT_NAME))
            {
                ports.push(ContainerPort {
                    name: Some(DEFAULT_PORT_NAME.to_string()),
                    container_port: DEFAULT_PORT,
                    ..ContainerPort::default()
                });
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use crate::{parse_tfjob, CleanPodPolicy, ReplicaType, RestartPolicy, SuccessPolicy};

    const JOB: &str = r#"
apiVersion: kubeflow.org/v1
kind: TFJob
metadata: {name: mnist}
spec:
  tfReplicaSpecs:
    ps:
      template:
        spec:
          containers: [{name: tensorflow, image: tf}]
    Worker:
      replicas: 3
      restartPolicy: OnFailure
      template:
        spec:
          containers:
            - name: tensorflow
              image: tf
              ports: [{name: tfjob-port, containerPort: 3333}]
"#;

    #[test]
    fn defaults_follow_kubeflow_except_clean_pod_policy() {
        let job = parse_tfjob(JOB, "job.yaml", false)
            .unwrap()
            .job
            .with_defaults();
        let ps = &job.spec.tf_replica_specs[&ReplicaType::Ps];
        assert_eq!(ps.replicas, Some(1));
        assert_eq!(ps.restart_policy, Some(RestartPolicy::Never));
        let port = &ps.template.spec.as_ref().unwrap().containers[0]
            .ports
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("tfjob-port"), 2222)
        );
        let worker = &job.spec.tf_replica_specs[&ReplicaType::Worker];
        assert_eq!(worker.replicas, Some(3));
        assert_eq!(worker.restart_policy, Some(RestartPolicy::OnFailure));
        let ports = worker.template.spec.as_ref().unwrap().containers[0]
            .ports
            .as_ref()
            .unwrap();
        assert_eq!(
            ports.len(),
            1,
            "an existing tfjob-port is kept, not duplicated"
        );
        assert_eq!(ports[0].container_port, 3333);
        assert_eq!(job.spec.success_policy, Some(SuccessPolicy::Default));
        assert_eq!(
            job.spec.run_policy.clean_pod_policy,
            Some(CleanPodPolicy::Running)
        );
        assert_eq!(job.clone().with_defaults(), job, "idempotent");
    }
}
