//! SIGABRT in a worker, as the master sends it on `--timeout` (gunicorn's signal): say
//! where the application hangs, then end the worker at once.
//!
//! Two handlers, chained. `faulthandler` (enabled after the Python handler is set, so
//! the Python one is what it chains to) writes the traceback of every thread to stderr
//! from C, inside the signal, so it works even while the application is stuck in C
//! code. It then re-raises the signal to the Python handler ([`on_abort`]), which runs
//! as soon as the interpreter gets control (at once in `time.sleep` or a Python loop),
//! logs, and leaves with `_exit`: not `sys.exit`, whose `SystemExit` would unwind
//! through the application and be turned into a 500 by the response code. A worker
//! that never gets back to Python is killed by the master after a grace period.
//!
//! `faulthandler.enable` also makes a crash (SIGSEGV, SIGBUS, SIGILL, SIGFPE) in a C
//! extension print a Python traceback before the worker dies: welcome in a server.
//! (`faulthandler.register`, which would chain without the "Fatal Python error" banner,
//! refuses SIGABRT.)

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tracing::error;

/// Installs the SIGABRT handlers in this worker (its interpreter is running).
pub fn install_abort_handler() -> PyResult<()> {
    Python::attach(|py| {
        let faulthandler = py.import("faulthandler")?;
        // Already enabled (PYTHONFAULTHANDLER, -X faulthandler, or the app under
        // --preload), enable() would do nothing, and the Python handler set below would
        // replace faulthandler's instead of coming after it.
        faulthandler.call_method0("disable")?;
        let signal = py.import("signal")?;
        let handler = wrap_pyfunction!(on_abort, py)?;
        signal.call_method1("signal", (signal.getattr("SIGABRT")?, handler))?;
        let options = PyDict::new(py);
        options.set_item("all_threads", true)?;
        faulthandler.call_method("enable", (), Some(&options))?;
        Ok(())
    })
}

/// The Python-level SIGABRT handler: runs after faulthandler has printed the traceback.
#[pyfunction]
fn on_abort(py: Python<'_>, _signum: i32, _frame: &Bound<'_, PyAny>) {
    error!(
        "Worker aborted (SIGABRT; the master sends it on --timeout): the traceback above shows where it was; exiting"
    );
    // gunicorn's worker_abort hook (--hooks), with the GIL held, before the exit.
    super::hooks::worker_abort(py);
    for stream in ["stdout", "stderr"] {
        let _ = py
            .import("sys")
            .and_then(|sys| sys.getattr(stream))
            .and_then(|s| s.call_method0("flush"));
    }
    // SAFETY: _exit ends the process without unwinding or running exit handlers, which
    // is the point (os._exit does the same); nothing is left half-written, the logs
    // were written with one write(2) per line and Python's streams just flushed.
    unsafe { libc::_exit(1) }
}

/// Makes SIGUSR2 print the traceback of every thread to the error log (faulthandler,
/// from C, without stopping anything): the master sends it when one thread's request of
/// a gthread worker times out, so the log shows where it hangs while the worker's other
/// requests finish.
pub fn install_dump_handler() -> PyResult<()> {
    Python::attach(|py| {
        let faulthandler = py.import("faulthandler")?;
        let signal = py.import("signal")?;
        let options = PyDict::new(py);
        options.set_item("all_threads", true)?;
        faulthandler.call_method("register", (signal.getattr("SIGUSR2")?,), Some(&options))?;
        Ok(())
    })
}
