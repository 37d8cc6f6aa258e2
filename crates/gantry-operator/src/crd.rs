//! The TFJob CustomResourceDefinition: the schema generated from the `gantry-tfjob` types, with CEL
//! rules (`x-kubernetes-validations`) so that `kubectl apply` itself rejects what the planner's
//! validation rejects, and the check that the CRD in a cluster is Gantry's.

use gantry_tfjob::TFJob;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The CRD's name.
pub const CRD_NAME: &str = "tfjobs.kubeflow.org";
/// The label that marks the CRD as Gantry's.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "gantry";

fn rule(rule: &str, message: &str) -> Value {
    json!({ "rule": rule, "message": message })
}

fn add_rules(schema: &mut Value, rules: Vec<Value>) {
    if let Some(object) = schema.as_object_mut() {
        object.insert("x-kubernetes-validations".to_string(), Value::Array(rules));
    }
}

/// The CRD as JSON: the generated schema, the CEL rules and Gantry's label.
///
/// The rules mirror `gantry_tfjob::validate` (the planner runs it too, for clusters where the CRD is
/// older than the operator): a DNS-1035 name; at least one replica type, only known ones
/// (case-insensitive), at most one Chief or Master; per replica a non-negative `replicas`, a
/// container named `tensorflow` and an image in every container; non-negative `backoffLimit`,
/// `ttlSecondsAfterFinished` and `schedulingPolicy.minAvailable`, positive `activeDeadlineSeconds`,
/// `failurePolicy.maxWorkerFailurePercent` within 0-100.
///
/// # Errors
/// [`Error::Serialise`] (not expected) or [`Error::Crd`] when the generated schema lacks a field the
/// rules hang on (a change of the types that this function must follow).
pub fn crd_json() -> Result<Value> {
    let mut crd = serde_json::to_value(TFJob::crd()).map_err(|source| Error::Serialise {
        what: "the TFJob CRD".to_string(),
        source,
    })?;
    crd["metadata"]["labels"] = json!({ MANAGED_BY_LABEL: MANAGED_BY });
    let missing = |what: &str| Error::Crd(format!("generated CRD schema has no {what}"));
    let version = crd
        .pointer_mut("/spec/versions/0")
        .ok_or_else(|| missing("version"))?;
    version["additionalPrinterColumns"] = json!([
        {"name": "State", "type": "string", "jsonPath": ".status.conditions[-1:].type"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]);
    let root = version
        .pointer_mut("/schema/openAPIV3Schema")
        .ok_or_else(|| missing("openAPIV3Schema"))?;
    add_rules(
        root,
        vec![rule(
            "size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
            "metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter, at most 63 characters)",
        )],
    );
    let spec = root
        .pointer_mut("/properties/spec")
        .ok_or_else(|| missing("spec"))?;
    let specs = spec
        .pointer_mut("/properties/tfReplicaSpecs")
        .ok_or_else(|| missing("spec.tfReplicaSpecs"))?;
    // Five replica types exist; the bound also keeps the CEL cost estimate of the nested rules small.
    specs["maxProperties"] = json!(5);
    add_rules(
        specs,
        vec![
            rule(
                "size(self) > 0",
                "spec.tfReplicaSpecs must list at least one replica type",
            ),
            rule(
                "self.all(k, k.lowerAscii() in ['ps', 'worker', 'chief', 'master', 'evaluator'])",
                "spec.tfReplicaSpecs keys must be PS, Worker, Chief, Master or Evaluator",
            ),
            rule(
                "size(self.filter(k, k.lowerAscii() in ['chief', 'master'])) <= 1",
                "spec.tfReplicaSpecs must not have more than 1 Chief or Master role",
            ),
        ],
    );
    let replica = specs
        .pointer_mut("/additionalProperties")
        .ok_or_else(|| missing("spec.tfReplicaSpecs values"))?;
    add_rules(
        replica,
        vec![
            rule("!has(self.replicas) || self.replicas >= 0", "replicas must be non-negative"),
            rule(
                "has(self.template) && has(self.template.spec) && self.template.spec.containers.exists(c, c.name == 'tensorflow')",
                "template.spec.containers must have at least one container with name tensorflow",
            ),
            rule(
                "!has(self.template) || !has(self.template.spec) || self.template.spec.containers.all(c, has(c.image) && size(c.image) > 0)",
                "template.spec.containers[*].image must be specified",
            ),
        ],
    );
    let failure = spec
        .pointer_mut("/properties/failurePolicy")
        .ok_or_else(|| missing("spec.failurePolicy"))?;
    add_rules(
        failure,
        vec![rule(
            "!has(self.maxWorkerFailurePercent) || (self.maxWorkerFailurePercent >= 0 && self.maxWorkerFailurePercent <= 100)",
            "spec.failurePolicy.maxWorkerFailurePercent must be between 0 and 100",
        )],
    );
    let run = spec
        .pointer_mut("/properties/runPolicy")
        .ok_or_else(|| missing("spec.runPolicy"))?;
    add_rules(
        run,
        vec![
            rule("!has(self.backoffLimit) || self.backoffLimit >= 0", "spec.runPolicy.backoffLimit must be non-negative"),
            rule(
                "!has(self.ttlSecondsAfterFinished) || self.ttlSecondsAfterFinished >= 0",
                "spec.runPolicy.ttlSecondsAfterFinished must be non-negative",
            ),
            rule(
                "!has(self.activeDeadlineSeconds) || self.activeDeadlineSeconds > 0",
                "spec.runPolicy.activeDeadlineSeconds must be positive",
            ),
            rule(
                "!has(self.schedulingPolicy) || !has(self.schedulingPolicy.minAvailable) || self.schedulingPolicy.minAvailable >= 0",
                "spec.runPolicy.schedulingPolicy.minAvailable must be non-negative",
            ),
        ],
    );
    Ok(crd)
}

/// The CRD as YAML, byte-stable (what `gantry crd` prints and `deploy/operator/crd.yaml` holds).
///
/// # Errors
/// As [`crd_json`].
pub fn crd_yaml() -> Result<String> {
    let crd = crd_json()?;
    let yaml =
        serde_yaml::to_string(&crd).map_err(|e| Error::Crd(format!("rendering YAML: {e}")))?;
    Ok(yaml)
}

/// Decides whether this operator may reconcile TFJobs, given the CRD found in the cluster.
///
/// # Errors
/// [`Error::Crd`] when the CRD is missing, or is not labelled `app.kubernetes.io/managed-by: gantry`
/// (Kubeflow's training-operator installed it and may still be running), with the way out.
pub fn check_ownership(crd: Option<&CustomResourceDefinition>) -> Result<()> {
    let Some(crd) = crd else {
        return Err(Error::Crd(format!(
            "the {CRD_NAME} CRD is not installed: run `gantry crd | kubectl apply --server-side -f -` (or apply deploy/operator/crd.yaml)"
        )));
    };
    let labels = crd.metadata.labels.clone().unwrap_or_default();
    match labels.get(MANAGED_BY_LABEL).map(String::as_str) {
        Some(MANAGED_BY) => Ok(()),
        other => Err(Error::Crd(format!(
            "the {CRD_NAME} CRD belongs to another operator ({MANAGED_BY_LABEL}={}); two controllers would fight over every TFJob. \
             To migrate from Kubeflow's training-operator: scale its Deployment to 0 (kubectl -n kubeflow scale deployment training-operator --replicas=0), \
             then replace the CRD in place, keeping every TFJob: gantry crd | kubectl apply --server-side --force-conflicts -f - ; then start gantry operator",
            other.unwrap_or("<unset>")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_carries_the_rules_and_the_label() {
        let crd = crd_json().unwrap();
        assert_eq!(crd["metadata"]["name"], CRD_NAME);
        assert_eq!(crd["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let rules = |v: &Value| v["x-kubernetes-validations"].as_array().map_or(0, Vec::len);
        assert_eq!(rules(root), 1);
        assert_eq!(
            rules(&root["properties"]["spec"]["properties"]["tfReplicaSpecs"]),
            3
        );
        assert_eq!(
            rules(
                &root["properties"]["spec"]["properties"]["tfReplicaSpecs"]["additionalProperties"]
            ),
            3
        );
        assert_eq!(
            rules(&root["properties"]["spec"]["properties"]["runPolicy"]),
            4
        );
        assert_eq!(
            crd["spec"]["versions"][0]["subresources"]["status"],
            json!({})
        );
    }

    #[test]
    fn ownership() {
        assert!(check_ownership(None)
            .unwrap_err()
            .to_string()
            .contains("not installed"));
        let ours: CustomResourceDefinition = serde_json::from_value(crd_json().unwrap()).unwrap();
        check_ownership(Some(&ours)).unwrap();
        let mut kubeflow = ours;
        kubeflow.metadata.labels = None;
        let err = check_ownership(Some(&kubeflow)).unwrap_err().to_string();
        assert!(
            err.contains("another operator") && err.contains("training-operator"),
            "{err}"
        );
    }
}
