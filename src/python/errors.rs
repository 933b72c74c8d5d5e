//! `wsgi.errors`: a text stream writing to the error log (stderr), flushed each write.

use std::io::Write;

use pyo3::prelude::*;

/// The `wsgi.errors` stream.
#[pyclass(frozen, module = "rwsgi")]
pub struct ErrorStream;

#[pymethods]
impl ErrorStream {
    /// Writes `text` to the error log.
    fn write(&self, text: &str) -> usize {
        let _ = std::io::stderr().write_all(text.as_bytes());
        text.len()
    }

    /// Writes each string of `lines`.
    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(line?.extract::<&str>()?);
        }
        Ok(())
    }

    /// Nothing is buffered; present because PEP 3333 requires it.
    fn flush(&self) {}
}
