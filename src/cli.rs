//! The command line: clap structures with gunicorn's flag names. No I/O happens here;
//! `config` layers the config file and the environment under these values and turns
//! the result into checked settings.
//!
//! These structures are the one list of settings: every option of [`ServeArgs`] (and
//! the APP) also has a key in `rwsgi.toml` (its long name in snake_case) and an
//! environment variable (`RWSGI_` and the key in capitals), derived from clap's own
//! metadata in `config::sources`. A new flag needs no other line to get both.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

/// rwsgi: one binary that terminates HTTP and runs WSGI applications in pre-forked workers.
#[derive(Debug, Parser)]
#[command(name = "rwsgi", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a WSGI application.
    Serve(ServeArgs),
    /// Print the effective configuration and where each value came from.
    Config(ServeArgs),
    /// Load the configuration and import the application without serving: exit 0 when
    /// both are good, 2 for a configuration error, 4 when the application fails to load.
    Check(ServeArgs),
    /// Internal: executes a gunicorn config file (SOURCE as `-c` takes it) in the
    /// embedded interpreter and prints the settings it holds (see config::gunicorn).
    #[command(hide = true, name = READ_GUNICORN_CONFIG)]
    ReadGunicornConfig {
        /// `PATH`, `file:PATH` or `python:MODULE`.
        source: String,
    },
}

/// The hidden subcommand the master runs (as a child process) to read a gunicorn config file.
pub const READ_GUNICORN_CONFIG: &str = "read-gunicorn-config";

/// `argv` with `serve` put in front of the options when no subcommand is named, as
/// `rwsgi app:app` or `rwsgi -w 4 app:app` mean `rwsgi serve …` (gunicorn's command
/// line has no subcommand). A bare `rwsgi`, `--help` and `--version` stay as they are.
pub fn with_subcommand(argv: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut argv: Vec<OsString> = argv.into_iter().collect();
    let named = |first: &OsString| {
        let known = ["serve", "config", "check", "help", READ_GUNICORN_CONFIG];
        let own = ["-h", "--help", "-V", "--version"];
        first
            .to_str()
            .is_some_and(|f| known.contains(&f) || own.contains(&f))
    };
    if argv.len() > 1 && !named(&argv[1]) {
        argv.insert(1, "serve".into());
    }
    argv
}

