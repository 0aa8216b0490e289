//! mqhook's own request type: what the guest asked to send for one event.
//!
//! Built once, where the guest's delivery becomes a request (the guest runtime), or read back from
//! the spool or a dead-letter file. The delivery queue gives each request its idempotency key when
//! it accepts it ([`idempotency_key`]), and the key stays with it through retries, the spool, dead
//! letters, replays and restarts.

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::event::EventKind;

/// The header that names each request, the same across its retries, dead letter, replay and a
/// restart, so endpoints can drop duplicates (at-least-once delivery makes some).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// One request to send: what a guest returned for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The event it came from.
    pub kind: EventKind,
    /// The body, sent as it is.
    pub body: Bytes,
    /// Headers the guest added, sent after the configured ones.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Path appended to the configured URL's path.
    pub path: Option<String>,
    /// The client id of its event, for per-client order.
    pub client: Option<String>,
    /// Names the request for the endpoint; given by the delivery queue when it accepts the
    /// request (see [`idempotency_key`]), kept when it already has one (a replay).
    pub idempotency_key: Option<String>,
    /// When its event arrived, for the delivery latency histogram; kept in the spool, not in a
    /// dead letter (a replay is not timed).
    pub received_at: Option<SystemTime>,
}

/// The idempotency key of request number `seq` of a queue whose keys start with `prefix` (the
/// spool's id, or a random one per process without a spool).
pub fn idempotency_key(prefix: &str, seq: u64) -> String {
    format!("{prefix}-{seq}")
}
