#![doc = include_str!("../README.md")]

mod cmd;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Gantry: the GPU layer for Kubernetes and containers.
#[derive(Debug, Parser)]
#[command(name = "gantry", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log format on stderr; the level comes from RUST_LOG (default `warn`, `info` for daemons).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "GANTRY_LOG_FORMAT"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the node's GPUs, MIG devices and topology.
    Gpus(cmd::gpus::Args),
    /// Run a vector add on every GPU, check it against the CPU and report memory bandwidth.
    Validate(cmd::validate::Args),
    /// Container Device Interface specs: `gantry cdi generate`.
    Cdi(cmd::cdi::Args),
    /// Run a TFJob (kubeflow.org/v1) on this machine, every replica a local process.
    Run(cmd::run::Args),
    /// Serve GPUs to the kubelet as a device plugin (nvidia.com/gpu), topology-aware and self-healing.
    DevicePlugin(cmd::device_plugin::Args),
    /// Serve kube-scheduler's extender protocol: place GPU pods on nodes and GPUs.
    ///
    /// Nodes and bound pods come from the Kubernetes API through watches (the in-cluster service
    /// account, or KUBECONFIG / ~/.kube/config). `GET /healthz` is `ok` while serving; `GET /readyz`
    /// is `ok` once the initial lists of nodes and pods are in (until then filter, prioritize and
    /// bind refuse, and kube-scheduler retries the pod).
    Scheduler(cmd::scheduler::Args),
    /// Simulate GPU placement policies on a cluster trace (the FGD paper's method).
    Simulate(cmd::simulate::Args),
    /// Print the TFJob CRD (kubeflow.org/v1) with CEL validation, generated from the types.
    Crd(cmd::crd::Args),
    /// Run the TFJob operator on Kubernetes.
    Operator(cmd::operator::Args),
}

fn init_tracing(format: LogFormat, default_level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, cli.command.default_log_level());
    match run(cli.command) {
        Ok(code) => code,
        // `gantry gpus | head` closes stdout early: that is the reader's choice, not an error.
        Err(err)
            if err
                .chain()
                .filter_map(|e| e.downcast_ref::<std::io::Error>())
                .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// One-shot commands keep stderr quiet; long-running daemons log their progress.
    fn default_log_level(&self) -> &'static str {
        match self {
            Command::DevicePlugin(_) | Command::Operator(_) | Command::Scheduler(_) => "info",
            _ => "warn",
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command {
        Command::Gpus(args) => cmd::gpus::run(&args, &mut out)?,
        Command::Cdi(args) => cmd::cdi::run(&args, &mut out)?,
        Command::Crd(args) => cmd::crd::run(&args, &mut out)?,
        Command::Operator(args) => {
            drop(out);
            cmd::operator::run(args)?;
        }
        // `gantry run` streams replica logs from several threads: it must not hold the stdout lock.
        Command::Run(args) => {
            drop(out);
            return cmd::run::run(args);
        }
        Command::DevicePlugin(args) => cmd::device_plugin::run(&args)?,
        Command::Scheduler(args) => cmd::scheduler::run(&args)?,
        Command::Simulate(args) => return cmd::simulate::run(&args),
        Command::Validate(args) => {
            if !cmd::validate::run(&args, &mut out)? {
                eprintln!("error: at least one GPU computed a wrong result (see MISMATCHES)");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
