//! The `rwsgi` executable: parse the command line, hand over to the library, exit.

/// mimalloc for the Rust side of every process: the front tier allocates and frees
/// small buffers for every request, from several threads (CPython keeps its own
/// allocator for Python objects).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // `--version` names the Python in use too: which one rwsgi embeds is the first
    // question when an import fails. Leaked once: clap keeps a &'static str.
    let version = format!(
        "{} on {}",
        env!("CARGO_PKG_VERSION"),
        rwsgi::python::venv::describe()
    );
    // Matches, not the derived struct: the config layering needs to know which values
    // the command line itself set.
    let argv = rwsgi::cli::with_subcommand(std::env::args_os());
    let matches = rwsgi::config::gunicorn::command()
        .version(&*Box::leak(version.into_boxed_str()))
        .get_matches_from(argv);
    std::process::exit(rwsgi::run(&matches));
}
