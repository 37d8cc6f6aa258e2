//! `TF_CONFIG`: the cluster spec TensorFlow reads to find its peers, byte for byte as Kubeflow writes it.

use std::collections::BTreeMap;

use gantry_tfjob::{ReplicaType, TFJob};
use serde::Serialize;

use crate::{Addressing, Error, Result};

/// The name of the environment variable.
pub const TF_CONFIG: &str = "TF_CONFIG";

#[derive(Serialize)]
struct Task<'a> {
    #[serde(rename = "type")]
    type_: &'a str,
    index: i32,
}

#[derive(Serialize)]
struct Dense<'a> {
    cluster: &'a BTreeMap<&'static str, Vec<String>>,
    task: Task<'a>,
    environment: &'static str,
}

/// Kubeflow's `SparseClusterSpec`: both keys always present.
#[derive(Serialize)]
struct SparseCluster {
    worker: BTreeMap<i32, String>,
    ps: Vec<String>,
}

/// Kubeflow's `SparseTFConfig`. Its key is `sparseCluster`, as Kubeflow writes it (TensorFlow's own
/// `TFConfigClusterResolver` reads only `cluster`, so this form serves scripts that parse it).
#[derive(Serialize)]
struct Sparse<'a> {
    #[serde(rename = "sparseCluster")]
    cluster: SparseCluster,
    task: Task<'a>,
}

/// The `<job>-<type>-<index>` name of a replica's pod and service (Kubeflow's `GenGeneralName`).
pub fn replica_name(job: &str, rtype: ReplicaType, index: i32) -> String {
    format!("{job}-{}-{index}", rtype.lower()).replace('/', "-")
}

/// Whether the job has more than one replica in all; a single-replica job gets no `TF_CONFIG`.
pub fn is_distributed(job: &TFJob) -> bool {
    let total: i64 = job
        .spec
        .tf_replica_specs
        .values()
        .map(|s| i64::from(s.replicas.unwrap_or(1)))
        .sum();
    total != 1
}

/// The cluster spec: lower-case replica type to the address of every replica, in index order.
///
/// # Errors
/// [`Error::MissingPort`] when `addressing` is loopback and lacks a port for a replica.
pub fn cluster_spec(
    job: &TFJob,
    addressing: &Addressing,
) -> Result<BTreeMap<&'static str, Vec<String>>> {
    let mut cluster = BTreeMap::new();
    for (rtype, spec) in &job.spec.tf_replica_specs {
        let count = spec.replicas.unwrap_or(1).max(0);
        let port = crate::pods::tf_port(spec);
        let mut addresses = Vec::new();
        for i in 0..count {
            let host = replica_name(job.name(), *rtype, i);
            let address = match addressing {
                Addressing::ClusterDns { cluster_domain } => {
                    let mut svc = format!("{host}.{}.svc", job.namespace());
                    if let Some(domain) = cluster_domain.as_deref().filter(|d| !d.is_empty()) {
                        svc.push('.');
                        svc.push_str(domain);
                    }
                    format!("{svc}:{port}")
                }
                Addressing::Loopback { ports } => {
                    let port = ports
                        .get(&host)
                        .ok_or_else(|| Error::MissingPort { pod: host.clone() })?;
                    format!("127.0.0.1:{port}")
                }
            };
            addresses.push(address);
        }
        cluster.insert(rtype.lower(), addresses);
    }
    Ok(cluster)
}

/// The `TF_CONFIG` value of one replica, or `None` for a single-replica job.
///
/// Dense form: `{"cluster":{...},"task":{"type":"worker","index":1},"environment":"cloud"}`. With
/// `enableDynamicWorker`, Kubeflow's sparse form, byte for byte:
/// `{"sparseCluster":{"worker":{"1":"<own address>"},"ps":[<every PS>]},"task":{...}}` for a worker, only
/// its own address in `ps` for a PS, and empty `worker`/`ps` for other types.
///
/// # Errors
/// As [`cluster_spec`].
pub fn tf_config(
    job: &TFJob,
    rtype: ReplicaType,
    index: i32,
    addressing: &Addressing,
) -> Result<Option<String>> {
    if !is_distributed(job) {
        return Ok(None);
    }
    let cluster = cluster_spec(job, addressing)?;
    tf_config_in(job, &cluster, rtype, index).map(Some)
}

/// [`tf_config`] with the cluster spec computed once for all of a plan's pods.
pub(crate) fn tf_config_in(
    job: &TFJob,
    cluster: &BTreeMap<&'static str, Vec<String>>,
    rtype: ReplicaType,
    index: i32,
) -> Result<String> {
    let task = Task {
        type_: rtype.lower(),
        index,
    };
    let text = if job.spec.enable_dynamic_worker {
        let own = usize::try_from(index)
            .ok()
            .and_then(|i| cluster.get(rtype.lower()).and_then(|a| a.get(i)))
            .cloned();
        let mut sparse = SparseCluster {
            worker: BTreeMap::new(),
            ps: Vec::new(),
        };
        match rtype {
            ReplicaType::Ps => sparse.ps.extend(own),
            ReplicaType::Worker => {
                sparse.ps = cluster.get("ps").cloned().unwrap_or_default();
                if let Some(own) = own {
                    sparse.worker.insert(index, own);
                }
            }
            _ => {}
        }
        serde_json::to_string(&Sparse {
            cluster: sparse,
            task,
        })
    } else {
        serde_json::to_string(&Dense {
            cluster,
            task,
            environment: "cloud",
        })
    };
    text.map_err(|e| Error::Serialise(e.to_string()))
}
