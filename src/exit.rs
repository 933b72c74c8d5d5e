//! The exit codes rwsgi's processes end with, as gunicorn's: a leaf every role imports,
//! so that none of them has to import the master that reads the codes.

/// gunicorn's exit code for a configuration it cannot use (as clap's for a bad flag).
pub const CONFIG_ERROR: i32 = 2;
/// gunicorn's exit code for a worker that failed to boot.
pub const WORKER_BOOT_ERROR: i32 = 3;
/// gunicorn's exit code for an application that failed to load.
pub const APP_LOAD_ERROR: i32 = 4;

/// What a role's error tells the process it ends: its exit code, and whether its log
/// line was written where it happened. Each role's error type says how the role fails;
/// [`code`] turns any of them into the process's end.
pub trait Failure: std::fmt::Display {
    /// The exit code (gunicorn's meanings).
    fn exit_code(&self) -> i32;

    /// True when it was logged where it happened, with what only that place knows (a
    /// Python traceback, the reason the master halted): then no line is added.
    fn reported(&self) -> bool {
        false
    }
}

/// The one place a role's result becomes its process's exit code and, for an error,
/// its one log line.
pub fn code<E: Failure>(result: Result<(), E>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(err) => {
            if !err.reported() {
                tracing::error!("{err}");
            }
            err.exit_code()
        }
    }
}
