//! The retry policy: which failures are worth another attempt, and how long to wait before it.
//!
//! The one place that decides about retries; the HTTP sink asks it after every attempt and never
//! decides on its own. Connection errors, timeouts, 408, 429 and 5xx are transient and retried with
//! exponential backoff and full jitter (a random wait between zero and `base · 2^attempt`, capped),
//! never sooner than a `Retry-After` the endpoint sent. Other 4xx answers are permanent. Retries
//! stop at `max_attempts` attempts or, when set, once the first attempt is `max_age` old.

use std::num::NonZeroU32;
use std::time::Duration;

use http::StatusCode;

use super::http::DeliveryError;

/// When and how often a failed request is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retries.
    pub max_attempts: NonZeroU32,
    /// The backoff before the second attempt (before jitter); it doubles for each one after.
    #[serde(rename = "base_ms", serialize_with = "crate::config::serialize_millis")]
    pub base: Duration,
    /// The longest backoff between two attempts.
    #[serde(rename = "cap_ms", serialize_with = "crate::config::serialize_millis")]
    pub cap: Duration,
    /// No attempt starts later than this after the first one; `None` leaves only `max_attempts`.
    #[serde(rename = "max_age_ms", serialize_with = "crate::config::serialize_optional_millis")]
    pub max_age: Option<Duration>,
}

impl Default for RetryPolicy {
    /// 5 attempts, backoff from 200 ms doubling up to 10 s: about 3 s of retrying in all, on average.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: NonZeroU32::new(5).expect("non-zero"),
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
            max_age: None,
        }
    }
}

/// What to do after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after this long.
    RetryAfter(Duration),
    /// Give up: the failure is permanent, or the attempts or the age are used up.
    GiveUp,
}

impl RetryPolicy {
    /// Decides after failed attempt number `attempt` (1-based), made `age` after the first one.
    pub fn after_failure(&self, error: &DeliveryError, attempt: u32, age: Duration) -> Verdict {
        if !is_transient(error) || attempt >= self.max_attempts.get() {
            return Verdict::GiveUp;
        }
        let wait = self.backoff(attempt).max(retry_after(error).unwrap_or_default());
        match self.max_age {
            Some(max_age) if age + wait > max_age => Verdict::GiveUp,
            _ => Verdict::RetryAfter(wait),
        }
    }

    /// Full jitter: uniformly random between zero and `min(cap, base · 2^(attempt-1))`.
    fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        let ceiling = self.base.saturating_mul(1 << exponent).min(self.cap);
        ceiling.mul_f64(fastrand::f64())
    }
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
        DeliveryError::UnsupportedScheme(_)
        | DeliveryError::DeadLetter(_)
        | DeliveryError::TlsConfig(_)
        | DeliveryError::Tls(_) => false,
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
        let policy = RetryPolicy::default();
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(matches!(policy.after_failure(&status(code, None), 1, Duration::ZERO), Verdict::RetryAfter(_)), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 422] {
            assert_eq!(policy.after_failure(&status(code, None), 1, Duration::ZERO), Verdict::GiveUp, "{code}");
        }
        let timeout = DeliveryError::Timeout(Duration::from_secs(5));
        assert!(matches!(policy.after_failure(&timeout, 1, Duration::ZERO), Verdict::RetryAfter(_)));
        let refused = DeliveryError::Transport("connection refused".into());
        assert!(matches!(policy.after_failure(&refused, 1, Duration::ZERO), Verdict::RetryAfter(_)));
    }

    #[test]
    fn backoff_grows_is_capped_and_stops_at_the_limits() {
        let policy = RetryPolicy {
            max_attempts: NonZeroU32::new(10).unwrap(),
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
            max_age: Some(Duration::from_secs(60)),
        };
        let error = status(503, None);
        for attempt in 1..10 {
            let ceiling = Duration::from_millis(100 * (1 << (attempt - 1))).min(Duration::from_millis(1000));
            for _ in 0..50 {
                let Verdict::RetryAfter(wait) = policy.after_failure(&error, attempt, Duration::ZERO) else {
                    panic!("attempt {attempt} must be retried");
                };
                assert!(wait <= ceiling, "attempt {attempt}: {wait:?} > {ceiling:?}");
            }
        }
        assert_eq!(policy.after_failure(&error, 10, Duration::ZERO), Verdict::GiveUp, "attempts used up");
        assert_eq!(policy.after_failure(&error, 2, Duration::from_secs(60)), Verdict::GiveUp, "too old");
    }

    #[test]
    fn retry_after_is_honoured() {
        let policy = RetryPolicy::default();
        let error = status(429, Some(Duration::from_secs(3)));
        assert!(matches!(policy.after_failure(&error, 1, Duration::ZERO), Verdict::RetryAfter(wait) if wait >= Duration::from_secs(3)));
    }
}
