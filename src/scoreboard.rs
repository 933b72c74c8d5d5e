//! Memory shared by the master and every child it forks, for the facts that must be
//! agreed on across processes without a message (DESIGN.md §7):
//!
//! - which worker reports a failed application import (so its traceback is printed
//!   once, not once per worker);
//! - one [`Slot`] per worker: its pid, when it last showed a sign of life on the
//!   request it is serving, and how many requests it has served. The master reads the
//!   slots to abort a worker silent past `--timeout`; the front tier reads them to tell
//!   a timed-out worker from one that crashed.
//! - for a gthread worker, one [`Stamp`] per thread: the stream it serves and its last
//!   sign of life on it. The master times out one stream at a time; the front tier
//!   reads which streams to answer 504. The stamps are kept apart from the slots, so
//!   that a scan of the slots touches few pages.
//!
//! The memory is mapped `MAP_SHARED | MAP_ANONYMOUS` before the first fork, so every
//! child sees the same pages; each fact is an atomic. It must never hold a pointer or
//! anything else that means something in one process only.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};

/// The most workers (`--workers`, TTIN): the scoreboard has a slot for twice as many.
pub const MAX_WORKERS: usize = 1024;

/// The most threads a gthread worker may run: the scoreboard keeps one stamp per
/// thread, so it has room for this many per worker.
pub const MAX_THREADS: usize = 256;

/// Worker slots: twice the most workers, so that a slot freed by a dead worker is not
/// handed out again for a long while (slots are given round the ring) and so that
/// workers started while others retire always find one.
pub const SLOTS: usize = 2 * MAX_WORKERS;

/// The layout of the shared memory.
#[repr(C)]
struct Shared {
    /// 0; then [`CLAIMED`] once a process took on reporting an application import
    /// failure; then [`REPORTED`] once it has.
    boot_error_reported: AtomicU32,
    /// Workers the master has replaced (for the front tier's metrics).
    worker_restarts: AtomicU64,
    slots: [Slot; SLOTS],
    /// Each slot's thread stamps (gthread workers only).
    stamps: [[Stamp; MAX_THREADS]; SLOTS],
}

/// One thread of a gthread worker: only the thread writes it, except for the master's
/// one compare-exchange of `active` to [`ABORTED`].
#[repr(C)]
pub struct Stamp {
    /// As [`Slot::active`], for this thread's request.
    active: AtomicU64,
    /// The stream of that request (written before `active`).
    stream: AtomicU32,
}

/// One worker's entry. Only its worker writes `active` (and `served`), except for the
/// master's one compare-exchange to [`ABORTED`]; the master alone writes `pid`.
#[repr(C)]
pub struct Slot {
    /// The worker's pid; 0 for a slot never used.
    pid: AtomicU32,
    /// 0: idle. Otherwise the CLOCK_MONOTONIC time in nanoseconds (the same clock in
    /// every process) of the worker's last sign of life on its current request: taking
    /// it, or sending a piece of its response. [`ABORTED`] once the master timed it out.
    active: AtomicU64,
    /// Requests the worker has finished.
    served: AtomicU64,
}

/// `Slot::active` of a worker the master has timed out: it must never serve again.
const ABORTED: u64 = u64::MAX;

const CLAIMED: u32 = 1;
const REPORTED: u32 = 2;

struct Board(NonNull<Shared>);

// SAFETY: the page is only reached through atomics, and it is never unmapped (it lives
// as long as the process).
unsafe impl Send for Board {}
// SAFETY: as for Send: every access to the shared page is atomic.
unsafe impl Sync for Board {}

static BOARD: OnceLock<Board> = OnceLock::new();

/// Maps the shared memory. Called by the master before its first fork; a failure means
/// every worker prints its own boot traceback and `--timeout` cannot work.
pub fn create() -> nix::Result<()> {
    if BOARD.get().is_some() {
        return Ok(());
    }
    let len = NonZeroUsize::new(std::mem::size_of::<Shared>().max(1)).unwrap_or(NonZeroUsize::MIN);
    // SAFETY: a fresh anonymous mapping aliases nothing; it is zero-filled, which is a
    // valid `Shared` (atomics of zero). Pages never touched cost no memory.
    let page = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
        )?
    };
    let _ = BOARD.set(Board(page.cast()));
    Ok(())
}

