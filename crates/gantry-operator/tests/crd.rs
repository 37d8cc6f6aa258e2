//! `deploy/operator/crd.yaml` is the CRD generated from the types: regenerate it and fail on drift
//! (`GANTRY_BLESS=1` rewrites it). Also checks that every field of the types is in the schema and
//! that the CEL rules parse as the schema's own YAML.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::Value;

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/operator/crd.yaml")
}

#[test]
fn the_committed_crd_matches_the_types() {
    let yaml = gantry_operator::crd::crd_yaml().unwrap();
    if std::env::var_os("GANTRY_BLESS").is_some() {
        std::fs::write(committed(), &yaml).unwrap();
        return;
    }
    let want = std::fs::read_to_string(committed()).unwrap();
    assert!(
        want == yaml,
        "deploy/operator/crd.yaml drifted from the types; run `GANTRY_BLESS=1 cargo test -p gantry-operator --test crd` (or `gantry crd --out deploy/operator/crd.yaml`) and review the diff"
    );
}

#[test]
fn gantry_fields_are_in_the_schema() {
    let crd: Value = serde_yaml::from_str(&std::fs::read_to_string(committed()).unwrap()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let spec = &schema["spec"]["properties"];
    for field in [
        "runPolicy",
        "successPolicy",
        "tfReplicaSpecs",
        "enableDynamicWorker",
    ] {
        assert!(spec.get(field).is_some(), "spec.{field}");
    }
    let status = &schema["status"]["properties"];
    let replica_status = &status["replicaStatuses"]["additionalProperties"]["properties"];
    assert!(
        replica_status.get("recreated").is_some(),
        "Gantry's recreated count"
    );
    let conditions = &status["conditions"]["items"]["properties"]["type"]["enum"];
    assert!(
        conditions
            .as_array()
            .unwrap()
            .contains(&Value::from("ScaleRefused")),
        "{conditions}"
    );
    // The pod template is declared in full (no x-kubernetes-preserve-unknown-fields shortcut), so
    // the API server prunes nothing the planner reads.
    let template = &spec["tfReplicaSpecs"]["additionalProperties"]["properties"]["template"];
    assert!(template["properties"]["spec"]["properties"]["containers"].is_object());
}
