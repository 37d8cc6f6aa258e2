//! Reading CDI specs from the configured directories.

use std::path::{Path, PathBuf};

use gantry_cdi::Spec;

/// The specs found, lowest priority first, and the files that could not be read (with why).
#[derive(Debug, Default)]
pub struct LoadedSpecs {
    pub specs: Vec<Spec>,
    pub errors: Vec<String>,
}

/// Reads `*.json`, `*.yaml` and `*.yml` from each directory (missing directories are skipped), in
/// directory order and, within a directory, in file name order: later specs win for the same kind.
///
/// An unreadable or invalid file is recorded, not fatal: one broken spec of another vendor must not stop
/// every container. The caller reports the recorded errors when a request cannot be resolved.
pub fn load_specs(dirs: &[PathBuf]) -> LoadedSpecs {
    let mut loaded = LoadedSpecs::default();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => {
                loaded.errors.push(format!("{}: {err}", dir.display()));
                continue;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "json" || e == "yaml" || e == "yml")
            })
            .collect();
        paths.sort();
        for path in paths {
            match read_spec(&path) {
                Ok(spec) => loaded.specs.push(spec),
                Err(message) => {
                    tracing::warn!("skipping CDI spec {message}");
                    loaded.errors.push(message);
                }
            }
        }
    }
    loaded
}

fn read_spec(path: &Path) -> Result<Spec, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))?;
    Spec::parse(&text, &path.display().to_string()).map_err(|err| err.to_string())
}
