//! The `cotmae` binary: parses the command line and runs one subcommand (see `cli`).

use clap::Parser;

fn main() {
    // Freed tensors stay mapped for the next step (no page fault per fresh buffer).
    tensor::heap::keep_freed_memory();
    let cli = cotmae::cli::Cli::parse();
    if let Err(e) = cotmae::cli::run(cli) {
        // Our error types already put their cause in their message (file: cause).
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
