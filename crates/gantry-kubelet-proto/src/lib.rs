#![doc = include_str!("../README.md")]

/// The kubelet device plugin API, package `v1beta1`.
pub mod deviceplugin {
    pub mod v1beta1 {
        #![allow(clippy::all, clippy::pedantic, missing_debug_implementations)]
        tonic::include_proto!("v1beta1");

        /// The API version a plugin registers with.
        pub const VERSION: &str = "v1beta1";
        /// The kubelet's registration socket, inside the plugin directory.
        pub const KUBELET_SOCKET: &str = "kubelet.sock";
        /// Device health as the kubelet spells it.
        pub const HEALTHY: &str = "Healthy";
        pub const UNHEALTHY: &str = "Unhealthy";
    }
}

/// Dialling the kubelet's and the plugins' unix sockets: gRPC over a path, not a TCP address.
pub mod transport {
    use std::path::PathBuf;

    use hyper_util::rt::TokioIo;
    use tonic::transport::{Channel, Endpoint, Uri};

    /// A gRPC channel to the unix socket at `path`. The URI is a placeholder tonic requires; the
    /// connector ignores it.
    pub async fn connect_uds(path: impl Into<PathBuf>) -> Result<Channel, tonic::transport::Error> {
        let path = path.into();
        Endpoint::from_static("http://[::1]:50051")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
    }
}
