//! The `create`/`run` path: put the requested CDI devices into a bundle's `config.json`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gantry_cdi::{apply_edits, collect_edits, requests_from_config, ContainerEdits, RequestPolicy};
use serde_json::Value;

use crate::specs::load_specs;
use crate::{Error, Result, RuntimeConfig};

/// What [`prepare_bundle`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The container asked for no device: `config.json` was not touched.
    NoRequest,
    /// `config.json` was rewritten with these CDI devices.
    Edited { devices: Vec<String> },
}

/// Applies the CDI devices a bundle asks for to its `config.json`.
///
/// # Flow
/// Reads `<bundle>/config.json`, reads the requests (CDI annotations, the volume-mount list, and
/// `NVIDIA_VISIBLE_DEVICES` only when `accept-env-requests` is set), loads the specs from the configured
/// directories, collects the edits, reads each device node's type and numbers from its host path, applies
/// the edits to a copy, and writes the copy atomically with the original file's permissions.
///
/// # Guarantees
/// On any error `config.json` is byte-for-byte unchanged. With no request it is not rewritten at all. The
/// shim never runs discovery: only what the specs say goes in.
///
/// # Errors
/// A missing or malformed `config.json`; a request with a path trick or an unknown device (the message lists
/// the devices that exist); a device node that is missing on the host.
pub fn prepare_bundle(bundle: &Path, config: &RuntimeConfig) -> Result<Outcome> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(Error::io(&path))?;
    let original: Value = serde_json::from_slice(&bytes).map_err(|err| Error::MalformedConfig {
        path: path.clone(),
        line: err.line(),
        column: err.column(),
        message: err.to_string(),
    })?;
    if !original.is_object() {
        return Err(Error::MalformedConfig {
            path,
            line: 1,
            column: 1,
            message: "the document must be a JSON object".to_owned(),
        });
    }
    let policy = RequestPolicy {
        accept_env_requests: config.accept_env_requests,
        default_kind: config.default_kind.parse().map_err(|source| Error::Cdi {
            path: path.clone(),
            source,
        })?,
    };
    let requests = requests_from_config(&original, &policy).map_err(|source| Error::Cdi {
        path: path.clone(),
        source,
    })?;
    if requests.is_empty() {
        tracing::debug!(bundle = %bundle.display(), "no device requested");
        return Ok(Outcome::NoRequest);
    }
    let loaded = load_specs(&config.spec_dirs);
    let mut edits = collect_edits(&loaded.specs, &requests).map_err(|source| Error::Request {
        source,
        spec_errors: loaded.errors.clone(),
    })?;
    let devices: Vec<String> = requests.devices.iter().map(ToString::to_string).collect();
    resolve_device_nodes(&mut edits, &devices.join(","))?;
    let mut edited = original;
    apply_edits(&mut edited, &edits).map_err(|source| Error::Cdi {
        path: path.clone(),
        source,
    })?;
    let mut text = serde_json::to_vec(&edited).map_err(|err| Error::MalformedConfig {
        path: path.clone(),
        line: 0,
        column: 0,
        message: err.to_string(),
    })?;
    text.push(b'\n');
    let mode = std::fs::metadata(&path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    gantry_driver::atomic_write(&path, &text, mode)?;
    tracing::info!(bundle = %bundle.display(), devices = %devices.join(","), "applied CDI devices");
    Ok(Outcome::Edited { devices })
}

/// Fills each node's type, major and minor from `stat` of its host path (CDI leaves them to the runtime,
/// so dynamic majors such as UVM's are always current).
fn resolve_device_nodes(edits: &mut ContainerEdits, devices: &str) -> Result<()> {
    for node in &mut edits.device_nodes {
        if node.node_type.is_some() && node.major.is_some() && node.minor.is_some() {
            continue;
        }
        let numbers =
            gantry_driver::device_numbers(Path::new(node.host_path())).map_err(|source| {
                Error::DeviceNode {
                    path: node.host_path().to_owned(),
                    device: devices.to_owned(),
                    source,
                }
            })?;
        node.node_type
            .get_or_insert_with(|| numbers.node_type.to_string());
        node.major.get_or_insert(i64::from(numbers.major));
        node.minor.get_or_insert(i64::from(numbers.minor));
        node.file_mode.get_or_insert(numbers.mode);
    }
    Ok(())
}

/// Finds the lower runtime: an absolute or relative path as given, else the first match on `search_path`
/// (the caller passes `PATH`).
///
/// # Errors
/// [`Error::LowerRuntimeMissing`], naming where it looked.
pub fn find_lower_runtime(name: &str, search_path: Option<&str>) -> Result<PathBuf> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let path = PathBuf::from(name);
        return if executable(&path) {
            Ok(path)
        } else {
            Err(Error::LowerRuntimeMissing {
                name: name.to_owned(),
                searched: String::new(),
            })
        };
    }
    let dirs =
        search_path.unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    dirs.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| executable(p))
        .ok_or_else(|| Error::LowerRuntimeMissing {
            name: name.to_owned(),
            searched: format!(" on PATH {dirs}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_runtime_lookup() {
        assert_eq!(
            find_lower_runtime("sh", Some("/nonexistent:/bin")).unwrap(),
            PathBuf::from("/bin/sh")
        );
        let err = find_lower_runtime("no-such-runtime", Some("/bin"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no-such-runtime") && err.contains("lower-runtime"),
            "{err}"
        );
        assert!(find_lower_runtime("/nonexistent/runc", None).is_err());
        assert!(
            find_lower_runtime("/etc/passwd", None).is_err(),
            "not executable"
        );
    }
}
