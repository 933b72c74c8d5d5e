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

    // TLS (src/config/tls.rs).
    /// Serve HTTPS on every --bind with this PEM certificate chain (leaf first; the
    /// private key may be in the same file), or CERT:KEY. Repeat for several certificates
    /// chosen by SNI; the first is the default.
    #[arg(long = "tls", alias = "certfile", value_name = "CERT[:KEY]")]
    pub tls: Vec<String>,

    /// The PEM private key of each --tls certificate that names none of its own.
    #[arg(long = "tls-key", alias = "keyfile", value_name = "KEY")]
    pub tls_key: Option<PathBuf>,

    /// Send `Strict-Transport-Security: max-age=SECONDS` with every HTTPS response.
    #[arg(long, value_name = "SECONDS")]
    pub hsts: Option<u64>,

    /// Also listen for plain HTTP at this address and answer every request with a 308
    /// redirect to the same URL over HTTPS. Repeatable.
    #[arg(long = "redirect-http", value_name = "ADDRESS")]
    pub redirect_http: Vec<String>,
}
