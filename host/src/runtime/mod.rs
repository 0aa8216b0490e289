//! The runtime: wires ingest → runtime queue → guest workers → delivery, and drains on shutdown.
//!
//! - **Receives** events through [`Submitter`]s, which put them on the runtime queue (bounded).
//!   Event kinds no rule selects are counted as filtered right there, without a trip through the
//!   sandbox.
//! - **Owns** the wiring: the runtime queue, the guest stage (its lanes, one guest instance each;
//!   worker threads fed in batches, started as the load needs them, up to `guest.workers`; and
//!   when nothing waits, the submitting thread runs the event itself), and per endpoint
//!   (the default one at `webhook.url`, then each named one) a delivery queue, its health and its
//!   delivery task, so that a slow or dead endpoint holds up only its own requests; and the
//!   dead-letter files the workers and delivery write to.
//! - **Hands on** the requests the workers make to their endpoints' delivery queues (memory, or
//!   the spool on disk: a named endpoint's spool is `<spool.dir>/endpoints/<name>`); delivery runs
//!   on the tokio runtime that started the [`Runtime`].
//!
//! Which guest runs is [`ActiveGuest`]'s business and the configuration in force is the
//! [`LiveConfig`]'s: the runtime only passes both to the stages that read them.
//!
//! Shutdown is a drain: submitters are closed (waiting for sends under way), workers empty the
//! queue and exit, delivery sends what is left and waits for requests in flight, and only then
//! does [`Runtime::shutdown`] return.

use std::sync::Arc;

use crate::completion::Completion;
use crate::config::{DeliveryConfig, DeliveryOrder, LiveConfig, SpoolConfig, WhenFull, DEFAULT_ENDPOINT};
use crate::delivery::dead_letter::{DeadLetterError, DeadLetters};
use crate::delivery::health::{EndpointHealth, EndpointStatus};
use crate::delivery::queue::DeliveryQueue;
use crate::delivery::request_builder::url_without_query;
use crate::delivery::{self, Sink};
use crate::event::{Event, EventKind};
use crate::guest::{ActiveGuest, GuestModule};
use crate::metrics::{
    BridgeCounters, Depths, EndpointMetrics, FilterStage, Metrics, MetricsSnapshot, Problem, LOG_WINDOW,
};
use crate::spool::SpoolError;

mod queue;
mod worker;
use queue::{EventQueue, Refused};
use worker::GuestStage;

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
    /// A named endpoint's spool, dead-letter file or client cannot be set up.
    #[error("webhook.endpoints `{name}`: {message}")]
    Endpoint {
        /// The endpoint's name.
        name: String,
        /// What failed.
        message: String,
    },
}

/// Hands events to a running [`Runtime`]. Cheap to clone; one per ingest thread or broker hook.
#[derive(Clone)]
pub struct Submitter {
    queue: Arc<EventQueue>,
    /// Runs an event on the submitting thread when the queue is idle.
    guests: Arc<GuestStage>,
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

    /// Accepts an event if the queue has room; never blocks, and never runs the guest on the
    /// calling thread (for a broker whose one thread must not wait for a guest: mosquitto). A full queue hands the event back and
    /// counts it as dropped (`queue_full`; `rejected` in the summary).
    pub fn try_submit(&self, event: Event) -> Result<(), SubmitError> {
        if !self.admit(&event) {
            return Ok(());
        }
        self.outcome(self.queue.try_push((event, None)))
    }

    /// Runs `queued` through the guest right here when that costs no wait (see
    /// [`GuestStage::run_inline`]), else hands it back for the queue.
    fn run_inline(&self, queued: queue::Submission) -> Option<queue::Submission> {
        self.guests.run_inline(&self.queue, queued)
    }

