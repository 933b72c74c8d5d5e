//! Memory and disk budgets for the bodies the front tier holds (DESIGN.md §5).
//!
//! A [`Budget`] counts bytes held against a limit, and against its parent's too: a
//! stream's response bytes count against its connection, the connection's against the
//! whole front tier. What holds the bytes holds a [`Held`], which gives them back when
//! it is dropped, whatever path drops it (taken by the client, a stream abandoned, a
//! channel closed): a budget can never leak.
//!
//! The budgets of the front tier:
//! - per connection, [`CONN_REQUEST_MEMORY`] of request bodies and [`CONN_RESPONSE_MEMORY`]
//!   of responses in memory, whatever the number of its HTTP/2 streams; beyond that a
//!   request body is spooled to a temporary file and a response spilled to one;
//! - for the whole front tier, [`FRONT_MEMORY`] in memory, both ways together, of which
//!   request bodies may take [`FRONT_REQUEST_MEMORY`]: uploads waiting for a worker can
//!   never leave responses without memory (every few-byte answer then went through a
//!   temporary file);
//! - per response, `--max-temp-file-size` of spill not yet read by its client, and
//!   [`SPILL_TOTAL_FACTOR`] times that for the whole front tier. Beyond those (or when a
//!   spill fails) the worker is made to wait: see `channel`.
//!
//! It must never block or allocate per byte: taking and giving are a few atomics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// Request body bytes one connection may hold in memory, all its streams together
/// (nginx's `client_body_buffer_size` is per request; per connection, HTTP/2's streams
/// cannot multiply it).
pub const CONN_REQUEST_MEMORY: u64 = 1 << 20;

/// Response bytes one connection may hold in memory for slow clients, all its streams
/// together.
pub const CONN_RESPONSE_MEMORY: u64 = 1 << 20;

/// Body bytes the whole front tier may hold in memory, requests and responses together;
/// beyond it every connection spools and spills, however little it holds.
pub const FRONT_MEMORY: u64 = 128 << 20;

/// Of [`FRONT_MEMORY`], what request bodies may hold: 64 connections each uploading a
/// megabyte (and waiting for a worker) fit, with a quarter left for responses.
pub const FRONT_REQUEST_MEMORY: u64 = FRONT_MEMORY / 4 * 3;

/// The front tier's whole spill, in units of `--max-temp-file-size`.
pub const SPILL_TOTAL_FACTOR: u64 = 4;

/// Bytes held against a limit (and the parent's).
pub struct Budget {
    limit: u64,
    used: AtomicU64,
    parent: Option<Arc<Budget>>,
    /// Woken when `used` falls to 0 (see [`Budget::drained`]).
    empty: Notify,
}

impl Budget {
    /// A budget of `limit` bytes, counted against `parent` too.
    pub fn new(limit: u64, parent: Option<Arc<Budget>>) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicU64::new(0),
            parent,
            empty: Notify::new(),
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `n` bytes if this budget and every parent have room for them, else none.
    pub fn try_hold(self: &Arc<Self>, n: u64) -> Option<Held> {
        self.take(n, false).then(|| Held {
            budget: self.clone(),
            n,
        })
    }

    /// Takes `n` bytes whatever the limits say (the bytes are here already and must be
    /// kept; the caller then stops more from coming).
    pub fn hold(self: &Arc<Self>, n: u64) -> Held {
        self.take(n, true);
        Held {
            budget: self.clone(),
            n,
        }
    }

    fn take(&self, n: u64, force: bool) -> bool {
        let taken = if force {
            self.used.fetch_add(n, Ordering::AcqRel);
            true
        } else {
            self.used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    used.checked_add(n).filter(|&total| total <= self.limit)
                })
                .is_ok()
        };
        if !taken {
            return false;
        }
        if let Some(parent) = &self.parent
            && !parent.take(n, force)
        {
            self.give(n);
            return false;
        }
        true
    }

    fn give(&self, n: u64) {
        if self.used.fetch_sub(n, Ordering::AcqRel) == n {
            // One waiter at most (a channel's reader); a stored permit only costs it a
            // second look.
            self.empty.notify_one();
        }
    }

    /// Waits until nothing is held.
    pub async fn drained(&self) {
        while self.used() > 0 {
            self.empty.notified().await;
        }
    }
}

/// Bytes held against a [`Budget`] (and its parents) until this is dropped.
pub struct Held {
    budget: Arc<Budget>,
    n: u64,
}

impl Held {
    /// Holds `n` more bytes if the budgets have room for them.
    pub fn try_add(&mut self, n: u64) -> bool {
        let taken = self.budget.take(n, false);
        if taken {
            self.n += n;
        }
        taken
    }

    /// Gives back `n` of the bytes held (all of them at most), keeping the rest.
    pub fn release(&mut self, n: u64) {
        let n = n.min(self.n);
        let mut budget = Some(&self.budget);
        while let Some(each) = budget {
            each.give(n);
            budget = each.parent.as_ref();
        }
        self.n -= n;
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.n
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut budget = Some(&self.budget);
        while let Some(each) = budget {
            each.give(self.n);
            budget = each.parent.as_ref();
        }
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held({})", self.n)
    }
}

/// The front tier's budgets, from which each connection's are made.
pub struct Budgets {
    memory: Arc<Budget>,
    /// Request bodies' share of `memory`.
    requests: Arc<Budget>,
    spill: Arc<Budget>,
    /// `--max-temp-file-size`.
    max_spill: u64,
}

