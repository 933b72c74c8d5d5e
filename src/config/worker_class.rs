//! `-k/--worker-class`, `--threads` and `--worker-connections`: how many requests one
//! worker serves at once, and with what (DESIGN.md §3); with `-k asgi`, `--lifespan`
//! and `--asgi-loop`.

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
    /// An ASGI 3 application on an asyncio event loop.
    Asgi(Asgi),
}

/// How an ASGI worker runs (`-k asgi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asgi {
    /// Requests (scopes) served at once, `--worker-connections`.
    pub connections: usize,
    /// `--lifespan`.
    pub lifespan: Lifespan,
    /// `--asgi-loop`.
    pub event_loop: EventLoop,
}

/// `--lifespan`: whether the ASGI lifespan protocol is spoken, and what its failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifespan {
    /// Tried; an application that does not speak it is served without.
    Auto,
    /// Required: a failure stops the server.
    On,
    /// Never sent.
    Off,
}

/// `--asgi-loop`: which event loop an ASGI worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventLoop {
    /// uvloop when it imports, else asyncio's own.
    Auto,
    /// asyncio's own.
    Asyncio,
    /// uvloop, which must import.
    Uvloop,
}

impl Asgi {
    /// `--worker-connections`, `--lifespan` and `--asgi-loop`, checked.
    fn from_args(args: &ServeArgs) -> Result<Asgi, ConfigError> {
        Ok(Asgi {
            connections: connections(args)?,
            // clap checked the values against these lists.
            lifespan: match args.lifespan.as_str() {
                "on" => Lifespan::On,
                "off" => Lifespan::Off,
                _ => Lifespan::Auto,
            },
            event_loop: match args.asgi_loop.as_str() {
                "asyncio" => EventLoop::Asyncio,
                "uvloop" => EventLoop::Uvloop,
                _ => EventLoop::Auto,
            },
        })
    }
}

impl Lifespan {
    /// The flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifespan::Auto => "auto",
            Lifespan::On => "on",
            Lifespan::Off => "off",
        }
    }
}

impl EventLoop {
    /// The flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            EventLoop::Auto => "auto",
            EventLoop::Asyncio => "asyncio",
            EventLoop::Uvloop => "uvloop",
        }
    }
}

/// `--worker-connections`, checked.
fn connections(args: &ServeArgs) -> Result<usize, ConfigError> {
    let n = args.worker_connections;
    if n == 0 || n > MAX_CAPACITY {
        return Err(ConfigError::new(
            "--worker-connections",
            format!("must be between 1 and {MAX_CAPACITY}"),
        ));
    }
    Ok(n)
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
            (Some("gevent"), _) => WorkerClass::Gevent(connections(args)?),
            (Some("asgi"), _) => WorkerClass::Asgi(Asgi::from_args(args)?),
            (Some(other), _) => {
                return Err(ConfigError::new(
                    "--worker-class",
                    format!("{other:?} is not one of sync, gthread, gevent, asgi"),
                ));
            }
        };
        Ok(class)
    }

    /// How a worker serves an ASGI application it finds when no worker class was asked
    /// for (`rwsgi serve main:app`): as `-k asgi` with the same flags. None when a class
    /// or `--threads` was given: the user's choice stands.
    pub fn asgi_if_found(args: &ServeArgs) -> Result<Option<Asgi>, ConfigError> {
        if args.worker_class.is_some() || args.threads.is_some_and(|n| n != 1) {
            return Ok(None);
        }
        Asgi::from_args(args).map(Some)
    }

    /// Requests one worker takes at once: what its Hello announces.
    pub fn capacity(self) -> u16 {
        let n = match self {
            WorkerClass::Sync => 1,
            WorkerClass::Threads(n) | WorkerClass::Gevent(n) => n,
            WorkerClass::Asgi(asgi) => asgi.connections,
        };
        n.min(MAX_CAPACITY) as u16
    }

    /// Threads with a stamp each on the scoreboard (0: the worker has one, its slot's).
    pub fn stamped_threads(self) -> usize {
        match self {
            WorkerClass::Threads(n) => n,
            WorkerClass::Sync | WorkerClass::Gevent(_) | WorkerClass::Asgi(_) => 0,
        }
    }

    /// gunicorn's name for the class.
    pub fn name(self) -> &'static str {
        match self {
            WorkerClass::Sync => "sync",
            WorkerClass::Threads(_) => "gthread",
            WorkerClass::Gevent(_) => "gevent",
            WorkerClass::Asgi(_) => "asgi",
        }
    }
}
