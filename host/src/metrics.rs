//! Telemetry: the pipeline's counters, gauges and histograms, and one typed [`Problem`] for each
//! reason something is dropped or fails.
//!
//! Every stage records into one shared [`Metrics`]. The metrics are prometheus-client's, each
//! label value resolved once at start, so recording is an atomic add with no lookup. The admin
//! listener encodes them in the Prometheus text format ([`Metrics::encode`]); [`Metrics::snapshot`]
//! reads them for the end-of-run summary and the JSON view. The names are stable (README,
//! "Operating it").
//!
//! A [`Problem`] is counted every time it happens and logged through one shared limiter: at most
//! [`LOG_BURST`] lines of each problem per [`LOG_WINDOW`]. What the limiter held back is logged
//! as one line when the window closes ([`Metrics::flush_held`], which the runtime calls once a
//! window and at shutdown), so a flood makes a few lines a second and its size is never lost.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::event::EventKind;

/// How long one window of the log limiter lasts.
pub const LOG_WINDOW: Duration = Duration::from_secs(1);
/// Lines of one problem logged per window; the rest are counted and reported as one line.
pub const LOG_BURST: u32 = 5;

/// One label: its name and value.
type Label = [(&'static str, &'static str); 1];

/// The labels of an endpoint's metric: `endpoint`, and a reason where the metric has one.
type EndpointLabels = Vec<(&'static str, String)>;

/// Why delivery gave a request up for good (it is counted as failed, and dead-lettered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The endpoint's answer says the request will never succeed (4xx but 408/429, or 501).
    PermanentStatus,
    /// The TLS handshake failed, or the TLS or URL settings cannot work.
    Tls,
    /// `retry.max_attempts` attempts failed.
    Attempts,
    /// The request was older than `retry.max_age`.
    Age,
    /// It failed transiently, and its body is over `retry.max_replay_size`.
    TooLargeToReplay,
}

impl GiveUpReason {
    /// Every reason, in the order of the counters.
    pub const ALL: [GiveUpReason; 5] = [
        GiveUpReason::PermanentStatus,
        GiveUpReason::Tls,
        GiveUpReason::Attempts,
        GiveUpReason::Age,
        GiveUpReason::TooLargeToReplay,
    ];

    /// The reason as a word, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::PermanentStatus => "permanent_status",
            GiveUpReason::Tls => "tls",
            GiveUpReason::Attempts => "attempts",
            GiveUpReason::Age => "age",
            GiveUpReason::TooLargeToReplay => "too_large_to_replay",
        }
    }
}

/// Why one delivery attempt failed (`mqhook_delivery_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The endpoint answered 4xx.
    Status4xx,
    /// The endpoint answered 5xx.
    Status5xx,
    /// The endpoint answered another status that is not 2xx (1xx, 3xx).
    StatusOther,
    /// No answer within `cancel_timeout`.
    Timeout,
    /// Connecting failed, or the connection broke.
    Connect,
    /// The TLS handshake or the TLS settings failed.
    Tls,
}

impl FailureReason {
    /// Every reason, in the order of the counters.
    pub const ALL: [FailureReason; 6] = [
        FailureReason::Status4xx,
        FailureReason::Status5xx,
        FailureReason::StatusOther,
        FailureReason::Timeout,
        FailureReason::Connect,
        FailureReason::Tls,
    ];

    /// The reason as a label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Status4xx => "status_4xx",
            FailureReason::Status5xx => "status_5xx",
            FailureReason::StatusOther => "status_other",
            FailureReason::Timeout => "timeout",
            FailureReason::Connect => "connect",
            FailureReason::Tls => "tls",
        }
    }
}

/// Where an event was filtered out (`mqhook_events_filtered_total{stage}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterStage {
    /// The host's rule match: no rule selects the event (by kind, then topic), so the guest never saw it.
    Host,
    /// The guest returned no delivery (or the built-in fallback, for a failed call).
    Guest,
}

/// Why an accepted event or request was lost (`mqhook_events_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The runtime queue was full: the event was refused (never accepted).
    QueueFull,
    /// The spool was full, and `spool.on_full` dropped it (or it is larger than the spool).
    SpoolFull,
    /// Its spooled record could not be read back.
    SpoolDamaged,
    /// It could not be written to the spool.
    SpoolWriteFailed,
    /// The guest failed on it and no fallback delivered it (it may be in the dead-letter file).
    GuestFailure,
}

