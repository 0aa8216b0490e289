//! The endpoint's health: one backoff for the endpoint, not one retry budget per request.
//!
//! While the endpoint answers, every request goes out at once (up to `pool_size`). When an attempt
//! fails in a way that says the endpoint is unwell (it refuses connections, times out, or answers
//! 5xx, 429 or 408), delivery as a whole backs off: no request is sent until the backoff has
//! passed, then exactly one request probes the endpoint. A probe that succeeds ends the outage and
//! every waiting request goes out again; one that fails doubles the backoff (up to `retry.cap`,
//! never shorter than a `Retry-After` the endpoint sent). Requests that wait hold no connection.
//!
//! The wait before each probe is `retry.base · 2^step`, capped at `retry.cap`, with "equal jitter"
//! (between half of it and all of it), so that an outage costs a handful of connection attempts
//! per backoff step, not `pool_size` per request.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Backoff;
use crate::metrics::{EndpointMetrics, Problem};

/// Shared by every delivery task of one endpoint.
pub struct EndpointHealth {
    backoff: Backoff,
    state: Mutex<State>,
    /// Woken when the endpoint is healthy again, a probe's turn comes, or a probe ends.
    changed: Notify,
    metrics: EndpointMetrics,
}

/// The phase, and what `/status` shows of the latest outcomes.
#[derive(Debug)]
struct State {
    phase: Phase,
    last_error: Option<(String, SystemTime)>,
    last_success: Option<SystemTime>,
}

/// The endpoint as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EndpointStatus {
    /// `healthy` or `backing_off`.
    pub state: &'static str,
    /// The latest failed attempt's error, if any.
    pub last_error: Option<String>,
    /// When it failed, in milliseconds since the Unix epoch.
    pub last_error_at_ms: Option<u64>,
    /// When a request last got a 2xx, in milliseconds since the Unix epoch.
    pub last_success_at_ms: Option<u64>,
}

fn epoch_millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

#[derive(Debug)]
enum Phase {
    /// Requests go out freely.
    Healthy,
    /// Nothing goes out before `until`; then one probe.
    BackingOff {
        /// Failed probes (and the failure that started the outage) so far.
        step: u32,
        until: Instant,
        /// A probe is on its way; the others wait for its outcome.
        probing: bool,
    },
}

/// What [`EndpointHealth::ready`] lets a request do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Send; the endpoint is healthy.
    Send,
    /// Send as the one probe of a backed-off endpoint; report the outcome.
    Probe,
}

