//! Every line of pyo3: starting the interpreter, importing the application, building
//! the environ, `wsgi.input`, `start_response` and the response iteration.
//!
//! The rest of rwsgi sees Python through this module's small API: [`preload`] and the
//! fork hooks for the master, [`App`] for a worker.

mod abort;
mod app;
mod environ;
mod errors;
mod input;
mod interp;
mod response;

use std::sync::{Arc, OnceLock};

use pyo3::prelude::*;
use tracing::error;

pub use abort::install_abort_handler;
pub use input::WsgiInput;
pub use response::{Outcome, ResponseSink, send_error_page};

use crate::config::Settings;
use crate::master::{APP_LOAD_ERROR, scoreboard};
use crate::protocol::RequestHead;
use std::time::Duration;

/// The application imported by the master under `--preload`, inherited by every fork.
static PRELOADED: OnceLock<Py<PyAny>> = OnceLock::new();

/// Starts the interpreter, sets up `sys.path` and imports the application, printing
/// the traceback of a failure. The error is the exit code to use.
fn load(settings: &Settings) -> Result<Py<PyAny>, i32> {
    if let Err(message) = interp::initialize() {
        error!("{message}");
        return Err(APP_LOAD_ERROR);
    }
    Python::attach(|py| {
        let loaded = app::extend_sys_path(py, settings).and_then(|_| app::load(py, &settings.app));
        match loaded {
            Ok(app) => Ok(app.unbind()),
            Err(err) => {
                // Every worker fails the same way: only the first tells, and the others
                // wait until it has told before they exit and the master stops.
                if scoreboard::claim_boot_error_report() {
                    error!(
                        "Exception while loading the application {:?}\n{}",
                        settings.app.text,
                        response::format_traceback(py, &err).trim_end()
                    );
                    scoreboard::boot_error_reported();
                } else {
                    py.detach(|| scoreboard::wait_for_boot_error_report(Duration::from_secs(5)));
                }
                Err(APP_LOAD_ERROR)
            }
        }
    })
}

/// `--preload`: imports the application in the master, before any fork.
pub fn preload(settings: &Settings) -> Result<(), i32> {
    let app = load(settings)?;
    let _ = PRELOADED.set(app);
    Ok(())
}

/// Before `fork()` in a process whose interpreter is running (CPython's own hook).
pub fn before_fork() {
    // SAFETY: called by the thread holding the GIL (the master's only thread).
    unsafe { pyo3::ffi::PyOS_BeforeFork() }
}

/// In the parent after `fork()` (CPython's own hook).
pub fn after_fork_parent() {
    // SAFETY: paired with before_fork in the same thread.
    unsafe { pyo3::ffi::PyOS_AfterFork_Parent() }
}

/// In the child after `fork()` (CPython's own hook).
pub fn after_fork_child() {
    // SAFETY: the child's only thread, right after fork, as CPython requires.
    unsafe { pyo3::ffi::PyOS_AfterFork_Child() }
}

/// A worker's loaded application and its environ builder.
pub struct App {
    app: Py<PyAny>,
    environ: environ::EnvironBuilder,
}

/// Where a request's body is, for `wsgi.input`.
pub enum Body {
    /// In memory.
    Memory(bytes::Bytes),
    /// In a spool file written by the front tier.
    File { file: std::fs::File, length: u64 },
}

impl App {
    /// The application for a worker: the preloaded one, or imported now.
    pub fn boot(settings: &Settings) -> Result<App, i32> {
        let app = match PRELOADED.get() {
            Some(app) => Python::attach(|py| app.clone_ref(py)),
            None => load(settings)?,
        };
        Python::attach(|py| {
            let environ =
                environ::EnvironBuilder::new(py, settings.workers > 1, false).map_err(|err| {
                    error!("cannot build the environ template: {err}");
                    APP_LOAD_ERROR
                })?;
            Ok(App { app, environ })
        })
    }

    /// Serves one request, sending the response through `sink`.
    pub fn handle(
        &mut self,
        py: Python<'_>,
        head: &RequestHead,
        body: Body,
        sink: Arc<dyn ResponseSink>,
    ) -> Outcome {
        let input = match body {
            Body::Memory(bytes) => WsgiInput::memory(bytes),
            Body::File { file, length } => WsgiInput::file(file, length),
        };
        let label = String::from_utf8_lossy(&head.raw_uri).into_owned();
        let environ = match self.environ.build(py, head, input) {
            Ok(environ) => environ,
            Err(err) => {
                error!("cannot build the environ for {label}: {err}");
                return Outcome::ChannelBroken;
            }
        };
        let head_only = &head.method[..] == b"HEAD";
        response::respond(py, self.app.bind(py), environ, sink, head_only, &label)
    }
}

/// Runs the interpreter's exit functions (`atexit`) and flushes its streams, as a
/// normal interpreter exit would.
pub fn shutdown() {
    Python::attach(|py| {
        let _ = py
            .import("atexit")
            .and_then(|m| m.call_method0("_run_exitfuncs"));
        for stream in ["stdout", "stderr"] {
            let _ = py
                .import("sys")
                .and_then(|sys| sys.getattr(stream))
                .and_then(|s| s.call_method0("flush"));
        }
    });
}