impl DropReason {
    /// Every reason, in the order of the counters.
    pub const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::SpoolFull,
        DropReason::SpoolDamaged,
        DropReason::SpoolWriteFailed,
        DropReason::GuestFailure,
    ];

    /// The reason as a label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::SpoolFull => "spool_full",
            DropReason::SpoolDamaged => "spool_damaged",
            DropReason::SpoolWriteFailed => "spool_write_failed",
            DropReason::GuestFailure => "guest_failure",
        }
    }
}

/// Something that went wrong or was dropped: each is counted, and logged through the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Events refused because the runtime queue was full (`queues.when_full`).
    QueueFull,
    /// Requests dropped because the spool was full (`spool.on_full`).
    SpoolFull,
    /// Spooled requests that could not be read back.
    SpoolDamaged,
    /// Requests that could not be written to the spool.
    SpoolWriteFailed,
    /// A guest call trapped (or hit its memory cap).
    GuestTrap,
    /// A guest call ran out of time.
    GuestTimeout,
    /// A guest returned a delivery the host cannot send.
    InvalidDelivery,
    /// No guest instance could be created.
    GuestUnavailable,
    /// Delivery gave a request up for good.
    GivenUp(GiveUpReason),
    /// An input record that is not a valid event (never accepted).
    MalformedInput,
    /// The endpoint started failing; delivery backs off.
    EndpointBackingOff,
    /// An admin request without a valid token.
    AdminUnauthorized,
    /// An event whose body cannot join a batch (`batch.format`) was sent alone.
    Unbatchable,
}

impl Problem {
    /// Problems the limiter keeps apart (every give-up reason shares one).
    const COUNT: usize = 13;

    /// The problem as a word, for the log's `problem` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::QueueFull => "queue_full",
            Problem::SpoolFull => "spool_full",
            Problem::SpoolDamaged => "spool_damaged",
            Problem::SpoolWriteFailed => "spool_write_failed",
            Problem::GuestTrap => "guest_trap",
            Problem::GuestTimeout => "guest_timeout",
            Problem::InvalidDelivery => "invalid_delivery",
            Problem::GuestUnavailable => "guest_unavailable",
            Problem::GivenUp(_) => "given_up",
            Problem::MalformedInput => "malformed_input",
            Problem::EndpointBackingOff => "endpoint_backing_off",
            Problem::AdminUnauthorized => "admin_unauthorized",
            Problem::Unbatchable => "unbatchable",
        }
    }

    fn slot(self) -> usize {
        match self {
            Problem::QueueFull => 0,
            Problem::SpoolFull => 1,
            Problem::SpoolDamaged => 2,
            Problem::SpoolWriteFailed => 3,
            Problem::GuestTrap => 4,
            Problem::GuestTimeout => 5,
            Problem::InvalidDelivery => 6,
            Problem::GuestUnavailable => 7,
            Problem::GivenUp(_) => 8,
            Problem::MalformedInput => 9,
            Problem::EndpointBackingOff => 10,
            Problem::AdminUnauthorized => 11,
            Problem::Unbatchable => 12,
        }
    }

    /// Losses of accepted work are errors; the rest are warnings.
    fn is_error(self) -> bool {
        matches!(
            self,
            Problem::SpoolDamaged | Problem::SpoolWriteFailed | Problem::GuestUnavailable | Problem::GivenUp(_)
        )
    }

    fn log(self, message: fmt::Arguments<'_>) {
        if self.is_error() {
            tracing::error!(problem = self.as_str(), "{message}");
        } else {
            tracing::warn!(problem = self.as_str(), "{message}");
        }
    }

    fn log_held(self, held: u64, window: Duration) {
        self.log(format_args!(
            "… and {held} more `{}` in the last {window:.1?}, not logged one by one.",
            self.as_str()
        ));
    }
}

/// What the gauges show, read from the stages when the metrics are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Depths {
    /// Events in the runtime queue.
    pub events: usize,
    /// Requests in the delivery queue's memory part.
    pub requests: usize,
    /// Bytes the spool holds on disk.
    pub spool_bytes: u64,
    /// Requests in the spool not yet acknowledged (delivered or given up).
    pub spool_records: u64,
    /// Whether delivery is backing off a failing endpoint.
    pub backing_off: bool,
}

