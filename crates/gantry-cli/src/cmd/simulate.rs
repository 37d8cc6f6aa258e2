//! `gantry simulate`: replay a pod trace against a cluster under placement policies.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context};
use gantry_placement::{Policy, TieBreak};
use gantry_simulator::chart::{self, Series};
use gantry_simulator::report::{self, PolicySummary};
use gantry_simulator::sim::{self, RunResult, SimConfig};
use gantry_simulator::trace;
use serde::Serialize;

use crate::output::{write_structured, OutputFormat, Table};

/// Replay a pod list against a node list under one or more policies and seeds.
///
/// Method (Weng et al., ATC'23): the original pods are shuffled with the seed, copies drawn
/// uniformly are appended up to TUNE × cluster GPU, pods are placed one by one and never
/// leave. Metrics are recorded at every integer percent of arrived GPU demand.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Node list CSV (sn,cpu_milli,memory_mib,gpu,model).
    #[arg(long, env = "GANTRY_SIM_NODES")]
    nodes: PathBuf,
    /// Pod list CSV (name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]).
    #[arg(long, env = "GANTRY_SIM_PODS")]
    pods: PathBuf,
    /// Policies, comma-separated: random, dot-product, gpu-clustering, gpu-packing, best-fit,
    /// fgd, frag-cpu (Gantry's).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "random,dot-product,gpu-clustering,gpu-packing,best-fit,fgd,frag-cpu"
    )]
    policy: Vec<String>,
    /// Seeds: an inclusive range `42..51`, or a comma-separated list `42,43`.
    #[arg(long, default_value = "42..51")]
    seeds: String,
    /// Arrived GPU demand as a multiple of cluster GPU capacity.
    #[arg(long, default_value_t = 1.3)]
    tune: f64,
    /// Share of pods the FGD target workload covers.
    #[arg(long, default_value_t = sim::DEFAULT_COVERAGE)]
    coverage: f64,
    /// Arrival percent at which the summary is taken.
    #[arg(long, default_value_t = 100)]
    at: u32,
    /// Folder for the results: one CSV per run under runs/, summary.csv and summary.json,
    /// allocation.png (allocation against arrived demand) and allocation-zoom.png.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Format of the summary on stdout.
    #[arg(long, value_enum, default_value = "table")]
    output: OutputFormat,
    /// Runs in parallel (default: the number of CPUs).
    #[arg(long, env = "GANTRY_SIM_JOBS")]
    jobs: Option<usize>,
    /// Measure placement decisions per second per policy instead: first seed only, one
    /// thread, decision time only.
    #[arg(long)]
    bench: bool,
    /// TrueType font for the chart's text; without it the chart has no text and a legend
    /// file is written beside it.
    #[arg(
        long,
        env = "GANTRY_CHART_FONT",
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
    /// How ties between best-scored nodes are broken: `node-order` (first in a seeded node order
    /// per run, as the authors' simulator behaves) or `uniform` (a fresh draw per decision).
    #[arg(long, value_enum, default_value = "node-order")]
    tie_break: TieBreakArg,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TieBreakArg {
    NodeOrder,
    Uniform,
}

impl From<TieBreakArg> for TieBreak {
    fn from(t: TieBreakArg) -> Self {
        match t {
            TieBreakArg::NodeOrder => TieBreak::NodeOrder,
            TieBreakArg::Uniform => TieBreak::Uniform,
        }
    }
}

/// Parses `42..51` (inclusive) or `42,43,50`.
fn parse_seeds(s: &str) -> anyhow::Result<Vec<u64>> {
    if let Some((a, b)) = s.split_once("..") {
        let a: u64 = a
            .trim()
            .parse()
            .with_context(|| format!("seed range start in {s:?}"))?;
        let b: u64 = b
            .trim()
            .trim_start_matches('=')
            .parse()
            .with_context(|| format!("seed range end in {s:?}"))?;
        if b < a {
            bail!("empty seed range {s:?}: the end must be at least the start");
        }
        return Ok((a..=b).collect());
    }
    s.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .with_context(|| format!("seed {x:?} in {s:?}"))
        })
        .collect()
}

