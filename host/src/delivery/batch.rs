//! Batching (`batch { … }`): several queued requests sent as one HTTP request.
//!
//! - **Receives** `Entry`s from the delivery queue: in any order from the pooled runner, or in
//!   order from a per-client lane.
//! - **Owns** the open batches (`Gatherer`): which events may share one (the same guest path and
//!   headers, and a body the format can carry), the limits (`max_events`, `max_bytes`, `linger`),
//!   a batch's body and idempotency key (`Batch`), and the split of a batch the endpoint refuses
//!   as too large (413) into halves, down to single events.
//! - **Hands on** each batch to the retry loop as one request (retried, backed off and given up
//!   as one), then each member's outcome: counted per event (delivered, or given up and written
//!   to the dead-letter file as a record of its own, which `mqhook replay` reads as any other),
//!   and acknowledged to the queue one by one. The spool keeps events, not batches: a crash
//!   before a batch is done sends its members again.
//!
//! A batch's `Idempotency-Key` is `batch-` and the first 128 bits of the SHA-256 of its members'
//! keys (comma-separated, in body order): the same members give the same key, across retries,
//! a replay and a restart. The members' keys travel in `Idempotency-Keys`, in body order.
//!
//! An event the format cannot carry (`json`: a body that is not one JSON value; `ndjson`: an
//! empty body or one with a raw line break; either: an idempotency key with a comma) is sent
//! alone, exactly as without batching, and counted ([`Problem::Unbatchable`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::queue::Entry;
use super::request_builder::Framing;
use super::retry::Attempts;
use super::{reap, Deliverer, Sink, POP_BATCH};
use crate::config::{BatchFormat, BatchSettings};
use crate::metrics::{Metrics, Problem};
use crate::request::Request;

/// Batches open at once in the pooled runner, one per guest path and header set: events whose
/// path or headers differ in more ways than this at once go out in smaller batches.
pub const MAX_OPEN_BATCHES: usize = 16;

/// What is ready to be sent.
#[derive(Debug)]
pub(crate) enum Ready {
    /// One event, sent as without batching (its body cannot join a batch).
    Single(Entry),
    /// A batch, its members in body order.
    Batch(Vec<Entry>),
}

/// A batch being filled.
#[derive(Debug)]
struct Open {
    entries: Vec<Entry>,
    /// Bytes of the members' bodies.
    body_bytes: usize,
    /// When it goes out, full or not.
    deadline: Instant,
}

/// Gathers entries into batches within the limits of `batch`.
pub(crate) struct Gatherer {
    settings: BatchSettings,
    /// Batches open at most (one, in order).
    max_open: usize,
    /// Whether the order of entries must be kept (a per-client lane).
    ordered: bool,
    /// Oldest first.
    open: VecDeque<Open>,
    metrics: Arc<Metrics>,
}

impl Gatherer {
    /// For the pooled runner: up to [`MAX_OPEN_BATCHES`] batches fill at once, in any order.
    pub fn pooled(settings: BatchSettings, metrics: Arc<Metrics>) -> Gatherer {
        Gatherer { settings, max_open: MAX_OPEN_BATCHES, ordered: false, open: VecDeque::new(), metrics }
    }

    /// For a per-client lane: one batch of consecutive entries at a time, so order is kept.
    pub fn ordered(settings: BatchSettings, metrics: Arc<Metrics>) -> Gatherer {
        Gatherer { settings, max_open: 1, ordered: true, open: VecDeque::new(), metrics }
    }

