//! The runtime: wires ingest → runtime queue → guest workers → delivery, and drains on shutdown.
//!
//! - **Receives** events through [`Submitter`]s, which put them on the runtime queue (bounded).
//!   Event kinds no rule selects are counted as filtered right there, without a trip through the
//!   sandbox.
//! - **Owns** the wiring: the runtime queue, the guest worker threads (one guest instance each,
//!   fed in batches), the delivery task and the dead-letter file both of them write to.
//! - **Hands on** the requests the workers make to the delivery queue (memory, or the spool on
//!   disk); delivery runs on the tokio runtime that started the [`Runtime`].
//!
//! Which guest runs is [`ActiveGuest`]'s business and the configuration in force is the
//! [`LiveConfig`]'s: the runtime only passes both to the stages that read them.
//!
//! Shutdown is a drain: submitters are closed (waiting for sends under way), workers empty the
//! queue and exit, delivery sends what is left and waits for requests in flight, and only then
//! does [`Runtime::shutdown`] return.

use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};

use crate::config::{DeliveryOrder, LiveConfig};
use crate::delivery::dead_letter::{DeadLetterError, DeadLetters};
use crate::delivery::queue::DeliveryQueue;
use crate::delivery::{self, Sink};
use crate::event::{Event, EventKind};
use crate::guest::{ActiveGuest, GuestModule};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::spool::SpoolError;

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

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configured spool cannot be opened (`webhook.spool`).
    #[error("webhook.spool: {0}")]
    Spool(#[from] SpoolError),
    /// The dead-letter file cannot be opened (`webhook.dead_letter`).
    #[error("webhook.dead_letter: {0}")]
    DeadLetter(#[from] DeadLetterError),
}

/// Hands events to a running [`Runtime`]. Cheap to clone; one per ingest thread or broker hook.
#[derive(Clone)]
pub struct Submitter {
    queue: Sender<Event>,
    live: LiveConfig,
    metrics: Arc<Metrics>,
    /// `true` once the runtime shuts down. Held for reading across a send, so that closing waits
    /// for sends under way and no event slips into the queue after the workers' final drain.
    closed: Arc<RwLock<bool>>,
}

impl Submitter {
    /// Whether events of `kind` are wanted now. An ingest asks before it builds an event, so that
    /// it copies nothing (a broker: no payload) for kinds no rule selects; a `false` counts the
    /// event as received and filtered, and the event must then not be submitted.
    pub fn admits(&self, kind: EventKind) -> bool {
        let wanted = self.live.wants(kind);
        if !wanted {
            self.metrics.record_received();
            self.metrics.record_filtered();
        }
        wanted
    }

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
        if !self.admits(event.kind()) {
            return false;
        }
        self.metrics.record_received();
        true
    }
}

/// A running webhook pipeline.
pub struct Runtime {
    submitter: Submitter,
    active: ActiveGuest,
    /// Dropped to tell the workers to drain the queue and stop.
    stop: crossbeam_channel::Sender<()>,
    workers: Vec<JoinHandle<()>>,
    requests: Arc<DeliveryQueue>,
    delivery: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Runtime {
    /// Starts guest workers and delivery with the configuration in `live`, which `guest` was
    /// built with. Must be called inside a tokio runtime, which runs delivery. Fails when the
    /// configured spool or dead-letter file cannot be opened; requests the spool holds from an
    /// earlier run are delivered first.
    pub fn start(live: LiveConfig, guest: GuestModule, sink: Sink) -> Result<Runtime, StartError> {
        let config = live.load();
        let metrics = Arc::new(Metrics::default());
        let dead_letters = match &config.delivery.dead_letter {
            Some(path) => Some(Arc::new(DeadLetters::open(path)?)),
            None => None,
        };
        let requests = Arc::new(DeliveryQueue::open(&config.queues, config.spool.as_ref(), metrics.clone())?);
        let (queue, events) = crossbeam_channel::bounded(config.queues.events.get());
        let (stop, stopping) = crossbeam_channel::bounded::<()>(0);
        let active = ActiveGuest::new(guest, live.clone());
        // Per-client order starts at the guest: two workers would race a client's events.
        let worker_count = match config.delivery.ordering {
            DeliveryOrder::PerClient => 1,
            DeliveryOrder::None => config.guest.workers.get(),
        };
        let workers = (0..worker_count)
            .map(|index| {
                let worker = Worker {
                    active: active.clone(),
                    events: events.clone(),
                    stopping: stopping.clone(),
                    requests: requests.clone(),
                    dead_letters: dead_letters.clone(),
                    metrics: metrics.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("mqhook-guest-{index}"))
                    .spawn(move || worker.run())
                    .expect("spawning a guest worker thread")
            })
            .collect();
        let delivery = {
            let (requests, settings, metrics) = (requests.clone(), config.delivery.clone(), metrics.clone());
            tokio::spawn(async move { delivery::run(requests, sink, &settings, dead_letters, metrics).await })
        };
        let submitter = Submitter { queue, live, metrics: metrics.clone(), closed: Arc::default() };
        Ok(Runtime { submitter, active, stop, workers, requests, delivery, metrics })
    }

    /// A handle for submitting events.
    pub fn submitter(&self) -> Submitter {
        self.submitter.clone()
    }

    /// A handle for swapping the guest while the runtime runs.
    pub fn active_guest(&self) -> ActiveGuest {
        self.active.clone()
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
