//! `gantry validate`: a vector add on every GPU, checked against the CPU and timed.

use std::io::Write;

use gantry_validate::{validate, ValidateConfig, DEFAULT_ELEMENTS};

use crate::output::{write_structured, OutputFormat, Table};

/// Run c = a + b on each GPU through the CUDA driver API, compare with the CPU, report memory bandwidth.
///
/// Exits non-zero when any GPU computes a wrong result. Needs the NVIDIA driver (libcuda); NVRTC is
/// used when installed, else hand-written PTX.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Floats per vector (default 2^26: 256 MiB per vector).
    #[arg(long, default_value_t = DEFAULT_ELEMENTS)]
    pub elements: usize,

    /// Timed launches per GPU (the median is reported), after one warm-up launch.
    #[arg(long, default_value_t = 20)]
    pub repeats: u32,

    /// Validate only this GPU (CUDA ordinal); repeat for several. All GPUs by default.
    #[arg(long = "device", value_name = "ORDINAL")]
    pub devices: Vec<usize>,

    /// Format of what goes to stdout.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// Returns whether every GPU passed.
pub fn run(args: &Args, out: &mut dyn Write) -> anyhow::Result<bool> {
    let config = ValidateConfig {
        elements: args.elements,
        repeats: args.repeats,
        devices: (!args.devices.is_empty()).then(|| args.devices.clone()),
    };
    let reports = validate(&config)?;
    match args.output {
        OutputFormat::Table => {
            let mut table = Table::new([
                "GPU",
                "NAME",
                "KERNEL",
                "ELEMENTS",
                "MISMATCHES",
                "MAX ERROR",
                "TIME",
                "BANDWIDTH",
                "PEAK",
                "OF PEAK",
                "RESULT",
            ]);
            for r in &reports {
                table.row([
                    r.ordinal.to_string(),
                    r.name.clone(),
                    format!("{:?}", r.kernel).to_lowercase(),
                    r.elements.to_string(),
                    r.mismatches.to_string(),
                    format!("{:e}", r.max_abs_error),
                    format!("{:.3} ms", r.kernel_ms),
                    format!("{:.0} GB/s", r.achieved_gb_per_s),
                    r.peak_gb_per_s
                        .map_or("-".into(), |p| format!("{p:.0} GB/s")),
                    r.percent_of_peak
                        .map_or("-".into(), |p| format!("{p:.0} %")),
                    if r.passed { "PASS" } else { "FAIL" }.to_owned(),
                ]);
            }
            table.write(out)?;
        }
        format => write_structured(out, format, &reports)?,
    }
    Ok(reports.iter().all(|r| r.passed))
}
