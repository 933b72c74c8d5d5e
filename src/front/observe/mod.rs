//! What the front tier tells about the requests it serves: the access log, the
//! Prometheus metrics, the `--health-path` answer, the request id and the time a
//! request arrived (`X-Request-Start`).

pub(super) mod access_log;
pub(super) mod health;
pub(super) mod metrics;
pub(super) mod request_id;
pub(super) mod request_start;
