//! The runtime queue: events accepted from ingest, waiting for a guest worker.
//!
//! Bounded by `queues.events`; memory is taken as it fills (and given back when it drains), not
//! up front. A full queue pushes back: a blocking submitter (an NDJSON reader) waits on a
//! condition variable, an async one (a broker hook, on its client's own connection task) waits
//! for a notification, so that the publisher is slowed down instead of its events dropped. Workers
//! take events in batches and wake whoever waits for room.
//!
//! The queue also starts its guest workers, as the load needs them: the first when an event is
//! first queued, then one more (up to `guest.workers`) whenever an event has waited longer than
//! [`GROW_AFTER`] with no worker free. A light load is handled by one thread and one guest
//! instance, or by none, when every event is run where it was submitted (see
//! [`EventQueue::is_idle`]); a worker once started runs until the queue closes.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::completion::Completion;
use crate::event::Event;

/// Room kept allocated when the queue drains; what a burst took beyond it is given back.
const KEPT_CAPACITY: usize = 1024;

/// How long the oldest event may wait with every worker busy before another worker is started.
/// Far above the time one small event takes in the guest (a few µs), far below what a publisher
/// would notice.
pub(super) const GROW_AFTER: Duration = Duration::from_millis(1);

/// Starts worker number `index` on its own thread, taking events from the queue it is given.
pub(super) type SpawnWorker = Box<dyn Fn(usize, Arc<EventQueue>) -> std::io::Result<JoinHandle<()>> + Send + Sync>;

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
    /// The workers, once [`EventQueue::start_workers`] is called.
    workers: OnceLock<Workers>,
    /// [`GROW_AFTER`], but in tests.
    grow_after: Duration,
}

/// The guest worker threads started so far, and how to start another.
struct Workers {
    max: usize,
    spawn: SpawnWorker,
    /// Reaches the queue without keeping it alive (it owns this).
    queue: Weak<EventQueue>,
    /// `None` once taken for the drain: no worker starts after that.
    started: Mutex<Option<Vec<JoinHandle<()>>>>,
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
    /// Workers waiting in [`EventQueue::pop_batch`] for an event.
    idle: usize,
    /// Workers started (counted before their thread runs).
    workers: usize,
    /// Blocking submitters waiting for room.
    blocked: usize,
}

impl EventQueue {
    pub(super) fn new(capacity: usize) -> EventQueue {
        EventQueue {
            state: Mutex::new(State { events: VecDeque::new(), closed: false, idle: 0, workers: 0, blocked: 0 }),
            capacity,
            readable: Condvar::new(),
            writable: Condvar::new(),
            room: Notify::new(),
            workers: OnceLock::new(),
            grow_after: GROW_AFTER,
        }
    }

    /// Sets how workers are started: with `spawn`, up to `max` in all, as events wait (see the
    /// module docs). Called once, before the first push.
    pub(super) fn start_workers(self: &Arc<Self>, max: usize, spawn: SpawnWorker) {
        let workers = Workers { max, spawn, queue: Arc::downgrade(self), started: Mutex::new(Some(Vec::new())) };
        assert!(self.workers.set(workers).is_ok(), "the workers are started once");
    }

    /// Whether nothing waits and every worker started waits for events: then an event may be
    /// run at once by whoever submits it, without overtaking one queued or in a worker's hands
    /// (so per-client order holds). `false` once closed.
    pub(super) fn is_idle(&self) -> bool {
        let state = self.lock();
        !state.closed && state.events.is_empty() && state.idle == state.workers
    }

    /// The worker threads started so far, for the drain to join; none is started after this.
    pub(super) fn take_workers(&self) -> Vec<JoinHandle<()>> {
        self.workers
            .get()
            .and_then(|workers| workers.started.lock().unwrap_or_else(PoisonError::into_inner).take())
            .unwrap_or_default()
    }

    /// Whether another worker should start: no worker is free and an event waits, with none
    /// started yet or for longer than [`GROW_AFTER`].
    fn short_of_workers(&self, state: &State) -> bool {
        state.idle == 0
            && state.events.front().is_some_and(|oldest| {
                state.workers == 0 || oldest.received_at.elapsed().is_ok_and(|waited| waited > self.grow_after)
            })
    }

