//! Building the WSGI `environ` (PEP 3333) from a request head.
//!
//! Constant entries are made once into a template dict that each request copies; keys
//! are interned; header keys (`HTTP_...`) are cached by header name.

use std::collections::HashMap;

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{ffi, intern};

use super::errors::ErrorStream;
use super::input::WsgiInput;
use super::response::FileWrapper;
use crate::protocol::{RequestHead, Scheme};

/// How many distinct header names are remembered (attacker-chosen names must not grow
/// the cache without bound).
const HEADER_KEY_CACHE: usize = 512;

/// A Python `str` of the bytes read as Latin-1, as PEP 3333 wants for native strings.
///
/// CPython's Latin-1 decoder makes an ASCII string (the common case) with one scan and
/// one copy, where going through UTF-8 would check the bytes twice first.
pub fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    // SAFETY: the pointer and length describe a live slice; Latin-1 decoding cannot
    // fail for any byte, so a null result only means out of memory.
    let raw = unsafe {
        ffi::PyUnicode_DecodeLatin1(
            bytes.as_ptr().cast(),
            bytes.len() as ffi::Py_ssize_t,
            std::ptr::null(),
        )
    };
    // SAFETY: a non-null result is a new reference to a str.
    match unsafe { Bound::from_owned_ptr_or_err(py, raw) } {
        Ok(obj) => obj
            .cast_into::<PyString>()
            .unwrap_or_else(|_| PyString::new(py, "")),
        Err(_) => PyString::new(py, ""),
    }
}

/// `REQUEST_METHOD`: the common methods as strings made once per worker, any other
/// made afresh.
fn method<'py>(py: Python<'py>, method: &[u8]) -> Bound<'py, PyString> {
    let known = match method {
        b"GET" => intern!(py, "GET"),
        b"POST" => intern!(py, "POST"),
        b"HEAD" => intern!(py, "HEAD"),
        b"PUT" => intern!(py, "PUT"),
        b"DELETE" => intern!(py, "DELETE"),
        b"PATCH" => intern!(py, "PATCH"),
        b"OPTIONS" => intern!(py, "OPTIONS"),
        _ => return PyString::intern(py, &String::from_utf8_lossy(method)),
    };
    known.clone()
}

/// A value that tends to repeat from one request to the next (the server's name and
/// port, the client's address): the last one's string is used again while the bytes
/// are the same. The bytes are copied: a slice would keep the whole buffer it was read
/// into alive.
#[derive(Default)]
struct Recent(Option<(Vec<u8>, Py<PyString>)>);

impl Recent {
    fn get<'py>(&mut self, py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
        if let Some((last, string)) = &self.0
            && last[..] == *bytes
        {
            return string.bind(py).clone();
        }
        let string = latin1(py, bytes);
        self.0 = Some((bytes.to_vec(), string.clone().unbind()));
        string
    }
}

/// Per-worker environ state: the template and the caches.
pub struct EnvironBuilder {
    template: Py<PyDict>,
    header_keys: HashMap<Bytes, Py<PyString>>,
    script_name: Vec<u8>,
    server_name: Recent,
    server_port: Recent,
    remote_addr: Recent,
}

