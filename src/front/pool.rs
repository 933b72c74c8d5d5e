//! The scheduler: which worker gets the next request.
//!
//! Each worker has a number of free slots (1 for a sync worker). A request takes a
//! [`Lease`] on the least-loaded worker with a free slot, or waits in a bounded FIFO
//! queue. Dropping the lease frees the slot (the channel drops it when the worker ends
//! the stream); a lease of a worker that has died frees nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::oneshot;

use super::channel::WorkerConn;

/// No worker could take the request: the queue is full or the server is stopping.
#[derive(Debug)]
pub struct Busy;

/// The workers known to the front tier and the requests waiting for one.
pub struct Pool {
    inner: Mutex<Inner>,
    max_queue: usize,
}

struct Slot {
    conn: Arc<WorkerConn>,
    free: usize,
}

#[derive(Default)]
struct Inner {
    workers: Vec<Slot>,
    waiters: VecDeque<oneshot::Sender<Lease>>,
    /// Every worker whose channel is open, retiring ones included (by the master's id),
    /// so that one timed out can be found.
    channels: HashMap<u32, Weak<WorkerConn>>,
}

impl Pool {
    /// An empty pool whose queue holds at most `max_queue` waiting requests.
    pub fn new(max_queue: usize) -> Arc<Pool> {
        Arc::new(Pool {
            inner: Mutex::new(Inner::default()),
            max_queue,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counts half-updated in a way
        // that matters more than stopping service, so poisoning is ignored.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A free slot on the least-loaded worker, waiting for one if all are busy.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, Busy> {
        let waiter = {
            let mut inner = self.lock();
            let best = inner
                .workers
                .iter_mut()
                .filter(|s| s.free > 0)
                .max_by_key(|s| s.free);
            if let Some(slot) = best {
                slot.free -= 1;
                return Ok(Lease {
                    pool: self.clone(),
                    conn: slot.conn.clone(),
                    armed: true,
                });
            }
            if inner.waiters.len() >= self.max_queue {
                return Err(Busy);
            }
            let (tx, rx) = oneshot::channel();
            inner.waiters.push_back(tx);
            rx
        };
        waiter.await.map_err(|_| Busy)
    }

    /// Adds a worker that has said Hello, with `capacity` slots.
    pub fn add(self: &Arc<Self>, conn: Arc<WorkerConn>, capacity: usize) {
        let mut inner = self.lock();
        inner.channels.insert(conn.id, Arc::downgrade(&conn));
        inner.workers.push(Slot {
            conn,
            free: capacity,
        });
        let index = inner.workers.len() - 1;
        self.hand_out(&mut inner, index);
    }

    /// Requests waiting for a free worker.
    pub fn queued(&self) -> usize {
        self.lock().waiters.len()
    }

    /// The workers taking requests: (the master's id, pid).
    pub fn workers(&self) -> Vec<(u32, u32)> {
        let inner = self.lock();
        inner
            .workers
            .iter()
            .map(|s| (s.conn.id, s.conn.pid))
            .collect()
    }

    /// How many workers take requests now (retiring ones excluded).
    pub fn ready_workers(&self) -> usize {
        self.lock().workers.len()
    }

    /// Takes a worker out of service (it is retiring): no new lease names it.
    pub fn remove(&self, id: u32) {
        self.lock().workers.retain(|slot| slot.conn.id != id);
    }

    /// Forgets a worker whose channel has closed.
    pub fn forget(&self, id: u32) {
        let mut inner = self.lock();
        inner.workers.retain(|slot| slot.conn.id != id);
        inner.channels.remove(&id);
    }

    /// The master timed out worker `id` (`pid`): takes it out of service and returns it,
    /// if its channel is still open, so that its requests can be answered.
    pub fn timed_out(&self, id: u32, pid: u32) -> Option<Arc<WorkerConn>> {
        let mut inner = self.lock();
        let conn = inner
            .channels
            .get(&id)
            .and_then(Weak::upgrade)
            .filter(|conn| conn.pid == pid)?;
        inner.workers.retain(|slot| slot.conn.id != id);
        Some(conn)
    }

    fn release(self: &Arc<Self>, conn: Arc<WorkerConn>) {
        let mut inner = self.lock();
        if let Some(index) = inner
            .workers
            .iter()
            .position(|s| Arc::ptr_eq(&s.conn, &conn))
        {
            inner.workers[index].free += 1;
            self.hand_out(&mut inner, index);
        }
    }

    /// Gives the free slots of worker `index` to waiting requests, oldest first.
    fn hand_out(self: &Arc<Self>, inner: &mut Inner, index: usize) {
        while inner.workers[index].free > 0 {
            let Some(waiter) = inner.waiters.pop_front() else {
                return;
            };
            let conn = inner.workers[index].conn.clone();
            inner.workers[index].free -= 1;
            if let Err(mut lease) = waiter.send(Lease {
                pool: self.clone(),
                conn,
                armed: true,
            }) {
                // That request gave up waiting: the slot stays free for the next one.
                lease.armed = false;
                inner.workers[index].free += 1;
            }
        }
    }
}

/// One slot of one worker, held from dispatch until the worker ends the stream.
pub struct Lease {
    pool: Arc<Pool>,
    conn: Arc<WorkerConn>,
    /// False once the slot has been accounted for elsewhere.
    armed: bool,
}

impl Lease {
    /// The worker this lease is on.
    pub fn conn(&self) -> &Arc<WorkerConn> {
        &self.conn
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.pool.release(self.conn.clone());
        }
    }
}
