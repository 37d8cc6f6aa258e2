//! Loading the Alibaba GPU trace ("openb") CSV files: node lists and pod lists.
//!
//! Columns are found by header name, so the five-column `multigpu*` pod lists load like the
//! eleven-column ones. An empty `gpu_spec` (or a missing column) means any GPU model. Every
//! malformed row is an error naming the file, the line and the field.

use std::path::{Path, PathBuf};

use gantry_placement::{NodeSpec, PodSpec};

use crate::{Error, Result};

/// Reads a node list (`sn,cpu_milli,memory_mib,gpu,model`).
pub fn load_nodes(path: &Path) -> Result<Vec<NodeSpec>> {
    let text = read(path)?;
    parse_nodes(&text, path)
}

/// Reads a pod list (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]`).
pub fn load_pods(path: &Path) -> Result<Vec<PodSpec>> {
    let text = read(path)?;
    parse_pods(&text, path)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

struct Csv<'a> {
    path: &'a Path,
    header: Vec<&'a str>,
    rows: Vec<(usize, Vec<&'a str>)>,
}

impl<'a> Csv<'a> {
    fn parse(text: &'a str, path: &'a Path) -> Result<Self> {
        let mut lines = text.lines().enumerate();
        let header = loop {
            match lines.next() {
                Some((_, l)) if l.trim().is_empty() => continue,
                Some((_, l)) => break l.split(',').map(str::trim).collect::<Vec<_>>(),
                None => {
                    return Err(Error::Malformed {
                        path: path.to_path_buf(),
                        line: 1,
                        reason: "empty file: expected a header row".into(),
                    })
                }
            }
        };
        let mut rows = Vec::new();
        for (i, line) in lines {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != header.len() {
                return Err(Error::Malformed {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: format!("{} fields, the header has {}", fields.len(), header.len()),
                });
            }
            rows.push((i + 1, fields));
        }
        Ok(Self { path, header, rows })
    }

    fn column(&self, name: &str) -> Result<usize> {
        self.optional(name).ok_or_else(|| Error::Malformed {
            path: self.path.to_path_buf(),
            line: 1,
            reason: format!("missing column {name:?} in the header"),
        })
    }

    fn optional(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| *h == name)
    }

    fn number<T: std::str::FromStr>(&self, line: usize, fields: &[&str], col: usize) -> Result<T> {
        let raw = fields[col];
        raw.parse().map_err(|_| Error::Malformed {
            path: self.path.to_path_buf(),
            line,
            reason: format!(
                "field {} = {raw:?} is not a valid number in range",
                self.header[col]
            ),
        })
    }

    fn bad(&self, line: usize, reason: String) -> Error {
        Error::Malformed {
            path: PathBuf::from(self.path),
            line,
            reason,
        }
    }
}

/// Parses a node list; `path` only names the source in errors.
pub fn parse_nodes(text: &str, path: &Path) -> Result<Vec<NodeSpec>> {
    let csv = Csv::parse(text, path)?;
    let (sn, cpu, mem, gpu, model) = (
        csv.column("sn")?,
        csv.column("cpu_milli")?,
        csv.column("memory_mib")?,
        csv.column("gpu")?,
        csv.column("model")?,
    );
    let mut nodes = Vec::with_capacity(csv.rows.len());
    for (line, f) in &csv.rows {
        let gpus: u8 = csv.number(*line, f, gpu)?;
        let model_name = f[model];
        if gpus > 0 && model_name.is_empty() {
            return Err(csv.bad(
                *line,
                format!("node {} has {gpus} GPUs but no model", f[sn]),
            ));
        }
        nodes.push(NodeSpec {
            name: f[sn].to_string(),
            cpu_milli: csv.number(*line, f, cpu)?,
            memory_mib: csv.number(*line, f, mem)?,
            gpus,
            gpu_model: (!model_name.is_empty()).then(|| model_name.to_string()),
        });
    }
    Ok(nodes)
}

