//! `--hooks MODULE`: gunicorn's worker-side server hooks (`post_fork`,
//! `post_worker_init`, `pre_request`, `post_request`, `worker_exit`, `worker_abort`),
//! all called in the worker process: the master runs no Python (DESIGN.md §1).
//!
//! Without `--hooks` nothing here runs: [`active`] is None, one check per request. A
//! hook that raises is logged with its traceback and otherwise ignored: it never fails
//! a request, a worker or the master.
//!
//! The arguments are `types.SimpleNamespace` objects carrying the attributes gunicorn
//! hooks use (see README "Hooks"); being plain namespaces, hooks may also add their own
//! (`req.started = time.time()` in `pre_request`, read back in `post_request`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use pyo3::call::PyCallArgs;
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use tracing::error;

use super::environ::latin1;
use super::response::{ResponseSink, format_traceback};
use crate::config::{HooksSource, Settings};
use crate::protocol::RequestHead;

/// The hooks module's functions and the objects passed to them.
pub struct Hooks {
    post_fork: Option<Py<PyAny>>,
    post_worker_init: Option<Py<PyAny>>,
    pre_request: Option<Py<PyAny>>,
    /// With how many arguments it is called: gunicorn accepts 2, 3 or 4.
    post_request: Option<(Py<PyAny>, usize)>,
    worker_exit: Option<Py<PyAny>>,
    worker_abort: Option<Py<PyAny>>,
    /// `types.SimpleNamespace`.
    namespace: Py<PyAny>,
    server: Py<PyAny>,
    worker: Py<PyAny>,
    /// Requests served (`worker.nr`).
    served: AtomicU64,
}

/// Set once per worker, before the application is imported.
static HOOKS: OnceLock<Hooks> = OnceLock::new();

/// The worker's hooks, if `--hooks` was given.
pub fn active() -> Option<&'static Hooks> {
    HOOKS.get()
}

/// Imports the `--hooks` module and calls `post_fork(server, worker)`. An error means
/// the module cannot be used (it does not import, or a hook is not callable).
pub fn install(py: Python<'_>, settings: &Settings, worker_id: u32) -> PyResult<()> {
    let Some(source) = &settings.hooks else {
        return Ok(());
    };
    let module = import(py, source)?;
    let find = |name: &str| -> PyResult<Option<Py<PyAny>>> {
        match module.getattr_opt(name)? {
            Some(hook) if hook.is_none() => Ok(None),
            Some(hook) if hook.is_callable() => Ok(Some(hook.unbind())),
            Some(hook) => Err(PyTypeError::new_err(format!(
                "{name} must be a function, not {}",
                hook.get_type().name()?
            ))),
            None => Ok(None),
        }
    };
    let post_request = match find("post_request")? {
        Some(hook) => Some((hook.clone_ref(py), post_request_arity(hook.bind(py))?)),
        None => None,
    };
    let namespace = py.import("types")?.getattr("SimpleNamespace")?;
    let (server, worker) = arguments(py, &namespace, settings, worker_id)?;
    let hooks = Hooks {
        post_fork: find("post_fork")?,
        post_worker_init: find("post_worker_init")?,
        pre_request: find("pre_request")?,
        post_request,
        worker_exit: find("worker_exit")?,
        worker_abort: find("worker_abort")?,
        namespace: namespace.unbind(),
        server: server.unbind(),
        worker: worker.unbind(),
        served: AtomicU64::new(0),
    };
    let hooks = HOOKS.get_or_init(|| hooks);
    hooks.call(
        py,
        "post_fork",
        hooks.post_fork.as_ref(),
        (&hooks.server, &hooks.worker),
    );
    Ok(())
}

/// Loads the module by name (through `sys.path`, as the application) or from its file.
fn import<'py>(py: Python<'py>, source: &HooksSource) -> PyResult<Bound<'py, PyAny>> {
    let path = match source {
        HooksSource::Module(name) => return Ok(py.import(name.as_str())?.into_any()),
        HooksSource::File(path) => path,
    };
    // As gunicorn loads a config file: any extension, under the name `__config__`.
    let name = "__config__";
    let loader = py
        .import("importlib.machinery")?
        .getattr("SourceFileLoader")?
        .call1((name, path.as_os_str()))?;
    let util = py.import("importlib.util")?;
    let spec = util.call_method1("spec_from_loader", (name, &loader))?;
    let module = util.call_method1("module_from_spec", (&spec,))?;
    // Registered before it runs, as an import would: dataclasses and pickle look it up.
    let modules = py.import("sys")?.getattr("modules")?;
    modules.set_item(name, &module)?;
    if let Err(err) = loader.call_method1("exec_module", (&module,)) {
        let _ = modules.del_item(name);
        return Err(err);
    }
    Ok(module)
}

