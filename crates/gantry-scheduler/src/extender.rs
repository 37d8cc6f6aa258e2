//! The extender's three verbs as decisions over [`ClusterState`].
//!
//! # Flow
//! `filter` reads the pod's request, refreshes any full Node objects sent with the call, and
//! checks every candidate node; `prioritize` scores the feasible ones with the configured
//! policy (0–10, the best node 10); `bind` is split in two so the shell can do its API writes
//! without holding anything: [`Extender::begin_bind`] chooses the GPUs and records them as an
//! *assumed* allocation under the node's lock (optimistic reservation); the shell writes the
//! pod annotation and creates the Binding; [`Extender::finish_bind`] confirms the allocation
//! or gives it back.
//!
//! # Gangs
//! A pod labelled with [`crate::schema::POD_GROUP_LABEL`] belongs to a gang of
//! `min-member` pods. Until the whole gang fits, `filter` returns every candidate in
//! `FailedAndUnresolvableNodes` with the reason (no preemption is tried for a held pod);
//! kube-scheduler puts the pod back in its unschedulable queue and retries it on its backoff
//! and whenever cluster events (node or pod changes) move it back to the active queue. When
//! the gang fits, capacity for every member not yet bound is reserved at once (slots); members
//! then pass `filter` only on nodes with a free slot of their shape and bind into it. Slots
//! not claimed before the reservation expires (`gang_timeout`) are released.
//!
//! # Errors
//! A pod without GPU requests, a malformed pod, an unknown pod at bind or a node that no longer
//! fits: an `Error` for the caller to put in the response's `Error` field.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use gantry_placement::{evaluate, GpuSet, Policy, Request, TargetWorkload};
use k8s_openapi::api::core::v1::Pod;

use crate::request::PodRequest;
use crate::schema::GpuAssignment;
use crate::state::{
    assignment, lock_entry, unfit, ClusterState, Hold, NodeEntry, ReasonTexts, ScoreKey,
};
use crate::wire::{
    ExtenderArgs, ExtenderBindingArgs, ExtenderFilterResult, HostPriority, HostPriorityList,
    MAX_EXTENDER_PRIORITY,
};
use crate::{Error, Result};

/// Extender settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node scoring policy (default Gantry's `frag-cpu`).
    pub policy: Policy,
    /// Target workload for the FGD-family policies.
    pub workload: Option<TargetWorkload>,
    /// How long a gang reservation waits for its members to bind.
    pub gang_timeout: Duration,
    /// How long a pod seen by `filter` is remembered for `bind`.
    pub pending_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            policy: Policy::FragCpu,
            workload: Some(default_workload()),
            gang_timeout: Duration::from_secs(60),
            pending_ttl: Duration::from_secs(600),
        }
    }
}

/// A generic GPU workload for FGD's fragmentation when no trace is given: shared GPU pods of a
/// quarter, a half and most of a GPU, and 1, 2, 4 and 8 whole GPUs, weighted like the Alibaba
/// `openb` trace (mostly shared and single GPUs).
pub fn default_workload() -> TargetWorkload {
    let mut pods = Vec::new();
    for (count, cpu, num_gpu, milli) in [
        (30, 4000, 1, 250),
        (20, 6000, 1, 500),
        (10, 8000, 1, 750),
        (25, 8000, 1, 1000),
        (8, 16000, 2, 1000),
        (4, 32000, 4, 1000),
        (3, 64000, 8, 1000),
    ] {
        for _ in 0..count {
            pods.push(gantry_placement::PodSpec {
                cpu_milli: cpu,
                memory_mib: 0,
                num_gpu,
                gpu_milli: milli,
                gpu_models: Vec::new(),
            });
        }
    }
    TargetWorkload::from_pods(&pods, 1.0)
}

/// A bind in progress: what the shell must write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindPlan {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    /// The value of the pod's assignment annotation.
    pub assignment: GpuAssignment,
    /// The gang slot this bind claimed, if any.
    slot: Option<String>,
    gang: Option<String>,
}

#[derive(Debug)]
struct Slot {
    id: String,
    node: String,
    shape: (u32, u64, u8, u16),
    claimed_by: Option<String>,
}

