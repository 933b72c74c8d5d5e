//! The `rwsgi` executable: parse the command line, hand over to the library, exit.

/// mimalloc for the Rust side of every process: the front tier allocates and frees
/// small buffers for every request, from several threads (CPython keeps its own
/// allocator for Python objects).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Matches, not the derived struct: the config layering needs to know which values
    // the command line itself set.
    let argv = rwsgi::cli::with_subcommand(std::env::args_os());
    let matches = rwsgi::cli::command().get_matches_from(argv);
    std::process::exit(rwsgi::run(&matches));
}
