//! YAML/JSON text to a [`TFJob`], with field paths and lines in every error and unknown fields
//! reported instead of silently dropped.

use serde::Deserialize;

use crate::api::{TFJob, API_VERSION, KIND};
use crate::error::{Error, Result};

/// A parsed job and what was questionable about its text.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The job, as written (defaults not applied; see [`TFJob::with_defaults`]).
    pub job: TFJob,
    /// One line per unknown field (`unknown field spec.tfReplicaSpecs.Worker.replica`), sorted.
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

/// Parses one TFJob from YAML (or JSON, which is YAML).
///
/// `source_name` names the text in errors (a path, or `-` for stdin). With `strict`, unknown fields are
/// an [`Error::UnknownFields`]; without, they are returned as [`Parsed::warnings`].
///
/// # Errors
/// [`Error::Syntax`] for text that is not YAML or a field of the wrong type or value (the message names
/// the field path and the line), [`Error::WrongKind`] for another kind, [`Error::UnknownFields`] under
/// `strict`.
pub fn parse_tfjob(text: &str, source_name: &str, strict: bool) -> Result<Parsed> {
    let syntax = |message: String| Error::Syntax {
        source_name: source_name.to_string(),
        message,
    };
    let header: Header = serde_yaml::from_str(text).map_err(|e| syntax(e.to_string()))?;
    let api_version = header.api_version.unwrap_or_default();
    let kind = header.kind.unwrap_or_default();
    if api_version != API_VERSION || kind != KIND {
        return Err(Error::WrongKind {
            source_name: source_name.to_string(),
            api_version,
            kind,
        });
    }

    let mut unknown = Vec::new();
    let yaml = serde_yaml::Deserializer::from_str(text);
    let mut record = |path: serde_ignored::Path<'_>| {
        let path = path.to_string();
        // `apiVersion` and `kind` are checked above; the derived type carries them as constants.
        if path != "apiVersion" && path != "kind" {
            unknown.push(path);
        }
    };
    let ignoring = serde_ignored::Deserializer::new(yaml, &mut record);
    let job: TFJob = serde_path_to_error::deserialize(ignoring).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            syntax(inner.to_string())
        } else {
            syntax(format!("{path}: {inner}"))
        }
    })?;
    unknown.sort();
    unknown.dedup();
    if strict && !unknown.is_empty() {
        return Err(Error::UnknownFields {
            source_name: source_name.to_string(),
            fields: unknown,
        });
    }
    Ok(Parsed {
        job,
        warnings: unknown
            .into_iter()
            .map(|f| format!("unknown field {f} (ignored)"))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReplicaType;

    fn job(specs: &str) -> String {
        format!(
            "apiVersion: kubeflow.org/v1\nkind: TFJob\nmetadata:\n  name: j\nspec:\n  tfReplicaSpecs:\n{specs}"
        )
    }

    const WORKER: &str = "    worker:\n      template:\n        spec:\n          containers: [{name: tensorflow, image: tf}]\n";

    #[test]
    fn replica_keys_are_case_insensitive() {
        let parsed = parse_tfjob(&job(WORKER), "j.yaml", true).unwrap();
        assert!(parsed
            .job
            .spec
            .tf_replica_specs
            .contains_key(&ReplicaType::Worker));
        assert!(parsed.warnings.is_empty());
        let text = serde_json::to_string(&parsed.job.spec.tf_replica_specs).unwrap();
        assert!(text.starts_with("{\"Worker\":"), "{text}");
    }

    #[test]
    fn unknown_replica_type_is_named() {
        let text = job(&WORKER.replace("worker:", "launcher:"));
        let err = parse_tfjob(&text, "j.yaml", false).unwrap_err().to_string();
        assert!(err.contains("unknown replica type `launcher`"), "{err}");
        assert!(err.contains("spec.tfReplicaSpecs"), "{err}");
        assert!(err.starts_with("j.yaml: "), "{err}");
    }

    #[test]
    fn the_same_type_twice_in_different_case_is_refused() {
        let text = job(&format!("{WORKER}{}", WORKER.replace("worker:", "Worker:")));
        let err = parse_tfjob(&text, "j.yaml", false).unwrap_err().to_string();
        assert!(err.contains("replica type Worker is given twice"), "{err}");
    }

    #[test]
    fn unknown_fields_warn_and_fail_under_strict() {
        let text = job(&WORKER.replace("template:", "replica: 2\n      template:"));
        let parsed = parse_tfjob(&text, "j.yaml", false).unwrap();
        assert_eq!(
            parsed.warnings,
            ["unknown field spec.tfReplicaSpecs.worker.replica (ignored)"]
        );
        let err = parse_tfjob(&text, "j.yaml", true).unwrap_err();
        assert_eq!(err.kind(), "unknown_fields");
        assert!(
            err.to_string()
                .contains("spec.tfReplicaSpecs.worker.replica"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_inside_the_pod_template_are_found() {
        let text = job(&WORKER.replace("image: tf", "image: tf, comand: [python]"));
        let parsed = parse_tfjob(&text, "j.yaml", false).unwrap();
        assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
        assert!(
            parsed.warnings[0].contains("comand"),
            "{:?}",
            parsed.warnings
        );
    }

    #[test]
    fn invalid_yaml_names_the_line() {
        let err = parse_tfjob(
            "apiVersion: [kubeflow.org/v1\nkind: TFJob\n",
            "bad.yaml",
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("bad.yaml: "), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn a_wrong_type_names_the_field_and_line() {
        let text = job(&WORKER.replace("template:", "replicas: two\n      template:"));
        let err = parse_tfjob(&text, "j.yaml", false).unwrap_err().to_string();
        assert!(err.contains("spec.tfReplicaSpecs.worker.replicas"), "{err}");
        assert!(err.contains("line 8"), "{err}");
    }

    #[test]
    fn a_bad_restart_policy_names_the_field() {
        let text = job(&WORKER.replace("template:", "restartPolicy: Sometimes\n      template:"));
        let err = parse_tfjob(&text, "j.yaml", false).unwrap_err().to_string();
        assert!(err.contains("restartPolicy"), "{err}");
        assert!(err.contains("Sometimes"), "{err}");
    }

    #[test]
    fn another_kind_is_refused() {
        let err = parse_tfjob("apiVersion: v1\nkind: Pod\n", "pod.yaml", false).unwrap_err();
        assert_eq!(err.kind(), "wrong_kind");
    }
}
