//! The `DevicePlugin` gRPC service of one resource.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use gantry_allocation::{
    preferred_gpus, preferred_replicas, Replica, ReplicaStrategy, TopologyView,
};
use gantry_gpu::Health;
use gantry_kubelet_proto::deviceplugin::v1beta1 as api;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::allocate::{
    allocate_container, allocate_shared, check_shared_ids, AllocatePolicy, ContainerAllocation,
};
use crate::cluster::Allocator;
use crate::metrics::Metrics;
use crate::resources::{Resource, MILLI_RESOURCE};

/// What one resource's server answers from: its devices now, and the node's topology.
#[derive(Debug, Clone)]
pub(crate) struct ResourceState {
    pub resource: Resource,
    pub view: TopologyView,
}

#[derive(Debug, Clone)]
pub(crate) struct ResourceService {
    pub rx: watch::Receiver<Arc<ResourceState>>,
    pub policy: Arc<AllocatePolicy>,
    pub replica_strategy: ReplicaStrategy,
    pub metrics: Arc<Metrics>,
    /// The shared-GPU handshake, for `gantry.dev/gpu-milli` (present when the plugin knows its node).
    pub shared: Option<Allocator>,
    /// Ends every ListAndWatch stream when this server stops, so that shutdown never waits on a kubelet
    /// that keeps its stream open.
    pub stop: watch::Receiver<bool>,
}

pub(crate) fn device_list(resource: &Resource) -> api::ListAndWatchResponse {
    api::ListAndWatchResponse {
        devices: resource
            .devices
            .iter()
            .map(|d| api::Device {
                id: d.id.clone(),
                health: match d.health {
                    Health::Healthy => api::HEALTHY,
                    Health::Unhealthy { .. } => api::UNHEALTHY,
                }
                .to_owned(),
                topology: d.numa_node.map(|node| api::TopologyInfo {
                    nodes: vec![api::NumaNode {
                        id: i64::from(node),
                    }],
                }),
            })
            .collect(),
    }
}