    /// Accepts an event as `queues.when_full` says: by default waiting for room, without blocking
    /// the thread, so a broker hook slows down only its own client's connection task. When
    /// nothing waits, the event is run through the guest right here, on the calling thread (a few
    /// µs for a usual guest; a guest version that once took over 20 ms there is no longer run
    /// inline), so that an everyday rate costs no hand-off between threads. A bounded
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
        let Some(queued) = self.run_inline(queued) else { return Ok(()) };
        let pushed = match self.when_full {
            WhenFull::Block => self.queue.push(queued, None).await,
            WhenFull::Wait(limit) => self.queue.push(queued, Some(limit)).await,
            WhenFull::DropNew => self.queue.try_push(queued),
        };
        self.outcome(pushed)
    }

    /// Accepts an event, waiting for room in the queue. For ingest threads that may wait (a file
    /// or a pipe), never for a broker's own threads. Runs the event inline when nothing waits,
    /// as [`Submitter::submit`] does.
    pub fn submit_blocking(&self, event: Event) -> Result<(), SubmitError> {
        if !self.admit(&event) {
            return Ok(());
        }
        let Some(queued) = self.run_inline((event, None)) else { return Ok(()) };
        self.outcome(self.queue.push_blocking(queued))
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

    /// Counts the event and says whether it needs the guest: events no rule selects (by kind,
    /// then by topic) stop here, so the guest sees only what some rule selects.
    fn admit(&self, event: &Event) -> bool {
        let kind = event.kind();
        if !self.admits(kind) {
            return false;
        }
        self.metrics.record_received(kind);
        if event.topic().is_some() && !self.live.selects(kind, event.topic()) {
            self.metrics.record_filtered(FilterStage::Host);
            return false;
        }
        true
    }
}

/// A running webhook pipeline.
pub struct Runtime {
    submitter: Submitter,
    active: ActiveGuest,
    events: Arc<EventQueue>,
    guests: Arc<GuestStage>,
    endpoints: Arc<[EndpointDelivery]>,
    deliveries: Vec<tokio::task::JoinHandle<()>>,
    /// Logs what the log limiter held back, once a window; stopped with the runtime.
    flusher: AbortOnDrop,
    metrics: Arc<Metrics>,
}

/// One endpoint's side of delivery: its queue (and spool), its health, its metrics.
struct EndpointDelivery {
    name: String,
    requests: Arc<DeliveryQueue>,
    health: Arc<EndpointHealth>,
    metrics: EndpointMetrics,
}

/// What `/status` shows of one endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointReport {
    /// `default`, or the named endpoint's name.
    pub name: String,
    /// Its URL, without the query.
    pub url: String,
    /// Its health.
    pub status: EndpointStatus,
    /// Its requests waiting in memory.
    pub queued: usize,
    /// Its requests being sent now.
    pub in_flight: i64,
}

/// A read-only view of a running pipeline for the admin API: the metrics, the gauges' depths,
/// the guest, the endpoints' health, the spools'.
#[derive(Clone)]
pub struct Observer {
    events: Arc<EventQueue>,
    endpoints: Arc<[EndpointDelivery]>,
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

    /// What the queues and the spools hold now (every endpoint's together), and whether
    /// delivery backs off some endpoint.
    pub fn depths(&self) -> Depths {
        self.endpoints.iter().fold(Depths { events: self.events.len(), ..Depths::default() }, |total, endpoint| {
            let depths = endpoint.requests.depths();
            Depths {
                requests: total.requests + depths.requests,
                spool_bytes: total.spool_bytes + depths.spool_bytes,
                spool_records: total.spool_records + depths.spool_records,
                backing_off: total.backing_off || endpoint.health.is_backing_off(),
                ..total
            }
        })
    }

    /// Each endpoint's state and latest outcomes, the default endpoint first.
    pub fn endpoints(&self) -> Vec<EndpointReport> {
        let config = self.active.config();
        self.endpoints
            .iter()
            .enumerate()
            .map(|(slot, endpoint)| EndpointReport {
                name: endpoint.name.clone(),
                url: url_without_query(&config.endpoint_delivery(slot).url, None),
                status: endpoint.health.status(),
                queued: endpoint.requests.depths().requests,
                in_flight: endpoint.metrics.in_flight().get(),
            })
            .collect()
    }

    /// Requests being sent now, to every endpoint.
    pub fn in_flight(&self) -> i64 {
        self.endpoints.iter().map(|endpoint| endpoint.metrics.in_flight().get()).sum()
    }

