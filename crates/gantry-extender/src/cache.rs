//! The extender's watch-based cache of Nodes and Pods (the reflector pattern, with the
//! extender's `ClusterState` as the store).
//!
//! # Flow
//! Two kube-rs [`watcher`] streams, each with the default backoff: every Node, and the pods that
//! hold capacity, i.e. bound and not finished ([`POD_FIELD_SELECTOR`]). Each event is applied at
//! once:
//! - a node added or changed is upserted (its allocations are kept); a deleted node is forgotten;
//! - a pod added or changed is recorded from its `gantry.dev/gpu-assignment` annotation (a bound
//!   GPU pod without one is counted on its best-fitting GPUs); a pod deleted, or leaving the
//!   selector (it finished: `Running` → `Succeeded`/`Failed`), releases what it held;
//! - a (re-)list (`Init` … `InitApply` … `InitDone`) applies every object it returns and then
//!   forgets the nodes and bound pods it did not return. Binds in flight and gang reservations
//!   are kept.
//!
//! A pod seen before its node (the two lists race at start) is kept aside and applied when the
//! node arrives.
//!
//! # Guarantees
//! [`Readiness`] turns ready once both initial lists are applied and stays ready across watch
//! errors and re-lists; until then the extender refuses to decide (`filter` and `bind` answer
//! with an `Error`, `/readyz` with 503), so no GPU is handed out on a cache that does not yet
//! know the pods already holding it.
//!
//! # Errors
//! Watch errors (connection lost, `410 Gone`, RBAC) are logged and retried with the watcher's
//! default backoff; a node or pod the extender cannot read is logged and skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::StreamExt;
use gantry_scheduler::Extender;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;

/// The pods the cache watches: bound to a node and not finished. A pod that finishes leaves the
/// selection, and the watch reports it deleted.
pub const POD_FIELD_SELECTOR: &str = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed";

/// Whether the cache has applied both initial lists. Cheap to clone; clones share the state.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<ReadyFlags>);

#[derive(Debug, Default)]
struct ReadyFlags {
    nodes: AtomicBool,
    pods: AtomicBool,
}

impl Readiness {
    /// Not ready until [`Cache`] has applied both initial lists.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ready from the start: for an extender whose state is fed some other way (tests, full Node
    /// objects in every call).
    pub fn ready() -> Self {
        let r = Self::default();
        r.0.nodes.store(true, Ordering::SeqCst);
        r.0.pods.store(true, Ordering::SeqCst);
        r
    }

    pub fn is_ready(&self) -> bool {
        self.0.nodes.load(Ordering::SeqCst) && self.0.pods.load(Ordering::SeqCst)
    }

    /// What readiness still waits for, e.g. `the initial list of nodes and pods`; empty when
    /// ready.
    pub fn waiting_for(&self) -> String {
        match (
            self.0.nodes.load(Ordering::SeqCst),
            self.0.pods.load(Ordering::SeqCst),
        ) {
            (true, true) => String::new(),
            (false, false) => "the initial list of nodes and pods".into(),
            (false, true) => "the initial list of nodes".into(),
            (true, false) => "the initial list of pods".into(),
        }
    }
}

/// The cache: applies watch events to the extender's state.
#[derive(Debug)]
pub struct Cache {
    extender: Arc<Extender>,
    readiness: Readiness,
    books: Mutex<Books>,
}

