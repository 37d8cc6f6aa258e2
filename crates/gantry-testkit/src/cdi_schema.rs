//! The CDI JSON schema check: `validate_cdi_schema.py` (Python `jsonschema`) against the schema in
//! `../shared/schemas/cdi`, shared by every test that checks a generated spec.

use std::path::Path;
use std::process::{Command, Output};

use crate::workspace_root;

/// Validates CDI spec files (JSON or YAML) against the CDI JSON schema; the script prints
/// `<file>: valid` per good file and exits non-zero on the first bad one.
///
/// Returns `None` when `python3` with `jsonschema` and `yaml` is missing, after saying `SKIP` on
/// stderr; under `CI` a missing tool fails the test instead (`.ci/run` installs them).
pub fn validate_cdi_specs(files: &[&Path]) -> Option<Output> {
    let probe = Command::new("python3")
        .args(["-c", "import jsonschema, yaml"])
        .output();
    if !matches!(&probe, Ok(out) if out.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs python3 with jsonschema and yaml (.ci/run installs python3-jsonschema and python3-yaml)"
        );
        eprintln!("SKIP: python3 with jsonschema and yaml is not installed");
        return None;
    }
    let root = workspace_root();
    Some(
        Command::new("python3")
            .arg(root.join("crates/gantry-testkit/validate_cdi_schema.py"))
            .arg(root.join("../shared/schemas/cdi"))
            .args(files)
            .output()
            .expect("run python3"),
    )
}
