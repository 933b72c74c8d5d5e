//! Settings: the checked, resolved configuration every role reads.
//!
//! Built in two steps, as ripgrep does: [`sources`] layers the command line over the
//! environment over the config file over the defaults into one `ServeArgs` (remembering
//! where each value came from), then [`Settings::from_args`] checks and resolves it.
//! Everything a user can get wrong is checked here, before any socket is bound or
//! process forked, and reported as one line naming the flag or key and where it was set.

mod access_log;
pub mod acme;
mod app;
mod bind;
mod env;
mod error;
mod file;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod gunicorn;
mod hooks;
mod identity;
mod keys;
mod limits;
mod mounts;
mod reload;
mod show;
pub mod sources;
pub mod tls;
mod worker_class;

use std::path::PathBuf;
use std::time::Duration;

pub use access_log::{AccessLog, Atom, Format, Layout, Piece, Target as AccessTarget};
pub use acme::AcmeSettings;
pub use app::AppSpec;
pub use bind::BindAddr;
pub use error::ConfigError;
pub use hooks::HooksSource;
pub use identity::Credentials;
pub use keys::{LoadError, Origin};
pub use limits::{Limits, Trusted};
pub use mounts::{FileSettings, Mount};
pub use reload::Reload;
pub use sources::Layered;
pub use tls::{CertSource, LoadedCert, TlsSettings};
pub use worker_class::{Asgi, EventLoop, Lifespan, WorkerClass};

use crate::cli::ServeArgs;
use crate::scoreboard::MAX_WORKERS;

/// The resolved settings of `rwsgi serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to listen.
    pub binds: Vec<BindAddr>,
    /// The error log file (`--error-logfile`); None for stderr.
    pub error_log: Option<PathBuf>,
    /// The access log (`--access-logfile`, `--access-log-format`); None for none.
    pub access_log: Option<AccessLog>,
    /// How many worker processes.
    pub workers: usize,
    /// What serves requests in a worker, and how many at once (`-k`, `--threads`).
    pub worker_class: WorkerClass,
    /// With no class asked for: how to serve an application that turns out to be an
    /// ASGI callable (see `WorkerClass::asgi_if_found`).
    pub asgi_if_found: Option<Asgi>,
    /// The application's mount point (`--root-path`, else `SCRIPT_NAME`), without a
    /// trailing `/`: empty, or a path starting with `/`.
    pub root_path: String,
    /// How many threads the front tier's runtime runs.
    pub front_threads: usize,
    /// Directory to change to before loading the app.
    pub chdir: Option<PathBuf>,
    /// Extra directories for sys.path, in order.
    pub pythonpath: Vec<PathBuf>,
    /// Import the app in the master before forking.
    pub preload: bool,
    /// `--reload`: the development server's file watcher, and what it watches for.
    pub reload: Option<Reload>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub graceful_timeout: Duration,
    /// `--timeout`: a worker silent this long on one request is aborted (None: never).
    pub timeout: Option<Duration>,
    /// Requests a worker serves before it retires (0: never), `--max-requests`.
    pub max_requests: u64,
    /// The most added at random to `max_requests` per worker, `--max-requests-jitter`.
    pub max_requests_jitter: u64,
    /// Resident memory in bytes past which a worker retires (0: no limit),
    /// `--max-worker-memory`.
    pub max_worker_memory: u64,
    /// The module whose worker hooks are called (`--hooks`).
    pub hooks: Option<HooksSource>,
    /// Where to write the master's pid (`--pid`).
    pub pidfile: Option<PathBuf>,
    /// Whom the front tier and the workers run as (`--user`, `--group`).
    pub credentials: Option<Credentials>,
    /// The file mode creation mask (`--umask`).
    pub umask: Option<nix::sys::stat::Mode>,
    /// The application to load.
    pub app: AppSpec,
    /// The name in the process titles (`--name`, else the APP).
    pub proc_name: String,
    /// `--daemon`: detach from the terminal before starting.
    pub daemon: bool,
    /// `--enable-stdio-inheritance`: a daemon keeps its stdout and stderr.
    pub stdio_inheritance: bool,
    /// `--capture-output`: the application's stdout goes to the error log file too.
    pub capture_output: bool,
    /// `--env KEY=VALUE`: variables set in the master (and so in every child).
    pub env: Vec<(String, String)>,
    /// Request bodies larger than this are spooled to a temporary file.
    pub body_memory_limit: usize,
    /// Requests that may wait for a free worker before new ones get 503.
    pub max_queue: usize,
    /// `--prefetch`: requests a sync worker may hold queued behind the one it runs.
    pub prefetch: usize,
    /// Workers run under SCHED_BATCH (not `--no-batch-scheduling`).
    pub batch_scheduling: bool,
    /// Static files and internal redirects (`--static`, `--internal`).
    pub files: FileSettings,
    /// Compression of app responses (`--compress`), when on.
    pub compress: Option<CompressSettings>,
    /// `--health-path`: answered by the front tier (readiness).
    pub health_path: Option<String>,
    /// Whether requests passed to the app get `X-Request-Start` (`--no-request-start`
    /// turns it off).
    pub request_start: bool,
    /// `--metrics-bind`: where the metrics are served.
    pub metrics_bind: Option<BindAddr>,
    /// What a client may send, and how slowly.
    pub limits: Limits,
    /// Peers whose proxy headers are believed.
    pub forwarded_allow: Trusted,
    /// `--tls` and friends: serve HTTPS on every bind (None: plain HTTP).
    pub tls: Option<TlsSettings>,
    /// `--redirect-http`: plain HTTP listeners that redirect to HTTPS.
    pub redirect_http: Vec<BindAddr>,
}

