//! Renders library progress events: bars on a terminal, nothing otherwise (waiting messages
//! are always shown unless --quiet, since a silent wait looks like a hang).

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use zstore::progress::Progress;

use crate::cli::output;

pub struct CliProgress {
    quiet: bool,
    bars: Option<MultiProgress>,
    layers: Mutex<Vec<Option<ProgressBar>>>,
    phase: Mutex<Option<ProgressBar>>,
}

impl CliProgress {
    pub fn new(quiet: bool, _json: bool) -> CliProgress {
        let tty = std::io::stderr().is_terminal();
        let bars =
            (!quiet && tty).then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        CliProgress {
            quiet,
            bars,
            layers: Mutex::new(Vec::new()),
            phase: Mutex::new(None),
        }
    }

    /// Prints a line without breaking the bars.
    pub fn println(&self, line: &str) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some(b) => {
                let _ = b.println(line);
            }
            None => eprintln!("{line}"),
        }
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

impl Progress for CliProgress {
    fn waiting(&self, what: &str) {
        self.println(&format!("{what} ..."));
    }
    fn message(&self, msg: &str) {
        if self.bars.is_some() {
            self.println(msg);
        }
    }
    fn layer_started(&self, index: usize, _total: usize, digest: &str, size: u64) {
        let Some(m) = &self.bars else { return };
        let bar = m.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("layer {}", short(digest)));
        let mut layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        if layers.len() <= index {
            layers.resize(index + 1, None);
        }
        layers[index] = Some(bar);
    }
    fn layer_advanced(&self, index: usize, bytes: u64) {
        if let Some(Some(bar)) = self
            .layers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(index)
        {
            bar.inc(bytes);
        }
    }
    fn layer_finished(&self, index: usize, fetched: u64, skipped: u64, size: u64) {
        let layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(Some(bar)) = layers.get(index) else {
            return;
        };
        let pct = if size > 0 {
            skipped as f64 * 100.0 / size as f64
        } else {
            0.0
        };
        bar.finish_with_message(if fetched == 0 {
            "already stored".to_string()
        } else if skipped > 0 {
            format!(
                "fetched {}, skipped: {} ({pct:.2}%)",
                output::bytes(fetched),
                output::bytes(skipped)
            )
        } else {
            format!("fetched {}", output::bytes(fetched))
        });
    }
    fn phase_started(&self, name: &str, total: u64) {
        let Some(m) = &self.bars else { return };
        let bar = m.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
    }
    fn phase_advanced(&self, n: u64) {
        if let Some(bar) = &*self.phase.lock().unwrap_or_else(|e| e.into_inner()) {
            bar.inc(n);
        }
    }
    fn phase_finished(&self) {
        if let Some(bar) = self.phase.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}
