//! The `rwsgi` executable: parse the command line, hand over to the library, exit.

use clap::CommandFactory;

fn main() {
    // Matches, not the derived struct: the config layering needs to know which values
    // the command line itself set.
    let matches = rwsgi::cli::Cli::command().get_matches();
    std::process::exit(rwsgi::run(&matches));
}
