//! The runtime: wires ingest → runtime queue → guest workers → delivery, and drains on shutdown.
//!
//! - **Receives** events through [`Submitter`]s, which put them on the runtime queue (bounded).
//!   Event kinds no rule selects are counted as filtered right there, without a trip through the
//!   sandbox.
//! - **Owns** the wiring: the runtime queue, the guest worker threads (one guest instance each,
//!   fed in batches, started as the load needs them, up to `guest.workers`), the delivery task and
//!   the dead-letter file both of them write to.
//! - **Hands on** the requests the workers make to the delivery queue (memory, or the spool on
//!   disk); delivery runs on the tokio runtime that started the [`Runtime`].
//!
//! Which guest runs is [`ActiveGuest`]'s business and the configuration in force is the
//! [`LiveConfig`]'s: the runtime only passes both to the stages that read them.
//!
//! Shutdown is a drain: submitters are closed (waiting for sends under way), workers empty the
//! queue and exit, delivery sends what is left and waits for requests in flight, and only then
//! does [`Runtime::shutdown`] return.

use std::sync::Arc;

use crate::completion::Completion;
use crate::config::{DeliveryOrder, LiveConfig, WhenFull};
use crate::delivery::dead_letter::{DeadLetterError, DeadLetters};
use crate::delivery::health::{EndpointHealth, EndpointStatus};
use crate::delivery::queue::DeliveryQueue;
use crate::delivery::{self, Sink};
use crate::event::{Event, EventKind};
use crate::guest::{ActiveGuest, GuestModule};
use crate::metrics::{BridgeCounters, Depths, FilterStage, Metrics, MetricsSnapshot, Problem, LOG_WINDOW};
use crate::spool::SpoolError;

mod queue;
mod worker;
use queue::{EventQueue, Refused};
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
    queue: Arc<EventQueue>,
    /// What [`Submitter::submit`] does on a full queue (`queues.when_full`).
    when_full: WhenFull,
    live: LiveConfig,
    metrics: Arc<Metrics>,
}

impl Submitter {
    /// Whether events of `kind` are wanted now. An ingest asks before it builds an event, so that
    /// it copies nothing (a broker: no payload) for kinds no rule selects; a `false` counts the
    /// event as received and filtered, and the event must then not be submitted.
    pub fn admits(&self, kind: EventKind) -> bool {
        let wanted = self.live.wants(kind);
        if !wanted {
            self.metrics.record_received(kind);
            self.metrics.record_filtered(FilterStage::Host);
        }
        wanted
    }

    /// Accepts an event if the queue has room; never blocks. A full queue hands the event back and
    /// counts it as dropped (`queue_full`; `rejected` in the summary).
    pub fn try_submit(&self, event: Event) -> Result<(), SubmitError> {
        if !self.admit(&event) {
            return Ok(());
        }
        self.outcome(self.queue.try_push((event, None)))
    }

    /// Accepts an event as `queues.when_full` says: by default waiting for room, without blocking
    /// the thread, so a broker hook slows down only its own client's connection task. A bounded
    /// wait that runs out, or `drop_new`, hands the event back and counts it as `rejected`.
    pub async fn submit(&self, event: Event) -> Result<(), SubmitError> {
        self.submit_queued((event, None)).await
    }

    /// As [`Submitter::submit`], and `done` is completed once the event is safe: filtered, failed
    /// for good, written to the spool, or (without a spool) delivered or given up (see
    /// [`crate::completion`]). An event that is refused (`Full`, `Closed`) drops its token
    /// uncompleted: it is not safe.
    pub async fn submit_with(&self, event: Event, done: Completion) -> Result<(), SubmitError> {
        self.submit_queued((event, Some(done))).await
    }

    async fn submit_queued(&self, queued: queue::Submission) -> Result<(), SubmitError> {
        if !self.admit(&queued.0) {
            if let Some(done) = queued.1 {
                done.complete();
            }
            return Ok(());
        }
        let pushed = match self.when_full {
            WhenFull::Block => self.queue.push(queued, None).await,
            WhenFull::Wait(limit) => self.queue.push(queued, Some(limit)).await,
            WhenFull::DropNew => self.queue.try_push(queued),
        };
        self.outcome(pushed)
    }

    /// Accepts an event, waiting for room in the queue. For ingest threads that may wait (a file
    /// or a pipe), never for a broker's own threads.
    pub fn submit_blocking(&self, event: Event) -> Result<(), SubmitError> {
        if !self.admit(&event) {
            return Ok(());
        }
        self.outcome(self.queue.push_blocking((event, None)))
    }

    fn outcome(&self, pushed: Result<(), Refused>) -> Result<(), SubmitError> {
        match pushed {
            Ok(()) => Ok(()),
            Err(Refused::Full(queued)) => {
                let action = queued.0.kind().action();
                self.metrics.report(
                    Problem::QueueFull,
                    1,
                    format_args!("The runtime queue is full: a {action} event is dropped (queues.when_full)."),
                );
                Err(SubmitError::Full(Box::new(queued.0)))
            }
            Err(Refused::Closed(queued)) => Err(SubmitError::Closed(Box::new(queued.0))),
        }
    }