/// The bridge ingest's counters (`mqhook_bridge_*_total`; zero without a bridge). Cheap to
/// clone: the clones count into the same metrics.
#[derive(Debug, Clone, Default)]
pub struct BridgeCounters {
    /// PUBLISHes received.
    pub messages: Counter,
    /// Of them, sent again by the broker (DUP set).
    pub redelivered: Counter,
    /// QoS 1/2 messages acknowledged to the broker.
    pub acked: Counter,
    /// Sessions established (the first connection and every reconnect).
    pub connects: Counter,
    /// SUBSCRIBEs the broker answered.
    pub subscribed: Counter,
    /// Established connections that were lost.
    pub connection_losses: Counter,
    /// Connection tries that failed.
    pub failed_connects: Counter,
    /// System-topic messages about clients that could not be read.
    pub unreadable_system: Counter,
}

impl BridgeCounters {
    fn registered(registry: &mut Registry) -> BridgeCounters {
        let r = registry;
        BridgeCounters {
            messages: counter(r, "bridge_messages", "Bridge: PUBLISHes received from the upstream broker"),
            redelivered: counter(r, "bridge_redelivered", "Bridge: PUBLISHes the broker sent again (DUP)"),
            acked: counter(r, "bridge_acked", "Bridge: QoS 1/2 messages acknowledged once safe"),
            connects: counter(r, "bridge_connects", "Bridge: sessions established, reconnects included"),
            subscribed: counter(r, "bridge_subscribed", "Bridge: SUBSCRIBEs the broker answered"),
            connection_losses: counter(r, "bridge_connection_losses", "Bridge: established connections lost"),
            failed_connects: counter(r, "bridge_failed_connects", "Bridge: connection tries that failed"),
            unreadable_system: counter(r, "bridge_unreadable_system", "Bridge: unreadable $SYS client messages"),
        }
    }
}

/// The shared metrics of one pipeline.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    received: [Counter; EventKind::ALL.len()],
    filtered: [Counter; 2],
    /// Each endpoint's: the default endpoint's first, then the named ones' in file order.
    endpoints: Vec<EndpointCounters>,
    dropped: [Counter; DropReason::ALL.len()],
    malformed: Counter,
    spooled: Counter,
    recovered: Counter,
    guest_traps: Counter,
    guest_timeouts: Counter,
    guest_invalid: Counter,
    guest_swaps: Counter,
    guest_rollbacks: Counter,
    admin_unauthorized: Counter,
    batches: Counter,
    batch_splits: Counter,
    unbatched: Counter,
    batch_events: Histogram,
    queue_events: Gauge,
    queue_requests: Gauge,
    spool_bytes: Gauge,
    spool_records: Gauge,
    delivery_latency: Histogram,
    guest_call: Histogram,
    bridge: BridgeCounters,
    limiter: Limiter,
}

/// Registers a counter family labelled `key` and resolves one counter per value, in order.
fn family<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    key: &'static str,
    values: [&'static str; N],
) -> [Counter; N] {
    let family = Family::<Label, Counter>::default();
    registry.register(name, help, family.clone());
    values.map(|value| family.get_or_create(&[(key, value)]).clone())
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

fn gauge(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Gauge {
    let gauge = Gauge::default();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, gauge.clone()),
        None => registry.register(name, help, gauge.clone()),
    }
    gauge
}

fn seconds_histogram(registry: &mut Registry, name: &str, help: &str, start: f64) -> Histogram {
    // 16 doubling buckets: from `start` to about 33 000 × `start`.
    let histogram = Histogram::new(exponential_buckets(start, 2.0, 16));
    registry.register_with_unit(name, help, Unit::Seconds, histogram.clone());
    histogram
}

/// One endpoint's delivery metrics, each labelled `endpoint="<name>"`.
#[derive(Debug, Clone)]
struct EndpointCounters {
    delivered: Counter,
    failures: [Counter; FailureReason::ALL.len()],
    retries: Counter,
    given_up: [Counter; GiveUpReason::ALL.len()],
    backoffs: Counter,
    in_flight: Gauge,
    backing_off: Gauge,
}

/// The families of the endpoint metrics, registered once; each endpoint resolves its own.
struct EndpointFamilies {
    delivered: Family<EndpointLabels, Counter>,
    failures: Family<EndpointLabels, Counter>,
    retries: Family<EndpointLabels, Counter>,
    given_up: Family<EndpointLabels, Counter>,
    backoffs: Family<EndpointLabels, Counter>,
    in_flight: Family<EndpointLabels, Gauge>,
    backing_off: Family<EndpointLabels, Gauge>,
}

