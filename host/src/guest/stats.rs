//! Per-guest counters: what one guest version did with the events it was given.
//!
//! Each [`GuestModule`](super::GuestModule) (one component in one configuration) has its own; its
//! instances record every call. They feed the admin API and the automatic rollback of a newly
//! swapped guest that keeps failing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Live counters of one guest version.
#[derive(Debug, Default)]
pub struct GuestStats {
    calls: AtomicU64,
    filtered: AtomicU64,
    delivered: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    invalid: AtomicU64,
    call_nanos: AtomicU64,
    failing_streak: AtomicU64,
}

/// A copy of [`GuestStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GuestStatsSnapshot {
    /// Calls of `handle`.
    pub calls: u64,
    /// Calls that returned no delivery.
    pub filtered: u64,
    /// Calls that returned a valid delivery.
    pub delivered: u64,
    /// Calls that trapped.
    pub traps: u64,
    /// Calls that ran out of time.
    pub timeouts: u64,
    /// Calls that returned a delivery the host cannot send (bad header, path, or body too large).
    pub invalid: u64,
    /// Mean time per call, nanoseconds.
    pub mean_call_nanos: u64,
    /// Failed calls in a row, up to the latest call.
    pub failing_streak: u64,
}

/// How one call ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    Filtered,
    Delivered,
    Trapped,
    TimedOut,
    Invalid,
}

impl CallOutcome {
    /// How a call that answered `result` for one event ended.
    pub(crate) fn of<T>(result: &Result<Option<T>, super::GuestError>) -> CallOutcome {
        match result {
            Ok(None) => CallOutcome::Filtered,
            Ok(Some(_)) => CallOutcome::Delivered,
            Err(super::GuestError::Timeout(_)) => CallOutcome::TimedOut,
            Err(super::GuestError::InvalidDelivery(_)) => CallOutcome::Invalid,
            Err(_) => CallOutcome::Trapped,
        }
    }
}

impl GuestStats {
    /// Counts one event's call (a `handle-batch` call counts once per event it answered).
    pub(crate) fn record(&self, outcome: CallOutcome, took: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.call_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let counter = match outcome {
            CallOutcome::Filtered => &self.filtered,
            CallOutcome::Delivered => &self.delivered,
            CallOutcome::Trapped => &self.traps,
            CallOutcome::TimedOut => &self.timeouts,
            CallOutcome::Invalid => &self.invalid,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match outcome {
            CallOutcome::Filtered | CallOutcome::Delivered => self.failing_streak.store(0, Ordering::Relaxed),
            CallOutcome::Trapped | CallOutcome::TimedOut | CallOutcome::Invalid => {
                self.failing_streak.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Failed calls in a row, up to the latest call.
    pub fn failing_streak(&self) -> u64 {
        self.failing_streak.load(Ordering::Relaxed)
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> GuestStatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let calls = get(&self.calls);
        GuestStatsSnapshot {
            calls,
            filtered: get(&self.filtered),
            delivered: get(&self.delivered),
            traps: get(&self.traps),
            timeouts: get(&self.timeouts),
            invalid: get(&self.invalid),
            mean_call_nanos: get(&self.call_nanos).checked_div(calls).unwrap_or(0),
            failing_streak: get(&self.failing_streak),
        }
    }
}
