//! The CDI spec document as plain data (CDI specification 0.5.0), with validation and byte-stable output.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::name::check_device_name;
use crate::{Error, Kind, Result};

/// The CDI version Gantry writes: podman 4.3 silently ignores specs of 0.6.0 and later.
pub const CDI_VERSION: &str = "0.5.0";

/// The versions this model can read (fields of later versions are refused by `deny_unknown_fields`).
const READABLE_VERSIONS: &[&str] = &["0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0"];

/// The OCI hook points a CDI hook may name.
pub const HOOK_NAMES: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// One CDI spec file: a kind and its devices, plus edits common to every device of the kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub cdi_version: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

/// One named device of a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub container_edits: ContainerEdits,
}

/// The changes a device makes to a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

impl ContainerEdits {
    pub fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.device_nodes.is_empty()
            && self.hooks.is_empty()
            && self.mounts.is_empty()
    }
}

/// A device node to create in the container. Major and minor are usually left out: the runtime reads them
/// from `hostPath` (or `path`) when it applies the spec, so dynamic majors (UVM, caps) are never stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceNode {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub node_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

impl DeviceNode {
    /// A node at `path` in the container backed by `host_path` on the host.
    pub fn new(path: &str, host_path: &str) -> Self {
        Self {
            path: path.to_owned(),
            host_path: (host_path != path).then(|| host_path.to_owned()),
            node_type: None,
            major: None,
            minor: None,
            file_mode: None,
            permissions: None,
            uid: None,
            gid: None,
        }
    }

    /// The host path to `stat` for the node's numbers.
    pub fn host_path(&self) -> &str {
        self.host_path.as_deref().unwrap_or(&self.path)
    }
}

/// A bind mount (or other mount) into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub mount_type: Option<String>,
}

/// An OCI hook run at one of the OCI hook points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hook {
    pub hook_name: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
}

/// True for an absolute path with no `.` or `..` component.
pub fn is_clean_absolute(path: &str) -> bool {
    let path = Path::new(path);
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path.to_string_lossy().contains("/./")
        && !path.to_string_lossy().ends_with("/.")
}

impl Spec {
    /// Parses a spec from JSON or YAML text (JSON is YAML) and validates it; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let spec: Spec = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|err| Error::InvalidSpec {
                reason: format!(
                    "{origin}: line {} column {}: {err}",
                    err.line(),
                    err.column()
                ),
            })?
        } else {
            serde_yaml::from_str(text).map_err(|err| Error::InvalidSpec {
                reason: format!("{origin}: {err}"),
            })?
        };
        spec.validate().map_err(|err| Error::InvalidSpec {
            reason: format!("{origin}: {err}"),
        })?;
        Ok(spec)
    }

    /// Checks what every consumer relies on: a known version, valid unique device names, clean absolute
    /// container paths, known hook points and `KEY=VALUE` environment entries.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Error::InvalidSpec { reason };
        if !READABLE_VERSIONS.contains(&self.cdi_version.as_str()) {
            return Err(invalid(format!(
                "cdiVersion {:?} is not one of {}",
                self.cdi_version,
                READABLE_VERSIONS.join(", ")
            )));
        }
        let has_annotations =
            !self.annotations.is_empty() || self.devices.iter().any(|d| !d.annotations.is_empty());
        if has_annotations && matches!(self.cdi_version.as_str(), "0.3.0" | "0.4.0" | "0.5.0") {
            return Err(invalid(format!(
                "annotations need cdiVersion 0.6.0 or later, this spec says {}",
                self.cdi_version
            )));
        }
        let mut names = BTreeSet::new();
        validate_edits(&self.container_edits, "containerEdits")?;
        for device in &self.devices {
            check_device_name(&device.name)?;
            if !names.insert(device.name.as_str()) {
                return Err(invalid(format!("device {:?} appears twice", device.name)));
            }
            validate_edits(
                &device.container_edits,
                &format!("device {:?}", device.name),
            )?;
        }
        Ok(())
    }

    /// The device of this spec called `name`.
    pub fn device(&self, name: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// The spec as pretty JSON, byte-stable for the same content, newline-terminated.
    pub fn to_json(&self) -> Result<String> {
        let mut text = serde_json::to_string_pretty(self).map_err(|err| Error::Serialise {
            message: err.to_string(),
        })?;
        text.push('\n');
        Ok(text)
    }

    /// The spec as YAML, byte-stable for the same content.
    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml::to_string(self).map_err(|err| Error::Serialise {
            message: err.to_string(),
        })
    }
}

