//! Retries: which failures are worth another attempt, and the loop that makes the attempts.
//!
//! The one place that decides about retries; the HTTP sink makes one exchange and never decides
//! on its own, and the endpoint's [`EndpointHealth`] decides *when* the next attempt may go.
//! - **Transient** failures (connection errors, timeouts, 408, 429, 5xx but 501) are retried, by
//!   default without limit: the request waits, holding no connection, until the
//!   endpoint's backoff lets it (or another request's probe) through.
//! - **Permanent** failures are given up at once: other 4xx answers, 501, a TLS failure (an
//!   untrusted certificate), and a transient failure of a body larger than `retry.max_replay_size`.
//! - `retry.max_attempts` and `retry.max_age`, when set, give up a request that is still failing.
//!
//! Every give-up names its [`GiveUpReason`]; delivery counts and dead-letters it.

use std::time::Duration;

use http::StatusCode;

use super::error::DeliveryError;
use super::health::{EndpointHealth, Turn};
use super::http::HttpSink;
use super::request_builder::Framing;
use crate::config::RetrySettings;
use crate::metrics::{EndpointMetrics, GiveUpReason};
use crate::request::Request;

/// A request given up on: the last failure, the attempts made, and why.
#[derive(Debug)]
pub struct GaveUp {
    /// The last attempt's failure.
    pub error: DeliveryError,
    /// Attempts made, the first included.
    pub attempts: u32,
    /// Why no further attempt is made.
    pub reason: GiveUpReason,
}

/// What one failed attempt means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Worth another attempt, once the endpoint's backoff (at least this `Retry-After`) allows.
    Transient(Option<Duration>),
    /// Never worth another attempt.
    Permanent(GiveUpReason),
}

/// Judges a failed attempt.
pub fn verdict(error: &DeliveryError) -> Verdict {
    match error {
        DeliveryError::Status { status, retry_after } => {
            let transient = *status == StatusCode::REQUEST_TIMEOUT
                || *status == StatusCode::TOO_MANY_REQUESTS
                || (status.is_server_error() && *status != StatusCode::NOT_IMPLEMENTED);
            if transient {
                Verdict::Transient(*retry_after)
            } else {
                Verdict::Permanent(GiveUpReason::PermanentStatus)
            }
        }
        DeliveryError::Timeout(_) | DeliveryError::Transport(_) => Verdict::Transient(None),
        DeliveryError::UnsupportedScheme(_) | DeliveryError::TlsConfig(_) | DeliveryError::Tls(_) => {
            Verdict::Permanent(GiveUpReason::Tls)
        }
    }
}

/// How one request is sent: the sink, the settings and the endpoint's health.
pub(crate) struct Attempts<'a> {
    pub sink: &'a HttpSink,
    pub settings: &'a RetrySettings,
    pub health: &'a EndpointHealth,
    pub metrics: &'a EndpointMetrics,
}

impl Attempts<'_> {
    /// Sends `request` until it is delivered or given up; each attempt waits for its turn (see
    /// [`EndpointHealth`]).
    pub async fn send(&self, request: &Request) -> Result<(), GaveUp> {
        self.send_framed(request, Framing::Single).await
    }

    /// As [`Attempts::send`], for a body framed as `framing` says: a batch is retried as one.
    pub async fn send_framed(&self, request: &Request, framing: Framing<'_>) -> Result<(), GaveUp> {
        let first_attempt = tokio::time::Instant::now();
        let mut attempts = 0;
        let mut last_error = None;
        loop {
            let turn = self.health.ready().await;
            if self.settings.max_age.is_some_and(|max_age| first_attempt.elapsed() > max_age) {
                if let Some(error) = last_error.take() {
                    if turn == Turn::Probe {
                        self.health.probe_abandoned();
                    }
                    return Err(GaveUp { error, attempts, reason: GiveUpReason::Age });
                }
            }
            attempts += 1;
            let error = match self.sink.send_framed(request, framing).await {
                Ok(()) => {
                    self.health.succeeded();
                    return Ok(());
                }
                Err(error) => error,
            };
            self.metrics.record_attempt_failed(error.failure_reason());
            match verdict(&error) {
                Verdict::Permanent(reason) => {
                    // The endpoint answered (or will never answer this way): it is not unwell.
                    self.health.refused(&error);
                    return Err(GaveUp { error, attempts, reason });
                }
                Verdict::Transient(retry_after) => {
                    self.health.failed(turn, retry_after, &error);
                    let too_large =
                        self.settings.max_replay_size.is_some_and(|cap| request.body.len() as u64 > cap.get());
                    if too_large {
                        return Err(GaveUp { error, attempts, reason: GiveUpReason::TooLargeToReplay });
                    }
                    if self.settings.max_attempts.is_some_and(|max| attempts >= max.get()) {
                        return Err(GaveUp { error, attempts, reason: GiveUpReason::Attempts });
                    }
                    tracing::debug!(
                        action = request.kind.action(),
                        attempts,
                        "Delivery failed ({error}); it will be retried."
                    );
                    self.metrics.record_retry();
                    last_error = Some(error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, retry_after: Option<Duration>) -> DeliveryError {
        DeliveryError::Status { status: StatusCode::from_u16(code).unwrap(), retry_after }
    }

    #[test]
    fn transient_failures_are_retried_permanent_ones_are_not() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert_eq!(verdict(&status(code, None)), Verdict::Transient(None), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 422, 501] {
            assert_eq!(verdict(&status(code, None)), Verdict::Permanent(GiveUpReason::PermanentStatus), "{code}");
        }
        assert_eq!(verdict(&DeliveryError::Timeout(Duration::from_secs(5))), Verdict::Transient(None));
        assert_eq!(verdict(&DeliveryError::Transport("connection refused".into())), Verdict::Transient(None));
        assert_eq!(verdict(&DeliveryError::Tls("unknown issuer".into())), Verdict::Permanent(GiveUpReason::Tls));
    }

    #[test]
    fn retry_after_is_passed_on() {
        let wait = Some(Duration::from_secs(3));
        assert_eq!(verdict(&status(429, wait)), Verdict::Transient(wait));
    }
}