impl EndpointFamilies {
    fn registered(r: &mut Registry) -> EndpointFamilies {
        fn register<
            M: prometheus_client::metrics::TypedMetric
                + prometheus_client::encoding::EncodeMetric
                + Default
                + Clone
                + fmt::Debug
                + Send
                + Sync
                + 'static,
        >(
            r: &mut Registry,
            name: &str,
            help: &str,
        ) -> Family<EndpointLabels, M> {
            let family = Family::<EndpointLabels, M>::default();
            r.register(name, help, family.clone());
            family
        }
        EndpointFamilies {
            delivered: register(r, "requests_delivered", "Requests the endpoint answered with 2xx (or printed)"),
            failures: register(r, "delivery_failures", "Delivery attempts that failed, by reason"),
            retries: register(r, "delivery_retries", "Delivery attempts after the first"),
            given_up: register(r, "requests_given_up", "Requests given up for good (dead-lettered), by reason"),
            backoffs: register(r, "endpoint_backoffs", "Outages of the endpoint: times delivery backed off"),
            in_flight: register(r, "requests_in_flight", "Requests being sent now"),
            backing_off: register(r, "endpoint_backing_off", "1 while delivery backs off a failing endpoint"),
        }
    }

    fn endpoint(&self, name: &str) -> EndpointCounters {
        let labels = |reason: Option<&str>| {
            let mut labels = vec![("endpoint", name.to_owned())];
            labels.extend(reason.map(|reason| ("reason", reason.to_owned())));
            labels
        };
        EndpointCounters {
            delivered: self.delivered.get_or_create(&labels(None)).clone(),
            failures: FailureReason::ALL
                .map(|reason| self.failures.get_or_create(&labels(Some(reason.as_str()))).clone()),
            retries: self.retries.get_or_create(&labels(None)).clone(),
            given_up: GiveUpReason::ALL
                .map(|reason| self.given_up.get_or_create(&labels(Some(reason.as_str()))).clone()),
            backoffs: self.backoffs.get_or_create(&labels(None)).clone(),
            in_flight: self.in_flight.get_or_create(&labels(None)).clone(),
            backing_off: self.backing_off.get_or_create(&labels(None)).clone(),
        }
    }
}

impl Default for Metrics {
    /// Metrics of a pipeline with only the default endpoint.
    fn default() -> Self {
        Metrics::new(&[])
    }
}

impl Metrics {
    /// Metrics of a pipeline with the default endpoint and the named ones, `named`.
    pub fn new(named: &[String]) -> Self {
        let mut registry = Registry::with_prefix("mqhook");
        let r = &mut registry;
        let kinds = EventKind::ALL.map(EventKind::action);
        let endpoint_families = EndpointFamilies::registered(r);
        let endpoints = std::iter::once(crate::config::DEFAULT_ENDPOINT)
            .chain(named.iter().map(String::as_str))
            .map(|name| endpoint_families.endpoint(name))
            .collect();
        Metrics {
            received: family(r, "events_received", "Events received, by kind", "kind", kinds),
            filtered: family(r, "events_filtered", "Events no rule selected, by stage", "stage", ["host", "guest"]),
            endpoints,
            dropped: family(
                r,
                "events_dropped",
                "Events or requests lost or refused, by reason",
                "reason",
                DropReason::ALL.map(DropReason::as_str),
            ),
            malformed: counter(r, "input_malformed", "Input records that were not valid events"),
            spooled: counter(r, "requests_spooled", "Requests written to the spool"),
            recovered: counter(r, "requests_recovered", "Requests found in the spool at start"),
            guest_traps: counter(r, "guest_traps", "Guest calls that trapped or hit the memory cap"),
            guest_timeouts: counter(r, "guest_timeouts", "Guest calls that ran out of time"),
            guest_invalid: counter(r, "guest_invalid_deliveries", "Guest deliveries the host cannot send"),
            guest_swaps: counter(r, "guest_swaps", "Guests swapped in (reload or upload)"),
            guest_rollbacks: counter(r, "guest_rollbacks", "Swapped-in guests rolled back for failing"),
            admin_unauthorized: counter(r, "admin_unauthorized", "Admin requests refused for a missing or wrong token"),
            batches: counter(r, "batches", "Batches done (delivered or given up), each once whatever its attempts"),
            batch_splits: counter(r, "batch_splits", "Batches split in halves after a 413 answer"),
            unbatched: counter(r, "events_unbatched", "Events sent alone because their body cannot join a batch"),
            batch_events: {
                // 1, 2, 4, … 1024: batch.max_events is at most 1000.
                let histogram = Histogram::new(exponential_buckets(1.0, 2.0, 11));
                r.register("batch_events", "Events per batch done", histogram.clone());
                histogram
            },
            queue_events: gauge(r, "queue_events", "Events in the runtime queue", None),
            queue_requests: gauge(r, "queue_requests", "Requests in the delivery queue's memory", None),
            spool_bytes: gauge(r, "spool", "Bytes the spool holds on disk", Some(Unit::Bytes)),
            spool_records: gauge(r, "spool_records", "Spooled requests not yet acknowledged", None),
            delivery_latency: seconds_histogram(
                r,
                "delivery_latency",
                "From an event's arrival to its request's 2xx",
                0.000_25,
            ),
            guest_call: seconds_histogram(r, "guest_call", "Time of one guest call", 0.000_001),
            bridge: BridgeCounters::registered(r),
            limiter: Limiter::default(),
            registry,
        }
    }
}

