//! Completion signals: how an ingest learns that the runtime is done with one of its events.
//!
//! An ingest that owes its source an acknowledgement (the MQTT bridge: a PUBACK) submits the event
//! with a [`Completion`] ([`Submitter::submit_with`](crate::runtime::Submitter::submit_with)) and
//! keeps the [`Completed`] future. The runtime completes the token once the event is safe:
//! - no request was made (the event is filtered, or its guest call failed for good);
//! - with a spool, its request is written to the spool (`DeliveryQueue::push` returned);
//! - without one, its request is done: delivered (2xx), or given up for good.
//!
//! An event whose request goes to several endpoints has its token forked, one per request
//! ([`Completion::fork`]); the ingest hears once every fork is completed.
//!
//! A token dropped without being completed (the runtime shut down before taking the event, or a
//! worker died) resolves its future as [`Outcome::Abandoned`]: the event is not safe, and the
//! ingest must not acknowledge it. Events without a token (the embedded broker, NDJSON) cost
//! nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

/// The runtime's promise to say when it is done with one event; see the module doc.
#[derive(Debug)]
pub struct Completion {
    shared: Arc<Shared>,
    completed: bool,
}

/// What the forks of one token share: the signal goes out when the last of them is gone, unless
/// one of them was dropped uncompleted.
#[derive(Debug)]
struct Shared {
    done: Option<oneshot::Sender<()>>,
    abandoned: AtomicBool,
}

/// Resolves when the [`Completion`] it was made with is completed or dropped.
#[derive(Debug)]
pub struct Completed(oneshot::Receiver<()>);

/// How a [`Completed`] future resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The event is safe: filtered, durable in the spool, delivered or given up for good.
    Done,
    /// The runtime dropped the token without completing it: the event is not safe.
    Abandoned,
}

impl Completion {
    /// A token and the future that resolves when the token is completed (or dropped).
    pub fn new() -> (Completion, Completed) {
        let (sender, receiver) = oneshot::channel();
        let shared = Arc::new(Shared { done: Some(sender), abandoned: AtomicBool::new(false) });
        (Completion { shared, completed: false }, Completed(receiver))
    }

    /// Another token for the same event: the event is safe once this one and every other fork
    /// are completed.
    pub fn fork(&self) -> Completion {
        Completion { shared: self.shared.clone(), completed: false }
    }

    /// Says the event is safe (as far as this fork goes). Nobody listening any more (the ingest
    /// went away) is fine.
    pub fn complete(mut self) {
        self.completed = true;
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.completed {
            self.shared.abandoned.store(true, Ordering::Release);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(done) = self.done.take().filter(|_| !self.abandoned.load(Ordering::Acquire)) {
            let _ = done.send(());
        }
    }
}

impl Future for Completed {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        Pin::new(&mut self.0).poll(cx).map(|result| match result {
            Ok(()) => Outcome::Done,
            Err(_) => Outcome::Abandoned,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_completed_token_says_done_and_a_dropped_one_abandoned() {
        let (token, completed) = Completion::new();
        token.complete();
        assert_eq!(completed.await, Outcome::Done);
        let (token, completed) = Completion::new();
        drop(token);
        assert_eq!(completed.await, Outcome::Abandoned);
    }

    #[tokio::test]
    async fn forks_are_done_when_all_are_completed_and_abandoned_when_one_is_dropped() {
        let (token, mut completed) = Completion::new();
        let fork = token.fork();
        token.complete();
        assert!(futures_poll(&mut completed).is_none(), "one fork is still out");
        fork.complete();
        assert_eq!(completed.await, Outcome::Done);

        let (token, completed) = Completion::new();
        let fork = token.fork();
        drop(fork);
        token.complete();
        assert_eq!(completed.await, Outcome::Abandoned);
    }

    fn futures_poll(completed: &mut Completed) -> Option<Outcome> {
        let waker = std::task::Waker::noop();
        match Pin::new(completed).poll(&mut Context::from_waker(waker)) {
            Poll::Ready(outcome) => Some(outcome),
            Poll::Pending => None,
        }
    }
}
