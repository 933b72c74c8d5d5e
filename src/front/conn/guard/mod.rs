//! The connection guard: what stands between a client's socket and hyper.
//!
//! - On an HTTP/1 connection every byte passes the strict [`check::Checker`] before
//!   hyper reads it. A refused request head never reaches hyper: in its place hyper
//!   reads a small stand-in request, which the service answers with the refusal's
//!   status (400, 414, 431, 501) and `Connection: close`; responses to requests
//!   pipelined before it are not disturbed. A refused body (a bad chunk) is reported to
//!   the service reading it, which answers 400.
//! - A bodyless request asking for an `Upgrade` (a WebSocket handshake) holds what
//!   follows it unexamined until its answer is known: after a 101 the connection's
//!   bytes pass through unchecked and untimed (the WebSocket session has its own rules
//!   and pings); after any other answer the checking resumes where it stopped.
//! - Timeouts: a request head must arrive within `head_timeout` (from the connection's
//!   start or from its first byte); a keep-alive connection idle for `keepalive_timeout`
//!   after its last response is closed; a client that reads nothing of a response for
//!   `send_timeout` is dropped.
//! - An HTTP/2 connection (prior knowledge) is recognised by its preface and passed
//!   through unchecked: hyper's h2 does its own framing, bounded by the builder's limits.
//!   Its deadlines are the same as HTTP/1's, counted in requests rather than bytes (a
//!   client answering PINGs is not busy): with no request begun within `head_timeout`
//!   of the start it is closed; with no stream open for `keepalive_timeout` the server
//!   is told to send GOAWAY ([`ConnGuard::h2_idle`]), as nginx's `keepalive_timeout`
//!   does for HTTP/2; and a connection still idle `keepalive_timeout` after that (a
//!   client that never answers the GOAWAY's PING) is closed.
//! - On a plain HTTP/1 connection, slices of a write that are mapped file ranges
//!   ([`super::mapped`]) go out with sendfile(2) from the file, not from memory.

pub mod check;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
#[cfg(test)]
mod tests;

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::last::LastResponse;
use super::mapped::{FileSlices, MappedFiles, SendFile};
use super::signal::Signal;
use check::{Checker, Limits, Refused, Reject};

/// The most one read of the client connection takes.
const READ_SIZE: usize = 16 * 1024;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What hyper reads in place of a refused request head. It is well-formed, so hyper
/// hands it to the service, which sees the refusal recorded for its index.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nhost: refused.invalid\r\nconnection: close\r\n\r\n";

/// How long to read before giving up (the guard's settings).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To receive a whole request head.
    pub head: Duration,
    /// Idle between keep-alive requests.
    pub keepalive: Duration,
    /// A stalled write to the client.
    pub send: Duration,
}

/// What the guard of one connection shares with the service answering its requests.
#[derive(Default)]
pub struct ConnGuard {
    inner: Mutex<Shared>,
    /// Woken when a body is refused.
    body_refused: Notify,
    /// Set when an HTTP/2 connection has been idle for the keep-alive timeout.
    h2_idle: Signal,
    /// Requests whose responses are not finished yet.
    busy: AtomicUsize,
    /// Set when the WebSocket an upgrade began has ended: the connection's task waits
    /// for it, so that the connection keeps its place (`--max-connections`) meanwhile.
    session_over: Signal,
    /// File ranges of responses, mapped for the guard to send with sendfile(2).
    mapped: Arc<MappedFiles>,
    /// Whether the response under way is the connection's last, and what of it the
    /// socket holds back to send with the FIN.
    last: LastResponse,
}

#[derive(Default)]
struct Shared {
    /// The refused request: its index on the connection and why.
    refused: Option<(u64, Reject, bool)>,
    /// The reader waiting for the connection to become idle (HTTP/2, a refusal's
    /// stand-in).
    idle_waker: Option<Waker>,
    /// When the last response under way finished, and how many requests had begun then.
    idle_since: Option<(Instant, u64)>,
    /// Requests the service has begun on this connection.
    requests: u64,
    /// The service answered an upgrade request with 101: what follows is not HTTP.
    upgraded: bool,
}

