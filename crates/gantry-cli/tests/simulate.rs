//! `gantry simulate` end to end: the real binary on small trace files written here.

use std::path::Path;
use std::process::Command;

fn write_trace(dir: &Path) -> std::io::Result<()> {
    let mut nodes = String::from("sn,cpu_milli,memory_mib,gpu,model\n");
    for i in 0..12 {
        let (gpus, model) = if i % 3 == 0 { (8, "G2") } else { (2, "T4") };
        nodes.push_str(&format!("node-{i},64000,262144,{gpus},{model}\n"));
    }
    std::fs::write(dir.join("nodes.csv"), nodes)?;
    let mut pods = String::from(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n",
    );
    let shapes = [
        "4000,8192,1,500,",
        "8000,16384,1,1000,",
        "2000,4096,0,0,",
        "16000,32768,2,1000,",
        "4000,8192,1,250,T4",
        "32000,65536,8,1000,G2",
        "6000,8192,1,300,",
    ];
    for i in 0..40 {
        pods.push_str(&format!(
            "pod-{i},{},LS,Running,0,1,0\n",
            shapes[i % shapes.len()]
        ));
    }
    std::fs::write(dir.join("pods.csv"), pods)
}

fn gantry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
}

#[test]
fn simulate_writes_runs_summary_and_chart_and_prints_json() {
    let dir = tempfile::tempdir().unwrap();
    write_trace(dir.path()).unwrap();
    let out = dir.path().join("out");
    let output = gantry()
        .args(["simulate", "--nodes"])
        .arg(dir.path().join("nodes.csv"))
        .arg("--pods")
        .arg(dir.path().join("pods.csv"))
        .args([
            "--policy",
            "random,fgd,frag-cpu",
            "--seeds",
            "1..3",
            "--output",
            "json",
            "--quiet",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = summary.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["policy"], "random");
    assert_eq!(rows[0]["seeds"], serde_json::json!([1, 2, 3]));
    for policy in ["random", "fgd", "frag-cpu"] {
        for seed in 1..=3 {
            let csv =
                std::fs::read_to_string(out.join(format!("runs/{policy}_seed{seed}.csv"))).unwrap();
            assert!(csv.starts_with("policy,seed,tune,arrived_pct,"));
            assert!(csv.lines().count() > 100, "a record per percent");
        }
    }
    assert!(std::fs::read_to_string(out.join("summary.csv"))
        .unwrap()
        .contains("\nfgd,1 2 3,100,"));
    let png = std::fs::read(out.join("allocation.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn without_a_font_the_chart_has_no_text_and_a_legend_file() {
    let dir = tempfile::tempdir().unwrap();
    write_trace(dir.path()).unwrap();
    let out = dir.path().join("out");
    let output = gantry()
        .args(["simulate", "--nodes"])
        .arg(dir.path().join("nodes.csv"))
        .arg("--pods")
        .arg(dir.path().join("pods.csv"))
        .args(["--policy", "best-fit", "--seeds", "1", "--quiet", "--font"])
        .arg(dir.path().join("no-such-font.ttf"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let png = std::fs::read(out.join("allocation.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let legend = std::fs::read_to_string(out.join("allocation.legend.txt")).unwrap();
    assert!(legend.contains("best-fit: "), "{legend}");
}

#[test]
fn bench_prints_a_table_and_bad_rows_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write_trace(dir.path()).unwrap();
    let output = gantry()
        .args([
            "simulate",
            "--bench",
            "--policy",
            "fgd,best-fit",
            "--seeds",
            "42",
            "--nodes",
        ])
        .arg(dir.path().join("nodes.csv"))
        .arg("--pods")
        .arg(dir.path().join("pods.csv"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("POLICY"), "{text}");
    assert!(
        text.contains("DECISIONS/S") && text.contains("\nfgd ") && text.contains("\nbest-fit ")
    );

    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,1,2,1,500\nb,1,x,1,500\n",
    )
    .unwrap();
    let output = gantry()
        .args(["simulate", "--nodes"])
        .arg(dir.path().join("nodes.csv"))
        .arg("--pods")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("bad.csv") && err.contains("line 3") && err.contains("memory_mib"),
        "{err}"
    );
}
