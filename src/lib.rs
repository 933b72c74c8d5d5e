//! rwsgi: a front tier (TLS, HTTP/1.1 and HTTP/2, buffering) and pre-forked workers
//! embedding CPython to run WSGI applications, managed by a single-threaded master.
//!
//! Roles are separate processes and separate modules: [`master`] forks [`front`] and
//! [`worker`] processes; they speak the channel [`protocol`]. Only [`python`] and
//! [`worker`] touch the interpreter; only [`front`] runs tokio.

pub mod cli;
pub mod config;
pub mod front;
pub mod log;
pub mod master;
pub mod protocol;
pub mod python;
pub mod watcher;
pub mod worker;

use cli::{Cli, Command};

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    // Before --chdir and before the process title overwrites the arguments: a binary
    // upgrade (USR2) starts the program again as it was started.
    let program = master::Program::capture();
    match cli.command {
        Command::Serve(args) => match config::Settings::from_args(&args) {
            Ok(settings) => {
                if let Some(path) = &settings.error_log
                    && let Err(err) = log::redirect_stderr(path)
                {
                    eprintln!("rwsgi: error: --error-logfile: {}: {err}", path.display());
                    return 1;
                }
                log::init(args.log_level.as_deref());
                if let Some(dir) = &settings.chdir
                    && let Err(err) = std::env::set_current_dir(dir)
                {
                    eprintln!("rwsgi: error: --chdir: {}: {err}", dir.display());
                    return 2;
                }
                master::run(settings, program)
            }
            Err(err) => {
                eprintln!("rwsgi: error: {err}");
                2
            }
        },
    }
}
