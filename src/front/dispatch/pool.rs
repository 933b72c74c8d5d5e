//! The scheduler: which worker gets the next request.
//!
//! Each worker has a number of free slots (1 for a sync worker). A request takes a
//! [`Lease`] on the least-loaded worker with a free slot, or waits in a bounded FIFO
//! queue. Dropping the lease frees the slot (the channel drops it when the worker ends
//! the stream); a lease of a worker that has died frees nothing.
//!
//! Prefetch (`--prefetch N`): when every worker is busy, a sync worker whose requests
//! are short may be given up to N more, queued on its channel behind the one it runs.
//! It then goes from one request to the next without sleeping in between, and the front
//! tier writes to a worker that is awake: both save a wake-up per request, which is
//! most of what a short request costs. Only short requests qualify, so that a request
//! queued in a worker waits about as long as it would have in the front tier's queue:
//! the worker's recent requests times the ones queued must stay under
//! [`PREFETCH_BUDGET`], as must the time the current one has run so far. A sync worker
//! serves its requests in order, so when it dies, the ones it had not started yet are
//! given back and go to another worker (see `channel`).
//!
//! Each worker's channel is read by one of the front tier's shards (threads), and each
//! request is served by one. Between equally loaded workers, a request takes one of its
//! own shard; a freed slot goes to the oldest waiting request of the worker's shard,
//! else to the oldest of any other. So the common path stays on one thread, and no
//! worker idles while any request waits.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::channel::WorkerConn;
use super::shard;

/// No worker could take the request: the queue is full or the server is stopping.
#[derive(Debug)]
pub struct Busy;

/// The workers known to the front tier and the requests waiting for one.
pub struct Pool {
    inner: Mutex<Inner>,
    max_queue: usize,
    /// `--queue-timeout`: how long a request may wait for a worker.
    queue_timeout: Duration,
    /// `--prefetch`: requests a sync worker may hold queued behind the one it runs.
    prefetch: usize,
}

/// A request waiting for a worker: when it began waiting (in queue order), until when
/// it may, and where to send its lease.
struct Waiter {
    since: u64,
    until: Instant,
    lease: oneshot::Sender<Lease>,
}

struct Slot {
    conn: Arc<WorkerConn>,
    free: usize,
    /// For a sync worker with `--prefetch`: requests queued on it beyond its one slot,
    /// and how long its requests take.
    prefetch: Option<Prefetch>,
}

impl Slot {
    /// Whether the worker may be given one more request now, beyond its slots.
    fn may_prefetch(&self, now: Instant) -> bool {
        self.free == 0
            && self.prefetch.as_ref().is_some_and(|prefetch| {
                prefetch.queued < prefetch.depth && prefetch.pace.allows(prefetch.queued + 1, now)
            })
    }
}

/// Prefetch accounting of one sync worker.
struct Prefetch {
    /// The most requests it may hold beyond the one it runs (`--prefetch`).
    depth: usize,
    /// Requests it holds beyond the one it runs.
    queued: usize,
    pace: Pace,
}

/// A sync worker's pace: how long its requests take, as the front tier sees them end.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// When the request it runs now began (was dispatched to it idle, or the one before
    /// it ended).
    since: Instant,
    /// A moving average of its requests' times, in nanoseconds; starts at
    /// [`PREFETCH_BUDGET`], so that a new worker earns prefetch by serving short
    /// requests first.
    average: u64,
}

/// How often, at most, [`Pool::reap`] looks for requests that waited too long: a
/// request is turned away this much after its `--queue-timeout` at most.
const REAP_EVERY: Duration = Duration::from_millis(100);

/// How long a request may expect to wait queued in a worker (prefetch): about the
/// time one request spends in the front tier's queue when the workers are that busy.
pub const PREFETCH_BUDGET: Duration = Duration::from_millis(1);

impl Pace {
    fn new(now: Instant) -> Pace {
        Pace {
            since: now,
            average: PREFETCH_BUDGET.as_nanos() as u64,
        }
    }

    /// Whether `queued` requests behind the current one stay within the budget: the
    /// current one has not run long, and `queued` requests of the average time are
    /// short enough.
    fn allows(&self, queued: usize, now: Instant) -> bool {
        let budget = PREFETCH_BUDGET.as_nanos() as u64;
        // The average first: it needs no clock arithmetic.
        self.average.saturating_mul(queued as u64) < budget
            && now.saturating_duration_since(self.since) < PREFETCH_BUDGET
    }

