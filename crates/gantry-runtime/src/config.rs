//! The shim's configuration file (YAML).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

/// Where the shim reads its configuration when no `--gantry-config` or `GANTRY_RUNTIME_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/gantry/runtime.yaml";

/// The runtime's configuration.
///
/// ```yaml
/// accept-env-requests: false      # honour NVIDIA_VISIBLE_DEVICES (off: only CDI annotations and volume mounts)
/// lower-runtime: runc             # a name on PATH or an absolute path
/// spec-dirs: [/etc/cdi, /var/run/cdi]   # lowest priority first
/// default-kind: nvidia.com/gpu    # the kind of bare names from the environment and volume mounts
/// log-file: /var/log/gantry-runtime.log
/// log-level: info
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub accept_env_requests: bool,
    pub lower_runtime: String,
    pub spec_dirs: Vec<PathBuf>,
    pub default_kind: String,
    pub log_file: Option<PathBuf>,
    pub log_level: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            accept_env_requests: false,
            lower_runtime: "runc".to_owned(),
            spec_dirs: vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")],
            default_kind: "nvidia.com/gpu".to_owned(),
            log_file: None,
            log_level: "info".to_owned(),
        }
    }
}

impl RuntimeConfig {
    /// Parses a config document; errors name the file and line.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let config: RuntimeConfig = serde_yaml::from_str(text).map_err(|err| Error::Config {
            path: path.to_owned(),
            message: err.to_string(),
        })?;
        config
            .default_kind
            .parse::<gantry_cdi::Kind>()
            .map_err(|err| Error::Config {
                path: path.to_owned(),
                message: format!("default-kind: {err}"),
            })?;
        if config.lower_runtime.trim().is_empty() {
            return Err(Error::Config {
                path: path.to_owned(),
                message: "lower-runtime is empty".to_owned(),
            });
        }
        Ok(config)
    }

    /// Loads `path`; a missing file gives the defaults unless `required` (the path was given explicitly).
    pub fn load(path: &Path, required: bool) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Self::default())
            }
            Err(err) => Err(Error::io(path)(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_secure() {
        let config = RuntimeConfig::parse("", Path::new("r.yaml")).unwrap();
        assert!(!config.accept_env_requests);
        assert_eq!(config.lower_runtime, "runc");
        assert_eq!(
            config.spec_dirs,
            [PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")]
        );
    }

    #[test]
    fn parses_and_rejects_unknown_keys() {
        let config = RuntimeConfig::parse(
            "accept-env-requests: true\nspec-dirs: [/tmp/cdi]\nlower-runtime: /usr/sbin/runc\n",
            Path::new("r.yaml"),
        )
        .unwrap();
        assert!(config.accept_env_requests);
        assert_eq!(config.spec_dirs, [PathBuf::from("/tmp/cdi")]);
        let err = RuntimeConfig::parse("accept-env: true\n", Path::new("r.yaml")).unwrap_err();
        assert!(
            err.to_string().contains("r.yaml") && err.to_string().contains("accept-env"),
            "{err}"
        );
        assert!(RuntimeConfig::parse("default-kind: gpu\n", Path::new("r.yaml")).is_err());
        assert!(RuntimeConfig::load(Path::new("/nonexistent/r.yaml"), false).is_ok());
        assert!(RuntimeConfig::load(Path::new("/nonexistent/r.yaml"), true).is_err());
    }
}
