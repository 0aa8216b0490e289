//! The guest stage: events through the guest, requests to their endpoints' delivery queues.
//!
//! Its work is done in *lanes*, one per guest worker (`guest.workers`, or one with per-client
//! order), each with its own guest instance. A worker is an OS thread that takes events off the
//! runtime queue in batches (a busy worker never sleeps between events) and runs them in its
//! lane. When nothing waits in the queue and no worker holds an event, the ingest that submits
//! an event runs it itself in a free lane ([`GuestStage::run_inline`]): at everyday rates an
//! event then never changes threads before delivery, which would cost two wake-ups (the worker's
//! and then the delivery task's) per event. A guest version whose calls in an inline run took
//! longer than [`INLINE_LIMIT`] is not run inline again, so a slow guest costs the ingest's
//! thread once.
//!
//! In a lane, each batch goes to the guest version current at that batch in one `handle-batch`
//! call; each delivery is routed to its endpoints, and each endpoint's requests are handed to its
//! delivery queue at once. When the batch call fails, every event of the batch is given to
//! `handle` on its own, on a fresh instance after each failure, so a trap costs only the event
//! that causes it. After a failed event the lane hands the event to the built-in guest when
//! `guest.on_failure` says so (to deliver, or to write to the dead-letter file), and rolls a newly
//! swapped guest back when it keeps failing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use super::queue::{EventQueue, Queued, Submission};
use crate::completion::Completion;
use crate::config::{Config, FailurePolicy};
use crate::delivery::dead_letter::DeadLetters;
use crate::delivery::queue::DeliveryQueue;
use crate::guest::{ActiveGuest, Batch, GuestDelivery, GuestError, GuestInstance, GuestModule};
use crate::metrics::{FilterStage, Metrics, Problem};
use crate::request::Request;

/// Most events a worker takes off the queue at once.
const BATCH: usize = 256;

/// How long an inline run (one event, on an ingest's thread) may take before its guest version
/// is run by the workers only: far above a usual call (a few µs, a first instance under 5 ms),
/// short enough that a slow guest stalls an ingest thread once, briefly.
pub(super) const INLINE_LIMIT: Duration = Duration::from_millis(20);

/// The guest stage's lanes, and what every lane hands its results to.
pub(super) struct GuestStage {
    pub active: ActiveGuest,
    /// Each endpoint's delivery queue: the default endpoint's first, then the named ones'.
    pub requests: Arc<[Arc<DeliveryQueue>]>,
    pub dead_letters: Option<Arc<DeadLetters>>,
    pub metrics: Arc<Metrics>,
    /// Worker `i` runs in lane `i`; an inline run takes any free one.
    lanes: Box<[Mutex<Lane>]>,
    /// The guest generation not to run inline (one of its inline runs was too slow).
    slow_generation: AtomicU64,
}

/// One lane's guest instances and buffers.
struct Lane {
    /// Made on first use.
    current: Option<Current>,
    batch: Batch,
    outgoing: Outgoing,
}

/// What to do with a failed call's event, and this worker's instance of the built-in guest.
struct Fallback {
    policy: FailurePolicy,
    builtin: Running,
}

/// A guest version and this worker's instance of it (built on first use, dropped after a trap).
struct Running {
    guest: Arc<GuestModule>,
    instance: Option<GuestInstance>,
}

/// How one event's call ended: the delivery, none, or why it failed (with the event's topic or
/// client id, for the log).
type Answer = Result<Option<GuestDelivery>, GuestError>;

impl Running {
    fn new(guest: Arc<GuestModule>) -> Self {
        Running { guest, instance: None }
    }

    fn instance(&mut self) -> Result<&mut GuestInstance, GuestError> {
        if self.instance.is_none() {
            self.instance = Some(self.guest.instance()?);
        }
        Ok(self.instance.as_mut().expect("just made"))
    }

    /// One `handle` call; the instance is rebuilt on the next call after a failed one.
    fn call(&mut self, batch: &Batch, index: usize) -> Answer {
        let result = self.instance().and_then(|instance| instance.handle(batch, index));
        // After an invalid delivery the call itself worked, so the instance is still sound.
        if matches!(result, Err(GuestError::Trap(_) | GuestError::MemoryLimit { .. } | GuestError::Timeout(_))) {
            self.instance = None;
        }
        result
    }
}

/// The guest version this worker runs now, and its fallback.
struct Current {
    generation: u64,
    running: Running,
    fallback: Option<Fallback>,
}

/// Requests bound for each endpoint, gathered over one batch.
struct Outgoing {
    requests: Vec<Vec<Request>>,
    completions: Vec<Vec<Option<Completion>>>,
}

