//! The Kubernetes API, reached over plain HTTP through a local authenticating proxy
//! (`kubectl proxy` as a sidecar: it holds the service account's token and the API server's
//! TLS), which keeps this binary free of a TLS stack and a full client.
//!
//! # Flow
//! `bind`: merge-patch the pod's `gantry.dev/gpu-assignment` annotation, then `POST` its
//! `binding` subresource. `sync`: list Nodes and Pods and bring the extender's cache up to date
//! (nodes and pods that disappeared are forgotten); the CLI runs it on an interval.
//!
//! # Errors
//! A connection failure or a non-2xx answer is an [`Error::Api`] naming the method, the path,
//! the status and the API server's message.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use gantry_scheduler::schema::POD_ASSIGNMENT_ANNOTATION;
use gantry_scheduler::{BindPlan, Extender};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

use crate::{Binder, Error, Result};

/// The API server behind a local proxy at `addr`.
#[derive(Debug, Clone)]
pub struct ApiServer {
    addr: SocketAddr,
}

/// What one `sync` saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub nodes: usize,
    pub pods: usize,
    pub removed_nodes: usize,
    pub removed_pods: usize,
    pub rejected: usize,
}

impl ApiServer {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    async fn call(
        &self,
        method: &'static str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Bytes> {
        let err = |reason: String| Error::Api {
            method,
            path: path.to_string(),
            reason,
        };
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| err(format!("connecting to {}: {e}", self.addr)))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| err(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "API connection closed");
            }
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("accept", "application/json");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| err(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| err(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(err(format!("{status}: {message}")));
        }
        Ok(bytes)
    }

    /// Lists nodes and pods and updates `extender`'s cache.
    pub async fn sync(&self, extender: &Extender) -> Result<SyncStats> {
        #[derive(serde::Deserialize)]
        struct List<T> {
            items: Vec<T>,
        }
        let decode = |path: &str, e: serde_json::Error| Error::Api {
            method: "GET",
            path: path.to_string(),
            reason: format!("undecodable list: {e}"),
        };
        let nodes_path = "/api/v1/nodes";
        let body = self.call("GET", nodes_path, None, Vec::new()).await?;
        let nodes: List<Node> = serde_json::from_slice(&body).map_err(|e| decode(nodes_path, e))?;
        let pods_path = "/api/v1/pods?fieldSelector=spec.nodeName!%3D";
        let body = self.call("GET", pods_path, None, Vec::new()).await?;
        let pods: List<Pod> = serde_json::from_slice(&body).map_err(|e| decode(pods_path, e))?;
        let mut stats = SyncStats {
            nodes: nodes.items.len(),
            pods: pods.items.len(),
            ..SyncStats::default()
        };
        let seen: BTreeSet<String> = nodes
            .items
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        for name in extender.state().node_names() {
            if !seen.contains(&name) {
                extender.state().remove_node(&name);
                stats.removed_nodes += 1;
            }
        }
        for n in &nodes.items {
            if let Err(e) = extender.state().upsert_node(n) {
                tracing::warn!(error = %e, "node not usable");
                stats.rejected += 1;
            }
        }
        for p in &pods.items {
            if let Err(e) = extender.observe_pod(p) {
                tracing::warn!(error = %e, "pod not usable");
                stats.rejected += 1;
            }
        }
        let live: BTreeSet<String> = pods
            .items
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        stats.removed_pods = extender.retain_pods(&live);
        Ok(stats)
    }
}

impl Binder for ApiServer {
    async fn bind(&self, plan: &BindPlan) -> Result<()> {
        let pod_path = format!("/api/v1/namespaces/{}/pods/{}", plan.namespace, plan.name);
        let patch = json!({"metadata": {"annotations": {
            POD_ASSIGNMENT_ANNOTATION: plan.assignment.to_annotation()
        }}});
        self.call(
            "PATCH",
            &pod_path,
            Some("application/merge-patch+json"),
            patch.to_string().into_bytes(),
        )
        .await?;
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": plan.name, "namespace": plan.namespace, "uid": plan.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": plan.node}
        });
        self.call(
            "POST",
            &format!("{pod_path}/binding"),
            Some("application/json"),
            binding.to_string().into_bytes(),
        )
        .await?;
        Ok(())
    }
}