    /// A request ended at `now`; the next one (if any) begins.
    fn ended(&mut self, now: Instant) {
        let took = now.saturating_duration_since(self.since).as_nanos();
        let took = u64::try_from(took).unwrap_or(u64::MAX);
        // An eighth of the new time: a slow request counts at once, a run of short
        // ones brings the average down within a few dozen requests.
        self.average = self.average - self.average / 8 + took / 8;
        self.since = now;
    }
}

struct Inner {
    workers: Vec<Slot>,
    /// Each shard's waiting requests, oldest first.
    waiters: Vec<VecDeque<Waiter>>,
    /// Requests ever queued: orders waiters across shards.
    queued_ever: u64,
    /// Every worker whose channel is open, retiring ones included (by the master's id),
    /// so that one timed out can be found.
    channels: HashMap<u32, Weak<WorkerConn>>,
    /// Channels each shard reads.
    channels_per_shard: Vec<usize>,
}

impl Inner {
    fn waiting(&self) -> usize {
        self.waiters.iter().map(VecDeque::len).sum()
    }

    /// The oldest waiter of shard `first`, else the oldest of all.
    fn next_waiter(&mut self, first: usize) -> Option<Waiter> {
        if let Some(waiter) = self.waiters.get_mut(first).and_then(VecDeque::pop_front) {
            return Some(waiter);
        }
        let oldest = self
            .waiters
            .iter()
            .enumerate()
            .filter_map(|(shard, queue)| queue.front().map(|w| (w.since, shard)))
            .min()?
            .1;
        self.waiters[oldest].pop_front()
    }
}

impl Pool {
    /// An empty pool for `shards` shards, whose queue holds at most `max_queue` waiting
    /// requests; a sync worker may hold `prefetch` more (see the module's text).
    pub fn new(
        max_queue: usize,
        queue_timeout: Duration,
        shards: usize,
        prefetch: usize,
    ) -> Arc<Pool> {
        let shards = shards.max(1);
        Arc::new(Pool {
            inner: Mutex::new(Inner {
                workers: Vec::new(),
                waiters: (0..shards).map(|_| VecDeque::new()).collect(),
                queued_ever: 0,
                channels: HashMap::new(),
                channels_per_shard: vec![0; shards],
            }),
            max_queue,
            queue_timeout,
            prefetch,
        })
    }

    /// Turns away requests that have waited `--queue-timeout` for a worker (their
    /// [`Pool::acquire`] fails: 503), looking every [`REAP_EVERY`] at most. One task
    /// for the whole queue rather than a timer per waiting request: under load most
    /// requests wait a moment, and a timer each was set and cancelled per request.
    pub async fn reap(self: Arc<Self>) {
        let every = (self.queue_timeout / 10).clamp(Duration::from_millis(1), REAP_EVERY);
        loop {
            tokio::time::sleep(every).await;
            let now = Instant::now();
            let mut inner = self.lock();
            for queue in &mut inner.waiters {
                // Oldest first, and all wait as long: the expired are at the front.
                while queue.front().is_some_and(|waiter| waiter.until <= now) {
                    // Dropping its sender tells the request.
                    queue.pop_front();
                }
            }
        }
    }

    /// The shard that is to read a new worker's channel: the one reading the fewest.
    pub fn assign_shard(&self) -> usize {
        let mut inner = self.lock();
        let shard = (0..inner.channels_per_shard.len())
            .min_by_key(|&shard| inner.channels_per_shard[shard])
            .unwrap_or(0);
        if let Some(count) = inner.channels_per_shard.get_mut(shard) {
            *count += 1;
        }
        shard
    }