impl ConnGuard {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        crate::lock::lock(&self.inner)
    }

    /// Called by the service as a request begins; returns its index on the connection
    /// and a token held until its response is finished.
    pub fn begin(self: &Arc<Self>) -> (u64, Busy) {
        self.busy.fetch_add(1, Ordering::AcqRel);
        let mut shared = self.lock();
        let index = shared.requests;
        shared.requests += 1;
        (index, Busy(self.clone()))
    }

    /// The service is answering the upgrade request with 101 (a WebSocket): the guard
    /// passes the connection's bytes through from then on, unchecked and untimed (the
    /// WebSocket has its own rules and pings). Called before the response is returned.
    pub fn upgrade(&self) {
        self.lock().upgraded = true;
    }

    /// Keeps the connection busy, as a response under way does, without counting a
    /// request: held by a WebSocket on an HTTP/2 stream, so that the connection is not
    /// closed as idle (GOAWAY after the keep-alive timeout) while it lives.
    pub fn hold(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// The WebSocket the connection was upgraded to has ended.
    pub fn session_over(&self) {
        self.session_over.set();
    }

    /// Once hyper is done with the connection: waits for the WebSocket it was upgraded
    /// to, if it was.
    pub async fn upgraded_session(&self) {
        if self.lock().upgraded {
            self.session_over.wait().await;
        }
    }

    /// What became of the upgrade asked by request number `heads - 1`: Some(true) once
    /// the service answered 101, Some(false) once it answered otherwise (its response
    /// finished without [`ConnGuard::upgrade`]), None meanwhile (`cx` is woken when a
    /// response finishes).
    fn upgrade_outcome(&self, heads: u64, cx: &Context<'_>) -> Option<bool> {
        let mut shared = self.lock();
        if shared.upgraded {
            return Some(true);
        }
        if shared.requests < heads {
            shared.idle_waker = Some(cx.waker().clone());
            return None;
        }
        drop(shared);
        if !self.idle(cx) {
            return None;
        }
        // The 101 is marked before its response is returned, so before it finished.
        Some(self.lock().upgraded)
    }

    /// Where a file response on this connection maps its file for the guard to send
    /// with sendfile(2): None unless the socket can (plain, not TLS).
    pub fn mapped_files(&self) -> Option<&Arc<MappedFiles>> {
        self.mapped.enabled().then_some(&self.mapped)
    }

    /// The connection's last response (see [`super::last`]).
    pub fn last_response(&self) -> &LastResponse {
        &self.last
    }

    /// Whether a request has begun on this connection.
    pub fn begun(&self) -> bool {
        self.requests() > 0
    }

    fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Resolves once this HTTP/2 connection has had no stream open for the keep-alive
    /// timeout: its server should then send GOAWAY (never, for HTTP/1, which the guard
    /// closes itself).
    pub async fn h2_idle(&self) {
        self.h2_idle.wait().await
    }

    /// The refusal of request `index`'s head, if it was refused (it is the stand-in).
    pub fn refused_head(&self, index: u64) -> Option<Reject> {
        match self.lock().refused {
            // Nothing after a refused head is the client's: the stand-in is refused too.
            Some((at, reject, false)) if index >= at => Some(reject),
            _ => None,
        }
    }

    /// Waits until request `index`'s body is refused (forever if it never is).
    pub async fn body_refused(&self, index: u64) -> Reject {
        loop {
            let notified = self.body_refused.notified();
            if let Some((at, reject, true)) = self.lock().refused
                && at == index
            {
                return reject;
            }
            notified.await;
        }
    }

    fn refuse(&self, index: u64, reject: Reject, in_body: bool) {
        self.lock().refused = Some((index, reject, in_body));
        if in_body {
            self.body_refused.notify_waiters();
        }
    }

    /// When the connection became idle, given that `heads` request heads were read:
    /// `None` while a response is under way or a head read has not begun yet. Unlike
    /// [`ConnGuard::idle`] it registers no waker, so a response's end wakes nobody: an
    /// HTTP/1 connection's reader checks back on its timer instead, which saves waking
    /// the connection's task once more after every response.
    fn idle_since(&self, heads: u64) -> Option<Instant> {
        if self.busy() {
            return None;
        }
        match self.lock().idle_since {
            Some((since, begun)) if begun == heads => Some(since),
            _ => None,
        }
    }

    /// Whether a response is under way.
    fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    fn idle(&self, cx: &Context<'_>) -> bool {
        if !self.busy() {
            return true;
        }
        self.lock().idle_waker = Some(cx.waker().clone());
        // A response may have finished between the load and the registration.
        !self.busy()
    }
}

