//! `gantry-runtime`: invoked exactly as runc is. See the crate README.
//!
//! stdout belongs to the container: nothing here writes to it.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use gantry_runtime::args::{self, RuncArgs};
use gantry_runtime::{error_log, hook, Error, RuntimeConfig, DEFAULT_CONFIG_PATH};

/// Environment variable naming the config file when `--gantry-config` is not given.
const CONFIG_ENV: &str = "GANTRY_RUNTIME_CONFIG";

const USAGE: &str = "gantry-runtime: an OCI runtime shim that applies CDI devices, then runs the lower runtime

Usage:
  gantry-runtime [--gantry-config FILE] [RUNC GLOBAL FLAGS] COMMAND [ARGS]...
      create/run edit <bundle>/config.json, then exec the lower runtime with the same arguments;
      every other command goes straight to the lower runtime.
  gantry-runtime hook update-ldcache --folder DIR [--folder DIR]...
      OCI createContainer hook: refresh the container's /etc/ld.so.cache (state on stdin).

Config file (YAML; --gantry-config, else $GANTRY_RUNTIME_CONFIG, else /etc/gantry/runtime.yaml):
  accept-env-requests: false   # honour NVIDIA_VISIBLE_DEVICES (off: CDI annotations and volume mounts only)
  lower-runtime: runc
  spec-dirs: [/etc/cdi, /var/run/cdi]
  default-kind: nvidia.com/gpu
  log-file: /var/log/gantry-runtime.log
";

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let parsed = match args::parse(&argv) {
        Ok(parsed) => parsed,
        Err(message) => return fail(&Error::Usage(message), None),
    };
    // Our own help for a person typing `gantry-runtime --help`; engines never ask. `help` and
    // `COMMAND --help` go to the lower runtime, whose commands these are.
    if parsed.subcommand.is_none() && argv.iter().any(|a| a == "--help" || a == "-h") {
        eprint!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let (config_path, required) = match &parsed.config {
        Some(path) => (path.clone(), true),
        None => match std::env::var_os(CONFIG_ENV) {
            Some(path) => (PathBuf::from(path), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        },
    };
    let config = match RuntimeConfig::load(&config_path, required) {
        Ok(config) => config,
        Err(err) => return fail(&err, parsed.log.as_deref()),
    };
    init_logging(&config);

    if parsed.subcommand.as_deref() == Some("hook") {
        return match run_hook(&parsed) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&err, None),
        };
    }
    match shim(&parsed, &config) {
        // `shim` only returns on error: on success it has become the lower runtime.
        Err(err) => fail(&err, parsed.log.as_deref()),
    }
}

/// Edits the bundle for `create`/`run`, then execs the lower runtime with the forwarded arguments.
fn shim(parsed: &RuncArgs, config: &RuntimeConfig) -> Result<std::convert::Infallible, Error> {
    // Find the lower runtime first: a missing one must not leave an edited config.json behind.
    let search_path = std::env::var("PATH").ok();
    let lower = gantry_runtime::find_lower_runtime(&config.lower_runtime, search_path.as_deref())?;
    if args::edits_bundle(parsed.subcommand.as_deref()) {
        let bundle = parsed.bundle();
        let outcome = gantry_runtime::prepare_bundle(&bundle, config)?;
        tracing::debug!(?outcome, bundle = %bundle.display(), "bundle prepared");
    }
    let err = std::process::Command::new(&lower)
        .arg0(&config.lower_runtime)
        .args(&parsed.forwarded)
        .exec();
    Err(Error::Exec {
        path: lower,
        source: err,
    })
}

fn run_hook(parsed: &RuncArgs) -> Result<(), Error> {
    let mut rest = parsed.rest.iter().map(|a| a.to_string_lossy().into_owned());
    match rest.next().as_deref() {
        Some("update-ldcache") => {}
        other => {
            return Err(Error::Usage(format!(
                "unknown hook {other:?}; the hook is update-ldcache"
            )))
        }
    }
    let mut folders = Vec::new();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--folder" => folders.push(
                rest.next()
                    .ok_or_else(|| Error::Usage("--folder needs a path".to_owned()))?,
            ),
            other => match other.strip_prefix("--folder=") {
                Some(folder) => folders.push(folder.to_owned()),
                None => return Err(Error::Usage(format!("unknown hook argument {other:?}"))),
            },
        }
    }
    let rootfs = hook::rootfs_from_state(&mut std::io::stdin().lock())?;
    hook::update_ldcache(&rootfs, &folders)?;
    Ok(())
}

/// Logs the error, prints it to stderr, and writes runc's JSON error line to the caller's `--log`.
fn fail(err: &Error, log: Option<&Path>) -> ExitCode {
    let message = format!("gantry-runtime: {err}");
    tracing::error!(kind = err.kind(), "{message}");
    eprintln!("{message}");
    if let Some(log) = log {
        error_log::write_error_line(log, &message, SystemTime::now());
    }
    ExitCode::FAILURE
}

fn init_logging(config: &RuntimeConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match &config.log_file {
        Some(path) => {
            let Ok(file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            else {
                eprintln!(
                    "gantry-runtime: cannot open log file {}; logging to stderr",
                    path.display()
                );
                return;
            };
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .try_init();
        }
        None => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .try_init();
        }
    }
}