impl GuestStage {
    /// A stage of `lanes` lanes (one per worker that may run).
    pub(super) fn new(
        active: ActiveGuest,
        requests: Arc<[Arc<DeliveryQueue>]>,
        dead_letters: Option<Arc<DeadLetters>>,
        metrics: Arc<Metrics>,
        lanes: usize,
    ) -> GuestStage {
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let outgoing = Outgoing {
                    requests: requests.iter().map(|_| Vec::new()).collect(),
                    completions: requests.iter().map(|_| Vec::new()).collect(),
                };
                Mutex::new(Lane { current: None, batch: Batch::new(), outgoing })
            })
            .collect();
        GuestStage { active, requests, dead_letters, metrics, lanes, slow_generation: AtomicU64::new(u64::MAX) }
    }

    /// Worker `index`'s loop: batches off `events` through its lane until the queue is closed
    /// and drained.
    pub(super) fn work(&self, index: usize, events: &EventQueue) {
        let mut queued = Vec::with_capacity(BATCH);
        while events.pop_batch(BATCH, &mut queued) {
            let mut lane = self.lanes[index % self.lanes.len()].lock().unwrap_or_else(PoisonError::into_inner);
            self.run(&mut lane, queued.drain(..), true);
        }
    }

    /// Runs `submission` here, on the submitting thread, when that overtakes nothing and waits
    /// for nothing: the runtime queue is idle (see [`EventQueue::is_idle`]), a lane is free,
    /// every delivery queue is memory only and has room, and the guest version has not been too
    /// slow for it. Hands the submission back otherwise, for the queue.
    pub(super) fn run_inline(&self, events: &EventQueue, submission: Submission) -> Option<Submission> {
        let generation = self.active.generation();
        if self.slow_generation.load(Ordering::Relaxed) == generation
            || !self.requests.iter().all(|queue| queue.takes_without_waiting())
        {
            return Some(submission);
        }
        // The lane first: the drain waits for every lane after closing the queue, so a run that
        // then finds the queue open finishes before delivery closes.
        let Some(mut lane) = self.free_lane() else { return Some(submission) };
        if !events.is_idle() {
            return Some(submission);
        }
        let (event, done) = submission;
        let took = self.run(&mut lane, std::iter::once(Queued { received_at: SystemTime::now(), event, done }), false);
        if took > INLINE_LIMIT {
            self.slow_generation.store(generation, Ordering::Relaxed);
            tracing::info!(
                "A guest call took {} ms; this guest version is run on the guest workers only from now on.",
                took.as_millis()
            );
        }
        None
    }

    fn free_lane(&self) -> Option<MutexGuard<'_, Lane>> {
        self.lanes.iter().find_map(|lane| match lane.try_lock() {
            Ok(lane) => Some(lane),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        })
    }

    /// Runs `queued` through the guest in `lane` and hands the requests to their endpoints'
    /// queues: waiting for room when `may_wait`, else at once (see
    /// [`DeliveryQueue::push_now`]). Returns the time the guest calls took (with any instance
    /// they had to make).
    fn run(&self, lane: &mut Lane, queued: impl Iterator<Item = Queued>, may_wait: bool) -> Duration {
        let Lane { current, batch, outgoing } = lane;
        let current = match current {
            Some(current) => {
                self.follow(current);
                current
            }
            None => current.insert(self.current()),
        };
        let config = self.active.config();
        let mut in_guest = Duration::ZERO;
        let mut events = queued.peekable();
        while events.peek().is_some() {
            let mut arrivals = Vec::new();
            // Filled up to the guest's payload bound for one call (at least one event).
            while !batch.is_full(&current.running.guest) {
                let Some(Queued { received_at, event, done }) = events.next() else { break };
                batch.push(event);
                arrivals.push((received_at, done));
            }
            let started = Instant::now();
            let deliveries = self.deliveries(current, batch);
            let took = started.elapsed();
            in_guest += took;
            self.metrics.record_guest_calls(took, batch.len());
            for (index, (delivery, (received_at, done))) in deliveries.into_iter().zip(arrivals).enumerate() {
                match delivery {
                    Some(mut delivery) => {
                        delivery.request.received_at = Some(received_at);
                        self.route(&config, batch, index, delivery, done, outgoing);
                    }
                    // Filtered, or failed for good: the event is done with.
                    None => {
                        if let Some(done) = done {
                            done.complete();
                        }
                    }
                }
            }
            batch.clear();
            self.roll_back_if_failing(current);
        }
        for ((queue, requests), completions) in
            self.requests.iter().zip(&mut outgoing.requests).zip(&mut outgoing.completions)
        {
            if !requests.is_empty() {
                let (requests, completions) = (std::mem::take(requests), std::mem::take(completions));
                if may_wait {
                    queue.push_with(requests, completions);
                } else {
                    queue.push_now(requests, completions);
                }
            }
        }
        in_guest
    }

    /// The guest version current now, with its fallback.
    fn current(&self) -> Current {
        let (generation, guest) = self.active.current();
        Current { generation, running: Running::new(guest), fallback: self.fallback() }
    }

    /// Waits until no lane runs events (for the drain: after the queue is closed, no inline run
    /// starts, and one under way finishes its pushes before delivery closes).
    pub(super) fn wait_for_lanes(&self) {
        for lane in self.lanes.iter() {
            drop(lane.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }

    /// Switches to the guest version swapped in since, if any: one atomic load.
    fn follow(&self, current: &mut Current) {
        if self.active.generation() != current.generation {
            *current = self.current();
        }
    }

    /// Rolls a newly swapped guest back when it keeps failing, and switches to what runs then.
    fn roll_back_if_failing(&self, current: &mut Current) {
        if current.running.guest.should_roll_back() {
            self.active.roll_back(current.generation);
            self.follow(current);
        }
    }

    /// The delivery (or none) for each event of `batch`: from one `handle-batch` call, or, when
    /// that fails, from one `handle` call per event, each failure settled (counted, the fallback
    /// asked) at once, so that a guest that keeps failing is rolled back between two events as
    /// it would be without batches.
    fn deliveries(&self, current: &mut Current, batch: &Batch) -> Vec<Option<GuestDelivery>> {
        let called = current.running.instance().and_then(|instance| instance.handle_batch(batch));
        match called {
            Ok(answers) => answers
                .into_iter()
                .enumerate()
                .map(|(index, answer)| self.settle(current, batch, index, answer))
                .collect(),
            Err(_) => {
                current.running.instance = None;
                (0..batch.len())
                    .map(|index| {
                        self.roll_back_if_failing(current);
                        let answer = current.running.call(batch, index);
                        self.settle(current, batch, index, answer)
                    })
                    .collect()
            }
        }
    }

    fn fallback(&self) -> Option<Fallback> {
        self.active
            .fallback()
            .map(|fallback| Fallback { policy: fallback.policy, builtin: Running::new(fallback.builtin) })
    }

    /// Sends `delivery` to the endpoint the guest chose, or else to those of the rules that
    /// select its event (the default endpoint for rules that name none). Each extra endpoint
    /// gets a copy (the body is shared) and a fork of the event's completion.
    fn route(
        &self,
        config: &Config,
        batch: &Batch,
        index: usize,
        delivery: GuestDelivery,
        done: Option<Completion>,
        outgoing: &mut Outgoing,
    ) {
        let slots = match delivery.endpoint {
            Some(named) => 1u64 << (named + 1),
            None if config.endpoints.is_empty() => 1,
            None => config.filter.endpoint_slots(batch.kind(index), batch.topic(index)),
        };
        if slots == 0 {
            // A reload changed the rules since the event was admitted, and none selects it now.
            self.metrics.record_filtered(FilterStage::Host);
            if let Some(done) = done {
                done.complete();
            }
            return;
        }
        let last = 63 - slots.leading_zeros() as usize;
        let mut request = Some(delivery.request);
        let mut done = done;
        for slot in (0..=last).filter(|slot| slots & (1 << slot) != 0) {
            let (this_request, this_done) = if slot == last {
                (request.take().expect("the last slot takes the original"), done.take())
            } else {
                (request.clone().expect("only the last slot takes it"), done.as_ref().map(Completion::fork))
            };
            outgoing.requests[slot].push(this_request);
            outgoing.completions[slot].push(this_done);
        }
    }

    /// The delivery for event `index` of `batch`, from the guest's answer or, when that failed,
    /// from the fallback; or none.
    fn settle(&self, current: &mut Current, batch: &Batch, index: usize, answer: Answer) -> Option<GuestDelivery> {
        let error = match answer {
            Ok(Some(delivery)) => return Some(delivery),
            Ok(None) => {
                self.metrics.record_filtered(FilterStage::Guest);
                return None;
            }
            Err(error) => error,
        };
        let problem = match &error {
            GuestError::Timeout(_) => Problem::GuestTimeout,
            GuestError::Trap(_) | GuestError::MemoryLimit { .. } => Problem::GuestTrap,
            GuestError::InvalidDelivery(_) => Problem::InvalidDelivery,
            _ => Problem::GuestUnavailable,
        };
        let (guest, action) = (current.running.guest.name(), batch.kind(index).action());
        let about = batch.subject(index).unwrap_or("-");
        self.metrics.report(problem, 1, format_args!("Guest call failed ({guest}) on {action} {about:?}: {error}."));
        if let Some(fallback) = current.fallback.as_mut() {
            match fallback.builtin.call(batch, index) {
                Ok(Some(delivery)) if fallback.policy == FailurePolicy::Builtin => return Some(delivery),
                Ok(Some(delivery)) => match &self.dead_letters {
                    Some(dead_letters) => dead_letters.record_unsent(&delivery.request, &error.to_string()),
                    None => tracing::error!("No dead-letter file to keep the event in; it is dropped."),
                },
                Ok(None) => {
                    self.metrics.record_filtered(FilterStage::Guest);
                    return None;
                }
                Err(fallback_error) => tracing::error!("The built-in fallback failed too: {fallback_error}."),
            }
        }
        self.metrics.record_guest_loss();
        None
    }
}