/// How many arguments `post_request` takes, as gunicorn's `validate_post_request` counts.
fn post_request_arity(hook: &Bound<'_, PyAny>) -> PyResult<usize> {
    let py = hook.py();
    let inspect = py.import("inspect")?;
    let kind = inspect
        .getattr("Parameter")?
        .getattr("POSITIONAL_OR_KEYWORD")?;
    let mut count = 0;
    let parameters = inspect
        .call_method1("signature", (hook,))?
        .getattr("parameters")?
        .call_method0("values")?;
    for parameter in parameters.try_iter()? {
        if parameter?.getattr("kind")?.eq(&kind)? {
            count += 1;
        }
    }
    match count {
        2..=4 => Ok(count),
        _ => Err(PyTypeError::new_err(format!(
            "post_request must take 2, 3 or 4 arguments (worker, req, environ, resp), not {count}"
        ))),
    }
}

/// `types.SimpleNamespace(**items)`.
fn namespace<'py>(
    namespace: &Bound<'py, PyAny>,
    fill: impl FnOnce(&Bound<'py, PyDict>) -> PyResult<()>,
) -> PyResult<Bound<'py, PyAny>> {
    let items = PyDict::new(namespace.py());
    fill(&items)?;
    namespace.call((), Some(&items))
}

/// The `server` and `worker` objects, made once per worker.
fn arguments<'py>(
    py: Python<'py>,
    ns: &Bound<'py, PyAny>,
    settings: &Settings,
    worker_id: u32,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let log = error_log(py)?;
    let master = nix::unistd::getppid().as_raw();
    let cfg = namespace(ns, |cfg| {
        let binds: Vec<String> = settings.binds.iter().map(|b| b.to_string()).collect();
        cfg.set_item("bind", binds)?;
        cfg.set_item("workers", settings.workers)?;
        let class = settings.worker_class;
        cfg.set_item("worker_class_str", class.name())?;
        cfg.set_item("threads", class.stamped_threads().max(1))?;
        cfg.set_item("max_requests", settings.max_requests)?;
        cfg.set_item("max_requests_jitter", settings.max_requests_jitter)?;
        cfg.set_item("max_worker_memory", settings.max_worker_memory >> 20)?;
        cfg.set_item("graceful_timeout", settings.graceful_timeout.as_secs_f64())?;
        cfg.set_item("preload_app", settings.preload)?;
        // Strings, as in gunicorn's cfg.
        cfg.set_item("chdir", settings.chdir.as_ref().map(|p| p.as_os_str()))?;
        let pythonpath: Vec<_> = settings.pythonpath.iter().map(|p| p.as_os_str()).collect();
        cfg.set_item("pythonpath", pythonpath)?;
        cfg.set_item("wsgi_app", &settings.app.text)?;
        cfg.set_item("proc_name", &settings.proc_name)
    })?;
    let app = namespace(ns, |app| {
        app.set_item("cfg", &cfg)?;
        app.set_item("app_uri", &settings.app.text)
    })?;
    let server = namespace(ns, |server| {
        server.set_item("pid", master)?;
        server.set_item("num_workers", settings.workers)?;
        server.set_item("proc_name", &settings.proc_name)?;
        server.set_item("app", &app)?;
        server.set_item("cfg", &cfg)?;
        server.set_item("log", &log)
    })?;
    let worker = namespace(ns, |worker| {
        worker.set_item("pid", std::process::id())?;
        worker.set_item("ppid", master)?;
        worker.set_item("age", worker_id)?;
        worker.set_item("alive", true)?;
        worker.set_item("booted", false)?;
        worker.set_item("nr", 0)?;
        worker.set_item("max_requests", settings.max_requests)?;
        worker.set_item("app", &app)?;
        worker.set_item("cfg", &cfg)?;
        worker.set_item("log", &log)?;
        worker.set_item("wsgi", py.None())
    })?;
    Ok((server, worker))
}

