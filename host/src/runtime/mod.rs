//! The runtime: wires ingest → runtime queue → guest workers → delivery, and drains on shutdown.
//!
//! - [`Submitter`]s put events on the runtime queue (bounded). Event kinds no rule selects are
//!   counted as filtered right there, without a trip through the sandbox.
//! - Guest workers (OS threads, one guest instance each) take events off the queue in batches, so
//!   a worker that is busy never sleeps between events, and pass each batch of requests to delivery.
//! - Workers push requests onto the delivery queue (memory, or the spool on disk); delivery
//!   runs on the tokio runtime that started the [`Runtime`].
//!
//! The guest can be swapped while events flow ([`GuestControl::swap`]): workers pick the new
//! version up at their next event, so each event is filtered by exactly one version and none is
//! lost. A swapped-in guest that keeps failing is rolled back to the one it replaced.
//!
//! Shutdown is a drain: submitters are closed (waiting for sends under way), workers empty the
//! queue and exit, delivery sends what is left and waits for requests in flight, and only then
//! does [`Runtime::shutdown`] return.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};
use crate::config::{Config, DeliveryOrder, FailurePolicy};
use crate::delivery::queue::DeliveryQueue;
use crate::delivery::{self, Sink};
use crate::spool::SpoolError;
use crate::event::Event;
use crate::guest::{GuestModule, GuestSlot};
use crate::metrics::{Metrics, MetricsSnapshot};

mod worker;
use worker::Worker;

/// Why an event was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The runtime queue is full; the event is handed back so the caller can decide.
    #[error("the runtime queue is full")]
    Full(Box<Event>),
    /// The runtime is shutting down.
    #[error("the runtime has shut down")]
    Closed(Box<Event>),
}

/// Hands events to a running [`Runtime`]. Cheap to clone; one per ingest thread or broker hook.
#[derive(Clone)]
pub struct Submitter {
    queue: Sender<Event>,
    wanted: Arc<WantedKinds>,
    metrics: Arc<Metrics>,
    /// `true` once the runtime shuts down. Held for reading across a send, so that closing waits
    /// for sends under way and no event slips into the queue after the workers' final drain.
    closed: Arc<RwLock<bool>>,
}

/// The event kinds some rule selects; the rest are filtered before the guest. Updated on swaps.
struct WantedKinds([AtomicBool; 12]);

impl WantedKinds {
    fn new(config: &Config) -> Self {
        let wanted = WantedKinds(Default::default());
        wanted.set(config);
        wanted
    }

    fn set(&self, config: &Config) {
        let kinds = if config.enabled { config.wanted_kinds() } else { [false; 12] };
        for (slot, wanted) in self.0.iter().zip(kinds) {
            slot.store(wanted, Ordering::Release);
        }
    }

    fn contains(&self, event: &Event) -> bool {
        self.0[event.kind().index()].load(Ordering::Acquire)
    }
}

impl Submitter {
    /// Accepts an event if the queue has room; never blocks. A full queue hands the event back and
    /// counts it as `rejected`.
    pub fn try_submit(&self, event: Event) -> Result<(), SubmitError> {
        let closed = self.closed.read().unwrap_or_else(PoisonError::into_inner);
        if *closed {
            return Err(SubmitError::Closed(Box::new(event)));
        }
        if !self.admit(&event) {
            return Ok(());
        }
        match self.queue.try_send(event) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(event)) => {
                self.metrics.record_rejected();
                Err(SubmitError::Full(Box::new(event)))
            }
            Err(TrySendError::Disconnected(event)) => Err(SubmitError::Closed(Box::new(event))),
        }
    }

    /// Accepts an event, waiting for room in the queue. For ingest threads that may wait (a file
    /// or a pipe), never for a broker's own threads.
    pub fn submit_blocking(&self, event: Event) -> Result<(), SubmitError> {
        let closed = self.closed.read().unwrap_or_else(PoisonError::into_inner);
        if *closed {
            return Err(SubmitError::Closed(Box::new(event)));
        }
        if !self.admit(&event) {
            return Ok(());
        }
        self.queue.send(event).map_err(|e| SubmitError::Closed(Box::new(e.into_inner())))
    }

    /// Counts an input record that was not a valid event (it never enters the pipeline).
    pub fn record_malformed(&self) {
        self.metrics.record_malformed();
    }

    /// Counts the event and says whether it needs the guest: kinds no rule asks for stop here.
    fn admit(&self, event: &Event) -> bool {
        self.metrics.record_received();
        let wanted = self.wanted.contains(event);
        if !wanted {
            self.metrics.record_filtered();
        }
        wanted
    }
}

