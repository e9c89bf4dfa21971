//! `zstore export`

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::Ctx;

/// Write the exact uncompressed tar of one layer (its sha256 is the layer's DiffID).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image name, manifest digest, or a unique digest prefix
    image: String,
    /// Layer index, 0 = base layer
    #[arg(long)]
    layer: usize,
    /// Output file [default: stdout]; written to a temp file and renamed once verified
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let store = ctx.store()?;
    let progress = ctx.progress(false);
    match &a.output {
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            zstore::ops::export::export_layer(&store, &a.image, a.layer, &mut lock, &progress)
                .with_context(|| format!("exporting layer {} of {}", a.layer, a.image))?;
            lock.flush()?;
        }
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let mut tmp = zstore::sys::create_temp_file(dir, "zstore-export")
                .with_context(|| format!("creating a temp file in {}", dir.display()))?;
            let res =
                zstore::ops::export::export_layer(&store, &a.image, a.layer, &mut tmp.1, &progress);
            match res {
                Ok(_) => {
                    tmp.1.sync_all()?;
                    std::fs::rename(&tmp.0, path)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp.0);
                    return Err(e)
                        .with_context(|| format!("exporting layer {} of {}", a.layer, a.image));
                }
            }
        }
    }
    Ok(0)
}
