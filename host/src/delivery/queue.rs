//! The delivery queue: the buffer between guest workers and the HTTP pool, in memory up to a
//! bound and, with a spool configured, on disk before it is accepted.
//!
//! Every request gets a sequence number and, from it, an idempotency key that stays with it
//! through retries, dead letters and restarts. The memory part holds at most `queues.requests`
//! requests and `queues.request_bytes` of bodies. Without a spool the queue is memory only and a
//! full queue makes the workers wait (and so, further up, the runtime queue refuse events). With
//! a spool every request is appended to disk first (write-ahead: that is what "accepted" means)
//! and kept in memory only while the memory part has room and nothing older waits on disk;
//! beyond that it is read back from disk as delivery catches up. Memory stays bounded and
//! ingest never waits for the endpoint.
//!
//! Delivery acknowledges each request when it is done (delivered, or failed for good and dead-
//! lettered); the spool deletes what is acknowledged. This module owns every position.
//!
//! A request may come with a [`Completion`] its ingest waits on: with a spool it is completed
//! once the push has written the request (write-ahead: durable), without one it travels with the
//! request and delivery completes it when the request is done.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::completion::Completion;
use crate::config::{FullPolicy, QueueConfig, SpoolConfig};
use crate::metrics::{Depths, Metrics, Problem};
use crate::request::{idempotency_key, Request};
use crate::spool::{Admission, Spool, SpoolError};

/// How often a pusher waiting for room in a full spool frees what was acknowledged meanwhile.
const FULL_SPOOL_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// One request and its place in the queue.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Its sequence number; acknowledged when done.
    pub seq: u64,
    /// The request, its idempotency key set.
    pub request: Request,
    /// Completed when the request is done (memory-only queues; a spool completes at push).
    pub done: Option<Completion>,
}

/// Requests waiting for delivery. Shared by the workers (push) and delivery (pop, ack).
pub struct DeliveryQueue {
    state: Mutex<State>,
    /// Woken when requests arrive or the queue closes.
    readable: Notify,
    /// Woken when memory frees up (memory-only queues make pushers wait).
    writable: Condvar,
    /// Requests held in memory at most.
    bound: usize,
    /// Bytes of bodies held in memory at most.
    bound_bytes: usize,
    /// Whether a spool backs the queue (read without the lock: acknowledging is free without one).
    spooled: bool,
    /// What a full spool does.
    on_full: FullPolicy,
    /// A release of acknowledged records (file I/O) is under way off the async threads.
    releasing: AtomicBool,
    /// The latest write to the spool failed (readiness).
    spool_failing: AtomicBool,
    metrics: Arc<Metrics>,
}

struct State {
    /// Requests ready to hand out, oldest first.
    memory: VecDeque<Entry>,
    /// Their bodies' bytes.
    memory_bytes: usize,
    spool: Option<Spool>,
    /// The prefix of idempotency keys: the spool's id, or a random one per process.
    key_prefix: String,
    next_seq: u64,
    /// The oldest sequence number neither in memory nor handed out: `[disk_next, next_seq)` is
    /// on disk only. Always `next_seq` without a spool.
    disk_next: u64,
    /// Everything below is acknowledged.
    acked: u64,
    /// Acknowledged sequence numbers above `acked`.
    done: BTreeSet<u64>,
    /// Reused buffer for framing records.
    frames: Vec<u8>,
    closed: bool,
    /// Pushers waiting on `writable` (a notification is a system call even when nobody waits).
    pushers_waiting: usize,
}

impl DeliveryQueue {
    /// A queue with the `queues` bounds: memory only, or backed by `spool` (opened and recovered
    /// here; recovered requests are delivered first).
    pub fn open(
        queues: &QueueConfig,
        spool: Option<&SpoolConfig>,
        metrics: Arc<Metrics>,
    ) -> Result<DeliveryQueue, SpoolError> {
        let Some(spool_config) = spool else {
            return Ok(DeliveryQueue::in_memory(queues, metrics));
        };
        let (spool, recovered) = Spool::open(spool_config)?;
        let pending = recovered.next_seq - recovered.acked;
        if pending > 0 {
            tracing::info!(spool = %spool_config.dir.display(), "Recovered {pending} requests not yet delivered.");
        }
        // Damaged records are counted as dropped when the reader reaches them.
        metrics.add_recovered(pending);
        let state = State {
            memory: VecDeque::new(),
            memory_bytes: 0,
            key_prefix: spool.id().to_string(),
            spool: Some(spool),
            next_seq: recovered.next_seq,
            disk_next: recovered.acked,
            acked: recovered.acked,
            done: BTreeSet::new(),
            frames: Vec::new(),
            closed: false,
            pushers_waiting: 0,
        };
        let mut queue = DeliveryQueue::with_state(state, queues, metrics);
        queue.on_full = spool_config.on_full;
        Ok(queue)
    }

