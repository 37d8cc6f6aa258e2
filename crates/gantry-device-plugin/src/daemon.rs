//! The running plugin: discovery, one gRPC server per resource, registration, health, kubelet restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_allocation::TopologyView;
use gantry_discovery::{BackendKind, DiscoveryConfig};
use gantry_gpu::{DeviceUuid, NodeInventory};
use gantry_kubelet_proto::deviceplugin::v1beta1 as api;
use gantry_kubelet_proto::transport::connect_uds;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;

use crate::allocate::AllocatePolicy;
use crate::cluster::{keep_published, Allocator, ClusterOptions, PodAllocator};
use crate::config::PluginConfig;
use crate::health::HealthTracker;
use crate::metrics::Metrics;
use crate::resources::{plan_milli_resource, plan_resources, Resource};
use crate::server::{ResourceService, ResourceState};
use crate::{Error, Result};
use gantry_scheduler::schema::NodeGpus;

/// Writes the node's CDI spec, so that the names Allocate hands out always resolve.
pub trait CdiWriter: Send + Sync + std::fmt::Debug {
    fn write(&self, inventory: &NodeInventory) -> std::result::Result<(), String>;
}

/// Everything the plugin needs, injected by the binary.
#[derive(Debug, Clone)]
pub struct PluginOptions {
    /// The kubelet's device plugin directory, holding `kubelet.sock`.
    pub plugin_dir: PathBuf,
    pub discovery: DiscoveryConfig,
    pub config: PluginConfig,
    pub policy: AllocatePolicy,
    /// How often GPUs are re-probed (health, recovery, inventory changes).
    pub health_interval: Duration,
    /// How long a GPU stays unhealthy after a critical XID before a good probe may restore it.
    pub recovery_hold: Duration,
    /// How often `kubelet.sock` is checked for a kubelet restart.
    pub kubelet_poll: Duration,
    pub metrics_addr: Option<SocketAddr>,
    pub cdi: Option<Arc<dyn CdiWriter>>,
    /// The Kubernetes side: publishing the node's GPUs, `gantry.dev/gpu-milli` and its `Allocate`.
    /// `None` (no node name, local development): nothing is published, no shared GPUs.
    pub cluster: Option<ClusterOptions>,
}

/// A started plugin.
#[derive(Debug)]
pub struct Running {
    pub metrics_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    rediscover: mpsc::UnboundedSender<()>,
    task: JoinHandle<Result<()>>,
}

impl Running {
    /// Re-discovers GPUs and re-advertises (what SIGHUP does).
    pub fn rediscover(&self) {
        let _ = self.rediscover.send(());
    }

    /// Stops serving, removes the plugin's sockets and waits for every task.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| Error::Task(e.to_string()))?
    }

    /// Waits until the plugin stops by itself (an unrecoverable error).
    pub async fn wait(&mut self) -> Result<()> {
        (&mut self.task)
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }
}

/// GPU identity without health: what a re-discovery compares to see whether the node changed.
fn structure(inventory: &NodeInventory) -> BTreeMap<DeviceUuid, Vec<DeviceUuid>> {
    inventory
        .gpus
        .iter()
        .map(|g| {
            (
                g.uuid.clone(),
                g.mig_devices.iter().map(|m| m.uuid.clone()).collect(),
            )
        })
        .collect()
}

async fn discover(config: &DiscoveryConfig) -> Result<gantry_discovery::Discovery> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || gantry_discovery::discover(&config))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(Error::from)
}

/// The plugin's view of the node, shared by its tasks.
#[derive(Debug)]
struct Core {
    known: NodeInventory,
    last_probe: Option<NodeInventory>,
    tracker: HealthTracker,
    senders: BTreeMap<String, watch::Sender<Arc<ResourceState>>>,
}

#[derive(Debug)]
struct Shared {
    options: PluginOptions,
    core: Mutex<Core>,
    metrics: Arc<Metrics>,
    /// Wakes the supervisor when the set of resources changed and servers must be restarted.
    reserve: Notify,
    /// What the Node should carry: the GPUs as the scheduler sees them (health included).
    node_gpus: watch::Sender<Option<NodeGpus>>,
    allocator: Option<Allocator>,
}

