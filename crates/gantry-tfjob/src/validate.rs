//! The checks of Kubeflow's TFJob admission webhook (`release-1.9`), and a few it forgot.

use crate::api::{TFJob, DEFAULT_CONTAINER_NAME};
use crate::error::{Error, FieldError, Result};

/// Whether `name` is a DNS-1035 label: at most 63 characters of `[a-z0-9-]`, starting with a letter and
/// ending with a letter or digit.
pub fn is_dns1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-'
}

/// Validates a job as Kubeflow's webhook does, collecting every failure:
///
/// - `metadata.name` is a DNS-1035 label;
/// - `spec.tfReplicaSpecs` is not empty; every replica has containers, an image in each, and one
///   container named `tensorflow`;
/// - at most one of Chief and Master;
/// - and, beyond Kubeflow: `replicas`, `backoffLimit`, `ttlSecondsAfterFinished` and
///   `schedulingPolicy.minAvailable` are not negative, `activeDeadlineSeconds` is positive, and
///   Gantry's `failurePolicy.maxWorkerFailurePercent` is within 0-100.
///
/// # Errors
/// [`Error::Invalid`] with one [`FieldError`] per failure.
pub fn validate(job: &TFJob) -> Result<()> {
    let mut errors = Vec::new();
    let name = job.name();
    if !is_dns1035_label(name) {
        errors.push(FieldError::new(
            "metadata.name",
            format!(
                "{name:?} is not a DNS-1035 label (lower-case letters, digits and '-', starting with a letter, at most 63 characters)"
            ),
        ));
    }

    let specs = &job.spec.tf_replica_specs;
    if specs.is_empty() {
        errors.push(FieldError::new(
            "spec.tfReplicaSpecs",
            "must list at least one replica type",
        ));
    }
    for (rtype, spec) in specs {
        let path = format!("spec.tfReplicaSpecs[{rtype}]");
        if let Some(replicas) = spec.replicas {
            if replicas < 0 {
                errors.push(FieldError::new(
                    format!("{path}.replicas"),
                    format!("must be non-negative, got {replicas}"),
                ));
            }
        }
        let containers_path = format!("{path}.template.spec.containers");
        let containers = spec
            .template
            .spec
            .as_ref()
            .map(|p| p.containers.as_slice())
            .unwrap_or_default();
        if containers.is_empty() {
            errors.push(FieldError::new(
                containers_path.clone(),
                "must be specified",
            ));
        }
        for (i, container) in containers.iter().enumerate() {
            if container.image.as_deref().unwrap_or_default().is_empty() {
                errors.push(FieldError::new(
                    format!("{containers_path}[{i}].image"),
                    "must be specified",
                ));
            }
        }
        if !containers.iter().any(|c| c.name == DEFAULT_CONTAINER_NAME) {
            errors.push(FieldError::new(
                containers_path,
                format!("must have at least one container with name {DEFAULT_CONTAINER_NAME}"),
            ));
        }
    }
    if specs.keys().filter(|t| t.is_chief_or_master()).count() > 1 {
        errors.push(FieldError::new(
            "spec.tfReplicaSpecs",
            "must not have more than 1 Chief or Master role",
        ));
    }

    let run = &job.spec.run_policy;
    let non_negative = [
        ("spec.runPolicy.backoffLimit", run.backoff_limit),
        (
            "spec.runPolicy.ttlSecondsAfterFinished",
            run.ttl_seconds_after_finished,
        ),
        (
            "spec.runPolicy.schedulingPolicy.minAvailable",
            run.scheduling_policy.as_ref().and_then(|s| s.min_available),
        ),
    ];
    for (field, value) in non_negative {
        if let Some(v) = value.filter(|v| *v < 0) {
            errors.push(FieldError::new(
                field,
                format!("must be non-negative, got {v}"),
            ));
        }
    }
    if let Some(v) = run.active_deadline_seconds.filter(|v| *v <= 0) {
        errors.push(FieldError::new(
            "spec.runPolicy.activeDeadlineSeconds",
            format!("must be positive, got {v}"),
        ));
    }

    if let Some(p) = job
        .spec
        .failure_policy
        .as_ref()
        .and_then(|f| f.max_worker_failure_percent)
        .filter(|p| !(0..=100).contains(p))
    {
        errors.push(FieldError::new(
            "spec.failurePolicy.maxWorkerFailurePercent",
            format!("must be between 0 and 100, got {p}"),
        ));
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid {
            name: name.to_string(),
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_tfjob;

    fn check(text: &str) -> Vec<String> {
        let job = parse_tfjob(text, "t", false).unwrap().job;
        match validate(&job) {
            Ok(()) => Vec::new(),
            Err(Error::Invalid { errors, .. }) => errors.iter().map(ToString::to_string).collect(),
            Err(e) => panic!("{e}"),
        }
    }

    fn job(name: &str, specs: &str) -> String {
        format!("apiVersion: kubeflow.org/v1\nkind: TFJob\nmetadata: {{name: {name}}}\nspec:\n  tfReplicaSpecs:\n{specs}")
    }

    fn replica(key: &str, extra: &str, containers: &str) -> String {
        format!("    {key}:\n{extra}      template:\n        spec:\n          containers: {containers}\n")
    }

    const TF: &str = "[{name: tensorflow, image: tf}]";

    #[test]
    fn dns1035_names() {
        for ok in ["a", "mnist", "tf-job-1", &"a".repeat(63)] {
            assert!(is_dns1035_label(ok), "{ok}");
        }
        for bad in ["", "1job", "Job", "job-", "job_1", "job.x", &"a".repeat(64)] {
            assert!(!is_dns1035_label(bad), "{bad}");
        }
    }

    #[test]
    fn a_valid_job_passes() {
        assert_eq!(
            check(&job("ok", &replica("Worker", "", TF))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn table_of_invalid_jobs() {
        let cases: [(String, &str); 8] = [
            (job("Bad_Name", &replica("Worker", "", TF)), "metadata.name: \"Bad_Name\" is not a DNS-1035 label"),
            (job("j", "    {}\n"), "spec.tfReplicaSpecs: must list at least one replica type"),
            (job("j", &replica("Worker", "", "[{name: main, image: tf}]")),
             "spec.tfReplicaSpecs[Worker].template.spec.containers: must have at least one container with name tensorflow"),
            (job("j", &replica("Worker", "", "[]")), "spec.tfReplicaSpecs[Worker].template.spec.containers: must be specified"),
            (job("j", &replica("PS", "", "[{name: tensorflow}]")), "spec.tfReplicaSpecs[PS].template.spec.containers[0].image: must be specified"),
            (job("j", &replica("Worker", "      replicas: -2\n", TF)), "spec.tfReplicaSpecs[Worker].replicas: must be non-negative, got -2"),
            (job("j", &format!("{}{}", replica("Chief", "", TF), replica("master", "", TF))),
             "spec.tfReplicaSpecs: must not have more than 1 Chief or Master role"),
            (job("j", &replica("Worker", "", TF)).replace("spec:\n  tfReplicaSpecs", "spec:\n  runPolicy: {backoffLimit: -1, activeDeadlineSeconds: 0}\n  tfReplicaSpecs"),
             "spec.runPolicy.backoffLimit: must be non-negative, got -1"),
        ];
        for (text, want) in cases {
            let got = check(&text);
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "want {want:?} in {got:?}"
            );
        }
    }

    #[test]
    fn every_failure_is_reported_at_once() {
        let text = job(
            "Bad",
            &replica("Worker", "      replicas: -1\n", "[{name: main}]"),
        );
        assert_eq!(check(&text).len(), 4, "{:?}", check(&text));
    }
}