    /// Takes `entry` at `now`; what it makes ready (full batches, a batch it closes, the entry
    /// itself when it cannot join one) is appended to `ready`, in the order it must go.
    pub fn offer(&mut self, entry: Entry, now: Instant, ready: &mut VecDeque<Ready>) {
        if let Some(why) = unbatchable(self.settings.format, &entry.request) {
            let action = entry.request.kind.action();
            let format = format_name(self.settings.format);
            self.metrics.report(
                Problem::Unbatchable,
                1,
                format_args!("A {action} request {why} (batch.format = {format}): it is sent alone, not in a batch."),
            );
            if self.ordered {
                self.flush_all(ready);
            }
            ready.push_back(Ready::Single(entry));
            return;
        }
        let length = entry.request.body.len();
        let mut index = self.open.iter().position(|open| shares_batch(&open.entries[0].request, &entry.request));
        if let Some(at) = index {
            let open = &self.open[at];
            if self.framed(open.entries.len() + 1, open.body_bytes + length) > self.settings.max_bytes.as_usize() {
                self.flush(at, ready);
                index = None;
            }
        }
        let at = match index {
            Some(at) => at,
            None => {
                if self.open.len() >= self.max_open {
                    self.flush(0, ready);
                }
                let deadline = now + self.settings.linger;
                self.open.push_back(Open { entries: Vec::new(), body_bytes: 0, deadline });
                self.open.len() - 1
            }
        };
        let open = &mut self.open[at];
        open.entries.push(entry);
        open.body_bytes += length;
        let (count, bytes) = (open.entries.len(), open.body_bytes);
        if count >= self.settings.max_events.get() || self.framed(count, bytes) >= self.settings.max_bytes.as_usize() {
            self.flush(at, ready);
        }
    }

    /// Moves the batches whose linger is over at `now` to `ready`.
    pub fn expire(&mut self, now: Instant, ready: &mut VecDeque<Ready>) {
        while self.open.front().is_some_and(|open| open.deadline <= now) {
            self.flush(0, ready);
        }
    }

    /// Moves every open batch to `ready`, oldest first.
    pub fn flush_all(&mut self, ready: &mut VecDeque<Ready>) {
        while !self.open.is_empty() {
            self.flush(0, ready);
        }
    }

    /// When the oldest open batch's linger is over, if one is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        // Every batch lingers as long, so the oldest is due first.
        self.open.front().map(|open| open.deadline)
    }

    /// Whether no batch is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    fn flush(&mut self, at: usize, ready: &mut VecDeque<Ready>) {
        if let Some(open) = self.open.remove(at) {
            ready.push_back(Ready::Batch(open.entries));
        }
    }

    /// The body's size for `count` bodies of `bytes` in all.
    fn framed(&self, count: usize, bytes: usize) -> usize {
        framed_len(self.settings.format, count, bytes)
    }
}

/// A batch body's size: `[b1,b2]` or `b1\nb2\n`.
fn framed_len(format: BatchFormat, count: usize, bytes: usize) -> usize {
    match format {
        BatchFormat::Json => bytes + count + 1,
        BatchFormat::Ndjson => bytes + count,
    }
}

fn format_name(format: BatchFormat) -> &'static str {
    match format {
        BatchFormat::Json => "json",
        BatchFormat::Ndjson => "ndjson",
    }
}

/// Whether two requests may share a batch: the same guest path and the same guest headers, in
/// the same order (the batch's request carries them once).
fn shares_batch(a: &Request, b: &Request) -> bool {
    a.path == b.path && a.headers == b.headers
}

/// Why `request` cannot join a batch in `format`, if it cannot.
fn unbatchable(format: BatchFormat, request: &Request) -> Option<&'static str> {
    let key = request.idempotency_key.as_deref().unwrap_or("");
    if key.is_empty() || key.contains(',') || HeaderValue::from_str(key).is_err() {
        return Some("has an idempotency key that cannot be listed in `Idempotency-Keys`");
    }
    let body = &request.body;
    match format {
        BatchFormat::Json => {
            serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err().then_some("has a body that is not JSON")
        }
        BatchFormat::Ndjson if body.is_empty() => Some("has an empty body"),
        BatchFormat::Ndjson => {
            body.iter().any(|b| matches!(b, b'\n' | b'\r')).then_some("has a line break in its body")
        }
    }
}

