//! `gantry run JOB.yaml`: a TFJob on this machine, each replica a local process.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use gantry_local::{
    Console, ConsoleOptions, GpuProvider, Launch, Outcome, PrepareOptions, RunOptions,
};

use crate::cmd::discovery_args::DiscoveryArgs;
use crate::output::{write_structured, OutputFormat, Table};

/// When to colour the log prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Colour {
    /// When stdout is a terminal and NO_COLOR is unset.
    Auto,
    Always,
    Never,
}

/// Run a TFJob on this machine.
///
/// Every replica of the job becomes a local process started from its `tensorflow` container's
/// command, args, env and workingDir (the image is ignored). TF_CONFIG points at 127.0.0.1 with ports
/// chosen once per run. Restart policies, backoff limit, deadline and success rules are the same
/// planner's as on Kubernetes. Relative commands and working directories resolve against the
/// manifest's directory. The exit status is the job's outcome: 0 succeeded, 1 failed, 130 interrupted.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The TFJob manifest (YAML or JSON); `-` reads stdin.
    pub job: PathBuf,

    /// Print what would start (every replica's command and TF_CONFIG) and start nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Format of stdout: the dry-run plan or the final outcome. With json/yaml, replica logs go to stderr.
    #[arg(
        long,
        short,
        value_enum,
        default_value = "table",
        env = "GANTRY_OUTPUT"
    )]
    pub output: OutputFormat,

    /// Directory for per-replica logs, launch.json and outcome.json [default: run/<job>-<unix time>].
    #[arg(long, env = "GANTRY_RUN_DIR")]
    pub run_dir: Option<PathBuf>,

    /// Seconds between SIGTERM and SIGKILL when stopping replicas.
    #[arg(long, default_value_t = 10.0, env = "GANTRY_GRACE_PERIOD")]
    pub grace_period: f64,

    /// Seconds before an in-place restart (restartPolicy Always/OnFailure).
    #[arg(long, default_value_t = 1.0, env = "GANTRY_RESTART_DELAY")]
    pub restart_delay: f64,

    /// Unknown fields in the manifest are an error instead of a warning.
    #[arg(long, env = "GANTRY_STRICT")]
    pub strict: bool,

    /// Colour the `[worker-1]` prefixes.
    #[arg(long, value_enum, default_value = "auto", env = "GANTRY_COLOR")]
    pub color: Colour,

    /// How to find the node's GPUs; discovery runs only when a replica requests nvidia.com/gpu.
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

/// GPUs from the shared discovery flags, discovered only when a replica asks for some.
struct Discovered<'a>(&'a DiscoveryArgs);

impl GpuProvider for Discovered<'_> {
    fn inventory(&self) -> Result<gantry_gpu::NodeInventory, String> {
        self.0
            .discover()
            .map(|found| found.inventory)
            .map_err(|e| format!("{e:#}"))
    }
}

fn read_manifest(path: &Path) -> anyhow::Result<(String, String, PathBuf)> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the TFJob from stdin")?;
        let cwd = std::env::current_dir().context("reading the current directory")?;
        return Ok((text, "-".to_string(), cwd));
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let dir = path
        .canonicalize()
        .with_context(|| format!("resolving {}", path.display()))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    Ok((text, path.display().to_string(), dir))
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("{flag} must be a non-negative number of seconds"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (text, source, base_dir) = read_manifest(&args.job)?;
    let parsed = gantry_tfjob::parse_tfjob(&text, &source, args.strict)?;
    for warning in &parsed.warnings {
        eprintln!("warning: {source}: {warning}");
    }
    let options = PrepareOptions {
        base_dir,
        search_path: std::env::var_os("PATH"),
        ports: Default::default(),
    };
    let prepared = gantry_local::prepare(parsed.job, options, &Discovered(&args.discovery))?;
    for warning in &prepared.warnings {
        eprintln!("note: {warning}");
    }
    let mut stdout = std::io::stdout().lock();
    if args.dry_run {
        match args.output {
            OutputFormat::Table => write_launch_table(&mut stdout, &prepared.launch)?,
            format => write_structured(&mut stdout, format, &prepared.launch)?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    drop(stdout);

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the Ctrl-C handler")?;
    }
    let colour = match args.color {
        Colour::Always => true,
        Colour::Never => false,
        Colour::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let console = Arc::new(Console::new(ConsoleOptions {
        color: colour,
        logs_to_stderr: args.output != OutputFormat::Table,
        status_line: std::io::stderr().is_terminal(),
    }));
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        PathBuf::from("run").join(format!("{}-{stamp}", prepared.launch.job))
    });
    let run_options = RunOptions {
        run_dir,
        grace_period: seconds(args.grace_period, "--grace-period")?,
        restart_delay: seconds(args.restart_delay, "--restart-delay")?,
        ..RunOptions::default()
    };
    let outcome = gantry_local::run(&prepared, &run_options, console, &stop)?;
    let mut stdout = std::io::stdout().lock();
    match args.output {
        OutputFormat::Table => write_outcome_table(&mut stdout, &outcome)?,
        format => write_structured(&mut stdout, format, &outcome)?,
    }
    Ok(match outcome.result.as_str() {
        "Succeeded" => ExitCode::SUCCESS,
        "Interrupted" => ExitCode::from(130),
        _ => ExitCode::FAILURE,
    })
}

fn write_launch_table(out: &mut dyn Write, launch: &Launch) -> anyhow::Result<()> {
    let mut table = Table::new(["REPLICA", "POD", "RESTART", "PORT", "GPUS", "COMMAND"]);
    for r in &launch.replicas {
        let mut command = vec![r.program.display().to_string()];
        command.extend(r.args.iter().cloned());
        table.row([
            r.short_name.clone(),
            r.name.clone(),
            r.restart_policy.clone(),
            r.port.to_string(),
            if r.gpus.is_empty() {
                "-".to_string()
            } else {
                r.gpus.join(",")
            },
            command.join(" "),
        ]);
    }
    table.write(out)?;
    writeln!(out)?;
    for r in &launch.replicas {
        match &r.tf_config {
            Some(tf) => writeln!(out, "TF_CONFIG {}: {tf}", r.short_name)?,
            None => writeln!(
                out,
                "TF_CONFIG {}: (none: single-replica job)",
                r.short_name
            )?,
        }
    }
    Ok(())
}

fn write_outcome_table(out: &mut dyn Write, outcome: &Outcome) -> anyhow::Result<()> {
    let mut table = Table::new(["REPLICA", "STATE", "EXIT", "STARTS", "LOG"]);
    for r in &outcome.replicas {
        table.row([
            r.short_name.clone(),
            r.state.clone(),
            r.exit_code
                .map_or_else(|| "-".to_string(), |c| c.to_string()),
            r.starts.to_string(),
            r.log.display().to_string(),
        ]);
    }
    table.write(out)?;
    writeln!(
        out,
        "job {} {} in {:.1}s: {}",
        outcome.job, outcome.result, outcome.seconds, outcome.message
    )?;
    if outcome.result != "Succeeded"
        && outcome.result != "Interrupted"
        && outcome.message.is_empty()
    {
        bail!(
            "job {} ended without a Succeeded or Failed condition",
            outcome.job
        );
    }
    Ok(())
}
