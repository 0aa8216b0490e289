//! The sections of a [`Config`](super::Config), one per component, and their defaults.
//!
//! Each component takes only its section: delivery its [`DeliveryConfig`], the guest runtime its
//! [`GuestConfig`] and the [`FilterSettings`] it hands the guest, the queues their
//! [`QueueConfig`], the spool its [`SpoolConfig`]. Every default is written once, in a `Default`
//! impl or a `DEFAULT_*` constant here; the accepted range of each number is in [`ranges`].

use std::num::{NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Serialize;

use crate::event::EventKind;

/// The accepted range of every numeric setting; the parser names the key and the range when a
/// value falls outside it.
pub mod ranges {
    use std::ops::RangeInclusive;
    use std::time::Duration;

    /// `pool_size`: requests in flight at most.
    pub const POOL_SIZE: RangeInclusive<u64> = 1..=1024;
    /// `cancel_timeout`: the time one request may take.
    pub const REQUEST_TIMEOUT: RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(3600);
    /// `pool_idle_timeout`: how long an unused keep-alive connection is kept.
    pub const POOL_IDLE_TIMEOUT: RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(3600);
    /// `retry.max_attempts`.
    pub const RETRY_ATTEMPTS: RangeInclusive<u64> = 1..=1_000_000;
    /// `retry.base` and `retry.cap`.
    pub const RETRY_BACKOFF: RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(86_400);
    /// `retry.max_replay_size`.
    pub const RETRY_REPLAY_SIZE: RangeInclusive<u64> = 1..=(1 << 30);
    /// `retry.max_age`.
    pub const RETRY_MAX_AGE: RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(30 * 86_400);
    /// `queue_size`, `queues.events` and `queues.requests`.
    pub const QUEUE_LENGTH: RangeInclusive<u64> = 1..=(1 << 24);
    /// `queues.request_bytes`: bodies the delivery queue holds in memory.
    pub const QUEUE_BYTES: RangeInclusive<u64> = (1 << 10)..=(1 << 40);
    /// `guest.memory_limit`: a wasm32 instance addresses 4 GiB at most.
    pub const GUEST_MEMORY: RangeInclusive<u64> = (1 << 20)..=(4 << 30);
    /// `guest.timeout`.
    pub const GUEST_TIMEOUT: RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(600);
    /// `guest.workers`.
    pub const GUEST_WORKERS: RangeInclusive<u64> = 1..=256;
    /// `guest.max_instances`: wasmtime's own default cap is 10,000.
    pub const GUEST_MAX_INSTANCES: RangeInclusive<u64> = 1..=10_000;
    /// `guest.max_body`.
    pub const GUEST_MAX_BODY: RangeInclusive<u64> = 1..=(1 << 30);
    /// `guest.rollback_after`.
    pub const GUEST_ROLLBACK_AFTER: RangeInclusive<u64> = 1..=1_000_000;
    /// `spool.max_size`.
    pub const SPOOL_MAX_SIZE: RangeInclusive<u64> = (4 << 10)..=(1 << 50);
    /// `spool.segment_size` (it is also capped at a quarter of `spool.max_size`).
    pub const SPOOL_SEGMENT_SIZE: RangeInclusive<u64> = (1 << 10)..=(1 << 32);
    /// `queues.when_full` as a bounded wait.
    pub const QUEUE_WAIT: RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(3600);
    /// `broker.max_packet_size`.
    pub const BROKER_PACKET_SIZE: RangeInclusive<u64> = (1 << 10)..=(256 << 20);
    /// `broker.max_connections`.
    pub const BROKER_CONNECTIONS: RangeInclusive<u64> = 1..=1_000_000;
    /// `broker.max_inflight`: MQTT's receive maximum.
    pub const BROKER_INFLIGHT: RangeInclusive<u64> = 1..=65_535;
    /// `broker.connect_timeout`.
    pub const BROKER_CONNECT_TIMEOUT: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(600);
    /// `spool.fsync` as an interval.
    pub const SPOOL_FSYNC: RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(3600);
    /// `bridge.keepalive`: MQTT's keep alive is whole seconds in 16 bits.
    pub const BRIDGE_KEEPALIVE: RangeInclusive<Duration> = Duration::from_secs(5)..=Duration::from_secs(65_535);
    /// `bridge.session_expiry`: MQTT 5's session expiry interval, whole seconds in 32 bits (the
    /// largest value never expires).
    pub const BRIDGE_SESSION_EXPIRY: RangeInclusive<Duration> =
        Duration::from_secs(1)..=Duration::from_secs(u32::MAX as u64);
    /// `bridge.receive_maximum`: QoS 1/2 messages the broker may have in flight to the bridge.
    pub const BRIDGE_RECEIVE_MAXIMUM: RangeInclusive<u64> = 1..=65_535;
    /// `bridge.max_packet_size`.
    pub const BRIDGE_PACKET_SIZE: RangeInclusive<u64> = (1 << 10)..=(256 << 20);
    /// `batch.max_events`: the members' keys travel in one header (`Idempotency-Keys`, about 25
    /// bytes a key), which this keeps under 32 KiB.
    pub const BATCH_EVENTS: RangeInclusive<u64> = 1..=1000;
    /// `batch.max_bytes`: one batch's body.
    pub const BATCH_BYTES: RangeInclusive<u64> = (1 << 10)..=(64 << 20);
    /// `batch.linger`: how long a batch waits for more events once it has one.
    pub const BATCH_LINGER: RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(60);
}

/// Default `pool_size`, as NanoMQ.
pub const DEFAULT_POOL_SIZE: NonZeroUsize = NonZeroUsize::new(32).unwrap();
/// Default `cancel_timeout`, as NanoMQ.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(5000);
/// Default `pool_idle_timeout`: hyper-util's own default.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default length of the runtime queue and of the delivery queue's memory part.
pub const DEFAULT_QUEUE_LENGTH: NonZeroUsize = NonZeroUsize::new(65_536).unwrap();
/// Default bytes of bodies the delivery queue holds in memory: a count alone would let large
/// payloads take gigabytes.
pub const DEFAULT_QUEUE_BYTES: ByteSize = ByteSize::new(64 << 20).unwrap();
/// Default cap on guest memory.
pub const DEFAULT_GUEST_MEMORY: ByteSize = ByteSize::new(64 << 20).unwrap();
/// Default cap on one guest call. Generous because base62 of a large payload is inherently
/// superlinear (the whole payload is one big integer): 64 KiB takes tens of milliseconds in wasm.
pub const DEFAULT_GUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// Default cap on the core instances one guest instance may create: a Rust guest creates 3 (its
/// module and the WASI adapter's shims), a componentize-qjs 0.4 guest 9, a componentize-py 0.25
/// guest 14 (CPython, libc and its libraries, the WASI adapter), 38 when built with `--stub-wasi`
/// (a stub module per WASI interface). 64 leaves room for guests composed of several such
/// components, while a component that instantiates modules without end still stops early.
pub const DEFAULT_GUEST_MAX_INSTANCES: NonZeroUsize = NonZeroUsize::new(64).unwrap();
/// Default cap on a guest's body.
pub const DEFAULT_GUEST_MAX_BODY: ByteSize = ByteSize::new(16 << 20).unwrap();
/// Default failures in a row that roll a newly swapped guest back.
pub const DEFAULT_ROLLBACK_AFTER: NonZeroU64 = NonZeroU64::new(10).unwrap();
/// Default cap on the spool's size on disk.
pub const DEFAULT_SPOOL_MAX_SIZE: ByteSize = ByteSize::new(1 << 30).unwrap();
/// Default `batch.max_events`.
pub const DEFAULT_BATCH_EVENTS: NonZeroUsize = NonZeroUsize::new(100).unwrap();
/// Default `batch.max_bytes`.
pub const DEFAULT_BATCH_BYTES: ByteSize = ByteSize::new(1 << 20).unwrap();
/// Default `batch.linger`: short beside a request's round trip, long enough to fill batches at
/// high rates.
pub const DEFAULT_BATCH_LINGER: Duration = Duration::from_millis(10);
/// Default spool segment size.
pub const DEFAULT_SPOOL_SEGMENT_SIZE: ByteSize = ByteSize::new(64 << 20).unwrap();
/// Default fsync interval of the spool.
pub const DEFAULT_SPOOL_FSYNC: FsyncPolicy = FsyncPolicy::Interval(Duration::from_secs(1));
/// The URL of a config without a webhook section (nothing is sent to it: the webhook is off).
pub const DEFAULT_URL: &str = "http://127.0.0.1:80/";

/// A number of bytes, never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ByteSize(NonZeroU64);

impl ByteSize {
    /// `bytes`, unless it is zero.
    pub const fn new(bytes: u64) -> Option<ByteSize> {
        match NonZeroU64::new(bytes) {
            Some(bytes) => Some(ByteSize(bytes)),
            None => None,
        }
    }

    /// The number of bytes.
    pub const fn get(self) -> u64 {
        self.0.get()
    }

    /// The number of bytes as a `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.get()).unwrap_or(usize::MAX)
    }
}

