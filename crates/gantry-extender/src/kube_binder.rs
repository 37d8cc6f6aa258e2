//! The API writes of `bind` through kube-rs.
//!
//! # Flow
//! 1. `PATCH /api/v1/namespaces/{ns}/pods/{name}` (merge patch) sets the pod's
//!    `gantry.dev/gpu-assignment` annotation;
//! 2. `POST /api/v1/namespaces/{ns}/pods/{name}/binding` creates the v1 Binding to the node
//!    (with the pod's UID, so a pod deleted and re-created under the same name is not bound).
//!
//! # Guarantees
//! The annotation is written before the Binding, so a bound pod always carries it (the device
//! plugin and a restarted extender read it). Nothing is retried here: kube-scheduler retries the
//! pod.
//!
//! # Errors
//! A refused or failed call is an [`Error::Api`] naming the method, the path, the status and the
//! API server's message; the second call is not made when the first fails. The server then gives
//! the GPUs back (`Extender::finish_bind`).

use gantry_scheduler::schema::POD_ASSIGNMENT_ANNOTATION;
use gantry_scheduler::BindPlan;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

use crate::{Binder, Error, Result};

/// [`Binder`] over a `kube::Client` (in-cluster or from a kubeconfig; injected).
#[derive(Clone)]
pub struct KubeBinder {
    client: kube::Client,
}

impl std::fmt::Debug for KubeBinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBinder").finish_non_exhaustive()
    }
}

impl KubeBinder {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

/// A kube-rs error as this crate's [`Error::Api`].
pub(crate) fn api_error(method: &'static str, path: String, error: kube::Error) -> Error {
    match error {
        kube::Error::Api(status) => Error::Api {
            method,
            path,
            status: Some(status.code),
            reason: format!("{} {}: {}", status.code, status.reason, status.message),
        },
        other => Error::Api {
            method,
            path,
            status: None,
            reason: other.to_string(),
        },
    }
}

impl Binder for KubeBinder {
    async fn bind(&self, plan: &BindPlan) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &plan.namespace);
        let path = format!("/api/v1/namespaces/{}/pods/{}", plan.namespace, plan.name);
        let patch = json!({"metadata": {"annotations": {
            POD_ASSIGNMENT_ANNOTATION: plan.assignment.to_annotation()
        }}});
        pods.patch(&plan.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_error("PATCH", path.clone(), e))?;
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(plan.name.clone()),
                namespace: Some(plan.namespace.clone()),
                uid: Some(plan.uid.clone()).filter(|u| !u.is_empty()),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(plan.node.clone()),
                ..ObjectReference::default()
            },
        };
        pods.create_subresource::<_, serde_json::Value>(
            "binding",
            &plan.name,
            &PostParams::default(),
            &binding,
        )
        .await
        .map_err(|e| api_error("POST", format!("{path}/binding"), e))?;
        Ok(())
    }
}