/// Held while a request's response is under way; dropping it may make the connection
/// idle.
pub struct Busy(Arc<ConnGuard>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut shared = self.0.lock();
            shared.idle_since = Some((Instant::now(), shared.requests));
            if let Some(waker) = shared.idle_waker.take() {
                waker.wake();
            }
        }
    }
}

/// Told of the data a response body hands to hyper (the access log counts it).
pub trait Observer {
    /// `bytes` more of the body are on their way to the client.
    fn data(&mut self, bytes: usize);
}

impl<O: Observer> Observer for Option<O> {
    fn data(&mut self, bytes: usize) {
        if let Some(observer) = self {
            observer.data(bytes);
        }
    }
}

/// Both observers see the data (the access log and the metrics).
impl<A: Observer, B: Observer> Observer for (A, B) {
    fn data(&mut self, bytes: usize) {
        self.0.data(bytes);
        self.1.data(bytes);
    }
}

/// A response body that holds its request's [`Busy`] token until it is finished, and
/// shows its data to an [`Observer`], dropped with it (after the body).
pub struct Tracked<B, O> {
    body: B,
    observer: O,
    _busy: Busy,
}

impl<B, O> Tracked<B, O> {
    /// `body`, holding `busy` and `observer` for as long as it lives.
    pub fn new(body: B, observer: O, busy: Busy) -> Tracked<B, O> {
        Tracked {
            body,
            observer,
            _busy: busy,
        }
    }
}

impl<B, O> Body for Tracked<B, O>
where
    B: Body + Unpin,
    B::Data: Buf,
    O: Observer + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.observer.data(data.remaining());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not yet known whether HTTP/1 or HTTP/2 prior knowledge.
    Detect,
    /// HTTP/1: checked.
    Checked,
    /// HTTP/2 (or already checked by someone else): passed through.
    Through,
    /// Upgraded by a 101 (a WebSocket): passed through, with no read deadline.
    Upgraded,
    /// A refusal was handed over: nothing more is read.
    Done,
    /// Timed out: the client is told the connection ended.
    Ended,
}