/// The filter: which events are wanted and how payloads are written. Handed to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct FilterSettings {
    /// Which events are delivered (OR-ed).
    pub rules: Vec<Rule>,
    /// How message payloads are written into bodies.
    pub encoding: PayloadEncoding,
    /// The named endpoints' names, in file order (from `Config::endpoints`), for the guest.
    #[serde(skip)]
    pub endpoints: Vec<String>,
}

impl FilterSettings {
    /// The endpoints that the rules selecting an event of `kind` with `topic` name, as a set:
    /// bit 0 is the default endpoint, bit `i + 1` named endpoint `i` (at most 63 of them).
    pub fn endpoint_slots(&self, kind: EventKind, topic: Option<&str>) -> u64 {
        self.rules.iter().filter(|rule| rule.selects(kind, topic)).fold(0, |slots, rule| {
            let slot = match rule.endpoint.as_deref() {
                None | Some(super::DEFAULT_ENDPOINT) => 0,
                Some(name) => self.endpoints.iter().position(|known| known == name).map_or(0, |named| named + 1),
            };
            slots | 1 << slot
        })
    }

    /// Whether some rule selects an event of `kind` with `topic` (`None`: it carries none).
    pub fn selects(&self, kind: EventKind, topic: Option<&str>) -> bool {
        self.rules.iter().any(|rule| rule.selects(kind, topic))
    }