/// The `logging.Logger` handed to hooks (`worker.log`, `server.log`): lines on stderr in
/// the error log's format, at its level.
fn error_log(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let logging = py.import("logging")?;
    let log = logging.call_method1("getLogger", ("rwsgi.error",))?;
    if log.getattr("handlers")?.is_empty()? {
        let stderr = py.import("sys")?.getattr("stderr")?;
        let handler = logging.call_method1("StreamHandler", (stderr,))?;
        let format = "[%(asctime)s] [%(process)d] [%(levelname)s] [worker] %(message)s";
        let formatter = logging.call_method1("Formatter", (format, "%Y-%m-%d %H:%M:%S +0000"))?;
        formatter.setattr("converter", py.import("time")?.getattr("gmtime")?)?;
        handler.call_method1("setFormatter", (formatter,))?;
        log.call_method1("addHandler", (handler,))?;
        // An app's own root logger configuration must not print these lines twice.
        log.setattr("propagate", false)?;
    }
    let level = match tracing::level_filters::LevelFilter::current().into_level() {
        Some(tracing::Level::TRACE) => 5,
        Some(tracing::Level::DEBUG) => 10,
        Some(tracing::Level::INFO) => 20,
        Some(tracing::Level::WARN) => 30,
        Some(tracing::Level::ERROR) => 40,
        None => 50,
    };
    log.call_method1("setLevel", (level,))?;
    Ok(log)
}

impl Hooks {
    /// Calls `hook` if the module defines it; an exception is logged, never raised.
    fn call<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        hook: Option<&Py<PyAny>>,
        args: impl PyCallArgs<'py>,
    ) {
        let Some(hook) = hook else { return };
        if let Err(err) = hook.bind(py).call1(args) {
            error!(
                "Exception in {name} hook\n{}",
                format_traceback(py, &err).trim_end()
            );
        }
    }

    fn set_worker<'py>(&self, py: Python<'py>, name: &str, value: impl IntoPyObject<'py>) {
        // Only fails on a hook's own setattr trickery; the attribute then stays stale.
        let _ = self.worker.bind(py).setattr(name, value);
    }

    /// Before the app handles a request: `pre_request(worker, req)`. Returns `req` for
    /// [`Hooks::post_request`] when that hook is defined.
    pub fn pre_request<'py>(
        &self,
        py: Python<'py>,
        head: &RequestHead,
    ) -> Option<Bound<'py, PyAny>> {
        let req = match (self.pre_request.as_ref(), &self.post_request) {
            (None, None) => None,
            _ => match self.request(py, head) {
                Ok(req) => Some(req),
                Err(err) => {
                    error!("cannot build the request object for the hooks: {err}");
                    None
                }
            },
        };
        if let Some(req) = &req {
            self.call(
                py,
                "pre_request",
                self.pre_request.as_ref(),
                (&self.worker, req),
            );
        }
        // As gunicorn: `nr` counts this request from here on (post_request sees it).
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        self.set_worker(py, "nr", served);
        req.filter(|_| self.post_request.is_some())
    }

    /// Whether `post_request` wants the response: then the sink is wrapped in a
    /// [`Recorder`].
    pub fn wants_response(&self) -> bool {
        self.post_request.is_some()
    }

    /// After the response has left: `post_request(worker, req, environ, resp)`.
    pub fn post_request(
        &self,
        py: Python<'_>,
        req: &Bound<'_, PyAny>,
        environ: &Bound<'_, PyDict>,
        recorder: &Recorder,
    ) {
        let Some((hook, arity)) = &self.post_request else {
            return;
        };
        let resp = match recorder.response(py, self.namespace.bind(py)) {
            Ok(resp) => resp,
            Err(err) => return error!("cannot build the response object for the hooks: {err}"),
        };
        let (worker, hook) = (self.worker.bind(py), Some(hook));
        match arity {
            2 => self.call(py, "post_request", hook, (worker, req)),
            3 => self.call(py, "post_request", hook, (worker, req, environ)),
            _ => self.call(py, "post_request", hook, (worker, req, environ, resp)),
        }
    }

    /// gunicorn's `Request` attributes that hooks read.
    fn request<'py>(&self, py: Python<'py>, head: &RequestHead) -> PyResult<Bound<'py, PyAny>> {
        let headers = PyList::empty(py);
        for (name, value) in &head.headers {
            // gunicorn upper-cases header names in `req.headers`.
            let name = latin1(py, &name.to_ascii_uppercase());
            headers.append((name, latin1(py, value)))?;
        }
        // gunicorn's is (host, port), or the bare address of a Unix-socket peer.
        let remote = latin1(py, &head.remote_addr).into_any();
        let remote = match head.remote_port {
            Some(port) => {
                PyTuple::new(py, [remote, port.into_pyobject(py)?.into_any()])?.into_any()
            }
            None => remote,
        };
        namespace(self.namespace.bind(py), |req| {
            req.set_item(intern!(py, "method"), latin1(py, &head.method))?;
            req.set_item(intern!(py, "uri"), latin1(py, &head.raw_uri))?;
            req.set_item(intern!(py, "path"), latin1(py, &head.path))?;
            req.set_item(intern!(py, "query"), latin1(py, &head.query))?;
            req.set_item(intern!(py, "fragment"), "")?;
            let version = (head.version / 10, head.version % 10);
            req.set_item(intern!(py, "version"), version)?;
            req.set_item(intern!(py, "scheme"), head.scheme.as_str())?;
            req.set_item(intern!(py, "headers"), headers)?;
            req.set_item(intern!(py, "remote_addr"), &remote)?;
            req.set_item(intern!(py, "peer_addr"), &remote)
        })
    }
}

