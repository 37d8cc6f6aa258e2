//! Properties of the planner over generated jobs.

mod support;

use std::collections::BTreeSet;

use proptest::prelude::*;
use support::{manifest, World};

fn jobs() -> impl Strategy<Value = (Option<i32>, i32, i32, i32, bool)> {
    (
        prop::option::of(0..2i32).prop_map(|c| c.filter(|n| *n > 0)),
        0..6i32,
        0..4i32,
        0..2i32,
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The first plan creates one pod and one service per replica, with unique deterministic names,
    /// a TF_CONFIG that lists every replica exactly when there is more than one; a second plan creates
    /// nothing more.
    #[test]
    fn first_plan_creates_each_replica_once((chief, workers, ps, evaluators, dynamic) in jobs()) {
        let mut specs = vec![("Worker", workers, "ExitCode"), ("PS", ps, "Never")];
        if let Some(c) = chief {
            specs.push(("Chief", c, "Never"));
        }
        if evaluators > 0 {
            specs.push(("Evaluator", evaluators, "Never"));
        }
        let extra = if dynamic { "  enableDynamicWorker: true\n" } else { "" };
        let mut w = World::new(manifest("p", &specs, extra));
        let plan = w.step();
        let total: i32 = specs.iter().map(|(_, n, _)| n).sum();
        let names: BTreeSet<String> = plan.create_pods.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        prop_assert_eq!(names.len(), usize::try_from(total).unwrap());
        prop_assert_eq!(plan.create_services.len(), names.len());
        for pod in &plan.create_pods {
            let env = pod.spec.as_ref().unwrap().containers[0].env.clone().unwrap_or_default();
            let tf = env.iter().find(|e| e.name == "TF_CONFIG");
            prop_assert_eq!(tf.is_some(), total != 1, "TF_CONFIG only for distributed jobs");
            if let (Some(tf), false) = (tf, dynamic) {
                let v: serde_json::Value = serde_json::from_str(tf.value.as_deref().unwrap()).unwrap();
                let listed: usize = v["cluster"].as_object().unwrap().values().map(|a| a.as_array().unwrap().len()).sum();
                prop_assert_eq!(listed, usize::try_from(total).unwrap());
            }
        }
        let again = w.step();
        prop_assert!(again.create_pods.is_empty() && again.create_services.is_empty());
    }
}