    /// The bridge ingest's counters, which count into this runtime's metrics.
    pub fn bridge_counters(&self) -> BridgeCounters {
        self.metrics.bridge().clone()
    }

    /// Counts an input record that was not a valid event (it never enters the pipeline), and logs
    /// `why` through the shared limiter.
    pub fn record_malformed(&self, why: std::fmt::Arguments<'_>) {
        self.metrics.report(Problem::MalformedInput, 1, why);
    }

    /// Counts the event and says whether it needs the guest: kinds no rule asks for stop here.
    fn admit(&self, event: &Event) -> bool {
        let kind = event.kind();
        if !self.admits(kind) {
            return false;
        }
        self.metrics.record_received(kind);
        true
    }
}

/// A running webhook pipeline.
pub struct Runtime {
    submitter: Submitter,
    active: ActiveGuest,
    events: Arc<EventQueue>,
    requests: Arc<DeliveryQueue>,
    health: Arc<EndpointHealth>,
    delivery: tokio::task::JoinHandle<()>,
    /// Logs what the log limiter held back, once a window; stopped with the runtime.
    flusher: AbortOnDrop,
    metrics: Arc<Metrics>,
}

/// A read-only view of a running pipeline for the admin API: the metrics, the gauges' depths,
/// the guest, the endpoint's health, the spool's.
#[derive(Clone)]
pub struct Observer {
    events: Arc<EventQueue>,
    requests: Arc<DeliveryQueue>,
    health: Arc<EndpointHealth>,
    active: ActiveGuest,
    metrics: Arc<Metrics>,
}

impl Observer {
    /// The live metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The running guest.
    pub fn active_guest(&self) -> &ActiveGuest {
        &self.active
    }

    /// What the queues and the spool hold now, and whether delivery backs off.
    pub fn depths(&self) -> Depths {
        Depths { events: self.events.len(), backing_off: self.health.is_backing_off(), ..self.requests.depths() }
    }

    /// The endpoint's state and latest outcomes.
    pub fn endpoint(&self) -> EndpointStatus {
        self.health.status()
    }

    /// Whether the latest write to the spool failed (never, without a spool).
    pub fn spool_failing(&self) -> bool {
        self.requests.spool_failing()
    }

    /// The metrics in the Prometheus text format, the gauges read now.
    pub fn encode_metrics(&self) -> String {
        self.metrics.encode(&self.depths())
    }
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
        let events = Arc::new(EventQueue::new(config.queues.events.get()));
        let active = ActiveGuest::new(guest, live.clone(), metrics.clone());
        let health = Arc::new(EndpointHealth::new(config.delivery.retry.backoff, metrics.clone()));
        // Per-client order starts at the guest: two workers would race a client's events.
        let worker_count = match config.delivery.ordering {
            DeliveryOrder::PerClient => 1,
            DeliveryOrder::None => config.guest.workers.get(),
        };
        // Worker threads start as the load needs them (see `queue`), the first one now.
        let spawn_worker: queue::SpawnWorker = {
            let (active, requests, dead_letters, metrics) =
                (active.clone(), requests.clone(), dead_letters.clone(), metrics.clone());
            Box::new(move |index, events| {
                let worker = Worker {
                    active: active.clone(),
                    events,
                    requests: requests.clone(),
                    dead_letters: dead_letters.clone(),
                    metrics: metrics.clone(),
                };
                std::thread::Builder::new().name(format!("mqhook-guest-{index}")).spawn(move || worker.run())
            })
        };
        events.start_workers(worker_count, spawn_worker);
        let delivery = {
            let (requests, settings, metrics) = (requests.clone(), config.delivery.clone(), metrics.clone());
            let health = health.clone();
            tokio::spawn(async move { delivery::run(requests, sink, &settings, health, dead_letters, metrics).await })
        };
        let flusher = {
            let metrics = metrics.clone();
            AbortOnDrop(tokio::spawn(async move {
                let mut windows = tokio::time::interval(LOG_WINDOW);
                loop {
                    windows.tick().await;
                    metrics.flush_held(false);
                }
            }))
        };
        let submitter =
            Submitter { queue: events.clone(), when_full: config.queues.when_full, live, metrics: metrics.clone() };
        Ok(Runtime { submitter, active, events, requests, health, delivery, flusher, metrics })
    }

    /// A read-only view for the admin API.
    pub fn observer(&self) -> Observer {
        Observer {
            events: self.events.clone(),
            requests: self.requests.clone(),
            health: self.health.clone(),
            active: self.active.clone(),
            metrics: self.metrics.clone(),
        }
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

    /// Stops accepting events (every `Submitter` now answers `Closed`) and waits until every
    /// accepted event is delivered, failed or filtered.
    pub async fn shutdown(self) -> MetricsSnapshot {
        let Runtime { events, requests, delivery, flusher, metrics, .. } = self;
        // No event enters after this; workers drain what is queued, then stop.
        events.close();
        let workers = events.take_workers();
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
        drop(flusher);
        metrics.flush_held(true);
        metrics.snapshot()
    }
}

/// Aborts a background task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
