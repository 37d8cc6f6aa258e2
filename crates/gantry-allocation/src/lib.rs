#![doc = include_str!("../README.md")]

use std::collections::{BTreeMap, BTreeSet};

use gantry_gpu::NodeInventory;
#[cfg(test)]
use gantry_gpu::Topology;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("asked for {size} GPU(s) but only {available} are available")]
    NotEnough { size: usize, available: usize },
    #[error("must-include GPU {0} is not among the available ones")]
    MustIncludeUnavailable(String),
    #[error("{must} GPU(s) must be included but only {size} were asked for")]
    MustIncludeTooMany { must: usize, size: usize },
    #[error("GPU {0} is listed twice")]
    Duplicate(String),
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotEnough { .. } => "not_enough",
            Error::MustIncludeUnavailable(_) => "must_include_unavailable",
            Error::MustIncludeTooMany { .. } => "must_include_too_many",
            Error::Duplicate(_) => "duplicate",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Above this many candidate sets the search is greedy instead of exhaustive.
const EXHAUSTIVE_LIMIT: u128 = 4096;

/// How a set of GPUs ranks; larger is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct SetScore {
    weakest_link: u32,
    total_links: u32,
    /// Negated NUMA span: fewer NUMA nodes is better.
    numa_nodes: std::cmp::Reverse<usize>,
}

/// The GPU facts selection needs: a dense matrix of link ranks and each GPU's NUMA node, so that scoring
/// a candidate set allocates nothing (GetPreferredAllocation scores thousands of sets per call).
#[derive(Debug, Clone)]
pub struct TopologyView {
    /// GPU index → dense position.
    position: BTreeMap<u32, usize>,
    ranks: Vec<u32>,
    numa: Vec<Option<u32>>,
}

impl TopologyView {
    pub fn new(inventory: &NodeInventory) -> Self {
        let position: BTreeMap<u32, usize> = inventory
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| (g.index, i))
            .collect();
        let n = inventory.gpus.len();
        let mut ranks = vec![0; n * n];
        for (i, a) in inventory.gpus.iter().enumerate() {
            for (j, b) in inventory.gpus.iter().enumerate() {
                // An unknown link ranks below every known one.
                ranks[i * n + j] = inventory
                    .topology
                    .link(a.index, b.index)
                    .map_or(0, |l| l.rank());
            }
        }
        Self {
            position,
            ranks,
            numa: inventory.gpus.iter().map(|g| g.numa_node).collect(),
        }
    }

    fn link_rank(&self, a: u32, b: u32) -> u32 {
        match (self.position.get(&a), self.position.get(&b)) {
            (Some(&i), Some(&j)) => self.ranks[i * self.numa.len() + j],
            _ => 0,
        }
    }

    fn numa_of(&self, gpu: u32) -> Option<u32> {
        self.position.get(&gpu).and_then(|&i| self.numa[i])
    }

    fn score(&self, set: &[u32]) -> SetScore {
        let mut weakest = u32::MAX;
        let mut total = 0;
        for (i, &a) in set.iter().enumerate() {
            for &b in &set[i + 1..] {
                let rank = self.link_rank(a, b);
                weakest = weakest.min(rank);
                total += rank;
            }
        }
        // Distinct NUMA nodes without allocating: sets are small, a quadratic scan is cheapest.
        let mut numa_nodes = 0;
        for (i, &g) in set.iter().enumerate() {
            let node = self.numa_of(g);
            if !set[..i].iter().any(|&h| self.numa_of(h) == node) {
                numa_nodes += 1;
            }
        }
        SetScore {
            weakest_link: if set.len() < 2 { u32::MAX } else { weakest },
            total_links: total,
            numa_nodes: std::cmp::Reverse(numa_nodes),
        }
    }
}

fn check_unique<T: Ord + ToString + Clone>(items: &[T]) -> Result<BTreeSet<T>> {
    let mut seen = BTreeSet::new();
    for item in items {
        if !seen.insert(item.clone()) {
            return Err(Error::Duplicate(item.to_string()));
        }
    }
    Ok(seen)
}

fn binomial(n: usize, k: usize) -> u128 {
    let k = k.min(n - k);
    (0..k).fold(1u128, |acc, i| acc * (n - i) as u128 / (i as u128 + 1))
}

