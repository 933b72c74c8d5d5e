//! The command line: clap structures with gunicorn's flag names. No I/O happens here;
//! `config` turns these raw values into checked settings.

use std::path::PathBuf;

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
}

/// `rwsgi serve [OPTIONS] APP`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on: HOST:PORT, [IPV6]:PORT, HOST (port 8000) or unix:PATH.
    /// Repeat to listen on several. [default: 127.0.0.1:8000]
    #[arg(short = 'b', long = "bind", value_name = "ADDRESS")]
    pub bind: Vec<String>,

    /// Number of worker processes. [default: the number of CPU cores available]
    #[arg(short = 'w', long, value_name = "INT")]
    pub workers: Option<usize>,

    /// Change to this directory before loading the application.
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// Comma-separated directories to add to the Python path.
    #[arg(long, value_name = "DIRS", value_delimiter = ',')]
    pub pythonpath: Vec<PathBuf>,

    /// Import the application in the master before forking the workers.
    #[arg(long)]
    pub preload: bool,

    /// Seconds to let in-flight requests finish after a graceful stop (SIGTERM).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub graceful_timeout: f64,

    /// The application: `module:callable`, `module`, `dir/module:callable` or `module:factory()`.
    #[arg(value_name = "APP")]
    pub app: String,

    // -- static files, internal redirects, compression --
    /// Serve the files of DIR at URL_PREFIX from the front tier (the app never sees these
    /// requests). Repeat for several; the longest matching prefix wins.
    #[arg(long = "static", value_name = "URL_PREFIX=DIR")]
    pub static_mounts: Vec<String>,

    /// Map URL_PREFIX to DIR for X-Accel-Redirect answers from the app only; clients
    /// cannot request these paths directly. Repeatable.
    #[arg(long, value_name = "URL_PREFIX=DIR")]
    pub internal: Vec<String>,

    /// Send `Cache-Control: public, max-age=SECONDS` with static files.
    #[arg(long, value_name = "SECONDS")]
    pub static_max_age: Option<u64>,

    /// Compress app responses (zstd, br, gzip) for clients that accept it.
    #[arg(long)]
    pub compress: bool,

    /// With --compress: responses whose Content-Length is below this are not compressed.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub compress_min_size: u64,
}
