//! The `rwsgi` executable: parse the command line, hand over to the library, exit.

use clap::CommandFactory;

/// mimalloc for the Rust side of every process: the front tier allocates and frees
/// small buffers for every request, from several threads (CPython keeps its own
/// allocator for Python objects).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Matches, not the derived struct: the config layering needs to know which values
    // the command line itself set.
    let matches = rwsgi::cli::Cli::command().get_matches();
    std::process::exit(rwsgi::run(&matches));
}
