//! `--health-path`: the front tier answers it itself, for load balancers and
//! Kubernetes probes, without taking a worker's time: 200 while at least one worker
//! takes requests, 503 (with Retry-After) while none does or once the server is
//! stopping, so a balancer stops sending traffic before the connections close.

use std::sync::atomic::{AtomicBool, Ordering};

use hyper::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Response, StatusCode};

use crate::front::dispatch::body::ResponseBody;
use crate::front::dispatch::pool::Pool;

/// The health endpoint's path and the server's state.
pub struct Health {
    path: String,
    stopping: AtomicBool,
}

impl Health {
    pub fn new(path: String) -> Health {
        Health {
            path,
            stopping: AtomicBool::new(false),
        }
    }

    /// The server is stopping: from now on the answer is 503.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The answer to `parts`, if it asks for the health path.
    pub fn answer(
        &self,
        parts: &hyper::http::request::Parts,
        pool: &Pool,
    ) -> Option<Response<ResponseBody>> {
        if parts.uri.path() != self.path || !matches!(parts.method, Method::GET | Method::HEAD) {
            return None;
        }
        let (status, text) = if self.stopping.load(Ordering::Relaxed) {
            (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
        } else if pool.ready_workers() == 0 {
            (StatusCode::SERVICE_UNAVAILABLE, "no worker ready\n")
        } else {
            (StatusCode::OK, "ok\n")
        };
        let body = match parts.method {
            Method::HEAD => ResponseBody::empty(),
            _ => ResponseBody::full(text),
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status != StatusCode::OK {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        Some(response)
    }
}
