//! A fake host root holding the NVIDIA driver's files, laid out from an inventory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use gantry_gpu::{NodeInventory, PciBusId};
use tempfile::TempDir;

/// How the builder makes `/dev/nvidia*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceNodes {
    /// Real character devices with `mknod` (needs root).
    Mknod,
    /// Empty regular files: discovery reports such GPUs unhealthy.
    RegularFiles,
    /// No device nodes at all.
    None,
}

/// A driver root in a temporary directory; removed when dropped, so hold it for the whole test.
#[derive(Debug)]
pub struct DriverRoot {
    dir: TempDir,
    pub uvm_major: u32,
    pub caps_major: u32,
}

impl DriverRoot {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Lays out `/proc`, `/sys` and `/dev` for the GPUs of an inventory.
#[derive(Debug, Clone)]
pub struct DriverRootBuilder {
    inventory: NodeInventory,
    device_nodes: DeviceNodes,
    pci_paths: BTreeMap<PciBusId, String>,
    uvm_major: u32,
    caps_major: u32,
    driver_version: String,
}

impl DriverRootBuilder {
    pub fn new(inventory: NodeInventory) -> Self {
        let driver_version = inventory
            .driver_version
            .clone()
            .unwrap_or_else(|| "550.54.15".to_owned());
        Self {
            inventory,
            device_nodes: if crate::is_root() {
                DeviceNodes::Mknod
            } else {
                DeviceNodes::RegularFiles
            },
            pci_paths: BTreeMap::new(),
            // Dynamic majors, deliberately not 195's neighbours, so nothing can hard-code them.
            uvm_major: 509,
            caps_major: 508,
            driver_version,
        }
    }

    pub fn device_nodes(mut self, nodes: DeviceNodes) -> Self {
        self.device_nodes = nodes;
        self
    }

    /// The path below `/sys/devices` of a GPU, e.g. `pci0000:36/0000:36:00.0/0000:37:00.0/0000:3b:00.0`.
    /// By default each GPU sits alone on its own root complex.
    pub fn pci_path(mut self, bus: &str, path: &str) -> Self {
        self.pci_paths.insert(bus.parse().unwrap(), path.to_owned());
        self
    }

    pub fn build(self) -> DriverRoot {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |relative: &str, text: &str| {
            let path = root.join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write(
            "proc/driver/nvidia/version",
            &format!(
                "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {}  Tue Mar  5 22:23:56 UTC 2024\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
                self.driver_version
            ),
        );
        write(
            "proc/devices",
            &format!(
                "Character devices:\n  1 mem\n  4 /dev/vc/0\n195 nvidia-frontend\n{} nvidia-uvm\n{} nvidia-caps\n\nBlock devices:\n  8 sd\n",
                self.uvm_major, self.caps_major
            ),
        );
        for gpu in &self.inventory.gpus {
            let bus = gpu.pci_bus_id;
            write(
                &format!("proc/driver/nvidia/gpus/{bus}/information"),
                &format!(
                    "Model: \t\t {}\nIRQ:   \t\t 38\nGPU UUID: \t {}\nVideo BIOS: \t 96.00.5e.00.01\nBus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\nBus Location: \t {bus}\nDevice Minor: \t {}\nGPU Excluded:\t No\n",
                    gpu.product_name, gpu.uuid, gpu.minor
                ),
            );
            let sys_path = self.pci_paths.get(&bus).cloned().unwrap_or_else(|| {
                let rc = format!("{:04x}:{:02x}", bus.domain(), bus.bus().wrapping_sub(1));
                format!("pci{rc}/{rc}:00.0/{bus}")
            });
            let device_dir = root.join("sys/devices").join(&sys_path);
            std::fs::create_dir_all(&device_dir).unwrap();
            let numa = gpu.numa_node.map_or(-1, i64::from);
            std::fs::write(device_dir.join("numa_node"), format!("{numa}\n")).unwrap();
            let link_dir = root.join("sys/bus/pci/devices");
            std::fs::create_dir_all(&link_dir).unwrap();
            std::os::unix::fs::symlink(
                Path::new("../../../devices").join(&sys_path),
                link_dir.join(bus.to_string()),
            )
            .unwrap();
        }
        let mut nodes: Vec<(String, u32, u32)> = self
            .inventory
            .gpus
            .iter()
            .map(|g| (format!("nvidia{}", g.minor), 195, g.minor))
            .collect();
        nodes.extend([
            ("nvidiactl".to_owned(), 195, 255),
            ("nvidia-modeset".to_owned(), 195, 254),
            ("nvidia-uvm".to_owned(), self.uvm_major, 0),
            ("nvidia-uvm-tools".to_owned(), self.uvm_major, 1),
            ("nvidia-caps/nvidia-cap1".to_owned(), self.caps_major, 1),
            ("nvidia-caps/nvidia-cap2".to_owned(), self.caps_major, 2),
        ]);
        for gpu in &self.inventory.gpus {
            for mig in &gpu.mig_devices {
                if let Some(caps) = mig.caps_minors {
                    for minor in [caps.gpu_instance, caps.compute_instance] {
                        nodes.push((
                            format!("nvidia-caps/nvidia-cap{minor}"),
                            self.caps_major,
                            minor,
                        ));
                    }
                }
            }
        }
        nodes.sort();
        nodes.dedup();
        std::fs::create_dir_all(root.join("dev/nvidia-caps")).unwrap();
        for (name, major, minor) in nodes {
            let path = root.join("dev").join(&name);
            match self.device_nodes {
                DeviceNodes::Mknod => make_char_device(&path, major, minor),
                DeviceNodes::RegularFiles => std::fs::write(&path, b"").unwrap(),
                DeviceNodes::None => {}
            }
        }
        if self
            .inventory
            .gpus
            .iter()
            .any(|g| !g.mig_devices.is_empty())
        {
            let count = self
                .inventory
                .gpus
                .iter()
                .map(|g| g.minor + 1)
                .max()
                .unwrap_or(0);
            write(
                "proc/driver/nvidia-caps/mig-minors",
                &mig_minors_table(count),
            );
        }
        DriverRoot {
            dir,
            uvm_major: self.uvm_major,
            caps_major: self.caps_major,
        }
    }
}

/// Makes a character device node with coreutils' `mknod` (root only).
pub(crate) fn make_char_device(path: &PathBuf, major: u32, minor: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let status = Command::new("mknod")
        .arg(path)
        .args(["c", &major.to_string(), &minor.to_string()])
        .status()
        .expect("run mknod");
    assert!(
        status.success(),
        "mknod {} c {major} {minor} failed",
        path.display()
    );
}

/// The driver's `/proc/driver/nvidia-caps/mig-minors` table for `gpus` GPUs: per GPU, 15 GPU instances,
/// each an access minor followed by 8 compute-instance minors, after `config` (1) and `monitor` (2).
pub fn mig_minors_table(gpus: u32) -> String {
    let mut text = String::from("config 1\nmonitor 2\n");
    let mut minor = 3;
    for gpu in 0..gpus {
        for gi in 0..15 {
            writeln!(text, "gpu{gpu}/gi{gi}/access {minor}").unwrap();
            minor += 1;
            for ci in 0..8 {
                writeln!(text, "gpu{gpu}/gi{gi}/ci{ci}/access {minor}").unwrap();
                minor += 1;
            }
        }
    }
    text
}
