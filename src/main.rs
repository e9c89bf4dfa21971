//! The `zstore` command: argument parsing and output; the work is done by the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let code = match cli::run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            cli::output::print_error(&e);
            ExitCode::from(1)
        }
    };
    zstore::testhook::record_peak_memory();
    code
}