/// Parses a pod list; `path` only names the source in errors.
pub fn parse_pods(text: &str, path: &Path) -> Result<Vec<PodSpec>> {
    let csv = Csv::parse(text, path)?;
    let (cpu, mem, num, milli) = (
        csv.column("cpu_milli")?,
        csv.column("memory_mib")?,
        csv.column("num_gpu")?,
        csv.column("gpu_milli")?,
    );
    let spec = csv.optional("gpu_spec");
    let mut pods = Vec::with_capacity(csv.rows.len());
    for (line, f) in &csv.rows {
        let num_gpu: u8 = csv.number(*line, f, num)?;
        let gpu_milli: u16 = csv.number(*line, f, milli)?;
        if num_gpu > 0 && !(1..=1000).contains(&gpu_milli) {
            return Err(csv.bad(
                *line,
                format!("gpu_milli {gpu_milli} must be 1..=1000 for a GPU pod"),
            ));
        }
        if num_gpu == 0 && gpu_milli != 0 {
            return Err(csv.bad(*line, format!("num_gpu 0 with gpu_milli {gpu_milli}")));
        }
        let gpu_models = spec
            .map(|c| f[c])
            .filter(|s| !s.is_empty() && *s != "nan")
            .map(|s| {
                s.split('|')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        pods.push(PodSpec {
            cpu_milli: csv.number(*line, f, cpu)?,
            memory_mib: csv.number(*line, f, mem)?,
            num_gpu,
            gpu_milli,
            gpu_models,
        });
    }
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_eleven_and_five_column_pods() {
        let p = Path::new("pods.csv");
        let eleven = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
            a,12000,16384,1,1000,,LS,Running,0,1,0\n\
            b,6000,12288,1,460,V100M16|V100M32,LS,Running,4,5,4\n\
            c,1000,100,0,0,,BE,Pending,1,2,\n";
        let pods = parse_pods(eleven, p).unwrap();
        assert_eq!(pods.len(), 3);
        assert!(pods[0].gpu_models.is_empty());
        assert_eq!(pods[1].gpu_models, ["V100M16", "V100M32"]);
        assert_eq!((pods[1].num_gpu, pods[1].gpu_milli), (1, 460));
        let five = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nx,1,2,8,1000\n";
        let pods = parse_pods(five, p).unwrap();
        assert_eq!(pods[0].num_gpu, 8);
        assert!(pods[0].gpu_models.is_empty());
    }

    #[test]
    fn malformed_rows_name_file_and_line() {
        let p = Path::new("/x/pods.csv");
        let cases = [
            (
                "name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,1,2,1,500\nb,1,2,1\n",
                3,
                "fields",
            ),
            (
                "name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,x,2,1,500\n",
                2,
                "cpu_milli",
            ),
            (
                "name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,1,2,1,0\n",
                2,
                "gpu_milli",
            ),
            (
                "name,cpu_milli,memory_mib,num_gpu\na,1,2,1\n",
                1,
                "gpu_milli",
            ),
            ("", 1, "empty"),
        ];
        for (text, line, word) in cases {
            let err = parse_pods(text, p).unwrap_err().to_string();
            assert!(err.contains("/x/pods.csv"), "{err}");
            assert!(err.contains(&format!("line {line}")), "{err}");
            assert!(err.contains(word), "{err}");
        }
        let err = parse_nodes("sn,cpu_milli,memory_mib,gpu,model\nn,1,2,4,\n", p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("no model"), "{err}");
    }

    #[test]
    fn loads_the_shared_trace_with_known_totals() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces/alibaba-gpu-v2023");
        assert!(
            dir.exists(),
            "the shared trace must sit beside the repository: {}",
            dir.display()
        );
        let nodes = load_nodes(&dir.join("openb_node_list_gpu_node.csv")).unwrap();
        assert_eq!(nodes.len(), 1213);
        assert_eq!(nodes.iter().map(|n| u32::from(n.gpus)).sum::<u32>(), 6212);
        let pods = load_pods(&dir.join("openb_pod_list_default.csv")).unwrap();
        assert_eq!(pods.len(), 8152);
        assert_eq!(pods.iter().filter(|p| p.num_gpu == 0).count(), 1088);
        assert_eq!(
            pods.iter()
                .filter(|p| p.num_gpu == 1 && p.gpu_milli < 1000)
                .count(),
            3078
        );
        let multi = load_pods(&dir.join("openb_pod_list_multigpu20.csv")).unwrap();
        assert_eq!(multi.len(), 8324);
        let cpu_only_nodes = load_nodes(&dir.join("openb_node_list_all_node.csv")).unwrap();
        assert_eq!(cpu_only_nodes.len(), 1523);
    }
}