/// How app responses are compressed.
#[derive(Debug, Clone)]
pub struct CompressSettings {
    /// Responses with a Content-Length below this are sent as they are.
    pub min_size: u64,
}

/// The settings of `rwsgi serve ARGS` as the command line, the environment and the
/// config file give them now (the master's SIGHUP). Call from the directory rwsgi was
/// started in; the error is the message to log.
pub fn reread(args: &[std::ffi::OsString]) -> Result<Settings, String> {
    let argv = std::iter::once(std::ffi::OsString::from("rwsgi")).chain(args.iter().cloned());
    let matches = gunicorn::command()
        .try_get_matches_from(crate::cli::with_subcommand(argv))
        .map_err(|err| err.to_string())?;
    let Some((_, given)) = matches.subcommand() else {
        return Err("no command".into());
    };
    let layered =
        Layered::load(given, &|name| std::env::var_os(name)).map_err(|e| e.to_string())?;
    Settings::from_args(&layered.args).map_err(|err| layered.explain(&err))
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `--workers` when none is given: `$WEB_CONCURRENCY` when the environment sets it (as
/// gunicorn reads it: hosting platforms size apps that way), else the CPU cores
/// available; one under `--reload`, where each change restarts them all.
pub fn default_workers(reload: bool) -> Result<usize, ConfigError> {
    if reload {
        return Ok(1);
    }
    match std::env::var("WEB_CONCURRENCY") {
        Ok(text) if !text.trim().is_empty() => match text.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
            _ => Err(ConfigError::new(
                "WEB_CONCURRENCY",
                format!("{text:?} is not a number of workers from 1 to {MAX_WORKERS}"),
            )),
        },
        _ => Ok(cores()),
    }
}

/// `--front-threads` when none is given: half the cores, at least 1. The workers need
/// the other half: on two cores with two workers, one front thread took 15-25% less CPU
/// time per request than two on hello, 64 KiB, `Connection: close` and Flask, and
/// served 7-24% more (bench/README.md); two did better only on 1 MiB uploads (10%) and
/// beside a program that holds one core busy.
pub fn default_front_threads() -> usize {
    (cores() / 2).max(1)
}

/// `--timeout` when none is given: 30 seconds, none (0) under `--reload`, where a
/// debugger may hold a request.
pub fn default_timeout(reload: bool) -> f64 {
    if reload { 0.0 } else { 30.0 }
}

impl Settings {
    /// Checks and resolves the command line of `rwsgi serve`.
    pub fn from_args(args: &ServeArgs) -> Result<Settings, ConfigError> {
        let binds: Vec<BindAddr> = if !args.bind.is_empty() {
            args.bind
                .iter()
                .map(|b| BindAddr::parse(b))
                .collect::<Result<_, _>>()?
        } else if let Some(activated) = bind::socket_activation() {
            activated
        } else {
            vec![BindAddr::parse(&bind::fallback()?)?]
        };
        let mut fds: Vec<_> = binds
            .iter()
            .filter_map(|b| match b {
                BindAddr::Fd(fd) => Some(*fd),
                _ => None,
            })
            .collect();
        fds.sort_unstable();
        if let Some(twice) = fds.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ConfigError::new(
                "--bind",
                format!("fd://{} is given twice", twice[0]),
            ));
        }
        let reload = Reload::from_args(args)?;
        let workers = match args.workers {
            Some(0) => return Err(ConfigError::new("--workers", "must be at least 1")),
            Some(n) if n > MAX_WORKERS => {
                return Err(ConfigError::new(
                    "--workers",
                    format!("{n} is more than the {MAX_WORKERS} rwsgi can watch"),
                ));
            }
            Some(n) => n,
            None => default_workers(args.reload)?,
        };
        let front_threads = match args.front_threads {
            Some(0) => return Err(ConfigError::new("--front-threads", "must be at least 1")),
            Some(n) => n,
            None => default_front_threads(),
        };
        if let Some(dir) = &args.chdir
            && !dir.is_dir()
        {
            return Err(ConfigError::new(
                "--chdir",
                format!("{} is not a directory", dir.display()),
            ));
        }
        let limits = Limits::from_args(args)?;
        let forwarded_allow = Trusted::parse(&args.forwarded_allow_ips)?;
        if !(args.graceful_timeout.is_finite() && args.graceful_timeout >= 0.0) {
            return Err(ConfigError::new(
                "--graceful-timeout",
                "must be a number of seconds >= 0",
            ));
        }
        // 0 turns the timeout off, as in gunicorn.
        let timeout_seconds = args.timeout.unwrap_or(default_timeout(args.reload));
        let timeout = if timeout_seconds == 0.0 {
            None
        } else {
            let refused = |_| {
                let message = format!("{timeout_seconds} is not a number of seconds (0: none)");
                ConfigError::new("--timeout", message)
            };
            Some(limits::seconds("--timeout", timeout_seconds).map_err(refused)?)
        };
        let app = args.app.as_deref().ok_or_else(|| {
            ConfigError::new(
                "APP",
                "no application given: name it after the options (module:callable) or as \
                 `app` in rwsgi.toml",
            )
        })?;
        let app = AppSpec::parse(app, args.chdir.as_deref())?;
        let max_worker_memory = args.max_worker_memory.checked_mul(1 << 20).ok_or_else(|| {
            ConfigError::new(
                "--max-worker-memory",
                format!(
                    "{} MiB is more than any machine has",
                    args.max_worker_memory
                ),
            )
        })?;
        let hooks = args.hooks.as_deref().map(HooksSource::parse).transpose()?;
        let env = args
            .env
            .iter()
            .map(|pair| match pair.split_once('=') {
                Some((key, value))
                    if !key.is_empty() && !key.contains('\0') && !value.contains('\0') =>
                {
                    Ok((key.to_string(), value.to_string()))
                }
                _ => Err(ConfigError::new(
                    "--env",
                    format!("{pair:?} is not KEY=VALUE"),
                )),
            })
            .collect::<Result<_, _>>()?;
        let tls = TlsSettings::from_args(args)?;
        let redirect_http = tls::redirect_binds(args)?;
        let health_path = match &args.health_path {
            Some(path) if !path.starts_with('/') || path.contains(['?', '#']) => {
                return Err(ConfigError::new(
                    "--health-path",
                    format!("{path:?} is not a path (it starts with / and has no ? or #)"),
                ));
            }
            path => path.clone(),
        };
        let metrics_bind = match args.metrics_bind.as_deref().map(BindAddr::parse) {
            Some(Ok(BindAddr::Fd(_))) => {
                return Err(ConfigError::new(
                    "--metrics-bind",
                    "takes an address, not fd://",
                ));
            }
            Some(Err(err)) => return Err(ConfigError::new("--metrics-bind", err.message)),
            Some(Ok(addr)) => Some(addr),
            None => None,
        };
        let error_log = (args.error_logfile.as_os_str() != "-").then(|| args.error_logfile.clone());
        Ok(Settings {
            error_log,
            access_log: AccessLog::from_args(args)?,
            binds,
            workers,
            worker_class: WorkerClass::from_args(args)?,
            asgi_if_found: WorkerClass::asgi_if_found(args)?,
            root_path: root_path(args)?,
            front_threads,
            chdir: args.chdir.clone(),
            pythonpath: args.pythonpath.clone(),
            preload: args.preload,
            reload,
            graceful_timeout: Duration::from_secs_f64(args.graceful_timeout),
            timeout,
            max_requests: args.max_requests,
            max_requests_jitter: args.max_requests_jitter,
            max_worker_memory,
            hooks,
            pidfile: args.pidfile.clone(),
            credentials: identity::credentials(args.user.as_deref(), args.group.as_deref())?,
            umask: args.umask.as_deref().map(identity::umask).transpose()?,
            proc_name: args.name.clone().unwrap_or_else(|| app.text.clone()),
            app,
            daemon: args.daemon,
            stdio_inheritance: args.enable_stdio_inheritance,
            capture_output: args.capture_output,
            env,
            body_memory_limit: 1 << 20,
            files: FileSettings::from_args(args)?,
            health_path,
            request_start: !args.no_request_start,
            metrics_bind,
            compress: args.compress.then_some(CompressSettings {
                min_size: args.compress_min_size,
            }),
            max_queue: args.max_queue,
            prefetch: args.prefetch,
            batch_scheduling: !args.no_batch_scheduling,
            limits,
            forwarded_allow,
            tls,
            redirect_http,
        })
    }
}

/// `--root-path`, checked (a path from the site's root), else the `SCRIPT_NAME` variable
/// as gunicorn takes it; without its trailing `/`.
fn root_path(args: &ServeArgs) -> Result<String, ConfigError> {
    let Some(given) = &args.root_path else {
        let variable = std::env::var("SCRIPT_NAME").unwrap_or_default();
        return Ok(variable.trim_end_matches('/').to_string());
    };
    let flag = "--root-path";
    let path = given.trim_end_matches('/');
    if !path.is_empty() && !path.starts_with('/') {
        return Err(ConfigError::new(
            flag,
            format!("{given:?} must start with / (the path from the site's root)"),
        ));
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_control() || b == b'?' || b == b'#')
    {
        return Err(ConfigError::new(
            flag,
            format!("{given:?} must be a plain path (no query, fragment or control character)"),
        ));
    }
    Ok(path.to_string())
}