#[derive(Debug, Serialize)]
struct BenchRow {
    policy: String,
    seed: u64,
    decisions: usize,
    seconds: f64,
    decisions_per_second: f64,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let policies: Vec<Policy> = args
        .policy
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.parse::<Policy>())
        .collect::<Result<_, _>>()?;
    if policies.is_empty() {
        bail!("no policy given: pass --policy NAME[,NAME...]");
    }
    let seeds = parse_seeds(&args.seeds)?;
    if !args.tune.is_finite() || args.tune <= 0.0 {
        bail!("--tune must be positive, got {}", args.tune);
    }
    if !(0.0..=1.0).contains(&args.coverage) {
        bail!("--coverage must be within 0..=1, got {}", args.coverage);
    }
    let nodes = trace::load_nodes(&args.nodes)?;
    let pods = trace::load_pods(&args.pods)?;
    let total_gpu_milli: u64 = nodes.iter().map(|n| u64::from(n.gpus) * 1000).sum();
    tracing::info!(
        nodes = nodes.len(),
        pods = pods.len(),
        gpus = total_gpu_milli / 1000,
        "loaded trace"
    );

    if args.bench {
        return bench(args, &nodes, &pods, &policies, seeds[0]);
    }

    let runs: Vec<SimConfig> = policies
        .iter()
        .flat_map(|&policy| {
            seeds.iter().map(move |&seed| SimConfig {
                policy,
                seed,
                tune: args.tune,
                coverage: args.coverage,
                tie_break: args.tie_break.into(),
            })
        })
        .collect();
    let total_pods: u64 = runs
        .iter()
        .map(|c| sim::arrival_order(&pods, total_gpu_milli, c.seed, c.tune).len() as u64)
        .sum();
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total_pods)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} pods ({per_sec}, eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, runs.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<anyhow::Result<RunResult>>> = Mutex::new(Vec::new());
    let progress = |n: u64| bar.inc(n);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(cfg) = runs.get(i) else { break };
                let r = sim::simulate(&nodes, &pods, cfg, &progress)
                    .with_context(|| format!("simulating {} seed {}", cfg.policy, cfg.seed));
                if let Ok(mut v) = results.lock() {
                    v.push(r);
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut results: Vec<RunResult> = results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a simulation thread panicked"))?
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    results.sort_by_key(|r| (r.policy, r.seed));
    let summaries = report::summarize(&results, args.at);

    if let Some(out) = &args.out {
        write_results(out, args, &results, &summaries)?;
    }
    print_summary(args.output, &summaries, args.at)?;
    Ok(ExitCode::SUCCESS)
}

fn write_results(
    out: &Path,
    args: &Args,
    results: &[RunResult],
    summaries: &[PolicySummary],
) -> anyhow::Result<()> {
    for r in results {
        report::write_atomic(
            &out.join("runs").join(report::run_file_name(r)),
            report::run_csv(r).as_bytes(),
        )?;
    }
    report::write_atomic(
        &out.join("summary.csv"),
        report::summary_csv(summaries).as_bytes(),
    )?;
    let json = serde_json::to_vec_pretty(summaries).context("serialising the summary")?;
    report::write_atomic(&out.join("summary.json"), &json)?;

    // mean allocation per policy at each arrival percent
    let mut series = Vec::new();
    for policy in Policy::ALL {
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.policy == policy).collect();
        if runs.is_empty() {
            continue;
        }
        let max_pct = runs
            .iter()
            .map(|r| r.records.last().map_or(0, |x| x.arrived_pct))
            .min()
            .unwrap_or(0);
        let points = (0..=max_pct)
            .filter_map(|pct| {
                let v: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r.at(pct).map(|x| x.allocation_pct))
                    .collect();
                (!v.is_empty()).then(|| (f64::from(pct), v.iter().sum::<f64>() / v.len() as f64))
            })
            .collect();
        series.push(Series {
            name: policy.name().to_string(),
            points,
        });
    }
    let text = match std::fs::read(&args.font) {
        Ok(bytes) => chart::use_font(bytes),
        Err(e) => {
            tracing::warn!(font = %args.font.display(), error = %e, "no font: chart without text, legend in allocation.legend.txt");
            false
        }
    };
    let title = format!(
        "GPU allocation vs arrived demand ({}, tune {}, seeds {})",
        args.pods
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
        args.tune,
        args.seeds
    );
    // the whole run, and a close-up of where the policies part
    for (name, range) in [
        ("allocation.png", (0.0, 0.0)),
        ("allocation-zoom.png", (75.0, 75.0)),
    ] {
        let png = out.join(name);
        let tmp = out.join(format!(".{name}.tmp.png"));
        chart::draw(&tmp, &title, &series, text, range)?;
        std::fs::rename(&tmp, &png).with_context(|| format!("renaming to {}", png.display()))?;
    }
    if !text {
        report::write_atomic(
            &out.join("allocation.legend.txt"),
            chart::legend_text(&series).as_bytes(),
        )?;
    }
    tracing::info!(out = %out.display(), runs = results.len(), "results written");
    Ok(())
}

