//! Delivery: takes the requests guests produced and sends them, at most `pool_size` at a time.
//!
//! Receives batches of [`Request`]s from the guest workers over a bounded channel; hands each to a
//! [`Sink`]: HTTP ([`http::HttpSink`], pooled keep-alive connections) or standard output
//! ([`print::PrintSink`], for `--dry-run`). A semaphore of `pool_size` permits bounds the requests
//! in flight; draining waits until every permit is back, so no accepted request is abandoned.
//! Failed attempts are retried as [`retry::RetryPolicy`] says, holding their permit meanwhile.

pub mod dead_letter;
pub mod http;
pub mod print;
pub mod retry;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};

use crate::event::EventKind;
use crate::metrics::Metrics;

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
    let (batches, receiver) = mpsc::channel(1);
    // The receiver is alive until `run` ends, and the channel has room for this one batch.
    batches.try_send(requests).expect("a fresh channel with room for one batch");
    drop(batches);
    run(receiver, sink, pool_size, metrics.clone()).await;
    metrics.snapshot()
}

/// Sends every request received until the channel closes, then waits for those in flight.
pub(crate) async fn run(
    mut requests: mpsc::Receiver<Vec<Request>>,
    sink: Sink,
    pool_size: usize,
    metrics: Arc<Metrics>,
) {
    let permits = Arc::new(Semaphore::new(pool_size));
    while let Some(batch) = requests.recv().await {
        for request in batch {
            match &sink {
                Sink::Print(printer) => {
                    printer.print(&request);
                    metrics.record_delivered();
                }
                Sink::Http(client) => {
                    // The semaphore is never closed, so acquiring cannot fail.
                    let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
                    let client = client.clone();
                    let metrics = metrics.clone();
                    tokio::spawn(async move {
                        match client.send(request, &metrics).await {
                            Ok(()) => metrics.record_delivered(),
                            Err(_) => metrics.record_failed(),
                        }
                        drop(permit);
                    });
                }
            }
        }
    }
    let all = u32::try_from(pool_size).unwrap_or(u32::MAX);
    let _drained = permits.acquire_many(all).await.expect("the semaphore is never closed");
}
