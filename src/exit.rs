//! The exit codes rwsgi's processes end with, as gunicorn's: a leaf every role imports,
//! so that none of them has to import the master that reads the codes.

/// gunicorn's exit code for a configuration it cannot use (as clap's for a bad flag).
pub const CONFIG_ERROR: i32 = 2;
/// gunicorn's exit code for a worker that failed to boot.
pub const WORKER_BOOT_ERROR: i32 = 3;
/// gunicorn's exit code for an application that failed to load.
pub const APP_LOAD_ERROR: i32 = 4;
