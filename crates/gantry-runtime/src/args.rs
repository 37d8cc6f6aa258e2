//! The runc command line, read just enough to know the subcommand, the bundle and the `--log` file.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// runc's global flags that take a value (`--root DIR`); every other global flag is a switch.
const GLOBAL_VALUE_FLAGS: &[&str] = &["--root", "--log", "--log-format", "--criu", "--rootless"];

/// The shim's own flag, removed before the arguments go to the lower runtime.
pub const CONFIG_FLAG: &str = "--gantry-config";

/// What the shim needs from its arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuncArgs {
    /// The arguments for the lower runtime: all of ours, less `--gantry-config PATH`.
    pub forwarded: Vec<OsString>,
    pub config: Option<PathBuf>,
    pub subcommand: Option<String>,
    /// Arguments after the subcommand.
    pub rest: Vec<OsString>,
    pub log: Option<PathBuf>,
    pub log_format: Option<String>,
}

impl RuncArgs {
    /// The bundle of `create`/`run`: `--bundle DIR`, `-b DIR`, `--bundle=DIR`, or `.` by default.
    pub fn bundle(&self) -> PathBuf {
        let mut iter = self.rest.iter();
        while let Some(arg) = iter.next() {
            let text = arg.to_string_lossy();
            if text == "--" {
                break;
            }
            if text == "--bundle" || text == "-b" {
                if let Some(value) = iter.next() {
                    return PathBuf::from(value);
                }
            } else if let Some(value) = text
                .strip_prefix("--bundle=")
                .or_else(|| text.strip_prefix("-b="))
            {
                return PathBuf::from(value);
            }
        }
        PathBuf::from(".")
    }
}

/// Splits runc's arguments (without the program name).
pub fn parse(args: &[OsString]) -> Result<RuncArgs, String> {
    let mut out = RuncArgs::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let text = arg.to_string_lossy().into_owned();
        if out.subcommand.is_some() {
            out.rest.push(arg.clone());
            out.forwarded.push(arg.clone());
            i += 1;
            continue;
        }
        if text == CONFIG_FLAG {
            let value = args
                .get(i + 1)
                .ok_or_else(|| format!("{CONFIG_FLAG} needs a path"))?;
            out.config = Some(PathBuf::from(value));
            i += 2;
            continue;
        }
        if let Some(value) = text.strip_prefix(&format!("{CONFIG_FLAG}=")) {
            out.config = Some(PathBuf::from(value));
            i += 1;
            continue;
        }
        if !text.starts_with('-') {
            out.subcommand = Some(text);
            out.forwarded.push(arg.clone());
            i += 1;
            continue;
        }
        out.forwarded.push(arg.clone());
        // `--log x` and `--log=x` (urfave/cli also accepts a single dash).
        let flag = format!("--{}", text.trim_start_matches('-'));
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (flag.clone(), None),
        };
        let value = if GLOBAL_VALUE_FLAGS.contains(&name.as_str()) && inline.is_none() {
            let value = args
                .get(i + 1)
                .ok_or_else(|| format!("{name} needs a value"))?;
            out.forwarded.push(value.clone());
            i += 1;
            Some(value.to_string_lossy().into_owned())
        } else {
            inline
        };
        match name.as_str() {
            "--log" => out.log = value.map(PathBuf::from),
            "--log-format" => out.log_format = value,
            _ => {}
        }
        i += 1;
    }
    Ok(out)
}

/// True for the subcommands whose bundle the shim edits.
pub fn edits_bundle(subcommand: Option<&str>) -> bool {
    matches!(subcommand, Some("create" | "run"))
}

/// `OsStr` helper for tests and callers.
pub fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(|a| OsStr::new(a).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_style_create() {
        let args = os(&[
            "--gantry-config",
            "/etc/g.yaml",
            "--root",
            "/run/docker/runtime-runc/moby",
            "--log",
            "/run/x/log.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/run/x/b",
            "--pid-file",
            "/run/x/pid",
            "abc",
        ]);
        let parsed = parse(&args).unwrap();
        assert_eq!(parsed.config, Some(PathBuf::from("/etc/g.yaml")));
        assert_eq!(parsed.subcommand.as_deref(), Some("create"));
        assert_eq!(parsed.log, Some(PathBuf::from("/run/x/log.json")));
        assert_eq!(parsed.log_format.as_deref(), Some("json"));
        assert_eq!(parsed.bundle(), PathBuf::from("/run/x/b"));
        assert_eq!(
            parsed.forwarded,
            args[2..].to_vec(),
            "everything but our own flag goes on"
        );
    }

    #[test]
    fn bundle_forms_and_defaults() {
        for (args, bundle) in [
            (vec!["run", "-b", "/b", "id"], "/b"),
            (vec!["--log=/l", "run", "--bundle=/c", "id"], "/c"),
            (vec!["run", "id"], "."),
            (vec!["--debug", "create", "id"], "."),
        ] {
            assert_eq!(
                parse(&os(&args)).unwrap().bundle(),
                PathBuf::from(bundle),
                "{args:?}"
            );
        }
        assert_eq!(
            parse(&os(&["--log=/l", "state", "x"])).unwrap().log,
            Some(PathBuf::from("/l"))
        );
    }

    #[test]
    fn passthrough_subcommands_and_errors() {
        let parsed = parse(&os(&["--root", "/r", "delete", "--force", "id"])).unwrap();
        assert_eq!(parsed.subcommand.as_deref(), Some("delete"));
        assert!(!edits_bundle(parsed.subcommand.as_deref()));
        assert!(edits_bundle(Some("run")));
        assert!(parse(&os(&["--root"])).is_err());
        assert!(parse(&os(&["--gantry-config"])).is_err());
        assert_eq!(parse(&os(&["--version"])).unwrap().subcommand, None);
    }
}
