//! The front tier's memory goes back to the system once connections have left.
//!
//! mimalloc (the allocator of every process, see `main.rs`) returns the pages freed by
//! a thread only when that thread next calls into it after the purge delay: a front
//! tier that goes quiet after a burst of connections kept hundreds of MiB for as long
//! as it stayed quiet. Every shard therefore asks it to collect once a second. And the
//! front tier runs without transparent huge pages: with them one connection's few
//! kilobytes pinned a 2 MiB page, and idle connections cost 1.5x what they hold.
//!
//! Nothing here may run in the master (no threads there, and its memory is the
//! workers' too); it is started inside the front tier's runtimes.

use std::sync::Arc;
use std::time::Duration;

use super::budget::Budget;
use super::shard::Shards;

/// How often each shard lets the allocator return what it freed.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Turns transparent huge pages off for this process.
pub fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only this process's
    // memory policy; a failure (an old kernel) leaves huge pages on, nothing worse.
    let disabled = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if disabled != 0 {
        tracing::debug!("cannot turn transparent huge pages off for the front tier");
    }
}

/// Starts a collector on every shard. `bodies` is the front tier's budget of bodies
/// held in memory: while it is empty (a burst of slow clients is gone) the collect is
/// forced, so pages a thread emptied go back at once; under load it runs at most once
/// a second and costs next to nothing.
pub fn start(shards: &Shards, bodies: Arc<Budget>) {
    for shard in shards.handles() {
        let bodies = bodies.clone();
        shard.spawn(async move {
            let mut every = tokio::time::interval(COLLECT_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                // SAFETY: mi_collect only walks the calling thread's own heap; it has
                // no precondition.
                unsafe { libmimalloc_sys::mi_collect(bodies.used() == 0) };
            }
        });
    }
}