#[derive(Debug)]
struct Reservation {
    slots: Vec<Slot>,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Gangs {
    reservations: BTreeMap<String, Reservation>,
    /// Group → UIDs of members bound (or binding).
    members: BTreeMap<String, BTreeSet<String>>,
}

/// The extender: configuration, cluster state, pods awaiting bind, gang reservations.
#[derive(Debug)]
pub struct Extender {
    config: Config,
    state: ClusterState,
    pending: Mutex<BTreeMap<String, (PodRequest, Instant)>>,
    gangs: Mutex<Gangs>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn shape(r: &PodRequest) -> (u32, u64, u8, u16) {
    (r.cpu_milli, r.memory_mib, r.num_gpu, r.gpu_milli)
}

impl Extender {
    pub fn new(config: Config) -> Result<Self> {
        if config.policy.needs_workload() && config.workload.is_none() {
            return Err(Error::Config {
                reason: format!("policy {} needs a target workload", config.policy),
            });
        }
        let state = ClusterState::new(config.workload.clone());
        Ok(Self {
            config,
            state,
            pending: Mutex::default(),
            gangs: Mutex::default(),
        })
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Reads the pod, remembers it for `bind`, and refreshes any full Node objects.
    fn admit(&self, args: &ExtenderArgs, now: Instant) -> Result<PodRequest> {
        for node in args.node_objects() {
            self.state.upsert_node(node)?;
        }
        let req = PodRequest::from_pod(&args.pod)?;
        let mut pending = lock(&self.pending);
        if pending.len() > 1024 {
            let ttl = self.config.pending_ttl;
            pending.retain(|_, (_, seen)| now.saturating_duration_since(*seen) < ttl);
        }
        pending.insert(req.uid.clone(), (req.clone(), now));
        Ok(req)
    }

    /// Records a pod from the API (see [`ClusterState::upsert_pod`]); bound gang members count
    /// towards their gang.
    pub fn observe_pod(&self, pod: &Pod) -> Result<()> {
        self.state.upsert_pod(pod)?;
        let finished = crate::request::pod_finished(pod);
        if finished {
            if let Some(uid) = &pod.metadata.uid {
                for m in lock(&self.gangs).members.values_mut() {
                    m.remove(uid);
                }
            }
            return Ok(());
        }
        if let (Ok(r), Some(_)) = (
            PodRequest::from_pod(pod),
            pod.spec.as_ref().and_then(|s| s.node_name.as_ref()),
        ) {
            if let Some(g) = r.gang {
                lock(&self.gangs)
                    .members
                    .entry(g.group)
                    .or_default()
                    .insert(r.uid);
            }
        }
        Ok(())
    }

    /// A pod deleted, or no longer of interest (finished, unbound): releases what it held and
    /// its place in its gang. Binds in flight and gang reservations are not touched.
    pub fn forget_pod(&self, uid: &str) {
        self.state.remove_pod(uid);
        let mut gangs = lock(&self.gangs);
        for members in gangs.members.values_mut() {
            members.remove(uid);
        }
        gangs.members.retain(|_, m| !m.is_empty());
    }

    /// After a full list of bound pods: forgets pods no longer there (deleted), also as gang
    /// members.
    pub fn retain_pods(&self, live: &BTreeSet<String>) -> usize {
        let gone = self.state.retain_bound(live);
        if !gone.is_empty() {
            let mut gangs = lock(&self.gangs);
            for members in gangs.members.values_mut() {
                for uid in &gone {
                    members.remove(uid);
                }
            }
            gangs.members.retain(|_, m| !m.is_empty());
        }
        gone.len()
    }

    /// The `filter` verb.
    pub fn filter(&self, args: &ExtenderArgs, now: Instant) -> ExtenderFilterResult {
        let req = match self.admit(args, now) {
            Ok(r) => r,
            Err(e) => return ExtenderFilterResult::error(e.to_string()),
        };
        self.expire(now);
        let candidates = args.candidate_names();
        let engine_req = self.state.engine_request(&req);
        let mut result = ExtenderFilterResult::default();
        let mut passed = Vec::new();
        let gang_nodes = match &req.gang {
            Some(_) => match self.gang_nodes(&req, &engine_req, &candidates, now) {
                Ok(nodes) => nodes,
                Err(reason) => {
                    for n in candidates {
                        result
                            .failed_and_unresolvable_nodes
                            .insert(n, reason.clone());
                    }
                    return self.shape_result(args, result, Vec::new());
                }
            },
            None => None,
        };
        // Collected, then built in bulk: much cheaper than thousands of map inserts.
        let mut failed: Vec<(String, String)> = Vec::new();
        let mut unresolvable_nodes: Vec<(String, String)> = Vec::new();
        let mut texts = ReasonTexts::default();
        passed.reserve(candidates.len());
        let entries = self.state.nodes_of(&candidates);
        for (name, entry) in candidates.into_iter().zip(entries) {
            if let Some(slots) = &gang_nodes {
                if slots.contains(&name) {
                    passed.push(name);
                } else {
                    failed.push((
                        name,
                        "the pod's gang has its capacity reserved on other nodes".to_string(),
                    ));
                }
                continue;
            }
            let Some(entry) = entry else {
                unresolvable_nodes.push((
                    name,
                    "node unknown to the Gantry extender (no Node object seen yet)".to_string(),
                ));
                continue;
            };
            let e = lock_entry(&entry);
            if e.state.fits(&engine_req) && e.problem.is_none() {
                drop(e);
                passed.push(name);
            } else {
                let why = unfit(&e, &engine_req);
                let unresolvable = why.unresolvable();
                let reason = texts.text(why, &engine_req);
                drop(e);
                if unresolvable {
                    unresolvable_nodes.push((name, reason));
                } else {
                    failed.push((name, reason));
                }
            }
        }
        result.failed_nodes = failed.into_iter().collect();
        result.failed_and_unresolvable_nodes = unresolvable_nodes.into_iter().collect();
        self.shape_result(args, result, passed)
    }

    fn shape_result(
        &self,
        args: &ExtenderArgs,
        mut result: ExtenderFilterResult,
        passed: Vec<String>,
    ) -> ExtenderFilterResult {
        if args.node_names.is_some() || args.nodes.is_none() {
            result.node_names = Some(passed);
        } else {
            let keep: BTreeSet<&String> = passed.iter().collect();
            let mut list = args.nodes.clone().unwrap_or_default();
            list.items
                .retain(|n| n.metadata.name.as_ref().is_some_and(|m| keep.contains(m)));
            result.nodes = Some(list);
        }
        result
    }

    /// The `prioritize` verb: the policy's scores mapped to 0–10, the best node(s) 10, other
    /// feasible nodes 1–9 in proportion, infeasible nodes 0.
    pub fn prioritize(&self, args: &ExtenderArgs, now: Instant) -> Result<HostPriorityList> {
        let req = self.admit(args, now)?;
        let candidates = args.candidate_names();
        if let Some(g) = &req.gang {
            let gangs = lock(&self.gangs);
            if let Some(res) = gangs.reservations.get(&g.group) {
                let with_slot: BTreeSet<&str> = res
                    .slots
                    .iter()
                    .filter(|s| s.claimed_by.is_none() && s.shape == shape(&req))
                    .map(|s| s.node.as_str())
                    .collect();
                return Ok(candidates
                    .into_iter()
                    .map(|host| HostPriority {
                        score: if with_slot.contains(host.as_str()) {
                            MAX_EXTENDER_PRIORITY
                        } else {
                            0
                        },
                        host,
                    })
                    .collect());
            }
        }
        let engine_req = self.state.engine_request(&req);
        let (frag, generation) = self.state.fragmentation();
        let raw: Vec<Option<i64>> = self
            .state
            .nodes_of(&candidates)
            .into_iter()
            .map(|entry| {
                let entry = entry?;
                let mut e = lock_entry(&entry);
                evaluate_entry(
                    self.config.policy,
                    &mut e,
                    &engine_req,
                    frag.as_deref(),
                    generation,
                )
                .map(|(s, _)| s)
            })
            .collect();
        Ok(candidates
            .into_iter()
            .zip(scale_scores(&raw))
            .map(|(host, score)| HostPriority { host, score })
            .collect())
    }

    /// Starts the `bind` verb: chooses the GPUs on the node and holds them as assumed.
    pub fn begin_bind(&self, args: &ExtenderBindingArgs, now: Instant) -> Result<BindPlan> {
        let key = format!("{}/{}", args.pod_namespace, args.pod_name);
        let req = lock(&self.pending)
            .get(&args.pod_uid)
            .map(|(r, _)| r.clone())
            .ok_or_else(|| Error::UnknownPod { pod: key.clone() })?;
        self.expire(now);
        let engine_req = self.state.engine_request(&req);
        let mut slot_used = None;
        let gpus = match &req.gang {
            Some(g) => {
                let mut gangs = lock(&self.gangs);
                let slot = gangs.reservations.get_mut(&g.group).and_then(|res| {
                    res.slots.iter_mut().find(|s| {
                        s.node == args.node && s.claimed_by.is_none() && s.shape == shape(&req)
                    })
                });
                match slot {
                    Some(slot) => {
                        let gpus = self.state.rename(
                            &args.node,
                            &slot.id,
                            &args.pod_uid,
                            Hold::Assumed,
                        )?;
                        slot.claimed_by = Some(args.pod_uid.clone());
                        slot_used = Some(slot.id.clone());
                        gangs
                            .members
                            .entry(g.group.clone())
                            .or_default()
                            .insert(args.pod_uid.clone());
                        gpus
                    }
                    None => {
                        drop(gangs);
                        self.allocate_fresh(&args.node, &args.pod_uid, &engine_req)?
                    }
                }
            }
            None => self.allocate_fresh(&args.node, &args.pod_uid, &engine_req)?,
        };
        Ok(BindPlan {
            namespace: args.pod_namespace.clone(),
            name: args.pod_name.clone(),
            uid: args.pod_uid.clone(),
            node: args.node.clone(),
            assignment: assignment(&args.node, gpus),
            slot: slot_used,
            gang: req.gang.map(|g| g.group),
        })
    }

    fn allocate_fresh(
        &self,
        node: &str,
        uid: &str,
        req: &Request,
    ) -> Result<Vec<crate::schema::AssignedGpu>> {
        let policy = self.config.policy;
        let (frag, generation) = self.state.fragmentation();
        self.state.allocate(node, uid, req, Hold::Assumed, |e| {
            evaluate_entry(policy, e, req, frag.as_deref(), generation).map(|(_, g)| g)
        })
    }

    /// Finishes a bind: `written` says whether the annotation and Binding were written. On
    /// failure the GPUs go back (to the gang's slot if they came from one).
    pub fn finish_bind(&self, plan: &BindPlan, written: bool) {
        lock(&self.pending).remove(&plan.uid);
        if written {
            self.state.set_hold(&plan.node, &plan.uid, Hold::Bound);
            if let Some(group) = &plan.gang {
                let mut gangs = lock(&self.gangs);
                gangs
                    .members
                    .entry(group.clone())
                    .or_default()
                    .insert(plan.uid.clone());
                let done = gangs
                    .reservations
                    .get(group)
                    .is_some_and(|r| r.slots.iter().all(|s| s.claimed_by.is_some()));
                if done {
                    gangs.reservations.remove(group);
                }
            }
            return;
        }
        match (&plan.slot, &plan.gang) {
            (Some(slot), Some(group)) => {
                let mut gangs = lock(&self.gangs);
                if let Some(s) = gangs
                    .reservations
                    .get_mut(group)
                    .and_then(|r| r.slots.iter_mut().find(|s| &s.id == slot))
                {
                    s.claimed_by = None;
                    if self
                        .state
                        .rename(&plan.node, &plan.uid, slot, Hold::Reserved)
                        .is_err()
                    {
                        self.state.release(&plan.node, &plan.uid);
                    }
                } else {
                    self.state.release(&plan.node, &plan.uid);
                }
                if let Some(m) = gangs.members.get_mut(group) {
                    m.remove(&plan.uid);
                }
            }
            _ => self.state.release(&plan.node, &plan.uid),
        }
    }

    /// Releases the unclaimed slots of reservations past their deadline.
    pub fn expire(&self, now: Instant) {
        let mut gangs = lock(&self.gangs);
        let expired: Vec<String> = gangs
            .reservations
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(g, _)| g.clone())
            .collect();
        for g in expired {
            if let Some(r) = gangs.reservations.remove(&g) {
                for s in r.slots.iter().filter(|s| s.claimed_by.is_none()) {
                    self.state.release(&s.node, &s.id);
                }
            }
        }
    }

