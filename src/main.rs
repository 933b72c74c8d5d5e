//! The `rwsgi` executable: parse the command line, hand over to the library, exit.

use clap::Parser;

fn main() {
    let cli = rwsgi::cli::Cli::parse();
    std::process::exit(rwsgi::run(cli));
}