fn shared() -> Option<&'static Shared> {
    // SAFETY: the mapping is valid, large enough for `Shared`, aligned (page-aligned)
    // and never unmapped.
    BOARD.get().map(|board| unsafe { board.0.as_ref() })
}

/// Claims the right to report an application import failure: true for the first
/// process to ask (or when there is no shared page), false for all later ones.
pub fn claim_boot_error_report() -> bool {
    match shared() {
        Some(shared) => shared
            .boot_error_reported
            .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok(),
        None => true,
    }
}

/// The claimant has printed its report.
pub fn boot_error_reported() {
    if let Some(shared) = shared() {
        shared
            .boot_error_reported
            .store(REPORTED, Ordering::Release);
    }
}

/// Forgets that an import failure was reported (a reload's new code may fail anew).
pub fn reset_boot_error_report() {
    if let Some(shared) = shared() {
        shared.boot_error_reported.store(0, Ordering::Release);
    }
}

/// Waits (up to `limit`) until the claimant has printed its report, so that no process
/// exits, and makes the master stop everything, before the report is out.
pub fn wait_for_boot_error_report(limit: Duration) {
    let Some(shared) = shared() else { return };
    let deadline = Instant::now() + limit;
    while shared.boot_error_reported.load(Ordering::Acquire) != REPORTED
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// CLOCK_MONOTONIC in nanoseconds: shared by all processes, unmoved by clock changes.
/// Never 0 (which means idle in a slot).
pub fn monotonic_nanos() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer; CLOCK_MONOTONIC
    // always exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let nanos = (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64);
    nanos.clamp(1, ABORTED - 1)
}

fn slot(index: usize) -> Option<&'static Slot> {
    shared().and_then(|shared| shared.slots.get(index))
}

/// The master gives slot `index` to the worker `pid`: idle, nothing served. Any other
/// slot still naming `pid` is left from a dead worker whose pid was reused, and is
/// cleared so that it cannot be mistaken for the new one.
pub fn assign(index: usize, pid: u32) {
    let Some(shared) = shared() else { return };
    for (i, slot) in shared.slots.iter().enumerate() {
        if i == index || slot.pid.load(Ordering::Acquire) == pid {
            slot.active.store(0, Ordering::Release);
            slot.served.store(0, Ordering::Release);
            slot.pid
                .store(if i == index { pid } else { 0 }, Ordering::Release);
            for stamp in &shared.stamps[i] {
                stamp.active.store(0, Ordering::Release);
            }
        }
    }
}

/// The master times out the request of thread `thread` of the gthread worker in slot
/// `index` if it has been silent longer than `timeout` at `now` (the same
/// compare-exchange as [`time_out_if_silent`], on the thread's stamp). Returns the
/// request's stream and how long it had been silent when the master won.
pub fn time_out_stream_if_silent(
    index: usize,
    thread: usize,
    timeout: Duration,
    now: u64,
) -> Option<(u32, Duration)> {
    let stamp = stamp(index, thread)?;
    let silent = cas_aborted(&stamp.active, timeout, now)?;
    Some((stamp.stream.load(Ordering::Acquire), silent))
}

/// The streams of the gthread worker `pid` that the master timed out: their clients are
/// owed a 504.
pub fn timed_out_streams(pid: u32) -> Vec<u32> {
    let Some(shared) = shared() else {
        return Vec::new();
    };
    let Some(index) = shared
        .slots
        .iter()
        .position(|slot| slot.pid.load(Ordering::Acquire) == pid)
    else {
        return Vec::new();
    };
    shared.stamps[index]
        .iter()
        .filter(|stamp| stamp.active.load(Ordering::Acquire) == ABORTED)
        .map(|stamp| stamp.stream.load(Ordering::Acquire))
        .collect()
}

