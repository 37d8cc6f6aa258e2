//! The plugin's config file (YAML), in the shape NVIDIA's plugin uses, so existing ConfigMaps carry over.
//!
//! ```yaml
//! version: v1
//! flags:
//!   migStrategy: mixed              # none | single | mixed
//! sharing:
//!   timeSlicing:
//!     renameByDefault: false        # advertise <name>.shared instead of <name>
//!     failRequestsGreaterThanOne: true
//!     resources:
//!       - name: nvidia.com/gpu
//!         replicas: 4
//!   replicaStrategy: spread         # Gantry: spread | pack, for GetPreferredAllocation
//! ```

use std::path::Path;

use gantry_allocation::ReplicaStrategy;
use serde::Deserialize;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigStrategy {
    /// Whole GPUs only, as `nvidia.com/gpu`.
    #[default]
    None,
    /// Every GPU is MIG-enabled with one profile: MIG devices are advertised as `nvidia.com/gpu`.
    Single,
    /// Whole GPUs as `nvidia.com/gpu`, MIG devices as `nvidia.com/mig-<profile>`, each its own resource.
    Mixed,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Flags {
    pub mig_strategy: Option<MigStrategy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SharedResource {
    pub name: String,
    pub replicas: u32,
    /// Advertise as `<name>.shared`; the resource-level value overrides `renameByDefault`.
    pub rename: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimeSlicing {
    #[serde(default)]
    pub rename_by_default: bool,
    #[serde(default)]
    pub fail_requests_greater_than_one: bool,
    #[serde(default)]
    pub resources: Vec<SharedResource>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sharing {
    #[serde(default)]
    pub time_slicing: TimeSlicing,
    #[serde(default)]
    pub replica_strategy: ReplicaStrategy,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginConfig {
    pub version: Option<String>,
    #[serde(default)]
    pub flags: Flags,
    #[serde(default)]
    pub sharing: Sharing,
}

impl PluginConfig {
    /// Parses and checks a config file; errors name the file and line.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self> {
        let config: PluginConfig = serde_yaml::from_str(text).map_err(|e| Error::Config {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let bad = |message: String| Error::Config {
            path: path.to_owned(),
            message,
        };
        if let Some(version) = &config.version {
            if version != "v1" {
                return Err(bad(format!(
                    "version {version:?} is not supported; write `version: v1`"
                )));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for resource in &config.sharing.time_slicing.resources {
            if resource.replicas < 1 {
                return Err(bad(format!(
                    "sharing.timeSlicing.resources: {} has replicas {}; it must be at least 1",
                    resource.name, resource.replicas
                )));
            }
            if !names.insert(resource.name.as_str()) {
                return Err(bad(format!(
                    "sharing.timeSlicing.resources: {} is listed twice",
                    resource.name
                )));
            }
            crate::resources::validate_resource_name(&resource.name)
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_owned(),
            message: format!("cannot read: {e}"),
        })?;
        Self::from_yaml(&text, path)
    }

    pub fn replicas_for(&self, resource: &str) -> Option<&SharedResource> {
        self.sharing
            .time_slicing
            .resources
            .iter()
            .find(|r| r.name == resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PluginConfig> {
        PluginConfig::from_yaml(text, Path::new("config.yaml"))
    }

    #[test]
    fn parses_nvidia_shaped_config() {
        let config = parse(
            "version: v1\nflags:\n  migStrategy: mixed\nsharing:\n  timeSlicing:\n    renameByDefault: true\n    failRequestsGreaterThanOne: true\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n  replicaStrategy: pack\n",
        )
        .unwrap();
        assert_eq!(config.flags.mig_strategy, Some(MigStrategy::Mixed));
        assert_eq!(config.replicas_for("nvidia.com/gpu").unwrap().replicas, 4);
        assert!(config.sharing.time_slicing.rename_by_default);
        assert_eq!(config.sharing.replica_strategy, ReplicaStrategy::Pack);
    }

    #[test]
    fn malformed_configs_name_the_problem() {
        let cases = [
            ("flags:\n  migStrategy: sometimes\n", "line 2"),
            ("flags:\n  colour: red\n", "unknown field `colour`"),
            ("version: v2\n", "version \"v2\""),
            ("sharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 0\n", "at least 1"),
            ("sharing:\n  timeSlicing:\n    resources:\n    - {name: a.b/c, replicas: 2}\n    - {name: a.b/c, replicas: 3}\n", "listed twice"),
            ("sharing:\n  timeSlicing:\n    resources:\n    - {name: ../etc, replicas: 2}\n", "resource name"),
            ("[", "config.yaml"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.starts_with("config file config.yaml"), "{err}");
        }
    }
}