    /// Starts one more worker, unless `max` run already or the drain has begun.
    fn add_worker(&self) {
        let Some(workers) = self.workers.get() else { return };
        let mut started = workers.started.lock().unwrap_or_else(PoisonError::into_inner);
        let (Some(started), Some(queue)) = (started.as_mut(), workers.queue.upgrade()) else { return };
        if started.len() < workers.max {
            // Counted first, so that the new worker is never seen idle beyond the count.
            self.lock().workers += 1;
            match (workers.spawn)(started.len(), queue) {
                Ok(thread) => {
                    started.push(thread);
                    tracing::debug!(workers = started.len(), "Events wait for the guest: one more worker.");
                }
                // The running workers go on; the next push or wait tries again.
                Err(error) => {
                    self.lock().workers -= 1;
                    tracing::warn!("Cannot start a guest worker: {error}.");
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pushes if there is room; never waits.
    pub(super) fn try_push(&self, event: Submission) -> Result<(), Refused> {
        let mut state = self.lock();
        let pushed = self.push_locked(&mut state, event);
        self.grow_if_short(state);
        pushed
    }

    /// Releases the lock and, when events wait for a free worker too long, starts another.
    fn grow_if_short(&self, state: MutexGuard<'_, State>) {
        let short = self.short_of_workers(&state);
        drop(state);
        if short {
            self.add_worker();
        }
    }

    /// Pushes, waiting as long as the queue is full.
    pub(super) fn push_blocking(&self, event: Submission) -> Result<(), Refused> {
        let mut state = self.lock();
        while !state.closed && state.events.len() >= self.capacity {
            state.blocked += 1;
            state = self.writable.wait(state).unwrap_or_else(PoisonError::into_inner);
            state.blocked -= 1;
        }
        let pushed = self.push_locked(&mut state, event);
        self.grow_if_short(state);
        pushed
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
        // A notification is a system call even when nobody waits.
        if state.idle > 0 {
            self.readable.notify_one();
        }
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
            state.idle += 1;
            state = self.readable.wait(state).unwrap_or_else(PoisonError::into_inner);
            state.idle -= 1;
        }
        let take = max.min(state.events.len());
        batch.extend(state.events.drain(..take));
        if state.events.is_empty() && state.events.capacity() > KEPT_CAPACITY {
            state.events.shrink_to(KEPT_CAPACITY);
        }
        let blocked = state.blocked > 0;
        // What is left waits for the next free worker; start one if none is.
        self.grow_if_short(state);
        if blocked {
            self.writable.notify_all();
        }
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

    #[test]
    fn the_first_worker_starts_with_the_first_event_and_a_second_once_an_event_has_waited() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::mpsc;
        // Long enough that no stall of a busy test machine passes for a wait.
        let grow_after = Duration::from_millis(100);
        let queue = Arc::new(EventQueue { grow_after, ..EventQueue::new(16) });
        let started = Arc::new(AtomicUsize::new(0));
        // Worker 0 stays busy with each event until the test lets it go.
        let (release, busy) = mpsc::channel::<()>();
        let busy = Mutex::new(Some(busy));
        let spawn: SpawnWorker = {
            let started = started.clone();
            Box::new(move |index, queue: Arc<EventQueue>| {
                started.fetch_add(1, Ordering::SeqCst);
                let busy = if index == 0 { busy.lock().unwrap().take() } else { None };
                std::thread::Builder::new().spawn(move || {
                    let mut batch = Vec::new();
                    while queue.pop_batch(1, &mut batch) {
                        if let Some(busy) = &busy {
                            let _ = busy.recv();
                        }
                    }
                })
            })
        };
        queue.start_workers(2, spawn);
        assert_eq!(started.load(Ordering::SeqCst), 0, "no worker before an event is queued");
        assert!(queue.is_idle(), "with no worker and no event, an event may run where it is submitted");
        queue.try_push(event(0)).unwrap();
        assert_eq!(started.load(Ordering::SeqCst), 1, "the first event queued starts a worker at once");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while queue.len() > 0 {
            assert!(std::time::Instant::now() < deadline, "worker 0 never took its event");
            std::thread::yield_now();
        }
        assert!(!queue.is_idle(), "worker 0 holds event 0: an event run elsewhere could overtake it");
        queue.try_push(event(1)).unwrap();
        assert_eq!(started.load(Ordering::SeqCst), 1, "an event that has not waited yet starts no worker");
        // The condition under test is an age: let event 1 grow older than the threshold.
        std::thread::sleep(grow_after + grow_after / 2);
        queue.try_push(event(2)).unwrap();
        assert_eq!(started.load(Ordering::SeqCst), 2, "event 1 waited with every worker busy");
        drop(release);
        queue.close();
        let workers = queue.take_workers();
        assert_eq!(workers.len(), 2);
        for worker in workers {
            worker.join().unwrap();
        }
        queue.add_worker();
        assert_eq!(started.load(Ordering::SeqCst), 2, "no worker starts after the drain took them");
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
