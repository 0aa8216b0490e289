//! Counters of the pipeline: what came in, what was filtered, delivered or failed, and why.
//!
//! Every stage records into one shared [`Metrics`] (relaxed atomics: counts, not synchronisation);
//! [`Metrics::snapshot`] reads them for the end-of-run summary.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by every stage.
#[derive(Debug, Default)]
pub struct Metrics {
    received: AtomicU64,
    filtered: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    guest_traps: AtomicU64,
    guest_timeouts: AtomicU64,
    rejected: AtomicU64,
    malformed: AtomicU64,
    retries: AtomicU64,
    spooled: AtomicU64,
    recovered: AtomicU64,
    dropped: AtomicU64,
    /// Give-ups by [`GiveUpReason`], in its order.
    given_up: [AtomicU64; GiveUpReason::ALL.len()],
}

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

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Events accepted into the pipeline.
    pub received: u64,
    /// Events no rule selected.
    pub filtered: u64,
    /// Requests the endpoint answered with 2xx (or printed, in dry-run).
    pub delivered: u64,
    /// Events that were accepted but not delivered: non-2xx, transport errors, guest failures.
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
}

macro_rules! recorders {
    ($($name:ident => $field:ident),* $(,)?) => {
        $(
            #[doc = concat!("Counts one more `", stringify!($field), "`.")]
            pub fn $name(&self) {
                self.$field.fetch_add(1, Ordering::Relaxed);
            }
        )*
    };
}

impl Metrics {
    recorders! {
        record_received => received,
        record_filtered => filtered,
        record_delivered => delivered,
        record_failed => failed,
        record_rejected => rejected,
        record_malformed => malformed,
        record_retry => retries,
        record_guest_trap => guest_traps,
        record_guest_timeout => guest_timeouts,
        record_spooled => spooled,
    }

    /// Counts a request given up for `reason`, as failed too.
    pub fn record_given_up(&self, reason: GiveUpReason) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.given_up[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` more recovered requests.
    pub fn add_recovered(&self, n: u64) {
        self.recovered.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` more dropped requests.
    pub fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        MetricsSnapshot {
            received: get(&self.received),
            filtered: get(&self.filtered),
            delivered: get(&self.delivered),
            failed: get(&self.failed),
            guest_traps: get(&self.guest_traps),
            guest_timeouts: get(&self.guest_timeouts),
            rejected: get(&self.rejected),
            malformed: get(&self.malformed),
            retries: get(&self.retries),
            spooled: get(&self.spooled),
            recovered: get(&self.recovered),
            dropped: get(&self.dropped),
            given_up_status: get(&self.given_up[GiveUpReason::PermanentStatus as usize]),
            given_up_tls: get(&self.given_up[GiveUpReason::Tls as usize]),
            given_up_attempts: get(&self.given_up[GiveUpReason::Attempts as usize]),
            given_up_age: get(&self.given_up[GiveUpReason::Age as usize]),
            given_up_too_large: get(&self.given_up[GiveUpReason::TooLargeToReplay as usize]),
        }
    }
}

impl fmt::Display for MetricsSnapshot {
    /// The one-line summary: `received=… filtered=… delivered=… failed=…` and the details.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received={} filtered={} delivered={} failed={} guest_traps={} guest_timeouts={} rejected={} malformed={} retries={} spooled={} recovered={} dropped={} given_up_status={} given_up_tls={} given_up_attempts={} given_up_age={} given_up_too_large={}",
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
            self.given_up_too_large
        )
    }
}