impl Budgets {
    /// The front tier's budgets, with `max_spill` bytes of spill per response.
    pub fn new(max_spill: u64) -> Budgets {
        let memory = Budget::new(FRONT_MEMORY, None);
        Budgets {
            requests: Budget::new(FRONT_REQUEST_MEMORY, Some(memory.clone())),
            memory,
            spill: Budget::new(max_spill.saturating_mul(SPILL_TOTAL_FACTOR), None),
            max_spill,
        }
    }

    /// The front tier's memory budget.
    pub fn memory(&self) -> Arc<Budget> {
        self.memory.clone()
    }

    /// The share of the front tier's memory that what clients send may take (request
    /// bodies, WebSocket messages on their way to a worker).
    pub fn requests(&self) -> Arc<Budget> {
        self.requests.clone()
    }

    /// A new connection's budgets.
    pub fn connection(&self) -> ConnBudgets {
        ConnBudgets {
            requests: Budget::new(CONN_REQUEST_MEMORY, Some(self.requests.clone())),
            responses: Budget::new(CONN_RESPONSE_MEMORY, Some(self.memory.clone())),
            spill: self.spill.clone(),
            max_spill: self.max_spill,
        }
    }
}

/// One connection's budgets.
pub struct ConnBudgets {
    /// Its request bodies in memory.
    pub requests: Arc<Budget>,
    /// Its responses in memory.
    pub responses: Arc<Budget>,
    spill: Arc<Budget>,
    max_spill: u64,
}

impl ConnBudgets {
    /// The budgets of a new response on this connection; `timed` if the send timeout
    /// watches it (an HTTP/2 response, see `stall`).
    pub fn response(&self, timed: bool) -> Arc<Backlog> {
        Arc::new(Backlog {
            memory: Budget::new(u64::MAX, Some(self.responses.clone())),
            spill: Budget::new(self.max_spill, Some(self.spill.clone())),
            since: AtomicU64::new(0),
            timed,
        })
    }
}

/// What one response holds for its client: its bytes in memory and in its spill file,
/// and since when they have waited without the client taking any (for the HTTP/2
/// send timeout, see `stall`).
pub struct Backlog {
    /// Its bytes in memory (counted against the connection's budget).
    pub memory: Arc<Budget>,
    /// Its spilled bytes its client has not read yet (counted against the front tier's
    /// spill budget).
    pub spill: Arc<Budget>,
    /// Milliseconds (see [`now_ms`]) when the client last took bytes, or when bytes
    /// began to wait for it.
    since: AtomicU64,
    /// Whether `since` is kept: only the HTTP/2 send timeout reads it (HTTP/1's is the
    /// connection guard's), and keeping it reads the clock twice per response.
    timed: bool,
}

impl Backlog {
    /// Whether bytes wait for the client.
    pub fn waiting(&self) -> bool {
        self.memory.used() > 0 || self.spill.used() > 0
    }

    /// The client took bytes, or bytes began to wait for it: the clock starts afresh.
    pub fn moved(&self) {
        if !self.timed {
            return;
        }
        self.since.store(now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds (see [`now_ms`]) since when the waiting bytes have waited.
    pub fn since(&self) -> u64 {
        self.since.load(Ordering::Relaxed)
    }
}

/// Milliseconds on the runtime's monotonic clock since the first call.
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    start.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_counts_against_every_parent_and_goes_back_when_dropped() {
        let front = Budget::new(10, None);
        let conn = Budget::new(8, Some(front.clone()));
        let other = Budget::new(8, Some(front.clone()));
        let a = conn.try_hold(6).unwrap();
        assert!(conn.try_hold(3).is_none(), "over the connection's limit");
        let b = other.try_hold(4).unwrap();
        assert!(other.try_hold(1).is_none(), "over the front tier's limit");
        assert_eq!(other.used(), 4, "a refused hold leaves nothing behind");
        let forced = other.hold(5);
        assert_eq!(front.used(), 15);
        drop((a, b, forced));
        assert_eq!((front.used(), conn.used(), other.used()), (0, 0, 0));
    }

    /// Request bodies filling their share leave responses room: the reason a few-byte
    /// answer once went through a temporary file during a run of uploads.
    #[test]
    fn uploads_cannot_take_the_responses_share() {
        let budgets = Budgets::new(1 << 30);
        let conns: Vec<ConnBudgets> = (0..200).map(|_| budgets.connection()).collect();
        let uploads: Vec<Held> = conns
            .iter()
            .filter_map(|conn| conn.requests.try_hold(CONN_REQUEST_MEMORY))
            .collect();
        assert_eq!(
            uploads.len() as u64,
            FRONT_REQUEST_MEMORY / CONN_REQUEST_MEMORY
        );
        assert!(uploads.len() >= 64, "64 one-megabyte uploads fit");
        let answers: Vec<Held> = conns
            .iter()
            .filter_map(|conn| conn.responses.try_hold(CONN_RESPONSE_MEMORY))
            .collect();
        assert_eq!(
            answers.len() as u64,
            (FRONT_MEMORY - FRONT_REQUEST_MEMORY) / CONN_RESPONSE_MEMORY
        );
    }

    #[test]
    fn a_hold_grows_within_the_limits() {
        let conn = Budget::new(8, None);
        let mut held = conn.try_hold(0).unwrap();
        assert!(held.try_add(8));
        assert!(!held.try_add(1));
        drop(held);
        assert_eq!(conn.used(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn drained_waits_for_the_last_byte() {
        let budget = Budget::new(u64::MAX, None);
        let held = budget.hold(3);
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.drained().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        waiter.await.unwrap();
    }
}
