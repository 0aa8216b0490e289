//! Turns the syntax-neutral tree into a checked [`Config`]: defaults, types, accepted values.
//!
//! Every error names the file, the line and the full key (`webhook.events[1].event`) and says what
//! is accepted. Unknown keys inside the webhook section are errors too: a typo must not silently
//! fall back to a default.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tree::{Node, Value};
use super::{
    Config, ConfigError, DeliveryOrder, FailurePolicy, FsyncPolicy, FullPolicy, GuestConfig, Header, PayloadEncoding,
    Rule, ServerNameCheck, SpoolConfig, TlsFiles, DEFAULT_CANCEL_TIMEOUT, DEFAULT_GUEST_MAX_BODY, DEFAULT_GUEST_MEMORY,
    DEFAULT_GUEST_TIMEOUT, DEFAULT_POOL_SIZE, DEFAULT_QUEUE_SIZE, DEFAULT_ROLLBACK_AFTER, DEFAULT_SPOOL_FSYNC,
    DEFAULT_SPOOL_MAX_SIZE, DEFAULT_SPOOL_SEGMENT_SIZE,
};
use crate::delivery::retry::RetryPolicy;
use crate::event::EventKind;

const WEBHOOK_KEYS: &[&str] = &[
    "enable", "url", "headers", "body", "pool_size", "cancel_timeout", "tls", "ssl", "events", "guest", "queue_size",
    "retry", "dead_letter", "spool", "ordering",
];
const SPOOL_KEYS: &[&str] = &["dir", "max_size", "segment_size", "fsync", "on_full"];
const RETRY_KEYS: &[&str] = &["max_attempts", "base", "cap", "max_age"];
const TLS_KEYS: &[&str] = &["enable", "keyfile", "certfile", "cacertfile", "verify", "server_name_indication"];
const GUEST_KEYS: &[&str] =
    &["path", "memory_limit", "timeout", "workers", "settings", "max_body", "rollback_after", "cache_dir", "on_failure"];
const DEFAULT_URL: &str = "http://127.0.0.1:80/";

pub(crate) fn config_from_tree(root: &Node, file: &Path) -> Result<Config, ConfigError> {
    let ctx = Ctx { file };
    let Some(webhook) = root.get("webhook") else {
        return Ok(disabled_default());
    };
    let fields = ctx.object(webhook, "webhook")?;
    ctx.reject_unknown(fields, "webhook", WEBHOOK_KEYS)?;
    let get = |key: &str| webhook.get(key);

    let enabled = match get("enable") {
        Some(node) => ctx.boolean(node, "webhook.enable")?,
        None => true,
    };
    let url = match get("url") {
        Some(node) => ctx.url(node, "webhook.url")?,
        None if enabled => {
            return Err(ctx.invalid(webhook, "webhook.url", "is required: the URL webhooks are POSTed to"))
        }
        None => DEFAULT_URL.parse().expect("the default URL is valid"),
    };
    let headers = match get("headers") {
        Some(node) => ctx.headers(node)?,
        None => Vec::new(),
    };
    let encoding = match get("body") {
        Some(body) => {
            let fields = ctx.object(body, "webhook.body")?;
            ctx.reject_unknown(fields, "webhook.body", &["encoding"])?;
            match body.get("encoding") {
                Some(node) => ctx.encoding(node, "webhook.body.encoding")?,
                None => PayloadEncoding::Plain,
            }
        }
        None => PayloadEncoding::Plain,
    };
    let pool_size = match get("pool_size") {
        Some(node) => ctx.positive(node, "webhook.pool_size")?,
        None => NonZeroUsize::new(DEFAULT_POOL_SIZE).expect("non-zero"),
    };
    let cancel_timeout = match get("cancel_timeout") {
        Some(node) => ctx.duration(node, "webhook.cancel_timeout")?,
        None => DEFAULT_CANCEL_TIMEOUT,
    };
    let tls = match (get("tls"), get("ssl")) {
        (Some(node), _) => ctx.tls(node, "webhook.tls")?,
        (None, Some(node)) => ctx.tls(node, "webhook.ssl")?,
        (None, None) => None,
    };
    let rules = match get("events") {
        Some(node) => ctx.rules(node)?,
        None => Vec::new(),
    };
    let guest = match get("guest") {
        Some(node) => ctx.guest(node)?,
        None => default_guest(),
    };
    let retry = match get("retry") {
        Some(node) => ctx.retry(node)?,
        None => RetryPolicy::default(),
    };
    let dead_letter = match get("dead_letter") {
        Some(node) => Some(ctx.path(node, "webhook.dead_letter")?),
        None => None,
    };
    if guest.on_failure == FailurePolicy::DeadLetter && dead_letter.is_none() {
        let node = get("guest").and_then(|g| g.get("on_failure")).unwrap_or(webhook);
        return Err(ctx.invalid(node, "webhook.guest.on_failure", "`dead_letter` needs `webhook.dead_letter` (a file)"));
    }
    let queue_size = match get("queue_size") {
        Some(node) => ctx.positive(node, "webhook.queue_size")?,
        None => NonZeroUsize::new(DEFAULT_QUEUE_SIZE).expect("non-zero"),
    };
    let spool = match get("spool") {
        Some(node) => Some(ctx.spool(node)?),
        None => None,
    };
    let ordering = match get("ordering") {
        Some(node) => match ctx.text(node, "webhook.ordering", "an ordering")? {
            "none" => DeliveryOrder::None,
            "per_client" => DeliveryOrder::PerClient,
            other => {
                return Err(ctx.invalid(node, "webhook.ordering", format!("unknown ordering `{other}`; accepted: none, per_client")))
            }
        },
        None => DeliveryOrder::None,
    };
    Ok(Config {
        enabled,
        url,
        headers,
        encoding,
        pool_size,
        cancel_timeout,
        tls,
        retry,
        dead_letter,
        rules,
        guest,
        queue_size,
        spool,
        ordering,
    })
}

