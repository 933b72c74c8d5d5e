//! `--timeout`: the master's watch over workers stuck on one request (DESIGN.md §7).
//!
//! Each worker has a slot of the shared scoreboard, where it records the time of its
//! last sign of life on the request it serves (taking it, or sending a piece of the
//! response). The master looks at the slots of its workers at each turn of its loop. A
//! worker silent longer than the timeout is marked aborted in its slot (with a
//! compare-exchange, so a worker that just showed life wins), the front tier is told
//! (it answers the worker's requests 504 and sends it nothing more), and the worker
//! gets SIGABRT: its Python handler prints where the application hangs and exits.
//! One that cannot run Python (stuck in C code, or with SIGABRT blocked) is killed
//! with SIGKILL after [`ABORT_GRACE`].
//!
//! A gthread worker keeps one stamp per thread instead, and is timed out one request
//! at a time: the front tier answers that request 504 (the scoreboard names its
//! stream), and the worker is told to retire (SIGTERM, the lossless handshake), so it
//! exits once its other requests are done; it is killed if it has not after
//! `--graceful-timeout`. No SIGABRT: that would end the other requests too.
//!
//! Unlike gunicorn, the timeout measures silence, not the length of the request: a
//! streaming response that keeps sending lives as long as it sends.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{error, warn};

use super::control;
use crate::protocol::control::AddWorker;
use crate::scoreboard::{self, SLOTS};

/// How long an aborted worker has to exit before it is killed.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// The master's turn when a timeout is set: fine enough that a timed-out request is
/// answered well within a second of its timeout.
const TIMEOUT_TICK: Duration = Duration::from_millis(250);

/// The master's turn otherwise.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// The workers' slots and the timeouts under way.
pub struct Watchdog {
    timeout: Option<Duration>,
    /// Threads per worker with a stamp each (gthread), 0 otherwise.
    threads: usize,
    /// How long a worker told to retire after a timed-out request may take.
    graceful: Duration,
    workers: HashMap<Pid, Watched>,
    /// Where the search for a free slot starts: slots are handed out round the ring,
    /// so the slot of a worker just reaped keeps its facts for the front tier a while.
    next_slot: usize,
}

struct Watched {
    id: u32,
    slot: usize,
    /// When the worker was sent SIGABRT (or, gthread, told to retire after a request
    /// timed out), and whether SIGKILL followed.
    aborted: Option<(Instant, bool)>,
}

impl Watchdog {
    /// Watches workers for silences longer than `timeout` (None: only tracks slots).
    /// Workers with `threads` stamped threads (gthread) are watched thread by thread,
    /// and a retiring one is killed after `graceful`.
    pub fn new(timeout: Option<Duration>, threads: usize, graceful: Duration) -> Watchdog {
        Watchdog {
            timeout,
            threads,
            graceful,
            workers: HashMap::new(),
            next_slot: 0,
        }
    }

    /// A new `--timeout` (SIGHUP), for every worker from now on.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The longest the master's loop may sleep.
    pub fn tick(&self) -> Duration {
        if self.timeout.is_some() {
            TIMEOUT_TICK
        } else {
            IDLE_TICK
        }
    }

    /// A slot for the next worker, taken by [`Watchdog::watch`] once it is forked.
    pub fn free_slot(&self) -> Option<usize> {
        (0..SLOTS)
            .map(|i| (self.next_slot + i) % SLOTS)
            .find(|slot| self.workers.values().all(|w| w.slot != *slot))
    }

    /// The worker `pid` (the master's `id`) now owns `slot`.
    pub fn watch(&mut self, pid: Pid, id: u32, slot: usize) {
        scoreboard::assign(slot, pid.as_raw() as u32);
        self.next_slot = (slot + 1) % SLOTS;
        self.workers.insert(
            pid,
            Watched {
                id,
                slot,
                aborted: None,
            },
        );
    }

    /// The worker `pid` was reaped; true if it had been timed out. Its slot keeps its
    /// facts until it is handed out again.
    pub fn reaped(&mut self, pid: Pid) -> bool {
        self.workers
            .remove(&pid)
            .is_some_and(|w| w.aborted.is_some())
    }

