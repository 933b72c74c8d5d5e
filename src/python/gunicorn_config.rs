//! `rwsgi read-gunicorn-config SOURCE`: the child that executes a gunicorn config file
//! in the embedded interpreter and prints the settings it holds (`config::gunicorn`
//! explains why a child, and reads what it prints). It runs nothing else: no
//! application, no hooks.

use std::ffi::CString;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::config::gunicorn::SETTINGS;

/// The reader, run with `SOURCE` and `NAMES` set.
const READER: &str = include_str!("gunicorn_config.py");

/// Executes the config file `source` and prints its settings; the exit code is 0, or 1
/// when the file cannot be run (its traceback is on stderr, as gunicorn prints it).
pub fn read(source: &str) -> i32 {
    if let Err(message) = super::interp::initialize() {
        eprintln!("rwsgi: error: {message}");
        return 1;
    }
    let Ok(code) = CString::new(READER) else {
        return 1;
    };
    Python::attach(|py| {
        let run = || -> PyResult<bool> {
            let globals = PyDict::new(py);
            globals.set_item("SOURCE", source)?;
            let names = PyList::new(py, SETTINGS.iter().map(|s| s.name))?;
            globals.set_item("NAMES", names)?;
            py.run(&code, Some(&globals), None)?;
            globals
                .get_item("FAILED")?
                .map_or(Ok(true), |failed| failed.extract::<bool>())
        };
        match run() {
            Ok(false) => 0,
            Ok(true) => 1,
            Err(err) => {
                eprintln!("Failed to read config file: {source}");
                err.print(py);
                1
            }
        }
    })
}
