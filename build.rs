//! Link the binary to the libpython of the interpreter it was built for, and record
//! which interpreter that is.
//!
//! Two CPython builds with the same soname may be installed side by side (a user's
//! pyenv or venv base, and the distribution's). Without an rpath the dynamic loader
//! picks whichever it finds first, and the embedded interpreter then reports the wrong
//! `sys.prefix`: the user's pip packages vanish. An rpath to pyo3's chosen `lib_dir`
//! makes the build-time interpreter the run-time one.
//!
//! `RWSGI_BASE_PYTHON` is that interpreter's real executable (a virtualenv's `python`
//! resolved to the Python it was made from: a wheel is built inside one), so that the
//! binary can tell whether a virtualenv at run time is of the same Python.

use std::process::Command;

/// Prints the real path of the interpreter behind `python` (itself, or a venv's base).
const BASE_EXECUTABLE: &str =
    "import os, sys; print(os.path.realpath(getattr(sys, '_base_executable', sys.executable)))";

fn main() {
    let config = pyo3_build_config::get();
    if let Some(lib_dir) = config.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    if let Some(executable) = config.executable() {
        let base = Command::new(executable)
            .args(["-c", BASE_EXECUTABLE])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok());
        if let Some(base) = base.as_deref().map(str::trim).filter(|b| !b.is_empty()) {
            println!("cargo:rustc-env=RWSGI_BASE_PYTHON={base}");
        }
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