    /// What the rules select of each event kind, indexed by [`EventKind::index`].
    pub fn kind_rules(&self) -> [KindRules; 12] {
        let mut kinds = [KindRules::None; 12];
        for rule in &self.rules {
            let kind = &mut kinds[rule.event.index()];
            *kind = match (rule.topic.as_ref(), *kind) {
                (None, _) | (_, KindRules::EveryTopic) => KindRules::EveryTopic,
                (Some(_), _) => KindRules::ByTopic,
            };
        }
        kinds
    }
}

/// What the rules select of one event kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KindRules {
    /// No rule names the kind.
    None = 0,
    /// Some rule without a topic filter names it: every event of the kind is selected.
    EveryTopic = 1,
    /// Only rules with a topic filter name it.
    ByTopic = 2,
}

impl KindRules {
    /// The value `self as u8` gave.
    pub(crate) fn from_u8(value: u8) -> KindRules {
        match value {
            1 => KindRules::EveryTopic,
            2 => KindRules::ByTopic,
            _ => KindRules::None,
        }
    }
}

/// One rule: an event kind and an optional topic filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// The event kind.
    #[serde(serialize_with = "serialize_config_name")]
    pub event: EventKind,
    /// MQTT topic filter; `None` matches every topic.
    pub topic: Option<String>,
    /// The named endpoint its events go to; `None` (or `default`) is `webhook.url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl Rule {
    /// Whether this rule selects an event of `kind` with `topic`: a topic filter applies only to
    /// events that carry a topic, as in the default guest.
    pub fn selects(&self, kind: EventKind, topic: Option<&str>) -> bool {
        self.event == kind
            && match (&self.topic, topic) {
                (Some(filter), Some(topic)) => mqhook_guest_nanomq::topic::filter_matches(filter, topic),
                _ => true,
            }
    }
}

/// A named endpoint (`webhook.endpoints`): its own URL, pool, timeout, TLS, retries, signing and
/// dead-letter file, and its own queue share, health and backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedEndpoint {
    /// What rules and guests call it; also its `endpoint` label in metrics.
    pub name: String,
    /// Where and how its requests are sent.
    #[serde(flatten)]
    pub delivery: DeliveryConfig,
}

/// Payload encodings of spec §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncoding {
    /// The payload as a JSON string.
    #[default]
    Plain,
    /// RFC 4648 base64.
    Base64,
    /// Big-integer base 62.
    Base62,
}