fn disabled_default() -> Config {
    Config {
        enabled: false,
        url: DEFAULT_URL.parse().expect("the default URL is valid"),
        headers: Vec::new(),
        encoding: PayloadEncoding::Plain,
        pool_size: NonZeroUsize::new(DEFAULT_POOL_SIZE).expect("non-zero"),
        cancel_timeout: DEFAULT_CANCEL_TIMEOUT,
        tls: None,
        retry: RetryPolicy::default(),
        dead_letter: None,
        rules: Vec::new(),
        guest: default_guest(),
        queue_size: NonZeroUsize::new(DEFAULT_QUEUE_SIZE).expect("non-zero"),
        spool: None,
        ordering: DeliveryOrder::None,
    }
}

fn default_guest() -> GuestConfig {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
    GuestConfig {
        path: None,
        memory_limit: DEFAULT_GUEST_MEMORY,
        timeout: DEFAULT_GUEST_TIMEOUT,
        max_body: DEFAULT_GUEST_MAX_BODY,
        rollback_after: DEFAULT_ROLLBACK_AFTER,
        cache_dir: crate::guest::default_cache_dir(),
        on_failure: FailurePolicy::Skip,
        workers: NonZeroUsize::new(workers).expect("clamped to at least 1"),
        settings: Vec::new(),
    }
}

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn invalid(&self, node: &Node, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { file: self.file.to_path_buf(), line: node.line, key: key.to_string(), message: message.into() }
    }

    fn object<'n>(&self, node: &'n Node, key: &str) -> Result<&'n [(String, Node)], ConfigError> {
        match &node.value {
            Value::Object(fields) => Ok(fields),
            other => Err(self.invalid(node, key, format!("expected an object `{{ … }}`, found {}", describe(other)))),
        }
    }

    fn reject_unknown(&self, fields: &[(String, Node)], parent: &str, accepted: &[&str]) -> Result<(), ConfigError> {
        match fields.iter().find(|(key, _)| !accepted.contains(&key.as_str())) {
            Some((key, node)) => Err(self.invalid(
                node,
                &format!("{parent}.{key}"),
                format!("unknown key; accepted keys: {}", accepted.join(", ")),
            )),
            None => Ok(()),
        }
    }

    /// A scalar's text: quoted strings and bare tokens alike.
    fn text<'n>(&self, node: &'n Node, key: &str, expected: &str) -> Result<&'n str, ConfigError> {
        match &node.value {
            Value::Str(text) | Value::Bare(text) => Ok(text),
            other => Err(self.invalid(node, key, format!("expected {expected}, found {}", describe(other)))),
        }
    }

    fn string(&self, node: &Node, key: &str) -> Result<String, ConfigError> {
        self.text(node, key, "a string").map(str::to_string)
    }

    fn boolean(&self, node: &Node, key: &str) -> Result<bool, ConfigError> {
        let text = self.text(node, key, "true or false")?;
        match text.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" => Ok(true),
            "false" | "off" | "no" => Ok(false),
            _ => Err(self.invalid(node, key, format!("expected true or false, found `{text}`"))),
        }
    }

    fn positive(&self, node: &Node, key: &str) -> Result<NonZeroUsize, ConfigError> {
        let text = self.text(node, key, "a positive integer")?;
        match text.trim().parse::<usize>() {
            Ok(0) => Err(self.invalid(node, key, "must be at least 1, found 0")),
            Ok(n) => Ok(NonZeroUsize::new(n).expect("checked non-zero")),
            Err(_) => Err(self.invalid(node, key, format!("expected a positive integer, found `{text}`"))),
        }
    }

    /// Milliseconds as a bare number, or a number with a unit: `ms`, `s`, `m`.
    fn duration(&self, node: &Node, key: &str) -> Result<Duration, ConfigError> {
        let text = self.text(node, key, "a duration")?.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let amount: u64 = digits.parse().map_err(|_| {
            self.invalid(node, key, format!("expected a duration such as 5000 (ms), `500ms`, `5s` or `1m`, found `{text}`"))
        })?;
        let millis = match unit.trim() {
            "" | "ms" => Some(amount),
            "s" => amount.checked_mul(1000),
            "m" => amount.checked_mul(60_000),
            _ => None,
        };
        match millis {
            Some(0) => Err(self.invalid(node, key, "must be more than 0")),
            Some(ms) => Ok(Duration::from_millis(ms)),
            None => Err(self.invalid(node, key, format!("unknown unit in `{text}`; accepted: ms, s, m"))),
        }
    }

    /// Bytes as a bare number, or with a unit: KB, MB, GB (powers of 1024, as NanoMQ), KiB, MiB, GiB.
    fn size(&self, node: &Node, key: &str) -> Result<u64, ConfigError> {
        let text = self.text(node, key, "a size")?.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let amount: u64 = digits
            .parse()
            .map_err(|_| self.invalid(node, key, format!("expected a size such as `64MiB`, found `{text}`")))?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "kb" | "kib" => 10,
            "mb" | "mib" => 20,
            "gb" | "gib" => 30,
            _ => return Err(self.invalid(node, key, format!("unknown unit in `{text}`; accepted: B, KiB, MiB, GiB"))),
        };
        match amount.checked_shl(shift).filter(|bytes| *bytes >> shift == amount) {
            Some(0) => Err(self.invalid(node, key, "must be more than 0")),
            Some(bytes) => Ok(bytes),
            None => Err(self.invalid(node, key, format!("`{text}` is too large"))),
        }
    }

    fn url(&self, node: &Node, key: &str) -> Result<http::Uri, ConfigError> {
        let text = self.text(node, key, "a URL")?.trim();
        let uri: http::Uri = text
            .parse()
            .map_err(|e| self.invalid(node, key, format!("`{text}` is not a valid URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(self.invalid(node, key, format!("`{text}` must start with http:// or https://"))),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(self.invalid(node, key, format!("`{text}` has no host")));
        }
        Ok(uri)
    }

    fn encoding(&self, node: &Node, key: &str) -> Result<PayloadEncoding, ConfigError> {
        let text = self.text(node, key, "an encoding")?;
        match text.to_ascii_lowercase().as_str() {
            "plain" => Ok(PayloadEncoding::Plain),
            "base64" => Ok(PayloadEncoding::Base64),
            "base62" => Ok(PayloadEncoding::Base62),
            _ => Err(self.invalid(
                node,
                key,
                format!("unknown encoding `{text}`; accepted: {}", PayloadEncoding::ACCEPTED),
            )),
        }
    }

    fn headers(&self, node: &Node) -> Result<Vec<Header>, ConfigError> {
        let fields = self.object(node, "webhook.headers")?;
        let mut headers = Vec::with_capacity(fields.len());
        for (name, value_node) in fields {
            let key = format!("webhook.headers.{name}");
            let value = self.text(value_node, &key, "a header value")?;
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(self.invalid(value_node, &key, format!("`{name}` is not a valid HTTP header name")));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err(self.invalid(value_node, &key, "the value has characters not allowed in an HTTP header"));
            }
            headers.push(Header { name: name.clone(), value: value.to_string() });
        }
        Ok(headers)
    }

    fn tls(&self, node: &Node, key: &str) -> Result<Option<TlsFiles>, ConfigError> {
        let fields = self.object(node, key)?;
        self.reject_unknown(fields, key, TLS_KEYS)?;
        if let Some(enable) = node.get("enable") {
            if !self.boolean(enable, &format!("{key}.enable"))? {
                return Ok(None);
            }
        }
        let path = |name: &str| -> Result<Option<PathBuf>, ConfigError> {
            node.get(name).map(|n| self.path(n, &format!("{key}.{name}"))).transpose()
        };
        let verify = match node.get("verify") {
            Some(n) => self.boolean(n, &format!("{key}.verify"))?,
            None => true,
        };
        let server_name = match node.get("server_name_indication") {
            Some(n) => {
                let name_key = format!("{key}.server_name_indication");
                match self.text(n, &name_key, "true, false or a host name")? {
                    "true" => ServerNameCheck::Url,
                    "false" => ServerNameCheck::Off,
                    name => match rustls::pki_types::ServerName::try_from(name) {
                        Ok(_) => ServerNameCheck::Name(name.to_string()),
                        Err(_) => return Err(self.invalid(n, &name_key, format!("`{name}` is not a host name; use true, false or a host name"))),
                    },
                }
            }
            None => ServerNameCheck::Url,
        };
        Ok(Some(TlsFiles {
            section: key.to_string(),
            keyfile: path("keyfile")?,
            certfile: path("certfile")?,
            cacertfile: path("cacertfile")?,
            verify,
            server_name,
        }))
    }

    /// A path; relative paths are taken from the config file's directory.
    fn path(&self, node: &Node, key: &str) -> Result<PathBuf, ConfigError> {
        let text = self.text(node, key, "a file path")?;
        if text.is_empty() {
            return Err(self.invalid(node, key, "must not be empty"));
        }
        let path = PathBuf::from(text);
        Ok(match self.file.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path,
        })
    }

    fn rules(&self, node: &Node) -> Result<Vec<Rule>, ConfigError> {
        let Value::List(items) = &node.value else {
            return Err(self.invalid(node, "webhook.events", format!("expected a list `[ {{ event = … }} ]`, found {}", describe(&node.value))));
        };
        let mut rules = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let prefix = format!("webhook.events[{index}]");
            let fields = self.object(item, &prefix)?;
            self.reject_unknown(fields, &prefix, &["event", "topic"])?;
            let key = format!("{prefix}.event");
            let Some(event_node) = item.get("event") else {
                return Err(self.invalid(item, &key, format!("is required; accepted: {}", EventKind::accepted_names())));
            };
            let name = self.text(event_node, &key, "an event name")?;
            let event = name.parse::<EventKind>().map_err(|_| {
                self.invalid(event_node, &key, format!("unknown event `{name}`; accepted: {}", EventKind::accepted_names()))
            })?;
            let topic = match item.get("topic") {
                Some(topic_node) => {
                    let key = format!("{prefix}.topic");
                    let topic = self.string(topic_node, &key)?;
                    if let Some(problem) = topic_filter_problem(&topic) {
                        return Err(self.invalid(topic_node, &key, problem));
                    }
                    (!topic.is_empty()).then_some(topic)
                }
                None => None,
            };
            rules.push(Rule { event, topic });
        }
        Ok(rules)
    }

    fn retry(&self, node: &Node) -> Result<RetryPolicy, ConfigError> {
        let fields = self.object(node, "webhook.retry")?;
        self.reject_unknown(fields, "webhook.retry", RETRY_KEYS)?;
        let mut retry = RetryPolicy::default();
        if let Some(n) = node.get("max_attempts") {
            let attempts = self.positive(n, "webhook.retry.max_attempts")?;
            retry.max_attempts = u32::try_from(attempts.get())
                .ok()
                .and_then(std::num::NonZeroU32::new)
                .ok_or_else(|| self.invalid(n, "webhook.retry.max_attempts", "is too large"))?;
        }
        if let Some(n) = node.get("base") {
            retry.base = self.duration(n, "webhook.retry.base")?;
        }
        if let Some(n) = node.get("cap") {
            retry.cap = self.duration(n, "webhook.retry.cap")?;
        }
        if let Some(n) = node.get("max_age") {
            retry.max_age = Some(self.duration(n, "webhook.retry.max_age")?);
        }
        if retry.cap < retry.base {
            let line_node = node.get("cap").unwrap_or(node);
            return Err(self.invalid(line_node, "webhook.retry.cap", "must not be shorter than `retry.base`"));
        }
        Ok(retry)
    }

    fn spool(&self, node: &Node) -> Result<SpoolConfig, ConfigError> {
        let fields = self.object(node, "webhook.spool")?;
        self.reject_unknown(fields, "webhook.spool", SPOOL_KEYS)?;
        let Some(dir) = node.get("dir") else {
            return Err(self.invalid(node, "webhook.spool.dir", "is required: the directory the spool keeps its files in"));
        };
        let mut spool = SpoolConfig {
            dir: self.path(dir, "webhook.spool.dir")?,
            max_size: DEFAULT_SPOOL_MAX_SIZE,
            segment_size: DEFAULT_SPOOL_SEGMENT_SIZE,
            fsync: DEFAULT_SPOOL_FSYNC,
            on_full: FullPolicy::RejectNew,
        };
        if let Some(n) = node.get("max_size") {
            spool.max_size = self.size(n, "webhook.spool.max_size")?;
        }
        if let Some(n) = node.get("segment_size") {
            spool.segment_size = self.size(n, "webhook.spool.segment_size")?;
        }
        // Several segments fit, so dropping the oldest one frees room without emptying the spool.
        spool.segment_size = spool.segment_size.min(spool.max_size / 4).max(1);
        if let Some(n) = node.get("fsync") {
            spool.fsync = match self.text(n, "webhook.spool.fsync", "always, never or an interval")? {
                "always" => FsyncPolicy::Always,
                "never" => FsyncPolicy::Never,
                _ => FsyncPolicy::Interval(self.duration(n, "webhook.spool.fsync").map_err(|_| {
                    self.invalid(n, "webhook.spool.fsync", "expected `always`, `never` or an interval such as `1s`")
                })?),
            };
        }
        if let Some(n) = node.get("on_full") {
            spool.on_full = match self.text(n, "webhook.spool.on_full", "a policy")? {
                "drop_oldest" => FullPolicy::DropOldest,
                "reject_new" => FullPolicy::RejectNew,
                other => {
                    let message = format!("unknown policy `{other}`; accepted: drop_oldest, reject_new");
                    return Err(self.invalid(n, "webhook.spool.on_full", message));
                }
            };
        }
        Ok(spool)
    }

    fn guest(&self, node: &Node) -> Result<GuestConfig, ConfigError> {
        let fields = self.object(node, "webhook.guest")?;
        self.reject_unknown(fields, "webhook.guest", GUEST_KEYS)?;
        let mut guest = default_guest();
        if let Some(n) = node.get("path") {
            guest.path = Some(self.path(n, "webhook.guest.path")?);
        }
        if let Some(n) = node.get("memory_limit") {
            guest.memory_limit = self.size(n, "webhook.guest.memory_limit")?;
        }
        if let Some(n) = node.get("timeout") {
            guest.timeout = self.duration(n, "webhook.guest.timeout")?;
        }
        if let Some(n) = node.get("workers") {
            guest.workers = self.positive(n, "webhook.guest.workers")?;
        }
        if let Some(n) = node.get("cache_dir") {
            let text = self.text(n, "webhook.guest.cache_dir", "a directory, or \"\" for no cache")?;
            guest.cache_dir = (!text.is_empty()).then(|| self.path(n, "webhook.guest.cache_dir")).transpose()?;
        }
        if let Some(n) = node.get("on_failure") {
            let text = self.text(n, "webhook.guest.on_failure", "a failure policy")?;
            guest.on_failure = match text {
                "skip" => FailurePolicy::Skip,
                "builtin" => FailurePolicy::Builtin,
                "dead_letter" => FailurePolicy::DeadLetter,
                _ => {
                    let message = format!("unknown policy `{text}`; accepted: {}", FailurePolicy::ACCEPTED);
                    return Err(self.invalid(n, "webhook.guest.on_failure", message));
                }
            };
        }
        if let Some(n) = node.get("max_body") {
            guest.max_body = self.size(n, "webhook.guest.max_body")?;
        }
        if let Some(n) = node.get("rollback_after") {
            guest.rollback_after = self.positive(n, "webhook.guest.rollback_after")?.get() as u64;
        }
        if let Some(n) = node.get("settings") {
            for (name, value) in self.object(n, "webhook.guest.settings")? {
                let value = self.string(value, &format!("webhook.guest.settings.{name}"))?;
                guest.settings.push((name.clone(), value));
            }
        }
        Ok(guest)
    }
}

/// What makes `filter` unusable as an MQTT topic filter, if anything. The guest matches topics;
/// this only catches, at load time and with a line number, what no guest could make sense of.
/// A `+` or `#` inside a level (`a+`) is an ordinary character, as in NanoMQ.
fn topic_filter_problem(filter: &str) -> Option<String> {
    if filter.contains('\0') {
        return Some("a topic filter must not contain NUL".into());
    }
    let mut levels = filter.split('/');
    levels.next_back();
    levels
        .any(|level| level == "#")
        .then(|| format!("`#` must be the last level of a topic filter, as in \"a/#\"; found \"{filter}\""))
}

fn describe(value: &Value) -> String {
    match value {
        Value::Str(s) => format!("the string \"{s}\""),
        Value::Bare(s) => format!("`{s}`"),
        Value::Null => "null".into(),
        Value::List(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}
