//! Which CDI devices an OCI `config.json` asks for.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::generate::Capability;
use crate::name::check_device_name;
use crate::{Error, Kind, QualifiedName, Result};

/// The annotation prefix CDI-aware engines and the kubelet use (`cdi.k8s.io/<anything>: vendor.com/class=name,...`).
pub const CDI_ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// Where the device plugin's volume-mounts strategy mounts one empty file per allocated device.
pub const VOLUME_MOUNT_DIR: &str = "/var/run/nvidia-container-devices";

/// How requests are read: the runtime's policy, from its config file.
#[derive(Debug, Clone)]
pub struct RequestPolicy {
    /// Honour `NVIDIA_VISIBLE_DEVICES` in the container's environment. Off by default: an image that sets
    /// `NVIDIA_VISIBLE_DEVICES=all` must not get GPUs the kubelet never allocated.
    pub accept_env_requests: bool,
    /// The kind that bare names (`1`, `GPU-…`, `all`) from the environment or the volume mounts belong to.
    pub default_kind: Kind,
}

/// Where a request came from (for messages and for capability filtering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Annotation,
    VolumeMount,
    Environment,
}

/// The devices a container asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    pub devices: BTreeSet<QualifiedName>,
    /// The driver capabilities to mount; `None` means every capability. Only an environment-only request
    /// narrows them (`NVIDIA_DRIVER_CAPABILITIES`); CDI annotations always get the whole spec.
    pub capabilities: Option<BTreeSet<Capability>>,
    pub sources: BTreeSet<Source>,
}

impl Requests {
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

fn env_value<'a>(env: &'a [Value], key: &str) -> Option<&'a str> {
    // The last assignment wins, as in execve's consumers.
    env.iter()
        .rev()
        .filter_map(Value::as_str)
        .find_map(|entry| entry.strip_prefix(key)?.strip_prefix('='))
}

/// Reads the device requests of an OCI config.
///
/// # Errors
/// A malformed annotation value or volume-mount path (for example one carrying `../` or an absolute path
/// where a device name belongs) is an error, never silently dropped: the container must not start with
/// fewer devices than it asked for, nor with a device someone smuggled in.
pub fn requests_from_config(config: &Value, policy: &RequestPolicy) -> Result<Requests> {
    let mut requests = Requests::default();
    let invalid = |reason: String| Error::InvalidConfig { reason };

    if let Some(annotations) = config.get("annotations") {
        let annotations = annotations
            .as_object()
            .ok_or_else(|| invalid("annotations must be an object of strings".to_owned()))?;
        for (key, value) in annotations {
            if !key.starts_with(CDI_ANNOTATION_PREFIX) {
                continue;
            }
            let value = value
                .as_str()
                .ok_or_else(|| invalid(format!("annotation {key} must be a string")))?;
            for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let name: QualifiedName =
                    item.parse().map_err(|err| Error::UnresolvableRequest {
                        request: item.to_owned(),
                        reason: format!("annotation {key}: {err}"),
                    })?;
                requests.devices.insert(name);
                requests.sources.insert(Source::Annotation);
            }
        }
    }

    if let Some(mounts) = config.get("mounts") {
        let mounts = mounts
            .as_array()
            .ok_or_else(|| invalid("mounts must be an array".to_owned()))?;
        for mount in mounts {
            let Some(destination) = mount.get("destination").and_then(Value::as_str) else {
                continue;
            };
            let Some(rest) = destination
                .strip_prefix(VOLUME_MOUNT_DIR)
                .and_then(|r| r.strip_prefix('/'))
            else {
                continue;
            };
            check_device_name(rest).map_err(|err| Error::UnresolvableRequest {
                request: destination.to_owned(),
                reason: format!("volume-mount request: {err}"),
            })?;
            requests
                .devices
                .insert(QualifiedName::new(policy.default_kind.clone(), rest)?);
            requests.sources.insert(Source::VolumeMount);
        }
    }

    if policy.accept_env_requests {
        let env = match config.pointer("/process/env") {
            None => &[][..],
            Some(env) => env
                .as_array()
                .ok_or_else(|| invalid("process.env must be an array of strings".to_owned()))?
                .as_slice(),
        };
        let visible = env_value(env, "NVIDIA_VISIBLE_DEVICES").map(str::trim);
        let mut from_env = BTreeSet::new();
        match visible {
            None | Some("" | "void" | "none") => {}
            // The device plugin's volume-mounts strategy sets the variable to the mount directory: the
            // request is in the mounts (read above), not in the environment.
            Some(dir) if dir.trim_end_matches('/') == VOLUME_MOUNT_DIR => {}
            Some(list) => {
                for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let name =
                        QualifiedName::new(policy.default_kind.clone(), item).map_err(|err| {
                            Error::UnresolvableRequest {
                                request: item.to_owned(),
                                reason: format!("NVIDIA_VISIBLE_DEVICES: {err}"),
                            }
                        })?;
                    from_env.insert(name);
                }
            }
        }
        if !from_env.is_empty() {
            requests.sources.insert(Source::Environment);
            let env_only = requests.devices.is_empty();
            requests.devices.extend(from_env);
            if env_only {
                requests.capabilities =
                    parse_capabilities(env_value(env, "NVIDIA_DRIVER_CAPABILITIES"))?;
            }
        }
    }
    Ok(requests)
}

