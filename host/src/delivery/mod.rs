//! Delivery: takes the requests guests produced and sends them, at most `pool_size` at a time.
//!
//! - **Receives** [`Request`]s off the [`queue::DeliveryQueue`] (memory, or the spool on disk).
//! - **Owns** the sink that sends them: HTTP ([`http::HttpSink`], pooled keep-alive connections)
//!   or standard output ([`print::PrintSink`], for `--dry-run`); the retries over it
//!   ([`retry`]); and the give-ups, written to the dead-letter file ([`dead_letter`]).
//! - **Hands on** each request's outcome: counted, and acknowledged to the queue, which is when
//!   the spool may forget it (and, without a spool, when its ingest's completion is completed).
//!
//! At most `pool_size` requests are in flight, polled by the delivery task itself (or, with
//! per-client order, `pool_size` lanes each send one at a time); draining waits for all of them,
//! so no accepted request is abandoned. When the endpoint fails, its [`health::EndpointHealth`]
//! holds every request back but one probe, and no new request starts until the endpoint answers
//! again. With `batch` configured, each of those requests carries a batch of events ([`batch`]).

pub mod batch;
pub mod dead_letter;
pub mod error;
pub mod health;
pub mod http;
pub mod print;
pub mod queue;
pub mod request_builder;
pub mod retry;
pub mod tls;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::{BatchSettings, DeliveryConfig, DeliveryOrder, LiveConfig, QueueConfig, RetrySettings};
use crate::metrics::{EndpointMetrics, Metrics, MetricsSnapshot, Problem};
use crate::request::Request;
use dead_letter::DeadLetters;
use health::EndpointHealth;
use queue::{DeliveryQueue, Entry};
use retry::{Attempts, GaveUp};

/// Where requests go.
#[derive(Clone)]
pub enum Sink {
    /// POST to the configured endpoint.
    Http(http::HttpSink),
    /// Print each request instead of sending it.
    Print(print::PrintSink),
}

impl Sink {
    /// The same kind of sink for endpoint `slot` (`i + 1` for named endpoint `i`) of `live`.
    pub fn for_endpoint(&self, live: LiveConfig, slot: usize) -> Result<Sink, error::DeliveryError> {
        Ok(match self {
            Sink::Http(_) => Sink::Http(http::HttpSink::for_endpoint(live, slot)?),
            Sink::Print(_) => Sink::Print(print::PrintSink { live, slot }),
        })
    }
}

/// Everything a delivery task needs; shared by the tasks of one run.
struct Deliverer {
    sink: Sink,
    retry: RetrySettings,
    health: Arc<EndpointHealth>,
    dead_letters: Option<Arc<DeadLetters>>,
    queue: Arc<DeliveryQueue>,
    metrics: EndpointMetrics,
}

/// Sends `requests` (for example read back from a dead-letter file) as the runtime would: at most
/// `pool_size` at a time, with retries; new give-ups go to `dead_letters`. Returns the counts.
pub async fn send_all(
    requests: Vec<Request>,
    sink: Sink,
    settings: &DeliveryConfig,
    dead_letters: Option<Arc<DeadLetters>>,
) -> MetricsSnapshot {
    let metrics = Arc::new(Metrics::default());
    requests.iter().for_each(|request| metrics.record_received(request.kind));
    let length = requests.len().try_into().unwrap_or(std::num::NonZeroUsize::MIN);
    let queues = QueueConfig { requests: length, ..QueueConfig::default() };
    let queue = Arc::new(DeliveryQueue::in_memory(&queues, metrics.clone()));
    queue.push(requests);
    queue.close();
    let settings = DeliveryConfig { ordering: DeliveryOrder::None, ..settings.clone() };
    let health = Arc::new(EndpointHealth::new(settings.retry.backoff, metrics.endpoint(0)));
    run(queue, sink, &settings, health, dead_letters, metrics.endpoint(0)).await;
    metrics.flush_held(true);
    metrics.snapshot()
}

/// Requests taken off the queue at once.
const POP_BATCH: usize = 64;

/// Sends every request the queue hands out until it closes, then waits for those in flight.
/// `settings` gives the pool size, the order and the retries (read at start only); `health` is
/// the endpoint's.
pub(crate) async fn run(
    queue: Arc<DeliveryQueue>,
    sink: Sink,
    settings: &DeliveryConfig,
    health: Arc<EndpointHealth>,
    dead_letters: Option<Arc<DeadLetters>>,
    metrics: EndpointMetrics,
) {
    let pool_size = settings.pool.pool_size.get();
    let deliverer =
        Arc::new(Deliverer { sink, retry: settings.retry, health, dead_letters, queue: queue.clone(), metrics });
    match (settings.ordering, settings.batch) {
        (DeliveryOrder::None, None) => run_pooled(deliverer, pool_size).await,
        (DeliveryOrder::None, Some(batch)) => batch::run_pooled(deliverer, pool_size, batch).await,
        (DeliveryOrder::PerClient, batch) => run_per_client(deliverer, pool_size, batch).await,
    }
    queue.finish();
}

