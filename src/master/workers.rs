//! The master's workers: how many run, which generation of the code they run, and what
//! a worker's death means.
//!
//! One rule keeps the count right whatever the order of events (TTIN, TTOU, HUP, deaths,
//! a storm of all of them): `manage_workers` compares what runs with what is wanted and
//! starts or retires workers to match. A worker the master has told to stop (`told`)
//! counts for nothing; it retires through the channel handshake, so no request is lost.
//!
//! A reload (SIGHUP) bumps the generation: workers of an older one run the old code.
//! Each new worker that becomes ready lets one old worker retire, so the server never
//! has fewer ready workers than it should. New code that does not load leaves the old
//! workers serving.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::phase::{Phase, Reload};
use super::spawn::{Forked, fork_child};
use super::{Arbiter, control, title};
use super::{listeners::Listener, signal_all};
use crate::exit::{APP_LOAD_ERROR, WORKER_BOOT_ERROR};
use crate::protocol::control::AddWorker;
use crate::scoreboard;

/// Workers dying while booting, in a row, after which the master gives up (when no
/// worker is serving).
const MOST_BOOT_DEATHS: u32 = 8;
/// The longest wait before starting a worker again after deaths while booting.
const LONGEST_BACKOFF: Duration = Duration::from_secs(5);

pub(super) struct WorkerChild {
    id: u32,
    started: Instant,
    /// The master told it to stop (its death is no failure, and it is not replaced).
    told: bool,
    /// The reload generation whose code it runs.
    generation: u32,
    /// It said Hello to the front tier (it booted).
    ready: bool,
}

impl Arbiter {
    /// Starts or retires workers until what runs is what is wanted (see the module doc).
    pub(super) fn manage_workers(&mut self) {
        let generation = self.generation;
        let current = |w: &WorkerChild| !w.told && w.generation == generation;
        let mut count = self.workers.values().filter(|w| current(w)).count();
        let backing_off = self.respawn_at.is_some_and(|at| Instant::now() < at);
        while count < self.settings.workers && !backing_off && self.front.is_some() {
            if !self.spawn_worker() {
                break;
            }
            count += 1;
        }
        // Too many (TTOU): the oldest retire.
        let excess = count.saturating_sub(self.settings.workers);
        self.retire_oldest(excess, |w| current(w));
        // Each ready worker of this generation stands in for one of an older one.
        let ready = self
            .workers
            .values()
            .filter(|w| current(w) && w.ready)
            .count();
        let old = self
            .workers
            .values()
            .filter(|w| !w.told && w.generation != generation)
            .count();
        // Under --reload the old code must not answer once a change is seen: requests
        // wait for the new workers instead.
        let keep_old = match self.settings.reload {
            Some(_) => 0,
            None => self.settings.workers.saturating_sub(ready),
        };
        self.retire_oldest(old.saturating_sub(keep_old), |w| {
            !w.told && w.generation != generation
        });
        let all_new = self
            .workers
            .values()
            .all(|w| w.told || current(w) && w.ready);
        match self.phase {
            Phase::Reloading(_) if all_new => self.reload_done(),
            Phase::Booting if all_new && ready >= self.settings.workers => self.all_booted(),
            _ => {}
        }
    }

    /// Tells the `n` oldest workers that match `which` to stop.
    fn retire_oldest(&mut self, n: usize, which: impl Fn(&WorkerChild) -> bool) {
        if n == 0 {
            return;
        }
        let mut matching: Vec<(Instant, Pid)> = self
            .workers
            .iter()
            .filter(|(_, w)| which(w))
            .map(|(&pid, w)| (w.started, pid))
            .collect();
        matching.sort();
        for (_, pid) in matching.into_iter().take(n) {
            self.tell(pid);
        }
    }

    /// Tells a worker to stop: it finishes (and hands back) what it holds, then exits.
    pub(super) fn tell(&mut self, pid: Pid) {
        if let Some(worker) = self.workers.get_mut(&pid) {
            worker.told = true;
            signal_all([pid], Signal::SIGTERM);
        }
    }

