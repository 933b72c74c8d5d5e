//! The one place that changes this process's environment: clippy.toml bans
//! `std::env::set_var` and `std::env::remove_var` everywhere else, so that every change
//! is made under the rule written here.
//!
//! Both are `unsafe` since edition 2024: libc's `setenv`/`unsetenv` may move or free the
//! strings a `getenv` in another thread is reading (Rust's own reads take a lock, C code
//! such as CPython, the resolver or OpenSSL does not). rwsgi changes its environment only
//! in the master, which never runs a thread (DESIGN.md), before it forks the children that
//! inherit the result. Never call these from the front tier (tokio's threads) or a worker
//! (the interpreter's).

use std::ffi::OsStr;

/// Sets `key` to `value` in this process, and so in every child it forks afterwards.
///
/// # Safety
/// No other thread may exist in the process: call it only from the master (or before
/// the master starts), never after a runtime or an interpreter has started threads.
#[allow(clippy::disallowed_methods)] // This module is their one home (see the module doc).
pub unsafe fn set(key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) {
    // SAFETY: the caller guarantees that this is the process's only thread.
    unsafe { std::env::set_var(key, value) }
}

/// Removes `key` from this process's environment, so that no child forked afterwards
/// sees it.
///
/// # Safety
/// As for [`set`]: no other thread may exist in the process.
#[allow(clippy::disallowed_methods)] // This module is their one home (see the module doc).
pub unsafe fn remove(key: impl AsRef<OsStr>) {
    // SAFETY: the caller guarantees that this is the process's only thread.
    unsafe { std::env::remove_var(key) }
}