/// Up to `pool_size` requests in flight, in any order. During an outage they wait for the
/// endpoint's health (holding no connection) and the rest stay queued.
///
/// This task polls the requests in flight itself rather than spawning a task for each: a task
/// spawned while another waits to run makes tokio wake a second worker thread to take it, a
/// wake-up per request that an everyday rate would pay. A panicking request is caught and logged,
/// as a panicking task would be.
async fn run_pooled(deliverer: Arc<Deliverer>, pool_size: usize) {
    use futures_util::{FutureExt, StreamExt};
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    let mut waiting = std::collections::VecDeque::new();
    let mut open = true;
    loop {
        while in_flight.len() < pool_size {
            let Some(entry) = waiting.pop_front() else { break };
            in_flight.push(std::panic::AssertUnwindSafe(deliverer.deliver(entry)).catch_unwind());
        }
        tokio::select! {
            // Taken only when it can start; `pop` takes nothing unless it returns.
            popped = deliverer.queue.pop(POP_BATCH), if open && waiting.is_empty() => match popped {
                Some(entries) => waiting.extend(entries),
                None => open = false,
            },
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                if done.is_err() {
                    tracing::error!("A delivery panicked; its request is abandoned.");
                }
            }
            else => break,
        }
    }
}

fn reap(joined: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(error)) = joined {
        tracing::error!("A delivery task failed: {error}.");
    }
}

/// `pool_size` lanes, each sending one request (or, with `batch`, one batch) at a time; a
/// client's requests always take the same lane, so they arrive in order.
async fn run_per_client(deliverer: Arc<Deliverer>, pool_size: usize, batch: Option<BatchSettings>) {
    let lanes: Vec<_> = (0..pool_size)
        .map(|_| {
            let (lane, mut entries) = mpsc::channel::<Entry>(POP_BATCH);
            let deliverer = deliverer.clone();
            let task = tokio::spawn(async move {
                match batch {
                    Some(batch) => batch::run_lane(deliverer, entries, batch).await,
                    None => {
                        while let Some(entry) = entries.recv().await {
                            deliverer.deliver(entry).await;
                        }
                    }
                }
            });
            (lane, task)
        })
        .collect();
    while let Some(entries) = deliverer.queue.pop(POP_BATCH).await {
        for entry in entries {
            let lane = match &entry.request.client {
                Some(client) => hash(client) % pool_size,
                None => entry.seq as usize % pool_size,
            };
            // A lane ends only when its sender is dropped, below.
            let _ = lanes[lane].0.send(entry).await;
        }
    }
    for (lane, task) in lanes {
        drop(lane);
        if task.await.is_err() {
            tracing::error!("A delivery lane panicked.");
        }
    }
}

fn hash(client: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(client) as usize
}

impl Deliverer {
    /// Sends one request, counts the outcome, dead-letters a give-up and acknowledges it.
    async fn deliver(self: &Arc<Self>, entry: Entry) {
        let in_flight = self.metrics.in_flight();
        in_flight.inc();
        let received_at = entry.request.received_at;
        match &self.sink {
            Sink::Print(printer) => {
                printer.print(&entry.request);
                self.metrics.record_delivered(received_at);
            }
            Sink::Http(sink) => {
                let attempts = Attempts { sink, settings: &self.retry, health: &self.health, metrics: &self.metrics };
                match attempts.send(&entry.request).await {
                    Ok(()) => self.metrics.record_delivered(received_at),
                    Err(gave_up) => self.give_up(sink, &entry.request, [&entry.request], gave_up).await,
                }
            }
        }
        in_flight.dec();
        self.finish(entry);
    }

    /// `entry` is done: acknowledged to the queue, and its ingest's completion completed.
    fn finish(self: &Arc<Self>, entry: Entry) {
        self.queue.ack(entry.seq);
        if let Some(done) = entry.done {
            done.complete();
        }
    }

    /// Logs and counts the give-up of `sent` (one request, or a batch) for each of the
    /// `requests` it carried, and writes a dead letter for each (file I/O, so off the async
    /// threads).
    async fn give_up<'a>(
        &self,
        sink: &http::HttpSink,
        sent: &Request,
        requests: impl IntoIterator<Item = &'a Request>,
        gave_up: GaveUp,
    ) {
        let requests: Vec<Request> = requests.into_iter().cloned().collect();
        let (action, client) = (sent.kind.action(), sent.client.as_deref().unwrap_or("-"));
        let (url, reason, attempts) = (sink.loggable_url(sent), gave_up.reason.as_str(), gave_up.attempts);
        let what = match requests.len() {
            1 => format!("{action} (client {client:?})"),
            events => format!("a batch of {events} events ({action}, …)"),
        };
        self.metrics.report(
            Problem::GivenUp(gave_up.reason),
            requests.len() as u64,
            format_args!(
                "Delivery of {what} to {url} given up ({reason}) after {attempts} attempts: {}.",
                gave_up.error
            ),
        );
        if let Some(dead_letters) = self.dead_letters.clone() {
            let written = tokio::task::spawn_blocking(move || {
                for request in &requests {
                    dead_letters.record(request, &gave_up.error, gave_up.attempts);
                }
            });
            if written.await.is_err() {
                tracing::error!("Writing a dead letter panicked.");
            }
        }
    }
}
