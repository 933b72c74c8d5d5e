//! Internal redirects: an app answers `X-Accel-Redirect: /protected/file` (nginx's way:
//! a URL path under an `--internal` or `--static` prefix) or `X-Sendfile: /abs/path`
//! (Apache's and lighttpd's way: a file inside one of those directories), and the front
//! tier sends that file itself, under the client's original request headers (so ranges
//! and conditionals apply).
//!
//! The app's own body is discarded at once, which frees its worker. The app's headers
//! are kept (Content-Type, Content-Disposition, Cache-Control, Set-Cookie…, as nginx
//! keeps them), except those that describe the discarded body; the file supplies those.
//!
//! With no `--static` or `--internal` directory configured the headers are left alone,
//! for a proxy in front of rwsgi to act on, as gunicorn leaves them.

use std::sync::Arc;

use hyper::header::{HeaderName, VARY};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Response, StatusCode};
use tracing::debug;

use super::static_files::Files;
use crate::front::conn::mapped::MappedFiles;
use crate::front::dispatch::body::ResponseBody;

const X_ACCEL_REDIRECT: HeaderName = HeaderName::from_static("x-accel-redirect");
const X_SENDFILE: HeaderName = HeaderName::from_static("x-sendfile");

/// A file an app's response points at.
pub enum Target {
    /// An X-Accel-Redirect URL path.
    Uri(String),
    /// An X-Sendfile file-system path.
    Path(Vec<u8>),
}

impl Target {
    /// The file the app's response headers point at, if the front tier serves it.
    /// X-Accel-Redirect wins over X-Sendfile.
    pub fn of(files: &Files, headers: &HeaderMap) -> Option<Target> {
        if !files.has_targets() {
            return None;
        }
        if let Some(uri) = headers.get(X_ACCEL_REDIRECT) {
            return Some(Target::Uri(
                String::from_utf8_lossy(uri.as_bytes()).trim().to_string(),
            ));
        }
        headers
            .get(X_SENDFILE)
            .map(|path| Target::Path(path.as_bytes().to_vec()))
    }

    /// Answers the client with the file, carrying over the app's other headers.
    pub fn serve(
        self,
        files: &Files,
        request: &Parts,
        app_response: Response<ResponseBody>,
        mapped: Option<&Arc<MappedFiles>>,
    ) -> Response<ResponseBody> {
        let (app, app_body) = app_response.into_parts();
        // Dropping the app's body tells its worker to stop; the slot is freed when the
        // worker ends the stream.
        drop(app_body);
        let mut response = match &self {
            Target::Uri(uri) => files.serve_internal_uri(uri, request, mapped),
            Target::Path(path) => files.serve_internal_path(path, request, mapped),
        };
        debug!(
            "internal redirect to {} answered {}",
            self.describe(),
            response.status()
        );
        if keeps_app_headers(response.status()) {
            merge_app_headers(response.headers_mut(), &app.headers);
        }
        response
    }

    fn describe(&self) -> String {
        match self {
            Target::Uri(uri) => format!("X-Accel-Redirect {uri:?}"),
            Target::Path(path) => format!("X-Sendfile {:?}", String::from_utf8_lossy(path)),
        }
    }
}

/// Answers that are about the file (not error pages of their own).
fn keeps_app_headers(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::OK
            | StatusCode::PARTIAL_CONTENT
            | StatusCode::NOT_MODIFIED
            | StatusCode::PRECONDITION_FAILED
            | StatusCode::RANGE_NOT_SATISFIABLE
    )
}

/// Headers of the app's that describe its own (discarded) body or ask for the redirect.
fn describes_app_body(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length"
            | "content-encoding"
            | "content-range"
            | "transfer-encoding"
            | "etag"
            | "last-modified"
            | "accept-ranges"
            | "x-sendfile"
    ) || name.as_str().starts_with("x-accel-")
}

/// The app's headers replace the file's of the same name; Vary values add up.
fn merge_app_headers(file: &mut HeaderMap, app: &HeaderMap) {
    for name in app.keys() {
        if !describes_app_body(name) && name != VARY {
            file.remove(name);
        }
    }
    for (name, value) in app {
        if !describes_app_body(name) {
            file.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn app_headers_carried_over() {
        let mut file = HeaderMap::new();
        file.insert("content-type", HeaderValue::from_static("application/pdf"));
        file.insert("content-length", HeaderValue::from_static("10"));
        file.insert("etag", HeaderValue::from_static("\"file\""));
        file.insert("vary", HeaderValue::from_static("Accept-Encoding"));
        let mut app = HeaderMap::new();
        app.insert(
            "content-type",
            HeaderValue::from_static("application/x-custom"),
        );
        app.insert("content-length", HeaderValue::from_static("0"));
        app.insert("etag", HeaderValue::from_static("\"app\""));
        app.insert("x-accel-redirect", HeaderValue::from_static("/p/x"));
        app.insert("x-accel-buffering", HeaderValue::from_static("no"));
        app.insert(
            "content-disposition",
            HeaderValue::from_static("attachment"),
        );
        app.append("set-cookie", HeaderValue::from_static("a=1"));
        app.append("set-cookie", HeaderValue::from_static("b=2"));
        app.insert("vary", HeaderValue::from_static("Cookie"));
        merge_app_headers(&mut file, &app);
        assert_eq!(file["content-type"], "application/x-custom");
        assert_eq!(file["content-length"], "10");
        assert_eq!(file["etag"], "\"file\"");
        assert_eq!(file["content-disposition"], "attachment");
        assert_eq!(file.get_all("set-cookie").iter().count(), 2);
        assert_eq!(file.get_all("vary").iter().count(), 2);
        assert!(!file.contains_key("x-accel-redirect"));
        assert!(!file.contains_key("x-accel-buffering"));
    }
}