/// Seconds between `from` and now, never negative.
fn seconds_since(from: SystemTime) -> f64 {
    SystemTime::now().duration_since(from).unwrap_or_default().as_secs_f64()
}

impl Metrics {
    /// Counts an event received (accepted, or filtered at once by the kind filter).
    pub fn record_received(&self, kind: EventKind) {
        self.received[kind.index()].inc();
    }

    /// Counts an event no rule selected.
    pub fn record_filtered(&self, stage: FilterStage) {
        self.filtered[stage as usize].inc();
    }

    /// The metrics of endpoint `slot` (0 the default endpoint, `i + 1` named endpoint `i`).
    pub fn endpoint(self: &Arc<Self>, slot: usize) -> EndpointMetrics {
        EndpointMetrics { counters: self.endpoints[slot].clone(), metrics: self.clone() }
    }

    /// Counts a batch of `events` events done: delivered, or given up (its events are counted
    /// one by one as delivered or given up).
    pub fn record_batch(&self, events: usize) {
        self.batches.inc();
        self.batch_events.observe(events as f64);
    }

    /// Counts a batch split in halves after a 413 answer.
    pub fn record_batch_split(&self) {
        self.batch_splits.inc();
    }

    /// Counts a request written to the spool.
    pub fn record_spooled(&self) {
        self.spooled.inc();
    }

    /// Counts `n` requests found in the spool at start.
    pub fn add_recovered(&self, n: u64) {
        self.recovered.inc_by(n);
    }

    /// Times the guest calls for `events` events, which took `took` together (a batch call, or
    /// its retries event by event): each event is observed at the mean.
    pub fn record_guest_calls(&self, took: Duration, events: usize) {
        let Some(mean) = took.checked_div(u32::try_from(events).unwrap_or(u32::MAX)) else { return };
        for _ in 0..events {
            self.guest_call.observe(mean.as_secs_f64());
        }
    }

    /// Counts an event the guest failed on that no fallback delivered.
    pub fn record_guest_loss(&self) {
        self.dropped[DropReason::GuestFailure as usize].inc();
    }

    /// Counts a guest swapped in.
    pub fn record_guest_swap(&self) {
        self.guest_swaps.inc();
    }

    /// Counts a swapped-in guest rolled back.
    pub fn record_guest_rollback(&self) {
        self.guest_rollbacks.inc();
    }

    /// The bridge ingest's counters.
    pub fn bridge(&self) -> &BridgeCounters {
        &self.bridge
    }

    /// Counts `count` occurrences of `problem` and logs `message` unless the limiter holds it
    /// back (then it is part of the next held-back line).
    pub fn report(&self, problem: Problem, count: u64, message: fmt::Arguments<'_>) {
        let counter = match problem {
            Problem::QueueFull => Some(&self.dropped[DropReason::QueueFull as usize]),
            Problem::SpoolFull => Some(&self.dropped[DropReason::SpoolFull as usize]),
            Problem::SpoolDamaged => Some(&self.dropped[DropReason::SpoolDamaged as usize]),
            Problem::SpoolWriteFailed => Some(&self.dropped[DropReason::SpoolWriteFailed as usize]),
            Problem::GuestTrap => Some(&self.guest_traps),
            Problem::GuestTimeout => Some(&self.guest_timeouts),
            Problem::InvalidDelivery => Some(&self.guest_invalid),
            // No instance at all: counted by its events' loss (`record_guest_loss`).
            Problem::GuestUnavailable => None,
            // Without an endpoint named: the default one's.
            Problem::GivenUp(_) | Problem::EndpointBackingOff => self.endpoints[0].counter(problem),
            Problem::MalformedInput => Some(&self.malformed),
            Problem::AdminUnauthorized => Some(&self.admin_unauthorized),
            Problem::Unbatchable => Some(&self.unbatched),
        };
        if let Some(counter) = counter {
            counter.inc_by(count);
        }
        self.log(problem, count, message);
    }