fn print_summary(format: OutputFormat, summaries: &[PolicySummary], at: u32) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        OutputFormat::Table => {
            let mut t = Table::new([
                "POLICY".to_string(),
                "SEEDS".to_string(),
                format!("UNALLOCATED GPU % AT {at}% (MEAN ± STD)"),
                "SEM".to_string(),
                "FRAG % OF IDLE".to_string(),
                "FAILED PODS".to_string(),
            ]);
            for s in summaries {
                t.row([
                    s.policy.clone(),
                    s.seeds.len().to_string(),
                    format!("{:.2} ± {:.2}", s.unallocated_mean, s.unallocated_std),
                    format!("{:.2}", s.unallocated_sem),
                    format!("{:.1}", s.frag_ratio_mean),
                    format!("{:.0}", s.failed_pods_mean),
                ]);
            }
            t.write(&mut out)?;
        }
        other => write_structured(&mut out, other, &summaries)?,
    }
    out.flush()?;
    Ok(())
}

fn bench(
    args: &Args,
    nodes: &[gantry_placement::NodeSpec],
    pods: &[gantry_placement::PodSpec],
    policies: &[Policy],
    seed: u64,
) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    for &policy in policies {
        let cfg = SimConfig {
            policy,
            seed,
            tune: args.tune,
            coverage: args.coverage,
            tie_break: args.tie_break.into(),
        };
        let r = sim::simulate(nodes, pods, &cfg, &|_| {})?;
        rows.push(BenchRow {
            policy: policy.name().to_string(),
            seed,
            decisions: r.pods,
            seconds: r.decide_time.as_secs_f64(),
            decisions_per_second: r.decisions_per_second(),
        });
        tracing::info!(
            policy = policy.name(),
            per_second = r.decisions_per_second(),
            "measured"
        );
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.output {
        OutputFormat::Table => {
            let mut t = Table::new(["POLICY", "NODES", "DECISIONS", "SECONDS", "DECISIONS/S"]);
            for r in &rows {
                t.row([
                    r.policy.clone(),
                    nodes.len().to_string(),
                    r.decisions.to_string(),
                    format!("{:.3}", r.seconds),
                    format!("{:.0}", r.decisions_per_second),
                ]);
            }
            t.write(&mut out)?;
        }
        other => write_structured(&mut out, other, &rows)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_ranges_and_lists() {
        assert_eq!(parse_seeds("42..45").unwrap(), [42, 43, 44, 45]);
        assert_eq!(parse_seeds("42..=43").unwrap(), [42, 43]);
        assert_eq!(parse_seeds("7, 9").unwrap(), [7, 9]);
        assert!(parse_seeds("5..4").is_err());
        assert!(parse_seeds("x").is_err());
    }
}
