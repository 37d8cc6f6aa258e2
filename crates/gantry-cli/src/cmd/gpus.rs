//! `gantry gpus`: the node's GPUs, their MIG devices and topology.

use std::io::Write;

use gantry_discovery::BackendKind;
use gantry_gpu::{Health, MigMode, NodeInventory};
use serde::Serialize;

use super::discovery_args::DiscoveryArgs;
use crate::output::{write_structured, OutputFormat, Table};

/// List the node's GPUs (index, UUID, PCI bus id, NUMA node, memory, MIG devices, health).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Format of what goes to stdout.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: OutputFormat,

    /// Print the link matrix between GPUs (as `nvidia-smi topo -m`) instead of the GPU list.
    #[arg(long)]
    pub topology: bool,

    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

/// What `gantry gpus --output json|yaml` prints: the inventory and the backend that produced it.
#[derive(Debug, Serialize)]
struct Report<'a> {
    backend: BackendKind,
    #[serde(flatten)]
    inventory: &'a NodeInventory,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

pub fn run(args: &Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let found = args.discovery.discover()?;
    let report = Report {
        backend: found.backend,
        inventory: &found.inventory,
        warnings: &found.warnings,
    };
    match args.output {
        OutputFormat::Table if args.topology => write_topology(&found.inventory, out)?,
        OutputFormat::Table => write_table(&report, out)?,
        format => write_structured(out, format, &report)?,
    }
    Ok(())
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn mib(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |m| format!("{m} MiB"))
}

fn write_table(report: &Report<'_>, out: &mut dyn Write) -> anyhow::Result<()> {
    let inv = report.inventory;
    writeln!(
        out,
        "backend: {}   driver: {}   CUDA: {}   GPUs: {}",
        report.backend,
        inv.driver_version.as_deref().unwrap_or("-"),
        or_dash(inv.cuda_driver_version),
        inv.gpus.len()
    )?;
    let mut table = Table::new([
        "GPU", "PRODUCT", "UUID", "PCI BUS", "NUMA", "MINOR", "MEMORY", "CC", "MIG", "HEALTH",
    ]);
    for gpu in &inv.gpus {
        let mig = match gpu.mig_mode {
            Some(MigMode::Enabled) => "enabled",
            Some(MigMode::Disabled) => "disabled",
            Some(MigMode::Unsupported) => "n/a",
            None => "-",
        };
        let health = match &gpu.health {
            Health::Healthy => "healthy".to_owned(),
            Health::Unhealthy { reason } => format!("unhealthy: {reason}"),
        };
        table.row([
            gpu.index.to_string(),
            gpu.product_name.clone(),
            gpu.uuid.to_string(),
            gpu.pci_bus_id.to_string(),
            or_dash(gpu.numa_node),
            gpu.minor.to_string(),
            mib(gpu.memory_mib),
            or_dash(gpu.compute_capability),
            mig.to_owned(),
            health,
        ]);
        for m in &gpu.mig_devices {
            table.row([
                String::new(),
                format!("└ MIG {}", m.profile),
                m.uuid.to_string(),
                format!("gi {} ci {}", m.gpu_instance_id, m.compute_instance_id),
                String::new(),
                m.caps_minors.map_or_else(
                    || "-".to_owned(),
                    |c| format!("cap {}/{}", c.gpu_instance, c.compute_instance),
                ),
                mib(m.memory_mib),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
    }
    table.write(out)?;
    for warning in report.warnings {
        writeln!(out, "warning: {warning}")?;
    }
    Ok(())
}

fn write_topology(inv: &NodeInventory, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut header = vec![String::new()];
    header.extend(inv.gpus.iter().map(|g| format!("GPU{}", g.index)));
    header.push("NUMA".to_owned());
    let mut table = Table::new(header);
    for a in &inv.gpus {
        let mut row = vec![format!("GPU{}", a.index)];
        for b in &inv.gpus {
            row.push(if a.index == b.index {
                "X".to_owned()
            } else {
                or_dash(inv.topology.link(a.index, b.index))
            });
        }
        row.push(or_dash(a.numa_node));
        table.row(row);
    }
    table.write(out)?;
    writeln!(
        out,
        "\nLegend:\n  X    = self\n  NV#  = NVLink with # lanes\n  PIX  = at most a single PCIe bridge\n  PXB  = multiple PCIe bridges, no host bridge\n  PHB  = through a PCIe host bridge\n  NODE = across host bridges within a NUMA node\n  SYS  = across NUMA nodes (SMP interconnect)\n  -    = not known to this discovery backend"
    )?;
    Ok(())
}