    /// A channel of `shard` (from [`Pool::assign_shard`]) closed or never opened.
    pub fn unassign_shard(&self, shard: usize) {
        if let Some(count) = self.lock().channels_per_shard.get_mut(shard) {
            *count = count.saturating_sub(1);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counts half-updated in a way
        // that matters more than stopping service, so poisoning is ignored.
        crate::lock::lock(&self.inner)
    }

    /// A free slot on the least-loaded worker, or one that may prefetch, if any. Among
    /// the least loaded, one still awake goes first: it needs no doorbell (a system call
    /// and a wake-up), and the others sleep on while the load is light.
    fn take_best(self: &Arc<Self>, inner: &mut Inner, here: usize) -> Option<Lease> {
        let best = inner
            .workers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.free > 0)
            .max_by_key(|(_, s)| (s.free, !s.conn.asleep(), s.conn.shard == here))
            .map(|(index, _)| index);
        let now = Instant::now();
        let best = best.or_else(|| {
            inner
                .workers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.may_prefetch(now))
                .min_by_key(|(_, s)| (s.prefetch.as_ref().map(|p| p.queued), s.conn.shard != here))
                .map(|(index, _)| index)
        });
        best.map(|index| self.take(&mut inner.workers[index], now))
    }

    /// A free slot on the least-loaded worker, waiting for one if all are busy, for
    /// `--queue-timeout` at most (see [`Pool::reap`]).
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, Busy> {
        let here = shard::current();
        let waiter = {
            let mut inner = self.lock();
            if let Some(lease) = self.take_best(&mut inner, here) {
                return Ok(lease);
            }
            if inner.waiting() >= self.max_queue {
                return Err(Busy);
            }
            let (tx, rx) = oneshot::channel();
            let since = inner.queued_ever;
            inner.queued_ever += 1;
            let shard = here.min(inner.waiters.len() - 1);
            let until = Instant::now() + self.queue_timeout;
            inner.waiters[shard].push_back(Waiter {
                since,
                until,
                lease: tx,
            });
            rx
        };
        waiter.await.map_err(|_| Busy)
    }

    /// Adds a worker that has said Hello, with `capacity` slots.
    pub fn add(self: &Arc<Self>, conn: Arc<WorkerConn>, capacity: usize) {
        let mut inner = self.lock();
        inner.channels.insert(conn.id, Arc::downgrade(&conn));
        // A worker of one slot serves its requests one at a time, in order: a sync
        // worker, which alone may prefetch.
        let prefetch = (capacity == 1 && self.prefetch > 0).then(|| Prefetch {
            depth: self.prefetch,
            queued: 0,
            pace: Pace::new(Instant::now()),
        });
        inner.workers.push(Slot {
            conn,
            free: capacity,
            prefetch,
        });
        let index = inner.workers.len() - 1;
        self.hand_out(&mut inner, index, Instant::now());
    }

    /// Requests waiting for a free worker.
    pub fn queued(&self) -> usize {
        self.lock().waiting()
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

    /// Every worker whose channel is open, retiring ones included.
    pub fn channels(&self) -> Vec<Arc<WorkerConn>> {
        self.lock()
            .channels
            .values()
            .filter_map(Weak::upgrade)
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

    /// Forgets a worker whose channel (read by `shard`) has closed.
    pub fn forget(&self, id: u32, shard: usize) {
        let mut inner = self.lock();
        inner.workers.retain(|slot| slot.conn.id != id);
        inner.channels.remove(&id);
        if let Some(count) = inner.channels_per_shard.get_mut(shard) {
            *count = count.saturating_sub(1);
        }
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
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(index) = inner
            .workers
            .iter()
            .position(|s| Arc::ptr_eq(&s.conn, &conn))
        {
            let slot = &mut inner.workers[index];
            match &mut slot.prefetch {
                Some(prefetch) => {
                    prefetch.pace.ended(now);
                    match prefetch.queued {
                        0 => slot.free += 1,
                        _ => prefetch.queued -= 1,
                    }
                }
                None => slot.free += 1,
            }
            self.hand_out(&mut inner, index, now);
        }
    }

    /// Takes a slot of `slot`'s worker, or a place in its prefetch queue if it has no
    /// free slot (the caller checked that it may).
    fn take(self: &Arc<Self>, slot: &mut Slot, now: Instant) -> Lease {
        match (&mut slot.prefetch, slot.free) {
            (Some(prefetch), 0) => prefetch.queued += 1,
            (Some(prefetch), _) => {
                // An idle worker begins a request now.
                prefetch.pace.since = now;
                slot.free -= 1;
            }
            (None, _) => slot.free -= 1,
        }
        Lease {
            pool: self.clone(),
            conn: slot.conn.clone(),
            armed: true,
        }
    }

    /// Gives back what [`Pool::take`] took, for a request that gave up waiting.
    fn untake(slot: &mut Slot) {
        match &mut slot.prefetch {
            Some(prefetch) if prefetch.queued > 0 => prefetch.queued -= 1,
            _ => slot.free += 1,
        }
    }

    /// Gives the free slots of worker `index` to waiting requests: its own shard's
    /// first, oldest first.
    fn hand_out(self: &Arc<Self>, inner: &mut Inner, index: usize, now: Instant) {
        let shard = inner.workers[index].conn.shard;
        loop {
            let slot = &inner.workers[index];
            if slot.free == 0 && !slot.may_prefetch(now) {
                return;
            }
            let Some(waiter) = inner.next_waiter(shard) else {
                return;
            };
            let lease = self.take(&mut inner.workers[index], now);
            if let Err(mut lease) = waiter.lease.send(lease) {
                // That request gave up waiting: the slot stays free for the next one.
                lease.armed = false;
                Self::untake(&mut inner.workers[index]);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A pace after `count` requests of `each`, ending at the returned instant.
    fn after(count: u32, each: Duration) -> (Pace, Instant) {
        let start = Instant::now();
        let mut pace = Pace::new(start);
        let mut now = start;
        for _ in 0..count {
            now += each;
            pace.ended(now);
        }
        (pace, now)
    }

    /// A worker with one slot and rings, and the rings (its end too, in this test).
    fn ringed_worker(pool: &Arc<Pool>, id: u32) -> Arc<crate::protocol::ring::RingMap> {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let socket = Arc::new(tokio::net::UnixStream::from_std(ours).unwrap());
        let (rings, _fd) = crate::protocol::ring::RingMap::create(4096).unwrap();
        let rings = Arc::new(rings);
        let conn = WorkerConn::new(id, 4000 + id, 0, true, socket, Some(rings.clone()));
        pool.add(conn, 1);
        rings
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_free_worker_still_awake_gets_the_request_before_a_sleeping_one() {
        let pool = Pool::new(16, Duration::from_secs(1), 1, 0);
        let first = ringed_worker(&pool, 1);
        let second = ringed_worker(&pool, 2);
        for (asleep, awake, id) in [(&first, &second, 2), (&second, &first, 1)] {
            assert!(asleep.to_worker().park().unwrap());
            awake.to_worker().unpark();
            let lease = pool.acquire().await.unwrap_or_else(|_| panic!("no lease"));
            assert_eq!(lease.conn().id, id);
            // The sleeping one takes what the awake one cannot.
            let other = pool.acquire().await.unwrap_or_else(|_| panic!("no lease"));
            assert_eq!(other.conn().id, 3 - id);
        }
    }

    #[test]
    fn a_new_worker_gets_no_prefetch_until_it_has_served_short_requests() {
        let now = Instant::now();
        assert!(!Pace::new(now).allows(1, now));
        let (pace, now) = after(30, Duration::from_micros(20));
        assert!(pace.allows(1, now));
        assert!(pace.allows(7, now));
    }

    #[test]
    fn the_queue_stays_within_the_budget() {
        // About 200 µs a request: four fit in a millisecond, five do not.
        let (pace, now) = after(100, Duration::from_micros(200));
        assert!(pace.allows(4, now));
        assert!(!pace.allows(5, now));
    }

    #[test]
    fn nothing_is_queued_behind_a_request_that_has_run_past_the_budget() {
        let (pace, now) = after(30, Duration::from_micros(20));
        assert!(pace.allows(1, now + Duration::from_micros(900)));
        assert!(!pace.allows(1, now + PREFETCH_BUDGET));
    }

    #[test]
    fn one_slow_request_stops_prefetch_at_once() {
        let (mut pace, now) = after(30, Duration::from_micros(20));
        let now = now + Duration::from_millis(50);
        pace.ended(now);
        assert!(!pace.allows(1, now));
        // ... until enough short ones have followed.
        let mut later = now;
        let mut short = 0;
        while !pace.allows(1, later) {
            later += Duration::from_micros(20);
            pace.ended(later);
            short += 1;
        }
        assert!((10..100).contains(&short), "{short}");
    }
}