/// One batch as it is sent: a request carrying the members' shared path and guest headers, the
/// joined body and the batch's key, and the members' keys.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    /// What is sent (its `kind` is the first member's, for log lines).
    pub request: Request,
    /// The `Idempotency-Keys` value.
    pub keys: HeaderValue,
}

impl Batch {
    /// The batch of `members` (at least one), in `format`.
    pub fn of(format: BatchFormat, members: &[Entry]) -> Batch {
        let bytes: usize = members.iter().map(|member| member.request.body.len()).sum();
        let mut body = BytesMut::with_capacity(framed_len(format, members.len(), bytes));
        let mut keys = String::with_capacity(members.len() * 26);
        for (index, member) in members.iter().enumerate() {
            match format {
                BatchFormat::Json => {
                    body.put_u8(if index == 0 { b'[' } else { b',' });
                    body.put_slice(&member.request.body);
                }
                BatchFormat::Ndjson => {
                    body.put_slice(&member.request.body);
                    body.put_u8(b'\n');
                }
            }
            if index > 0 {
                keys.push(',');
            }
            keys.push_str(member.request.idempotency_key.as_deref().unwrap_or(""));
        }
        if format == BatchFormat::Json {
            body.put_u8(b']');
        }
        let digest = Sha256::digest(keys.as_bytes());
        let key = digest[..16].iter().fold(String::from("batch-"), |mut key, byte| {
            key.push_str(&format!("{byte:02x}"));
            key
        });
        let first = &members[0].request;
        let request = Request {
            kind: first.kind,
            body: Bytes::from(body),
            headers: first.headers.clone(),
            path: first.path.clone(),
            client: None,
            idempotency_key: Some(key),
            received_at: None,
        };
        // Every member's key passed `unbatchable`: each is a header value without a comma.
        let keys = HeaderValue::from_str(&keys).unwrap_or_else(|_| HeaderValue::from_static(""));
        Batch { request, keys }
    }
}

/// The pooled runner with batching: up to `pool_size` requests (batches, or events sent alone)
/// in flight. While the pool is full, open batches go on filling past their linger.
pub(super) async fn run_pooled(deliverer: Arc<Deliverer>, pool_size: usize, settings: BatchSettings) {
    let format = settings.format;
    let mut gatherer = Gatherer::pooled(settings, deliverer.metrics.pipeline().clone());
    let mut ready = VecDeque::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut open = true;
    loop {
        if tasks.len() < pool_size {
            gatherer.expire(Instant::now(), &mut ready);
        }
        if !open {
            gatherer.flush_all(&mut ready);
        }
        while tasks.len() < pool_size {
            let Some(next) = ready.pop_front() else { break };
            let deliverer = deliverer.clone();
            tasks.spawn(async move { deliverer.deliver_ready(format, next).await });
        }
        if !ready.is_empty() {
            // The pool is full: the next request waits for room.
            reap(tasks.join_next().await);
            continue;
        }
        if !open {
            break;
        }
        let deadline = gatherer.next_deadline().filter(|_| tasks.len() < pool_size);
        tokio::select! {
            biased;
            popped = deliverer.queue.pop(POP_BATCH) => match popped {
                Some(entries) => {
                    let now = Instant::now();
                    entries.into_iter().for_each(|entry| gatherer.offer(entry, now, &mut ready));
                }
                None => open = false,
            },
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
            joined = tasks.join_next(), if tasks.len() >= pool_size => reap(joined),
        }
    }
    while let Some(joined) = tasks.join_next().await {
        reap(Some(joined));
    }
}

