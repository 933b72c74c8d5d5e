//! Importing the application named on the command line.

use std::path::Path;

use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::config::{AppSpec, Settings};

/// Puts the directories the user asked for first on `sys.path`, in gunicorn's order:
/// the app's own directory, then `--pythonpath`, then the working directory.
pub fn extend_sys_path(py: Python<'_>, settings: &Settings) -> PyResult<()> {
    let path = py.import("sys")?.getattr("path")?.cast_into::<PyList>()?;
    let mut front: Vec<String> = Vec::new();
    if let Some(dir) = &settings.app.dir {
        front.push(absolute(dir));
    }
    front.extend(settings.pythonpath.iter().map(|p| absolute(p)));
    front.push(absolute(Path::new(".")));
    for dir in front.iter().rev() {
        path.insert(0, dir)?;
    }
    Ok(())
}

fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Imports the module and finds the callable (calling it if it is a factory).
pub fn load<'py>(py: Python<'py>, spec: &AppSpec) -> PyResult<Bound<'py, PyAny>> {
    let module = py.import(spec.module.as_str())?;
    let mut object = module.into_any();
    for part in spec.callable.split('.') {
        object = object.getattr(part).map_err(|_| {
            pyo3::exceptions::PyAttributeError::new_err(format!(
                "Failed to find attribute {:?} in {:?}.",
                spec.callable, spec.module
            ))
        })?;
    }
    if let Some(args) = &spec.factory_args {
        let args = if args.is_empty() {
            PyTuple::empty(py)
        } else {
            // Only literals, as gunicorn allows: no code from the command line runs.
            let literal = py.import("ast")?.getattr("literal_eval")?;
            literal
                .call1((format!("({args},)"),))?
                .cast_into::<PyTuple>()?
        };
        object = object.call1(args)?;
    }
    if !object.is_callable() {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "Application object {:?} must be callable.",
            spec.text
        )));
    }
    Ok(object)
}