    /// Logs `message` about `count` occurrences of `problem` through the limiter.
    fn log(&self, problem: Problem, count: u64, message: fmt::Arguments<'_>) {
        let admitted = self.limiter.admit(problem.slot(), count, Instant::now());
        if let Some(held) = admitted.held_before {
            problem.log_held(held, LOG_WINDOW);
        }
        if admitted.log {
            problem.log(message);
        }
    }

    /// Logs what the limiter held back in windows that have closed; called once a window by the
    /// runtime, and at the end of a run (with `all`, every window counts as closed).
    pub fn flush_held(&self, all: bool) {
        let now = Instant::now();
        for (slot, held, window) in self.limiter.closed(now, all) {
            PROBLEMS[slot].log_held(held, window);
        }
    }

    /// The metrics in the Prometheus text format (OpenMetrics 1.0, which Prometheus reads), the
    /// gauges set from `depths` first.
    pub fn encode(&self, depths: &Depths) -> String {
        self.queue_events.set(depths.events as i64);
        self.queue_requests.set(depths.requests as i64);
        self.spool_bytes.set(i64::try_from(depths.spool_bytes).unwrap_or(i64::MAX));
        self.spool_records.set(i64::try_from(depths.spool_records).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let dropped = |reason: DropReason| self.dropped[reason as usize].get();
        let sum = |counter: fn(&EndpointCounters) -> &Counter| self.endpoints.iter().map(|e| counter(e).get()).sum();
        let given_up =
            |reason: GiveUpReason| self.endpoints.iter().map(|e| e.given_up[reason as usize].get()).sum::<u64>();
        let given_up_total: u64 = GiveUpReason::ALL.into_iter().map(given_up).sum();
        MetricsSnapshot {
            received: self.received.iter().map(Counter::get).sum(),
            filtered: self.filtered.iter().map(Counter::get).sum(),
            delivered: sum(|e| &e.delivered),
            failed: given_up_total + dropped(DropReason::GuestFailure) + dropped(DropReason::SpoolWriteFailed),
            guest_traps: self.guest_traps.get(),
            guest_timeouts: self.guest_timeouts.get(),
            rejected: dropped(DropReason::QueueFull),
            malformed: self.malformed.get(),
            retries: sum(|e| &e.retries),
            spooled: self.spooled.get(),
            recovered: self.recovered.get(),
            dropped: dropped(DropReason::SpoolFull) + dropped(DropReason::SpoolDamaged),
            given_up_status: given_up(GiveUpReason::PermanentStatus),
            given_up_tls: given_up(GiveUpReason::Tls),
            given_up_attempts: given_up(GiveUpReason::Attempts),
            given_up_age: given_up(GiveUpReason::Age),
            given_up_too_large: given_up(GiveUpReason::TooLargeToReplay),
            batches: self.batches.get(),
            batch_splits: self.batch_splits.get(),
            unbatched: self.unbatched.get(),
        }
    }
}

impl EndpointCounters {
    /// The counter of an endpoint's problem.
    fn counter(&self, problem: Problem) -> Option<&Counter> {
        match problem {
            Problem::GivenUp(reason) => Some(&self.given_up[reason as usize]),
            Problem::EndpointBackingOff => Some(&self.backoffs),
            _ => None,
        }
    }
}

/// What delivery to one endpoint records: its own labelled counters, and the pipeline's metrics
/// for the rest. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    counters: EndpointCounters,
    metrics: Arc<Metrics>,
}

impl EndpointMetrics {
    /// Counts a delivered request; `received_at`, when known, times it from its event's arrival.
    pub fn record_delivered(&self, received_at: Option<SystemTime>) {
        self.counters.delivered.inc();
        if let Some(received_at) = received_at {
            self.metrics.delivery_latency.observe(seconds_since(received_at));
        }
    }

    /// Counts a failed delivery attempt.
    pub fn record_attempt_failed(&self, reason: FailureReason) {
        self.counters.failures[reason as usize].inc();
    }

    /// Counts an attempt after the first.
    pub fn record_retry(&self) {
        self.counters.retries.inc();
    }

    /// The gauge of this endpoint's requests being sent now.
    pub fn in_flight(&self) -> &Gauge {
        &self.counters.in_flight
    }

    /// Sets whether delivery backs off this endpoint now.
    pub fn set_backing_off(&self, backing_off: bool) {
        self.counters.backing_off.set(i64::from(backing_off));
    }

