//! `gantry crd`: the TFJob CRD, generated from the types, with CEL validation.

use std::io::Write;

use anyhow::Context as _;

/// Print the TFJob CustomResourceDefinition (kubeflow.org/v1) with its CEL validation rules.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write it to this file instead of stdout (`-` for stdout); written atomically.
    #[arg(long, default_value = "-")]
    out: String,
}

/// Prints or writes the CRD.
pub fn run(args: &Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let yaml = gantry_operator::crd::crd_yaml().context("generating the TFJob CRD")?;
    if args.out == "-" {
        out.write_all(yaml.as_bytes())?;
        return Ok(());
    }
    let path = std::path::Path::new(&args.out);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(yaml.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}
