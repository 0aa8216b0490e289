//! Configuration: one typed [`Config`], whatever the file's syntax.
//!
//! Three syntaxes parse into a shared tree ([`tree`]), and [`typed`] checks that tree once into a
//! `Config`; every error names the file, the line and the key, and lists the accepted values.
//! - NanoMQ's HOCON `nanomq.conf`: its `webhook { … }` block ([`hocon`]);
//! - NanoMQ's old `web.hook.*=…` lines ([`legacy`]), detected by their prefix;
//! - HCL for files ending in `.hcl` ([`hcl`]), mqhook's native format.

mod hcl;
mod hocon;
mod legacy;
mod tree;
mod typed;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::delivery::retry::RetryPolicy;
use crate::event::EventKind;

/// The webhook configuration the runtime runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// `false` when the file disables the webhook (`enable = false`) or has no webhook section.
    pub enabled: bool,
    /// Where requests go (`http://…`).
    #[serde(serialize_with = "serialize_display")]
    pub url: http::Uri,
    /// Headers sent with every request, in file order.
    pub headers: Vec<Header>,
    /// How message payloads are written into bodies.
    pub encoding: PayloadEncoding,
    /// At most this many requests are in flight to the endpoint.
    pub pool_size: NonZeroUsize,
    /// Each request is abandoned after this long.
    #[serde(rename = "cancel_timeout_ms", serialize_with = "serialize_millis")]
    pub cancel_timeout: Duration,
    /// Certificate files for `https://` URLs.
    pub tls: Option<TlsFiles>,
    /// How failed requests are retried.
    pub retry: RetryPolicy,
    /// Where requests that failed for good are written, for `mqhook replay`.
    pub dead_letter: Option<PathBuf>,
    /// Which events are delivered (OR-ed).
    pub rules: Vec<Rule>,
    /// The filter guest and its sandbox.
    pub guest: GuestConfig,
    /// How many accepted events may wait for the guest before `try_submit` refuses more; also how
    /// many requests the delivery queue holds in memory.
    pub queue_size: NonZeroUsize,
    /// The durable on-disk queue in front of delivery; `None` keeps requests in memory only.
    pub spool: Option<SpoolConfig>,
    /// Whether each client's events are delivered in order.
    pub ordering: DeliveryOrder,
}

/// The spool (`spool { … }`): where and how requests are kept on disk until delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpoolConfig {
    /// The spool directory, created if missing. One running mqhook per directory (a lock file
    /// enforces it).
    pub dir: PathBuf,
    /// Bytes on disk at most; beyond it `on_full` decides.
    pub max_size: u64,
    /// A segment file is closed and a new one begun past this size.
    pub segment_size: u64,
    /// When written records are flushed to the disk itself.
    pub fsync: FsyncPolicy,
    /// What a full spool does.
    pub on_full: FullPolicy,
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
    /// Deletes its oldest segment, undelivered requests and all (counted as dropped).
    DropOldest,
    /// Refuses the new request (counted as dropped).
    RejectNew,
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

/// One HTTP header from the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    /// Header name as written.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// Payload encodings of spec §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncoding {
    /// The payload as a JSON string.
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