/// A per-client lane with batching: consecutive entries of the lane share a batch, and the lane
/// sends one request at a time, so each client's events arrive in order.
pub(super) async fn run_lane(deliverer: Arc<Deliverer>, mut entries: mpsc::Receiver<Entry>, settings: BatchSettings) {
    let format = settings.format;
    let mut gatherer = Gatherer::ordered(settings, deliverer.metrics.pipeline().clone());
    let mut ready = VecDeque::new();
    let mut open = true;
    loop {
        while let Some(next) = ready.pop_front() {
            deliverer.deliver_ready(format, next).await;
        }
        if !open {
            if gatherer.is_empty() {
                break;
            }
            gatherer.flush_all(&mut ready);
            continue;
        }
        // An entry already waiting is taken even when the linger is over.
        let received = match gatherer.next_deadline() {
            None => entries.recv().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, entries.recv()).await {
                Ok(received) => received,
                Err(_elapsed) => {
                    gatherer.expire(Instant::now(), &mut ready);
                    continue;
                }
            },
        };
        match received {
            Some(entry) => gatherer.offer(entry, Instant::now(), &mut ready),
            None => open = false,
        }
    }
}

impl Deliverer {
    /// Sends what is ready: an event alone, or a batch in `format`.
    async fn deliver_ready(self: &Arc<Self>, format: BatchFormat, ready: Ready) {
        match ready {
            Ready::Single(entry) => self.deliver(entry).await,
            Ready::Batch(members) => {
                let in_flight = self.metrics.in_flight();
                in_flight.inc();
                self.deliver_members(format, members).await;
                in_flight.dec();
            }
        }
    }

