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