impl PayloadEncoding {
    /// Accepted spellings, for error messages.
    pub const ACCEPTED: &'static str = "plain, base64, base62";
}

/// Delivery: where requests go and how they are sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryConfig {
    /// Where requests go (`http://…` or `https://…`).
    #[serde(serialize_with = "serialize_display")]
    pub url: http::Uri,
    /// Headers sent with every request, in file order.
    pub headers: Vec<Header>,
    /// The connection pool.
    #[serde(flatten)]
    pub pool: PoolSettings,
    /// Each request is abandoned after this long (`cancel_timeout`).
    #[serde(rename = "cancel_timeout_ms", serialize_with = "serialize_millis")]
    pub timeout: Duration,
    /// Certificate files for `https://` URLs.
    pub tls: Option<TlsFiles>,
    /// How failed requests are retried.
    pub retry: RetrySettings,
    /// Where requests that failed for good are written, for `mqhook replay`.
    pub dead_letter: Option<PathBuf>,
    /// Whether each client's events are delivered in order.
    pub ordering: DeliveryOrder,
    /// Standard Webhooks signing, when configured (`signing { secrets = [ … ] }`).
    pub signing: Option<Signing>,
    /// Several events per request, when configured (`batch { … }`); `None` sends one request per
    /// event.
    pub batch: Option<BatchSettings>,
}

/// Batching: events are gathered into one request of at most `max_events` events and
/// `max_bytes` of body, waiting at most `linger` for more once the first is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BatchSettings {
    /// Events in one batch at most (`batch.max_events`).
    pub max_events: NonZeroUsize,
    /// Bytes of one batch's body at most, framing included (`batch.max_bytes`); a larger event
    /// goes in a batch of its own.
    pub max_bytes: ByteSize,
    /// How long a batch waits for more events once it has one (`batch.linger`).
    #[serde(rename = "linger_ms", serialize_with = "serialize_millis")]
    pub linger: Duration,
    /// How the bodies are put together (`batch.format`).
    pub format: BatchFormat,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_events: DEFAULT_BATCH_EVENTS,
            max_bytes: DEFAULT_BATCH_BYTES,
            linger: DEFAULT_BATCH_LINGER,
            format: BatchFormat::Json,
        }
    }
}

/// A batch's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchFormat {
    /// A JSON array of the bodies, `[b1,b2,…]` (`application/json`); each body must be one JSON
    /// value.
    Json,
    /// Each body followed by `\n` (`application/x-ndjson`); no body may hold a raw line break.
    Ndjson,
}

impl BatchFormat {
    /// Accepted spellings, for error messages.
    pub const ACCEPTED: &'static str = "json, ndjson";

    /// The `Content-Type` of a batch in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            BatchFormat::Json => "application/json",
            BatchFormat::Ndjson => "application/x-ndjson",
        }
    }
}

/// Signing per the Standard Webhooks specification: each request gets `webhook-id` (its
/// idempotency key), `webhook-timestamp` (the attempt's Unix time, seconds) and
/// `webhook-signature`, one `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` per secret, space
/// separated, so that keys can rotate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signing {
    /// The keys, decoded from their `whsec_<base64>` form; never printed.
    pub secrets: Vec<SigningKey>,
}

/// One signing key. `Debug` and `Serialize` show `<redacted>`, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(pub Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SigningKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            url: http::Uri::from_static(DEFAULT_URL),
            headers: Vec::new(),
            pool: PoolSettings::default(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
            tls: None,
            retry: RetrySettings::default(),
            dead_letter: None,
            ordering: DeliveryOrder::None,
            signing: None,
            batch: None,
        }
    }
}

/// The keep-alive connection pool, fed to hyper-util's client builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolSettings {
    /// At most this many requests are in flight, each on its own connection (`pool_size`).
    pub pool_size: NonZeroUsize,
    /// An idle connection is closed after this long (`pool_idle_timeout`).
    #[serde(rename = "pool_idle_timeout_ms", serialize_with = "serialize_millis")]
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings { pool_size: DEFAULT_POOL_SIZE, idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT }
    }
}

/// One HTTP header from the config, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The name.
    pub name: HeaderName,
    /// The value; marked sensitive for credentials (see [`Header::new`]).
    pub value: HeaderValue,
}

/// Header names whose values are credentials: never printed (`mqhook check` writes them redacted)
/// and marked sensitive for hyper.
pub const SECRET_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token"];

