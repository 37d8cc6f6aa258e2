//! `gantry device-plugin`: the kubelet device plugin daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gantry_device_plugin::allocate::{parse_strategies, AllocatePolicy};
use gantry_device_plugin::config::{MigStrategy, PluginConfig, SharedResource};
use gantry_device_plugin::{start, CdiWriter, ClusterOptions, PluginOptions};
use gantry_gpu::NodeInventory;

use super::discovery_args::DiscoveryArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MigStrategyArg {
    None,
    Single,
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplicaStrategyArg {
    Spread,
    Pack,
}

/// Serve GPUs to the kubelet as `nvidia.com/gpu` (device plugin API v1beta1).
///
/// Every flag has an environment variable; flags override the config file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kubelet's device plugin directory (holds kubelet.sock).
    #[arg(
        long,
        env = "GANTRY_PLUGIN_DIR",
        default_value = "/var/lib/kubelet/device-plugins"
    )]
    pub plugin_dir: PathBuf,

    /// Config file (YAML, NVIDIA's shape: flags.migStrategy, sharing.timeSlicing).
    #[arg(long, env = "GANTRY_DEVICE_PLUGIN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// MIG strategy: none (whole GPUs), single (MIG devices as nvidia.com/gpu), mixed (nvidia.com/mig-<profile>).
    #[arg(long, value_enum, env = "GANTRY_MIG_STRATEGY")]
    pub mig_strategy: Option<MigStrategyArg>,

    /// Time-slicing: advertise each nvidia.com/gpu this many times (IDs <uuid>::<n>).
    #[arg(long, env = "GANTRY_TIME_SLICING_REPLICAS", value_name = "N")]
    pub time_slicing_replicas: Option<u32>,

    /// With time-slicing, advertise nvidia.com/gpu.shared instead of nvidia.com/gpu.
    #[arg(long, env = "GANTRY_RENAME_SHARED")]
    pub rename_shared: bool,

    /// With time-slicing, refuse a container asking for more than one shared device.
    #[arg(long, env = "GANTRY_FAIL_REQUESTS_GREATER_THAN_ONE")]
    pub fail_requests_greater_than_one: bool,

    /// With time-slicing, hand out replicas spread over GPUs or packed onto busy ones.
    #[arg(long, value_enum, env = "GANTRY_REPLICA_STRATEGY")]
    pub replica_strategy: Option<ReplicaStrategyArg>,

    /// How Allocate names devices: comma-separated cdi-cri, cdi-annotations, envvar, volume-mounts.
    #[arg(
        long,
        env = "GANTRY_DEVICE_LIST_STRATEGY",
        default_value = "cdi-cri,cdi-annotations"
    )]
    pub device_list_strategy: String,

    /// Also return DeviceSpecs (/dev/nvidia*) in Allocate, for runtimes without CDI.
    #[arg(long, env = "GANTRY_PASS_DEVICE_SPECS")]
    pub pass_device_specs: bool,

    /// CDI kind of the devices handed out (must match the generated CDI spec).
    #[arg(long, env = "GANTRY_CDI_KIND", default_value = "nvidia.com/gpu")]
    pub cdi_kind: String,

    /// Directory the node's CDI spec is written to at start and on every re-discovery, so the names
    /// Allocate hands out always resolve.
    #[arg(long, env = "GANTRY_CDI_SPEC_DIR", default_value = "/var/run/cdi")]
    pub cdi_spec_dir: PathBuf,

    /// Do not write a CDI spec (another tool owns it); the names handed out must still resolve.
    #[arg(long, env = "GANTRY_NO_CDI_SPEC")]
    pub no_cdi_spec: bool,

    /// gantry-runtime, for the CDI spec's ld-cache hook (default: beside this binary).
    #[arg(long, env = "GANTRY_HOOK_PATH", value_name = "PATH")]
    pub hook_path: Option<PathBuf>,

    /// How often GPUs are re-probed for health, recovery and inventory changes (e.g. 10s, 500ms).
    #[arg(long, env = "GANTRY_HEALTH_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub health_interval: Duration,

    /// How long a GPU stays unhealthy after a critical XID before a good probe restores it.
    #[arg(long, env = "GANTRY_RECOVERY_HOLD", default_value = "60s", value_parser = parse_duration)]
    pub recovery_hold: Duration,

    /// This node's name (the downward API's spec.nodeName). With it the plugin publishes the node's
    /// GPUs (annotation gantry.dev/gpus and gantry.dev/gpu.* labels on its Node), advertises
    /// gantry.dev/gpu-milli and hands shared GPUs out as gantry-scheduler recorded them. Without it
    /// (local development) it only serves the kubelet.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// With --node-name, do not advertise gantry.dev/gpu-milli (shared GPUs placed by gantry-scheduler).
    #[arg(long, env = "GANTRY_NO_GPU_MILLI")]
    pub no_gpu_milli: bool,

    /// Address of /metrics and /healthz; `off` to serve none.
    #[arg(long, env = "GANTRY_METRICS_ADDR", default_value = "0.0.0.0:9402")]
    pub metrics_addr: String,

    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "s"), |i| text.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write e.g. 10s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s or m"
            ))
        }
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("{text:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl Args {
    /// The config file with flags applied over it.
    fn plugin_config(&self) -> anyhow::Result<PluginConfig> {
        let mut config = match &self.config {
            Some(path) => PluginConfig::load(path)?,
            None => PluginConfig::default(),
        };
        if let Some(strategy) = self.mig_strategy {
            config.flags.mig_strategy = Some(match strategy {
                MigStrategyArg::None => MigStrategy::None,
                MigStrategyArg::Single => MigStrategy::Single,
                MigStrategyArg::Mixed => MigStrategy::Mixed,
            });
        }
        if let Some(replicas) = self.time_slicing_replicas {
            anyhow::ensure!(replicas >= 1, "--time-slicing-replicas must be at least 1");
            let sharing = &mut config.sharing.time_slicing;
            sharing.resources.retain(|r| r.name != "nvidia.com/gpu");
            sharing.resources.push(SharedResource {
                name: "nvidia.com/gpu".to_owned(),
                replicas,
                rename: None,
            });
        }
        if self.rename_shared {
            config.sharing.time_slicing.rename_by_default = true;
        }
        if self.fail_requests_greater_than_one {
            config.sharing.time_slicing.fail_requests_greater_than_one = true;
        }
        if let Some(strategy) = self.replica_strategy {
            config.sharing.replica_strategy = match strategy {
                ReplicaStrategyArg::Spread => gantry_allocation::ReplicaStrategy::Spread,
                ReplicaStrategyArg::Pack => gantry_allocation::ReplicaStrategy::Pack,
            };
        }
        Ok(config)
    }

    fn options(&self) -> anyhow::Result<PluginOptions> {
        let metrics_addr: Option<SocketAddr> =
            match self.metrics_addr.as_str() {
                "off" | "" => None,
                addr => Some(addr.parse().with_context(|| {
                    format!("--metrics-addr {addr:?}: expected HOST:PORT or off")
                })?),
            };
        Ok(PluginOptions {
            plugin_dir: self.plugin_dir.clone(),
            discovery: self.discovery.config(),
            config: self.plugin_config()?,
            policy: AllocatePolicy {
                strategies: parse_strategies(&self.device_list_strategy)
                    .map_err(|e| anyhow::anyhow!("--device-list-strategy: {e}"))?,
                pass_device_specs: self.pass_device_specs,
                cdi_kind: self.cdi_kind.clone(),
            },
            health_interval: self.health_interval,
            recovery_hold: self.recovery_hold,
            kubelet_poll: Duration::from_millis(100),
            metrics_addr,
            // Filled in by `run` once the runtime can build the Kubernetes client.
            cluster: None,
            cdi: if self.no_cdi_spec {
                None
            } else {
                Some(Arc::new(SpecWriter {
                    root: self.discovery.root.clone(),
                    kind: self.cdi_kind.parse().context("--cdi-kind")?,
                    path: self
                        .cdi_spec_dir
                        .join(format!("{}.yaml", self.cdi_kind.replace('/', "-"))),
                    hook_path: self
                        .hook_path
                        .clone()
                        .unwrap_or_else(super::cdi::default_hook_path),
                }))
            },
        })
    }
}

