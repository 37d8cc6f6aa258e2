//! Properties of the engine on random clusters and pod streams, every policy.

use gantry_placement::{
    evaluate, Cluster, NodeSpec, PodSpec, Policy, Request, Scheduler, TargetWorkload, TieBreak,
    MILLI,
};
use proptest::prelude::*;

const MODELS: [&str; 3] = ["T4", "V100", "G2"];

fn node_strategy() -> impl Strategy<Value = NodeSpec> {
    (
        prop::sample::select(vec![0u8, 1, 2, 4, 8]),
        0usize..3,
        1u32..=64,
        1u64..=64,
    )
        .prop_map(|(gpus, m, cpu, mem)| NodeSpec {
            name: String::new(),
            cpu_milli: cpu * 2000,
            memory_mib: mem * 4096,
            gpus,
            gpu_model: (gpus > 0).then(|| MODELS[m].to_string()),
        })
}

fn pod_strategy() -> impl Strategy<Value = PodSpec> {
    (
        prop::sample::select(vec![0u8, 1, 1, 1, 2, 4, 8]),
        prop::sample::select(vec![100u16, 250, 300, 500, 700, 1000]),
        1u32..=32,
        0u64..=32,
        prop::sample::select(vec![vec![], vec!["T4"], vec!["V100", "G2"], vec!["A100"]]),
    )
        .prop_map(|(num_gpu, milli, cpu, mem, models)| {
            let gpu_milli = match num_gpu {
                0 => 0,
                1 => milli,
                _ => MILLI,
            };
            PodSpec {
                cpu_milli: cpu * 1000,
                memory_mib: mem * 1024,
                num_gpu,
                gpu_milli,
                gpu_models: models.into_iter().map(String::from).collect(),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every placement fits, uses `num_gpu` distinct valid GPUs that had room, never drives any
    /// capacity negative, scores the best of all nodes; a failure means no node fits.
    #[test]
    fn placements_fit_and_are_the_best(
        nodes in prop::collection::vec(node_strategy(), 1..24),
        pods in prop::collection::vec(pod_strategy(), 1..120),
        seed in any::<u64>(),
        uniform in any::<bool>(),
    ) {
        let workload = TargetWorkload::from_pods(&pods, 0.95);
        for policy in Policy::ALL {
            let cluster = Cluster::new(&nodes).unwrap();
            let tie = if uniform { TieBreak::Uniform } else { TieBreak::NodeOrder };
            let mut s = Scheduler::new(cluster, policy, Some(&workload), seed)
                .unwrap()
                .with_tie_break(tie);
            let mut allocated = 0u64;
            for pod in &pods {
                let req: Request = s.cluster().request(pod).unwrap();
                let before = s.cluster().clone();
                let frags = s.node_fragmentation().to_vec();
                let best = before
                    .nodes()
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| n.fits(&req))
                    .filter_map(|(i, n)| {
                        evaluate(policy, n, &req, None, 0.0)
                            .or_else(|| evaluate_with(policy, n, &req, &workload, &before, frags[i]))
                            .map(|e| e.score)
                    })
                    .max();
                match s.place(&req) {
                    Ok(p) => {
                        let n = before.node(p.node);
                        prop_assert!(n.fits(&req), "{policy}: chosen node does not fit");
                        prop_assert_eq!(p.gpus.len(), usize::from(req.num_gpu));
                        for g in p.gpus.iter() {
                            prop_assert!(g < usize::from(n.gpu_count));
                            prop_assert!(n.gpu_free[g] >= req.gpu_milli);
                        }
                        let score = evaluate_with(policy, n, &req, &workload, &before, frags[p.node])
                            .map(|e| e.score);
                        prop_assert_eq!(score, best, "{} did not pick a best-scored node", policy);
                        allocated += req.gpu_request();
                    }
                    Err(_) => {
                        prop_assert!(before.nodes().iter().all(|n| !n.fits(&req)),
                            "{policy}: failed although a node fits");
                    }
                }
                for n in s.cluster().nodes() {
                    prop_assert!(n.cpu_free <= n.cpu_capacity);
                    prop_assert!(n.memory_free <= n.memory_capacity);
                    prop_assert!(n.gpus().iter().all(|&g| g <= MILLI));
                }
            }
            prop_assert_eq!(s.cluster().allocated_gpu_milli(), allocated);
            let free: u64 = s.cluster().nodes().iter().map(|n| u64::from(n.gpu_free_total())).sum();
            prop_assert_eq!(free + allocated, s.cluster().total_gpu_milli());
        }
    }

    /// The same seed gives the same placements; the result does not depend on the score cache.
    #[test]
    fn deterministic_for_a_seed(
        nodes in prop::collection::vec(node_strategy(), 1..16),
        pods in prop::collection::vec(pod_strategy(), 1..60),
        seed in any::<u64>(),
    ) {
        let workload = TargetWorkload::from_pods(&pods, 0.95);
        for policy in Policy::ALL {
            let run = || {
                let mut s = Scheduler::new(Cluster::new(&nodes).unwrap(), policy, Some(&workload), seed).unwrap();
                pods.iter()
                    .map(|p| { let r = s.cluster().request(p).unwrap(); s.place(&r).map(|x| (x.node, x.gpus)) })
                    .collect::<Vec<_>>()
            };
            prop_assert_eq!(run(), run());
        }
    }
}

/// Scores a node with the fragmentation model (for the FGD family), from scratch.
fn evaluate_with(
    policy: Policy,
    node: &gantry_placement::NodeState,
    req: &Request,
    workload: &TargetWorkload,
    cluster: &Cluster,
    node_frag: f64,
) -> Option<gantry_placement::Evaluation> {
    let frag = gantry_placement::Fragmentation::new(workload, cluster);
    let fresh = frag.node(node.model, node.cpu_free, node.gpus());
    assert_eq!(fresh, node_frag, "cached node fragmentation is stale");
    evaluate(policy, node, req, Some(&frag), fresh)
}
