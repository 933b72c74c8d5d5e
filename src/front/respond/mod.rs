//! What the front tier answers itself or transforms on the way back: static files,
//! internal redirects to them (`X-Accel-Redirect`), compression of app responses and
//! the content codings both choose from.

pub(super) mod compress;
mod encoding;
pub(super) mod sendfile;
pub(super) mod static_files;
