//! Why one attempt to deliver a request failed: the error every part of delivery shares.

use std::time::Duration;

use http::StatusCode;

use super::tls::TlsError;
use crate::metrics::FailureReason;

/// Why a request was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The URL's scheme is neither http nor https.
    #[error("`{0}` URLs are not supported; use http:// or https://")]
    UnsupportedScheme(String),
    /// The TLS settings cannot be used.
    #[error(transparent)]
    TlsConfig(#[from] TlsError),
    /// The TLS handshake failed: the server's certificate is not trusted, or it refused ours.
    /// Not retried: it fails the same way every time until the configuration changes.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The endpoint answered with a status other than 2xx.
    #[error("endpoint answered {status}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The `Retry-After` it sent, in seconds form.
        retry_after: Option<Duration>,
    },
    /// No answer within `cancel_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or talking to the endpoint failed.
    #[error("request failed: {0}")]
    Transport(String),
}

impl DeliveryError {
    /// The reason this attempt failed, as its counter names it.
    pub fn failure_reason(&self) -> FailureReason {
        match self {
            DeliveryError::Status { status, .. } if status.is_client_error() => FailureReason::Status4xx,
            DeliveryError::Status { status, .. } if status.is_server_error() => FailureReason::Status5xx,
            DeliveryError::Status { .. } => FailureReason::StatusOther,
            DeliveryError::Timeout(_) => FailureReason::Timeout,
            DeliveryError::Transport(_) => FailureReason::Connect,
            DeliveryError::UnsupportedScheme(_) | DeliveryError::TlsConfig(_) | DeliveryError::Tls(_) => {
                FailureReason::Tls
            }
        }
    }

    /// The HTTP status, when the endpoint answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            DeliveryError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}