/// `NVIDIA_DRIVER_CAPABILITIES`: unset or empty means `compute,utility` (NVIDIA's default), `all` means all.
fn parse_capabilities(value: Option<&str>) -> Result<Option<BTreeSet<Capability>>> {
    let value = value.map(str::trim).unwrap_or("");
    if value.is_empty() {
        return Ok(Some(BTreeSet::from([
            Capability::Compute,
            Capability::Utility,
        ])));
    }
    let mut set = BTreeSet::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "all" {
            return Ok(None);
        }
        // Capabilities Gantry does not package (compat32, ngx) ask for nothing more.
        if matches!(item, "compat32" | "ngx") {
            continue;
        }
        set.insert(item.parse().map_err(|reason| Error::UnresolvableRequest {
            request: item.to_owned(),
            reason: format!("NVIDIA_DRIVER_CAPABILITIES: {reason}"),
        })?);
    }
    Ok(Some(set))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn policy(accept_env: bool) -> RequestPolicy {
        RequestPolicy {
            accept_env_requests: accept_env,
            default_kind: "nvidia.com/gpu".parse().unwrap(),
        }
    }

    fn names(requests: &Requests) -> Vec<String> {
        requests.devices.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn annotations_mounts_and_env() {
        let config = json!({
            "annotations": {"cdi.k8s.io/gantry": "nvidia.com/gpu=1, test.dev/x=a", "other": "../x"},
            "mounts": [
                {"destination": "/var/run/nvidia-container-devices/GPU-abc1"},
                {"destination": "/proc"}
            ],
            "process": {"env": ["NVIDIA_VISIBLE_DEVICES=0"]}
        });
        let r = requests_from_config(&config, &policy(false)).unwrap();
        assert_eq!(
            names(&r),
            [
                "nvidia.com/gpu=1",
                "nvidia.com/gpu=GPU-abc1",
                "test.dev/x=a"
            ]
        );
        assert_eq!(r.capabilities, None);
        let r = requests_from_config(&config, &policy(true)).unwrap();
        assert_eq!(names(&r).len(), 4);
        assert_eq!(r.capabilities, None, "annotations get every capability");
    }

    #[test]
    fn env_is_ignored_unless_accepted() {
        let config = json!({"process": {"env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"]}});
        assert!(requests_from_config(&config, &policy(false))
            .unwrap()
            .is_empty());
        let r = requests_from_config(&config, &policy(true)).unwrap();
        assert_eq!(names(&r), ["nvidia.com/gpu=all"]);
        assert_eq!(
            r.capabilities,
            Some(BTreeSet::from([Capability::Compute, Capability::Utility]))
        );
    }

    #[test]
    fn the_volume_mount_directory_in_env_defers_to_the_mounts() {
        let config = json!({
            "process": {"env": ["NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices"]},
            "mounts": [{"destination": "/var/run/nvidia-container-devices/GPU-ab12", "source": "/dev/null"}]
        });
        for accept in [false, true] {
            let r = requests_from_config(&config, &policy(accept)).unwrap();
            assert_eq!(
                names(&r),
                ["nvidia.com/gpu=GPU-ab12"],
                "accept-env {accept}"
            );
        }
    }

    #[test]
    fn env_values_that_mean_nothing() {
        for value in ["", "void", "none", " , "] {
            let config = json!({"process": {"env": [format!("NVIDIA_VISIBLE_DEVICES={value}")]}});
            assert!(
                requests_from_config(&config, &policy(true))
                    .unwrap()
                    .is_empty(),
                "{value}"
            );
        }
    }

    #[test]
    fn capabilities_from_env() {
        let config = json!({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=0,GPU-ab", "NVIDIA_DRIVER_CAPABILITIES=utility,video"]}});
        let r = requests_from_config(&config, &policy(true)).unwrap();
        assert_eq!(
            r.capabilities,
            Some(BTreeSet::from([Capability::Utility, Capability::Video]))
        );
        let config = json!({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=all"]}});
        assert_eq!(
            requests_from_config(&config, &policy(true))
                .unwrap()
                .capabilities,
            None
        );
        let config = json!({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=warp"]}});
        assert!(requests_from_config(&config, &policy(true)).is_err());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            "(nvidia.com/gpu=|cdi.k8s.io/|NVIDIA_VISIBLE_DEVICES=|/var/run/nvidia-container-devices/|\\.\\./|[a-z0-9,=/])*"
                .prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(
                    "(annotations|mounts|process|env|destination|cdi.k8s.io/x)",
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_configs_never_panic_and_never_yield_path_names(config in json_value(), accept in any::<bool>()) {
            if let Ok(requests) = requests_from_config(&config, &policy(accept)) {
                for name in &requests.devices {
                    prop_assert!(!name.name.contains('/') && !name.name.contains(".."));
                }
            }
        }
    }

    #[test]
    fn path_tricks_are_errors() {
        let cases = [
            json!({"annotations": {"cdi.k8s.io/x": "nvidia.com/gpu=../../dev/sda"}}),
            json!({"annotations": {"cdi.k8s.io/x": "/etc/cdi/evil.json"}}),
            json!({"annotations": {"cdi.k8s.io/x": "../nvidia.com/gpu=0"}}),
            json!({"annotations": {"cdi.k8s.io/x": 3}}),
            json!({"mounts": [{"destination": "/var/run/nvidia-container-devices/../../../etc"}]}),
            json!({"mounts": [{"destination": "/var/run/nvidia-container-devices//dev/sda"}]}),
            json!({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=../0"]}}),
            json!({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=/dev/sda"]}}),
            json!({"process": {"env": "NVIDIA_VISIBLE_DEVICES=0"}}),
            json!({"annotations": []}),
        ];
        for config in cases {
            assert!(
                requests_from_config(&config, &policy(true)).is_err(),
                "{config}"
            );
        }
    }
}
