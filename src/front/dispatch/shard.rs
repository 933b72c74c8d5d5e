//! The front tier's threads: one single-threaded runtime each (`--front-threads`).
//!
//! Each shard accepts connections on every listener and serves them to the end, and
//! each worker's channel is read by one shard. A request goes to a worker of its own
//! shard when one is free, so that the common path never crosses threads: no
//! cross-thread wake-ups, no work stealing, no lock held by another core. A request
//! may still go to any worker (one of another shard that is free, or the first to free
//! up); the pool keeps that fair.
//!
//! Shard 0 runs on the process's main thread and also does the tier's housekeeping
//! (signals, the control socket, metrics, TLS reloads).

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::oneshot;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The shard the calling thread runs (0 outside any shard's thread).
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// The runtimes of the shards other than the main thread's, each on its own thread.
pub struct Shards {
    handles: Vec<Handle>,
    threads: Vec<(JoinHandle<()>, oneshot::Sender<()>)>,
}

/// A runtime for one shard: single-threaded, with I/O and timers.
pub fn runtime() -> std::io::Result<Runtime> {
    Builder::new_current_thread().enable_all().build()
}

impl Shards {
    /// Starts shards 1..`count`; `main` is shard 0's handle.
    pub fn start(count: usize, main: Handle) -> std::io::Result<Shards> {
        let mut shards = Shards {
            handles: vec![main],
            threads: Vec::new(),
        };
        for index in 1..count {
            let runtime = runtime()?;
            shards.handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("rwsgi-front-{index}"))
                .spawn(move || {
                    CURRENT.with(|current| current.set(index));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    runtime.shutdown_timeout(Duration::from_millis(100));
                })?;
            shards.threads.push((thread, stop));
        }
        Ok(shards)
    }

    /// Every shard's runtime, shard 0 first.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// How many shards there are.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Stops the other shards, dropping whatever they still run, and waits for them.
    pub fn stop(self) {
        for (thread, stop) in self.threads {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// How many more connections than the least-loaded shard a shard may hold before it
/// hands new ones to that shard.
const SPREAD_SLACK: usize = 2;

/// The open connections of each shard, so that the shards share them out evenly.
///
/// Every shard waits on the same listeners and whichever wakes first accepts: a burst
/// of connections (a load balancer's pool, a benchmark's, a browser's six) would all go
/// to one shard, which would then do every request's work while the others idle, and
/// send requests to the others' workers across threads. A shard holding more than its
/// share hands what it accepts to the least-loaded shard instead (one wake-up of that
/// shard, and the connection moves from one reactor to the other): never a wait, and
/// nothing at all while the shards are even.
pub struct Spread {
    open: Box<[AtomicUsize]>,
    handles: Vec<Handle>,
}

/// One connection's place in its shard's count, given back when it is dropped.
pub struct SpreadSlot {
    spread: Arc<Spread>,
    shard: usize,
}

impl Spread {
    /// For the shards of `handles`, shard 0 first.
    pub fn new(handles: &[Handle]) -> Arc<Spread> {
        Arc::new(Spread {
            open: handles.iter().map(|_| AtomicUsize::new(0)).collect(),
            handles: handles.to_vec(),
        })
    }

    /// The connections each shard holds, shard 0 first.
    pub fn open(&self) -> impl Iterator<Item = usize> + '_ {
        self.open.iter().map(|n| n.load(Ordering::Relaxed))
    }

    /// Where a connection the calling shard has just accepted should be served: the
    /// least-loaded shard's runtime when the calling shard holds more than that one
    /// plus [`SPREAD_SLACK`], else `None` (here). Its place is counted there at once,
    /// so that a burst is shared out rather than all handed to one shard.
    pub fn place(self: &Arc<Spread>) -> (Option<&Handle>, SpreadSlot) {
        let here = current();
        let count = |shard: usize| {
            self.open
                .get(shard)
                .map_or(0, |n| n.load(Ordering::Relaxed))
        };
        let least = (0..self.open.len()).min_by_key(|&shard| count(shard));
        let shard = match least {
            Some(least) if count(here) > count(least) + SPREAD_SLACK => least,
            _ => here,
        };
        if let Some(open) = self.open.get(shard) {
            open.fetch_add(1, Ordering::Relaxed);
        }
        let slot = SpreadSlot {
            spread: self.clone(),
            shard,
        };
        let elsewhere = (shard != here).then(|| self.handles.get(shard)).flatten();
        (elsewhere, slot)
    }
}

impl Drop for SpreadSlot {
    fn drop(&mut self) {
        if let Some(open) = self.spread.open.get(self.shard) {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