/// The best `size` GPUs (by index) among `available`, always including `must_include`, sorted by index.
///
/// # Errors
/// Fewer GPUs available than asked for, a must-include GPU not available or more of them than `size`,
/// an index listed twice.
pub fn preferred_gpus(
    view: &TopologyView,
    available: &[u32],
    must_include: &[u32],
    size: usize,
) -> Result<Vec<u32>> {
    let available_set = check_unique(available)?;
    let must = check_unique(must_include)?;
    if let Some(missing) = must.iter().find(|g| !available_set.contains(g)) {
        return Err(Error::MustIncludeUnavailable(missing.to_string()));
    }
    if must.len() > size {
        return Err(Error::MustIncludeTooMany {
            must: must.len(),
            size,
        });
    }
    if size > available_set.len() {
        return Err(Error::NotEnough {
            size,
            available: available_set.len(),
        });
    }
    let free: Vec<u32> = available_set.difference(&must).copied().collect();
    let need = size - must.len();
    let base: Vec<u32> = must.into_iter().collect();
    let best = if binomial(free.len(), need) <= EXHAUSTIVE_LIMIT {
        exhaustive(view, &base, &free, need)
    } else {
        greedy(view, &base, &free, need)
    };
    let mut best = best;
    best.sort_unstable();
    Ok(best)
}

/// Better score wins; on a tie the lexicographically smaller sorted set, for determinism.
fn better(
    view: &TopologyView,
    candidate: &[u32],
    incumbent: &Option<(SetScore, Vec<u32>)>,
) -> Option<SetScore> {
    let mut sorted = candidate.to_vec();
    sorted.sort_unstable();
    let score = view.score(&sorted);
    match incumbent {
        Some((best, best_set))
            if (score, std::cmp::Reverse(&sorted)) <= (*best, std::cmp::Reverse(best_set)) =>
        {
            None
        }
        _ => Some(score),
    }
}

fn exhaustive(view: &TopologyView, base: &[u32], free: &[u32], need: usize) -> Vec<u32> {
    let mut best: Option<(SetScore, Vec<u32>)> = None;
    let mut chosen = base.to_vec();
    fn walk(
        view: &TopologyView,
        free: &[u32],
        start: usize,
        need: usize,
        chosen: &mut Vec<u32>,
        best: &mut Option<(SetScore, Vec<u32>)>,
    ) {
        if need == 0 {
            if let Some(score) = better(view, chosen, best) {
                let mut sorted = chosen.clone();
                sorted.sort_unstable();
                *best = Some((score, sorted));
            }
            return;
        }
        for i in start..=free.len().saturating_sub(need) {
            chosen.push(free[i]);
            walk(view, free, i + 1, need - 1, chosen, best);
            chosen.pop();
        }
    }
    walk(view, free, 0, need, &mut chosen, &mut best);
    best.map(|(_, set)| set).unwrap_or_else(|| base.to_vec())
}

fn greedy(view: &TopologyView, base: &[u32], free: &[u32], need: usize) -> Vec<u32> {
    // Grow from the must-include set, or from each free GPU as a seed when there is none.
    let seeds: Vec<Vec<u32>> = if base.is_empty() {
        free.iter().map(|g| vec![*g]).collect()
    } else {
        vec![base.to_vec()]
    };
    let mut best: Option<(SetScore, Vec<u32>)> = None;
    for seed in seeds {
        let mut set = seed;
        while set.len() < base.len() + need {
            let next = free
                .iter()
                .filter(|g| !set.contains(g))
                .max_by_key(|&&g| {
                    let mut trial = set.clone();
                    trial.push(g);
                    (view.score(&trial), std::cmp::Reverse(g))
                })
                .copied();
            match next {
                Some(g) => set.push(g),
                None => break,
            }
        }
        if let Some(score) = better(view, &set, &best) {
            set.sort_unstable();
            best = Some((score, set));
        }
    }
    best.map(|(_, set)| set).unwrap_or_else(|| base.to_vec())
}

/// How shared (time-sliced) replicas are handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaStrategy {
    /// One replica per GPU where possible, least-loaded GPUs first.
    #[default]
    Spread,
    /// Fill GPUs that are already in use before touching idle ones.
    Pack,
}

/// One shareable replica: its device ID and the GPU index it slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub id: String,
    pub gpu: u32,
}

