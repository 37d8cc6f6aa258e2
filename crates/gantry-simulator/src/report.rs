//! Results on disk: one CSV per run, the summary over seeds, written atomically.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use gantry_placement::Policy;
use serde::Serialize;

use crate::sim::RunResult;
use crate::{Error, Result};

/// One policy's result over its seeds at one arrival percent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicySummary {
    pub policy: String,
    pub seeds: Vec<u64>,
    pub arrived_pct: u32,
    /// Unallocated GPU, % of cluster GPU: mean, sample standard deviation, standard error.
    pub unallocated_mean: f64,
    pub unallocated_std: f64,
    pub unallocated_sem: f64,
    /// Fragmentation ratio, % of idle GPU, mean over seeds.
    pub frag_ratio_mean: f64,
    /// Failed pods (all reasons), mean over seeds.
    pub failed_pods_mean: f64,
}

/// Mean and sample standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Summaries per policy (in [`Policy::ALL`] order) at `pct` % arrival. Runs that never reached
/// `pct` are left out.
pub fn summarize(results: &[RunResult], pct: u32) -> Vec<PolicySummary> {
    let mut out = Vec::new();
    for policy in Policy::ALL {
        let mut runs: Vec<&RunResult> = results.iter().filter(|r| r.policy == policy).collect();
        if runs.is_empty() {
            continue;
        }
        runs.sort_by_key(|r| r.seed);
        let at: Vec<_> = runs
            .iter()
            .filter_map(|r| r.at(pct).map(|x| (r.seed, x)))
            .collect();
        let un: Vec<f64> = at.iter().map(|(_, r)| r.unallocated_pct()).collect();
        let (mean, std) = mean_std(&un);
        let fr: Vec<f64> = at.iter().map(|(_, r)| r.frag_ratio_pct).collect();
        let failed: Vec<f64> = at
            .iter()
            .map(|(_, r)| (r.pods_arrived - r.pods_placed) as f64)
            .collect();
        out.push(PolicySummary {
            policy: policy.name().to_string(),
            seeds: at.iter().map(|(s, _)| *s).collect(),
            arrived_pct: pct,
            unallocated_mean: mean,
            unallocated_std: std,
            unallocated_sem: if un.len() > 1 {
                std / (un.len() as f64).sqrt()
            } else {
                0.0
            },
            frag_ratio_mean: mean_std(&fr).0,
            failed_pods_mean: mean_std(&failed).0,
        });
    }
    out
}

/// A run's records as CSV text.
pub fn run_csv(run: &RunResult) -> String {
    let mut s = String::from(
        "policy,seed,tune,arrived_pct,arrived_gpu_milli,allocated_gpu_milli,allocation_pct,\
         unallocated_pct,frag_amount_pct,frag_ratio_pct,pods_arrived,pods_placed,\
         failed_gpu_model,failed_cpu,failed_memory,failed_gpu\n",
    );
    for r in &run.records {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{},{},{},{},{},{}",
            run.policy.name(),
            run.seed,
            run.tune,
            r.arrived_pct,
            r.arrived_gpu_milli,
            r.allocated_gpu_milli,
            r.allocation_pct,
            r.unallocated_pct(),
            r.frag_amount_pct,
            r.frag_ratio_pct,
            r.pods_arrived,
            r.pods_placed,
            r.failed_gpu_model,
            r.failed_cpu,
            r.failed_memory,
            r.failed_gpu
        );
    }
    s
}

/// The summaries as CSV text.
pub fn summary_csv(summaries: &[PolicySummary]) -> String {
    let mut s = String::from(
        "policy,seeds,arrived_pct,unallocated_mean,unallocated_std,unallocated_sem,frag_ratio_mean,failed_pods_mean\n",
    );
    for p in summaries {
        let seeds: Vec<String> = p.seeds.iter().map(u64::to_string).collect();
        let _ = writeln!(
            s,
            "{},{},{},{:.4},{:.4},{:.4},{:.4},{:.1}",
            p.policy,
            seeds.join(" "),
            p.arrived_pct,
            p.unallocated_mean,
            p.unallocated_std,
            p.unallocated_sem,
            p.frag_ratio_mean,
            p.failed_pods_mean
        );
    }
    s
}

/// The file name of a run's CSV.
pub fn run_file_name(run: &RunResult) -> String {
    format!("{}_seed{}.csv", run.policy.name(), run.seed)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
///
/// # Errors
/// The path of the failing file with the I/O error; the destination is untouched on error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_matches_hand_values() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12);
        assert!((s - 1.290_994_448_735_805_6).abs() < 1e-12);
        assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.csv");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
