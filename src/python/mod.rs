//! Every line of pyo3: starting the interpreter, importing the application, building
//! the environ, `wsgi.input`, `start_response` and the response iteration; an ASGI
//! application's scope, messages and event loop (`asgi`).
//!
//! The rest of rwsgi sees Python through this module's small API: [`preload`] and the
//! fork hooks for the master, [`App`] for a worker.

mod abort;
mod app;
mod asgi;
mod asgi_ws;
mod broken;
mod environ;
mod errors;
pub mod gunicorn_config;
mod head;
mod hooks;
mod input;
mod interp;
mod response;
pub mod venv;

use std::sync::{Arc, OnceLock};

use pyo3::intern;
use pyo3::prelude::*;
use tracing::error;

pub use abort::{install_abort_handler, install_dump_handler};
pub use asgi::{AsgiApp, AsgiStream};
pub use asgi_ws::{AsgiSocket, Inbox, SharedInbox, SocketSink};
pub use input::{BodyBytes, WsgiInput};
pub use response::{Outcome, ResponseSink, format_traceback, send_error_page};

use crate::config::{Settings, WorkerClass};
use crate::exit::{APP_LOAD_ERROR, WORKER_BOOT_ERROR};
use crate::protocol::RequestHead;
use crate::scoreboard;
use std::time::Duration;

/// The application imported by the master under `--preload`, inherited by every fork.
static PRELOADED: OnceLock<Py<PyAny>> = OnceLock::new();

/// Why the application could not be made ready to serve.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The interpreter did not start (the message says why).
    #[error("{0}")]
    Interpreter(String),
    /// The application (or its `sys.path`) did not import: its traceback was logged
    /// (once for all workers, see `report_boot_error`).
    #[error("the application failed to load")]
    AppReported,
    /// The `--hooks` module or gevent did not import: its traceback was logged.
    #[error("the worker failed to boot")]
    WorkerReported,
    /// The environ's template could not be built.
    #[error("cannot build the environ template: {0}")]
    Environ(PyErr),
}

impl crate::exit::Failure for BootError {
    fn exit_code(&self) -> i32 {
        match self {
            BootError::WorkerReported => WORKER_BOOT_ERROR,
            _ => APP_LOAD_ERROR,
        }
    }

    fn reported(&self) -> bool {
        matches!(self, BootError::AppReported | BootError::WorkerReported)
    }
}

/// Reports a failure every worker meets the same way (the application or the hooks do
/// not import): only the first worker tells, and the others wait until it has told
/// before they exit and the master stops. Returns `error`, now reported.
fn report_boot_error(py: Python<'_>, what: &str, err: &PyErr, error: BootError) -> BootError {
    if scoreboard::claim_boot_error_report() {
        error!("{what}\n{}", response::format_traceback(py, err).trim_end());
        scoreboard::boot_error_reported();
    } else {
        py.detach(|| scoreboard::wait_for_boot_error_report(Duration::from_secs(5)));
    }
    error
}

/// Starts the interpreter, sets up `sys.path` and imports the application, printing
/// the traceback of a failure. In a worker (`worker_id`), the `--hooks` module is
/// loaded and `post_fork` called before the application is imported. The flag says
/// the application is `--reload`'s page of its load error (a WSGI application).
fn load(settings: &Settings, worker_id: Option<u32>) -> Result<(Py<PyAny>, bool), BootError> {
    interp::initialize().map_err(BootError::Interpreter)?;
    Python::attach(|py| {
        let what = format!(
            "Exception while loading the application {:?}",
            settings.app.text
        );
        app::extend_sys_path(py, settings)
            .map_err(|err| report_boot_error(py, &what, &err, BootError::AppReported))?;
        if let Some(id) = worker_id {
            install_hooks(py, settings, id)?;
        }
        patch_for_gevent(py, settings)?;
        match app::load(py, &settings.app) {
            Ok(app) => Ok((app.unbind(), false)),
            // --reload: show the error (log and browser) and wait for the next change.
            Err(err) if settings.reload.is_some() && worker_id.is_some() => {
                let traceback = response::format_traceback(py, &err);
                error!(
                    "{what}\n{}\nServing this traceback as a 500 page until a change is saved (--reload)",
                    traceback.trim_end()
                );
                broken::application(py, &what, &traceback)
                    .map(|page| (page.unbind(), true))
                    .map_err(|err| report_boot_error(py, &what, &err, BootError::AppReported))
            }
            Err(err) => Err(report_boot_error(py, &what, &err, BootError::AppReported)),
        }
    })
}

/// Loads `--hooks` in a worker and calls `post_fork`; a module that cannot be used
/// stops the server, as a broken application does.
fn install_hooks(py: Python<'_>, settings: &Settings, worker_id: u32) -> Result<(), BootError> {
    hooks::install(py, settings, worker_id).map_err(|err| {
        let source = settings
            .hooks
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let what = format!("--hooks: cannot load the hooks module {source:?}");
        report_boot_error(py, &what, &err, BootError::WorkerReported)
    })
}

/// `-k gevent`: monkey-patches the standard library before the application is imported
/// (as gunicorn does), so that its waits switch greenlets. gevent missing from the
/// application's environment stops the server with one clear report.
fn patch_for_gevent(py: Python<'_>, settings: &Settings) -> Result<(), BootError> {
    if !matches!(settings.worker_class, WorkerClass::Gevent(_)) {
        return Ok(());
    }
    py.import("gevent.monkey")
        .and_then(|monkey| monkey.call_method0("patch_all"))
        .map(|_| ())
        .map_err(|err| {
            let what = "-k gevent: cannot import gevent in the application's Python \
                        environment (pip install gevent there, or choose another -k)";
            report_boot_error(py, what, &err, BootError::WorkerReported)
        })
}

