//! Pins the wire format: hand-encoded protobuf bytes for each field number and type the kubelet uses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gantry_kubelet_proto::deviceplugin::v1beta1::*;
use prost::Message;

#[test]
fn register_request_bytes() {
    let request = RegisterRequest {
        version: "v1beta1".into(),
        endpoint: "g.sock".into(),
        resource_name: "a/b".into(),
        options: Some(DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }),
    };
    let expected: Vec<u8> = [
        &[0x0a, 7][..],
        b"v1beta1", // field 1, string
        &[0x12, 6],
        b"g.sock", // field 2, string
        &[0x1a, 3],
        b"a/b",              // field 3, string
        &[0x22, 2, 0x10, 1], // field 4, message { field 2 = true }
    ]
    .concat();
    assert_eq!(request.encode_to_vec(), expected);
    assert_eq!(RegisterRequest::decode(&expected[..]).unwrap(), request);
}

#[test]
fn device_with_numa_topology_bytes() {
    let device = Device {
        id: "G".into(),
        health: "Healthy".into(),
        topology: Some(TopologyInfo {
            nodes: vec![NumaNode { id: 1 }],
        }),
    };
    let expected: Vec<u8> = [
        &[0x0a, 1][..],
        b"G",
        &[0x12, 7],
        b"Healthy",
        &[0x1a, 4, 0x0a, 2, 0x08, 1], // field 3 { field 1 { field 1 (int64) = 1 } }
    ]
    .concat();
    assert_eq!(device.encode_to_vec(), expected);
}

#[test]
fn container_allocate_response_cdi_devices_is_field_5() {
    let response = ContainerAllocateResponse {
        cdi_devices: vec![CdiDevice { name: "x".into() }],
        ..Default::default()
    };
    assert_eq!(response.encode_to_vec(), [0x2a, 3, 0x0a, 1, b'x']);
    let response = ContainerAllocateResponse {
        devices: vec![DeviceSpec {
            container_path: "c".into(),
            host_path: "h".into(),
            permissions: "rw".into(),
        }],
        mounts: vec![Mount {
            container_path: "m".into(),
            host_path: "n".into(),
            read_only: true,
        }],
        ..Default::default()
    };
    let expected: Vec<u8> = [
        &[0x12, 8, 0x0a, 1, b'm', 0x12, 1, b'n', 0x18, 1][..], // mounts = field 2
        &[0x1a, 10, 0x0a, 1, b'c', 0x12, 1, b'h', 0x1a, 2, b'r', b'w'], // devices = field 3
    ]
    .concat();
    assert_eq!(response.encode_to_vec(), expected);
}

#[test]
fn preferred_allocation_request_bytes() {
    let request = ContainerPreferredAllocationRequest {
        available_device_i_ds: vec!["a".into()],
        must_include_device_i_ds: vec!["b".into()],
        allocation_size: 2,
    };
    assert_eq!(
        request.encode_to_vec(),
        [0x0a, 1, b'a', 0x12, 1, b'b', 0x18, 2]
    );
}

#[test]
fn service_paths_are_in_package_v1beta1() {
    // The kubelet calls these exact paths; a wrong package makes every call "unimplemented".
    assert_eq!(
        <registration_server::RegistrationServer<()> as tonic::server::NamedService>::NAME,
        "v1beta1.Registration"
    );
    assert_eq!(
        <device_plugin_server::DevicePluginServer<()> as tonic::server::NamedService>::NAME,
        "v1beta1.DevicePlugin"
    );
}
