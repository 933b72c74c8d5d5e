//! A signal one task waits for: set once by anyone, and from then on it stays set.
//!
//! The connection's task waits on two of these beside hyper's connection (an HTTP/2
//! connection idle for the keep-alive timeout, a response stalled for the send timeout)
//! and polls them each time it runs, several times per request. `tokio::sync::Notify`
//! takes a lock and checks its list of waiters on every such poll; this is one atomic
//! load and a waker compare.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use atomic_waker::AtomicWaker;

#[derive(Default)]
pub struct Signal {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// Sets the signal and wakes its waiter, if one waits.
    pub fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves once the signal is set (at once if it already is). One task at a time
    /// may wait.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // Set between the first look and the registration: its wake found no one.
            if self.set.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_is_woken_when_the_signal_is_set_and_a_late_one_passes() {
        let signal = std::sync::Arc::new(Signal::default());
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move { signal.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        signal.set();
        waiter.await.unwrap();
        // Set stays set.
        signal.wait().await;
    }
}