impl EnvironBuilder {
    /// The template for a worker serving with `multiprocess` and `multithread` set so,
    /// for an application mounted at `script_name` (`--root-path`).
    pub fn new(
        py: Python<'_>,
        multiprocess: bool,
        multithread: bool,
        script_name: &str,
    ) -> PyResult<EnvironBuilder> {
        let template = PyDict::new(py);
        template.set_item(intern!(py, "wsgi.version"), PyTuple::new(py, [1, 0])?)?;
        template.set_item(intern!(py, "wsgi.multithread"), multithread)?;
        template.set_item(intern!(py, "wsgi.multiprocess"), multiprocess)?;
        template.set_item(intern!(py, "wsgi.run_once"), false)?;
        template.set_item(intern!(py, "wsgi.input_terminated"), true)?;
        template.set_item(intern!(py, "wsgi.errors"), Bound::new(py, ErrorStream)?)?;
        template.set_item(
            intern!(py, "wsgi.file_wrapper"),
            py.get_type::<FileWrapper>(),
        )?;
        template.set_item(
            intern!(py, "SERVER_SOFTWARE"),
            concat!("rwsgi/", env!("CARGO_PKG_VERSION")),
        )?;
        template.set_item(intern!(py, "SCRIPT_NAME"), script_name)?;
        // The keys every request sets, present already: a request then replaces their
        // values in a copy sized for them, rather than growing it as they arrive (a
        // rebuild of its table or two per request).
        for key in [
            intern!(py, "REQUEST_METHOD"),
            intern!(py, "SERVER_PROTOCOL"),
            intern!(py, "wsgi.url_scheme"),
            intern!(py, "RAW_URI"),
            intern!(py, "QUERY_STRING"),
            intern!(py, "PATH_INFO"),
            intern!(py, "REMOTE_ADDR"),
            intern!(py, "SERVER_NAME"),
            intern!(py, "SERVER_PORT"),
            intern!(py, "wsgi.input"),
        ] {
            template.set_item(key, intern!(py, ""))?;
        }
        Ok(EnvironBuilder {
            template: template.unbind(),
            header_keys: HashMap::new(),
            script_name: script_name.as_bytes().to_vec(),
            server_name: Recent::default(),
            server_port: Recent::default(),
            remote_addr: Recent::default(),
        })
    }

    /// A builder sharing this one's template, with a cache of its own.
    pub fn clone_ref(&self, py: Python<'_>) -> EnvironBuilder {
        EnvironBuilder {
            template: self.template.clone_ref(py),
            header_keys: HashMap::new(),
            script_name: self.script_name.clone(),
            server_name: Recent::default(),
            server_port: Recent::default(),
            remote_addr: Recent::default(),
        }
    }

