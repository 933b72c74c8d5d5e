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
