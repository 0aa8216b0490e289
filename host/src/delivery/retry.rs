//! Retries: which failures are worth another attempt, how long to wait before it, and the loop
//! that makes the attempts.
//!
//! The one place that decides about retries and sleeps between them; the HTTP sink makes one
//! exchange and never decides on its own. Connection errors, timeouts, 408, 429 and 5xx are
//! transient and retried with exponential backoff and full jitter (a random wait between zero and
//! `base · 2^attempt`, capped), never sooner than a `Retry-After` the endpoint sent. Other 4xx
//! answers are permanent. Retries stop at `max_attempts` attempts or, when set, once the first
//! attempt is `max_age` old. The settings are the config's [`RetrySettings`].

use std::time::Duration;

use http::StatusCode;

use super::error::DeliveryError;
use super::http::HttpSink;
use crate::config::RetrySettings;
use crate::metrics::Metrics;
use crate::request::Request;

/// What to do after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after this long.
    RetryAfter(Duration),
    /// Give up: the failure is permanent, or the attempts or the age are used up.
    GiveUp,
}

/// A request given up on: the last failure and the attempts made.
#[derive(Debug)]
pub struct GaveUp {
    /// The last attempt's failure.
    pub error: DeliveryError,
    /// Attempts made, the first included.
    pub attempts: u32,
}

/// Sends `request` through `sink`, retrying as `settings` say; each retry is counted.
pub async fn send(
    sink: &HttpSink,
    request: &Request,
    settings: &RetrySettings,
    metrics: &Metrics,
) -> Result<(), GaveUp> {
    let first_attempt = tokio::time::Instant::now();
    let mut attempt = 1;
    loop {
        let error = match sink.send(request).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        match after_failure(settings, &error, attempt, first_attempt.elapsed()) {
            Verdict::RetryAfter(wait) => {
                tracing::debug!(
                    action = request.kind.action(),
                    attempt,
                    "Delivery failed ({error}); retrying in {wait:?}."
                );
                metrics.record_retry();
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Verdict::GiveUp => return Err(GaveUp { error, attempts: attempt }),
        }
    }
}

/// Decides after failed attempt number `attempt` (1-based), made `age` after the first one.
pub fn after_failure(settings: &RetrySettings, error: &DeliveryError, attempt: u32, age: Duration) -> Verdict {
    if !is_transient(error) || attempt >= settings.max_attempts.get() {
        return Verdict::GiveUp;
    }
    let wait = backoff(settings, attempt).max(retry_after(error).unwrap_or_default());
    match settings.max_age {
        Some(max_age) if age + wait > max_age => Verdict::GiveUp,
        _ => Verdict::RetryAfter(wait),
    }
}

/// Full jitter: uniformly random between zero and `min(cap, base · 2^(attempt-1))`.
fn backoff(settings: &RetrySettings, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(31);
    let ceiling = settings.backoff.base().saturating_mul(1 << exponent).min(settings.backoff.cap());
    ceiling.mul_f64(fastrand::f64())
}

/// 408, 429, 5xx and every transport failure are worth another attempt; other answers are not.
fn is_transient(error: &DeliveryError) -> bool {
    match error {
        DeliveryError::Status { status, .. } => {
            *status == StatusCode::REQUEST_TIMEOUT
                || *status == StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error()
        }
        DeliveryError::Timeout(_) | DeliveryError::Transport(_) => true,
        DeliveryError::UnsupportedScheme(_) | DeliveryError::TlsConfig(_) | DeliveryError::Tls(_) => false,
    }
}

fn retry_after(error: &DeliveryError) -> Option<Duration> {
    match error {
        DeliveryError::Status { retry_after, .. } => *retry_after,
        _ => None,
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
        let policy = RetrySettings::default();
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(after_failure(&policy, &status(code, None), 1, Duration::ZERO), Verdict::RetryAfter(_)),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 410, 422] {
            assert_eq!(after_failure(&policy, &status(code, None), 1, Duration::ZERO), Verdict::GiveUp, "{code}");
        }
        let timeout = DeliveryError::Timeout(Duration::from_secs(5));
        assert!(matches!(after_failure(&policy, &timeout, 1, Duration::ZERO), Verdict::RetryAfter(_)));
        let refused = DeliveryError::Transport("connection refused".into());
        assert!(matches!(after_failure(&policy, &refused, 1, Duration::ZERO), Verdict::RetryAfter(_)));
    }

    #[test]
    fn backoff_grows_is_capped_and_stops_at_the_limits() {
        let policy = RetrySettings {
            max_attempts: std::num::NonZeroU32::new(10).unwrap(),
            backoff: crate::config::Backoff::new(Duration::from_millis(100), Duration::from_millis(1000)).unwrap(),
            max_age: Some(Duration::from_secs(60)),
        };
        let error = status(503, None);
        for attempt in 1..10 {
            let ceiling = Duration::from_millis(100 * (1 << (attempt - 1))).min(Duration::from_millis(1000));
            for _ in 0..50 {
                let Verdict::RetryAfter(wait) = after_failure(&policy, &error, attempt, Duration::ZERO) else {
                    panic!("attempt {attempt} must be retried");
                };
                assert!(wait <= ceiling, "attempt {attempt}: {wait:?} > {ceiling:?}");
            }
        }
        assert_eq!(after_failure(&policy, &error, 10, Duration::ZERO), Verdict::GiveUp, "attempts used up");
        assert_eq!(after_failure(&policy, &error, 2, Duration::from_secs(60)), Verdict::GiveUp, "too old");
    }

    #[test]
    fn retry_after_is_honoured() {
        let policy = RetrySettings::default();
        let error = status(429, Some(Duration::from_secs(3)));
        assert!(
            matches!(after_failure(&policy, &error, 1, Duration::ZERO), Verdict::RetryAfter(wait) if wait >= Duration::from_secs(3))
        );
    }
}
