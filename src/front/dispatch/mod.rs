//! Getting a request to a worker and its answer back: the bodies the front tier holds
//! and their budgets, the scheduler, each worker's channel and the control socket that
//! brings them, the front tier's threads and the memory they give back.

pub(super) mod body;
pub(super) mod budget;
pub(super) mod channel;
pub(super) mod control;
pub(super) mod memory;
pub(super) mod pool;
pub(super) mod shard;
