//! `gantry device-plugin`: the kubelet device plugin daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use gantry_device_plugin::allocate::{parse_strategies, AllocatePolicy};
use gantry_device_plugin::config::{MigStrategy, PluginConfig, SharedResource};
use gantry_device_plugin::{start, PluginOptions};

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

    /// How often GPUs are re-probed for health, recovery and inventory changes (e.g. 10s, 500ms).
    #[arg(long, env = "GANTRY_HEALTH_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub health_interval: Duration,

    /// How long a GPU stays unhealthy after a critical XID before a good probe restores it.
    #[arg(long, env = "GANTRY_RECOVERY_HOLD", default_value = "60s", value_parser = parse_duration)]
    pub recovery_hold: Duration,

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
            cdi: None,
        })
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let options = args.options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
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