/// What the cache remembers beside the extender's state.
#[derive(Debug, Default)]
struct Books {
    /// Names listed so far in a node re-list (between `Init` and `InitDone`).
    listing_nodes: Option<BTreeSet<String>>,
    /// UIDs listed so far in a pod re-list.
    listing_pods: Option<BTreeSet<String>>,
    /// Pods bound to a node the state does not know (yet): node → UID → pod.
    orphans: BTreeMap<String, BTreeMap<String, Pod>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Cache {
    pub fn new(extender: Arc<Extender>) -> Self {
        Self {
            extender,
            readiness: Readiness::new(),
            books: Mutex::default(),
        }
    }

    /// The readiness this cache reports to (pass it to [`crate::router`]).
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Watches Nodes and Pods through `client` and applies every event, until dropped.
    pub async fn run(&self, client: kube::Client) {
        let nodes =
            watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).default_backoff();
        let pods = watcher(
            Api::<Pod>::all(client),
            watcher::Config::default().fields(POD_FIELD_SELECTOR),
        )
        .default_backoff();
        let nodes = async {
            let mut events = std::pin::pin!(nodes);
            while let Some(event) = events.next().await {
                match event {
                    Ok(e) => self.apply_node(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "node watch failed; retrying with backoff")
                    }
                }
            }
        };
        let pods = async {
            let mut events = std::pin::pin!(pods);
            while let Some(event) = events.next().await {
                match event {
                    Ok(e) => self.apply_pod(e),
                    Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying with backoff"),
                }
            }
        };
        futures::join!(nodes, pods);
    }

    /// Applies one event of the node watch.
    pub fn apply_node(&self, event: Event<Node>) {
        let mut books = lock(&self.books);
        match event {
            Event::Init => books.listing_nodes = Some(BTreeSet::new()),
            Event::InitApply(node) => {
                if let (Some(listing), Some(name)) =
                    (books.listing_nodes.as_mut(), node.metadata.name.clone())
                {
                    listing.insert(name);
                }
                self.upsert_node(&mut books, &node);
            }
            Event::Apply(node) => self.upsert_node(&mut books, &node),
            Event::Delete(node) => {
                if let Some(name) = &node.metadata.name {
                    self.extender.state().remove_node(name);
                    tracing::info!(node = %name, "node deleted");
                }
            }
            Event::InitDone => {
                let listed = books.listing_nodes.take().unwrap_or_default();
                let mut removed = 0;
                for name in self.extender.state().node_names() {
                    if !listed.contains(&name) {
                        self.extender.state().remove_node(&name);
                        removed += 1;
                    }
                }
                self.readiness.0.nodes.store(true, Ordering::SeqCst);
                tracing::info!(nodes = listed.len(), removed, "nodes listed");
            }
        }
    }

    /// Applies one event of the pod watch.
    pub fn apply_pod(&self, event: Event<Pod>) {
        let mut books = lock(&self.books);
        match event {
            Event::Init => books.listing_pods = Some(BTreeSet::new()),
            Event::InitApply(pod) => {
                if let (Some(listing), Some(uid)) =
                    (books.listing_pods.as_mut(), pod.metadata.uid.clone())
                {
                    listing.insert(uid);
                }
                self.observe_pod(&mut books, pod);
            }
            Event::Apply(pod) => self.observe_pod(&mut books, pod),
            Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    for orphans in books.orphans.values_mut() {
                        orphans.remove(uid);
                    }
                    books.orphans.retain(|_, o| !o.is_empty());
                    self.extender.forget_pod(uid);
                }
            }
            Event::InitDone => {
                let listed = books.listing_pods.take().unwrap_or_default();
                for orphans in books.orphans.values_mut() {
                    orphans.retain(|uid, _| listed.contains(uid));
                }
                books.orphans.retain(|_, o| !o.is_empty());
                let removed = self.extender.retain_pods(&listed);
                self.readiness.0.pods.store(true, Ordering::SeqCst);
                tracing::info!(pods = listed.len(), removed, "bound pods listed");
            }
        }
    }

    fn upsert_node(&self, books: &mut Books, node: &Node) {
        let Some(name) = node.metadata.name.as_deref() else {
            return;
        };
        if let Err(e) = self.extender.state().upsert_node(node) {
            tracing::warn!(error = %e, "node not usable");
            return;
        }
        // Pods that arrived before their node.
        if let Some(orphans) = books.orphans.remove(name) {
            for pod in orphans.into_values() {
                if let Err(e) = self.extender.observe_pod(&pod) {
                    tracing::warn!(error = %e, "pod not usable");
                }
            }
        }
    }

    fn observe_pod(&self, books: &mut Books, pod: Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        for orphans in books.orphans.values_mut() {
            orphans.remove(&uid);
        }
        books.orphans.retain(|_, o| !o.is_empty());
        if let Err(e) = self.extender.observe_pod(&pod) {
            tracing::warn!(error = %e, "pod not usable");
            return;
        }
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let finished = gantry_scheduler::request::pod_finished(&pod);
        if let Some(node) = node.filter(|n| !finished && !n.is_empty()) {
            if self.extender.state().node(&node).is_none() {
                books.orphans.entry(node).or_default().insert(uid, pod);
            }
        }
    }
}