impl Shared {
    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Recomputes health and resources and pushes them to the servers; wakes the supervisor when the
    /// resource set changed.
    fn publish(&self, now: Instant) {
        let mut core = self.core();
        let known = core.known.clone();
        let probe = core.last_probe.clone();
        let (effective, transitions) = core.tracker.reconcile(&known, probe.as_ref(), now);
        for t in &transitions {
            self.metrics.transition(t.healthy);
            if t.healthy {
                tracing::info!(gpu = %t.uuid, "GPU healthy again: {}", t.reason);
            } else {
                tracing::warn!(gpu = %t.uuid, "GPU unhealthy: {}", t.reason);
            }
        }
        // What the scheduler sees changes with health even when the resources cannot be planned.
        let gpus = NodeGpus::from_inventory(&effective);
        self.node_gpus.send_if_modified(|current| {
            let changed = current.as_ref() != Some(&gpus);
            if changed {
                *current = Some(gpus);
            }
            changed
        });
        let mut resources = match plan_resources(&effective, &self.options.config) {
            Ok(resources) => resources,
            Err(err) => {
                tracing::error!(error = %err, "cannot advertise the discovered GPUs; keeping the previous resources");
                return;
            }
        };
        if self.options.cluster.as_ref().is_some_and(|c| c.gpu_milli) {
            resources.push(plan_milli_resource(&effective));
        }
        self.metrics.set_devices(
            &resources
                .iter()
                .map(|r| {
                    let healthy = r.devices.iter().filter(|d| d.health.is_healthy()).count() as u64;
                    (r.name.clone(), healthy, r.devices.len() as u64 - healthy)
                })
                .collect::<Vec<_>>(),
        );
        let view = TopologyView::new(&effective);
        let names: BTreeSet<String> = resources.iter().map(|r| r.name.clone()).collect();
        let old: BTreeSet<String> = core.senders.keys().cloned().collect();
        for resource in resources {
            let state = Arc::new(ResourceState {
                resource,
                view: view.clone(),
            });
            match core.senders.get(&state.resource.name) {
                Some(sender) => {
                    // A ListAndWatch update only when the devices changed (thousands with gpu-milli).
                    sender.send_if_modified(|current| {
                        let changed = current.resource != state.resource;
                        *current = state;
                        changed
                    });
                }
                None => {
                    let (sender, _) = watch::channel(state.clone());
                    core.senders.insert(state.resource.name.clone(), sender);
                }
            }
        }
        core.senders.retain(|name, _| names.contains(name));
        if names != old {
            if !old.is_empty() {
                tracing::info!(resources = ?names, "resource set changed: re-serving");
            }
            self.reserve.notify_one();
        }
    }

    fn resources(&self) -> Vec<(Resource, watch::Receiver<Arc<ResourceState>>)> {
        self.core()
            .senders
            .values()
            .map(|s| (s.borrow().resource.clone(), s.subscribe()))
            .collect()
    }
}

/// The servers of one round of serving; stopped and replaced when the kubelet restarts.
struct Generation {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    sockets: Vec<(PathBuf, u64)>,
}