    /// Times out the workers (or, gthread, the requests) silent too long, and kills
    /// those that outlived their grace. `front` is the control socket, when there is a
    /// front tier. Returns the gthread workers to tell to retire.
    pub fn check(&mut self, front: Option<&OwnedFd>) -> Vec<Pid> {
        let mut retire = Vec::new();
        let Some(timeout) = self.timeout else {
            return retire;
        };
        let now = scoreboard::monotonic_nanos();
        let grace = if self.threads > 0 {
            self.graceful
        } else {
            ABORT_GRACE
        };
        for (&pid, worker) in &mut self.workers {
            if let Some((at, killed @ false)) = &mut worker.aborted
                && at.elapsed() >= grace
            {
                *killed = true;
                warn!("Worker (pid: {pid}) still alive {grace:?} after its timeout: SIGKILL");
                let _ = kill(pid, Signal::SIGKILL);
            }
            if self.threads > 0 {
                // Each thread's request on its own; the worker may hold more.
                if time_out_streams(pid, worker, self.threads, timeout, now, front) {
                    retire.push(pid);
                }
                continue;
            }
            if worker.aborted.is_some() {
                continue;
            }
            let Some(silent) = scoreboard::time_out_if_silent(worker.slot, timeout, now) else {
                continue;
            };
            worker.aborted = Some((Instant::now(), false));
            abort(pid, worker.id, silent, timeout, front);
        }
        retire
    }
}

/// Times out the requests of a gthread worker's threads silent past `timeout`; true if
/// the worker is to be told to retire (the first time one of its requests times out).
fn time_out_streams(
    pid: Pid,
    worker: &mut Watched,
    threads: usize,
    timeout: Duration,
    now: u64,
    front: Option<&OwnedFd>,
) -> bool {
    let mut any = false;
    for thread in 0..threads {
        let Some((stream, silent)) =
            scoreboard::time_out_stream_if_silent(worker.slot, thread, timeout, now)
        else {
            continue;
        };
        any = true;
        error!(
            "WORKER TIMEOUT (pid:{pid}): thread {thread} silent for {:.1} s on one request (stream {stream}, --timeout {}); answering it 504 and retiring the worker",
            silent.as_secs_f64(),
            timeout.as_secs_f64()
        );
    }
    if !any {
        return false;
    }
    let message = AddWorker {
        id: worker.id,
        pid: pid.as_raw() as u32,
    };
    if let Some(control) = front
        && let Err(err) = control::send_streams_timed_out(control, message)
    {
        warn!("cannot tell the front tier that requests of worker {pid} timed out: {err}");
    }
    // Where its threads are, in the error log: faulthandler's dump, registered for SIGUSR2
    // by every worker before it takes requests. The worker goes on serving the others.
    let _ = kill(pid, Signal::SIGUSR2);
    if worker.aborted.is_some() {
        return false;
    }
    worker.aborted = Some((Instant::now(), false));
    true
}

/// gunicorn's line first (people search for it), then what happened.
fn abort(pid: Pid, id: u32, silent: Duration, timeout: Duration, front: Option<&OwnedFd>) {
    error!(
        "WORKER TIMEOUT (pid:{pid}): silent for {:.1} s on one request (--timeout {}); aborting it",
        silent.as_secs_f64(),
        timeout.as_secs_f64()
    );
    // The front tier first, so that it stops sending to the worker and answers its
    // clients 504 before the worker's channel closes.
    let worker = AddWorker {
        id,
        pid: pid.as_raw() as u32,
    };
    if let Some(control) = front
        && let Err(err) = control::send_worker_timed_out(control, worker)
    {
        warn!("cannot tell the front tier that worker {pid} timed out: {err}");
    }
    let _ = kill(pid, Signal::SIGABRT);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_go_round_the_ring_and_a_reaped_one_is_not_reused_at_once() {
        let mut watchdog = Watchdog::new(None, 0, Duration::from_secs(30));
        assert_eq!(watchdog.tick(), IDLE_TICK);
        assert_eq!(watchdog.free_slot(), Some(0));
        watchdog.watch(Pid::from_raw(101), 0, 0);
        assert_eq!(watchdog.free_slot(), Some(1));
        watchdog.watch(Pid::from_raw(102), 1, 1);
        assert!(!watchdog.reaped(Pid::from_raw(101)));
        // Slot 0 is free again, but the next worker gets slot 2: the front tier may
        // still read what slot 0 says about the dead worker.
        assert_eq!(watchdog.free_slot(), Some(2));
        // At the end of the ring, the search wraps round past the slots in use.
        watchdog.watch(Pid::from_raw(103), 2, SLOTS - 1);
        assert_eq!(watchdog.free_slot(), Some(0));
        assert_eq!(
            Watchdog::new(Some(Duration::from_secs(30)), 0, Duration::ZERO).tick(),
            TIMEOUT_TICK
        );
    }
}