/// Writes the node's CDI spec (both naming schemes: the plugin hands out UUID names) and the
/// `/dev/char` links, through the same generator as `gantry cdi generate`.
#[derive(Debug)]
struct SpecWriter {
    root: PathBuf,
    kind: gantry_cdi::Kind,
    path: PathBuf,
    hook_path: PathBuf,
}

impl CdiWriter for SpecWriter {
    fn write(&self, inventory: &NodeInventory) -> Result<(), String> {
        let files =
            gantry_driver::discover_driver_files(&self.root, inventory.driver_version.as_deref())
                .map_err(|e| {
                format!(
                    "reading the driver's files under {}: {e}",
                    self.root.display()
                )
            })?;
        let options = gantry_cdi::GenerateOptions {
            kind: self.kind.clone(),
            naming: gantry_cdi::NamingStrategy::Both,
            hook_path: Some(self.hook_path.to_string_lossy().into_owned()),
        };
        let spec = gantry_cdi::generate(inventory, &files, &options).map_err(|e| e.to_string())?;
        let text = spec.to_yaml().map_err(|e| e.to_string())?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        gantry_driver::atomic_write(&self.path, text.as_bytes(), 0o644)
            .map_err(|e| e.to_string())?;
        // Without these links a later `systemctl daemon-reload` drops the containers' device rules.
        if let Err(err) = gantry_driver::create_dev_char_links(&self.root) {
            tracing::warn!(error = %err, "making /dev/char links failed");
        }
        tracing::info!(spec = %self.path.display(), devices = spec.devices.len(), "CDI spec written");
        Ok(())
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut options = args.options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Without a node name the plugin warns that nothing is published.
        if let Some(node) = args.node_name.as_deref().filter(|n| !n.is_empty()) {
            let client = kube::Client::try_default().await.with_context(|| {
                format!("connecting to Kubernetes (in-cluster config or KUBECONFIG) to publish node {node}'s GPUs; unset --node-name/NODE_NAME to run without")
            })?;
            let mut cluster = ClusterOptions::new(client, node);
            cluster.gpu_milli = !args.no_gpu_milli;
            options.cluster = Some(cluster);
        }
        let mut running = start(options).await?;
        if let Some(addr) = running.metrics_addr {
            tracing::info!("metrics on http://{addr}/metrics");
        }
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: re-discovering GPUs");
                    running.rediscover();
                }
                _ = terminate.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                result = running.wait() => return result.map_err(anyhow::Error::from),
            }
        }
        tracing::info!("stopping: removing sockets");
        running.stop().await.map_err(anyhow::Error::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