/// `--preload`: imports the application in the master, before any fork.
pub fn preload(settings: &Settings) -> Result<(), BootError> {
    let (app, _) = load(settings, None)?;
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
    /// The application is `--reload`'s page of its load error, a WSGI application
    /// whatever `-k` says.
    load_error: bool,
    /// The mount point (`--root-path`): an ASGI scope's `root_path`.
    root_path: String,
}

/// Where a request's body is, for `wsgi.input`.
pub enum Body {
    /// In memory.
    Memory(bytes::Bytes),
    /// Read straight into a `bytes` object (a sync worker's large body).
    Python(BodyBytes),
    /// In a spool file written by the front tier.
    File { file: std::fs::File, length: u64 },
}

impl App {
    /// The application for worker `id`: the preloaded one, or imported now; the
    /// `--hooks` are loaded and `post_fork` and `post_worker_init` called on the way.
    pub fn boot(settings: &Settings, id: u32) -> Result<App, BootError> {
        let app = match PRELOADED.get() {
            Some(app) => Python::attach(|py| {
                install_hooks(py, settings, id)?;
                // Patched in the master already (before the preload); idempotent.
                patch_for_gevent(py, settings)?;
                Ok::<_, BootError>((app.clone_ref(py), false))
            })?,
            None => load(settings, Some(id))?,
        };
        let (app, load_error) = app;
        // PEP 3333: multithread is true when another thread of the process may call
        // the application at the same time, which greenlets do too.
        let multithread = settings.worker_class != WorkerClass::Sync;
        Python::attach(|py| {
            let environ = environ::EnvironBuilder::new(
                py,
                settings.workers > 1,
                multithread,
                &settings.root_path,
            );
            let environ = environ.map_err(BootError::Environ)?;
            hooks::post_worker_init(py, &app);
            Ok(App {
                app,
                environ,
                load_error,
                root_path: settings.root_path.clone(),
            })
        })
    }

    /// Whether the application is `--reload`'s page of its load error: then the worker
    /// serves it as `-k sync` would, whatever `-k` says.
    pub fn shows_load_error(&self) -> bool {
        self.load_error
    }

    /// Whether the application is an ASGI 3 callable: a coroutine function, or an object
    /// whose `__call__` is one (FastAPI's, Starlette's and Django's `application`). A
    /// WSGI callable is neither. One that cannot be inspected is taken for WSGI.
    pub fn is_asgi(&self) -> bool {
        Python::attach(|py| {
            let Ok(inspect) = py.import(intern!(py, "inspect")) else {
                return false;
            };
            let app = self.app.bind(py);
            let is_coroutine = |callable: &Bound<'_, PyAny>| {
                inspect
                    .call_method1(intern!(py, "iscoroutinefunction"), (callable,))
                    .and_then(|yes| yes.is_truthy())
                    .unwrap_or(false)
            };
            is_coroutine(app)
                || app
                    .getattr(intern!(py, "__call__"))
                    .is_ok_and(|call| is_coroutine(&call))
        })
    }

    /// The same application for another thread of the worker, with an environ builder
    /// of its own (building an environ needs `&mut`).
    pub fn for_thread(&self, py: Python<'_>) -> App {
        App {
            app: self.app.clone_ref(py),
            environ: self.environ.clone_ref(py),
            load_error: self.load_error,
            root_path: self.root_path.clone(),
        }
    }

    /// Serves one request, sending the response through `sink`.
    pub fn handle(
        &mut self,
        py: Python<'_>,
        head: &RequestHead,
        body: Body,
        sink: Arc<dyn ResponseSink>,
    ) -> Outcome {
        // Without --hooks, this None is all they cost.
        let hooks = hooks::active();
        let req = hooks.and_then(|hooks| hooks.pre_request(py, head));
        let input = match body {
            Body::Memory(bytes) => WsgiInput::memory(bytes),
            Body::Python(body) => WsgiInput::python(body),
            Body::File { file, length } => WsgiInput::file(file, length),
        };
        let label = RequestLabel(head);
        let environ = match self.environ.build(py, head, input) {
            Ok(environ) => environ,
            Err(err) => {
                error!("cannot build the environ for {label}: {err}");
                return Outcome::ChannelBroken;
            }
        };
        let head_only = &head.method[..] == b"HEAD";
        let app = self.app.bind(py);
        let (Some(hooks), Some(req)) = (hooks.filter(|h| h.wants_response()), req) else {
            return response::respond(py, app, environ, sink, head_only, &label);
        };
        let recorder = Arc::new(hooks::Recorder::new(sink));
        let sink: Arc<dyn ResponseSink> = recorder.clone();
        let outcome = response::respond(py, app, environ.clone(), sink, head_only, &label);
        hooks.post_request(py, &req, &environ, &recorder);
        outcome
    }
}

/// Names a request in the error log, with the id the front tier gave it (also in the
/// access log and the response), so the two logs can be joined. Written only when a
/// line is: nothing is formatted for a request that logs nothing.
struct RequestLabel<'a>(&'a RequestHead);

impl std::fmt::Display for RequestLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head = self.0;
        write!(f, "{}", String::from_utf8_lossy(&head.raw_uri))?;
        match &head.request_id[..] {
            b"" => Ok(()),
            id => write!(f, " (request id {})", String::from_utf8_lossy(id)),
        }
    }
}

/// A worker's clean exit: calls the `worker_exit` hook, then runs the interpreter's exit
/// functions (`atexit`) and flushes its streams, as a normal interpreter exit would.
pub fn shutdown() {
    Python::attach(|py| {
        hooks::worker_exit(py);
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
