//! Locks that outlive a panic.
//!
//! A thread that panics while holding a `Mutex` poisons it. rwsgi's shared state
//! (counts, queues, maps) is kept consistent at every point where code could panic,
//! and the process must carry on serving when a panic has been caught elsewhere, so
//! every lock in the crate is taken through [`lock`], which ignores poisoning.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, poisoned or not.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `condvar` with `guard`, poisoned or not.
pub fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(PoisonError::into_inner)
}