fn validate_edits(edits: &ContainerEdits, place: &str) -> Result<()> {
    let invalid = |reason: String| Error::InvalidSpec {
        reason: format!("{place}: {reason}"),
    };
    for env in &edits.env {
        match env.split_once('=') {
            Some((key, _)) if !key.is_empty() => {}
            _ => return Err(invalid(format!("env entry {env:?} is not KEY=VALUE"))),
        }
    }
    for node in &edits.device_nodes {
        if !is_clean_absolute(&node.path) {
            return Err(invalid(format!(
                "device node path {:?} must be absolute without '.' or '..'",
                node.path
            )));
        }
        if let Some(host) = &node.host_path {
            if !is_clean_absolute(host) {
                return Err(invalid(format!(
                    "device node hostPath {host:?} must be absolute without '.' or '..'"
                )));
            }
        }
        if let Some(kind) = &node.node_type {
            if !matches!(kind.as_str(), "c" | "b" | "u" | "p") {
                return Err(invalid(format!(
                    "device node type {kind:?} is not c, b, u or p"
                )));
            }
        }
        if let Some(perms) = &node.permissions {
            if perms.is_empty() || !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
                return Err(invalid(format!(
                    "device permissions {perms:?} must be made of r, w, m"
                )));
            }
        }
    }
    for mount in &edits.mounts {
        for path in [&mount.host_path, &mount.container_path] {
            if !is_clean_absolute(path) {
                return Err(invalid(format!(
                    "mount path {path:?} must be absolute without '.' or '..'"
                )));
            }
        }
    }
    for hook in &edits.hooks {
        if !HOOK_NAMES.contains(&hook.hook_name.as_str()) {
            return Err(invalid(format!(
                "hook point {:?} is not one of {}",
                hook.hook_name,
                HOOK_NAMES.join(", ")
            )));
        }
        if !is_clean_absolute(&hook.path) {
            return Err(invalid(format!(
                "hook path {:?} must be absolute",
                hook.path
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{
  "cdiVersion": "0.5.0",
  "kind": "example.com/gpu",
  "devices": [
    {"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/card0"}]}}
  ],
  "containerEdits": {"env": ["A=1"], "mounts": [{"hostPath": "/lib/x.so", "containerPath": "/lib/x.so", "options": ["ro", "bind"]}]}
}"#;

    #[test]
    fn parses_and_round_trips() {
        let spec = Spec::parse(SPEC, "x.json").unwrap();
        assert_eq!(
            spec.devices[0].container_edits.device_nodes[0].path,
            "/dev/card0"
        );
        let json = spec.to_json().unwrap();
        assert_eq!(Spec::parse(&json, "again.json").unwrap(), spec);
        let yaml = spec.to_yaml().unwrap();
        assert_eq!(Spec::parse(&yaml, "again.yaml").unwrap(), spec);
    }

    #[test]
    fn bad_specs_name_the_file_and_the_problem() {
        let cases = [
            (SPEC.replace("/dev/card0", "dev/card0"), "must be absolute"),
            (SPEC.replace("/dev/card0", "/dev/../etc/shadow"), "'..'"),
            (SPEC.replace("\"0\"", "\"../0\""), "invalid CDI device name"),
            (SPEC.replace("0.5.0", "9.9.9"), "cdiVersion"),
            (SPEC.replace("A=1", "A"), "KEY=VALUE"),
            (
                SPEC.replace("/lib/x.so\", \"options", "x.so\", \"options"),
                "mount path",
            ),
            (
                SPEC.replace("\"kind\"", "\"colour\": 1, \"kind\""),
                "unknown field",
            ),
            (
                SPEC.replace("example.com/gpu", "example.com"),
                "VENDOR/CLASS",
            ),
            ("{".to_owned(), "line"),
            (
                SPEC.replace(
                    "\"devices\"",
                    "\"annotations\": {\"a\": \"b\"}, \"devices\"",
                ),
                "annotations need cdiVersion 0.6.0",
            ),
        ];
        for (text, expected) in cases {
            let err = Spec::parse(&text, "bad.json").unwrap_err().to_string();
            assert!(
                err.contains("bad.json") || expected == "VENDOR/CLASS",
                "{err}"
            );
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        }
    }

    #[test]
    fn duplicate_devices_are_rejected() {
        let text = SPEC.replace(
            "\"devices\": [",
            "\"devices\": [{\"name\": \"0\", \"containerEdits\": {}},",
        );
        let err = Spec::parse(&text, "dup.json").unwrap_err().to_string();
        assert!(err.contains("appears twice"), "{err}");
    }

    #[test]
    fn clean_absolute_paths() {
        assert!(is_clean_absolute("/dev/nvidia0"));
        for bad in ["dev", "/dev/../x", "/dev/./x", "", "./x", "/dev/."] {
            assert!(!is_clean_absolute(bad), "{bad}");
        }
    }
}