/// A client connection wrapped by the guard.
pub struct Guarded<S> {
    io: S,
    guard: Arc<ConnGuard>,
    checker: Checker,
    mode: Mode,
    timeouts: Timeouts,
    /// Bytes read from the client: `[start, released)` may go to hyper, the rest is held.
    inbuf: Vec<u8>,
    start: usize,
    released: usize,
    /// Where the bytes held after an upgrade request begin (not examined yet).
    unexamined: Option<usize>,
    /// What is left of the stand-in request to hand to hyper.
    stand_in: &'static [u8],
    /// When the connection started, for the first request's head timeout.
    accepted: Instant,
    /// When the current head's first byte arrived.
    read_since: Option<Instant>,
    read_timer: Option<Pin<Box<Sleep>>>,
    /// The task the read timer wakes (the waker it was last polled with).
    read_timer_waker: Option<Waker>,
    /// The read timer was last polled for a check-back (a deadline a keep-alive timeout
    /// from then, see [`Guarded::read_deadline`]), so it fires no later than a
    /// check-back set now would.
    checking_back: bool,
    /// HTTP/2: since when no stream has been open, at which count of requests begun.
    h2_idle_since: Option<(Instant, u64)>,
    /// HTTP/2: the server was told to send GOAWAY for idleness.
    h2_goaway: bool,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Guarded<S> {
    /// Guards `io`; a connection that chose h2 by ALPN is then [`Guarded::pass_through`].
    pub fn new(io: S, guard: Arc<ConnGuard>, limits: Limits, timeouts: Timeouts) -> Guarded<S> {
        Guarded {
            io,
            guard,
            checker: Checker::new(limits),
            mode: Mode::Detect,
            timeouts,
            inbuf: Vec::new(),
            start: 0,
            released: 0,
            unexamined: None,
            stand_in: &[],
            accepted: Instant::now(),
            read_since: None,
            read_timer: None,
            read_timer_waker: None,
            checking_back: false,
            h2_idle_since: None,
            h2_goaway: false,
            write_timer: None,
        }
    }

    /// Passes everything through unchecked (a connection that negotiated h2).
    pub fn pass_through(mut self) -> Guarded<S> {
        self.mode = Mode::Through;
        self
    }

    /// The deadline for the next read, if any: head and keep-alive timeouts.
    ///
    /// The keep-alive timeout counts from the end of the last response. While one is
    /// under way the deadline is a check-back a keep-alive timeout away: the timer set
    /// for it finds, when it fires, either a response still under way (and is set
    /// again) or the time the connection became idle.
    fn read_deadline(&mut self) -> Option<Instant> {
        self.checking_back = false;
        if self.checker.in_head() || (self.mode == Mode::Detect && self.inbuf.len() > self.start) {
            let since = *self.read_since.get_or_insert_with(Instant::now);
            let since = if self.checker.heads() == 0 {
                self.accepted
            } else {
                since
            };
            return Some(since + self.timeouts.head);
        }
        self.read_since = None;
        if !self.checker.between_requests() {
            return None;
        }
        if self.checker.heads() == 0 {
            return Some(self.accepted + self.timeouts.head);
        }
        let idle = self.guard.idle_since(self.checker.heads());
        self.checking_back = idle.is_none();
        let since = idle.unwrap_or_else(Instant::now);
        Some(since + self.timeouts.keepalive)
    }

    /// Whether a read that found nothing may leave the read timer as it is, without
    /// reading the clock or polling the timer: a response is under way (so the
    /// deadline would be a check-back a keep-alive timeout from now), and the timer,
    /// last polled for an earlier check-back by this same task, has not fired. It
    /// fires no later than the check-back this look would set, and the look it wakes
    /// sets the next one. hyper looks for more bytes each time it runs (several times
    /// per request), which read the clock and polled the timer each time.
    fn timer_checks_back(&mut self, cx: &Context<'_>) -> bool {
        let armed = self.checking_back
            && self
                .read_timer
                .as_ref()
                .is_some_and(|timer| !timer.is_elapsed())
            && self
                .read_timer_waker
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()));
        if !armed
            || self.mode != Mode::Checked
            || self.checker.in_head()
            || !self.checker.between_requests()
            || self.checker.heads() == 0
            || !self.guard.busy()
        {
            return false;
        }
        // What `read_deadline` would have done: the next head's time starts afresh.
        self.read_since = None;
        true
    }

    /// Examines the bytes read into `inbuf` from `from` on.
    fn examine(&mut self, from: usize) {
        if self.mode == Mode::Detect {
            let seen = &self.inbuf[self.start..];
            let n = seen.len().min(H2_PREFACE.len());
            if seen[..n] != H2_PREFACE[..n] {
                self.mode = Mode::Checked;
                // Everything read so far is checked as HTTP/1.
                return self.examine_checked(self.start);
            }
            if n == H2_PREFACE.len() {
                self.mode = Mode::Through;
                self.released = self.inbuf.len();
            }
            return;
        }
        self.examine_checked(from)
    }

    fn examine_checked(&mut self, from: usize) {
        match self.checker.examine(&self.inbuf[from..]) {
            Ok(examined) => {
                self.released += examined.released;
                if self.checker.awaiting_upgrade() && self.unexamined.is_none() {
                    self.unexamined = Some(from + examined.examined);
                }
            }
            Err(Refused { released, reject }) => {
                // Requests before the refused one go to hyper as they are.
                self.released += released;
                let in_body = !self.checker.refused_in_head();
                let index = if in_body {
                    self.checker.heads().saturating_sub(1)
                } else {
                    self.checker.heads()
                };
                debug!("refusing request {index} of a connection: {reject}");
                self.guard.refuse(index, reject, in_body);
                // Held bytes of the refused request are dropped.
                self.inbuf.truncate(self.released);
                if !in_body {
                    self.stand_in = STAND_IN;
                }
                self.mode = Mode::Done;
            }
        }
    }
}

