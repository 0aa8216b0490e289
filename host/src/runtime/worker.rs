//! One guest worker: an OS thread with its own guest instance, fed from the shared queue.
//!
//! It takes events in batches (a busy worker never sleeps between events), gives each batch to
//! the guest version current at that batch in one `handle-batch` call, routes each delivery to
//! its endpoints, and hands each endpoint's requests to its delivery queue at once. When the
//! batch call fails, every event of the batch is given to `handle` on its own, on a fresh
//! instance after each failure, so a trap costs only the event that causes it. After a failed
//! event it hands the event to the built-in guest when `guest.on_failure` says so (to deliver,
//! or to write to the dead-letter file), and rolls a newly swapped guest back when it keeps
//! failing.

use std::sync::Arc;

use super::queue::{EventQueue, Queued};
use crate::completion::Completion;
use crate::config::{Config, FailurePolicy};
use crate::delivery::dead_letter::DeadLetters;
use crate::delivery::queue::DeliveryQueue;
use crate::guest::{ActiveGuest, Batch, GuestDelivery, GuestError, GuestInstance, GuestModule};
use crate::metrics::{FilterStage, Metrics, Problem};
use crate::request::Request;

/// Most events a worker takes off the queue at once.
const BATCH: usize = 256;

/// One guest worker's inputs and outputs.
pub(super) struct Worker {
    pub active: ActiveGuest,
    /// Closed when the runtime shuts down: drain it, then stop.
    pub events: Arc<EventQueue>,
    /// Each endpoint's delivery queue: the default endpoint's first, then the named ones'.
    pub requests: Arc<[Arc<DeliveryQueue>]>,
    pub dead_letters: Option<Arc<DeadLetters>>,
    pub metrics: Arc<Metrics>,
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

impl Worker {
    pub(super) fn run(self) {
        let (generation, guest) = self.active.current();
        let mut current = Current { generation, running: Running::new(guest), fallback: self.fallback() };
        let mut queued = Vec::with_capacity(BATCH);
        let mut batch = Batch::new();
        let mut outgoing = Outgoing {
            requests: self.requests.iter().map(|_| Vec::new()).collect(),
            completions: self.requests.iter().map(|_| Vec::new()).collect(),
        };
        while self.events.pop_batch(BATCH, &mut queued) {
            self.follow(&mut current);
            let config = self.active.config();
            let mut events = queued.drain(..).peekable();
            while events.peek().is_some() {
                let mut arrivals = Vec::new();
                // Filled up to the guest's payload bound for one call (at least one event).
                while !batch.is_full(&current.running.guest) {
                    let Some(Queued { received_at, event, done }) = events.next() else { break };
                    batch.push(event);
                    arrivals.push((received_at, done));
                }
                let started = std::time::Instant::now();
                let deliveries = self.deliveries(&mut current, &batch);
                self.metrics.record_guest_calls(started.elapsed(), batch.len());
                for (index, (delivery, (received_at, done))) in deliveries.into_iter().zip(arrivals).enumerate() {
                    match delivery {
                        Some(mut delivery) => {
                            delivery.request.received_at = Some(received_at);
                            self.route(&config, &batch, index, delivery, done, &mut outgoing);
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
                self.roll_back_if_failing(&mut current);
            }
            for ((queue, requests), completions) in
                self.requests.iter().zip(&mut outgoing.requests).zip(&mut outgoing.completions)
            {
                if !requests.is_empty() {
                    queue.push_with(std::mem::take(requests), std::mem::take(completions));
                }
            }
        }
    }

    /// Switches to the guest version swapped in since, if any: one atomic load.
    fn follow(&self, current: &mut Current) {
        if self.active.generation() != current.generation {
            let (generation, guest) = self.active.current();
            *current = Current { generation, running: Running::new(guest), fallback: self.fallback() };
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