impl Generation {
    async fn stop(self) {
        let _ = self.stop.send(true);
        for mut task in self.tasks {
            // Graceful first; a peer that holds a connection open cannot keep the plugin from moving on.
            if tokio::time::timeout(Duration::from_secs(1), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        for (path, _) in &self.sockets {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Whether every socket of this generation is still the one it bound (the kubelet deletes them).
    fn intact(&self) -> bool {
        self.sockets.iter().all(|(path, ino)| {
            std::fs::metadata(path)
                .map(|m| m.ino() == *ino)
                .unwrap_or(false)
        })
    }
}

fn serve(shared: &Arc<Shared>) -> Result<Generation> {
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut sockets = Vec::new();
    for (resource, rx) in shared.resources() {
        let path = shared.options.plugin_dir.join(resource.socket_name());
        // A socket left by an earlier run of this plugin: ours to replace.
        if path.exists() {
            std::fs::remove_file(&path).map_err(|source| Error::Socket {
                path: path.clone(),
                source,
            })?;
        }
        let listener = UnixListener::bind(&path).map_err(|source| Error::Socket {
            path: path.clone(),
            source,
        })?;
        let ino = std::fs::metadata(&path)
            .map(|m| m.ino())
            .unwrap_or_default();
        sockets.push((path.clone(), ino));
        let service = ResourceService {
            rx,
            policy: Arc::new(shared.options.policy.clone()),
            replica_strategy: shared.options.config.sharing.replica_strategy,
            metrics: shared.metrics.clone(),
            shared: shared.allocator.clone(),
            stop: stop_rx.clone(),
        };
        let mut stop_rx = stop_rx.clone();
        let name = resource.name.clone();
        tasks.push(tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(api::device_plugin_server::DevicePluginServer::new(service))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    let _ = stop_rx.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(err) = result {
                tracing::error!(resource = %name, error = %err, "device plugin server failed");
            }
        }));
        tracing::info!(resource = %resource.name, socket = %path.display(), devices = resource.devices.len(), "serving");
    }
    Ok(Generation {
        stop,
        tasks,
        sockets,
    })
}

/// Registers every served resource with the kubelet; `false` if the kubelet did not take them all.
async fn register(shared: &Arc<Shared>) -> bool {
    let kubelet = shared.options.plugin_dir.join(api::KUBELET_SOCKET);
    let channel = match connect_uds(&kubelet).await {
        Ok(channel) => channel,
        Err(err) => {
            tracing::warn!(socket = %kubelet.display(), error = %err, "kubelet not reachable yet; will retry");
            return false;
        }
    };
    let mut client = api::registration_client::RegistrationClient::new(channel);
    for (resource, _) in shared.resources() {
        let request = api::RegisterRequest {
            version: api::VERSION.to_owned(),
            endpoint: resource.socket_name(),
            resource_name: resource.name.clone(),
            options: Some(api::DevicePluginOptions {
                pre_start_required: false,
                get_preferred_allocation_available: true,
            }),
        };
        match client.register(request).await {
            Ok(_) => {
                shared.metrics.registration();
                tracing::info!(resource = %resource.name, "registered with the kubelet");
            }
            Err(status) => {
                tracing::warn!(resource = %resource.name, error = %status, "the kubelet refused registration; will retry");
                return false;
            }
        }
    }
    true
}

/// Resolves once `stop` says so (the guard `wait_for` returns must not live across an await).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn kubelet_identity(plugin_dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(plugin_dir.join(api::KUBELET_SOCKET))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Serves, registers, and re-does both whenever the kubelet restarts or the resource set changes.
async fn supervise(
    shared: Arc<Shared>,
    mut generation: Generation,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let plugin_dir = shared.options.plugin_dir.clone();
    let mut kubelet = kubelet_identity(&plugin_dir);
    let mut registered = register(&shared).await;
    let mut next_attempt = Instant::now() + Duration::from_secs(1);
    let mut poll = tokio::time::interval(shared.options.kubelet_poll);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            () = shared.reserve.notified() => {
                generation.stop().await;
                generation = serve(&shared)?;
                registered = register(&shared).await;
            }
            _ = poll.tick() => {
                let now_identity = kubelet_identity(&plugin_dir);
                let restarted = now_identity.is_some() && now_identity != kubelet;
                kubelet = now_identity;
                if restarted || !generation.intact() {
                    tracing::info!("kubelet restarted (new kubelet.sock or our socket removed): re-serving and re-registering");
                    generation.stop().await;
                    generation = serve(&shared)?;
                    registered = register(&shared).await;
                    next_attempt = Instant::now() + Duration::from_secs(1);
                } else if !registered && kubelet.is_some() && Instant::now() >= next_attempt {
                    registered = register(&shared).await;
                    next_attempt = Instant::now() + Duration::from_secs(1);
                }
            }
        }
    }
    generation.stop().await;
    Ok(())
}

/// Re-probes GPUs, applies XIDs, re-discovers on SIGHUP or a changed inventory.
async fn watch_health(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut xids: mpsc::UnboundedReceiver<(DeviceUuid, Option<u64>)>,
    mut rediscover: mpsc::UnboundedReceiver<()>,
) {
    let mut tick = tokio::time::interval(shared.options.health_interval);
    tick.tick().await;
    loop {
        let full = tokio::select! {
            () = stopped(&mut stop) => return,
            Some((uuid, xid)) = xids.recv() => {
                shared.metrics.xid(xid);
                let marked = shared.core().tracker.on_xid(&uuid, xid, Instant::now());
                tracing::warn!(gpu = %uuid, ?xid, critical = marked, "XID error");
                shared.publish(Instant::now());
                continue;
            }
            Some(()) = rediscover.recv() => true,
            _ = tick.tick() => false,
        };
        let probe = match discover(&shared.options.discovery).await {
            Ok(found) => Some(found.inventory),
            Err(err) => {
                tracing::warn!(error = %err, "GPU re-probe failed");
                None
            }
        };
        {
            let mut core = shared.core();
            if let Some(probe) = &probe {
                let known_gpus: BTreeSet<_> =
                    core.known.gpus.iter().map(|g| g.uuid.clone()).collect();
                let probe_gpus: BTreeSet<_> = probe.gpus.iter().map(|g| g.uuid.clone()).collect();
                let changed = structure(probe) != structure(&core.known);
                // A GPU missing from the probe is lost, not withdrawn; anything else that changed is a
                // reconfiguration (MIG, an edited inventory) and re-discovers.
                if full || (changed && probe_gpus.is_superset(&known_gpus)) {
                    if changed {
                        tracing::info!("GPU inventory changed: re-advertising");
                    }
                    core.known = probe.clone();
                    if let Some(cdi) = &shared.options.cdi {
                        if let Err(err) = cdi.write(&core.known) {
                            tracing::error!(error = %err, "writing the CDI spec failed");
                        }
                    }
                }
            }
            core.last_probe = probe;
        }
        shared.publish(Instant::now());
    }
}