impl<S: AsyncRead + Unpin> Guarded<S> {
    /// Reads an HTTP/2 connection's bytes straight into hyper's buffer, under the
    /// deadlines of [`Guarded::h2_deadline`].
    fn poll_through(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Err(_))) {
            return polled;
        }
        loop {
            let Some(deadline) = self.h2_deadline(cx) else {
                self.read_timer = None;
                return polled;
            };
            if !self.read_timer_passed(deadline, cx) {
                return polled;
            }
            if self.guard.requests() > 0 && !self.h2_goaway {
                debug!("HTTP/2 connection idle for the keep-alive timeout: GOAWAY");
                self.h2_goaway = true;
                self.h2_idle_since = None;
                self.guard.h2_idle.set();
                // Armed again: a client that never answers the GOAWAY is closed.
                continue;
            }
            debug!("closing an HTTP/2 connection: no request in time, or GOAWAY unanswered");
            self.mode = Mode::Ended;
            // Bytes already read go to hyper first; the end follows on the next read.
            return match polled {
                Poll::Pending => Poll::Ready(Ok(())),
                ready => ready,
            };
        }
    }

    /// Whether the read `deadline` has passed; if not, the read timer is set to wake `cx`
    /// by then.
    ///
    /// The timer is armed lazily: it stays registered while requests come and go, and a
    /// later deadline leaves it where it is. When it fires for a deadline the connection
    /// has since moved past, it is set again for the current one. A busy connection
    /// then touches the timer wheel about once per timeout rather than twice per
    /// request (a fresh timer per wait and its removal at the next bytes).
    fn read_timer_passed(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        let timer = match &mut self.read_timer {
            Some(timer) => {
                if timer.deadline() > deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .read_timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                match &self.read_timer_waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => self.read_timer_waker = Some(cx.waker().clone()),
                }
                return false;
            }
            if timer.deadline() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
    }

    /// An HTTP/2 connection's next deadline: the head timeout until a request has
    /// begun, then the keep-alive timeout from when its last stream ended (or from the
    /// GOAWAY), none while a stream is open.
    fn h2_deadline(&mut self, cx: &Context<'_>) -> Option<Instant> {
        let requests = self.guard.requests();
        if requests == 0 {
            return Some(self.accepted + self.timeouts.head);
        }
        if !self.guard.idle(cx) {
            self.h2_idle_since = None;
            return None;
        }
        let since = match self.h2_idle_since {
            Some((since, seen)) if seen == requests => since,
            // A request begun since the last look ended the idle time, even if it
            // was over before this look.
            _ => {
                let now = Instant::now();
                self.h2_idle_since = Some((now, requests));
                now
            }
        };
        Some(since + self.timeouts.keepalive)
    }

    /// Reads from the client onto the end of `inbuf`; returns the poll and the bytes
    /// read. With nothing held, the read lands on the stack and only what arrived is
    /// copied to the heap: a connection waiting for its next request (most of them,
    /// most of the time) then holds no buffer at all.
    /// Reads body bytes straight into hyper's buffer, at most `passable` of them (the
    /// rest of the body or chunk): they need no examining, only counting, so they skip
    /// the guard's buffer and its two copies (a megabyte upload showed them). No timer
    /// runs: a body's pace is the service's to judge (`--body-timeout`).
    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        passable: u64,
    ) -> Poll<io::Result<()>> {
        self.read_timer = None;
        let limit = usize::try_from(passable).map_or(buf.remaining(), |p| p.min(buf.remaining()));
        let before = buf.filled().len();
        let filled = {
            let mut part = buf.take(limit);
            match Pin::new(&mut self.io).poll_read(cx, &mut part) {
                Poll::Ready(Ok(())) => part.filled().len(),
                other => return other,
            }
        };
        // SAFETY: the read initialised the first `filled` bytes of `part`, which are the
        // first unfilled bytes of `buf`.
        unsafe { buf.assume_init(filled) };
        buf.advance(filled);
        if filled > 0 {
            let examined = self.checker.examine(&buf.filled()[before..]);
            debug_assert!(examined.is_ok(), "body bytes are only counted");
        }
        Poll::Ready(Ok(()))
    }

    fn read_more(&mut self, cx: &mut Context<'_>) -> (Poll<io::Result<()>>, usize) {
        if self.inbuf.is_empty() {
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_SIZE];
            let mut read = ReadBuf::uninit(&mut stack);
            let polled = Pin::new(&mut self.io).poll_read(cx, &mut read);
            self.inbuf.extend_from_slice(read.filled());
            return (polled, read.filled().len());
        }
        let from = self.inbuf.len();
        self.inbuf.reserve(READ_SIZE);
        // Read into the spare capacity: zeroing 16 KiB before every read showed in
        // profiles.
        let mut read = ReadBuf::uninit(self.inbuf.spare_capacity_mut());
        let polled = Pin::new(&mut self.io).poll_read(cx, &mut read);
        let filled = read.filled().len();
        // SAFETY: ReadBuf guarantees its first `filled` bytes were initialised, and
        // they are the bytes right after the vector's current length.
        unsafe { self.inbuf.set_len(from + filled) };
        (polled, filled)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.mode == Mode::Through && this.start == this.inbuf.len() {
            return this.poll_through(cx, buf);
        }
        if this.mode == Mode::Upgraded && this.start == this.inbuf.len() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        if this.mode == Mode::Checked && this.start == this.inbuf.len() {
            let passable = this.checker.passable();
            if passable > 0 {
                return this.poll_body(cx, buf, passable);
            }
        }
        loop {
            if this.start < this.released {
                let n = (this.released - this.start).min(buf.remaining());
                buf.put_slice(&this.inbuf[this.start..this.start + n]);
                this.start += n;
                if this.start == this.inbuf.len() {
                    // Freed, not cleared: an idle connection holds no read buffer.
                    this.inbuf = Vec::new();
                    this.start = 0;
                    this.released = 0;
                    this.unexamined = this.unexamined.map(|_| 0);
                }
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Ended {
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Done {
                // The stand-in goes to hyper once the responses before it are done, as
                // a client's next request would (hyper reads ahead no further).
                if this.stand_in.is_empty() || !this.guard.idle(cx) {
                    // The refusal's response closes the connection; nothing more is read.
                    return Poll::Pending;
                }
                let n = this.stand_in.len().min(buf.remaining());
                buf.put_slice(&this.stand_in[..n]);
                this.stand_in = &this.stand_in[n..];
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Through {
                return this.poll_through(cx, buf);
            }
            if this.mode == Mode::Upgraded {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            if this.mode == Mode::Checked && this.checker.awaiting_upgrade() {
                match this.guard.upgrade_outcome(this.checker.heads(), cx) {
                    Some(true) => {
                        // What the client sent after its handshake is the WebSocket's.
                        this.mode = Mode::Upgraded;
                        this.released = this.inbuf.len();
                        this.read_timer = None;
                    }
                    Some(false) => {
                        this.checker.resume();
                        let from = this.unexamined.take().unwrap_or(this.inbuf.len());
                        this.examine_checked(from);
                    }
                    // Nothing more is read until the answer is known.
                    None => return Poll::Pending,
                }
                continue;
            }
            if let Some(polled) = this.poll_fill(cx) {
                return polled;
            }
        }
    }
}

impl<S: AsyncRead + Unpin> Guarded<S> {
    /// Reads until it is known whether the client speaks HTTP/2 with prior knowledge
    /// (its first bytes are the preface): true, or false for HTTP/1. The bytes stay in
    /// the guard for the server chosen to read. A connection that ends or times out
    /// first is HTTP/1's to close (its next read finds the end).
    pub fn poll_detect(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if self.mode != Mode::Detect {
                return Poll::Ready(Ok(self.mode == Mode::Through));
            }
            if let Some(polled) = self.poll_fill(cx) {
                return polled.map_ok(|()| false);
            }
        }
    }

    /// Reads more from the client and examines it: None when bytes arrived (look again
    /// at what the guard holds), else what the read of hyper returns: the end of input,
    /// an error, a wait (the read deadline set), or the end after a timeout.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        if self.start > 0 && self.start == self.released {
            // Keep the held bytes only.
            self.inbuf.drain(..self.start);
            self.released -= self.start;
            let drained = self.start;
            self.unexamined = self.unexamined.map(|at| at.saturating_sub(drained));
            self.start = 0;
        }
        let from = self.inbuf.len();
        let (polled, filled) = self.read_more(cx);
        match polled {
            Poll::Ready(Ok(())) if filled == 0 => {
                // End of input; a partly received head is dropped with it.
                self.inbuf.truncate(self.released);
                Some(Poll::Ready(Ok(())))
            }
            Poll::Ready(Ok(())) => {
                self.examine(from);
                None
            }
            Poll::Ready(Err(err)) => Some(Poll::Ready(Err(err))),
            Poll::Pending => {
                if self.timer_checks_back(cx) {
                    return Some(Poll::Pending);
                }
                // No deadline while a body is read (the service times it): a timer
                // still armed wakes the connection once, for nothing, at most.
                let Some(deadline) = self.read_deadline() else {
                    return Some(Poll::Pending);
                };
                if self.read_timer_passed(deadline, cx) {
                    debug!("closing a connection: request head or keep-alive timeout");
                    self.inbuf.truncate(self.released);
                    self.mode = Mode::Ended;
                    return Some(Poll::Ready(Ok(())));
                }
                Some(Poll::Pending)
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Guarded<S> {
    /// Applies the send timeout to a write that returned `polled`.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => {
                let send = self.timeouts.send;
                let timer = self
                    .write_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
                if timer.as_mut().poll(cx).is_ready() {
                    debug!("dropping a connection: the client read nothing for {send:?}");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "send timeout",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.write_timer = None;
                ready
            }
        }
    }
}

impl<S: AsyncWrite + SendFile + Unpin> Guarded<S> {
    /// Lets the responses on this connection send their files with sendfile(2) (see
    /// [`super::mapped`]), if its socket can: plain and written vectored (hyper then
    /// hands over body chunks untouched).
    pub fn send_files(self) -> Guarded<S> {
        if S::CAN_SEND_FILES && self.io.is_write_vectored() {
            self.guard.mapped.enable();
        }
        self
    }

    /// Writes `bufs`, in which `found` are bytes of a mapped file: the slices before
    /// them (a response head) held back to share a packet with the file's first bytes,
    /// else those with sendfile(2). A short write is fine: hyper writes the rest next.
    fn write_with_file(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
        found: FileSlices,
    ) -> Poll<io::Result<usize>> {
        if found.index > 0 {
            return self.io.poll_write_more(cx, &bufs[..found.index]);
        }
        self.io
            .poll_send_file(cx, &found.file, found.offset, found.len)
    }

    /// Writes `bufs` the guard's own way, if it has one for them: mapped file slices
    /// with sendfile(2), the connection's last response on a TCP socket with
    /// `MSG_MORE` (see [`super::last`]). None: a plain write will do.
    fn write_own_way(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Option<Poll<io::Result<usize>>> {
        if let Some(found) = self.guard.mapped.find(bufs) {
            return Some(self.write_with_file(cx, bufs, found));
        }
        if !self.guard.last.is_last() {
            return None;
        }
        let fd = self.io.tcp_fd()?;
        Some(self.write_last(cx, bufs, fd))
    }

    /// Writes `bufs` of the connection's last response to socket `fd`, which holds them
    /// back for the FIN the shutdown that follows sends.
    fn write_last(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
        fd: RawFd,
    ) -> Poll<io::Result<usize>> {
        let polled = self.io.poll_write_more(cx, bufs);
        if let Poll::Ready(Ok(written)) = polled
            && written > 0
        {
            self.guard.last.holding(fd);
        }
        polled
    }
}

impl<S> Drop for Guarded<S> {
    /// A connection ended without the shutdown hyper would make (an error): what its
    /// socket held back for the FIN goes now, before the socket closes (a close with
    /// unread input resets the connection, and would discard it).
    fn drop(&mut self) {
        self.guard.last.push();
    }
}

impl<S: AsyncWrite + SendFile + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let bufs = [io::IoSlice::new(data)];
        let polled = match this.write_own_way(cx, &bufs) {
            Some(polled) => polled,
            None => Pin::new(&mut this.io).poll_write(cx, data),
        };
        this.timed(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match this.write_own_way(cx, bufs) {
            Some(polled) => polled,
            None => Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
        };
        this.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.timed(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        if polled.is_ready() {
            this.guard.last.shut();
        }
        polled
    }
}