    /// As [`Metrics::report`], counting this endpoint's problems (give-ups, backoffs) as its own.
    pub fn report(&self, problem: Problem, count: u64, message: fmt::Arguments<'_>) {
        match self.counters.counter(problem) {
            Some(counter) => {
                counter.inc_by(count);
                self.metrics.log(problem, count, message);
            }
            None => self.metrics.report(problem, count, message),
        }
    }

    /// Counts a batch of `events` events done (see [`Metrics::record_batch`]).
    pub fn record_batch(&self, events: usize) {
        self.metrics.record_batch(events);
    }

    /// Counts a batch split in halves after a 413 answer.
    pub fn record_batch_split(&self) {
        self.metrics.record_batch_split();
    }

    /// The pipeline's metrics.
    pub fn pipeline(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// A problem of each limiter slot, for its held-back line (a give-up stands for all reasons).
const PROBLEMS: [Problem; Problem::COUNT] = [
    Problem::QueueFull,
    Problem::SpoolFull,
    Problem::SpoolDamaged,
    Problem::SpoolWriteFailed,
    Problem::GuestTrap,
    Problem::GuestTimeout,
    Problem::InvalidDelivery,
    Problem::GuestUnavailable,
    Problem::GivenUp(GiveUpReason::Attempts),
    Problem::MalformedInput,
    Problem::EndpointBackingOff,
    Problem::AdminUnauthorized,
    Problem::Unbatchable,
];

/// The one log limiter: per problem, a window that opens with its first line.
#[derive(Debug, Default)]
struct Limiter {
    slots: Mutex<[Window; Problem::COUNT]>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    opened: Option<Instant>,
    logged: u32,
    held: u64,
}

/// What the limiter lets one report do.
#[derive(Debug, PartialEq, Eq)]
struct Admitted {
    /// Log its line.
    log: bool,
    /// First log this many held back from the window that just closed.
    held_before: Option<u64>,
}

impl Limiter {
    fn admit(&self, slot: usize, count: u64, now: Instant) -> Admitted {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let window = &mut slots[slot];
        let mut held_before = None;
        if window.opened.is_none_or(|opened| now.duration_since(opened) >= LOG_WINDOW) {
            held_before = (window.held > 0).then_some(window.held);
            *window = Window { opened: Some(now), logged: 0, held: 0 };
        }
        if window.logged < LOG_BURST {
            window.logged += 1;
            Admitted { log: true, held_before }
        } else {
            window.held += count;
            Admitted { log: false, held_before }
        }
    }

    /// Closes the windows that are over (every one, with `all`) and returns, per slot, what each
    /// held back and how long it was open.
    fn closed(&self, now: Instant, all: bool) -> Vec<(usize, u64, Duration)> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut closed = Vec::new();
        for (slot, window) in slots.iter_mut().enumerate() {
            let Some(opened) = window.opened else { continue };
            let open_for = now.duration_since(opened);
            if all || open_for >= LOG_WINDOW {
                if window.held > 0 {
                    closed.push((slot, window.held, open_for.min(LOG_WINDOW)));
                }
                *window = Window::default();
            }
        }
        closed
    }
}

/// A point-in-time copy of the counters, for the end-of-run summary and the JSON view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Events that arrived (accepted, or filtered at once by kind).
    pub received: u64,
    /// Events no rule selected.
    pub filtered: u64,
    /// Requests the endpoint answered with 2xx (or printed, in dry-run).
    pub delivered: u64,
    /// Events that were accepted but not delivered: give-ups, guest failures, spool write errors.
    pub failed: u64,
    /// Guest calls that trapped (their events are `failed`, unless `guest.on_failure` saved them).
    pub guest_traps: u64,
    /// Guest calls that ran out of time (likewise).
    pub guest_timeouts: u64,
    /// Events refused because the runtime queue was full (never accepted).
    pub rejected: u64,
    /// Input lines that were not valid events (never accepted).
    pub malformed: u64,
    /// Delivery attempts after the first (each counted once).
    pub retries: u64,
    /// Requests written to the spool.
    pub spooled: u64,
    /// Requests found in the spool at start, left undelivered by an earlier run.
    pub recovered: u64,
    /// Accepted requests lost on purpose or by damage: a full spool, unreadable records.
    pub dropped: u64,
    /// Requests given up because the endpoint's answer is permanent (part of `failed`).
    pub given_up_status: u64,
    /// Requests given up on a TLS failure (part of `failed`).
    pub given_up_tls: u64,
    /// Requests given up after `retry.max_attempts` (part of `failed`).
    pub given_up_attempts: u64,
    /// Requests given up past `retry.max_age` (part of `failed`).
    pub given_up_age: u64,
    /// Requests given up because their body is over `retry.max_replay_size` (part of `failed`).
    pub given_up_too_large: u64,
    /// Batches done, delivered or given up (`batch`; 0 without it).
    pub batches: u64,
    /// Batches split in halves after a 413 answer.
    pub batch_splits: u64,
    /// Events sent alone because their body cannot join a batch.
    pub unbatched: u64,
}