impl EndpointHealth {
    /// A healthy endpoint whose outages back off within `backoff`; each outage is reported to
    /// `metrics` ([`Problem::EndpointBackingOff`]).
    pub fn new(backoff: Backoff, metrics: EndpointMetrics) -> EndpointHealth {
        let state = State { phase: Phase::Healthy, last_error: None, last_success: None };
        EndpointHealth { backoff, state: Mutex::new(state), changed: Notify::new(), metrics }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the endpoint is backing off now.
    pub fn is_backing_off(&self) -> bool {
        matches!(self.lock().phase, Phase::BackingOff { .. })
    }

    /// The endpoint's state and latest outcomes.
    pub fn status(&self) -> EndpointStatus {
        let state = self.lock();
        EndpointStatus {
            state: match state.phase {
                Phase::Healthy => "healthy",
                Phase::BackingOff { .. } => "backing_off",
            },
            last_error: state.last_error.as_ref().map(|(error, _)| error.clone()),
            last_error_at_ms: state.last_error.as_ref().map(|(_, at)| epoch_millis(*at)),
            last_success_at_ms: state.last_success.map(epoch_millis),
        }
    }

    /// A request's turn if it may go at once: `Send` while healthy, `Probe` if the backoff has
    /// passed and no probe is out; `None` if it must wait ([`EndpointHealth::ready`]).
    pub fn try_ready(&self) -> Option<Turn> {
        let mut state = self.lock();
        match &mut state.phase {
            Phase::Healthy => Some(Turn::Send),
            Phase::BackingOff { until, probing, .. } if !*probing && *until <= Instant::now() => {
                *probing = true;
                Some(Turn::Probe)
            }
            Phase::BackingOff { .. } => None,
        }
    }

    /// Waits until a request may be sent: at once while the endpoint is healthy; during an outage,
    /// until the backoff has passed and this request is the probe, or until a probe succeeded.
    pub async fn ready(&self) -> Turn {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(turn) = self.try_ready() {
                return turn;
            }
            let wait_until = match self.lock().phase {
                Phase::BackingOff { until, probing: false, .. } => Some(until),
                _ => None,
            };
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// An attempt got a 2xx: the outage, if any, is over.
    pub fn succeeded(&self) {
        self.answered(None);
    }

    /// An attempt got an answer that says nothing about the endpoint's health (a permanent
    /// refusal, `error`): the outage, if any, is over.
    pub fn refused(&self, error: &dyn std::fmt::Display) {
        self.answered(Some(error));
    }

    fn answered(&self, error: Option<&dyn std::fmt::Display>) {
        let mut state = self.lock();
        let now = SystemTime::now();
        match error {
            Some(error) => state.last_error = Some((error.to_string(), now)),
            None => state.last_success = Some(now),
        }
        if let Phase::BackingOff { step, .. } = state.phase {
            tracing::info!(failed_probes = step, "The endpoint answers again; delivery resumes at full concurrency.");
            state.phase = Phase::Healthy;
            self.metrics.set_backing_off(false);
            drop(state);
            self.changed.notify_waiters();
        }
    }

    /// An attempt failed in a way that says the endpoint is unwell. `turn` is what it was sent as;
    /// `at_least` is a `Retry-After` the endpoint asked for.
    pub fn failed(&self, turn: Turn, at_least: Option<Duration>, reason: &dyn std::fmt::Display) {
        let mut state = self.lock();
        state.last_error = Some((reason.to_string(), SystemTime::now()));
        let step = match (&state.phase, turn) {
            (Phase::Healthy, _) => {
                self.metrics.report(
                    Problem::EndpointBackingOff,
                    1,
                    format_args!(
                        "The endpoint is failing ({reason}); delivery backs off and probes it with one request."
                    ),
                );
                0
            }
            (Phase::BackingOff { step, .. }, Turn::Probe) => step + 1,
            // A request sent before the outage began: the outage is already being handled.
            (Phase::BackingOff { .. }, Turn::Send) => return,
        };
        let wait = self.wait(step).max(at_least.unwrap_or_default());
        tracing::debug!(step, "The endpoint is still failing ({reason}); next probe in {wait:?}.");
        state.phase = Phase::BackingOff { step, until: Instant::now() + wait, probing: false };
        self.metrics.set_backing_off(true);
        drop(state);
        self.changed.notify_waiters();
    }

    /// A probe ended without telling anything about the endpoint (the request was given up for
    /// another reason): the next waiting request probes instead.
    pub fn probe_abandoned(&self) {
        let mut state = self.lock();
        if let Phase::BackingOff { probing, .. } = &mut state.phase {
            *probing = false;
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// The wait before probe number `step + 1`: equal jitter over the capped exponential.
    fn wait(&self, step: u32) -> Duration {
        let ceiling = self.backoff.base().saturating_mul(1 << step.min(31)).min(self.backoff.cap());
        ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> EndpointHealth {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).unwrap();
        EndpointHealth::new(backoff, std::sync::Arc::<crate::metrics::Metrics>::default().endpoint(0))
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_lets_one_probe_through_per_backoff_step() {
        let health = health();
        assert_eq!(health.ready().await, Turn::Send);
        health.failed(Turn::Send, None, &"refused");
        // Requests already in flight that fail too change nothing.
        health.failed(Turn::Send, None, &"refused");
        let started = Instant::now();
        assert_eq!(health.ready().await, Turn::Probe);
        assert!(started.elapsed() >= Duration::from_millis(50), "the first probe waits for the backoff");
        // While the probe is out, nobody else goes.
        let waiting = tokio::time::timeout(Duration::from_secs(5), health.ready()).await;
        assert!(waiting.is_err(), "a second request waits for the probe's outcome");
        health.failed(Turn::Probe, None, &"refused");
        let second = Instant::now();
        assert_eq!(health.ready().await, Turn::Probe);
        assert!(second.elapsed() >= Duration::from_millis(100), "the backoff grows");
        assert_eq!(health.status().state, "backing_off");
        assert_eq!(health.status().last_error.as_deref(), Some("refused"));
        health.succeeded();
        assert_eq!(health.ready().await, Turn::Send);
        assert!(!health.is_backing_off());
        assert!(health.status().last_success_at_ms.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_lengthens_the_wait_and_the_cap_bounds_it() {
        let health = health();
        health.failed(Turn::Send, Some(Duration::from_secs(3)), &"429");
        let started = Instant::now();
        assert_eq!(health.ready().await, Turn::Probe);
        assert!(started.elapsed() >= Duration::from_secs(3));
        for _ in 0..40 {
            health.failed(Turn::Probe, None, &"503");
            let step = Instant::now();
            assert_eq!(health.ready().await, Turn::Probe);
            assert!(step.elapsed() <= Duration::from_secs(1), "capped");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_hands_the_turn_on() {
        let health = health();
        health.failed(Turn::Send, None, &"refused");
        assert_eq!(health.ready().await, Turn::Probe);
        health.probe_abandoned();
        assert_eq!(health.ready().await, Turn::Probe);
    }
}
