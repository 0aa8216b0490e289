//! One guest worker: an OS thread with its own guest instance, fed from the shared queue.
//!
//! It takes events in batches (a busy worker never sleeps between events), runs each through the
//! guest version current at that event, and hands the requests of a batch to delivery at once.
//! After a failed call it rebuilds the instance, hands the event to the built-in guest when
//! `guest.on_failure` says so (to deliver, or to write to the dead-letter file), and rolls a newly
//! swapped guest back when it keeps failing.

use std::sync::Arc;

use super::queue::{EventQueue, Queued};
use crate::config::FailurePolicy;
use crate::delivery::dead_letter::DeadLetters;
use crate::delivery::queue::DeliveryQueue;
use crate::event::Event;
use crate::guest::{ActiveGuest, GuestError, GuestInstance, GuestModule};
use crate::metrics::{FilterStage, Metrics, Problem};
use crate::request::Request;

/// Most events a worker takes off the queue at once.
const BATCH: usize = 256;

/// One guest worker's inputs and outputs.
pub(super) struct Worker {
    pub active: ActiveGuest,
    /// Closed when the runtime shuts down: drain it, then stop.
    pub events: Arc<EventQueue>,
    pub requests: Arc<DeliveryQueue>,
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

impl Running {
    fn new(guest: Arc<GuestModule>) -> Self {
        Running { guest, instance: None }
    }

    /// One call; the instance is rebuilt on the next call after a failed one. A failure comes
    /// with the topic (else the client id) of its event, for the log.
    fn call(&mut self, event: Event) -> Result<Option<Request>, (GuestError, Option<String>)> {
        let instance = match &mut self.instance {
            Some(instance) => instance,
            None => self.instance.insert(self.guest.instance().map_err(|error| (error, None))?),
        };
        let result = instance.handle(event).map_err(|error| (error, instance.failed_on().map(str::to_owned)));
        // After an invalid delivery the call itself worked, so the instance is still sound.
        if matches!(result, Err((GuestError::Trap(_) | GuestError::MemoryLimit { .. } | GuestError::Timeout(_), _))) {
            self.instance = None;
        }
        result
    }
}

impl Worker {
    pub(super) fn run(self) {
        let (mut generation, guest) = self.active.current();
        let mut running = Running::new(guest);
        let mut fallback = self.fallback();
        let mut events = Vec::with_capacity(BATCH);
        while self.events.pop_batch(BATCH, &mut events) {
            let mut batch = Vec::new();
            let mut completions = Vec::new();
            for Queued { received_at, event, done } in events.drain(..) {
                // A swapped-in guest takes over from the next event; one atomic load per event.
                if self.active.generation() != generation {
                    let guest;
                    (generation, guest) = self.active.current();
                    running = Running::new(guest);
                    fallback = self.fallback();
                }
                match self.filter(&mut running, fallback.as_mut(), event) {
                    Some(mut request) => {
                        request.received_at = Some(received_at);
                        batch.push(request);
                        completions.push(done);
                    }
                    // Filtered, or failed for good: the event is done with.
                    None => {
                        if let Some(done) = done {
                            done.complete();
                        }
                    }
                }
                if running.guest.should_roll_back() {
                    // When it does roll back, the next event sees the new generation and switches.
                    self.active.roll_back(generation);
                }
            }
            if !batch.is_empty() {
                self.requests.push_with(batch, completions);
            }
        }
    }

    fn fallback(&self) -> Option<Fallback> {
        self.active
            .fallback()
            .map(|fallback| Fallback { policy: fallback.policy, builtin: Running::new(fallback.builtin) })
    }

    /// The guest's request for `event`, or the fallback's, or none.
    fn filter(&self, running: &mut Running, fallback: Option<&mut Fallback>, event: Event) -> Option<Request> {
        // The event is moved into the call; keep a copy only when a fallback may need it.
        let spare = fallback.is_some().then(|| event.clone());
        let action = event.kind().action();
        let started = std::time::Instant::now();
        let called = running.call(event);
        self.metrics.record_guest_call(started.elapsed());
        let (error, subject) = match called {
            Ok(Some(request)) => return Some(request),
            Ok(None) => {
                self.metrics.record_filtered(FilterStage::Guest);
                return None;
            }
            Err(failure) => failure,
        };
        let problem = match &error {
            GuestError::Timeout(_) => Problem::GuestTimeout,
            GuestError::Trap(_) | GuestError::MemoryLimit { .. } => Problem::GuestTrap,
            GuestError::InvalidDelivery(_) => Problem::InvalidDelivery,
            _ => Problem::GuestUnavailable,
        };
        let guest = running.guest.name();
        let about = subject.as_deref().unwrap_or("-");
        self.metrics.report(problem, 1, format_args!("Guest call failed ({guest}) on {action} {about:?}: {error}."));
        if let (Some(fallback), Some(event)) = (fallback, spare) {
            match fallback.builtin.call(event) {
                Ok(Some(request)) if fallback.policy == FailurePolicy::Builtin => return Some(request),
                Ok(Some(request)) => match &self.dead_letters {
                    Some(dead_letters) => dead_letters.record_unsent(&request, &error.to_string()),
                    None => tracing::error!("No dead-letter file to keep the event in; it is dropped."),
                },
                Ok(None) => {
                    self.metrics.record_filtered(FilterStage::Guest);
                    return None;
                }
                Err((fallback_error, _)) => tracing::error!("The built-in fallback failed too: {fallback_error}."),
            }
        }
        self.metrics.record_guest_loss();
        None
    }
}
