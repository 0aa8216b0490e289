//! Delivery: takes the requests guests produced and sends them, at most `pool_size` at a time.
//!
//! Takes [`Request`]s off the [`queue::DeliveryQueue`] (memory, or the spool on disk) and hands
//! each to a [`Sink`]: HTTP ([`http::HttpSink`], pooled keep-alive connections) or standard
//! output ([`print::PrintSink`], for `--dry-run`). A semaphore of `pool_size` permits bounds the
//! requests in flight (or, with per-client order, `pool_size` lanes each send one at a time);
//! draining waits for all of them, so no accepted request is abandoned. Failed attempts are
//! retried as [`retry::RetryPolicy`] says, holding their permit meanwhile. Each request is
//! acknowledged to the queue when done, which is when the spool may forget it.

pub mod dead_letter;
pub mod http;
pub mod print;
pub mod queue;
pub mod retry;
pub mod tls;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};

use crate::config::DeliveryOrder;
use crate::event::EventKind;
use crate::metrics::Metrics;
use queue::{DeliveryQueue, Entry};

/// One request to send: what a guest returned for one event.
#[derive(Debug, Clone)]
pub struct Request {
    /// The event it came from.
    pub kind: EventKind,
    /// The body, sent as it is.
    pub body: Bytes,
    /// Headers the guest added, sent after the configured ones.
    pub headers: Vec<(::http::HeaderName, ::http::HeaderValue)>,
    /// Path appended to the configured URL's path.
    pub path: Option<String>,
    /// The client id of its event, for per-client order.
    pub client: Option<String>,
    /// Names the request for the endpoint, the same across retries and restarts; given by the
    /// delivery queue when it accepts the request.
    pub idempotency_key: Option<String>,
}

/// Where requests go.
#[derive(Clone)]
pub enum Sink {
    /// POST to the configured endpoint.
    Http(http::HttpSink),
    /// Print each request instead of sending it.
    Print(print::PrintSink),
}

impl Sink {
    /// Takes URL and headers from `config` for every request from now on; the pool, timeouts,
    /// retries and dead letters stay as they were built.
    pub fn retarget(&self, config: &crate::Config) {
        match self {
            Sink::Http(client) => client.retarget(config),
            Sink::Print(printer) => printer.retarget(config),
        }
    }

    /// The dead-letter file, when the sink has one.
    pub fn dead_letters(&self) -> Option<&dead_letter::DeadLetters> {
        match self {
            Sink::Http(client) => client.dead_letters(),
            Sink::Print(_) => None,
        }
    }
}

/// Sends `requests` (for example read back from a dead-letter file) as the runtime would: at most
/// `pool_size` at a time, with retries. Returns the counts.
pub async fn send_all(requests: Vec<Request>, sink: Sink, pool_size: usize) -> crate::MetricsSnapshot {
    let metrics = Arc::new(Metrics::default());
    (0..requests.len()).for_each(|_| metrics.record_received());
    let queue = Arc::new(DeliveryQueue::in_memory(requests.len(), metrics.clone()));
    queue.push(requests);
    queue.close();
    run(queue, sink, pool_size, DeliveryOrder::None, metrics.clone()).await;
    metrics.snapshot()
}

/// Requests taken off the queue at once.
const POP_BATCH: usize = 64;

/// Sends every request the queue hands out until it closes, then waits for those in flight.
pub(crate) async fn run(queue: Arc<DeliveryQueue>, sink: Sink, pool_size: usize, order: DeliveryOrder, metrics: Arc<Metrics>) {
    match order {
        DeliveryOrder::None => run_pooled(&queue, sink, pool_size, metrics).await,
        DeliveryOrder::PerClient => run_per_client(&queue, sink, pool_size, metrics).await,
    }
    queue.finish();
}

/// Up to `pool_size` requests in flight, in any order.
async fn run_pooled(queue: &Arc<DeliveryQueue>, sink: Sink, pool_size: usize, metrics: Arc<Metrics>) {
    let permits = Arc::new(Semaphore::new(pool_size));
    while let Some(entries) = queue.pop(POP_BATCH).await {
        for entry in entries {
            // The semaphore is never closed, so acquiring cannot fail.
            let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
            let (sink, queue, metrics) = (sink.clone(), queue.clone(), metrics.clone());
            tokio::spawn(async move {
                deliver(&sink, entry, &queue, &metrics).await;
                drop(permit);
            });
        }
    }
    let all = u32::try_from(pool_size).unwrap_or(u32::MAX);
    let _drained = permits.acquire_many(all).await.expect("the semaphore is never closed");
}

/// `pool_size` lanes, each sending one request at a time; a client's requests always take the
/// same lane, so they arrive in order.
async fn run_per_client(queue: &Arc<DeliveryQueue>, sink: Sink, pool_size: usize, metrics: Arc<Metrics>) {
    let lanes: Vec<_> = (0..pool_size)
        .map(|_| {
            let (lane, mut entries) = mpsc::channel::<Entry>(POP_BATCH);
            let (sink, queue, metrics) = (sink.clone(), queue.clone(), metrics.clone());
            let task = tokio::spawn(async move {
                while let Some(entry) = entries.recv().await {
                    deliver(&sink, entry, &queue, &metrics).await;
                }
            });
            (lane, task)
        })
        .collect();
    while let Some(entries) = queue.pop(POP_BATCH).await {
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

/// Sends one request, counts the outcome and acknowledges it to the queue.
async fn deliver(sink: &Sink, entry: Entry, queue: &DeliveryQueue, metrics: &Metrics) {
    match sink {
        Sink::Print(printer) => {
            printer.print(&entry.request);
            metrics.record_delivered();
        }
        Sink::Http(client) => match client.send(entry.request, metrics).await {
            Ok(()) => metrics.record_delivered(),
            Err(_) => metrics.record_failed(),
        },
    }
    queue.ack(entry.seq);
}
