//! Command-line interface: one module per command.

mod checkout;
mod df;
mod export;
mod fsck;
mod gc;
mod images;
mod inspect;
pub mod output;
mod progress;
mod pull;
mod push;
mod registry_args;
mod rm;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use zstore::store::Store;

/// A content-addressed, deduplicating store for container images.
///
/// Every unique file is stored once, keyed by its SHA-256. Images are pulled from OCI layout
/// directories (registries: not yet), checked out as trees by hardlink, reflink or copy, and
/// verified end to end.
#[derive(Parser, Debug)]
#[command(
    name = "zstore",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Store location [default: /var/lib/zstore for root, else $XDG_DATA_HOME/zstore]
    #[arg(long, global = true, env = "ZSTORE_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
    /// More output (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Only errors on stderr
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Pull(pull::Args),
    Push(push::Args),
    Images(images::Args),
    Inspect(inspect::Args),
    Checkout(checkout::Args),
    Export(export::Args),
    Rm(rm::Args),
    Gc(gc::Args),
    Fsck(fsck::Args),
    Df(df::Args),
}

/// Global settings every command gets.
pub struct Ctx {
    pub root: PathBuf,
    pub quiet: bool,
    pub verbose: u8,
}

impl Ctx {
    /// Opens (or creates) the store.
    pub fn store(&self) -> anyhow::Result<Store> {
        Store::open(&self.root)
            .with_context(|| format!("opening the store at {}", self.root.display()))
    }

    /// The progress renderer for this invocation.
    pub fn progress(&self, json: bool) -> progress::CliProgress {
        progress::CliProgress::new(self.quiet, json)
    }
}

fn default_root() -> PathBuf {
    if zstore::sys::is_root() {
        return PathBuf::from("/var/lib/zstore");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("zstore");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/zstore")
}

/// Runs a parsed command line; returns the exit status.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let ctx = Ctx {
        root: cli.root.unwrap_or_else(default_root),
        quiet: cli.quiet,
        verbose: cli.verbose,
    };
    match cli.command {
        Command::Pull(a) => pull::run(&ctx, a),
        Command::Push(a) => push::run(&ctx, a),
        Command::Images(a) => images::run(&ctx, a),
        Command::Inspect(a) => inspect::run(&ctx, a),
        Command::Checkout(a) => checkout::run(&ctx, a),
        Command::Export(a) => export::run(&ctx, a),
        Command::Rm(a) => rm::run(&ctx, a),
        Command::Gc(a) => gc::run(&ctx, a),
        Command::Fsck(a) => fsck::run(&ctx, a),
        Command::Df(a) => df::run(&ctx, a),
    }
}