    /// Whether the latest write to some spool failed (never, without a spool).
    pub fn spool_failing(&self) -> bool {
        self.endpoints.iter().any(|endpoint| endpoint.requests.spool_failing())
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
        let metrics = Arc::new(Metrics::new(&config.filter.endpoints));
        let dead_letters = match &config.delivery.dead_letter {
            Some(path) => Some(Arc::new(DeadLetters::open(path)?)),
            None => None,
        };
        let requests = Arc::new(DeliveryQueue::open(&config.queues, config.spool.as_ref(), metrics.clone())?);
        let mut endpoints =
            vec![EndpointDelivery::new(DEFAULT_ENDPOINT, requests, &config.delivery, metrics.endpoint(0))];
        let mut deliveries = Vec::with_capacity(config.endpoints.len() + 1);
        deliveries.push(endpoints[0].spawn(sink.clone(), &config.delivery, dead_letters.clone()));
        for (index, named) in config.endpoints.iter().enumerate() {
            let failed = |message: String| StartError::Endpoint { name: named.name.clone(), message };
            let spool = config
                .spool
                .as_ref()
                .map(|spool| SpoolConfig { dir: spool.dir.join("endpoints").join(&named.name), ..spool.clone() });
            let requests = DeliveryQueue::open(&config.queues, spool.as_ref(), metrics.clone())
                .map_err(|error| failed(format!("spool: {error}")))?;
            let own_dead_letters = match &named.delivery.dead_letter {
                Some(path) => Some(Arc::new(DeadLetters::open(path).map_err(|error| failed(error.to_string()))?)),
                None => None,
            };
            let endpoint_sink =
                sink.for_endpoint(live.clone(), index + 1).map_err(|error| failed(error.to_string()))?;
            let endpoint =
                EndpointDelivery::new(&named.name, Arc::new(requests), &named.delivery, metrics.endpoint(index + 1));
            deliveries.push(endpoint.spawn(endpoint_sink, &named.delivery, own_dead_letters));
            endpoints.push(endpoint);
        }
        let endpoints: Arc<[EndpointDelivery]> = endpoints.into();
        let events = Arc::new(EventQueue::new(config.queues.events.get()));
        let active = ActiveGuest::new(guest, live.clone(), metrics.clone());
        // Per-client order starts at the guest: two workers would race a client's events.
        let worker_count = match config.delivery.ordering {
            DeliveryOrder::PerClient => 1,
            DeliveryOrder::None => config.guest.workers.get(),
        };
        let queues: Arc<[Arc<DeliveryQueue>]> = endpoints.iter().map(|endpoint| endpoint.requests.clone()).collect();
        let guests = Arc::new(GuestStage::new(active.clone(), queues, dead_letters, metrics.clone(), worker_count));
        // Worker threads start as the load needs them (see `queue`).
        let spawn_worker: queue::SpawnWorker = {
            let guests = guests.clone();
            Box::new(move |index, events| {
                let guests = guests.clone();
                std::thread::Builder::new()
                    .name(format!("mqhook-guest-{index}"))
                    .spawn(move || guests.work(index, &events))
            })
        };
        events.start_workers(worker_count, spawn_worker);
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
        let submitter = Submitter {
            queue: events.clone(),
            guests: guests.clone(),
            when_full: config.queues.when_full,
            live,
            metrics: metrics.clone(),
        };
        Ok(Runtime { submitter, active, events, guests, endpoints, deliveries, flusher, metrics })
    }

    /// A read-only view for the admin API.
    pub fn observer(&self) -> Observer {
        Observer {
            events: self.events.clone(),
            endpoints: self.endpoints.clone(),
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
        let Runtime { events, guests, endpoints, deliveries, flusher, metrics, .. } = self;
        // No event enters after this (nor runs inline); workers drain what is queued, then stop.
        events.close();
        let workers = events.take_workers();
        // Workers drain the queue and exit, an inline run under way finishes; waiting for them
        // blocks, so off the executor.
        let joined = tokio::task::spawn_blocking(move || {
            for worker in workers {
                if worker.join().is_err() {
                    tracing::error!("A guest worker thread panicked.");
                }
            }
            guests.wait_for_lanes();
        })
        .await;
        if joined.is_err() {
            tracing::error!("Joining the guest workers failed.");
        }
        for endpoint in endpoints.iter() {
            endpoint.requests.close();
        }
        for delivery in deliveries {
            if delivery.await.is_err() {
                tracing::error!("A delivery task panicked.");
            }
        }
        drop(flusher);
        metrics.flush_held(true);
        metrics.snapshot()
    }
}

impl EndpointDelivery {
    fn new(name: &str, requests: Arc<DeliveryQueue>, settings: &DeliveryConfig, metrics: EndpointMetrics) -> Self {
        let health = Arc::new(EndpointHealth::new(settings.retry.backoff, metrics.clone()));
        EndpointDelivery { name: name.to_owned(), requests, health, metrics }
    }

    /// Starts its delivery task.
    fn spawn(
        &self,
        sink: Sink,
        settings: &DeliveryConfig,
        dead_letters: Option<Arc<DeadLetters>>,
    ) -> tokio::task::JoinHandle<()> {
        let (requests, settings, health, metrics) =
            (self.requests.clone(), settings.clone(), self.health.clone(), self.metrics.clone());
        tokio::spawn(async move { delivery::run(requests, sink, &settings, health, dead_letters, metrics).await })
    }
}

/// Aborts a background task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