impl Header {
    /// A header; a value of one of the [`SECRET_HEADERS`] is marked sensitive.
    pub fn new(name: HeaderName, value: HeaderValue) -> Header {
        let secret = SECRET_HEADERS.contains(&name.as_str());
        Header::with_secrecy(name, value, secret)
    }

    /// A header whose value is marked sensitive when `secret` (a value read from `env:`/`file:`
    /// always is) or when the name is one of the [`SECRET_HEADERS`].
    pub fn with_secrecy(name: HeaderName, mut value: HeaderValue, secret: bool) -> Header {
        if secret || SECRET_HEADERS.contains(&name.as_str()) {
            value.set_sensitive(true);
        }
        Header { name, value }
    }
}

impl Serialize for Header {
    /// `{"name": …, "value": …}`, the value redacted when it is sensitive.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let value = if self.value.is_sensitive() {
            "<redacted>".into()
        } else {
            String::from_utf8_lossy(self.value.as_bytes())
        };
        let mut header = s.serialize_struct("Header", 2)?;
        header.serialize_field("name", self.name.as_str())?;
        header.serialize_field("value", &value)?;
        header.end()
    }
}

/// Delivery order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOrder {
    /// Requests go out as the pool has room; a retried one may land after later ones.
    None,
    /// Requests of one client id go out one at a time, in order (a retry holds back that client
    /// only); different clients in parallel. Events run through one guest worker, so that the
    /// guest, too, sees each client's events in order.
    PerClient,
}

/// When and how often a failed request is tried again. The decisions over these settings are
/// delivery's (`delivery::retry`): transient failures are retried without limit unless
/// `max_attempts` or `max_age` says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct RetrySettings {
    /// Attempts in all, the first included (1 means no retries); `None`, the default: no limit.
    pub max_attempts: Option<NonZeroU32>,
    /// The endpoint's backoff between probes during an outage.
    #[serde(flatten)]
    pub backoff: Backoff,
    /// No attempt starts later than this after the first one; `None`, the default: no limit.
    #[serde(rename = "max_age_ms", serialize_with = "serialize_optional_millis")]
    pub max_age: Option<Duration>,
    /// A request whose body is larger is sent once and never retried; `None`: every body is.
    pub max_replay_size: Option<ByteSize>,
}

/// Exponential backoff bounds: the first wait and the longest one. `base <= cap` always holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Backoff {
    #[serde(rename = "base_ms", serialize_with = "serialize_millis")]
    base: Duration,
    #[serde(rename = "cap_ms", serialize_with = "serialize_millis")]
    cap: Duration,
}

/// A backoff whose base is longer than its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the backoff base ({base:?}) is longer than its cap ({cap:?})")]
pub struct InvalidBackoff {
    /// The base asked for.
    pub base: Duration,
    /// The cap asked for.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::DEFAULT
    }
}

impl Backoff {
    /// 200 ms, doubling up to 10 s.
    pub const DEFAULT: Backoff = Backoff { base: Duration::from_millis(200), cap: Duration::from_secs(10) };

    /// Bounds from `base` up to `cap`; refused when `base > cap`.
    pub fn new(base: Duration, cap: Duration) -> Result<Backoff, InvalidBackoff> {
        if base > cap {
            return Err(InvalidBackoff { base, cap });
        }
        Ok(Backoff { base, cap })
    }

    /// The wait before the second attempt (before jitter); it doubles for each one after.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The longest wait between two attempts.
    pub fn cap(&self) -> Duration {
        self.cap
    }
}

/// TLS files (`tls { … }` or NanoMQ's `ssl { … }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsFiles {
    /// The block's key as the file spells it (`webhook.tls`, `webhook.ssl`, `web.hook.ssl`), for
    /// errors about its files.
    #[serde(skip)]
    pub section: String,
    /// Client private key (PEM), for mTLS.
    pub keyfile: Option<PathBuf>,
    /// Client certificate chain (PEM), for mTLS.
    pub certfile: Option<PathBuf>,
    /// CA bundle (PEM) the server is verified against; the system roots when absent.
    pub cacertfile: Option<PathBuf>,
    /// `verify = false` accepts any server certificate (NanoMQ's key; logged as a warning).
    pub verify: bool,
    /// The name sent as SNI and checked against the server's certificate.
    pub server_name: ServerNameCheck,
}