    pub(super) fn tell_all_workers(&mut self) {
        let pids: Vec<Pid> = self.workers.keys().copied().collect();
        pids.into_iter().for_each(|pid| self.tell(pid));
    }

    /// SIGHUP: a new generation of workers, with the code as it is now on disk.
    pub(super) fn reload_workers(&mut self) {
        if let Phase::Reloading(reload) = &mut self.phase {
            info!("A reload is under way: another follows once its workers are ready");
            reload.again = true;
            return;
        }
        // The new code's import error is reported again, once.
        scoreboard::reset_boot_error_report();
        self.generation = self.generation.wrapping_add(1);
        self.enter(Phase::Reloading(Reload { again: false }));
        if self.settings.preload {
            warn!(
                "Reloading the workers; with --preload they run the application the master \
                 imported at start (USR2 or a restart loads new code)"
            );
        } else {
            info!(
                "Reloading: starting {} new workers; the old ones retire as the new ones are ready",
                self.settings.workers
            );
        }
    }

    fn reload_done(&mut self) {
        info!(
            "Reload done: {} workers running the new code",
            self.settings.workers
        );
        let again = match self.phase {
            Phase::Reloading(Reload { again }) => again,
            _ => false,
        };
        self.all_booted();
        self.notifier.notify("READY=1\nSTATUS=reloaded");
        if again {
            self.reload_workers();
        }
    }