    /// The gang's reservation, if any: the candidate nodes holding a free slot of the pod's
    /// shape. Creates the reservation when the whole gang fits now; `Err(reason)` holds the
    /// pod. `Ok(None)`: the gang is complete or this pod's shape has no slot; filter normally.
    fn gang_nodes(
        &self,
        req: &PodRequest,
        engine_req: &Request,
        candidates: &[String],
        now: Instant,
    ) -> std::result::Result<Option<BTreeSet<String>>, String> {
        let Some(g) = &req.gang else { return Ok(None) };
        let mut gangs = lock(&self.gangs);
        if let Some(res) = gangs.reservations.get(&g.group) {
            let nodes: BTreeSet<String> = res
                .slots
                .iter()
                .filter(|s| s.claimed_by.is_none() && s.shape == shape(req))
                .map(|s| s.node.clone())
                .collect();
            return Ok((!nodes.is_empty()).then_some(nodes));
        }
        let placed = gangs
            .members
            .get(&g.group)
            .map_or(0, |m| u32::try_from(m.len()).unwrap_or(u32::MAX));
        let need = g.min_member.saturating_sub(placed);
        if need == 0 {
            return Ok(None);
        }
        // Plan every missing member on a copy of the candidates' states.
        let (frag, generation) = self.state.fragmentation();
        let mut copies: Vec<(String, NodeEntry)> = Vec::new();
        for name in candidates {
            if let Some(entry) = self.state.node(name) {
                let e = lock_entry(&entry);
                if e.problem.is_none() {
                    copies.push((name.clone(), e.clone_for_planning()));
                }
            }
        }
        let mut plan: Vec<(String, GpuSet)> = Vec::new();
        for _ in 0..need {
            let best = copies
                .iter_mut()
                .enumerate()
                .filter_map(|(i, (_, e))| {
                    if !e.state.fits(engine_req) {
                        return None;
                    }
                    evaluate_entry(
                        self.config.policy,
                        e,
                        engine_req,
                        frag.as_deref(),
                        generation,
                    )
                    .map(|(s, gpus)| (s, i, gpus))
                })
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            let Some((_, i, gpus)) = best else {
                return Err(format!(
                    "gang {} is held: {} of {need} pods still to place fit now ({} bound); \
                     waiting for capacity",
                    g.group,
                    plan.len(),
                    placed
                ));
            };
            copies[i].1.apply_planned(engine_req, gpus);
            plan.push((copies[i].0.clone(), gpus));
        }
        // Commit the slots under each node's lock; a slot lost to a concurrent bind undoes the
        // reservation and holds the pod until the next attempt.
        let mut slots = Vec::new();
        for (k, (node, gpus)) in plan.into_iter().enumerate() {
            let id = format!("gang:{}:{k}", g.group);
            let ok = self
                .state
                .allocate(&node, &id, engine_req, Hold::Reserved, |_| Some(gpus));
            if let Err(e) = ok {
                for s in &slots {
                    let s: &Slot = s;
                    self.state.release(&s.node, &s.id);
                }
                return Err(format!(
                    "gang {} is held: its reservation raced with another bind ({e}); retrying",
                    g.group
                ));
            }
            slots.push(Slot {
                id,
                node,
                shape: shape(req),
                claimed_by: None,
            });
        }
        let nodes = slots.iter().map(|s| s.node.clone()).collect();
        gangs.reservations.insert(
            g.group.clone(),
            Reservation {
                slots,
                expires: now + self.config.gang_timeout,
            },
        );
        Ok(Some(nodes))
    }