/// Starts the plugin: discovers GPUs, writes the CDI spec, serves and registers every resource, and
/// starts the health, XID and kubelet watchers.
///
/// # Errors
/// Discovery fails, the config does not fit the node's GPUs, the CDI spec cannot be written, a socket
/// cannot be bound in the plugin directory, or the metrics address is taken.
pub async fn start(options: PluginOptions) -> Result<Running> {
    let found = discover(&options.discovery).await?;
    for warning in &found.warnings {
        tracing::warn!("{warning}");
    }
    // Fail at start on a config that does not fit the GPUs, before anything is served.
    plan_resources(&found.inventory, &options.config)?;
    if let Some(cdi) = &options.cdi {
        cdi.write(&found.inventory).map_err(Error::Cdi)?;
    }
    let metrics = Arc::new(Metrics::default());
    match &options.cluster {
        Some(cluster) => tracing::info!(node = %cluster.node, gpu_milli = cluster.gpu_milli, "publishing the node's GPUs"),
        None => tracing::warn!("no node name (--node-name, NODE_NAME): the node's GPUs are not published and shared GPUs (gantry.dev/gpu-milli) are unavailable"),
    }
    // Shared GPUs and the whole-GPU record both need the node's pods.
    let allocator = options.cluster.as_ref().map(|c| {
        Arc::new(PodAllocator::new(
            c.client.clone(),
            c.node.clone(),
            c.api_timeout,
        ))
    });
    let shared = Arc::new(Shared {
        core: Mutex::new(Core {
            known: found.inventory.clone(),
            last_probe: Some(found.inventory.clone()),
            tracker: HealthTracker::new(options.recovery_hold),
            senders: BTreeMap::new(),
        }),
        metrics: metrics.clone(),
        reserve: Notify::new(),
        node_gpus: watch::channel(None).0,
        allocator,
        options,
    });
    shared.publish(Instant::now());
    // The first publish announces every resource; serving starts below, not on that notice.
    let _ = tokio::time::timeout(Duration::ZERO, shared.reserve.notified()).await;

    let (stop, stop_rx) = watch::channel(false);
    let (rediscover_tx, rediscover_rx) = mpsc::unbounded_channel();
    let (xid_tx, xid_rx) = mpsc::unbounded_channel();

    let metrics_addr = match shared.options.metrics_addr {
        Some(addr) => Some(serve_metrics(addr, metrics.clone(), stop_rx.clone()).await?),
        None => None,
    };

    if found.backend == BackendKind::Nvml {
        let lib = shared.options.discovery.nvml_lib.clone();
        let running = Arc::new(AtomicBool::new(true));
        let keep = running.clone();
        let mut stop_flag = stop_rx.clone();
        tokio::spawn(async move {
            let _ = stop_flag.wait_for(|s| *s).await;
            keep.store(false, Ordering::SeqCst);
        });
        std::thread::spawn(move || {
            let result = gantry_discovery::watch_xids(
                lib.as_deref(),
                Duration::from_millis(500),
                &|| running.load(Ordering::SeqCst),
                &mut |event| {
                    let _ = xid_tx.send((event.uuid, event.xid));
                },
            );
            if let Err(err) = result {
                tracing::warn!(error = %err, "XID events unavailable; health comes from re-probes alone");
            }
        });
    }

    // Bind every socket before returning, so that a plugin directory we cannot use fails the start.
    let generation = serve(&shared)?;
    let health = tokio::spawn(watch_health(
        shared.clone(),
        stop_rx.clone(),
        xid_rx,
        rediscover_rx,
    ));
    let publisher = shared.options.cluster.clone().map(|cluster| {
        tokio::spawn(keep_published(
            cluster,
            shared.node_gpus.subscribe(),
            stop_rx.clone(),
        ))
    });
    let supervisor = shared.clone();
    let task = tokio::spawn(async move {
        let result = supervise(supervisor, generation, stop_rx).await;
        let _ = health.await;
        if let Some(publisher) = publisher {
            let _ = publisher.await;
        }
        result
    });
    Ok(Running {
        metrics_addr,
        metrics,
        stop,
        rediscover: rediscover_tx,
        task,
    })
}

async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Metrics { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Metrics { addr, source })?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "metrics server failed");
        }
    });
    Ok(bound)
}
