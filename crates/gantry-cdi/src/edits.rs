//! Turning requests into one set of container edits, and applying edits to an OCI `config.json`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::generate::capability_of;
use crate::request::Requests;
use crate::spec::{ContainerEdits, DeviceNode, Hook, Mount};
use crate::{Error, Kind, Result, Spec};

/// Collects the edits for `requests` from `specs`.
///
/// `specs` come in priority order, lowest first: a later spec of the same kind replaces an earlier one
/// (as `/var/run/cdi` overrides `/etc/cdi`). Each used spec's common edits are applied once. When
/// `requests.capabilities` is narrowed, mounts of driver files of other capabilities are left out.
///
/// # Errors
/// A kind with no spec, or a device name the kind's spec does not have; the message lists what exists.
pub fn collect_edits(specs: &[Spec], requests: &Requests) -> Result<ContainerEdits> {
    let mut by_kind: BTreeMap<&Kind, &Spec> = BTreeMap::new();
    for spec in specs {
        by_kind.insert(&spec.kind, spec);
    }
    let mut edits = ContainerEdits::default();
    let mut used_kinds = BTreeSet::new();
    for request in &requests.devices {
        let spec = by_kind
            .get(&request.kind)
            .ok_or_else(|| Error::UnresolvableRequest {
                request: request.to_string(),
                reason: format!(
                    "no CDI spec for kind {} (known kinds: {}); generate one with `gantry cdi generate --kind {}`",
                    request.kind,
                    list(by_kind.keys().map(ToString::to_string)),
                    request.kind
                ),
            })?;
        let device = spec
            .device(&request.name)
            .ok_or_else(|| Error::UnresolvableRequest {
                request: request.to_string(),
                reason: format!(
                    "the node has no such device; the spec for {} has {}",
                    request.kind,
                    list(spec.devices.iter().map(|d| d.name.clone()))
                ),
            })?;
        if used_kinds.insert(&spec.kind) {
            merge(&mut edits, &filtered(&spec.container_edits, requests));
        }
        merge(&mut edits, &filtered(&device.container_edits, requests));
    }
    Ok(edits)
}

fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Drops mounts of driver files that belong to capabilities the request did not ask for.
fn filtered(edits: &ContainerEdits, requests: &Requests) -> ContainerEdits {
    let Some(wanted) = &requests.capabilities else {
        return edits.clone();
    };
    let mut edits = edits.clone();
    edits
        .mounts
        .retain(|m| capability_of(&m.container_path).is_none_or(|c| wanted.contains(&c)));
    edits
}

fn merge(into: &mut ContainerEdits, from: &ContainerEdits) {
    for env in &from.env {
        let key = env.split_once('=').map_or(env.as_str(), |(k, _)| k);
        into.env
            .retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        into.env.push(env.clone());
    }
    for node in &from.device_nodes {
        if !into.device_nodes.iter().any(|n| n.path == node.path) {
            into.device_nodes.push(node.clone());
        }
    }
    for mount in &from.mounts {
        if !into
            .mounts
            .iter()
            .any(|m| m.container_path == mount.container_path)
        {
            into.mounts.push(mount.clone());
        }
    }
    for hook in &from.hooks {
        if !into.hooks.contains(hook) {
            into.hooks.push(hook.clone());
        }
    }
}

fn object_at<'a>(
    parent: &'a mut Map<String, Value>,
    key: &str,
    place: &str,
) -> Result<&'a mut Map<String, Value>> {
    let value = parent
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if value.is_null() {
        *value = Value::Object(Map::new());
    }
    value.as_object_mut().ok_or_else(|| Error::InvalidConfig {
        reason: format!("{place} must be an object"),
    })
}

fn array_at<'a>(
    parent: &'a mut Map<String, Value>,
    key: &str,
    place: &str,
) -> Result<&'a mut Vec<Value>> {
    let value = parent
        .entry(key.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if value.is_null() {
        *value = Value::Array(Vec::new());
    }
    value.as_array_mut().ok_or_else(|| Error::InvalidConfig {
        reason: format!("{place} must be an array"),
    })
}

fn resolved(node: &DeviceNode) -> Result<(&str, i64, i64)> {
    match (&node.node_type, node.major, node.minor) {
        (Some(kind), Some(major), Some(minor)) => Ok((kind.as_str(), major, minor)),
        _ => Err(Error::InvalidSpec {
            reason: format!(
                "device node {} has no type/major/minor; resolve it from {} before applying",
                node.path,
                node.host_path()
            ),
        }),
    }
}