/// Swaps the running guest; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct GuestControl {
    slot: Arc<GuestSlot>,
    wanted: Arc<WantedKinds>,
    config: Arc<RwLock<Config>>,
    /// The guest (and its configuration) the latest swap replaced, for an automatic rollback.
    previous: Arc<Mutex<Option<(Arc<GuestModule>, Config)>>>,
    /// The built-in guest, configured like the running one, when `guest.on_failure` needs its body.
    fallback: Arc<RwLock<Option<Arc<GuestModule>>>>,
    /// Where requests go; a swap's config gives it its URL and headers.
    pub(crate) sink: Sink,
}

impl GuestControl {
    /// Puts `guest` in place of the running guest, atomically: batches that started keep the old
    /// version, every later one uses the new. `config` is the configuration `guest` was built with
    /// (see [`GuestModule::with_config`]); its rules decide from now on which event kinds reach
    /// the guest. Returns the new guest's generation (the first guest is generation 0).
    pub fn swap(&self, guest: GuestModule, config: &Config) -> u64 {
        let name = guest.name().to_string();
        let mut previous = self.previous.lock().unwrap_or_else(PoisonError::into_inner);
        let (replaced, generation) = self.install(Arc::new(guest), config);
        *previous = Some(replaced);
        tracing::info!(guest = name, generation, "Guest swapped in.");
        generation
    }

    /// Puts the guest the latest swap replaced back, if generation `failing` is still the one
    /// running; a rollback is not itself rolled back.
    fn roll_back(&self, failing: u64) {
        let mut previous = self.previous.lock().unwrap_or_else(PoisonError::into_inner);
        if self.slot.generation() != failing {
            return;
        }
        let Some((guest, config)) = previous.take() else { return };
        let name = guest.name().to_string();
        let ((failed, _), generation) = self.install(guest, &config);
        tracing::error!(
            failed = failed.name(),
            restored = name,
            generation,
            "The swapped-in guest kept failing ({:?}); the previous guest is back.",
            failed.stats().snapshot()
        );
    }

