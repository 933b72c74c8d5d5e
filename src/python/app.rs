//! Importing the application named on the command line.

use std::path::Path;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

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
        let (args, kwargs) = factory_arguments(py, args)?;
        object = object.call(args, Some(&kwargs))?;
    }
    if !object.is_callable() {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "Application object {:?} must be callable.",
            spec.text
        )));
    }
    Ok(object)
}

/// The positional and keyword arguments of `factory(ARGS)`. Only literals, as gunicorn
/// allows: no code from the command line runs.
fn factory_arguments<'py>(
    py: Python<'py>,
    args: &str,
) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, PyDict>)> {
    let kwargs = PyDict::new(py);
    if args.is_empty() {
        return Ok((PyTuple::empty(py), kwargs));
    }
    let ast = py.import("ast")?;
    let literal = ast.getattr("literal_eval")?;
    let call = ast
        .call_method1("parse", (format!("factory({args})"), "<APP>", "eval"))?
        .getattr("body")?;
    let mut positional = Vec::new();
    for node in call.getattr("args")?.try_iter()? {
        positional.push(literal.call1((node?,))?);
    }
    for keyword in call.getattr("keywords")?.try_iter()? {
        let keyword = keyword?;
        let name = keyword.getattr("arg")?;
        if name.is_none() {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "**kwargs cannot be given to an application factory",
            ));
        }
        kwargs.set_item(name, literal.call1((keyword.getattr("value")?,))?)?;
    }
    Ok((PyTuple::new(py, positional)?, kwargs))
}
