//! The queue carrying one stream's events from the channel's reader to the request's
//! task.
//!
//! It does what an unbounded tokio mpsc channel would, for the little a stream needs
//! (a head, a few body chunks, an end; one receiver; senders only in the reader's
//! hands), in one small allocation: tokio's channel costs two per stream, one of them a
//! block of 32 slots, both over-aligned, and atomics on every operation besides the
//! lock-free list. Here one mutex, never contended for long, guards a `VecDeque`.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use super::Event;

struct State {
    events: VecDeque<Event>,
    /// The receiver's task, waiting for an event.
    receiving: Option<Waker>,
    /// A task waiting for the receiver to go ([`EventSender::closed`]).
    closing: Option<Waker>,
    senders: usize,
    receiver_gone: bool,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock::lock(&self.state)
    }
}

/// A new stream's queue.
pub fn events() -> (EventSender, EventReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            events: VecDeque::new(),
            receiving: None,
            closing: None,
            senders: 1,
            receiver_gone: false,
        }),
    });
    (
        EventSender {
            shared: shared.clone(),
        },
        EventReceiver { shared },
    )
}

/// The reader's end: sends events, and tells when the request's task has gone.
pub struct EventSender {
    shared: Arc<Shared>,
}

/// The request's end.
pub struct EventReceiver {
    shared: Arc<Shared>,
}

impl EventSender {
    /// Queues `event` for the receiver; gives it back if the receiver has gone.
    pub fn send(&self, event: Event) -> Result<(), Event> {
        let waker = {
            let mut state = self.shared.lock();
            if state.receiver_gone {
                return Err(event);
            }
            state.events.push_back(event);
            state.receiving.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Whether the receiver has gone (the request's task ended).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().receiver_gone
    }

    /// Resolves once the receiver has gone. One task at a time may wait.
    pub async fn closed(&self) {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if state.receiver_gone {
                return Poll::Ready(());
            }
            state.closing = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Clone for EventSender {
    fn clone(&self) -> EventSender {
        self.shared.lock().senders += 1;
        EventSender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            match state.senders {
                0 => state.receiving.take(),
                _ => None,
            }
        };
        // The last sender gone: the receiver learns that nothing more comes.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl EventReceiver {
    /// The next event; `None` once every sender has gone and all was received.
    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<Event>> {
        let mut state = self.shared.lock();
        if let Some(event) = state.events.pop_front() {
            return Poll::Ready(Some(event));
        }
        if state.senders == 0 {
            return Poll::Ready(None);
        }
        match &mut state.receiving {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            receiving => *receiving = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// [`EventReceiver::poll_recv`] as a future.
    pub async fn recv(&mut self) -> Option<Event> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        let (events, waker) = {
            let mut state = self.shared.lock();
            state.receiver_gone = true;
            (std::mem::take(&mut state.events), state.closing.take())
        };
        // What was never received (and what it holds) goes outside the lock.
        drop(events);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_arrive_in_order_and_the_end_of_the_senders_ends_the_stream() {
        let (tx, mut rx) = events();
        let second = tx.clone();
        tx.send(Event::End).unwrap();
        second
            .send(Event::Failed(super::super::Failure::WorkerDied))
            .unwrap();
        drop(tx);
        assert!(matches!(rx.recv().await, Some(Event::End)));
        assert!(matches!(rx.recv().await, Some(Event::Failed(_))));
        let waiter = tokio::spawn(async move { rx.recv().await.is_none() });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a sender is left: nothing ends yet");
        drop(second);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn a_sender_learns_when_the_receiver_goes() {
        let (tx, rx) = events();
        assert!(!tx.is_closed());
        let tx = Arc::new(tx);
        let waiter = tokio::spawn({
            let tx = tx.clone();
            async move { tx.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(rx);
        waiter.await.unwrap();
        assert!(tx.is_closed());
        assert!(tx.send(Event::End).is_err());
    }
}
