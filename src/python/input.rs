//! `wsgi.input`: the request body, complete before the app is called (the front tier
//! buffered it), read from memory or from the spool file.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

enum Source {
    Memory(Bytes),
    /// A `bytes` object the channel's reader filled: a read of all of it returns it.
    Python(BodyBytes),
    File(BufReader<File>),
}

/// A request body of known length read straight into a new `bytes` object, without
/// the GIL, by the worker's channel reader (from the shared-memory ring): the object
/// the application's `read()` then returns, with no further copy, where the bytes were
/// copied twice more (into the read buffer, then into a `bytes` per read).
pub struct BodyBytes {
    object: Py<PyBytes>,
    data: NonNull<u8>,
    length: usize,
}

// SAFETY: `data` points into the bytes object `object` owns, which lives as long as
// this; only this value writes it (through `&mut`), before the application sees it.
unsafe impl Send for BodyBytes {}
// SAFETY: shared references only read `data`.
unsafe impl Sync for BodyBytes {}

impl BodyBytes {
    /// A `bytes` object of `length` bytes, not yet filled (the GIL is taken for the
    /// allocation); None if Python could not make it.
    pub fn new(length: usize) -> Option<BodyBytes> {
        Python::attach(|py| {
            let size = pyo3::ffi::Py_ssize_t::try_from(length).ok()?;
            // SAFETY: with a null pointer, PyBytes_FromStringAndSize makes a new bytes
            // object of `size` bytes left as they are (or returns null, an exception set).
            let raw = unsafe { pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), size) };
            // SAFETY: a non-null result is a new reference to a bytes object.
            let object = unsafe { Bound::from_owned_ptr_or_err(py, raw) }
                .ok()?
                .cast_into::<PyBytes>()
                .ok()?;
            // SAFETY: `object` is a bytes object; its buffer holds `length` bytes.
            let data = NonNull::new(unsafe { pyo3::ffi::PyBytes_AsString(object.as_ptr()) })?;
            Some(BodyBytes {
                object: object.unbind(),
                data: data.cast(),
                length,
            })
        })
    }

    /// Its bytes, to be filled, all of them, before the application is given it.
    pub fn to_fill(&mut self) -> &mut [MaybeUninit<u8>] {
        // SAFETY: `data` is valid for `length` bytes, written only through this
        // exclusive borrow.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr().cast(), self.length) }
    }
}

impl AsRef<[u8]> for BodyBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `data` is valid for `length` bytes, all filled (see `to_fill`) before
        // anything reads them.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.length) }
    }
}

/// The `wsgi.input` stream: read, readline, readlines and iteration (PEP 3333).
#[pyclass(module = "rwsgi")]
pub struct WsgiInput {
    source: Source,
    position: u64,
    length: u64,
}

impl WsgiInput {
    /// A body held in memory.
    pub fn memory(bytes: Bytes) -> WsgiInput {
        let length = bytes.len() as u64;
        WsgiInput {
            source: Source::Memory(bytes),
            position: 0,
            length,
        }
    }

    /// A body read into a `bytes` object.
    pub fn python(body: BodyBytes) -> WsgiInput {
        let length = body.length as u64;
        WsgiInput {
            source: Source::Python(body),
            position: 0,
            length,
        }
    }

    /// A body spooled to `file`, of `length` bytes.
    pub fn file(file: File, length: u64) -> WsgiInput {
        WsgiInput {
            source: Source::File(BufReader::with_capacity(64 * 1024, file)),
            position: 0,
            length,
        }
    }

    fn remaining(&self) -> u64 {
        self.length - self.position
    }

    /// How many bytes a read of `size` (negative or None: all) returns.
    fn clamp(&self, size: Option<i64>) -> usize {
        match size {
            Some(n) if n >= 0 => (n as u64).min(self.remaining()) as usize,
            _ => self.remaining() as usize,
        }
    }

    fn take<'py>(&mut self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        let start = self.position as usize;
        let bytes = match &mut self.source {
            Source::Memory(bytes) => PyBytes::new(py, &bytes[start..start + n]),
            // All of it at once (the common `read()`): the object itself.
            Source::Python(body) if start == 0 && n == body.length => body.object.bind(py).clone(),
            Source::Python(body) => PyBytes::new(py, &body.as_ref()[start..start + n]),
            Source::File(reader) => PyBytes::new_with(py, n, |buf| {
                reader
                    .read_exact(buf)
                    .map_err(|e| pyo3::exceptions::PyIOError::new_err(e.to_string()))
            })?,
        };
        self.position += n as u64;
        Ok(bytes)
    }

    /// The length of the next line (through `\n`), at most `limit` bytes.
    fn line_length(&mut self, limit: usize) -> PyResult<usize> {
        let start = self.position as usize;
        let window = match &mut self.source {
            Source::Memory(bytes) => &bytes[start..start + limit],
            Source::Python(body) => &AsRef::<[u8]>::as_ref(&*body)[start..start + limit],
            Source::File(reader) => {
                let buffered = reader
                    .fill_buf()
                    .map_err(|e| pyo3::exceptions::PyIOError::new_err(e.to_string()))?;
                &buffered[..buffered.len().min(limit)]
            }
        };
        Ok(window
            .iter()
            .position(|&b| b == b'\n')
            .map_or(window.len(), |i| i + 1))
    }
}

#[pymethods]
impl WsgiInput {
    /// Reads `size` bytes (all that remain when `size` is omitted or negative).
    #[pyo3(signature = (size = None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let n = self.clamp(size);
        self.take(py, n)
    }

    /// Reads one line, through its `\n`, or at most `size` bytes.
    #[pyo3(signature = (size = None))]
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<i64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut limit = self.clamp(size);
        let mut parts: Vec<Bound<'py, PyBytes>> = Vec::new();
        // A spooled line may span several buffer fills.
        loop {
            let n = self.line_length(limit)?;
            let part = self.take(py, n)?;
            let ends_line = part.as_bytes().last() == Some(&b'\n');
            limit -= n;
            if parts.is_empty() && (ends_line || limit == 0 || n == 0) {
                return Ok(part);
            }
            parts.push(part);
            if ends_line || limit == 0 || n == 0 {
                let joined: Vec<u8> = parts
                    .iter()
                    .flat_map(|p| p.as_bytes().iter().copied())
                    .collect();
                return Ok(PyBytes::new(py, &joined));
            }
        }
    }

    /// Reads lines until the end, or until about `hint` bytes have been read.
    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(
        &mut self,
        py: Python<'py>,
        hint: Option<i64>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let mut lines = Vec::new();
        let mut total = 0i64;
        loop {
            let line = self.readline(py, None)?;
            if line.as_bytes().is_empty() {
                return Ok(lines);
            }
            total += line.as_bytes().len() as i64;
            lines.push(line);
            if matches!(hint, Some(h) if h > 0 && total >= h) {
                return Ok(lines);
            }
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.readline(py, None)?;
        Ok((!line.as_bytes().is_empty()).then_some(line))
    }
}