    /// The reserved slots of `group`: (node, claimed by).
    pub fn reservation(&self, group: &str) -> Option<Vec<(String, Option<String>)>> {
        lock(&self.gangs).reservations.get(group).map(|r| {
            r.slots
                .iter()
                .map(|s| (s.node.clone(), s.claimed_by.clone()))
                .collect()
        })
    }
}

/// The policy's score and GPU set for `req` on a node entry (memory checked too).
pub fn evaluate_entry(
    policy: Policy,
    e: &mut NodeEntry,
    req: &Request,
    frag: Option<&gantry_placement::Fragmentation>,
    generation: u64,
) -> Option<(i64, GpuSet)> {
    if e.problem.is_some() || e.state.memory_free < req.memory_mib {
        return None;
    }
    let key = ScoreKey {
        cpu_milli: req.cpu_milli,
        num_gpu: req.num_gpu,
        gpu_milli: req.gpu_milli,
        models: req.models,
        generation,
    };
    if let Some(verdict) = e.cached_score(&key) {
        return verdict;
    }
    let node_frag = ClusterState::node_fragmentation(e, frag, generation);
    let verdict = evaluate(policy, &e.state, req, frag, node_frag).map(|ev| {
        let gpus = if ev.gpus.len() == usize::from(req.num_gpu) {
            ev.gpus
        } else {
            // `random` leaves the GPUs to the caller: take the best-fitting ones.
            e.state.best_fit_gpus(req)
        };
        (ev.score, gpus)
    });
    e.cache_score(key, verdict);
    verdict
}

/// Maps raw policy scores to 0–10: infeasible 0, the best 10, the rest 1–9 in proportion.
pub fn scale_scores(raw: &[Option<i64>]) -> Vec<i64> {
    let feasible = raw.iter().flatten();
    let (Some(&min), Some(&max)) = (feasible.clone().min(), feasible.max()) else {
        return vec![0; raw.len()];
    };
    raw.iter()
        .map(|s| match *s {
            None => 0,
            Some(s) if s == max => MAX_EXTENDER_PRIORITY,
            Some(s) => {
                let span = i128::from(max) - i128::from(min);
                let pos = (i128::from(s) - i128::from(min)) * 8 / span.max(1);
                1 + i64::try_from(pos).unwrap_or(0)
            }
        })
        .collect()
}