/// `server_name_indication`, as NanoMQ documents it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerNameCheck {
    /// The URL's host (the default, and `true`).
    Url,
    /// `false`: no SNI, and a certificate for another name is accepted (the chain is still checked).
    Off,
    /// A host name to send and check instead of the URL's.
    Name(String),
}

impl Default for TlsFiles {
    /// No files: the system's roots, no client certificate.
    fn default() -> Self {
        TlsFiles {
            section: "webhook.tls".into(),
            keyfile: None,
            certfile: None,
            cacertfile: None,
            verify: true,
            server_name: ServerNameCheck::Url,
        }
    }
}

/// The filter guest and the limits of its sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestConfig {
    /// A component file; `None` runs the built-in NanoMQ guest.
    pub path: Option<PathBuf>,
    /// Cap on each guest instance's linear memory.
    pub memory_limit: ByteSize,
    /// Cap on each guest call.
    #[serde(rename = "timeout_ms", serialize_with = "serialize_millis")]
    pub timeout: Duration,
    /// Cap on the core wasm instances each guest instance may create in its store: a Rust guest
    /// needs 3, tools that build a component from several modules (componentize-py) more.
    pub max_instances: NonZeroUsize,
    /// Cap on the body a guest returns; a larger one drops the event.
    pub max_body: ByteSize,
    /// A newly swapped-in guest whose calls fail this many times in a row is replaced by the
    /// guest it replaced.
    pub rollback_after: NonZeroU64,
    /// Guest instances (threads) running in parallel.
    pub workers: NonZeroUsize,
    /// Free-form settings handed to the guest, in file order.
    pub settings: Vec<(String, String)>,
    /// Where compiled guests are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// What happens to an event whose guest call fails.
    pub on_failure: FailurePolicy,
}

impl Default for GuestConfig {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
        GuestConfig {
            path: None,
            memory_limit: DEFAULT_GUEST_MEMORY,
            timeout: DEFAULT_GUEST_TIMEOUT,
            max_instances: DEFAULT_GUEST_MAX_INSTANCES,
            max_body: DEFAULT_GUEST_MAX_BODY,
            rollback_after: DEFAULT_ROLLBACK_AFTER,
            workers: NonZeroUsize::new(workers).unwrap_or(NonZeroUsize::MIN),
            settings: Vec::new(),
            cache_dir: default_cache_dir(),
            on_failure: FailurePolicy::Skip,
        }
    }
}

/// Where compiled guests are kept by default: `$XDG_CACHE_HOME/mqhook`, else `~/.cache/mqhook`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|dir| !dir.is_empty())?).join(".cache"),
    };
    Some(base.join("mqhook"))
}

/// The fate of an event whose guest call trapped, timed out or returned an invalid delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// The event is dropped (counted as failed, logged).
    Skip,
    /// The event is delivered with the built-in NanoMQ guest's body instead.
    Builtin,
    /// The built-in NanoMQ guest's body for the event goes to the dead-letter file, for replay.
    DeadLetter,
}

impl FailurePolicy {
    /// Accepted spellings, for error messages.
    pub const ACCEPTED: &'static str = "skip, builtin, dead_letter";
}

/// The two in-memory queues: events waiting for the guest, and requests waiting for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueConfig {
    /// Events that may wait for the guest before a broker's events are refused
    /// (`queues.events`; `queue_size` sets it too).
    pub events: NonZeroUsize,
    /// Requests the delivery queue holds in memory (`queues.requests`; `queue_size` sets it too).
    /// With a spool the rest wait on disk; without one the guest workers wait.
    pub requests: NonZeroUsize,
    /// Bytes of bodies the delivery queue holds in memory at most (`queues.request_bytes`).
    pub request_bytes: ByteSize,
    /// What a broker's hook does when the runtime queue is full (`queues.when_full`).
    pub when_full: WhenFull,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            events: DEFAULT_QUEUE_LENGTH,
            requests: DEFAULT_QUEUE_LENGTH,
            request_bytes: DEFAULT_QUEUE_BYTES,
            when_full: WhenFull::Block,
        }
    }
}

/// What a broker's hook does with an event when the runtime queue is full. NDJSON input always
/// waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Waits for room, on the publishing client's own connection task: MQTT flow control and TCP
    /// slow that publisher down; other clients and the broker's other tasks go on.
    #[default]
    Block,
    /// Waits at most this long, then drops the event (counted as rejected).
    Wait(#[serde(serialize_with = "serialize_millis")] Duration),
    /// Drops the event at once (counted as rejected), never slowing a publisher.
    DropNew,
}