fn stamp(index: usize, thread: usize) -> Option<&'static Stamp> {
    shared().and_then(|shared| shared.stamps.get(index)?.get(thread))
}

/// Marks `active` [`ABORTED`] if it shows a request silent longer than `timeout` at
/// `now`, unless the worker showed a sign of life meanwhile.
fn cas_aborted(active: &AtomicU64, timeout: Duration, now: u64) -> Option<Duration> {
    let last = active.load(Ordering::Acquire);
    if last == 0 || last == ABORTED {
        return None;
    }
    let silent = Duration::from_nanos(now.saturating_sub(last));
    if silent <= timeout {
        return None;
    }
    active
        .compare_exchange(last, ABORTED, Ordering::AcqRel, Ordering::Acquire)
        .ok()
        .map(|_| silent)
}

/// The master replaced a worker.
pub fn count_worker_restart() {
    if let Some(shared) = shared() {
        shared.worker_restarts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Workers the master has replaced so far.
pub fn worker_restarts() -> u64 {
    shared().map_or(0, |shared| shared.worker_restarts.load(Ordering::Relaxed))
}

/// The requests worker `pid` has served, if it has a slot.
pub fn served(pid: u32) -> Option<u64> {
    let shared = shared()?;
    shared
        .slots
        .iter()
        .find(|slot| slot.pid.load(Ordering::Acquire) == pid)
        .map(|slot| slot.served.load(Ordering::Relaxed))
}

/// The master times out the worker in slot `index` if it has been silent on one
/// request longer than `timeout` at `now`: the slot is marked [`ABORTED`] with a
/// compare-exchange, so a worker that showed a sign of life meanwhile wins and is left
/// alone. Returns how long it had been silent when the master won.
pub fn time_out_if_silent(index: usize, timeout: Duration, now: u64) -> Option<Duration> {
    cas_aborted(&slot(index)?.active, timeout, now)
}

/// Whether the master timed out the worker `pid` (read by the front tier when the
/// worker's channel closes: the client is owed a 504, not a 502).
pub fn timed_out(pid: u32) -> bool {
    shared().is_some_and(|shared| {
        shared.slots.iter().any(|slot| {
            slot.pid.load(Ordering::Acquire) == pid
                && slot.active.load(Ordering::Acquire) == ABORTED
        })
    })
}

/// The master timed this worker out; it must serve nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the master timed this worker out (--timeout)")]
pub struct TimedOut;

/// A worker's own slot, or one thread's stamp in it: how it reports its signs of life.
/// Without the shared memory every report succeeds and nothing is recorded.
#[derive(Clone, Copy)]
pub struct WorkerSlot {
    index: usize,
    slot: Option<&'static Slot>,
    /// Set for a thread of a gthread worker: its signs of life go here.
    stamp: Option<&'static Stamp>,
}

impl WorkerSlot {
    /// The slot the master gave this worker.
    pub fn new(index: usize) -> WorkerSlot {
        WorkerSlot {
            index,
            slot: slot(index),
            stamp: None,
        }
    }

    /// Thread `thread`'s stamp in this worker's slot (the slot itself past the last).
    pub fn thread(&self, thread: usize) -> WorkerSlot {
        WorkerSlot {
            stamp: stamp(self.index, thread),
            ..*self
        }
    }

    /// A thread takes the request of `stream`: its silence starts now.
    pub fn begin(&self, stream: u32) -> Result<(), TimedOut> {
        if let Some(stamp) = self.stamp
            && stamp.active.load(Ordering::Acquire) != ABORTED
        {
            stamp.stream.store(stream, Ordering::Release);
        }
        self.alive()
    }

    /// A sign of life on the current request (taking it, or sending a piece of its
    /// response): the silence the master measures starts again. Fails once the master
    /// has timed the request (the worker, or this thread) out.
    pub fn alive(&self) -> Result<(), TimedOut> {
        self.set(monotonic_nanos())
    }

    /// The request is finished: the worker (or thread) is idle, and the worker has
    /// served one more.
    pub fn idle(&self) -> Result<(), TimedOut> {
        self.set(0)?;
        if let Some(slot) = self.slot {
            slot.served.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether the master timed out this worker, or this thread's request.
    pub fn timed_out(&self) -> bool {
        let active = match (self.stamp, self.slot) {
            (Some(stamp), _) => &stamp.active,
            (None, Some(slot)) => &slot.active,
            (None, None) => return false,
        };
        active.load(Ordering::Acquire) == ABORTED
    }

    /// Stores `value` unless the master got there first with [`ABORTED`] (a
    /// compare-exchange loop, the other half of [`time_out_if_silent`]).
    fn set(&self, value: u64) -> Result<(), TimedOut> {
        let active = match (self.stamp, self.slot) {
            (Some(stamp), _) => &stamp.active,
            (None, Some(slot)) => &slot.active,
            (None, None) => return Ok(()),
        };
        active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current != ABORTED).then_some(value)
            })
            .map(|_| ())
            .map_err(|_| TimedOut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_and_the_worker_race_on_one_compare_exchange() {
        create().expect("the shared memory maps");
        let index = 7;
        assign(index, 4242);
        let worker = WorkerSlot::new(index);
        let timeout = Duration::from_secs(1);
        let start = monotonic_nanos();
        // Idle: never timed out.
        assert_eq!(
            time_out_if_silent(index, timeout, start + 10_000_000_000),
            None
        );
        worker.alive().expect("not timed out");
        let last = slot(index).expect("slot").active.load(Ordering::Acquire);
        // Not silent long enough.
        assert_eq!(time_out_if_silent(index, timeout, last + 500_000_000), None);
        assert!(!timed_out(4242));
        // Silent too long: the master wins, and the worker can neither go on nor idle.
        let silent = time_out_if_silent(index, timeout, last + 2_000_000_000);
        assert_eq!(silent, Some(Duration::from_secs(2)));
        assert!(timed_out(4242));
        assert_eq!(worker.alive(), Err(TimedOut));
        assert_eq!(worker.idle(), Err(TimedOut));
        // Only once.
        assert_eq!(
            time_out_if_silent(index, timeout, last + 3_000_000_000),
            None
        );
        // A new worker with the same pid in another slot clears the stale entry.
        assign(index + 1, 4242);
        assert!(!timed_out(4242));
        assert_eq!(WorkerSlot::new(index + 1).alive(), Ok(()));
        assert_eq!(WorkerSlot::new(index + 1).idle(), Ok(()));
        assert_eq!(
            slot(index + 1)
                .expect("slot")
                .served
                .load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn one_thread_of_a_gthread_worker_times_out_alone() {
        create().expect("the shared memory maps");
        let index = 11;
        assign(index, 5151);
        let worker = WorkerSlot::new(index);
        let (stuck, busy) = (worker.thread(0), worker.thread(1));
        let timeout = Duration::from_secs(1);
        stuck.begin(41).expect("not timed out");
        busy.begin(42).expect("not timed out");
        let now = monotonic_nanos();
        assert_eq!(time_out_stream_if_silent(index, 0, timeout, now), None);
        busy.alive().expect("not timed out");
        let later = monotonic_nanos() + 1_500_000_000;
        // Thread 1 keeps showing life; only thread 0's stream goes.
        busy.alive().expect("not timed out");
        let (stream, _) =
            time_out_stream_if_silent(index, 0, timeout, later).expect("thread 0 timed out");
        assert_eq!(stream, 41);
        assert_eq!(timed_out_streams(5151), vec![41]);
        assert_eq!(stuck.alive(), Err(TimedOut));
        assert_eq!(busy.idle(), Ok(()));
        // The worker as a whole is not timed out: its other requests finish.
        assert!(!timed_out(5151));
        // A new worker in the slot starts with clean stamps.
        assign(index, 5152);
        assert!(timed_out_streams(5152).is_empty());
    }
}
