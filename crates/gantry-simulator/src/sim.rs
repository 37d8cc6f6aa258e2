//! The authors' simulation method (Weng et al., ATC'23, and their public simulator).
//!
//! # Flow
//! 1. Keep every original pod and shuffle them with the seed.
//! 2. Append copies drawn uniformly from the original pods until the next copy would take the
//!    total GPU request past `tune` × the cluster's GPU capacity.
//! 3. Place pods one by one in that order; none ever leaves.
//! 4. Record, at every integer percent of arrived GPU demand (arrived GPU request / cluster
//!    GPU capacity), the GPU allocation ratio, the fragmentation amount (% of cluster GPU) and
//!    ratio (% of idle GPU), and failed pods by reason.
//!
//! The FGD target workload comes from the original pod list, before tuning.

use std::time::{Duration, Instant};

use gantry_placement::{
    Cluster, FailReason, NodeSpec, PodSpec, Policy, Request, Rng, Scheduler, TargetWorkload,
    TieBreak,
};
use serde::Serialize;

use crate::Result;

/// Share of pods the FGD target workload covers.
pub const DEFAULT_COVERAGE: f64 = 0.95;

/// One simulation run's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    pub policy: Policy,
    pub seed: u64,
    /// Arrived GPU demand as a multiple of cluster GPU capacity (the authors use 1.3).
    pub tune: f64,
    /// Share of pods the target workload must cover (the authors use 0.95).
    pub coverage: f64,
    pub tie_break: TieBreak,
}

/// The cluster at one integer percent of arrived GPU demand.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Record {
    pub arrived_pct: u32,
    pub arrived_gpu_milli: u64,
    pub allocated_gpu_milli: u64,
    /// Allocated milli-GPU / total milli-GPU, in %.
    pub allocation_pct: f64,
    /// Expected fragmentation / total milli-GPU, in %.
    pub frag_amount_pct: f64,
    /// Expected fragmentation / idle milli-GPU, in %.
    pub frag_ratio_pct: f64,
    pub pods_arrived: u64,
    pub pods_placed: u64,
    pub failed_gpu_model: u64,
    pub failed_cpu: u64,
    pub failed_memory: u64,
    pub failed_gpu: u64,
}

impl Record {
    /// Unallocated GPU at this point, in % of cluster GPU.
    pub fn unallocated_pct(&self) -> f64 {
        100.0 - self.allocation_pct
    }
}

/// One run's records and counts.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub policy: Policy,
    pub seed: u64,
    pub tune: f64,
    pub pods: usize,
    pub total_gpu_milli: u64,
    pub records: Vec<Record>,
    /// Time spent in placement decisions alone.
    pub decide_time: Duration,
}

impl RunResult {
    /// The record at `pct` % arrival, if the run got that far.
    pub fn at(&self, pct: u32) -> Option<&Record> {
        self.records.iter().find(|r| r.arrived_pct == pct)
    }

    /// Placement decisions per second, decisions alone.
    pub fn decisions_per_second(&self) -> f64 {
        let s = self.decide_time.as_secs_f64();
        if s > 0.0 {
            self.pods as f64 / s
        } else {
            0.0
        }
    }
}

fn order_seed(seed: u64) -> u64 {
    seed
}

fn policy_seed(seed: u64) -> u64 {
    seed ^ 0xA5A5_5A5A_C3C3_3C3C
}

/// The arrival order: indices into `pods`, the originals shuffled, then uniform copies up to
/// `tune` × `total_gpu_milli` of GPU request.
pub fn arrival_order(pods: &[PodSpec], total_gpu_milli: u64, seed: u64, tune: f64) -> Vec<usize> {
    let mut rng = Rng::seed_from_u64(order_seed(seed));
    let mut order: Vec<usize> = (0..pods.len()).collect();
    rng.shuffle(&mut order);
    let mut requested: u64 = pods.iter().map(PodSpec::gpu_request).sum();
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let limit = (tune * total_gpu_milli as f64).floor().max(0.0) as u64;
    if pods.is_empty() {
        return order;
    }
    loop {
        let i = rng.below(pods.len());
        let next = requested + pods[i].gpu_request();
        if next > limit {
            break;
        }
        requested = next;
        order.push(i);
    }
    order
}

