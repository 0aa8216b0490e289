//! The runtime queue: events accepted from ingest, waiting for a guest worker.
//!
//! Bounded by `queues.events`; memory is taken as it fills (and given back when it drains), not
//! up front. A full queue pushes back: a blocking submitter (an NDJSON reader) waits on a
//! condition variable, an async one (a broker hook, on its client's own connection task) waits
//! for a notification, so that the publisher is slowed down instead of its events dropped. Workers
//! take events in batches and wake whoever waits for room.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::completion::Completion;
use crate::event::Event;

/// Room kept allocated when the queue drains; what a burst took beyond it is given back.
const KEPT_CAPACITY: usize = 1024;

/// An event and, when its ingest waits to hear that it is safe, the token to complete then.
pub(super) type Submission = (Event, Option<Completion>);

/// Why an event was not pushed; it is handed back with its token.
#[derive(Debug)]
pub(super) enum Refused {
    /// The queue is full (and the caller would not, or no longer, wait).
    Full(Box<Submission>),
    /// The queue is closed: the runtime shuts down.
    Closed(Box<Submission>),
}

pub(super) struct EventQueue {
    state: Mutex<State>,
    capacity: usize,
    /// Workers wait here for events.
    readable: Condvar,
    /// Blocking submitters wait here for room.
    writable: Condvar,
    /// Async submitters wait here for room.
    room: Notify,
}

/// A submission in the queue, and when it arrived (for the delivery latency).
pub(super) struct Queued {
    pub received_at: SystemTime,
    pub event: Event,
    pub done: Option<Completion>,
}

struct State {
    events: VecDeque<Queued>,
    closed: bool,
}

impl EventQueue {
    pub(super) fn new(capacity: usize) -> EventQueue {
        EventQueue {
            state: Mutex::new(State { events: VecDeque::new(), closed: false }),
            capacity,
            readable: Condvar::new(),
            writable: Condvar::new(),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pushes if there is room; never waits.
    pub(super) fn try_push(&self, event: Submission) -> Result<(), Refused> {
        let mut state = self.lock();
        self.push_locked(&mut state, event)
    }

    /// Pushes, waiting as long as the queue is full.
    pub(super) fn push_blocking(&self, event: Submission) -> Result<(), Refused> {
        let mut state = self.lock();
        while !state.closed && state.events.len() >= self.capacity {
            state = self.writable.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        self.push_locked(&mut state, event)
    }

    /// Pushes, waiting without blocking the thread while the queue is full: forever with `None`,
    /// else at most `limit`.
    pub(super) async fn push(&self, mut event: Submission, limit: Option<Duration>) -> Result<(), Refused> {
        let deadline = limit.map(|limit| tokio::time::Instant::now() + limit);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_push(event) {
                Err(Refused::Full(back)) => event = *back,
                done => return done,
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, room).await.is_err() {
                        return self.try_push(event);
                    }
                }
                None => room.await,
            }
        }
    }

    fn push_locked(&self, state: &mut State, event: Submission) -> Result<(), Refused> {
        if state.closed {
            return Err(Refused::Closed(Box::new(event)));
        }
        if state.events.len() >= self.capacity {
            return Err(Refused::Full(Box::new(event)));
        }
        let (event, done) = event;
        state.events.push_back(Queued { received_at: SystemTime::now(), event, done });
        self.readable.notify_one();
        Ok(())
    }

    /// Moves up to `max` events into `batch`, waiting for at least one; `false` once the queue is
    /// closed and empty.
    pub(super) fn pop_batch(&self, max: usize, batch: &mut Vec<Queued>) -> bool {
        let mut state = self.lock();
        while state.events.is_empty() {
            if state.closed {
                return false;
            }
            state = self.readable.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        let take = max.min(state.events.len());
        batch.extend(state.events.drain(..take));
        if state.events.is_empty() && state.events.capacity() > KEPT_CAPACITY {
            state.events.shrink_to(KEPT_CAPACITY);
        }
        drop(state);
        self.writable.notify_all();
        self.room.notify_waiters();
        true
    }

    /// No more pushes; waiting submitters are refused, workers drain what is left.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_all();
        self.writable.notify_all();
        self.room.notify_waiters();
    }

    /// Events waiting now.
    pub(super) fn len(&self) -> usize {
        self.lock().events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Disconnection, Event};

    fn event(n: usize) -> Submission {
        let event = Event::ClientDisconnected(Disconnection {
            client: crate::event::Client { clientid: format!("c{n}"), username: None },
            reason: "normal".into(),
        });
        (event, None)
    }

    #[test]
    fn a_full_queue_refuses_try_push_and_makes_push_blocking_wait_for_room() {
        let queue = std::sync::Arc::new(EventQueue::new(2));
        queue.try_push(event(0)).unwrap();
        queue.try_push(event(1)).unwrap();
        assert!(matches!(queue.try_push(event(2)), Err(Refused::Full(_))));
        let pusher = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.push_blocking(event(2)))
        };
        let mut batch = Vec::new();
        assert!(queue.pop_batch(1, &mut batch));
        pusher.join().unwrap().unwrap();
        queue.close();
        while queue.pop_batch(10, &mut batch) {}
        let ids: Vec<String> = batch.iter().map(|queued| queued.event.clientid().unwrap().to_string()).collect();
        assert_eq!(ids, ["c0", "c1", "c2"], "every event, in order");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_async_push_waits_for_room_or_its_limit() {
        let queue = std::sync::Arc::new(EventQueue::new(1));
        queue.try_push(event(0)).unwrap();
        let limited = queue.push(event(1), Some(Duration::from_millis(20))).await;
        assert!(matches!(limited, Err(Refused::Full(_))), "the bounded wait gives up");
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.push(event(2), None).await })
        };
        let popper = {
            let queue = queue.clone();
            tokio::task::spawn_blocking(move || {
                let mut batch = Vec::new();
                queue.pop_batch(1, &mut batch);
                batch
            })
        };
        assert_eq!(popper.await.unwrap().len(), 1);
        waiting.await.unwrap().unwrap();
        queue.close();
        assert!(matches!(queue.push(event(3), None).await, Err(Refused::Closed(_))));
    }
}