/// `rwsgi serve [OPTIONS] APP` (and `config`, `check`).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The config file: TOML, or a gunicorn config file (a `.py` file, `file:PATH` or
    /// `python:MODULE`) executed as gunicorn does. [default: rwsgi.toml in the working
    /// directory, else gunicorn.conf.py there, if there is one]
    #[arg(short = 'c', long, env = "RWSGI_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on: HOST:PORT, [IPV6]:PORT, HOST (port 8000), :PORT (every
    /// interface), tcp://HOST:PORT, unix:PATH or fd://N. Repeat to listen on several.
    /// [default: 127.0.0.1:8000]
    #[arg(short = 'b', long = "bind", value_name = "ADDRESS")]
    pub bind: Vec<String>,

    /// Number of worker processes. [default: the number of CPU cores available]
    #[arg(short = 'w', long, value_name = "INT")]
    pub workers: Option<usize>,

    /// The worker class: sync (one request at a time), gthread (--threads requests at
    /// once, each in a Python thread), gevent (greenlets, up to --worker-connections) or
    /// asgi (an ASGI 3 application on an asyncio event loop, up to --worker-connections).
    /// [default: sync, or gthread when --threads is more than 1]
    #[arg(short = 'k', long, value_name = "CLASS", value_parser = ["sync", "gthread", "gevent", "asgi"])]
    pub worker_class: Option<String>,

    /// Python threads per gthread worker: requests one worker serves at once. More than
    /// 1 implies -k gthread, as in gunicorn. [default: 1]
    #[arg(long, value_name = "INT")]
    pub threads: Option<usize>,

    /// Requests one gevent or asgi worker serves at once (each in a greenlet, or an
    /// asyncio task).
    #[arg(long, value_name = "INT", default_value_t = 1000)]
    pub worker_connections: usize,

    /// -k asgi: the ASGI lifespan protocol, once per worker: auto (tried; an app that
    /// does not support it is served without), on (a failure stops the server) or off.
    #[arg(long, visible_alias = "asgi-lifespan", value_name = "MODE", default_value = "auto",
          value_parser = ["auto", "on", "off"])]
    pub lifespan: String,

    /// -k asgi: the event loop: auto (uvloop when it imports, else asyncio), asyncio or
    /// uvloop.
    #[arg(long, value_name = "LOOP", default_value = "auto",
          value_parser = ["auto", "asyncio", "uvloop"])]
    pub asgi_loop: String,

    /// -k asgi: the largest WebSocket message a client may send, in bytes (suffixes k,
    /// m, g), once reassembled and inflated; larger closes the WebSocket with 1009.
    #[arg(long, value_name = "SIZE", default_value = "16m")]
    pub ws_max_size: String,

    /// -k asgi: seconds between the server's pings of a WebSocket client (0: none).
    #[arg(long, value_name = "SECONDS", default_value_t = 20.0)]
    pub ws_ping_interval: f64,

    /// -k asgi: seconds a WebSocket client has to answer a ping before the WebSocket is
    /// closed (1011).
    #[arg(long, value_name = "SECONDS", default_value_t = 20.0)]
    pub ws_ping_timeout: f64,
    /// The application's mount point below the site's root, as a proxy in front
    /// forwards it (`/api`): WSGI's SCRIPT_NAME and the ASGI scope's root_path. An ASGI
    /// request whose path does not start with it (the proxy stripped it) gets it
    /// prefixed. [default: the SCRIPT_NAME environment variable]
    #[arg(long, value_name = "PATH")]
    pub root_path: Option<String>,

    /// Threads of the front tier (TLS, HTTP, static files). [default: half the CPU
    /// cores, at least 1: the workers need the rest]
    #[arg(long, value_name = "INT")]
    pub front_threads: Option<usize>,

    /// Change to this directory before loading the application. [default: the working
    /// directory]
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// Comma-separated directories to add to the Python path.
    #[arg(long, value_name = "DIRS", value_delimiter = ',')]
    pub pythonpath: Vec<PathBuf>,

    /// Import the application in the master before forking the workers.
    #[arg(long)]
    pub preload: bool,

    /// Development: restart the workers when a Python file under the working directory
    /// (or the app's, or a --pythonpath) changes. Implies one worker unless -w is given.
    #[arg(long)]
    pub reload: bool,

    /// With --reload: also restart on changes to files matching GLOB (relative to the
    /// working directory, `**` for any depth). Repeatable.
    #[arg(long = "reload-extra-file", value_name = "GLOB")]
    pub reload_extra_file: Vec<String>,

    /// Run the front tier and the workers as this user (name or uid); the master keeps
    /// its own to bind ports below 1024. [default: the user rwsgi is started as]
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,

    /// Run the front tier and the workers in this group (name or gid). [default: the
    /// --user's primary group]
    #[arg(short = 'g', long, value_name = "GROUP")]
    pub group: Option<String>,

    /// File mode creation mask for rwsgi's processes and Unix sockets (octal with a
    /// leading 0 or 0o, as 0o027, or decimal). [default: the one rwsgi inherits]
    #[arg(short = 'm', long, value_name = "INT")]
    pub umask: Option<String>,

    /// Requests a worker serves before it retires and is replaced (0: never). Limits the
    /// damage of memory leaks; the retirement loses no request.
    #[arg(
        long,
        value_name = "INT",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub max_requests: u64,

    /// Adds random(0..=JITTER) to --max-requests per worker, so workers do not all
    /// restart at once.
    #[arg(
        long,
        value_name = "INT",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub max_requests_jitter: u64,

    /// A worker whose resident memory (RSS) passes this many MiB retires after its
    /// current request and is replaced (0: no limit). The retirement loses no request.
    #[arg(
        long,
        value_name = "MiB",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub max_worker_memory: u64,

    /// A Python module (importable name, or path to a .py file such as a gunicorn config
    /// file) whose functions named as gunicorn's worker hooks (post_fork,
    /// post_worker_init, pre_request, post_request, worker_exit, worker_abort) are called
    /// in each worker at those moments.
    #[arg(long, value_name = "MODULE")]
    pub hooks: Option<String>,

    /// Seconds a worker may stay silent on one request (sending nothing of its response)
    /// before it is aborted and replaced, and the client answered 504 (0: never).
    /// [default: 30; 0 under --reload, where a debugger may hold a request]
    #[arg(
        short = 't',
        long,
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub timeout: Option<f64>,

    /// Seconds to let in-flight requests finish after a graceful stop (SIGTERM).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub graceful_timeout: f64,

    /// The error log: a file (appended to, reopened on USR1) or `-` for stderr.
    #[arg(long, alias = "log-file", value_name = "FILE", default_value = "-")]
    pub error_logfile: PathBuf,

    /// The error log's level: debug, info, warning, error or critical (in any case).
    #[arg(
        long,
        env = "RWSGI_LOG_LEVEL",
        value_name = "LEVEL",
        ignore_case = true,
        value_parser = PossibleValuesParser::new(["debug", "info", "warning", "error", "critical"])
            .map(|level| level.to_lowercase())
    )]
    pub log_level: Option<String>,

    /// Also send what the application writes to stdout into the error log (with
    /// --error-logfile; its stderr goes there already).
    #[arg(long)]
    pub capture_output: bool,

    /// Detach from the terminal and run in the background, as gunicorn's -D: stdin,
    /// stdout and stderr become /dev/null (use --error-logfile and --pid).
    #[arg(short = 'D', long)]
    pub daemon: bool,

    /// With --daemon: keep stdout and stderr instead of /dev/null.
    #[arg(short = 'R', long)]
    pub enable_stdio_inheritance: bool,

    /// The name in the process titles `ps` shows: `rwsgi: master [NAME]`. [default: the
    /// APP]
    #[arg(short = 'n', long, value_name = "STRING")]
    pub name: Option<String>,

    /// Set the environment variable KEY to VALUE in the master and the workers, before
    /// the application is imported. Repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Serve Prometheus metrics at /metrics on this address (a listener of its own:
    /// HOST:PORT or unix:PATH). [default: none: no metrics]
    #[arg(long, value_name = "ADDRESS")]
    pub metrics_bind: Option<String>,

    /// A path the front tier answers itself for load balancers and probes: 200 while
    /// workers are ready, 503 while none is or the server is stopping. [default: none:
    /// every path goes to the app]
    #[arg(long, value_name = "PATH")]
    pub health_path: Option<String>,

    // -- access log (src/config/access_log.rs) --
    /// The access log: a file (appended to, reopened on USR1) or `-` for stdout.
    /// [default: none, as in gunicorn]
    #[arg(long, value_name = "FILE")]
    pub access_logfile: Option<PathBuf>,

    /// The access log's line format: gunicorn's atoms (`%(h)s %(r)s %(s)s …`,
    /// `%({header}i)s`, `%({header}o)s`), or `json` for one JSON object a line.
    /// [default: gunicorn's, `%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"`]
    #[arg(long, alias = "access-logformat", value_name = "FORMAT")]
    pub access_log_format: Option<String>,

    /// Write the master's pid to this file once the sockets are bound; removed at exit.
    /// [default: no pid file]
    #[arg(short = 'p', long = "pid", value_name = "FILE")]
    pub pidfile: Option<PathBuf>,

    /// Longest request line in bytes, without its CRLF; longer is answered 414. 0 means
    /// the largest rwsgi accepts (64 KiB).
    #[arg(long, value_name = "BYTES", default_value_t = 4094)]
    pub limit_request_line: usize,

    /// Most header fields in a request; more is answered 431. 0 means 32768.
    #[arg(long, value_name = "INT", default_value_t = 100)]
    pub limit_request_fields: usize,

    /// Longest header field line in bytes, its CRLF included (as gunicorn counts);
    /// longer is answered 431. 0 means the default, 8190 (as gunicorn does).
    #[arg(
        long,
        alias = "limit-request-field_size",
        value_name = "BYTES",
        default_value_t = 8190
    )]
    pub limit_request_field_size: usize,

    /// Largest request body in bytes (suffixes k, m, g); larger is answered 413.
    #[arg(long, value_name = "SIZE", default_value = "100m")]
    pub max_body_size: String,

    /// Seconds to receive a whole request head before the connection is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub header_timeout: f64,

    /// Seconds a request body may stall before the request is answered 408.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub body_timeout: f64,

    /// Seconds an idle keep-alive connection is kept open.
    #[arg(long = "keep-alive", value_name = "SECONDS", default_value_t = 5.0)]
    pub keep_alive: f64,

    /// Seconds a client may read nothing of a response before it is dropped.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub send_timeout: f64,

    /// Most bytes of one response spilled to a temporary file for a slow client and not
    /// yet read by it (suffixes k, m, g; 0: no spilling), as nginx's
    /// proxy_max_temp_file_size. Beyond it, and when spilling fails, the worker waits
    /// for the client. The front tier spills at most 4 times this in all.
    #[arg(long, value_name = "SIZE", default_value = "1g")]
    pub max_temp_file_size: String,

    /// Bytes of each of the two shared-memory rings between the front tier and a sync or
    /// gthread worker (suffixes k, m, g), through which requests and responses pass
    /// without a system call while both sides are busy; each worker costs twice this
    /// plus 4 KiB of shared memory. 0: the worker's Unix socket carries every frame.
    #[arg(long, value_name = "SIZE", default_value = "2m")]
    pub ring_size: String,

    /// Most open client connections per front tier; more wait in the listen backlog.
    #[arg(long, value_name = "INT", default_value_t = 10_000)]
    pub max_connections: usize,

    /// The listen backlog: connections the kernel queues before they are accepted.
    #[arg(long, value_name = "INT", default_value_t = 2048)]
    pub backlog: i32,

    /// Most requests waiting for a free worker; more are answered 503.
    #[arg(long, value_name = "INT", default_value_t = 4096)]
    pub max_queue: usize,

    /// Requests a sync worker may hold queued behind the one it runs, when every worker
    /// is busy and its requests are short (under a millisecond); 0: none.
    #[arg(long, value_name = "INT", default_value_t = 15)]
    pub prefetch: usize,

    /// Seconds a request may wait for a free worker before it is answered 503.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub queue_timeout: f64,

    /// Run the workers under Linux's normal scheduling policy rather than SCHED_BATCH.
    /// A batch worker woken by a request does not preempt the process running on its
    /// CPU (the front tier, most often) but runs when that one waits or its time slice
    /// ends: the front tier serves many connections per turn and a worker takes several
    /// requests per wake-up. Same CPU share, nice value and limits; its children
    /// inherit the policy. [default: batch]
    #[arg(long)]
    pub no_batch_scheduling: bool,

    /// Peers trusted to set X-Forwarded-For, X-Forwarded-Proto and Forwarded:
    /// comma-separated addresses or networks (CIDR), or `*`.
    #[arg(
        long,
        env = "FORWARDED_ALLOW_IPS",
        value_name = "ADDRS",
        default_value = "127.0.0.1,::1"
    )]
    pub forwarded_allow_ips: String,

    /// Do not add `X-Request-Start: t=MICROSECONDS` (since the epoch, when the front
    /// tier read the request's head) to requests passed to the app, which APM agents
    /// (New Relic, Datadog, Scout) read to show the time spent queued. [default: added;
    /// a value sent by a peer in --forwarded-allow-ips is kept, anyone else's replaced]
    #[arg(long)]
    pub no_request_start: bool,

    /// The application: `module:callable`, `module`, `dir/module:callable` or
    /// `module:factory()`. Required, here or as `app` in the config file.
    #[arg(value_name = "APP")]
    pub app: Option<String>,

    // TLS (src/config/tls.rs).
    /// Serve HTTPS on every --bind with this PEM certificate chain (leaf first; the
    /// private key may be in the same file), or CERT:KEY. Repeat for several certificates
    /// chosen by SNI; the first is the default.
    #[arg(long = "tls", alias = "certfile", value_name = "CERT[:KEY]")]
    pub tls: Vec<String>,

    /// The PEM private key of each --tls certificate that names none of its own.
    /// [default: the key in the certificate's own file]
    #[arg(long = "tls-key", alias = "keyfile", value_name = "KEY")]
    pub tls_key: Option<PathBuf>,

    /// Send `Strict-Transport-Security: max-age=SECONDS` with every HTTPS response.
    /// [default: none: no header]
    #[arg(long, value_name = "SECONDS")]
    pub hsts: Option<u64>,

    /// Also listen for plain HTTP at this address and answer every request with a 308
    /// redirect to the same URL over HTTPS. Repeatable.
    #[arg(long = "redirect-http", value_name = "ADDRESS")]
    pub redirect_http: Vec<String>,
    // Automatic HTTPS (src/config/acme.rs, src/front/acme/).
    /// Obtain and renew a certificate for DOMAIN from an ACME CA (Let's Encrypt by
    /// default) and serve HTTPS with it on every --bind; DNS must point DOMAIN at this
    /// host. Repeat for several domains (SNI picks; --tls certificates serve the other
    /// names).
    #[arg(long = "acme", value_name = "DOMAIN")]
    pub acme: Vec<String>,

    /// The contact address given to the ACME CA (expiry warnings, policy news).
    /// [default: none]
    #[arg(long, value_name = "EMAIL")]
    pub acme_email: Option<String>,

    /// The ACME CA's directory URL. [default: Let's Encrypt's production directory]
    #[arg(long, value_name = "URL")]
    pub acme_directory: Option<String>,

    /// Use Let's Encrypt's staging directory (untrusted certificates, generous rate
    /// limits): try a setup there first.
    #[arg(long)]
    pub acme_staging: bool,

    /// Trust this PEM CA certificate (instead of the system's roots) for HTTPS to the
    /// ACME directory: a private or test CA. [default: the system's roots]
    #[arg(long, value_name = "PEM")]
    pub acme_ca_root: Option<PathBuf>,

    /// Where the ACME account and certificates are kept (files 0600); back it up, and
    /// share it between restarts. [default: $STATE_DIRECTORY/acme (systemd), else
    /// $XDG_STATE_HOME/rwsgi/acme, else ~/.local/state/rwsgi/acme]
    #[arg(long, value_name = "DIR")]
    pub acme_cache: Option<PathBuf>,

    /// Renew each --acme certificate when it has less than SECONDS left. [default: inside
    /// the CA's ARI renewal window, else with a third of its lifetime left]
    #[arg(long, value_name = "SECONDS")]
    pub acme_renew_before: Option<u64>,
    // -- static files, internal redirects, compression --
    /// Serve the files of DIR at URL_PREFIX from the front tier (the app never sees these
    /// requests). Repeat for several; the longest matching prefix wins.
    #[arg(long = "static", value_name = "URL_PREFIX=DIR")]
    pub static_mounts: Vec<String>,

    /// Map URL_PREFIX to DIR for X-Accel-Redirect answers from the app only; clients
    /// cannot request these paths directly. Repeatable.
    #[arg(long, value_name = "URL_PREFIX=DIR")]
    pub internal: Vec<String>,

    /// Send `Cache-Control: public, max-age=SECONDS` with static files. [default: none:
    /// no Cache-Control]
    #[arg(long, value_name = "SECONDS")]
    pub static_max_age: Option<u64>,

    /// Compress app responses (zstd, br, gzip) for clients that accept it.
    #[arg(long)]
    pub compress: bool,

    /// With --compress: responses whose Content-Length is below this are not compressed.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub compress_min_size: u64,
}
