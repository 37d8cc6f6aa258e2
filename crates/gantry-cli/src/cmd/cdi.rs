//! `gantry cdi generate`: a CDI spec for the node's GPUs and driver files.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use gantry_cdi::{GenerateOptions, Kind, NamingStrategy};

use super::discovery_args::DiscoveryArgs;

/// Container Device Interface specs.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: CdiCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CdiCommand {
    /// Write a CDI spec with one device per GPU and per MIG device, plus `all`.
    Generate(GenerateArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NameStrategyArg {
    /// `0`, `1`, and `0:1` for MIG devices.
    Index,
    /// `GPU-…` and `MIG-…`.
    Uuid,
    /// Both names for each device.
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpecFormat {
    Yaml,
    Json,
}

/// Generate a CDI spec (cdiVersion 0.5.0) from the node's GPUs and the driver's files under --root.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// CDI kind of the devices (VENDOR/CLASS); tests use a kind of their own.
    #[arg(long, default_value = "nvidia.com/gpu", env = "GANTRY_CDI_KIND")]
    pub kind: String,

    /// How devices are named. `both` serves the device plugin (which asks by UUID) and people (`=1`).
    #[arg(
        long,
        value_enum,
        default_value = "both",
        env = "GANTRY_CDI_DEVICE_NAME_STRATEGY"
    )]
    pub device_name_strategy: NameStrategyArg,

    /// Where to write the spec (`-` for stdout), e.g. /etc/cdi/nvidia.yaml; written atomically.
    #[arg(long, default_value = "-", value_name = "FILE")]
    pub out: PathBuf,

    /// Format of the spec; by default taken from the --out extension (.json), else YAML.
    #[arg(long, short, value_enum)]
    pub output: Option<SpecFormat>,

    /// Absolute path of `gantry-runtime` for the ld-cache hook [default: next to this binary, else
    /// /usr/bin/gantry-runtime].
    #[arg(long, env = "GANTRY_HOOK_PATH", value_name = "PATH")]
    pub hook_path: Option<PathBuf>,

    /// Leave out the hook that refreshes the container's ld cache.
    #[arg(long)]
    pub no_ldcache_hook: bool,

    /// Also make /dev/char/MAJOR:MINOR links for every NVIDIA device node under --root, so a later
    /// `systemctl daemon-reload` keeps containers' device rules.
    #[arg(long)]
    pub create_dev_char_links: bool,

    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

pub fn default_hook_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("gantry-runtime")))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/gantry-runtime"))
}

pub fn run(args: &Args, out: &mut dyn Write) -> anyhow::Result<()> {
    match &args.command {
        CdiCommand::Generate(args) => generate(args, out),
    }
}

fn generate(args: &GenerateArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let kind: Kind = args.kind.parse().context("--kind")?;
    let root = &args.discovery.root;
    let found = args.discovery.discover()?;
    let inventory = found.inventory;
    let files = gantry_driver::discover_driver_files(root, inventory.driver_version.as_deref())
        .with_context(|| format!("reading the driver's files under --root {}", root.display()))?;
    let hook_path = if args.no_ldcache_hook {
        None
    } else {
        let path = args.hook_path.clone().unwrap_or_else(default_hook_path);
        anyhow::ensure!(
            path.is_absolute(),
            "--hook-path {} must be absolute: the runtime runs the hook without a search path",
            path.display()
        );
        Some(path.to_string_lossy().into_owned())
    };
    let options = GenerateOptions {
        kind,
        naming: match args.device_name_strategy {
            NameStrategyArg::Index => NamingStrategy::Index,
            NameStrategyArg::Uuid => NamingStrategy::Uuid,
            NameStrategyArg::Both => NamingStrategy::Both,
        },
        hook_path,
    };
    let spec = gantry_cdi::generate(&inventory, &files, &options)?;
    let format = args.output.unwrap_or_else(|| {
        if args.out.extension().is_some_and(|e| e == "json") {
            SpecFormat::Json
        } else {
            SpecFormat::Yaml
        }
    });
    let text = match format {
        SpecFormat::Json => spec.to_json()?,
        SpecFormat::Yaml => spec.to_yaml()?,
    };
    if args.create_dev_char_links {
        let made = gantry_driver::create_dev_char_links(root)
            .with_context(|| format!("making /dev/char links under {}", root.display()))?;
        tracing::info!("{} /dev/char link(s) made or corrected", made.len());
    }
    if args.out == Path::new("-") {
        out.write_all(text.as_bytes())?;
        return Ok(());
    }
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    gantry_driver::atomic_write(&args.out, text.as_bytes(), 0o644)?;
    tracing::info!(
        "wrote {} with {} device(s) of kind {}",
        args.out.display(),
        spec.devices.len(),
        spec.kind
    );
    Ok(())
}