/// Applies `edits` to an OCI runtime config.
///
/// # Flow
/// Environment entries replace entries of the same key or are appended; each device node is added to
/// `linux.devices` (replacing one at the same path) with a matching allow rule in `linux.resources.devices`;
/// mounts are appended as bind mounts (replacing one at the same destination); hooks are appended to
/// `hooks.<hookName>`. Fields the edits do not touch are kept as they were. Applying the same edits twice
/// gives the same config as applying them once.
///
/// # Errors
/// A config that is not an object or has a touched field of the wrong JSON type, and a device node whose
/// type, major and minor the caller has not resolved. On error `config` may be partly edited: callers edit a
/// copy and write it only on success.
pub fn apply_edits(config: &mut Value, edits: &ContainerEdits) -> Result<()> {
    let root = config.as_object_mut().ok_or_else(|| Error::InvalidConfig {
        reason: "the document must be a JSON object".to_owned(),
    })?;
    if !edits.env.is_empty() {
        let process = object_at(root, "process", "process")?;
        let env = array_at(process, "env", "process.env")?;
        for entry in &edits.env {
            let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
            env.retain(|e| {
                e.as_str()
                    .and_then(|e| e.split_once('='))
                    .is_none_or(|(k, _)| k != key)
            });
            env.push(Value::String(entry.clone()));
        }
    }
    if !edits.device_nodes.is_empty() {
        let linux = object_at(root, "linux", "linux")?;
        {
            let devices = array_at(linux, "devices", "linux.devices")?;
            for node in &edits.device_nodes {
                let (kind, major, minor) = resolved(node)?;
                devices
                    .retain(|d| d.get("path").and_then(Value::as_str) != Some(node.path.as_str()));
                let mut entry =
                    json!({"path": node.path, "type": kind, "major": major, "minor": minor});
                if let Some(mode) = node.file_mode {
                    entry["fileMode"] = json!(mode);
                }
                if let Some(uid) = node.uid {
                    entry["uid"] = json!(uid);
                }
                if let Some(gid) = node.gid {
                    entry["gid"] = json!(gid);
                }
                devices.push(entry);
            }
        }
        let resources = object_at(linux, "resources", "linux.resources")?;
        let rules = array_at(resources, "devices", "linux.resources.devices")?;
        for node in &edits.device_nodes {
            let (kind, major, minor) = resolved(node)?;
            let access = node.permissions.as_deref().unwrap_or("rwm");
            let rule = json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": access});
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
    }
    if !edits.mounts.is_empty() {
        let mounts = array_at(root, "mounts", "mounts")?;
        for mount in &edits.mounts {
            mounts.retain(|m| {
                m.get("destination").and_then(Value::as_str) != Some(mount.container_path.as_str())
            });
            mounts.push(oci_mount(mount));
        }
    }
    if !edits.hooks.is_empty() {
        let hooks = object_at(root, "hooks", "hooks")?;
        for hook in &edits.hooks {
            let place = format!("hooks.{}", hook.hook_name);
            let list = array_at(hooks, &hook.hook_name, &place)?;
            let value = oci_hook(hook);
            if !list.contains(&value) {
                list.push(value);
            }
        }
    }
    Ok(())
}

fn oci_mount(mount: &Mount) -> Value {
    let mut options = mount.options.clone();
    let is_bind = mount.mount_type.as_deref().is_none_or(|t| t == "bind");
    if is_bind && !options.iter().any(|o| o == "bind" || o == "rbind") {
        options.push("bind".to_owned());
    }
    json!({
        "destination": mount.container_path,
        "type": mount.mount_type.as_deref().unwrap_or("bind"),
        "source": mount.host_path,
        "options": options,
    })
}

fn oci_hook(hook: &Hook) -> Value {
    let mut value = json!({"path": hook.path});
    if !hook.args.is_empty() {
        value["args"] = json!(hook.args);
    }
    if !hook.env.is_empty() {
        value["env"] = json!(hook.env);
    }
    if let Some(timeout) = hook.timeout {
        value["timeout"] = json!(timeout);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{requests_from_config, RequestPolicy};
    use crate::spec::Device;

    fn spec() -> Spec {
        Spec::parse(
            r#"{
  "cdiVersion": "0.5.0",
  "kind": "nvidia.com/gpu",
  "devices": [
    {"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}},
    {"name": "1", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia1", "hostPath": "/r/dev/nvidia1"}]}}
  ],
  "containerEdits": {
    "env": ["NVIDIA_VISIBLE_DEVICES=void"],
    "deviceNodes": [{"path": "/dev/nvidiactl"}],
    "mounts": [
      {"hostPath": "/r/lib/libcuda.so.1", "containerPath": "/lib/libcuda.so.1", "options": ["ro", "nosuid", "nodev", "bind"]},
      {"hostPath": "/r/lib/libnvcuvid.so.1", "containerPath": "/lib/libnvcuvid.so.1", "options": ["ro"]}
    ],
    "hooks": [{"hookName": "createContainer", "path": "/usr/bin/gantry-runtime", "args": ["gantry-runtime", "hook", "update-ldcache"]}]
  }
}"#,
            "test.json",
        )
        .unwrap()
    }

    fn requests(config: &Value, accept_env: bool) -> Requests {
        let policy = RequestPolicy {
            accept_env_requests: accept_env,
            default_kind: "nvidia.com/gpu".parse().unwrap(),
        };
        requests_from_config(config, &policy).unwrap()
    }

    fn resolve_all(edits: &mut ContainerEdits) {
        for (i, node) in edits.device_nodes.iter_mut().enumerate() {
            node.node_type = Some("c".to_owned());
            node.major = Some(195);
            node.minor = Some(i64::try_from(i).unwrap());
        }
    }

    #[test]
    fn one_gpu_gets_its_node_the_common_edits_and_nothing_else() {
        let mut config = json!({
            "process": {"env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=1"]},
            "annotations": {"cdi.k8s.io/test": "nvidia.com/gpu=1"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [{"type": "mount"}]}
        });
        let mut edits = collect_edits(&[spec()], &requests(&config, false)).unwrap();
        let paths: Vec<&str> = edits.device_nodes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(paths, ["/dev/nvidiactl", "/dev/nvidia1"]);
        assert_eq!(edits.device_nodes[1].host_path(), "/r/dev/nvidia1");
        resolve_all(&mut edits);
        apply_edits(&mut config, &edits).unwrap();
        assert_eq!(
            config["process"]["env"],
            json!(["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=void"])
        );
        assert_eq!(config["linux"]["devices"][1]["path"], "/dev/nvidia1");
        assert_eq!(config["linux"]["resources"]["devices"][1]["minor"], 1);
        assert_eq!(config["linux"]["resources"]["devices"][1]["allow"], true);
        assert_eq!(
            config["linux"]["namespaces"],
            json!([{"type": "mount"}]),
            "untouched fields stay"
        );
        assert_eq!(config["mounts"].as_array().unwrap().len(), 3);
        assert_eq!(
            config["mounts"][1]["options"],
            json!(["ro", "nosuid", "nodev", "bind"])
        );
        assert_eq!(config["mounts"][2]["options"], json!(["ro", "bind"]));
        assert_eq!(
            config["hooks"]["createContainer"][0]["path"],
            "/usr/bin/gantry-runtime"
        );
    }

    #[test]
    fn applying_twice_is_applying_once() {
        let mut config =
            json!({"annotations": {"cdi.k8s.io/test": "nvidia.com/gpu=0"}, "process": {"env": []}});
        let mut edits = collect_edits(&[spec()], &requests(&config, false)).unwrap();
        resolve_all(&mut edits);
        apply_edits(&mut config, &edits).unwrap();
        let once = config.clone();
        apply_edits(&mut config, &edits).unwrap();
        assert_eq!(config, once);
    }

    #[test]
    fn no_request_means_no_edits() {
        let config = json!({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}});
        let edits = collect_edits(&[spec()], &requests(&config, false)).unwrap();
        assert!(edits.is_empty());
    }

    #[test]
    fn capabilities_narrow_library_mounts() {
        let config = json!({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=compute"]}});
        let edits = collect_edits(&[spec()], &requests(&config, true)).unwrap();
        let mounts: Vec<&str> = edits
            .mounts
            .iter()
            .map(|m| m.container_path.as_str())
            .collect();
        assert_eq!(mounts, ["/lib/libcuda.so.1"]);
    }

    #[test]
    fn unknown_gpu_and_kind_say_what_exists() {
        let config = json!({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=7"]}});
        let err = collect_edits(&[spec()], &requests(&config, true))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nvidia.com/gpu=7") && err.contains("has 0, 1"),
            "{err}"
        );
        let config = json!({"annotations": {"cdi.k8s.io/x": "other.com/gpu=0"}});
        let err = collect_edits(&[spec()], &requests(&config, true))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no CDI spec for kind other.com/gpu"), "{err}");
    }

    #[test]
    fn later_specs_override_earlier_ones() {
        let mut newer = spec();
        newer.devices = vec![Device {
            name: "0".to_owned(),
            annotations: BTreeMap::new(),
            container_edits: ContainerEdits::default(),
        }];
        let config = json!({"annotations": {"cdi.k8s.io/x": "nvidia.com/gpu=1"}});
        assert!(collect_edits(&[spec(), newer], &requests(&config, false)).is_err());
    }

    #[test]
    fn wrong_shapes_are_errors_not_panics() {
        let mut edits = collect_edits(
            &[spec()],
            &requests(
                &json!({"annotations": {"cdi.k8s.io/x": "nvidia.com/gpu=0"}}),
                false,
            ),
        )
        .unwrap();
        let unresolved = edits.clone();
        resolve_all(&mut edits);
        for mut config in [
            json!([]),
            json!({"process": {"env": {}}}),
            json!({"linux": []}),
            json!({"mounts": "x"}),
            json!({"hooks": {"createContainer": 1}}),
        ] {
            assert!(apply_edits(&mut config, &edits).is_err(), "{config}");
        }
        assert!(apply_edits(&mut json!({}), &unresolved).is_err());
    }
}