/// Chooses `size` replica IDs among `available`, always including `must_include`.
///
/// `replicas_per_gpu` tells how loaded a GPU is: a GPU with fewer available replicas than that is in use.
pub fn preferred_replicas(
    available: &[Replica],
    must_include: &[String],
    size: usize,
    replicas_per_gpu: usize,
    strategy: ReplicaStrategy,
) -> Result<Vec<String>> {
    let ids: Vec<String> = available.iter().map(|r| r.id.clone()).collect();
    let available_ids = check_unique(&ids)?;
    let must = check_unique(must_include)?;
    if let Some(missing) = must.iter().find(|id| !available_ids.contains(*id)) {
        return Err(Error::MustIncludeUnavailable(missing.clone()));
    }
    if must.len() > size {
        return Err(Error::MustIncludeTooMany {
            must: must.len(),
            size,
        });
    }
    if size > available.len() {
        return Err(Error::NotEnough {
            size,
            available: available.len(),
        });
    }
    let mut chosen: Vec<String> = must.iter().cloned().collect();
    let mut free: BTreeMap<u32, Vec<&Replica>> = BTreeMap::new();
    for replica in available.iter().filter(|r| !must.contains(&r.id)) {
        free.entry(replica.gpu).or_default().push(replica);
    }
    let mut taken_per_gpu: BTreeMap<u32, usize> = BTreeMap::new();
    for replica in available.iter().filter(|r| must.contains(&r.id)) {
        *taken_per_gpu.entry(replica.gpu).or_default() += 1;
    }
    while chosen.len() < size {
        // A GPU's load: replicas in use elsewhere plus the ones this call already chose on it.
        let pick = free
            .iter()
            .filter(|(_, left)| !left.is_empty())
            .map(|(gpu, left)| {
                let taken = taken_per_gpu.get(gpu).copied().unwrap_or(0);
                let in_use_elsewhere = replicas_per_gpu.saturating_sub(left.len() + taken);
                (*gpu, taken, in_use_elsewhere + taken)
            })
            .min_by_key(|&(gpu, taken, load)| match strategy {
                // Distinct GPUs first, then the least loaded.
                ReplicaStrategy::Spread => (taken, load, gpu),
                // The most loaded GPU that still has room.
                ReplicaStrategy::Pack => (0, usize::MAX - load, gpu),
            })
            .map(|(gpu, _, _)| gpu);
        let Some(gpu) = pick else { break };
        if let Some(list) = free.get_mut(&gpu) {
            if !list.is_empty() {
                let replica = list.remove(0);
                chosen.push(replica.id.clone());
                *taken_per_gpu.entry(gpu).or_default() += 1;
            }
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_testkit::load_inventory;
    use proptest::prelude::*;

    fn view(name: &str) -> TopologyView {
        TopologyView::new(&load_inventory(name))
    }

    #[test]
    fn pairs_prefer_the_shared_pcie_switch() {
        let t4 = view("t4-pcie-4.yaml");
        assert_eq!(preferred_gpus(&t4, &[0, 1, 2, 3], &[], 2).unwrap(), [0, 1]);
        // With GPU 1 taken, the same-NUMA pair 2-3 (NODE) beats anything crossing sockets.
        assert_eq!(preferred_gpus(&t4, &[0, 2, 3], &[], 2).unwrap(), [2, 3]);
        // must_include forces GPU 2; its best partner is 3, on the same NUMA node.
        assert_eq!(preferred_gpus(&t4, &[0, 1, 2, 3], &[2], 2).unwrap(), [2, 3]);
        assert_eq!(
            preferred_gpus(&t4, &[0, 1, 2, 3], &[0, 2], 2).unwrap(),
            [0, 2]
        );
    }

    #[test]
    fn nvswitch_sets_prefer_one_numa_node_then_lowest_indices() {
        let h100 = view("h100-nvswitch-8.yaml");
        let all: Vec<u32> = (0..8).collect();
        assert_eq!(preferred_gpus(&h100, &all, &[], 4).unwrap(), [0, 1, 2, 3]);
        assert_eq!(
            preferred_gpus(&h100, &[1, 2, 4, 5, 6], &[], 3).unwrap(),
            [4, 5, 6]
        );
        assert_eq!(preferred_gpus(&h100, &all, &[], 8).unwrap(), all);
    }

    #[test]
    fn bad_requests_are_errors() {
        let t4 = view("t4-pcie-4.yaml");
        assert_eq!(
            preferred_gpus(&t4, &[0, 1], &[], 3),
            Err(Error::NotEnough {
                size: 3,
                available: 2
            })
        );
        assert_eq!(
            preferred_gpus(&t4, &[0, 1], &[2], 1),
            Err(Error::MustIncludeUnavailable("2".into()))
        );
        assert_eq!(
            preferred_gpus(&t4, &[0, 1, 1], &[], 1),
            Err(Error::Duplicate("1".into()))
        );
        assert_eq!(
            preferred_gpus(&t4, &[0, 1], &[0, 1], 1),
            Err(Error::MustIncludeTooMany { must: 2, size: 1 })
        );
    }

    fn replicas(gpus: &[(u32, usize)]) -> Vec<Replica> {
        gpus.iter()
            .flat_map(|&(gpu, n)| {
                (0..n).map(move |r| Replica {
                    id: format!("g{gpu}::{r}"),
                    gpu,
                })
            })
            .collect()
    }

    #[test]
    fn replicas_spread_or_pack() {
        // GPU 0 has 1 of 4 replicas left (busy), GPU 1 all 4 (idle), GPU 2 has 2 left.
        let available = replicas(&[(0, 1), (1, 4), (2, 2)]);
        let spread = preferred_replicas(&available, &[], 2, 4, ReplicaStrategy::Spread).unwrap();
        assert_eq!(spread, ["g1::0", "g2::0"]);
        let pack = preferred_replicas(&available, &[], 2, 4, ReplicaStrategy::Pack).unwrap();
        assert_eq!(pack, ["g0::0", "g2::0"]);
        let must = preferred_replicas(&available, &["g2::1".into()], 2, 4, ReplicaStrategy::Spread)
            .unwrap();
        assert_eq!(must, ["g2::1", "g1::0"]);
    }

    proptest! {
        #[test]
        fn choices_are_valid_subsets(mask in 1u8..=255, must_bits in 0u8..=255, size in 1usize..=8) {
            let h100 = view("h100-nvswitch-8.yaml");
            let available: Vec<u32> = (0..8).filter(|i| mask & (1 << i) != 0).collect();
            let must: Vec<u32> = available.iter().copied().filter(|i| must_bits & (1 << i) != 0).collect();
            match preferred_gpus(&h100, &available, &must, size) {
                Ok(set) => {
                    prop_assert_eq!(set.len(), size);
                    prop_assert!(set.iter().all(|g| available.contains(g)));
                    prop_assert!(must.iter().all(|g| set.contains(g)));
                    let unique: BTreeSet<u32> = set.iter().copied().collect();
                    prop_assert_eq!(unique.len(), size);
                }
                Err(_) => prop_assert!(size > available.len() || must.len() > size),
            }
        }

        #[test]
        fn greedy_and_exhaustive_agree_on_weakest_link(mask in 1u16..=0xffff, size in 1usize..=4) {
            // 16 GPUs: two 8-GPU NVSwitch islands joined by SYS.
            let mut inventory = load_inventory("h100-nvswitch-8.yaml");
            let extra: Vec<_> = inventory.gpus.iter().map(|g| {
                let mut g = g.clone();
                g.index += 8;
                g
            }).collect();
            inventory.gpus.extend(extra);
            let mut pairs = Vec::new();
            for a in 0..16u32 {
                for b in a + 1..16 {
                    let link = if a / 8 == b / 8 { gantry_gpu::Link::NvLink { lanes: 18 } } else { gantry_gpu::Link::Pcie(gantry_gpu::PcieDistance::Sys) };
                    pairs.push((a, b, link));
                }
            }
            inventory.topology = Topology::from_pairs(pairs).unwrap();
            let v = TopologyView::new(&inventory);
            let available: Vec<u32> = (0..16).filter(|i| mask & (1 << i) != 0).collect();
            prop_assume!(available.len() >= size);
            let ex = exhaustive(&v, &[], &available, size);
            let gr = greedy(&v, &[], &available, size);
            prop_assert_eq!(v.score(&ex).weakest_link, v.score(&gr).weakest_link);
        }
    }
}
