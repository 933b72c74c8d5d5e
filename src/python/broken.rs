//! `--reload` only: an application that does not import is replaced, in its worker, by
//! one that answers every request with a 500 page showing the traceback, so the
//! developer sees the error in the browser; the next saved change starts a new worker.
//! Never in production: there a traceback is for the error log, not for clients.

use pyo3::prelude::*;
use pyo3::types::PyCFunction;

/// A WSGI application answering 500 with `traceback` on an HTML page.
pub fn application<'py>(
    py: Python<'py>,
    what: &str,
    traceback: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let page = page(what, traceback).into_bytes();
    let length = page.len().to_string();
    let app = PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
        let py = args.py();
        let start_response = args.get_item(1)?;
        let headers = vec![
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", length.as_str()),
            ("Cache-Control", "no-store"),
        ];
        start_response.call1(("500 Internal Server Error", headers))?;
        Ok::<_, PyErr>(vec![pyo3::types::PyBytes::new(py, &page).unbind()])
    })?;
    Ok(app.into_any())
}

fn page(what: &str, traceback: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>rwsgi: the application \
         failed to load</title>\n<style>body{{font-family:sans-serif;margin:2em}}\
         pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head>\n<body>\n\
         <h1>The application failed to load</h1>\n<p>{}</p>\n<pre>{}</pre>\n\
         <p>rwsgi --reload starts it again when you save a change.</p>\n</body></html>\n",
        escape(what),
        escape(traceback)
    )
}

/// HTML-escapes text for an element's content or an attribute.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::page;

    #[test]
    fn the_traceback_is_escaped() {
        let html = page("loading \"app\"", "File \"<x>\", line 1\n  a < b & c");
        assert!(html.contains("File &quot;&lt;x&gt;&quot;, line 1\n  a &lt; b &amp; c"));
        assert!(html.contains("loading &quot;app&quot;"));
        assert!(!html.contains("<x>"));
    }
}