    /// The built-in guest that takes over a failed call's event, if the policy asks for one.
    pub(crate) fn fallback(&self) -> Option<Arc<GuestModule>> {
        self.fallback.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Prepares the fallback `config` asks for: the built-in guest, configured like the rest.
    fn set_fallback(&self, config: &Config) {
        let fallback = match config.guest.on_failure {
            FailurePolicy::Skip => None,
            FailurePolicy::Builtin | FailurePolicy::DeadLetter => {
                let loaded = match self.fallback() {
                    Some(builtin) => builtin.with_config(config),
                    None => GuestModule::load(None, config),
                };
                loaded
                    .map_err(|error| tracing::error!("The built-in fallback guest is unavailable: {error}."))
                    .ok()
                    .map(Arc::new)
            }
        };
        *self.fallback.write().unwrap_or_else(PoisonError::into_inner) = fallback;
    }

    /// Installs `guest` with `config`; returns what it replaced and the new generation.
    fn install(&self, guest: Arc<GuestModule>, config: &Config) -> ((Arc<GuestModule>, Config), u64) {
        self.set_fallback(config);
        self.sink.retarget(config);
        self.wanted.set(config);
        let old_config = std::mem::replace(&mut *self.config.write().unwrap_or_else(PoisonError::into_inner), config.clone());
        let (old_guest, generation) = self.slot.swap(guest);
        ((old_guest, old_config), generation)
    }

    /// The guest now running and its generation.
    pub fn current(&self) -> (u64, Arc<GuestModule>) {
        self.slot.current()
    }

    /// The configuration the running guest was built with.
    pub fn config(&self) -> Config {
        self.config.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A running webhook pipeline.
pub struct Runtime {
    submitter: Submitter,
    control: GuestControl,
    /// Dropped to tell the workers to drain the queue and stop.
    stop: crossbeam_channel::Sender<()>,
    workers: Vec<JoinHandle<()>>,
    requests: Arc<DeliveryQueue>,
    delivery: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Runtime {
    /// Starts guest workers and delivery. Must be called inside a tokio runtime, which runs delivery.
    /// Fails only when the configured spool cannot be opened; requests it holds from an earlier
    /// run are delivered first.
    pub fn start(config: &Config, guest: GuestModule, sink: Sink) -> Result<Runtime, SpoolError> {
        let metrics = Arc::new(Metrics::default());
        let requests = Arc::new(DeliveryQueue::open(config, metrics.clone())?);
        let (queue, events) = crossbeam_channel::bounded(config.queue_size.get());
        let (stop, stopping) = crossbeam_channel::bounded::<()>(0);
        let wanted = Arc::new(WantedKinds::new(config));
        let control = GuestControl {
            slot: Arc::new(GuestSlot::new(guest)),
            wanted: wanted.clone(),
            config: Arc::new(RwLock::new(config.clone())),
            previous: Arc::default(),
            fallback: Arc::default(),
            sink: sink.clone(),
        };
        control.set_fallback(config);
        // Per-client order starts at the guest: two workers would race a client's events.
        let worker_count = match config.ordering {
            DeliveryOrder::PerClient => 1,
            DeliveryOrder::None => config.guest.workers.get(),
        };
        let workers = (0..worker_count)
            .map(|index| {
                let worker = Worker {
                    control: control.clone(),
                    events: events.clone(),
                    stopping: stopping.clone(),
                    requests: requests.clone(),
                    metrics: metrics.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("mqhook-guest-{index}"))
                    .spawn(move || worker.run())
                    .expect("spawning a guest worker thread")
            })
            .collect();
        let delivery =
            tokio::spawn(delivery::run(requests.clone(), sink, config.pool_size.get(), config.ordering, metrics.clone()));
        let submitter = Submitter { queue, wanted, metrics: metrics.clone(), closed: Arc::default() };
        Ok(Runtime { submitter, control, stop, workers, requests, delivery, metrics })
    }

    /// A handle for submitting events.
    pub fn submitter(&self) -> Submitter {
        self.submitter.clone()
    }

    /// A handle for swapping the guest while the runtime runs.
    pub fn guest_control(&self) -> GuestControl {
        self.control.clone()
    }

    /// The counters so far.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// The live counters, for reading while the runtime runs (the admin API).
    pub fn counters(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Stops accepting events (every `Submitter` now answers `Closed`) and waits until every
    /// accepted event is delivered, failed or filtered.
    pub async fn shutdown(self) -> MetricsSnapshot {
        let Runtime { submitter, stop, workers, requests, delivery, metrics, .. } = self;
        // Waits for sends under way; none can start after this.
        *submitter.closed.write().unwrap_or_else(PoisonError::into_inner) = true;
        drop(stop);
        // Workers drain the queue and exit; joining them blocks, so off the executor.
        let joined = tokio::task::spawn_blocking(move || {
            for worker in workers {
                if worker.join().is_err() {
                    tracing::error!("A guest worker thread panicked.");
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::error!("Joining the guest workers failed.");
        }
        requests.close();
        if delivery.await.is_err() {
            tracing::error!("The delivery task panicked.");
        }
        metrics.snapshot()
    }
}