/// Runs one simulation. `progress` is called now and then with the number of pods placed
/// since the last call.
pub fn simulate(
    nodes: &[NodeSpec],
    pods: &[PodSpec],
    cfg: &SimConfig,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RunResult> {
    let cluster = Cluster::new(nodes)?;
    let requests: Vec<Request> = pods
        .iter()
        .map(|p| cluster.request(p))
        .collect::<std::result::Result<_, _>>()?;
    let workload = TargetWorkload::from_pods(pods, cfg.coverage);
    let total = cluster.total_gpu_milli();
    let order = arrival_order(pods, total, cfg.seed, cfg.tune);
    let mut sched = Scheduler::new(cluster, cfg.policy, Some(&workload), policy_seed(cfg.seed))?
        .with_tie_break(cfg.tie_break);

    let mut records = Vec::new();
    let mut arrived = 0u64;
    let mut next_pct = 0u32;
    let mut placed = 0u64;
    let mut failed = [0u64; 4];
    let mut decide_time = Duration::ZERO;
    let mut pending_progress = 0u64;
    let record = |sched: &Scheduler, pct, arrived, n, placed, failed: &[u64; 4]| {
        let c = sched.cluster();
        let frag = sched.fragmentation();
        let idle = total.saturating_sub(c.allocated_gpu_milli());
        #[allow(clippy::cast_precision_loss)]
        Record {
            arrived_pct: pct,
            arrived_gpu_milli: arrived,
            allocated_gpu_milli: c.allocated_gpu_milli(),
            allocation_pct: pct_of(c.allocated_gpu_milli() as f64, total as f64),
            frag_amount_pct: pct_of(frag, total as f64),
            frag_ratio_pct: pct_of(frag, idle as f64),
            pods_arrived: n,
            pods_placed: placed,
            failed_gpu_model: failed[0],
            failed_cpu: failed[1],
            failed_memory: failed[2],
            failed_gpu: failed[3],
        }
    };
    records.push(record(&sched, 0, 0, 0, 0, &failed));
    next_pct += 1;
    for (n, &i) in order.iter().enumerate() {
        let req = &requests[i];
        let start = Instant::now();
        let outcome = sched.place(req);
        decide_time += start.elapsed();
        match outcome {
            Ok(_) => placed += 1,
            Err(reason) => {
                let k = FailReason::ALL
                    .iter()
                    .position(|r| *r == reason)
                    .unwrap_or(3);
                failed[k] += 1;
            }
        }
        arrived += req.gpu_request();
        while total > 0 && arrived * 100 >= u64::from(next_pct) * total {
            records.push(record(
                &sched,
                next_pct,
                arrived,
                n as u64 + 1,
                placed,
                &failed,
            ));
            next_pct += 1;
        }
        pending_progress += 1;
        if pending_progress == 256 {
            progress(pending_progress);
            pending_progress = 0;
        }
    }
    progress(pending_progress);
    Ok(RunResult {
        policy: cfg.policy,
        seed: cfg.seed,
        tune: cfg.tune,
        pods: order.len(),
        total_gpu_milli: total,
        records,
        decide_time,
    })
}

fn pct_of(x: f64, of: f64) -> f64 {
    if of > 0.0 {
        100.0 * x / of
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(n: u8, m: u16) -> PodSpec {
        PodSpec {
            cpu_milli: 1000,
            memory_mib: 0,
            num_gpu: n,
            gpu_milli: m,
            gpu_models: vec![],
        }
    }

    #[test]
    fn arrival_order_keeps_originals_and_stops_before_limit() {
        let pods = vec![pod(1, 500), pod(1, 1000), pod(0, 0), pod(2, 1000)];
        let order = arrival_order(&pods, 10_000, 42, 1.3);
        let mut first: Vec<usize> = order[..4].to_vec();
        first.sort_unstable();
        assert_eq!(first, [0, 1, 2, 3]);
        let total: u64 = order.iter().map(|&i| pods[i].gpu_request()).sum();
        assert!(total <= 13_000, "{total}");
        assert!(total + 2000 > 13_000 || order.len() > 4);
        assert_eq!(
            order,
            arrival_order(&pods, 10_000, 42, 1.3),
            "deterministic"
        );
        assert_ne!(order, arrival_order(&pods, 10_000, 43, 1.3));
    }
}
