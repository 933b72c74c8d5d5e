//! `-k/--worker-class`, `--threads` and `--worker-connections`: how many requests one
//! worker serves at once, and with what (DESIGN.md §3).

use super::error::ConfigError;
use crate::cli::ServeArgs;
use crate::scoreboard::MAX_THREADS;

/// The most requests one worker may take at once (the channel's Hello carries a u16).
const MAX_CAPACITY: usize = u16::MAX as usize;

/// What runs the requests in a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerClass {
    /// One request at a time.
    Sync,
    /// This many Python threads, one request each.
    Threads(usize),
    /// Greenlets (gevent, monkey-patched at boot), up to this many requests at once.
    Gevent(usize),
}

impl WorkerClass {
    /// The class the command line asks for, checked.
    pub fn from_args(args: &ServeArgs) -> Result<WorkerClass, ConfigError> {
        let threads = match args.threads {
            Some(0) => return Err(ConfigError::new("--threads", "must be at least 1")),
            Some(n) if n > MAX_THREADS => {
                return Err(ConfigError::new(
                    "--threads",
                    format!("{n} is more than the {MAX_THREADS} rwsgi can watch per worker"),
                ));
            }
            Some(n) => n,
            None => 1,
        };
        // gunicorn: more than one thread turns the sync worker into gthread.
        let class = match (args.worker_class.as_deref(), threads) {
            (None | Some("sync"), 1) => WorkerClass::Sync,
            (None | Some("sync") | Some("gthread"), n) => WorkerClass::Threads(n),
            (Some("gevent"), _) => {
                let n = args.worker_connections;
                if n == 0 || n > MAX_CAPACITY {
                    return Err(ConfigError::new(
                        "--worker-connections",
                        format!("must be between 1 and {MAX_CAPACITY}"),
                    ));
                }
                WorkerClass::Gevent(n)
            }
            (Some(other), _) => {
                return Err(ConfigError::new(
                    "--worker-class",
                    format!("{other:?} is not one of sync, gthread, gevent"),
                ));
            }
        };
        Ok(class)
    }

    /// Requests one worker takes at once: what its Hello announces.
    pub fn capacity(self) -> u16 {
        let n = match self {
            WorkerClass::Sync => 1,
            WorkerClass::Threads(n) | WorkerClass::Gevent(n) => n,
        };
        n.min(MAX_CAPACITY) as u16
    }

    /// Threads with a stamp each on the scoreboard (0: the worker has one, its slot's).
    pub fn stamped_threads(self) -> usize {
        match self {
            WorkerClass::Threads(n) => n,
            WorkerClass::Sync | WorkerClass::Gevent(_) => 0,
        }
    }

    /// gunicorn's name for the class.
    pub fn name(self) -> &'static str {
        match self {
            WorkerClass::Sync => "sync",
            WorkerClass::Threads(_) => "gthread",
            WorkerClass::Gevent(_) => "gevent",
        }
    }
}
