//! The shipped `deploy/device-plugin/` manifests agree with the code: the node name from the
//! downward API, and RBAC for every API call the plugin makes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_yaml::Value;

fn manifest(name: &str) -> Vec<Value> {
    gantry_testkit::deploy_manifest("device-plugin", name)
}

#[test]
fn the_daemonset_knows_its_node_and_runs_as_its_service_account() {
    let daemonset = &manifest("daemonset.yaml")[0];
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "gantry-device-plugin");
    let env = pod["containers"][0]["env"].as_sequence().unwrap();
    let node = env.iter().find(|e| e["name"] == "NODE_NAME").unwrap();
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
}

#[test]
fn rbac_allows_every_call_the_plugin_makes() {
    let docs = manifest("rbac.yaml");
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap();
    assert_eq!(
        kind("ServiceAccount")["metadata"]["name"],
        "gantry-device-plugin"
    );
    let binding = kind("ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["name"], "gantry-device-plugin");
    assert_eq!(
        binding["roleRef"]["name"],
        kind("ClusterRole")["metadata"]["name"]
    );
    let rules = kind("ClusterRole")["rules"].as_sequence().unwrap();
    let allowed = |resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r["apiGroups"][0] == ""
                && r["resources"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
                && r["verbs"].as_sequence().unwrap().iter().any(|x| x == verb)
        })
    };
    // Publishing (PATCH /api/v1/nodes/{name}) and the shared Allocate (GET /api/v1/pods, PATCH a pod).
    for (resource, verb) in [
        ("nodes", "get"),
        ("nodes", "patch"),
        ("pods", "list"),
        ("pods", "watch"),
        ("pods", "get"),
        ("pods", "patch"),
    ] {
        assert!(allowed(resource, verb), "{verb} {resource}");
    }
    assert!(!allowed("nodes", "delete") && !allowed("pods", "delete"));
}