    fn header_key<'py>(&mut self, py: Python<'py>, name: &Bytes) -> Bound<'py, PyString> {
        // The names of nearly every request, without hashing them.
        let common = match &name[..] {
            b"host" => Some(intern!(py, "HTTP_HOST")),
            b"user-agent" => Some(intern!(py, "HTTP_USER_AGENT")),
            b"accept" => Some(intern!(py, "HTTP_ACCEPT")),
            b"accept-encoding" => Some(intern!(py, "HTTP_ACCEPT_ENCODING")),
            b"accept-language" => Some(intern!(py, "HTTP_ACCEPT_LANGUAGE")),
            b"connection" => Some(intern!(py, "HTTP_CONNECTION")),
            b"cookie" => Some(intern!(py, "HTTP_COOKIE")),
            b"x-request-id" => Some(intern!(py, "HTTP_X_REQUEST_ID")),
            b"x-request-start" => Some(intern!(py, "HTTP_X_REQUEST_START")),
            b"x-forwarded-for" => Some(intern!(py, "HTTP_X_FORWARDED_FOR")),
            b"x-forwarded-proto" => Some(intern!(py, "HTTP_X_FORWARDED_PROTO")),
            _ => None,
        };
        if let Some(key) = common {
            return key.clone();
        }
        if let Some(key) = self.header_keys.get(name) {
            return key.bind(py).clone();
        }
        let mut key = String::with_capacity(name.len() + 5);
        key.push_str("HTTP_");
        key.extend(name.iter().map(|&b| {
            if b == b'-' {
                '_'
            } else {
                (b as char).to_ascii_uppercase()
            }
        }));
        let key = PyString::intern(py, &key);
        if self.header_keys.len() < HEADER_KEY_CACHE {
            // A copy: the name is a slice of the buffer its request was read into, which
            // it would keep alive for the worker's life.
            let name = Bytes::copy_from_slice(name);
            self.header_keys.insert(name, key.clone().unbind());
        }
        key
    }

    /// The environ for one request.
    pub fn build<'py>(
        &mut self,
        py: Python<'py>,
        head: &RequestHead,
        input: WsgiInput,
    ) -> PyResult<Bound<'py, PyDict>> {
        let environ = self.template.bind(py).copy()?;
        environ.set_item(intern!(py, "REQUEST_METHOD"), method(py, &head.method))?;
        let protocol = match head.protocol() {
            "HTTP/1.1" => intern!(py, "HTTP/1.1").clone(),
            "HTTP/2" => intern!(py, "HTTP/2").clone(),
            other => PyString::intern(py, other),
        };
        environ.set_item(intern!(py, "SERVER_PROTOCOL"), protocol)?;
        let scheme = match head.scheme {
            Scheme::Http => intern!(py, "http"),
            Scheme::Https => intern!(py, "https"),
        };
        environ.set_item(intern!(py, "wsgi.url_scheme"), scheme)?;
        if head.scheme == Scheme::Https {
            // As Apache's mod_ssl and nginx's fastcgi_params: frameworks look for it.
            environ.set_item(intern!(py, "HTTPS"), intern!(py, "on"))?;
        }
        environ.set_item(intern!(py, "RAW_URI"), latin1(py, &head.raw_uri))?;
        environ.set_item(intern!(py, "QUERY_STRING"), latin1(py, &head.query))?;
        // PATH_INFO is the path below SCRIPT_NAME, percent-decoded to bytes and carried
        // as Latin-1 (PEP 3333: "native strings" hold bytes one to one).
        let path = match head.path.strip_prefix(&self.script_name[..]) {
            Some(rest)
                if !self.script_name.is_empty() && (rest.is_empty() || rest.starts_with(b"/")) =>
            {
                rest
            }
            _ => &head.path[..],
        };
        let decoded: std::borrow::Cow<'_, [u8]> = percent_encoding::percent_decode(path).into();
        environ.set_item(intern!(py, "PATH_INFO"), latin1(py, &decoded))?;
        let remote_addr = self.remote_addr.get(py, &head.remote_addr);
        environ.set_item(intern!(py, "REMOTE_ADDR"), remote_addr)?;
        if let Some(port) = head.remote_port {
            let port = PyString::new(py, itoa::Buffer::new().format(port));
            environ.set_item(intern!(py, "REMOTE_PORT"), port)?;
        }
        let (mut server_name, mut server_port) = (
            self.server_name.get(py, &head.server_name),
            self.server_port.get(py, &head.server_port),
        );
        for (name, value) in &head.headers {
            let key = match &name[..] {
                b"content-type" => intern!(py, "CONTENT_TYPE").clone(),
                b"content-length" => intern!(py, "CONTENT_LENGTH").clone(),
                // An underscore would let "X_Forwarded_For" pose as "X-Forwarded-For".
                n if n.contains(&b'_') => continue,
                _ => self.header_key(py, name),
            };
            if &name[..] == b"host" && head.remote_port.is_none() {
                // A Unix socket has no port of its own: the Host header names the server.
                let host = String::from_utf8_lossy(value);
                let (name, port) = split_host(&host, head.scheme.as_str());
                server_name = PyString::new(py, name);
                server_port = PyString::new(py, &port);
            }
            let value = latin1(py, value);
            match environ.get_item(&key)? {
                Some(previous) => {
                    let separator = if &name[..] == b"cookie" { "; " } else { "," };
                    let joined = format!(
                        "{}{separator}{}",
                        previous.extract::<&str>()?,
                        value.to_str()?
                    );
                    environ.set_item(&key, joined)?;
                }
                None => environ.set_item(&key, value)?,
            }
        }
        environ.set_item(intern!(py, "SERVER_NAME"), server_name)?;
        environ.set_item(intern!(py, "SERVER_PORT"), server_port)?;
        environ.set_item(intern!(py, "wsgi.input"), Bound::new(py, input)?)?;
        Ok(environ)
    }
}

/// Splits a Host header into name and port, with the scheme's default port.
fn split_host<'a>(host: &'a str, scheme: &str) -> (&'a str, String) {
    let default = if scheme == "https" { "443" } else { "80" };
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        if let Some((addr, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').unwrap_or(default);
            return (&host[..addr.len() + 2], port.to_string());
        }
    }
    match host.rsplit_once(':') {
        Some((name, port)) => (name, port.to_string()),
        None => (host, default.to_string()),
    }
}