/// The embedded broker's limits (`broker { … }`): what one client or a crowd of them may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BrokerLimits {
    /// A larger MQTT packet closes its connection.
    pub max_packet_size: ByteSize,
    /// Connections at once; more are refused.
    pub max_connections: NonZeroUsize,
    /// QoS 1 and 2 messages a client may have in flight towards the broker (receive maximum).
    pub max_inflight: NonZeroU16,
    /// A connection that has not completed CONNECT by then is closed.
    #[serde(rename = "connect_timeout_ms", serialize_with = "serialize_millis")]
    pub connect_timeout: Duration,
}

impl Default for BrokerLimits {
    /// 1 MiB packets, 10,000 connections, 16 in flight, 10 s to CONNECT.
    fn default() -> Self {
        BrokerLimits {
            max_packet_size: ByteSize::new(1 << 20).unwrap(),
            max_connections: NonZeroUsize::new(10_000).unwrap(),
            max_inflight: NonZeroU16::new(16).unwrap(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// The bridge ingest (`bridge { … }`): mqhook subscribes to an existing broker as an MQTT client,
/// and acknowledges each QoS 1/2 message only once it is safe. Read by `ingest::bridge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BridgeConfig {
    /// The broker (`mqtt://host:port`, `mqtts://host:port`); `--ingest mqtt://…` overrides it.
    pub url: Option<BridgeUrl>,
    /// The MQTT client id; each process of a share group needs its own. Default `mqhook-<host>`.
    pub client_id: String,
    /// The CONNECT username.
    pub username: Option<String>,
    /// The CONNECT password (`password`, `password_file` or `password_env`); never printed.
    pub password: Option<Secret>,
    /// TLS for `mqtts://` (the same keys as `webhook.tls`).
    pub tls: Option<TlsFiles>,
    /// Topic filters to subscribe to; empty: those of the publish rules (see `ingest::bridge`).
    pub subscriptions: Vec<String>,
    /// Subscribe as `$share/<group>/<filter>`, so the processes of one group split the messages.
    pub share_group: Option<String>,
    /// How the broker spreads a share group's messages (`any`, or `hash_clientid`).
    pub share_strategy: ShareStrategy,
    /// The QoS of the subscriptions.
    pub qos: u8,
    /// `false` (the default) keeps the session, and what is published meanwhile, across restarts.
    pub clean_start: bool,
    /// How long the broker keeps the session after a disconnect (MQTT 5).
    #[serde(rename = "session_expiry_ms", serialize_with = "serialize_millis")]
    pub session_expiry: Duration,
    /// MQTT keep alive.
    #[serde(rename = "keepalive_ms", serialize_with = "serialize_millis")]
    pub keepalive: Duration,
    /// MQTT 5 (the default) or 3.1.1.
    pub protocol: MqttVersion,
    /// QoS 1/2 messages the broker may send before the bridge acknowledges (MQTT 5's receive
    /// maximum; with 3.1.1 the broker's own in-flight limit applies).
    pub receive_maximum: NonZeroU16,
    /// A larger incoming packet closes the connection.
    pub max_packet_size: ByteSize,
    /// The MQTT 5 user property that carries the publisher's client id, when the broker adds one.
    pub from_client_id_property: Option<String>,
    /// The MQTT 5 user property that carries the publisher's username, when the broker adds one.
    pub from_username_property: Option<String>,
}

impl Default for BridgeConfig {
    /// No broker; session kept for an hour; MQTT 5, QoS 1, 30 s keep alive, 64 in flight.
    fn default() -> Self {
        BridgeConfig {
            url: None,
            client_id: default_client_id(),
            username: None,
            password: None,
            tls: None,
            subscriptions: Vec::new(),
            share_group: None,
            share_strategy: ShareStrategy::Any,
            qos: 1,
            clean_start: false,
            session_expiry: DEFAULT_BRIDGE_SESSION_EXPIRY,
            keepalive: Duration::from_secs(30),
            protocol: MqttVersion::V5,
            receive_maximum: NonZeroU16::new(64).unwrap(),
            max_packet_size: ByteSize::new(1 << 20).unwrap(),
            from_client_id_property: None,
            from_username_property: None,
        }
    }
}

/// Default `bridge.session_expiry`: a restart or a short outage of mqhook loses nothing.
pub const DEFAULT_BRIDGE_SESSION_EXPIRY: Duration = Duration::from_secs(3600);

/// `mqhook-<host name>`, so that processes on different machines do not take over each other's
/// session.
fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String =
        host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(40).collect();
    if host.is_empty() {
        "mqhook".into()
    } else {
        format!("mqhook-{host}")
    }
}

/// A broker's address: `mqtt://host:port` or `mqtts://host:port` (port 1883 / 8883 by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeUrl {
    /// `mqtts://`.
    pub tls: bool,
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl BridgeUrl {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]`; the message says what is wrong (and
    /// never repeats credentials).
    pub fn parse(text: &str) -> Result<BridgeUrl, String> {
        let (tls, rest) = match text.split_once("://") {
            Some(("mqtt", rest)) => (false, rest),
            Some(("mqtts", rest)) => (true, rest),
            _ => return Err(format!("`{text}` must start with mqtt:// or mqtts://")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            return Err("must not carry credentials (`user:password@`); set `username` and `password`".into());
        }
        if authority.contains('/') || authority.contains('?') {
            return Err(format!("`{text}` must be only mqtt[s]://host:port"));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, _)) if host.contains(':') && !host.ends_with(']') => (authority, default_port),
            Some((host, port)) => {
                (host, port.parse::<u16>().map_err(|_| format!("`{port}` is not a port, in `{text}`"))?)
            }
            None => (authority, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{text}` has no host"));
        }
        Ok(BridgeUrl { tls, host: host.to_string(), port })
    }
}