    /// A memory-only queue with the `queues` bounds.
    pub fn in_memory(queues: &QueueConfig, metrics: Arc<Metrics>) -> DeliveryQueue {
        let state = State {
            memory: VecDeque::new(),
            memory_bytes: 0,
            spool: None,
            key_prefix: format!("{:016x}", fastrand::u64(..)),
            next_seq: 0,
            disk_next: 0,
            acked: 0,
            done: BTreeSet::new(),
            frames: Vec::new(),
            closed: false,
            pushers_waiting: 0,
        };
        DeliveryQueue::with_state(state, queues, metrics)
    }

    fn with_state(state: State, queues: &QueueConfig, metrics: Arc<Metrics>) -> DeliveryQueue {
        DeliveryQueue {
            spooled: state.spool.is_some(),
            state: Mutex::new(state),
            readable: Notify::new(),
            writable: Condvar::new(),
            bound: queues.requests.get(),
            bound_bytes: queues.request_bytes.as_usize(),
            on_full: FullPolicy::Block,
            releasing: AtomicBool::new(false),
            spool_failing: AtomicBool::new(false),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Accepts a batch. With a spool this writes it to disk and never waits; without one it
    /// waits while memory is full.
    pub(crate) fn push(&self, batch: Vec<Request>) {
        self.push_with(batch, Vec::new());
    }

    /// As [`DeliveryQueue::push`], with the completion of each request (`completions` is empty
    /// or as long as `batch`). With a spool they are completed when this returns (the batch is
    /// on disk, or what the spool refused is counted as dropped); without one each goes with
    /// its request to delivery.
    pub(crate) fn push_with(&self, batch: Vec<Request>, completions: Vec<Option<Completion>>) {
        self.push_entries(batch, completions, true);
    }

    /// Whether a push would neither wait nor touch the disk now: memory only, open, with room.
    /// A caller that must not block (an ingest's own thread) asks before it makes requests, then
    /// pushes them with [`DeliveryQueue::push_now`].
    pub(crate) fn takes_without_waiting(&self) -> bool {
        if self.spooled {
            return false;
        }
        let state = self.lock();
        !state.closed && state.has_room(self.bound, self.bound_bytes)
    }

    /// As [`DeliveryQueue::push_with`] on a memory-only queue, but never waits: what a full
    /// queue cannot take is kept beyond its bound. Only after
    /// [`DeliveryQueue::takes_without_waiting`] said yes, so the bound is passed only by what
    /// concurrent pushers made meanwhile.
    pub(crate) fn push_now(&self, batch: Vec<Request>, completions: Vec<Option<Completion>>) {
        self.push_entries(batch, completions, false);
    }

    fn push_entries(&self, batch: Vec<Request>, completions: Vec<Option<Completion>>, wait: bool) {
        let mut state = self.lock();
        if state.spool.is_some() {
            let mut pending = VecDeque::from(batch);
            while self.push_spooled(&mut state, &mut pending) {
                // Full, and `on_full = block`: what fitted can go out; wait until delivery frees room.
                self.readable.notify_one();
                // A wait, not a loss: logged through the limiter, counted as nothing.
                self.metrics.report(
                    Problem::SpoolFull,
                    0,
                    format_args!(
                        "The spool is full: new requests wait until delivery frees room (spool.on_full = block)."
                    ),
                );
                state.pushers_waiting += 1;
                state = self.writable.wait_timeout(state, FULL_SPOOL_RECHECK).unwrap_or_else(PoisonError::into_inner).0;
                state.pushers_waiting -= 1;
                // Acknowledgements are written down lazily; a waiting pusher may not wait for that.
                let acked = state.acked;
                if let Err(error) = state.spool.as_mut().expect("a spooled queue").release(acked, true) {
                    tracing::error!("Cannot record delivered requests in the spool: {error}.");
                }
            }
            drop(state);
            completions.into_iter().flatten().for_each(Completion::complete);
        } else {
            let mut completions = completions.into_iter();
            for mut request in batch {
                while wait && !state.has_room(self.bound, self.bound_bytes) {
                    state.pushers_waiting += 1;
                    state = self.writable.wait(state).unwrap_or_else(PoisonError::into_inner);
                    state.pushers_waiting -= 1;
                }
                let seq = state.take_seq(&mut request);
                state.keep(Entry { seq, request, done: completions.next().flatten() });
                state.disk_next = state.next_seq;
            }
            drop(state);
        }
        self.readable.notify_one();
    }

    /// Writes `pending` to the spool, in order; `true` when it stopped early because the spool is
    /// full and `on_full = block` (what is left stays in `pending`).
    fn push_spooled(&self, state: &mut State, pending: &mut VecDeque<Request>) -> bool {
        // Taken out for the batch, so `state` can be updated beside it; put back below.
        let mut spool = state.spool.take().expect("called with a spool");
        let mut frames = std::mem::take(&mut state.frames);
        frames.clear();
        let first = state.next_seq;
        let mut full = false;
        while let Some(mut request) = pending.pop_front() {
            let seq = state.next_seq;
            state.key_for(seq, &mut request);
            match spool.frame(seq, &request, &mut frames) {
                Admission::Refused if self.on_full == FullPolicy::Block => {
                    pending.push_front(request);
                    full = true;
                    break;
                }
                Admission::Refused => {
                    let (action, bytes) = (request.kind.action(), spool.bytes());
                    self.metrics.report(
                        Problem::SpoolFull,
                        1,
                        format_args!("The spool is full ({bytes} bytes): a {action} request is dropped (spool.on_full = reject_new)."),
                    );
                    continue;
                }
                Admission::TooLarge => {
                    let (action, bytes) = (request.kind.action(), request.body.len());
                    self.metrics.report(
                        Problem::SpoolFull,
                        1,
                        format_args!("A {action} request of {bytes} bytes, larger than the whole spool (spool.max_size), is dropped."),
                    );
                    continue;
                }
                Admission::DroppedOldest(dropped) => {
                    let lost = dropped.to.saturating_sub(dropped.from.max(state.disk_next));
                    state.disk_next = state.disk_next.max(dropped.to);
                    self.metrics.report(
                        Problem::SpoolFull,
                        lost,
                        format_args!(
                            "The spool is full (spool.on_full = drop_oldest): {lost} undelivered requests are dropped."
                        ),
                    );
                    state.ack_range(dropped.from, dropped.to);
                }
                Admission::Fits => {}
            }
            state.next_seq += 1;
            self.metrics.record_spooled();
            if state.disk_next == seq && state.has_room(self.bound, self.bound_bytes) {
                state.keep(Entry { seq, request, done: None });
                state.disk_next = seq + 1;
            }
        }
        let written = spool.write(&frames, first);
        self.spool_failing.store(written.is_err(), Ordering::Relaxed);
        if let Err(error) = written {
            // What is in memory is still delivered; the rest of the batch never reached the disk.
            let from = state.disk_next.max(first);
            let to = state.next_seq;
            let lost = to - from;
            self.metrics.report(
                Problem::SpoolWriteFailed,
                lost,
                format_args!("Cannot write to the spool: {error}; {lost} requests are lost."),
            );
            state.ack_range(from, to);
            state.disk_next = to;
        }
        if state.disk_next == state.next_seq {
            spool.skip_to_end();
        }
        state.spool = Some(spool);
        state.frames = frames;
        full
    }

    /// Up to `max` requests, waiting for some; `None` once the queue is closed and empty.
    pub(crate) async fn pop(&self, max: usize) -> Option<Vec<Entry>> {
        loop {
            let notified = self.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.memory.is_empty() {
                    self.refill(&mut state);
                }
                if !state.memory.is_empty() {
                    let take = max.min(state.memory.len());
                    let entries: Vec<Entry> = state.memory.drain(..take).collect();
                    state.memory_bytes -= entries.iter().map(|e| e.request.body.len()).sum::<usize>();
                    let pushers_waiting = state.pushers_waiting > 0;
                    drop(state);
                    if pushers_waiting {
                        self.writable.notify_all();
                    }
                    return Some(entries);
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Reads what waits on disk into memory, up to the bound.
    fn refill(&self, state: &mut State) {
        if state.disk_next >= state.next_seq {
            return;
        }
        let from = state.disk_next;
        let mut corrupt = 0;
        let Some(spool) = state.spool.as_mut() else { return };
        let records = match spool.read(from, self.bound, self.bound_bytes, &mut corrupt) {
            Ok(records) => records,
            Err(error) => {
                tracing::error!("Cannot read the spool: {error}.");
                Vec::new()
            }
        };
        // Numbers the reader did not find: damaged records (skipped, or rewritten away at open).
        let mut missing = 0;
        for (seq, request) in records {
            if seq > state.disk_next {
                // Records that could not be read: counted, and never waited for.
                let (from, to) = (state.disk_next, seq);
                missing += to - from;
                state.ack_range(from, to);
            }
            state.disk_next = seq + 1;
            state.keep(Entry { seq, request, done: None });
        }
        if state.memory.is_empty() {
            // The reader reached the end: whatever is still missing is unreadable.
            let (from, to) = (state.disk_next, state.next_seq);
            missing += to - from;
            state.ack_range(from, to);
            state.disk_next = to;
        }
        // A record the reader skipped is also a number it did not find: count each loss once.
        let corrupt = corrupt.max(missing);
        if corrupt > 0 {
            self.metrics.report(
                Problem::SpoolDamaged,
                corrupt,
                format_args!("{corrupt} spooled requests could not be read back; they are lost."),
            );
        }
    }

    /// `seq` is done: delivered, or failed for good (and dead-lettered). When it is time to
    /// write the acknowledged position down and delete finished segments, that file I/O runs on
    /// a blocking thread, off the async executor.
    pub(crate) fn ack(self: &Arc<Self>, seq: u64) {
        if !self.spooled {
            return;
        }
        let mut state = self.lock();
        state.ack_range(seq, seq + 1);
        let acked = state.acked;
        let due = state.spool.as_ref().is_some_and(|spool| spool.release_due(acked));
        drop(state);
        if !due || self.releasing.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let queue = self.clone();
                drop(runtime.spawn_blocking(move || queue.release()));
            }
            Err(_) => self.release(),
        }
    }

    /// Writes the acknowledged position down and deletes finished segments; wakes pushers that
    /// wait for room in a full spool.
    fn release(&self) {
        let mut state = self.lock();
        let (acked, pushers_waiting) = (state.acked, state.pushers_waiting > 0);
        if let Some(spool) = state.spool.as_mut() {
            let before = spool.bytes();
            if let Err(error) = spool.release(acked, false) {
                tracing::error!("Cannot record delivered requests in the spool: {error}.");
            }
            if spool.bytes() < before && pushers_waiting {
                self.writable.notify_all();
            }
        }
        drop(state);
        self.releasing.store(false, Ordering::Release);
    }

    /// No more pushes: `pop` returns `None` once everything is handed out.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_one();
    }

    /// What the queue holds now, for the gauges (`events` and `backing_off` are not its to say).
    pub(crate) fn depths(&self) -> Depths {
        let state = self.lock();
        let (spool_bytes, spool_records) = match &state.spool {
            Some(spool) => (spool.bytes(), state.next_seq - state.acked),
            None => (0, 0),
        };
        Depths { requests: state.memory.len(), spool_bytes, spool_records, ..Depths::default() }
    }

    /// Whether a spool backs the queue and its latest write failed.
    pub(crate) fn spool_failing(&self) -> bool {
        self.spool_failing.load(Ordering::Relaxed)
    }

    /// Writes the acknowledged position down and syncs the spool; for the end of a run.
    pub(crate) fn finish(&self) {
        let mut state = self.lock();
        let acked = state.acked;
        if let Some(spool) = state.spool.as_mut() {
            if let Err(error) = spool.release(acked, true).and_then(|()| spool.sync()) {
                tracing::error!("Cannot sync the spool: {error}.");
            }
        }
    }
}

impl State {
    /// Whether the memory part may take another request.
    fn has_room(&self, bound: usize, bound_bytes: usize) -> bool {
        self.memory.is_empty() || (self.memory.len() < bound && self.memory_bytes < bound_bytes)
    }

    fn keep(&mut self, entry: Entry) {
        self.memory_bytes += entry.request.body.len();
        self.memory.push_back(entry);
    }

    /// Numbers a request and gives it its idempotency key, unless it has one (a replay).
    fn take_seq(&mut self, request: &mut Request) -> u64 {
        let seq = self.next_seq;
        self.key_for(seq, request);
        self.next_seq += 1;
        seq
    }

    fn key_for(&self, seq: u64, request: &mut Request) {
        if request.idempotency_key.is_none() {
            request.idempotency_key = Some(idempotency_key(&self.key_prefix, seq));
        }
    }

    /// Marks `[from, to)` done and moves `acked` over everything contiguous.
    fn ack_range(&mut self, from: u64, to: u64) {
        if to <= self.acked {
            return;
        }
        if from <= self.acked {
            self.acked = to;
        } else {
            self.done.extend(from..to);
        }
        while self.done.first().is_some_and(|&first| first <= self.acked) {
            let first = self.done.pop_first().expect("checked");
            if first == self.acked {
                self.acked += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use bytes::Bytes;

    use super::*;
    use crate::config::{ByteSize, FsyncPolicy, FullPolicy, QueueConfig, SpoolConfig, DEFAULT_QUEUE_BYTES};
    use crate::event::EventKind;

    const MEMORY_BYTES: usize = DEFAULT_QUEUE_BYTES.get() as usize;

    fn request(i: usize) -> Request {
        Request {
            kind: EventKind::MessagePublish,
            body: Bytes::from(format!("{{\"payload\":\"{i:04}\"}}").into_bytes()),
            headers: Vec::new(),
            path: None,
            client: Some(format!("c{}", i % 3)),
            idempotency_key: None,
            received_at: None,
        }
    }

    /// A queue of `queue_size` requests in memory over a spool of `max_size` bytes in `dir`.
    struct Setup {
        queues: QueueConfig,
        spool: SpoolConfig,
    }

    fn config(dir: &Path, max_size: u64, on_full: FullPolicy, queue_size: usize) -> Setup {
        let size = |bytes| ByteSize::new(bytes).unwrap();
        Setup {
            queues: QueueConfig { requests: queue_size.try_into().unwrap(), ..QueueConfig::default() },
            spool: SpoolConfig {
                dir: dir.to_path_buf(),
                max_size: size(max_size),
                segment_size: size(max_size / 4),
                fsync: FsyncPolicy::Never,
                on_full,
            },
        }
    }

    fn open(setup: &Setup) -> (Arc<DeliveryQueue>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        (Arc::new(DeliveryQueue::open(&setup.queues, Some(&setup.spool), metrics.clone()).unwrap()), metrics)
    }

    /// Closes the queue and takes every body it hands out until it is empty.
    fn drain(queue: &Arc<DeliveryQueue>) -> Vec<String> {
        queue.close();
        let bodies = take_all(queue);
        queue.finish();
        bodies
    }

    /// Every body the queue hands out until it is closed and empty, acknowledging each.
    fn take_all(queue: &Arc<DeliveryQueue>) -> Vec<String> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut bodies = Vec::new();
        while let Some(entries) = runtime.block_on(queue.pop(7)) {
            for entry in entries {
                bodies.push(String::from_utf8(entry.request.body.to_vec()).unwrap());
                queue.ack(entry.seq);
            }
        }
        bodies
    }

    fn expected(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| String::from_utf8(request(i).body.to_vec()).unwrap()).collect()
    }

    #[test]
    fn beyond_the_memory_bound_requests_come_back_from_disk_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, metrics) = open(&config(dir.path(), 1 << 20, FullPolicy::RejectNew, 5));
        for start in (0..100).step_by(10) {
            queue.push((start..start + 10).map(request).collect());
        }
        assert!(queue.lock().memory.len() <= 5, "memory stays within queue_size");
        assert_eq!(drain(&queue), expected(0..100));
        assert_eq!(metrics.snapshot().spooled, 100);
        // All acknowledged: a restart finds nothing to send.
        drop(queue);
        let (queue, metrics) = open(&config(dir.path(), 1 << 20, FullPolicy::RejectNew, 5));
        assert_eq!(metrics.snapshot().recovered, 0);
        assert!(drain(&queue).is_empty());
    }

    #[test]
    fn a_completion_comes_at_push_with_a_spool_and_travels_with_the_request_without() {
        use crate::completion::{Completion, Outcome};
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (spooled, _) = open(&config(dir.path(), 1 << 20, FullPolicy::Block, 5));
        let (token, completed) = Completion::new();
        spooled.push_with(vec![request(0)], vec![Some(token)]);
        assert_eq!(runtime.block_on(completed), Outcome::Done, "durable once pushed");
        let memory = DeliveryQueue::in_memory(&QueueConfig::default(), Arc::new(Metrics::default()));
        let (token, mut completed) = Completion::new();
        memory.push_with(vec![request(1)], vec![Some(token)]);
        let mut entries = runtime.block_on(memory.pop(1)).unwrap();
        assert!(runtime
            .block_on(async { tokio::time::timeout(std::time::Duration::ZERO, &mut completed).await })
            .is_err());
        entries.pop().unwrap().done.expect("the completion travels with the request").complete();
        assert_eq!(runtime.block_on(completed), Outcome::Done);
    }

    #[test]
    fn large_bodies_wait_on_disk_once_memory_holds_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, _) = open(&config(dir.path(), 1 << 30, FullPolicy::RejectNew, 10_000));
        let big = |i: usize| Request { body: Bytes::from(vec![b'a' + (i % 26) as u8; 1 << 20]), ..request(i) };
        queue.push((0..100).map(big).collect());
        let held = queue.lock().memory_bytes;
        assert!(held <= MEMORY_BYTES, "{held} bytes held in memory");
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        queue.close();
        let mut firsts = Vec::new();
        while let Some(entries) = runtime.block_on(queue.pop(1000)) {
            assert!(queue.lock().memory_bytes <= MEMORY_BYTES);
            firsts.extend(entries.iter().map(|e| e.request.body[0]));
            entries.iter().for_each(|e| queue.ack(e.seq));
        }
        assert_eq!(firsts, (0..100).map(|i| b'a' + (i % 26) as u8).collect::<Vec<_>>(), "all of them, in order");
    }

    #[test]
    fn a_spool_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 1 << 20, FullPolicy::RejectNew, 10);
        let (first, _) = open(&config);
        let error = DeliveryQueue::open(&config.queues, Some(&config.spool), Arc::new(Metrics::default()))
            .err()
            .expect("a second opener is refused");
        assert!(error.to_string().contains("in use by another mqhook"), "{error}");
        drop(first);
        open(&config);
    }

    #[test]
    fn a_restart_delivers_what_was_not_acknowledged_with_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 1 << 20, FullPolicy::RejectNew, 1000);
        let (queue, _) = open(&config);
        queue.push((0..50).map(request).collect());
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let first = runtime.block_on(queue.pop(20)).unwrap();
        let keys: Vec<String> = first.iter().map(|e| e.request.idempotency_key.clone().unwrap()).collect();
        for entry in &first[..10] {
            queue.ack(entry.seq);
        }
        queue.finish();
        drop(queue); // as if killed: 10 acknowledged, 40 not

        let (queue, metrics) = open(&config);
        assert_eq!(metrics.snapshot().recovered, 40);
        queue.close();
        let again = runtime.block_on(queue.pop(100)).unwrap();
        assert_eq!(again.len(), 40);
        assert_eq!(again[0].request.idempotency_key.as_deref(), Some(keys[10].as_str()), "keys survive a restart");
        assert_eq!(again[0].request.client.as_deref(), Some("c1"));
    }

    /// Ten requests spooled in one segment, and the queue stopped: its config, the segment and
    /// the segment's bytes (ten records of the same size).
    fn ten_spooled(dir: &Path) -> (Setup, std::path::PathBuf, Vec<u8>) {
        let config = config(dir, 1 << 20, FullPolicy::RejectNew, 1000);
        let (queue, _) = open(&config);
        queue.push((0..10).map(request).collect());
        queue.finish();
        drop(queue);
        let segment = segments(dir).remove(0);
        let bytes = std::fs::read(&segment).unwrap();
        (config, segment, bytes)
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_a_damaged_record_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (config, segment, mut bytes) = ten_spooled(dir.path());
        let record = bytes.len() / 10;
        bytes[record * 3 + 20] ^= 0xff; // flips a byte inside the fourth record
        bytes.extend_from_slice(&[7, 0, 0]); // and a crash mid-write left half a header
        std::fs::write(&segment, &bytes).unwrap();

        let (queue, metrics) = open(&config);
        let mut want = expected(0..10);
        want.remove(3);
        assert_eq!(drain(&queue), want);
        assert_eq!(metrics.snapshot().dropped, 1, "the damaged record is counted");
        let left = std::fs::metadata(&segment).unwrap().len() as usize;
        assert_eq!(left, record * 9, "the torn tail is cut off, and the damaged record rewritten away");
    }

    /// A garbled length (the header of the third record) hides none of the records after it.
    #[test]
    fn a_garbled_length_hides_nothing_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (config, segment, mut bytes) = ten_spooled(dir.path());
        let record = bytes.len() / 10;
        bytes[record * 2 + 1] ^= 0x40; // the length of the third record: 16 KiB longer
        std::fs::write(&segment, &bytes).unwrap();
        let (queue, metrics) = open(&config);
        let mut want = expected(0..10);
        want.remove(2);
        assert_eq!(drain(&queue), want);
        assert_eq!(metrics.snapshot().dropped, 1);
    }

    fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        found.sort();
        found
    }

    mod properties {
        //! Model-based and corruption property tests of the spooled queue. Longer runs:
        //! `PROPTEST_CASES=5000 cargo test --release -p mqhook --lib properties`.

        use std::collections::BTreeSet;

        use proptest::prelude::*;

        use super::*;

        /// One step against the queue.
        #[derive(Debug, Clone)]
        enum Step {
            /// Accept this many new requests.
            Push(usize),
            /// Hand out up to this many and acknowledge them (delivered).
            Deliver(usize),
            /// Hand out up to this many and never acknowledge them (in flight at a crash).
            Take(usize),
            /// Stop as `kill -9` would: no final write of the acknowledged position.
            Crash,
            /// Stop cleanly and open again.
            Restart,
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (1..40usize).prop_map(Step::Push),
                (1..30usize).prop_map(Step::Deliver),
                (1..10usize).prop_map(Step::Take),
                Just(Step::Crash),
                Just(Step::Restart),
            ]
        }

        fn id(body: &[u8]) -> usize {
            String::from_utf8_lossy(body).trim_start_matches("{\"payload\":\"").trim_end_matches("\"}").parse().unwrap()
        }

        fn pop(queue: &Arc<DeliveryQueue>, max: usize) -> Vec<Entry> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            // Only what is there now: a closed queue would wait for nothing, an open one forever.
            runtime
                .block_on(async { tokio::time::timeout(std::time::Duration::from_millis(5), queue.pop(max)).await })
                .ok()
                .flatten()
                .unwrap_or_default()
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

            /// Whatever happens, every accepted request comes back until it is acknowledged, in order
            /// after each start, and an acknowledged one comes back only if a crash lost its
            /// acknowledgement (at least once, never lost).
            #[test]
            fn a_model_of_push_ack_crash_and_reopen(steps in proptest::collection::vec(step(), 1..30)) {
                let dir = tempfile::tempdir().unwrap();
                // Small segments, so that segments roll over and are deleted as they are acknowledged.
                let setup = config(dir.path(), 1 << 20, FullPolicy::Block, 16);
                let setup = Setup { spool: SpoolConfig { segment_size: ByteSize::new(512).unwrap(), ..setup.spool }, ..setup };
                let (mut queue, _) = open(&setup);
                let mut pushed = 0;
                let mut delivered = BTreeSet::new();
                for step in steps {
                    match step {
                        Step::Push(n) => {
                            queue.push((pushed..pushed + n).map(request).collect());
                            pushed += n;
                        }
                        Step::Deliver(n) => {
                            let mut last = None;
                            for entry in pop(&queue, n) {
                                let id = id(&entry.request.body);
                                prop_assert!(last < Some(id), "in order");
                                last = Some(id);
                                delivered.insert(id);
                                queue.ack(entry.seq);
                            }
                        }
                        Step::Take(n) => drop(pop(&queue, n)),
                        Step::Crash => {
                            drop(queue);
                            queue = open(&setup).0;
                        }
                        Step::Restart => {
                            queue.finish();
                            drop(queue);
                            queue = open(&setup).0;
                        }
                    }
                }
                queue.finish();
                drop(queue);
                let (queue, metrics) = open(&setup);
                let rest: Vec<usize> = drain(&queue).iter().map(|body| id(body.as_bytes())).collect();
                prop_assert!(rest.windows(2).all(|w| w[0] < w[1]), "in order: {rest:?}");
                let back: BTreeSet<usize> = delivered.iter().copied().chain(rest.iter().copied()).collect();
                prop_assert_eq!(back, (0..pushed).collect::<BTreeSet<_>>(), "nothing accepted is lost");
                prop_assert_eq!(metrics.snapshot().dropped, 0);
            }
        }

        /// How the files are damaged.
        #[derive(Debug, Clone)]
        enum Damage {
            /// Flip these bits (positions taken modulo the segment's size) in segment `n`.
            Flip(prop::sample::Index, Vec<prop::sample::Index>),
            /// Cut segment `n` short.
            Truncate(prop::sample::Index, prop::sample::Index),
            /// Append garbage to segment `n`.
            Append(prop::sample::Index, Vec<u8>),
            /// Delete segment `n`.
            Delete(prop::sample::Index),
            /// Overwrite the acknowledged position with garbage.
            Acked(Vec<u8>),
        }

        fn damage() -> impl Strategy<Value = Damage> {
            prop_oneof![
                (any::<prop::sample::Index>(), proptest::collection::vec(any::<prop::sample::Index>(), 1..6))
                    .prop_map(|(n, bits)| Damage::Flip(n, bits)),
                (any::<prop::sample::Index>(), any::<prop::sample::Index>())
                    .prop_map(|(n, at)| Damage::Truncate(n, at)),
                (any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 1..64))
                    .prop_map(|(n, garbage)| Damage::Append(n, garbage)),
                any::<prop::sample::Index>().prop_map(Damage::Delete),
                proptest::collection::vec(any::<u8>(), 0..24).prop_map(Damage::Acked),
            ]
        }

        /// Each record's byte range in a segment file, from its frame headers.
        fn frames(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
            let mut at = 0;
            let mut found = Vec::new();
            while at + crate::spool::FRAME_HEADER_BYTES <= bytes.len() {
                let length = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                let end = at + crate::spool::FRAME_HEADER_BYTES + length;
                found.push(at..end);
                at = end;
            }
            found
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 60, ..ProptestConfig::default() })]

            /// Damaged files never panic the spool, and every record whose bytes were not touched
            /// comes back (damaged ones are counted as dropped), in order.
            #[test]
            fn damage_loses_only_the_damaged_records(damages in proptest::collection::vec(damage(), 1..4)) {
                const RECORDS: usize = 60;
                let dir = tempfile::tempdir().unwrap();
                let setup = config(dir.path(), 1 << 20, FullPolicy::Block, 1000);
                let setup = Setup { spool: SpoolConfig { segment_size: ByteSize::new(600).unwrap(), ..setup.spool }, ..setup };
                let (queue, _) = open(&setup);
                for i in 0..RECORDS {
                    queue.push(vec![request(i)]);
                }
                queue.finish();
                drop(queue);
                // Which record is where, before any damage: record n is the n-th frame overall.
                let files = segments(dir.path());
                let mut place = Vec::new(); // (file index, byte range)
                for (index, file) in files.iter().enumerate() {
                    for range in frames(&std::fs::read(file).unwrap()) {
                        place.push((index, range));
                    }
                }
                prop_assert_eq!(place.len(), RECORDS);
                let mut touched: BTreeSet<usize> = BTreeSet::new();
                let mut mark = |file: usize, from: usize, to: usize| {
                    for (record, (index, range)) in place.iter().enumerate() {
                        if *index == file && range.start < to && from < range.end {
                            touched.insert(record);
                        }
                    }
                };
                let mut deleted = BTreeSet::new();
                for damage in damages {
                    match damage {
                        Damage::Flip(n, bits) => {
                            let file = n.index(files.len());
                            if deleted.contains(&file) { continue; }
                            let mut bytes = std::fs::read(&files[file]).unwrap();
                            if bytes.is_empty() { continue; }
                            for bit in bits {
                                let at = bit.index(bytes.len() * 8);
                                bytes[at / 8] ^= 1 << (at % 8);
                                mark(file, at / 8, at / 8 + 1);
                            }
                            std::fs::write(&files[file], bytes).unwrap();
                        }
                        Damage::Truncate(n, at) => {
                            let file = n.index(files.len());
                            if deleted.contains(&file) { continue; }
                            let length = std::fs::metadata(&files[file]).unwrap().len() as usize;
                            let cut = at.index(length + 1);
                            std::fs::OpenOptions::new().write(true).open(&files[file]).unwrap().set_len(cut as u64).unwrap();
                            mark(file, cut, usize::MAX);
                        }
                        Damage::Append(n, garbage) => {
                            let file = n.index(files.len());
                            if deleted.contains(&file) { continue; }
                            let mut bytes = std::fs::read(&files[file]).unwrap();
                            bytes.extend_from_slice(&garbage);
                            std::fs::write(&files[file], bytes).unwrap();
                        }
                        Damage::Delete(n) => {
                            let file = n.index(files.len());
                            if deleted.insert(file) {
                                std::fs::remove_file(&files[file]).unwrap();
                                mark(file, 0, usize::MAX);
                            }
                        }
                        Damage::Acked(garbage) => std::fs::write(dir.path().join("acked"), garbage).unwrap(),
                    }
                }
                let (queue, metrics) = open(&setup);
                let back: Vec<usize> = drain(&queue).iter().map(|body| id(body.as_bytes())).collect();
                prop_assert!(back.windows(2).all(|w| w[0] < w[1]), "in order: {back:?}");
                let intact: BTreeSet<usize> = (0..RECORDS).filter(|r| !touched.contains(r)).collect();
                let returned: BTreeSet<usize> = back.iter().copied().collect();
                prop_assert!(intact.is_subset(&returned), "intact records lost: {:?}", intact.difference(&returned).collect::<Vec<_>>());
                prop_assert!(returned.iter().all(|r| *r < RECORDS), "nothing but what was written");
                let lost = (RECORDS - returned.len()) as u64;
                prop_assert!(metrics.snapshot().dropped <= lost, "{} dropped for {lost} missing", metrics.snapshot().dropped);
            }
        }
    }

    /// Pushes 400 requests, one at a time, into a 4 KiB spool with `policy`.
    fn overfill(policy: FullPolicy) -> (tempfile::TempDir, Arc<DeliveryQueue>, crate::metrics::MetricsSnapshot) {
        let dir = tempfile::tempdir().unwrap();
        let (queue, metrics) = open(&config(dir.path(), 4096, policy, 1));
        for i in 0..400 {
            queue.push(vec![request(i)]);
        }
        (dir, queue, metrics.snapshot())
    }

    #[test]
    fn a_full_spool_that_blocks_makes_the_pusher_wait_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, metrics) = open(&config(dir.path(), 4096, FullPolicy::Block, 1));
        let pusher = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                for i in 0..400 {
                    queue.push(vec![request(i)]);
                }
                queue.close();
            })
        };
        let bodies = take_all(&queue);
        pusher.join().unwrap();
        assert_eq!(bodies, expected(0..400), "every request, in order");
        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.spooled, snapshot.dropped), (400, 0));
    }

    #[test]
    fn a_full_spool_rejects_new_requests_counted() {
        let (_dir, queue, snapshot) = overfill(FullPolicy::RejectNew);
        assert!(snapshot.dropped > 0 && snapshot.spooled + snapshot.dropped == 400, "{snapshot:?}");
        let bodies = drain(&queue);
        assert_eq!(bodies, expected(0..snapshot.spooled as usize), "the oldest are kept");
    }

    #[test]
    fn a_full_spool_drops_its_oldest_segment_counted() {
        let (dir, queue, snapshot) = overfill(FullPolicy::DropOldest);
        assert_eq!(snapshot.spooled, 400);
        let bodies = drain(&queue);
        assert!(snapshot.dropped > 0, "{snapshot:?}");
        assert_eq!(bodies.len() as u64 + snapshot.dropped, 400, "every request delivered or counted as dropped");
        assert_eq!(bodies.last(), expected(399..400).last(), "the newest are kept");
        let on_disk: u64 = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(on_disk <= 4096 + 1024, "the spool stays near its size: {on_disk}");
    }
}