/// One rule: an event kind and an optional topic filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// The event kind.
    #[serde(serialize_with = "serialize_config_name")]
    pub event: EventKind,
    /// MQTT topic filter; `None` matches every topic.
    pub topic: Option<String>,
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
#[derive(Debug, Clone, Serialize)]
pub struct GuestConfig {
    /// A component file; `None` runs the built-in NanoMQ guest.
    pub path: Option<PathBuf>,
    /// Cap on each guest instance's linear memory, bytes.
    pub memory_limit: u64,
    /// Cap on each guest call.
    #[serde(rename = "timeout_ms", serialize_with = "serialize_millis")]
    pub timeout: Duration,
    /// Cap on the body a guest returns, bytes; a larger one drops the event.
    pub max_body: u64,
    /// A newly swapped-in guest whose calls fail this many times in a row is replaced by the
    /// guest it replaced.
    pub rollback_after: u64,
    /// Guest instances (threads) running in parallel.
    pub workers: NonZeroUsize,
    /// Free-form settings handed to the guest, in file order.
    pub settings: Vec<(String, String)>,
    /// Where compiled guests are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// What happens to an event whose guest call fails.
    pub on_failure: FailurePolicy,
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

/// Default cap on guest memory: 64 MiB.
pub const DEFAULT_GUEST_MEMORY: u64 = 64 << 20;
/// Default cap on one guest call. Generous because base62 of a large payload is inherently
/// superlinear (the whole payload is one big integer): 64 KiB takes tens of milliseconds in wasm.
pub const DEFAULT_GUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// Default cap on a guest's body: 16 MiB.
pub const DEFAULT_GUEST_MAX_BODY: u64 = 16 << 20;
/// Default failures in a row that roll a newly swapped guest back.
pub const DEFAULT_ROLLBACK_AFTER: u64 = 10;
/// Default `pool_size`, as NanoMQ.
pub const DEFAULT_POOL_SIZE: usize = 32;
/// Default `cancel_timeout`, as NanoMQ.
pub const DEFAULT_CANCEL_TIMEOUT: Duration = Duration::from_millis(5000);
/// Default bound of the runtime queue.
pub const DEFAULT_QUEUE_SIZE: usize = 65_536;
/// Default cap on the spool's size on disk: 1 GiB.
pub const DEFAULT_SPOOL_MAX_SIZE: u64 = 1 << 30;
/// Default spool segment size: 64 MiB.
pub const DEFAULT_SPOOL_SEGMENT_SIZE: u64 = 64 << 20;
/// Default fsync interval of the spool.
pub const DEFAULT_SPOOL_FSYNC: FsyncPolicy = FsyncPolicy::Interval(Duration::from_secs(1));

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the config: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid in its syntax.
    #[error("{file}:{line}:{column}: syntax error: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A key has a value mqhook does not accept.
    #[error("{file}:{line}: `{key}`: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line of the key.
        line: usize,
        /// The full key, e.g. `webhook.events[1].event`.
        key: String,
        /// What is wrong and what is accepted.
        message: String,
    },
}

impl ConfigError {
    /// The line the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. } => Some(*line),
        }
    }
}

/// The syntax of a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// NanoMQ's HOCON.
    Hocon,
    /// NanoMQ's old `web.hook.*` key=value format.
    Legacy,
    /// HCL.
    Hcl,
}

impl Syntax {
    /// Chooses by extension (`.hcl`) and content (`web.hook.` lines); HOCON otherwise.
    pub fn detect(path: &Path, text: &str) -> Syntax {
        if path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("hcl")) {
            Syntax::Hcl
        } else if legacy::detect(text) {
            Syntax::Legacy
        } else {
            Syntax::Hocon
        }
    }
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { file: path.to_path_buf(), source })?;
        Config::parse(&text, path, Syntax::detect(path, &text))
    }

    /// Checks config text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path, syntax: Syntax) -> Result<Config, ConfigError> {
        let tree = match syntax {
            Syntax::Hocon => hocon::parse(text),
            Syntax::Legacy => legacy::parse(text),
            Syntax::Hcl => hcl::parse(text),
        }
        .map_err(|e| ConfigError::Syntax {
            file: path.to_path_buf(),
            line: e.line,
            column: e.column,
            message: e.message,
        })?;
        let mut config = typed::config_from_tree(&tree, path).map_err(|error| match (syntax, error) {
            (Syntax::Legacy, ConfigError::Invalid { file, line, key, message }) => {
                ConfigError::Invalid { file, line, key: legacy::spelling(&key), message }
            }
            (_, error) => error,
        })?;
        if let (Syntax::Legacy, Some(tls)) = (syntax, &mut config.tls) {
            tls.section = legacy::spelling(&tls.section);
        }
        Ok(config)
    }

    /// The event kinds some rule selects, indexed by [`EventKind::index`].
    pub fn wanted_kinds(&self) -> [bool; 12] {
        let mut wanted = [false; 12];
        for rule in &self.rules {
            wanted[rule.event.index()] = true;
        }
        wanted
    }
}

fn serialize_display<S: serde::Serializer, T: std::fmt::Display>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

pub(crate) fn serialize_millis<S: serde::Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(value.as_millis() as u64)
}

pub(crate) fn serialize_optional_millis<S: serde::Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(duration) => serialize_millis(duration, s),
        None => s.serialize_none(),
    }
}

fn serialize_config_name<S: serde::Serializer>(value: &EventKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&value.config_name())
}