impl std::fmt::Display for BridgeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for BridgeUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A credential: printed and serialized as `<redacted>`, never as itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// How the broker dispatches a share group's messages among its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareStrategy {
    /// Any member may get any message (the default of every broker): no per-client order.
    Any,
    /// The broker sends all of one publisher's messages to the same member (EMQX's
    /// `hash_clientid`), so `ordering = per_client` holds across the group.
    HashClientid,
}

/// The MQTT protocol version the bridge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MqttVersion {
    /// MQTT 3.1.1.
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.0.
    #[serde(rename = "5")]
    V5,
}

/// The spool (`spool { … }`): where and how requests are kept on disk until delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpoolConfig {
    /// The spool directory, created if missing. One running mqhook per directory (a lock file
    /// enforces it).
    pub dir: PathBuf,
    /// Bytes on disk at most; beyond it `on_full` decides.
    pub max_size: ByteSize,
    /// A segment file is closed and a new one begun past this size.
    pub segment_size: ByteSize,
    /// When written records are flushed to the disk itself.
    pub fsync: FsyncPolicy,
    /// What a full spool does.
    pub on_full: FullPolicy,
}

impl SpoolConfig {
    /// A spool in `dir` with the default size, segments, fsync and full policy.
    pub fn in_dir(dir: PathBuf) -> SpoolConfig {
        SpoolConfig {
            dir,
            max_size: DEFAULT_SPOOL_MAX_SIZE,
            segment_size: DEFAULT_SPOOL_SEGMENT_SIZE,
            fsync: DEFAULT_SPOOL_FSYNC,
            on_full: FullPolicy::Block,
        }
    }
}

/// When the spool calls `fsync`. A killed process loses nothing either way (the data is in the
/// kernel); this is about power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After every batch written.
    Always,
    /// After a batch when this long has passed since the last sync.
    Interval(#[serde(serialize_with = "serialize_millis")] Duration),
    /// Never; the OS writes back when it likes.
    Never,
}

/// What a full spool does with a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Makes the guest workers wait until delivery frees room, and so, further up, the ingest
    /// (the default: nothing is dropped; the publishers slow down).
    Block,
    /// Deletes its oldest segment, undelivered requests and all (counted as dropped).
    DropOldest,
    /// Refuses the new request (counted as dropped).
    RejectNew,
}

fn serialize_display<S: serde::Serializer, T: std::fmt::Display>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn serialize_millis<S: serde::Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
}

fn serialize_optional_millis<S: serde::Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(duration) => serialize_millis(duration, s),
        None => s.serialize_none(),
    }
}

fn serialize_config_name<S: serde::Serializer>(value: &EventKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&value.config_name())
}