    /// The new code does not load: the old workers become the current ones again and
    /// keep serving; the new ones still booting are stopped.
    fn reload_failed(&mut self) {
        let generation = self.generation;
        let booting: Vec<Pid> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.told && w.generation == generation && !w.ready)
            .map(|(&pid, _)| pid)
            .collect();
        booting.into_iter().for_each(|pid| self.tell(pid));
        let mut kept = 0;
        for worker in self.workers.values_mut().filter(|w| !w.told) {
            worker.generation = generation;
            kept += 1;
        }
        error!(
            "Reload failed: the new workers cannot load the application; the {kept} workers \
             already running keep serving the code they have"
        );
        if let Phase::Reloading(_) = self.phase {
            self.enter(self.settled());
        }
        self.notifier.notify("READY=1\nSTATUS=reload failed");
    }

    /// The front tier says worker `id` (pid `pid`) said Hello: it booted.
    pub(super) fn worker_ready(&mut self, id: u32, pid: u32) {
        let pid = Pid::from_raw(pid as i32);
        // The first worker of a boot: systemd hears READY (and the main pid again after
        // a WINCH rolled back by HUP).
        let first = !self.workers.values().any(|w| w.ready);
        let Some(worker) = self.workers.get_mut(&pid).filter(|w| w.id == id) else {
            return; // Already gone.
        };
        worker.ready = true;
        self.boot_deaths = 0;
        self.respawn_at = None;
        if first && matches!(self.phase, Phase::Booting) {
            let pid = std::process::id();
            self.notifier.notify(&format!(
                "READY=1\nMAINPID={pid}\nSTATUS=serving with {} workers",
                self.settings.workers
            ));
        }
    }

    /// A worker was reaped: log how, and decide whether it was a failure to boot.
    pub(super) fn worker_exited(
        &mut self,
        pid: Pid,
        worker: WorkerChild,
        code: Option<i32>,
        signal: Option<Signal>,
        how: &str,
    ) {
        let stopping = self.phase.is_stopping();
        if !stopping {
            scoreboard::count_worker_restart();
        }
        let timed_out = self.watchdog.reaped(pid);
        match (code, signal, stopping) {
            _ if timed_out => warn!(
                "Worker (pid: {pid}, id: {}) {how} after its timeout; replacing it",
                worker.id
            ),
            (_, _, true) => info!("Worker exiting (pid: {pid}): {how}"),
            // A retirement (--max-requests, TTOU, reload) after the handshake: no crash.
            (Some(0), _, false) => info!(
                "Worker (pid: {pid}, id: {}) retired; replacing it",
                worker.id
            ),
            (_, Some(Signal::SIGKILL), _) => error!(
                "Worker (pid: {pid}, id: {}) was sent SIGKILL! Perhaps out of memory?",
                worker.id
            ),
            _ => warn!("Worker (pid: {pid}, id: {}) {how}", worker.id),
        }
        if stopping || worker.told || worker.ready || timed_out || code == Some(0) {
            return;
        }
        // It died before it was ready: it failed to boot.
        let old_serving = self
            .workers
            .values()
            .any(|w| !w.told && w.generation != worker.generation);
        let serving = self.workers.values().any(|w| w.ready);
        match code {
            // The new code (the app or its --hooks module) does not load.
            Some(APP_LOAD_ERROR | WORKER_BOOT_ERROR)
                if worker.generation == self.generation && old_serving =>
            {
                self.reload_failed()
            }
            Some(APP_LOAD_ERROR) if !serving => self.halt(APP_LOAD_ERROR, "App failed to load."),
            Some(WORKER_BOOT_ERROR) if !serving => {
                self.halt(WORKER_BOOT_ERROR, "Worker failed to boot.")
            }
            _ => self.died_booting(serving),
        }
    }

    /// A worker died before it was ready: wait longer before each new one (100 ms,
    /// doubling, at most LONGEST_BACKOFF). With no worker serving, give up after
    /// MOST_BOOT_DEATHS in a row rather than fork for ever; while others serve, keep
    /// trying at the longest pace.
    fn died_booting(&mut self, serving: bool) {
        self.boot_deaths += 1;
        if self.boot_deaths >= MOST_BOOT_DEATHS && !serving {
            let reason = format!(
                "Worker failed to boot: {} workers in a row died before they were ready.",
                self.boot_deaths
            );
            self.halt(WORKER_BOOT_ERROR, &reason);
            return;
        }
        if self.boot_deaths >= 2 {
            let delay =
                Duration::from_millis(100 << (self.boot_deaths - 2).min(6)).min(LONGEST_BACKOFF);
            warn!(
                "{} workers died while booting; the next starts in {delay:?}",
                self.boot_deaths
            );
            self.respawn_at = Some(Instant::now() + delay);
        }
    }

    fn spawn_worker(&mut self) -> bool {
        let Some(front) = &self.front else {
            return false;
        };
        let (front_end, worker_end) = match socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        ) {
            Ok(pair) => pair,
            Err(err) => {
                error!("cannot create a worker channel: {err}");
                return false;
            }
        };
        let Some(slot) = self.watchdog.free_slot() else {
            error!("cannot start a worker: every scoreboard slot is taken");
            return false;
        };
        let id = self.next_worker_id;
        self.next_worker_id = self.next_worker_id.wrapping_add(1);
        let mut close = self.master_fds();
        close.extend(self.listeners.iter().map(Listener::raw));
        close.push(front_end.as_raw_fd());
        match fork_child(
            "worker",
            self.settings.preload,
            &close,
            self.settings.credentials,
        ) {
            Ok(Forked::Child) => {
                title::set(&format!("rwsgi: worker [{}]", self.settings.proc_name));
                let served = crate::worker::run(&self.settings, worker_end, id, slot);
                std::process::exit(crate::exit::code(served));
            }
            Ok(Forked::Parent(pid)) => {
                drop(worker_end);
                info!("Booting worker with pid: {pid}");
                // Before the front tier hears of it, which reads the slot on its death.
                self.watchdog.watch(pid, id, slot);
                let worker = AddWorker {
                    id,
                    pid: pid.as_raw() as u32,
                };
                if let Err(err) =
                    control::send_worker(&front.control, worker, front_end.as_raw_fd())
                {
                    // The front tier is gone; its death will be reaped and everything restarted.
                    warn!("cannot hand worker {pid} to the front tier: {err}");
                    signal_all([pid], Signal::SIGTERM);
                }
                self.workers.insert(
                    pid,
                    WorkerChild {
                        id,
                        started: Instant::now(),
                        told: false,
                        generation: self.generation,
                        ready: false,
                    },
                );
                true
            }
            Err(err) => {
                error!("cannot fork a worker: {err}");
                false
            }
        }
    }
}