fn to_proto(allocation: ContainerAllocation) -> api::ContainerAllocateResponse {
    api::ContainerAllocateResponse {
        envs: allocation.envs.into_iter().collect(),
        mounts: allocation
            .mounts
            .into_iter()
            .map(|m| api::Mount {
                container_path: m.container_path,
                host_path: m.host_path,
                read_only: m.read_only,
            })
            .collect(),
        devices: allocation
            .devices
            .into_iter()
            .map(|d| api::DeviceSpec {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        annotations: allocation.annotations.into_iter().collect(),
        cdi_devices: allocation
            .cdi_devices
            .into_iter()
            .map(|name| api::CdiDevice { name })
            .collect(),
    }
}

impl ResourceService {
    /// One container of `gantry.dev/gpu-milli`: the recorded GPU of the pod waiting for this many
    /// thousandths.
    async fn allocate_shared(
        &self,
        resource: &Resource,
        ids: &[String],
    ) -> Result<ContainerAllocation, Status> {
        let name = &resource.name;
        let Some(shared) = &self.shared else {
            return Err(Status::failed_precondition(format!(
                "{name}: the plugin does not know its node (no --node-name), so it cannot find the pod"
            )));
        };
        // Check the IDs before asking the API server (the target is checked again below).
        check_shared_ids(resource, ids)
            .map_err(|err| Status::invalid_argument(format!("{name}: {err}")))?;
        let units = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        let choice = shared.allocate(units).await.map_err(|err| match err {
            crate::Error::NoSharedPod { .. } => {
                Status::failed_precondition(format!("{name}: {err}"))
            }
            other => Status::unavailable(format!("{name}: {other}")),
        })?;
        let target = choice.gpus.first().map(String::as_str).unwrap_or_default();
        allocate_shared(resource, ids, target, &self.policy).map_err(|err| {
            Status::failed_precondition(format!(
                "{name}: pod {} (container {}): {err}",
                choice.key(),
                choice.container
            ))
        })
    }

    fn state(&self) -> Arc<ResourceState> {
        self.rx.borrow().clone()
    }

    /// The preferred IDs for one container request.
    fn preferred(
        &self,
        state: &ResourceState,
        request: &api::ContainerPreferredAllocationRequest,
    ) -> Result<Vec<String>, Status> {
        let resource = &state.resource;
        let size = usize::try_from(request.allocation_size).map_err(|_| {
            Status::invalid_argument(format!(
                "allocation_size {} is negative",
                request.allocation_size
            ))
        })?;
        if resource.name == MILLI_RESOURCE {
            // Which shares the kubelet books does not matter: Allocate hands out the GPU the
            // scheduler recorded on the pod. The must-include IDs, then the first available.
            let mut chosen = request.must_include_device_i_ds.clone();
            let mut taken: std::collections::BTreeSet<&str> = request
                .must_include_device_i_ds
                .iter()
                .map(String::as_str)
                .collect();
            for id in &request.available_device_i_ds {
                if chosen.len() >= size {
                    break;
                }
                if taken.insert(id.as_str()) {
                    chosen.push(id.clone());
                }
            }
            return Ok(chosen);
        }
        let mut replicas = Vec::new();
        for id in &request.available_device_i_ds {
            let device = resource.device(id).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "device {id:?} is not advertised by {}",
                    resource.name
                ))
            })?;
            replicas.push(Replica {
                id: id.clone(),
                gpu: device.gpu_index,
            });
        }
        let mut per_gpu: BTreeMap<u32, usize> = BTreeMap::new();
        for device in &resource.devices {
            *per_gpu.entry(device.gpu_index).or_default() += 1;
        }
        let shares_gpus = per_gpu.values().any(|n| *n > 1);
        let chosen = if shares_gpus {
            // Time-sliced replicas or MIG devices: several IDs per physical GPU.
            let per = per_gpu.values().copied().max().unwrap_or(1);
            let strategy = if resource.replicas > 1 {
                self.replica_strategy
            } else {
                ReplicaStrategy::Spread
            };
            preferred_replicas(
                &replicas,
                &request.must_include_device_i_ds,
                size,
                per,
                strategy,
            )
        } else {
            let index_of: BTreeMap<&str, u32> =
                replicas.iter().map(|r| (r.id.as_str(), r.gpu)).collect();
            let id_of: BTreeMap<u32, &str> =
                replicas.iter().map(|r| (r.gpu, r.id.as_str())).collect();
            let available: Vec<u32> = replicas.iter().map(|r| r.gpu).collect();
            let must = request
                .must_include_device_i_ds
                .iter()
                .map(|id| {
                    index_of.get(id.as_str()).copied().ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "must-include device {id:?} is not among the available ones"
                        ))
                    })
                })
                .collect::<Result<Vec<u32>, Status>>()?;
            preferred_gpus(&state.view, &available, &must, size).map(|set| {
                set.iter()
                    .filter_map(|g| id_of.get(g).map(|s| (*s).to_owned()))
                    .collect()
            })
        };
        chosen.map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<api::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl api::device_plugin_server::DevicePlugin for ResourceService {
    async fn get_device_plugin_options(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<api::DevicePluginOptions>, Status> {
        Ok(Response::new(api::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }))
    }

    type ListAndWatchStream = DeviceStream;

    /// Sends the current device list at once, then a new one on every change, until the kubelet hangs
    /// up or the plugin stops serving this resource.
    async fn list_and_watch(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<DeviceStream>, Status> {
        let lists = tokio_stream::wrappers::WatchStream::new(self.rx.clone()).map(Some);
        let stop = tokio_stream::wrappers::WatchStream::new(self.stop.clone())
            .filter(|stop| *stop)
            .map(|_| None);
        let stream = lists
            .merge(stop)
            .take_while(Option::is_some)
            .filter_map(|state| state.map(|s| Ok(device_list(&s.resource))));
        Ok(Response::new(Box::pin(stream)))
    }

    /// # Flow
    /// For whole GPUs (`nvidia.com/gpu`, neither replicas nor MIG devices) with a cluster configured:
    /// the GPUs gantry-scheduler recorded on the pod waiting for this many
    /// ([`crate::cluster::PodAllocator::prefer_whole`]) when they are all available and hold the
    /// must-include IDs. Otherwise, and for every other resource, the topology choice.
    ///
    /// # Errors
    /// `InvalidArgument` for a negative size or IDs this resource does not advertise; never because
    /// of the API server (unreachable, it falls back to topology after the API timeout).
    async fn get_preferred_allocation(
        &self,
        request: Request<api::PreferredAllocationRequest>,
    ) -> Result<Response<api::PreferredAllocationResponse>, Status> {
        let state = self.state();
        let whole = self
            .shared
            .as_ref()
            .filter(|_| state.resource.is_whole_gpus());
        let mut container_responses = Vec::new();
        for r in &request.into_inner().container_requests {
            let recorded = match (whole, usize::try_from(r.allocation_size)) {
                (Some(allocator), Ok(size)) if size > 0 => {
                    allocator
                        .prefer_whole(size, &r.available_device_i_ds, &r.must_include_device_i_ds)
                        .await
                }
                _ => None,
            };
            let device_i_ds = match recorded {
                Some(ids) => ids,
                None => self.preferred(&state, r)?,
            };
            container_responses.push(api::ContainerPreferredAllocationResponse { device_i_ds });
        }
        Ok(Response::new(api::PreferredAllocationResponse {
            container_responses,
        }))
    }

    /// # Flow
    /// Each container's IDs are checked against the current device list, then turned into CDI names,
    /// annotations, environment and mounts as the device list strategies say. For
    /// `gantry.dev/gpu-milli` the IDs only count thousandths: the plugin finds the pod on its node
    /// that gantry-scheduler placed with that many ([`crate::cluster::PodAllocator::allocate`])
    /// and hands out the GPU recorded on it instead.
    ///
    /// For whole GPUs (`nvidia.com/gpu`) with a cluster configured, the plugin then finds the pod the
    /// kubelet's GPUs are for and records them on it, correcting gantry-scheduler's assignment when
    /// the kubelet chose other GPUs ([`crate::cluster::PodAllocator::allocate_whole`]); whatever
    /// the API server does, the whole-GPU answer stands.
    ///
    /// # Errors
    /// `InvalidArgument` naming the first unknown, unhealthy or repeated ID; no container of the request
    /// gets anything then. For `gantry.dev/gpu-milli`: `FailedPrecondition` when no pod on the node
    /// waits for that many thousandths (it was not scheduled by gantry-scheduler) or its recorded GPU
    /// is unhealthy, `Unavailable` when the API server cannot be reached.
    async fn allocate(
        &self,
        request: Request<api::AllocateRequest>,
    ) -> Result<Response<api::AllocateResponse>, Status> {
        let state = self.state();
        let resource = &state.resource;
        let mut container_responses = Vec::new();
        for container in request.into_inner().container_requests {
            let answer = if resource.name == MILLI_RESOURCE {
                self.allocate_shared(resource, &container.devices_ids).await
            } else {
                let answer = allocate_container(resource, &container.devices_ids, &self.policy)
                    .map_err(|err| Status::invalid_argument(format!("{}: {err}", resource.name)));
                if let (Ok(_), Some(allocator)) = (&answer, &self.shared) {
                    if resource.is_whole_gpus() {
                        // Keep gantry-scheduler's record right; never fails the allocation.
                        let gpus: Vec<(u32, String)> = container
                            .devices_ids
                            .iter()
                            .filter_map(|id| resource.device(id))
                            .map(|d| (d.gpu_index, d.id.clone()))
                            .collect();
                        allocator.allocate_whole(&gpus).await;
                    }
                }
                answer
            };
            match answer {
                Ok(answer) => {
                    self.metrics.allocation(&resource.name, true);
                    container_responses.push(to_proto(answer));
                }
                Err(status) => {
                    self.metrics.allocation(&resource.name, false);
                    tracing::warn!(resource = %resource.name, error = %status.message(), "allocate refused");
                    return Err(status);
                }
            }
        }
        Ok(Response::new(api::AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<api::PreStartContainerRequest>,
    ) -> Result<Response<api::PreStartContainerResponse>, Status> {
        Ok(Response::new(api::PreStartContainerResponse {}))
    }
}