impl fmt::Display for MetricsSnapshot {
    /// The one-line summary: `received=… filtered=… delivered=… failed=…` and the details.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received={} filtered={} delivered={} failed={} guest_traps={} guest_timeouts={} rejected={} malformed={} retries={} spooled={} recovered={} dropped={} given_up_status={} given_up_tls={} given_up_attempts={} given_up_age={} given_up_too_large={} batches={} batch_splits={} unbatched={}",
            self.received,
            self.filtered,
            self.delivered,
            self.failed,
            self.guest_traps,
            self.guest_timeouts,
            self.rejected,
            self.malformed,
            self.retries,
            self.spooled,
            self.recovered,
            self.dropped,
            self.given_up_status,
            self.given_up_tls,
            self.given_up_attempts,
            self.given_up_age,
            self.given_up_too_large,
            self.batches,
            self.batch_splits,
            self.unbatched
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_logs_a_burst_then_holds_back_and_reports_when_the_window_closes() {
        let limiter = Limiter::default();
        let start = Instant::now();
        let slot = Problem::QueueFull.slot();
        let logged = (0..1000).filter(|_| limiter.admit(slot, 1, start).log).count();
        assert_eq!(logged, LOG_BURST as usize);
        // Another problem has a window of its own.
        assert!(limiter.admit(Problem::SpoolFull.slot(), 1, start).log);
        // Nothing is reported while the window is open…
        assert!(limiter.closed(start + LOG_WINDOW / 2, false).is_empty());
        // …and the held-back count as soon as it closes, even with no further report.
        let closed = limiter.closed(start + LOG_WINDOW, false);
        assert_eq!(closed, vec![(slot, 1000 - u64::from(LOG_BURST), LOG_WINDOW)]);
        assert!(limiter.closed(start + 3 * LOG_WINDOW, false).is_empty(), "reported once");
        // A report in a later window logs again.
        assert_eq!(limiter.admit(slot, 1, start + 4 * LOG_WINDOW), Admitted { log: true, held_before: None });
    }

    #[test]
    fn a_report_after_the_window_closed_carries_what_was_held() {
        let limiter = Limiter::default();
        let start = Instant::now();
        let slot = Problem::MalformedInput.slot();
        for _ in 0..LOG_BURST + 3 {
            limiter.admit(slot, 2, start);
        }
        assert_eq!(limiter.admit(slot, 1, start + LOG_WINDOW), Admitted { log: true, held_before: Some(6) });
    }

    #[test]
    fn batches_are_counted_with_their_sizes() {
        let metrics = Metrics::default();
        metrics.record_batch(10);
        metrics.record_batch(3);
        metrics.record_batch_split();
        metrics.report(Problem::Unbatchable, 1, format_args!("not JSON"));
        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.batches, snapshot.batch_splits, snapshot.unbatched, snapshot.failed), (2, 1, 1, 0));
        let text = metrics.encode(&Depths::default());
        for line in [
            "mqhook_batches_total 2\n",
            "mqhook_batch_splits_total 1\n",
            "mqhook_events_unbatched_total 1\n",
            "mqhook_batch_events_sum 13.0\n",
            "mqhook_batch_events_count 2\n",
            "mqhook_batch_events_bucket{le=\"4.0\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
    }

    #[test]
    fn every_problem_is_counted_even_when_not_logged() {
        let metrics = Metrics::default();
        for _ in 0..100 {
            metrics.report(Problem::QueueFull, 1, format_args!("full"));
            metrics.report(Problem::GivenUp(GiveUpReason::Age), 1, format_args!("old"));
        }
        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.rejected, snapshot.given_up_age, snapshot.failed), (100, 100, 100));
        let text = metrics.encode(&Depths::default());
        assert!(text.contains("mqhook_events_dropped_total{reason=\"queue_full\"} 100\n"), "{text}");
        assert!(text.contains("mqhook_requests_given_up_total{endpoint=\"default\",reason=\"age\"} 100\n"), "{text}");
        assert!(PROBLEMS.iter().enumerate().all(|(slot, problem)| problem.slot() == slot));
    }
}
