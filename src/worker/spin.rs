//! A worker's short look at its requests' ring before it sleeps. Under load the next
//! request often reaches an idle worker a few microseconds after its last answer, and
//! sleeping until the front tier rings costs both sides more than that: the front
//! tier's doorbell and the wake-up it causes, the worker's `poll(2)`, two context
//! switches and a colder cache. So a worker that finds its ring empty may first look
//! again for up to [`WINDOW`], giving its core away between looks (`sched_yield(2)`:
//! whatever else wants that core, the front tier or a client, goes first), and sleeps
//! only if nothing came.
//!
//! Looking pays only while it finds the next request quickly, and hurts when another
//! program keeps the worker's core busy (a yield then waits out that program's time
//! slice while the request waits in the ring). So the worker keeps a running score of
//! its idle waits: one that ended within the window, without the core lost for longer
//! than the window at a time, counts for looking; any other counts against it. It looks
//! only while enough recent waits were of the first kind ([`THRESHOLD`]). Waits it
//! sleeps through keep the score current (a request that came within the window is a
//! look that would have paid), so a quiet server, or a worker beside a busy program,
//! sleeps at once, and looking comes back when requests come close together again.

use std::time::{Duration, Instant};

/// How long a worker looks for the next request before it sleeps.
const WINDOW: Duration = Duration::from_micros(50);

/// The score's scale: a wait that paid moves it toward `SCALE`, one that did not
/// toward 0, by 1/`WEIGHT` of the way each time.
const SCALE: u32 = 1024;
const WEIGHT: u32 = 32;

/// Look while the score is at least this: two fifths of recent waits paid. Measured on
/// two cores: about half of a hello world worker's waits pay under load, about a
/// quarter beside a program that keeps one core busy, where a look that loses its core
/// leaves the next request waiting out that program's time slice. A third let those
/// looks go on often enough to cost 5% of requests per second there.
const THRESHOLD: u32 = SCALE * 2 / 5;

/// What the worker has seen of its idle waits.
#[derive(Debug)]
pub(super) struct Spin {
    /// When the current idle wait began.
    began: Option<Instant>,
    /// The current wait lost its core for longer than the window.
    lost: bool,
    /// How often recent idle waits would have been spared by a look, out of [`SCALE`].
    score: u32,
}

impl Spin {
    pub(super) fn new() -> Self {
        Self {
            began: None,
            lost: false,
            score: 0,
        }
    }

    /// Looks until `arrived` says something came, yielding the core between looks,
    /// for what is left of [`WINDOW`] of this idle wait, if looking has paid lately;
    /// true if something came (no sleep is needed).
    pub(super) fn look<E>(
        &mut self,
        mut arrived: impl FnMut() -> Result<bool, E>,
    ) -> Result<bool, E> {
        let now = Instant::now();
        let began = *self.began.get_or_insert(now);
        if self.score < THRESHOLD || self.lost {
            return Ok(false);
        }
        let mut last = now;
        while last.duration_since(began) < WINDOW {
            if arrived()? {
                return Ok(true);
            }
            std::thread::yield_now();
            let after = Instant::now();
            if after.duration_since(last) >= WINDOW {
                self.lost = true;
                return Ok(false);
            }
            last = after;
        }
        Ok(false)
    }

    /// The idle wait is over: something came. Scores it.
    pub(super) fn done(&mut self) {
        let Some(began) = self.began.take() else {
            return;
        };
        let paid = !std::mem::take(&mut self.lost) && began.elapsed() <= WINDOW;
        let target = if paid { SCALE } else { 0 };
        self.score = (self.score * (WEIGHT - 1) + target) / WEIGHT;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asks `spin` to look, with a ring that answers `arrived`: whether something came,
    /// and how many times the ring was looked at.
    fn look(spin: &mut Spin, arrived: bool) -> (bool, u32) {
        let mut looks = 0;
        let came = spin
            .look(|| {
                looks += 1;
                Ok::<_, ()>(arrived)
            })
            .unwrap();
        (came, looks)
    }

    /// Ends idle waits that began `ago` until `done` says so; how many it took (a score
    /// that never gets there fails the test rather than hang it).
    fn waits_until(spin: &mut Spin, ago: Duration, done: impl Fn(&Spin) -> bool) -> u32 {
        for waits in 1..=1000 {
            spin.began = Some(Instant::now() - ago);
            spin.done();
            if done(spin) {
                return waits;
            }
        }
        panic!("the score stopped at {} after 1000 waits", spin.score);
    }

    #[test]
    fn a_worker_looks_only_after_waits_that_would_have_paid() {
        let mut spin = Spin::new();
        // A fresh worker sleeps at once.
        assert_eq!(look(&mut spin, true), (false, 0));
        // Waits that end at once (as under load) raise the score until it looks.
        let waits = waits_until(&mut spin, Duration::ZERO, |spin| spin.score >= THRESHOLD);
        assert!(waits > 1, "one short wait alone does not make it look");
        assert_eq!(look(&mut spin, true), (true, 1));
        spin.done();
        // Long waits bring it back to sleeping at once.
        waits_until(&mut spin, WINDOW * 4, |spin| spin.score < THRESHOLD);
        assert_eq!(look(&mut spin, true), (false, 0));
    }

    #[test]
    fn a_look_gives_up_after_the_window() {
        let mut spin = Spin::new();
        spin.score = SCALE;
        let start = Instant::now();
        let (came, looks) = look(&mut spin, false);
        assert!(!came);
        assert!(start.elapsed() >= WINDOW);
        assert!(looks >= 1);
        // The wait then ends long after: it did not pay.
        spin.began = Some(Instant::now() - WINDOW * 2);
        spin.done();
        assert!(spin.score < SCALE);
    }
}
