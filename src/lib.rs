//! rwsgi: a front tier (TLS, HTTP/1.1 and HTTP/2, buffering) and pre-forked workers
//! embedding CPython to run WSGI applications, managed by a single-threaded master.
//!
//! Roles are separate processes and separate modules: [`master`] forks [`front`] and
//! [`worker`] processes; they speak the channel [`protocol`]. Only [`python`] and
//! [`worker`] touch the interpreter; only [`front`] runs tokio.

pub mod cli;
pub mod config;
pub mod error_page;
pub mod exit;
pub mod front;
pub mod lock;
pub mod log;
pub mod master;
pub mod process_env;
pub mod procfs;
pub mod protocol;
pub mod python;
pub mod scoreboard;
#[cfg(test)]
mod seeded;
pub mod watcher;
pub mod worker;

use clap::{ArgMatches, FromArgMatches};

use cli::{Cli, Command};
use config::{Layered, Settings};
use exit::CONFIG_ERROR;

/// Runs the parsed command line (of [`cli::Cli`]) and returns the process exit code.
pub fn run(matches: &ArgMatches) -> i32 {
    // Before --chdir and before the process title overwrites the arguments: a binary
    // upgrade (USR2) starts the program again as it was started.
    let program = master::Program::capture();
    let command = match Cli::from_arg_matches(matches) {
        Ok(cli) => cli.command,
        Err(err) => return err.exit_code(),
    };
    if let Command::ReadGunicornConfig { source } = &command {
        return python::gunicorn_config::read(source);
    }
    // The subcommand's own matches say which values the command line set.
    let Some((_, given)) = matches.subcommand() else {
        return CONFIG_ERROR;
    };
    let layered = match Layered::load(given, &|name| std::env::var_os(name)) {
        Ok(layered) => layered,
        Err(err) => {
            eprintln!("rwsgi: error: {err}");
            return CONFIG_ERROR;
        }
    };
    // gunicorn's --print-config and --check-config are these subcommands.
    let command = match command {
        _ if layered.print_config => Mode::Config,
        _ if layered.check_config => Mode::Check,
        Command::Serve(_) => Mode::Serve,
        Command::Config(_) => Mode::Config,
        Command::Check(_) | Command::ReadGunicornConfig { .. } => Mode::Check,
    };
    let resolve = || {
        Settings::from_args(&layered.args).map_err(|err| {
            eprintln!("rwsgi: error: {}", layered.explain(&err));
            CONFIG_ERROR
        })
    };
    let log_level = layered.args.log_level.as_deref();
    let warnings = &layered.warnings;
    match command {
        Mode::Serve => match resolve() {
            Ok(settings) => serve(settings, log_level, warnings, program),
            Err(code) => code,
        },
        Mode::Config => {
            for warning in warnings {
                eprintln!("rwsgi: warning: {warning}");
            }
            print!("{}", layered.describe());
            // Without an APP the rest cannot be resolved; the listing is what was asked.
            match layered.args.app {
                Some(_) => resolve().map_or_else(|code| code, |_| 0),
                None => 0,
            }
        }
        Mode::Check => match resolve() {
            Ok(settings) => check(settings, log_level, warnings),
            Err(code) => code,
        },
    }
}

/// What a command line asks for, once gunicorn's flags are taken into account.
enum Mode {
    Serve,
    Config,
    Check,
}

/// `rwsgi serve`: --daemon, the error log, --env, --chdir, then the master until it
/// stops.
fn serve(
    settings: Settings,
    log_level: Option<&str>,
    warnings: &[String],
    program: master::Program,
) -> i32 {
    if let Err(code) = check_python() {
        return code;
    }
    // Not again in the new master of a binary upgrade: it is already detached.
    if settings.daemon
        && !master::upgrading()
        && let Err(err) = master::daemonize(settings.stdio_inheritance)
    {
        eprintln!("rwsgi: error: --daemon: {err}");
        return 1;
    }
    if let Some(path) = &settings.error_log {
        if let Err(err) = log::redirect_stderr(path) {
            eprintln!("rwsgi: error: --error-logfile: {}: {err}", path.display());
            return 1;
        }
        // gunicorn's --capture-output: stdout joins stderr in the error log file.
        if settings.capture_output
            && let Err(err) = nix::unistd::dup2_stdout(std::io::stderr())
        {
            eprintln!("rwsgi: error: --capture-output: {err}");
            return 1;
        }
    }
    log::init(log_level);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    hand_over_log_files(&settings);
    set_env(&settings);
    if let Err(code) = change_dir(&settings) {
        return code;
    }
    exit::code(master::run(settings, program))
}

/// `--env KEY=VALUE`: set in the master before anything is forked, so every child has it.
fn set_env(settings: &Settings) {
    for (key, value) in &settings.env {
        // SAFETY: the master never runs threads (DESIGN.md), and this is before it forks.
        unsafe { process_env::set(key, value) };
    }
}

/// `rwsgi check`: imports the application the way `--preload` does, binding nothing;
/// errors go to the terminal, not to --error-logfile.
fn check(settings: Settings, log_level: Option<&str>, warnings: &[String]) -> i32 {
    if let Err(code) = check_python() {
        return code;
    }
    log::init(log_level);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    set_env(&settings);
    if let Err(code) = change_dir(&settings) {
        return code;
    }
    python::venv::hint_idle(&settings);
    let loaded = python::preload(&settings);
    if loaded.is_ok() {
        println!(
            "rwsgi: configuration OK, application {:?} loaded",
            settings.app.text
        );
    }
    exit::code(loaded)
}

/// Refuses a virtualenv of another Python than the embedded one, before any Python runs
/// and on the terminal (not in --error-logfile): the app would fail in a stranger way.
fn check_python() -> Result<(), i32> {
    python::venv::check().map_err(|line| {
        eprintln!("rwsgi: error: {line}");
        CONFIG_ERROR
    })
}

fn change_dir(settings: &Settings) -> Result<(), i32> {
    match &settings.chdir {
        Some(dir) => std::env::set_current_dir(dir).map_err(|err| {
            eprintln!("rwsgi: error: --chdir: {}: {err}", dir.display());
            CONFIG_ERROR
        }),
        None => Ok(()),
    }
}

/// With `--user`/`--group`, the log files become theirs (as gunicorn does), so that the
/// front tier and the workers, which run as them, can open them again on USR1.
fn hand_over_log_files(settings: &Settings) {
    let Some(credentials) = settings.credentials else {
        return;
    };
    let access = settings
        .access_log
        .as_ref()
        .and_then(|log| match &log.target {
            config::AccessTarget::File(path) => Some(path),
            config::AccessTarget::Stdout => None,
        });
    for path in settings.error_log.iter().chain(access) {
        if let Err(err) = nix::unistd::chown(path, Some(credentials.uid), Some(credentials.gid)) {
            tracing::warn!("cannot give {} to --user/--group: {err}", path.display());
        }
    }
}
