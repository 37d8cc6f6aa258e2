//! The shipped `deploy/scheduler/` manifests agree with the code: resource names, the extender
//! stanza, and the extender's address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gantry_scheduler::schema::{RESOURCE_GPU, RESOURCE_GPU_MILLI};
use serde_yaml::Value;

fn manifest(name: &str) -> Vec<Value> {
    gantry_testkit::deploy_manifest("scheduler", name)
}

#[test]
fn scheduler_configuration_has_the_extender_stanza() {
    let cm = &manifest("config.yaml")[0];
    let cfg: Value = serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(cfg["kind"], "KubeSchedulerConfiguration");
    assert_eq!(cfg["percentageOfNodesToScore"], 100);
    let profile = &cfg["profiles"][0];
    assert_eq!(profile["schedulerName"], "gantry-scheduler");
    let disabled: Vec<&str> = profile["plugins"]["score"]["disabled"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        disabled.contains(&"NodeResourcesFit")
            && disabled.contains(&"NodeResourcesBalancedAllocation")
    );
    let ext = &cfg["extenders"][0];
    assert_eq!(ext["nodeCacheCapable"], true);
    assert_eq!(
        (
            ext["filterVerb"].as_str(),
            ext["prioritizeVerb"].as_str(),
            ext["bindVerb"].as_str()
        ),
        (Some("filter"), Some("prioritize"), Some("bind"))
    );
    let managed: Vec<(&str, bool)> = ext["managedResources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["ignoredByScheduler"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(managed, [(RESOURCE_GPU, false), (RESOURCE_GPU_MILLI, true)]);

    // The extender listens where kube-scheduler calls it.
    let deployment = &manifest("deployment.yaml")[0];
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap();
    // No API proxy sidecar: the extender talks to the API server itself.
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kube-scheduler", "extender"]);
    let extender = containers.iter().find(|c| c["name"] == "extender").unwrap();
    let listen = extender["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "GANTRY_SCHEDULER_LISTEN")
        .unwrap()["value"]
        .as_str()
        .unwrap();
    assert_eq!(
        ext["urlPrefix"].as_str().unwrap(),
        format!("http://{listen}")
    );

    // The kubelet's probes reach the probe listener on the pod's IP.
    let env = |name: &str| {
        extender["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap().to_string())
    };
    let health = env("GANTRY_SCHEDULER_HEALTH_LISTEN").expect("a probe listener");
    assert!(health.starts_with("0.0.0.0:"), "{health}");
    let port: u64 = health.rsplit(':').next().unwrap().parse().unwrap();
    let probe_port = extender["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "probes")
        .unwrap()["containerPort"]
        .as_u64()
        .unwrap();
    assert_eq!(probe_port, port);
    assert_eq!(extender["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(extender["readinessProbe"]["httpGet"]["port"], "probes");
    assert_eq!(extender["livenessProbe"]["httpGet"]["path"], "/healthz");
}

#[test]
fn rbac_allows_the_extender_writes() {
    let docs = manifest("rbac.yaml");
    let role = docs
        .iter()
        .find(|d| {
            d["metadata"]["name"] == "gantry-scheduler-extender" && d["kind"] == "ClusterRole"
        })
        .unwrap();
    let rules = role["rules"].as_sequence().unwrap();
    let allows = |res: &str, verb: &str| {
        rules.iter().any(|r| {
            r["resources"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|x| x == res)
                && r["verbs"].as_sequence().unwrap().iter().any(|x| x == verb)
        })
    };
    // The watch-based cache lists and watches; bind patches and creates the Binding.
    for (res, verb) in [
        ("nodes", "get"),
        ("nodes", "list"),
        ("nodes", "watch"),
        ("pods", "get"),
        ("pods", "list"),
        ("pods", "watch"),
        ("pods", "patch"),
        ("pods/binding", "create"),
    ] {
        assert!(allows(res, verb), "RBAC does not allow {verb} {res}");
    }
}