/// After the app is loaded: `post_worker_init(worker)`, with `worker.wsgi` set to it;
/// `worker.booted` turns true afterwards, as in gunicorn.
pub fn post_worker_init(py: Python<'_>, app: &Py<PyAny>) {
    let Some(hooks) = active() else { return };
    hooks.set_worker(py, "wsgi", app);
    let hook = hooks.post_worker_init.as_ref();
    hooks.call(py, "post_worker_init", hook, (&hooks.worker,));
    hooks.set_worker(py, "booted", true);
}

/// Just before a worker leaves cleanly: `worker_exit(server, worker)`.
pub fn worker_exit(py: Python<'_>) {
    let Some(hooks) = active() else { return };
    hooks.set_worker(py, "alive", false);
    let args = (&hooks.server, &hooks.worker);
    hooks.call(py, "worker_exit", hooks.worker_exit.as_ref(), args);
}

/// When the worker is aborted (SIGABRT, the `--timeout` kill): `worker_abort(worker)`.
/// To be called by the worker's abort handler, with the GIL held.
pub fn worker_abort(py: Python<'_>) {
    let Some(hooks) = active() else { return };
    hooks.set_worker(py, "alive", false);
    hooks.call(
        py,
        "worker_abort",
        hooks.worker_abort.as_ref(),
        (&hooks.worker,),
    );
}

/// A sink that passes everything on and remembers what the response was, for the
/// `resp` of `post_request` (only used when that hook is defined).
pub struct Recorder {
    inner: Arc<dyn ResponseSink>,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    status: Option<(u16, Vec<u8>)>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    sent: u64,
}

impl Recorder {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ResponseSink>) -> Recorder {
        Recorder {
            inner,
            seen: Mutex::new(Seen::default()),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        crate::lock::lock(&self.seen)
    }

    /// gunicorn's `Response` attributes that hooks read.
    fn response<'py>(
        &self,
        py: Python<'py>,
        ns: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let seen = self.seen();
        let headers = PyList::empty(py);
        let mut length = None;
        for (name, value) in &seen.headers {
            if name.eq_ignore_ascii_case(b"content-length") {
                length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
            }
            headers.append((latin1(py, name), latin1(py, value)))?;
        }
        namespace(ns, |resp| {
            match &seen.status {
                Some((code, reason)) => {
                    let mut status = format!("{code} ").into_bytes();
                    status.extend_from_slice(reason);
                    resp.set_item("status", latin1(py, status.trim_ascii_end()))?;
                    resp.set_item("status_code", code)?;
                }
                // The response never started (the channel broke first).
                None => {
                    resp.set_item("status", py.None())?;
                    resp.set_item("status_code", py.None())?;
                }
            }
            resp.set_item("headers", headers)?;
            resp.set_item("sent", seen.sent)?;
            resp.set_item("response_length", length)
        })
    }
}

impl ResponseSink for Recorder {
    fn head(
        &self,
        status: u16,
        reason: &[u8],
        close: bool,
        headers: &[(Vec<u8>, Vec<u8>)],
    ) -> std::io::Result<()> {
        {
            let mut seen = self.seen();
            seen.status = Some((status, reason.to_vec()));
            seen.headers = headers.to_vec();
        }
        self.inner.head(status, reason, close, headers)
    }

    fn body(&self, chunk: &[u8]) -> std::io::Result<()> {
        self.seen().sent += chunk.len() as u64;
        self.inner.body(chunk)
    }

    fn trailers(&self, fields: &[(Vec<u8>, Vec<u8>)]) -> std::io::Result<()> {
        self.inner.trailers(fields)
    }

    fn end(&self) -> std::io::Result<()> {
        self.inner.end()
    }

    fn abort(&self, why: &str) -> std::io::Result<()> {
        self.inner.abort(why)
    }

    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }

    fn client_gone(&self) -> bool {
        self.inner.client_gone()
    }
}