    /// Sends `members` as one batch; on a 413 (more than one member), each half as a batch of
    /// its own, one after the other (so a lane's order holds). Acknowledges each member when its
    /// batch is done.
    fn deliver_members(
        self: &Arc<Self>,
        format: BatchFormat,
        mut members: Vec<Entry>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let batch = Batch::of(format, &members);
            let framing = Framing::Batch { format, keys: &batch.keys };
            match &self.sink {
                Sink::Print(printer) => {
                    printer.print_framed(&batch.request, framing);
                    members.iter().for_each(|member| self.metrics.record_delivered(member.request.received_at));
                }
                Sink::Http(sink) => {
                    let attempts =
                        Attempts { sink, settings: &self.retry, health: &self.health, metrics: &self.metrics };
                    match attempts.send_framed(&batch.request, framing).await {
                        Ok(()) => {
                            members.iter().for_each(|member| self.metrics.record_delivered(member.request.received_at))
                        }
                        Err(gave_up)
                            if gave_up.error.status() == Some(StatusCode::PAYLOAD_TOO_LARGE) && members.len() > 1 =>
                        {
                            self.metrics.record_batch_split();
                            let second = members.split_off(members.len() / 2);
                            tracing::debug!(
                                events = members.len() + second.len(),
                                "The endpoint refused a batch as too large (413); it is sent again in halves."
                            );
                            self.deliver_members(format, members).await;
                            self.deliver_members(format, second).await;
                            return;
                        }
                        Err(gave_up) => {
                            let requests = members.iter().map(|member| &member.request);
                            self.give_up(sink, &batch.request, requests, gave_up).await;
                        }
                    }
                }
            }
            self.metrics.record_batch(members.len());
            members.into_iter().for_each(|member| self.finish(member));
        })
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;
    use std::time::Duration;

    use super::*;
    use crate::config::ByteSize;
    use crate::event::EventKind;

    fn entry(seq: u64, body: &str) -> Entry {
        let request = Request {
            kind: EventKind::MessagePublish,
            body: Bytes::from(body.to_string()),
            headers: Vec::new(),
            path: None,
            client: None,
            idempotency_key: Some(format!("k-{seq}")),
            received_at: None,
        };
        Entry { seq, request, done: None }
    }

    fn settings(max_events: usize, max_bytes: u64, format: BatchFormat) -> BatchSettings {
        BatchSettings {
            max_events: NonZeroUsize::new(max_events).unwrap(),
            max_bytes: ByteSize::new(max_bytes).unwrap(),
            linger: Duration::from_millis(20),
            format,
        }
    }

    /// Each ready item as the sequence numbers it holds (a single event as a negative number).
    fn shapes(ready: &VecDeque<Ready>) -> Vec<Vec<i64>> {
        ready
            .iter()
            .map(|ready| match ready {
                Ready::Single(entry) => vec![-(entry.seq as i64)],
                Ready::Batch(members) => members.iter().map(|member| member.seq as i64).collect(),
            })
            .collect()
    }

    #[test]
    fn max_events_and_max_bytes_each_close_a_batch() {
        let now = Instant::now();
        let mut ready = VecDeque::new();
        let mut gatherer = Gatherer::pooled(settings(3, 1 << 20, BatchFormat::Json), Arc::default());
        (0..7).for_each(|seq| gatherer.offer(entry(seq, "{}"), now, &mut ready));
        assert_eq!(shapes(&ready), vec![vec![0, 1, 2], vec![3, 4, 5]]);
        gatherer.flush_all(&mut ready);
        assert_eq!(shapes(&ready).last(), Some(&vec![6]));

        // `[` + 3 × 10 bytes + 2 commas + `]` = 34 bytes: a fourth body does not fit in 40.
        let mut ready = VecDeque::new();
        let mut gatherer = Gatherer::pooled(settings(100, 40, BatchFormat::Json), Arc::default());
        (0..4).for_each(|seq| gatherer.offer(entry(seq, "\"12345678\""), now, &mut ready));
        assert_eq!(shapes(&ready), vec![vec![0, 1, 2]]);
        // A body larger than max_bytes goes in a batch of its own, at once.
        gatherer.offer(entry(4, &format!("\"{}\"", "x".repeat(50))), now, &mut ready);
        assert_eq!(shapes(&ready), vec![vec![0, 1, 2], vec![3], vec![4]]);
    }

    #[test]
    fn a_batch_goes_when_its_linger_is_over() {
        let now = Instant::now();
        let mut ready = VecDeque::new();
        let mut gatherer = Gatherer::pooled(settings(100, 1 << 20, BatchFormat::Ndjson), Arc::default());
        gatherer.offer(entry(0, "a"), now, &mut ready);
        gatherer.offer(entry(1, "b"), now + Duration::from_millis(15), &mut ready);
        assert_eq!(gatherer.next_deadline(), Some(now + Duration::from_millis(20)), "the first event sets it");
        gatherer.expire(now + Duration::from_millis(19), &mut ready);
        assert!(ready.is_empty());
        gatherer.expire(now + Duration::from_millis(20), &mut ready);
        assert_eq!(shapes(&ready), vec![vec![0, 1]]);
        assert!(gatherer.is_empty());
    }

    #[test]
    fn events_with_other_paths_or_headers_fill_other_batches() {
        let now = Instant::now();
        let mut ready = VecDeque::new();
        let mut gatherer = Gatherer::pooled(settings(2, 1 << 20, BatchFormat::Json), Arc::default());
        let routed = |seq, path: &str| {
            let mut entry = entry(seq, "1");
            entry.request.path = Some(path.to_string());
            entry
        };
        gatherer.offer(routed(0, "/a"), now, &mut ready);
        gatherer.offer(routed(1, "/b"), now, &mut ready);
        gatherer.offer(routed(2, "/a"), now, &mut ready);
        assert_eq!(shapes(&ready), vec![vec![0, 2]]);
        let mut headed = entry(3, "1");
        headed.request.headers.push((http::HeaderName::from_static("x-n"), HeaderValue::from_static("1")));
        gatherer.offer(headed, now, &mut ready);
        gatherer.flush_all(&mut ready);
        assert_eq!(shapes(&ready), vec![vec![0, 2], vec![1], vec![3]]);

        // A lane keeps its order: another path closes the open batch first.
        let mut ready = VecDeque::new();
        let mut lane = Gatherer::ordered(settings(10, 1 << 20, BatchFormat::Json), Arc::default());
        for (seq, path) in [(0, "/a"), (1, "/a"), (2, "/b"), (3, "/a")] {
            lane.offer(routed(seq, path), now, &mut ready);
        }
        lane.flush_all(&mut ready);
        assert_eq!(shapes(&ready), vec![vec![0, 1], vec![2], vec![3]]);
    }

    #[test]
    fn bodies_the_format_cannot_carry_go_alone_and_are_counted() {
        let now = Instant::now();
        let metrics = Arc::new(Metrics::default());
        let mut ready = VecDeque::new();
        let mut json = Gatherer::ordered(settings(10, 1 << 20, BatchFormat::Json), metrics.clone());
        json.offer(entry(0, "{\"a\":1}"), now, &mut ready);
        json.offer(entry(1, "not json"), now, &mut ready);
        json.offer(entry(2, "[1,2] 3"), now, &mut ready);
        json.offer(entry(3, " \"spaced\"\n"), now, &mut ready);
        json.flush_all(&mut ready);
        // In a lane the open batch goes first, so that order holds.
        assert_eq!(shapes(&ready), vec![vec![0], vec![-1], vec![-2], vec![3]]);

        let mut ready = VecDeque::new();
        let mut ndjson = Gatherer::pooled(settings(10, 1 << 20, BatchFormat::Ndjson), metrics.clone());
        for (seq, body) in [(4, "{}"), (5, "two\nlines"), (6, ""), (7, "cr\r"), (8, "plain text")] {
            ndjson.offer(entry(seq, body), now, &mut ready);
        }
        let mut keyed = entry(9, "{}");
        keyed.request.idempotency_key = Some("a,b".into());
        ndjson.offer(keyed, now, &mut ready);
        ndjson.flush_all(&mut ready);
        assert_eq!(shapes(&ready), vec![vec![-5], vec![-6], vec![-7], vec![-9], vec![4, 8]]);
        assert_eq!(metrics.snapshot().unbatched, 6);
    }

    #[test]
    fn the_pooled_gatherer_keeps_a_bounded_number_of_batches_open() {
        let now = Instant::now();
        let mut ready = VecDeque::new();
        let mut gatherer = Gatherer::pooled(settings(10, 1 << 20, BatchFormat::Json), Arc::default());
        for seq in 0..=MAX_OPEN_BATCHES as u64 {
            let mut entry = entry(seq, "1");
            entry.request.path = Some(format!("/{seq}"));
            gatherer.offer(entry, now, &mut ready);
        }
        assert_eq!(shapes(&ready), vec![vec![0]], "the oldest goes to make room");
    }

    #[test]
    fn a_batch_joins_the_bodies_and_names_its_members() {
        let members = [entry(7, "{\"a\":1}"), entry(8, "[2]"), entry(9, "\"3\"")];
        let json = Batch::of(BatchFormat::Json, &members);
        assert_eq!(json.request.body, "[{\"a\":1},[2],\"3\"]");
        assert_eq!(json.keys, "k-7,k-8,k-9");
        let key = json.request.idempotency_key.clone().unwrap();
        assert!(key.starts_with("batch-") && key.len() == 6 + 32, "{key}");
        let ndjson = Batch::of(BatchFormat::Ndjson, &members);
        assert_eq!(ndjson.request.body, "{\"a\":1}\n[2]\n\"3\"\n");
        assert_eq!(ndjson.request.idempotency_key, Some(key.clone()), "the key depends on the members only");
        assert_ne!(Batch::of(BatchFormat::Json, &members[..2]).request.idempotency_key, Some(key));
        for (format, count, bytes) in [(BatchFormat::Json, 3, 13), (BatchFormat::Ndjson, 3, 13)] {
            let batch = Batch::of(format, &members);
            assert_eq!(batch.request.body.len(), framed_len(format, count, bytes));
        }
    }
}
