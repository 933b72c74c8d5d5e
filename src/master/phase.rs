//! The master's lifecycle, in one place: the phase it is in and the one method that
//! moves it to another, logging each move (`Phase: serving -> stopping (graceful)`), so
//! that an operator and the tests can watch it.
//!
//! ```text
//! booting ──► serving ──► reloading (HUP) ──► serving
//!                └──────► upgrading (USR2) ──► serving (the new master exited)
//!                             └──► upgrading (drained) (WINCH) ──► booting (HUP, or the
//!                                  new master exited) ──► upgrading or serving
//! any phase ──► stopping (graceful: TERM | fast: INT, QUIT, an error) ──► halted
//! ```
//!
//! Only the phase says what the master may do: start children (not while stopping or
//! drained), take a reload, or return. Facts that outlive a phase (the new master's pid
//! during an upgrade, the worker generation) stay where they are.

use std::fmt;
use std::time::Instant;

use tracing::info;

use super::Arbiter;

/// Where the master is in its life.
#[derive(Debug)]
pub(super) enum Phase {
    /// The front tier and the workers are starting; not every worker has booted yet.
    Booting,
    /// Every worker booted; the server serves.
    Serving,
    /// SIGHUP: a new generation of workers boots; the old ones retire as they are ready.
    Reloading(Reload),
    /// USR2: a new master serves the same sockets beside this one. `drained`: WINCH
    /// stopped this master's front tier and workers; it only holds the sockets.
    Upgrading { drained: bool },
    /// TERM (graceful) or INT/QUIT (fast): the children are stopping.
    Stopping(Stop),
    /// Every child has exited; the master returns.
    Halted,
}

/// A reload (SIGHUP) under way.
#[derive(Debug)]
pub(super) struct Reload {
    /// Another SIGHUP came meanwhile: reload again once this one is done (the workers
    /// booting now may have read the code before it changed).
    pub again: bool,
}

/// A stop under way.
#[derive(Debug)]
pub(super) struct Stop {
    pub graceful: bool,
    /// Children still running then are killed.
    pub deadline: Instant,
    pub workers_told: bool,
    pub killed: bool,
    /// What the master exits with.
    pub code: i32,
}

impl Phase {
    /// Whether the master keeps its front tier and workers running (and replaces them).
    pub fn runs_children(&self) -> bool {
        match self {
            Phase::Booting | Phase::Serving | Phase::Reloading(_) => true,
            Phase::Upgrading { drained } => !drained,
            Phase::Stopping(_) | Phase::Halted => false,
        }
    }

    pub fn is_stopping(&self) -> bool {
        matches!(self, Phase::Stopping(_) | Phase::Halted)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Booting => f.write_str("booting"),
            Phase::Serving => f.write_str("serving"),
            Phase::Reloading(_) => f.write_str("reloading"),
            Phase::Upgrading { drained: false } => f.write_str("upgrading"),
            Phase::Upgrading { drained: true } => f.write_str("upgrading (drained)"),
            Phase::Stopping(stop) if stop.graceful => f.write_str("stopping (graceful)"),
            Phase::Stopping(_) => f.write_str("stopping (fast)"),
            Phase::Halted => f.write_str("halted"),
        }
    }
}

impl Arbiter {
    /// Moves the master to `next`, logging the move; returns the phase it leaves.
    pub(super) fn enter(&mut self, next: Phase) -> Phase {
        info!("Phase: {} -> {next}", self.phase);
        std::mem::replace(&mut self.phase, next)
    }

    /// Every worker wanted runs the current code and has booted: the boot or the reload
    /// is over (`Ready: N workers`, the line to wait for before sending traffic).
    pub(super) fn all_booted(&mut self) {
        self.enter(self.settled());
        info!("Ready: {} workers", self.settings.workers);
    }

    /// The phase a reload or a boot settles in: side by side with a new master while
    /// one runs (USR2), serving alone otherwise.
    pub(super) fn settled(&self) -> Phase {
        match self.upgrade.child {
            Some(_) => Phase::Upgrading { drained: false },
            None => Phase::Serving,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop(graceful: bool) -> Phase {
        Phase::Stopping(Stop {
            graceful,
            deadline: Instant::now(),
            workers_told: false,
            killed: false,
            code: 0,
        })
    }

    #[test]
    fn phases_read_as_the_log_shows_them() {
        let names = [
            (Phase::Booting, "booting"),
            (Phase::Serving, "serving"),
            (Phase::Reloading(Reload { again: false }), "reloading"),
            (Phase::Upgrading { drained: false }, "upgrading"),
            (Phase::Upgrading { drained: true }, "upgrading (drained)"),
            (stop(true), "stopping (graceful)"),
            (stop(false), "stopping (fast)"),
            (Phase::Halted, "halted"),
        ];
        for (phase, name) in names {
            assert_eq!(phase.to_string(), name);
        }
    }

    #[test]
    fn only_live_phases_run_children() {
        assert!(Phase::Booting.runs_children());
        assert!(Phase::Reloading(Reload { again: true }).runs_children());
        assert!(Phase::Upgrading { drained: false }.runs_children());
        assert!(!Phase::Upgrading { drained: true }.runs_children());
        assert!(!stop(true).runs_children());
        assert!(stop(false).is_stopping());
        assert!(!Phase::Serving.is_stopping());
    }
}
