//! Turns the syntax-neutral tree into a checked [`Config`]: defaults, types, accepted values.
//!
//! Every error names the file, the line and the full key (`webhook.events[1].event`) and says what
//! is accepted. Unknown keys inside the webhook section are errors too: a typo must not silently
//! fall back to a default. One function reads each section; each starts from the section's
//! `Default` and overwrites what the file sets.

use std::num::{NonZeroU32, NonZeroU64};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::tree::{Node, Value};
use super::{
    ranges, Backoff, BatchFormat, BatchSettings, BridgeConfig, BridgeUrl, BrokerLimits, ByteSize, Config, ConfigError,
    DeliveryConfig, DeliveryOrder, FailurePolicy, FilterSettings, FsyncPolicy, FullPolicy, GuestConfig, Header,
    MqttVersion, NamedEndpoint, PayloadEncoding, QueueConfig, RetrySettings, Rule, Secret, ServerNameCheck,
    ShareStrategy, Signing, SigningKey, SpoolConfig, TlsFiles, WhenFull,
};
use crate::event::EventKind;

/// The name of the endpoint at `webhook.url`, in metrics and status; a named endpoint may not
/// take it.
pub const DEFAULT_ENDPOINT: &str = "default";

/// Named endpoints at most: routing keeps an event's endpoints in one 64-bit set.
const MAX_NAMED_ENDPOINTS: usize = 63;

const WEBHOOK_KEYS: &[&str] = &[
    "enable",
    "url",
    "headers",
    "body",
    "pool_size",
    "pool_idle_timeout",
    "cancel_timeout",
    "tls",
    "ssl",
    "events",
    "guest",
    "queue_size",
    "queues",
    "retry",
    "dead_letter",
    "spool",
    "ordering",
    "broker",
    "signing",
    "batch",
    "bridge",
    "endpoints",
];
const ENDPOINT_KEYS: &[&str] = &[
    "name",
    "url",
    "headers",
    "pool_size",
    "pool_idle_timeout",
    "cancel_timeout",
    "tls",
    "ssl",
    "retry",
    "dead_letter",
    "signing",
    "batch",
];
const BRIDGE_KEYS: &[&str] = &[
    "url",
    "client_id",
    "username",
    "password",
    "password_file",
    "password_env",
    "tls",
    "subscriptions",
    "share_group",
    "share_strategy",
    "qos",
    "clean_start",
    "session_expiry",
    "keepalive",
    "protocol",
    "receive_maximum",
    "max_packet_size",
    "from_client_id_property",
    "from_username_property",
];
const SIGNING_KEYS: &[&str] = &["secrets"];
const BATCH_KEYS: &[&str] = &["max_events", "max_bytes", "linger", "format"];
const BROKER_KEYS: &[&str] = &["max_packet_size", "max_connections", "max_inflight", "connect_timeout"];
const QUEUE_KEYS: &[&str] = &["events", "requests", "request_bytes", "when_full"];
const SPOOL_KEYS: &[&str] = &["dir", "max_size", "segment_size", "fsync", "on_full"];
const RETRY_KEYS: &[&str] = &["max_attempts", "base", "cap", "max_age", "max_replay_size"];
const TLS_KEYS: &[&str] = &["enable", "keyfile", "certfile", "cacertfile", "verify", "server_name_indication"];
const GUEST_KEYS: &[&str] = &[
    "path",
    "memory_limit",
    "timeout",
    "workers",
    "settings",
    "max_body",
    "max_instances",
    "rollback_after",
    "cache_dir",
    "on_failure",
];

pub(crate) fn config_from_tree(root: &Node, file: &Path) -> Result<Config, ConfigError> {
    let ctx = Ctx { file };
    let Some(webhook) = root.get("webhook") else {
        return Ok(Config::default());
    };
    let fields = ctx.object(webhook, "webhook")?;
    ctx.reject_unknown(fields, "webhook", WEBHOOK_KEYS)?;
    let enabled = match webhook.get("enable") {
        Some(node) => ctx.boolean(node, "webhook.enable")?,
        None => true,
    };
    let delivery = ctx.delivery(webhook, enabled)?;
    let endpoints = match webhook.get("endpoints") {
        Some(node) => ctx.endpoints(node, delivery.ordering)?,
        None => Vec::new(),
    };
    let mut filter = ctx.filter(webhook)?;
    filter.endpoints = endpoints.iter().map(|endpoint| endpoint.name.clone()).collect();
    ctx.check_rule_endpoints(webhook, &filter)?;
    let config = Config {
        enabled,
        filter,
        delivery,
        endpoints,
        guest: match webhook.get("guest") {
            Some(node) => ctx.guest(node)?,
            None => GuestConfig::default(),
        },
        queues: ctx.queues(webhook)?,
        spool: webhook.get("spool").map(|node| ctx.spool(node)).transpose()?,
        broker: match webhook.get("broker") {
            Some(node) => ctx.broker(node)?,
            None => BrokerLimits::default(),
        },
        bridge: match webhook.get("bridge") {
            Some(node) => ctx.bridge(node)?,
            None => BridgeConfig::default(),
        },
    };
    // Per-client order needs one client's messages on one process: a share group spreads them
    // unless the broker hashes by client id.
    if config.delivery.ordering == DeliveryOrder::PerClient
        && config.bridge.share_group.is_some()
        && config.bridge.share_strategy != ShareStrategy::HashClientid
    {
        let node = webhook.get("bridge").and_then(|b| b.get("share_group")).unwrap_or(webhook);
        return Err(ctx.invalid(
            node,
            "webhook.bridge.share_group",
            "`ordering = per_client` needs the broker to send one client's messages to one member of the \
             group: set `bridge.share_strategy = hash_clientid` if it does (EMQX's `hash_clientid`), or drop \
             the share group",
        ));
    }
    if config.guest.on_failure == FailurePolicy::DeadLetter && config.delivery.dead_letter.is_none() {
        let node = webhook.get("guest").and_then(|g| g.get("on_failure")).unwrap_or(webhook);
        return Err(ctx.invalid(
            node,
            "webhook.guest.on_failure",
            "`dead_letter` needs `webhook.dead_letter` (a file)",
        ));
    }
    Ok(config)
}

struct Ctx<'a> {
    file: &'a Path,
}

// === the sections ===

impl Ctx<'_> {
    fn filter(&self, webhook: &Node) -> Result<FilterSettings, ConfigError> {
        let mut filter = FilterSettings::default();
        if let Some(body) = webhook.get("body") {
            let fields = self.object(body, "webhook.body")?;
            self.reject_unknown(fields, "webhook.body", &["encoding"])?;
            if let Some(node) = body.get("encoding") {
                filter.encoding = self.encoding(node, "webhook.body.encoding")?;
            }
        }
        if let Some(node) = webhook.get("events") {
            filter.rules = self.rules(node)?;
        }
        Ok(filter)
    }

    /// The default endpoint: `url` and its settings, at the top of the webhook section.
    fn delivery(&self, webhook: &Node, enabled: bool) -> Result<DeliveryConfig, ConfigError> {
        let mut delivery = self.endpoint_settings(webhook, "webhook", enabled)?;
        if let Some(node) = webhook.get("dead_letter") {
            delivery.dead_letter = Some(self.path(node, "webhook.dead_letter")?);
        }
        if let Some(node) = webhook.get("ordering") {
            delivery.ordering = match self.text(node, "webhook.ordering", "an ordering")? {
                "none" => DeliveryOrder::None,
                "per_client" => DeliveryOrder::PerClient,
                other => {
                    let message = format!("unknown ordering `{other}`; accepted: none, per_client");
                    return Err(self.invalid(node, "webhook.ordering", message));
                }
            };
        }
        Ok(delivery)
    }

    /// What an endpoint block sets, the default endpoint's (at `webhook`) or a named one's: the
    /// URL (required when `url_required`) and how requests to it are sent.
    fn endpoint_settings(&self, node: &Node, parent: &str, url_required: bool) -> Result<DeliveryConfig, ConfigError> {
        let mut delivery = DeliveryConfig::default();
        let key = |name: &str| format!("{parent}.{name}");
        match node.get("url") {
            Some(n) => delivery.url = self.url(n, &key("url"))?,
            None if url_required => {
                return Err(self.invalid(node, &key("url"), "is required: the URL webhooks are POSTed to"))
            }
            None => {}
        }
        if let Some(n) = node.get("headers") {
            delivery.headers = self.headers(n, &key("headers"))?;
        }
        if let Some(n) = node.get("pool_size") {
            delivery.pool.pool_size = self.count(n, &key("pool_size"), ranges::POOL_SIZE)?;
        }
        if let Some(n) = node.get("pool_idle_timeout") {
            delivery.pool.idle_timeout = self.duration(n, &key("pool_idle_timeout"), ranges::POOL_IDLE_TIMEOUT)?;
        }
        if let Some(n) = node.get("cancel_timeout") {
            delivery.timeout = self.duration(n, &key("cancel_timeout"), ranges::REQUEST_TIMEOUT)?;
        }
        delivery.tls = match (node.get("tls"), node.get("ssl")) {
            (Some(n), _) => self.tls(n, &key("tls"))?,
            (None, Some(n)) => self.tls(n, &key("ssl"))?,
            (None, None) => None,
        };
        if let Some(n) = node.get("retry") {
            delivery.retry = self.retry(n, &key("retry"))?;
        }
        if let Some(n) = node.get("signing") {
            delivery.signing = Some(self.signing(n, &key("signing"))?);
        }
        if let Some(n) = node.get("batch") {
            delivery.batch = Some(self.batch(n, &key("batch"))?);
        }
        Ok(delivery)
    }

    /// `endpoints = [ { name = "…", url = "…", … } ]`: named endpoints, each with the settings of
    /// the default one (not inherited from it) and its own dead-letter file; `ordering` is the
    /// webhook's.
    fn endpoints(&self, node: &Node, ordering: DeliveryOrder) -> Result<Vec<NamedEndpoint>, ConfigError> {
        let Value::List(items) = &node.value else {
            let message = format!("expected a list `[ {{ name = …, url = … }} ]`, found {}", describe(&node.value));
            return Err(self.invalid(node, "webhook.endpoints", message));
        };
        if items.len() > MAX_NAMED_ENDPOINTS {
            let message = format!("at most {MAX_NAMED_ENDPOINTS} named endpoints, found {}", items.len());
            return Err(self.invalid(node, "webhook.endpoints", message));
        }
        let mut endpoints: Vec<NamedEndpoint> = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let parent = format!("webhook.endpoints[{index}]");
            let fields = self.object(item, &parent)?;
            self.reject_unknown(fields, &parent, ENDPOINT_KEYS)?;
            let key = format!("{parent}.name");
            let Some(name_node) = item.get("name") else {
                return Err(self.invalid(item, &key, "is required: the name rules and guests choose the endpoint by"));
            };
            let name = self.text(name_node, &key, "a name")?;
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                let message = format!("`{name}` is not a name: use 1 to 64 letters, digits, `_` or `-`");
                return Err(self.invalid(name_node, &key, message));
            }
            if name == DEFAULT_ENDPOINT || endpoints.iter().any(|known| known.name == name) {
                return Err(self.invalid(name_node, &key, format!("the name `{name}` is taken")));
            }
            let mut delivery = self.endpoint_settings(item, &parent, true)?;
            if let Some(n) = item.get("dead_letter") {
                delivery.dead_letter = Some(self.path(n, &format!("{parent}.dead_letter"))?);
            }
            delivery.ordering = ordering;
            endpoints.push(NamedEndpoint { name: name.to_owned(), delivery });
        }
        Ok(endpoints)
    }

    /// `queue_size` sets both queue lengths, as NanoMQ's one knob; `queues { … }` sets each.
    fn queues(&self, webhook: &Node) -> Result<QueueConfig, ConfigError> {
        let mut queues = QueueConfig::default();
        if let Some(node) = webhook.get("queue_size") {
            let length = self.count(node, "webhook.queue_size", ranges::QUEUE_LENGTH)?;
            queues.events = length;
            queues.requests = length;
        }
        let Some(section) = webhook.get("queues") else {
            return Ok(queues);
        };
        let fields = self.object(section, "webhook.queues")?;
        self.reject_unknown(fields, "webhook.queues", QUEUE_KEYS)?;
        if let Some(node) = section.get("events") {
            queues.events = self.count(node, "webhook.queues.events", ranges::QUEUE_LENGTH)?;
        }
        if let Some(node) = section.get("requests") {
            queues.requests = self.count(node, "webhook.queues.requests", ranges::QUEUE_LENGTH)?;
        }
        if let Some(node) = section.get("request_bytes") {
            queues.request_bytes = self.size(node, "webhook.queues.request_bytes", ranges::QUEUE_BYTES)?;
        }
        if let Some(node) = section.get("when_full") {
            let key = "webhook.queues.when_full";
            queues.when_full = match self.text(node, key, "block, drop_new or a duration")? {
                "block" => WhenFull::Block,
                "drop_new" => WhenFull::DropNew,
                _ => WhenFull::Wait(self.duration(node, key, ranges::QUEUE_WAIT).map_err(|error| match error {
                    ConfigError::Invalid { ref message, .. } if message.contains("between") => error,
                    _ => self.invalid(node, key, "expected `block`, `drop_new` or a wait such as `100ms`"),
                })?),
            };
        }
        Ok(queues)
    }

    fn broker(&self, node: &Node) -> Result<BrokerLimits, ConfigError> {
        let fields = self.object(node, "webhook.broker")?;
        self.reject_unknown(fields, "webhook.broker", BROKER_KEYS)?;
        let mut broker = BrokerLimits::default();
        if let Some(n) = node.get("max_packet_size") {
            broker.max_packet_size = self.size(n, "webhook.broker.max_packet_size", ranges::BROKER_PACKET_SIZE)?;
        }
        if let Some(n) = node.get("max_connections") {
            broker.max_connections = self.count(n, "webhook.broker.max_connections", ranges::BROKER_CONNECTIONS)?;
        }
        if let Some(n) = node.get("max_inflight") {
            broker.max_inflight = self.count(n, "webhook.broker.max_inflight", ranges::BROKER_INFLIGHT)?;
        }
        if let Some(n) = node.get("connect_timeout") {
            broker.connect_timeout =
                self.duration(n, "webhook.broker.connect_timeout", ranges::BROKER_CONNECT_TIMEOUT)?;
        }
        Ok(broker)
    }

    fn bridge(&self, node: &Node) -> Result<BridgeConfig, ConfigError> {
        let fields = self.object(node, "webhook.bridge")?;
        self.reject_unknown(fields, "webhook.bridge", BRIDGE_KEYS)?;
        let mut bridge = BridgeConfig::default();
        if let Some(n) = node.get("url") {
            let text = self.text(n, "webhook.bridge.url", "a broker URL")?.trim();
            bridge.url =
                Some(BridgeUrl::parse(text).map_err(|message| self.invalid(n, "webhook.bridge.url", message))?);
        }
        if let Some(n) = node.get("client_id") {
            bridge.client_id = self.string(n, "webhook.bridge.client_id")?;
            if bridge.client_id.is_empty() || bridge.client_id.len() > 65_535 {
                return Err(self.invalid(n, "webhook.bridge.client_id", "must be 1 to 65,535 bytes"));
            }
        }
        if let Some(n) = node.get("username") {
            bridge.username = Some(self.string(n, "webhook.bridge.username")?);
        }
        bridge.password = self.password(node)?;
        if let Some(n) = node.get("tls") {
            bridge.tls = self.tls(n, "webhook.bridge.tls")?;
        }
        if let Some(n) = node.get("subscriptions") {
            let Value::List(items) = &n.value else {
                let message = format!("expected a list of topic filters, found {}", describe(&n.value));
                return Err(self.invalid(n, "webhook.bridge.subscriptions", message));
            };
            for (index, item) in items.iter().enumerate() {
                let key = format!("webhook.bridge.subscriptions[{index}]");
                let filter = self.string(item, &key)?;
                if filter.is_empty() {
                    return Err(self.invalid(item, &key, "a topic filter must not be empty"));
                }
                if let Some(problem) = topic_filter_problem(&filter) {
                    return Err(self.invalid(item, &key, problem));
                }
                bridge.subscriptions.push(filter);
            }
        }
        if let Some(n) = node.get("share_group") {
            let group = self.string(n, "webhook.bridge.share_group")?;
            if group.is_empty() || group.contains(['/', '+', '#']) {
                return Err(self.invalid(
                    n,
                    "webhook.bridge.share_group",
                    "a share group is a non-empty name without `/`, `+` or `#`",
                ));
            }
            bridge.share_group = Some(group);
        }
        if let Some(n) = node.get("share_strategy") {
            bridge.share_strategy = match self.text(n, "webhook.bridge.share_strategy", "a strategy")? {
                "any" => ShareStrategy::Any,
                "hash_clientid" => ShareStrategy::HashClientid,
                other => {
                    let message = format!("unknown strategy `{other}`; accepted: any, hash_clientid");
                    return Err(self.invalid(n, "webhook.bridge.share_strategy", message));
                }
            };
        }
        if let Some(n) = node.get("qos") {
            bridge.qos = match self.text(n, "webhook.bridge.qos", "0, 1 or 2")?.trim() {
                "0" => 0,
                "1" => 1,
                "2" => 2,
                other => {
                    return Err(self.invalid(n, "webhook.bridge.qos", format!("must be 0, 1 or 2, found `{other}`")))
                }
            };
        }
        if let Some(n) = node.get("clean_start") {
            bridge.clean_start = self.boolean(n, "webhook.bridge.clean_start")?;
        }
        if let Some(n) = node.get("session_expiry") {
            bridge.session_expiry = self.duration(n, "webhook.bridge.session_expiry", ranges::BRIDGE_SESSION_EXPIRY)?;
        }
        if let Some(n) = node.get("keepalive") {
            bridge.keepalive = self.duration(n, "webhook.bridge.keepalive", ranges::BRIDGE_KEEPALIVE)?;
        }
        if let Some(n) = node.get("protocol") {
            bridge.protocol = match self.text(n, "webhook.bridge.protocol", "a protocol version")?.trim() {
                "5" | "5.0" => MqttVersion::V5,
                "3.1.1" | "4" => MqttVersion::V311,
                other => {
                    let message = format!("unknown MQTT version `{other}`; accepted: 5, 3.1.1");
                    return Err(self.invalid(n, "webhook.bridge.protocol", message));
                }
            };
        }
        if let Some(n) = node.get("receive_maximum") {
            bridge.receive_maximum = self.count(n, "webhook.bridge.receive_maximum", ranges::BRIDGE_RECEIVE_MAXIMUM)?;
        }
        if let Some(n) = node.get("max_packet_size") {
            bridge.max_packet_size = self.size(n, "webhook.bridge.max_packet_size", ranges::BRIDGE_PACKET_SIZE)?;
        }
        if let Some(n) = node.get("from_client_id_property") {
            bridge.from_client_id_property = Some(self.string(n, "webhook.bridge.from_client_id_property")?);
        }
        if let Some(n) = node.get("from_username_property") {
            bridge.from_username_property = Some(self.string(n, "webhook.bridge.from_username_property")?);
        }
        Ok(bridge)
    }

    /// The bridge's password: given as it is (or as `env:NAME` / `file:PATH`, as every secret may
    /// be), read from a file (`password_file`, a trailing newline dropped), or from an environment
    /// variable (`password_env`). The value itself never appears in an error.
    fn password(&self, node: &Node) -> Result<Option<Secret>, ConfigError> {
        let given: Vec<&str> =
            ["password", "password_file", "password_env"].into_iter().filter(|key| node.get(key).is_some()).collect();
        if given.len() > 1 {
            let n = node.get(given[1]).expect("listed");
            let message =
                format!("give one of `password`, `password_file` and `password_env`, not {}", given.join(" and "));
            return Err(self.invalid(n, &format!("webhook.bridge.{}", given[1]), message));
        }
        if let Some(n) = node.get("password") {
            return Ok(Some(Secret::new(self.secret(n, "webhook.bridge.password", "a password")?.0)));
        }
        if let Some(n) = node.get("password_file") {
            let key = "webhook.bridge.password_file";
            return Ok(Some(Secret::new(self.file_secret(n, key, &self.path(n, key)?)?)));
        }
        if let Some(n) = node.get("password_env") {
            let key = "webhook.bridge.password_env";
            let name = self.text(n, key, "an environment variable's name")?;
            return Ok(Some(Secret::new(self.env_secret(n, key, name)?)));
        }
        Ok(None)
    }

    fn retry(&self, node: &Node, key: &str) -> Result<RetrySettings, ConfigError> {
        let fields = self.object(node, key)?;
        self.reject_unknown(fields, key, RETRY_KEYS)?;
        let mut retry = RetrySettings::default();
        if let Some(n) = node.get("max_attempts") {
            let attempts: NonZeroU64 = self.count(n, &format!("{key}.max_attempts"), ranges::RETRY_ATTEMPTS)?;
            retry.max_attempts = Some(NonZeroU32::try_from(attempts).expect("the range fits in u32"));
        }
        let mut base = retry.backoff.base();
        let mut cap = retry.backoff.cap();
        if let Some(n) = node.get("base") {
            base = self.duration(n, &format!("{key}.base"), ranges::RETRY_BACKOFF)?;
        }
        if let Some(n) = node.get("cap") {
            cap = self.duration(n, &format!("{key}.cap"), ranges::RETRY_BACKOFF)?;
        }
        retry.backoff = Backoff::new(base, cap).map_err(|_| {
            self.invalid(
                node.get("cap").unwrap_or(node),
                &format!("{key}.cap"),
                "must not be shorter than `retry.base`",
            )
        })?;
        if let Some(n) = node.get("max_age") {
            retry.max_age = Some(self.duration(n, &format!("{key}.max_age"), ranges::RETRY_MAX_AGE)?);
        }
        if let Some(n) = node.get("max_replay_size") {
            retry.max_replay_size = Some(self.size(n, &format!("{key}.max_replay_size"), ranges::RETRY_REPLAY_SIZE)?);
        }
        Ok(retry)
    }

    fn spool(&self, node: &Node) -> Result<SpoolConfig, ConfigError> {
        let fields = self.object(node, "webhook.spool")?;
        self.reject_unknown(fields, "webhook.spool", SPOOL_KEYS)?;
        let Some(dir) = node.get("dir") else {
            return Err(self.invalid(
                node,
                "webhook.spool.dir",
                "is required: the directory the spool keeps its files in",
            ));
        };
        let mut spool = SpoolConfig::in_dir(self.path(dir, "webhook.spool.dir")?);
        if let Some(n) = node.get("max_size") {
            spool.max_size = self.size(n, "webhook.spool.max_size", ranges::SPOOL_MAX_SIZE)?;
        }
        if let Some(n) = node.get("segment_size") {
            spool.segment_size = self.size(n, "webhook.spool.segment_size", ranges::SPOOL_SEGMENT_SIZE)?;
        }
        // Several segments fit, so dropping the oldest one frees room without emptying the spool.
        let quarter = ByteSize::new(spool.max_size.get() / 4).expect("max_size is at least 4 KiB");
        spool.segment_size = spool.segment_size.min(quarter);
        if let Some(n) = node.get("fsync") {
            spool.fsync = match self.text(n, "webhook.spool.fsync", "always, never or an interval")? {
                "always" => FsyncPolicy::Always,
                "never" => FsyncPolicy::Never,
                _ => FsyncPolicy::Interval(self.duration(n, "webhook.spool.fsync", ranges::SPOOL_FSYNC).map_err(
                    |error| match error {
                        ConfigError::Invalid { ref message, .. } if message.contains("between") => error,
                        _ => self.invalid(
                            n,
                            "webhook.spool.fsync",
                            "expected `always`, `never` or an interval such as `1s`",
                        ),
                    },
                )?),
            };
        }
        if let Some(n) = node.get("on_full") {
            spool.on_full = match self.text(n, "webhook.spool.on_full", "a policy")? {
                "block" => FullPolicy::Block,
                "drop_oldest" => FullPolicy::DropOldest,
                "reject_new" => FullPolicy::RejectNew,
                other => {
                    let message = format!("unknown policy `{other}`; accepted: block, drop_oldest, reject_new");
                    return Err(self.invalid(n, "webhook.spool.on_full", message));
                }
            };
        }
        Ok(spool)
    }

    fn guest(&self, node: &Node) -> Result<GuestConfig, ConfigError> {
        let fields = self.object(node, "webhook.guest")?;
        self.reject_unknown(fields, "webhook.guest", GUEST_KEYS)?;
        let mut guest = GuestConfig::default();
        if let Some(n) = node.get("path") {
            guest.path = Some(self.path(n, "webhook.guest.path")?);
        }
        if let Some(n) = node.get("memory_limit") {
            guest.memory_limit = self.size(n, "webhook.guest.memory_limit", ranges::GUEST_MEMORY)?;
        }
        if let Some(n) = node.get("timeout") {
            guest.timeout = self.duration(n, "webhook.guest.timeout", ranges::GUEST_TIMEOUT)?;
        }
        if let Some(n) = node.get("workers") {
            guest.workers = self.count(n, "webhook.guest.workers", ranges::GUEST_WORKERS)?;
        }
        if let Some(n) = node.get("cache_dir") {
            let text = self.text(n, "webhook.guest.cache_dir", "a directory, or \"\" for no cache")?;
            guest.cache_dir = (!text.is_empty()).then(|| self.path(n, "webhook.guest.cache_dir")).transpose()?;
        }
        if let Some(n) = node.get("on_failure") {
            guest.on_failure = match self.text(n, "webhook.guest.on_failure", "a failure policy")? {
                "skip" => FailurePolicy::Skip,
                "builtin" => FailurePolicy::Builtin,
                "dead_letter" => FailurePolicy::DeadLetter,
                text => {
                    let message = format!("unknown policy `{text}`; accepted: {}", FailurePolicy::ACCEPTED);
                    return Err(self.invalid(n, "webhook.guest.on_failure", message));
                }
            };
        }
        if let Some(n) = node.get("max_body") {
            guest.max_body = self.size(n, "webhook.guest.max_body", ranges::GUEST_MAX_BODY)?;
        }
        if let Some(n) = node.get("max_instances") {
            guest.max_instances = self.count(n, "webhook.guest.max_instances", ranges::GUEST_MAX_INSTANCES)?;
        }
        if let Some(n) = node.get("rollback_after") {
            guest.rollback_after = self.count(n, "webhook.guest.rollback_after", ranges::GUEST_ROLLBACK_AFTER)?;
        }
        if let Some(n) = node.get("settings") {
            for (name, value) in self.object(n, "webhook.guest.settings")? {
                let value = self.string(value, &format!("webhook.guest.settings.{name}"))?;
                guest.settings.push((name.clone(), value));
            }
        }
        Ok(guest)
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
            Some(n) => self.server_name(n, &format!("{key}.server_name_indication"))?,
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

    fn server_name(&self, node: &Node, key: &str) -> Result<ServerNameCheck, ConfigError> {
        Ok(match self.text(node, key, "true, false or a host name")? {
            "true" => ServerNameCheck::Url,
            "false" => ServerNameCheck::Off,
            name => match rustls::pki_types::ServerName::try_from(name) {
                Ok(_) => ServerNameCheck::Name(name.to_string()),
                Err(_) => {
                    let message = format!("`{name}` is not a host name; use true, false or a host name");
                    return Err(self.invalid(node, key, message));
                }
            },
        })
    }

    fn rules(&self, node: &Node) -> Result<Vec<Rule>, ConfigError> {
        let Value::List(items) = &node.value else {
            let message = format!("expected a list `[ {{ event = … }} ]`, found {}", describe(&node.value));
            return Err(self.invalid(node, "webhook.events", message));
        };
        items.iter().enumerate().map(|(index, item)| self.rule(item, &format!("webhook.events[{index}]"))).collect()
    }

    fn rule(&self, item: &Node, prefix: &str) -> Result<Rule, ConfigError> {
        let fields = self.object(item, prefix)?;
        self.reject_unknown(fields, prefix, &["event", "topic", "endpoint"])?;
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
        let endpoint = match item.get("endpoint") {
            Some(node) => Some(self.text(node, &format!("{prefix}.endpoint"), "an endpoint name")?.to_owned()),
            None => None,
        };
        Ok(Rule { event, topic, endpoint })
    }

    /// Every endpoint a rule names is configured (`default` is the one at `webhook.url`).
    fn check_rule_endpoints(&self, webhook: &Node, filter: &FilterSettings) -> Result<(), ConfigError> {
        for (index, rule) in filter.rules.iter().enumerate() {
            let Some(name) = &rule.endpoint else { continue };
            if name == DEFAULT_ENDPOINT || filter.endpoints.contains(name) {
                continue;
            }
            let node = webhook
                .get("events")
                .and_then(|events| match &events.value {
                    Value::List(items) => items.get(index),
                    _ => None,
                })
                .and_then(|item| item.get("endpoint"))
                .unwrap_or(webhook);
            let known = std::iter::once(DEFAULT_ENDPOINT).chain(filter.endpoints.iter().map(String::as_str));
            let message =
                format!("no endpoint is named `{name}`; configured: {}", known.collect::<Vec<_>>().join(", "));
            return Err(self.invalid(node, &format!("webhook.events[{index}].endpoint"), message));
        }
        Ok(())
    }

    fn headers(&self, node: &Node, parent: &str) -> Result<Vec<Header>, ConfigError> {
        let fields = self.object(node, parent)?;
        let mut headers = Vec::with_capacity(fields.len());
        for (name, value_node) in fields {
            let key = format!("{parent}.{name}");
            let (value, secret) = self.secret(value_node, &key, "a header value")?;
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                return Err(self.invalid(value_node, &key, format!("`{name}` is not a valid HTTP header name")));
            };
            let Ok(value) = HeaderValue::from_str(&value) else {
                return Err(self.invalid(value_node, &key, "the value has characters not allowed in an HTTP header"));
            };
            headers.push(Header::with_secrecy(name, value, secret));
        }
        Ok(headers)
    }

    /// `batch { max_events = 100, max_bytes = 1MiB, linger = 10ms, format = json }`, each key
    /// optional (`batch {}` takes the defaults).
    fn batch(&self, node: &Node, parent: &str) -> Result<BatchSettings, ConfigError> {
        let key = |name: &str| format!("{parent}.{name}");
        let fields = self.object(node, parent)?;
        self.reject_unknown(fields, parent, BATCH_KEYS)?;
        let mut batch = BatchSettings::default();
        if let Some(n) = node.get("max_events") {
            batch.max_events = self.count(n, &key("max_events"), ranges::BATCH_EVENTS)?;
        }
        if let Some(n) = node.get("max_bytes") {
            batch.max_bytes = self.size(n, &key("max_bytes"), ranges::BATCH_BYTES)?;
        }
        if let Some(n) = node.get("linger") {
            batch.linger = self.duration(n, &key("linger"), ranges::BATCH_LINGER)?;
        }
        if let Some(n) = node.get("format") {
            batch.format = match self.text(n, &key("format"), "a batch format")? {
                "json" => BatchFormat::Json,
                "ndjson" => BatchFormat::Ndjson,
                other => {
                    let message = format!("unknown format `{other}`; accepted: {}", BatchFormat::ACCEPTED);
                    return Err(self.invalid(n, &key("format"), message));
                }
            };
        }
        Ok(batch)
    }

    /// `signing { secrets = ["whsec_…", "env:NAME", "file:PATH"] }`: at least one key.
    fn signing(&self, node: &Node, parent: &str) -> Result<Signing, ConfigError> {
        let fields = self.object(node, parent)?;
        self.reject_unknown(fields, parent, SIGNING_KEYS)?;
        let key = format!("{parent}.secrets");
        let Some(list) = node.get("secrets") else {
            return Err(self.invalid(node, &key, "is required: one or more `whsec_…` secrets"));
        };
        let Value::List(items) = &list.value else {
            let message = format!("expected a list of secrets `[ … ]`, found {}", describe(&list.value));
            return Err(self.invalid(list, &key, message));
        };
        if items.is_empty() {
            return Err(self.invalid(list, &key, "needs at least one secret"));
        }
        let mut secrets = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let key = format!("{parent}.secrets[{index}]");
            let (text, _) = self.secret(item, &key, "a `whsec_…` secret")?;
            // The message never quotes the value: it is a key.
            let decoded = text.trim().strip_prefix("whsec_").and_then(|encoded| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(encoded).ok().filter(|key| !key.is_empty())
            });
            match decoded {
                Some(bytes) => secrets.push(SigningKey(bytes)),
                None => return Err(self.invalid(item, &key, "expected `whsec_` followed by the key in base64")),
            }
        }
        Ok(Signing { secrets })
    }
}

// === the scalars ===

impl Ctx<'_> {
    fn invalid(&self, node: &Node, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: node.line,
            key: key.to_string(),
            message: message.into(),
        }
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

    /// A value that may come from elsewhere: `env:NAME` reads the environment variable, `file:PATH`
    /// the file (without its trailing newline); anything else is the value itself. `true` when it
    /// came from elsewhere (a secret, then: never printed). Errors name the variable or the file,
    /// never a value.
    fn secret(&self, node: &Node, key: &str, expected: &str) -> Result<(String, bool), ConfigError> {
        let text = self.text(node, key, expected)?;
        if let Some(name) = text.strip_prefix("env:") {
            return self.env_secret(node, key, name).map(|value| (value, true));
        }
        if let Some(path) = text.strip_prefix("file:") {
            return self.file_secret(node, key, Path::new(path)).map(|value| (value, true));
        }
        Ok((text.to_string(), false))
    }

    /// A secret from the environment variable `name`.
    fn env_secret(&self, node: &Node, key: &str, name: &str) -> Result<String, ConfigError> {
        std::env::var(name).map_err(|_| {
            self.invalid(node, key, format!("the environment variable `{name}` is not set (or not UTF-8)"))
        })
    }

    /// A secret from the file at `path`, without its trailing newline.
    fn file_secret(&self, node: &Node, key: &str, path: &Path) -> Result<String, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(value) => Ok(value.trim_end_matches(['\r', '\n']).to_string()),
            Err(error) => Err(self.invalid(node, key, format!("cannot read `{}`: {error}", path.display()))),
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

    /// A whole number within `range` (whose start is at least 1), as any non-zero integer type.
    fn count<T: TryFrom<NonZeroU64>>(
        &self,
        node: &Node,
        key: &str,
        range: RangeInclusive<u64>,
    ) -> Result<T, ConfigError> {
        let text = self.text(node, key, "a positive integer")?.trim();
        let out_of_range =
            || self.invalid(node, key, format!("must be between {} and {}, found {text}", range.start(), range.end()));
        let number = match text.parse::<u64>() {
            Ok(0) => {
                return Err(self.invalid(
                    node,
                    key,
                    format!("must be at least 1, found 0 (accepted: {} to {})", range.start(), range.end()),
                ))
            }
            Ok(number) => number,
            Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => return Err(out_of_range()),
            Err(_) => return Err(self.invalid(node, key, format!("expected a positive integer, found `{text}`"))),
        };
        if !range.contains(&number) {
            return Err(out_of_range());
        }
        NonZeroU64::new(number).and_then(|n| T::try_from(n).ok()).ok_or_else(out_of_range)
    }

    /// Milliseconds as a bare number, or a number with a unit: `ms`, `s`, `m`; within `range`.
    fn duration(&self, node: &Node, key: &str, range: RangeInclusive<Duration>) -> Result<Duration, ConfigError> {
        let text = self.text(node, key, "a duration")?.trim();
        let (digits, unit) = split_number(text);
        let amount: u64 = digits.parse().map_err(|_| {
            self.invalid(
                node,
                key,
                format!("expected a duration such as 5000 (ms), `500ms`, `5s` or `1m`, found `{text}`"),
            )
        })?;
        let millis = match unit {
            "" | "ms" => Some(amount),
            "s" => amount.checked_mul(1000),
            "m" => amount.checked_mul(60_000),
            _ => return Err(self.invalid(node, key, format!("unknown unit in `{text}`; accepted: ms, s, m"))),
        };
        match millis.map(Duration::from_millis) {
            Some(Duration::ZERO) => Err(self.invalid(node, key, "must be more than 0")),
            Some(duration) if range.contains(&duration) => Ok(duration),
            _ => Err(self.invalid(
                node,
                key,
                format!("must be between {:?} and {:?}, found `{text}`", range.start(), range.end()),
            )),
        }
    }

    /// Bytes as a bare number, or with a unit: KB, MB, GB (powers of 1024, as NanoMQ), KiB, MiB,
    /// GiB, TiB; within `range`.
    fn size(&self, node: &Node, key: &str, range: RangeInclusive<u64>) -> Result<ByteSize, ConfigError> {
        let text = self.text(node, key, "a size")?.trim();
        let (digits, unit) = split_number(text);
        let amount: u64 = digits
            .parse()
            .map_err(|_| self.invalid(node, key, format!("expected a size such as `64MiB`, found `{text}`")))?;
        let shift = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "kb" | "kib" => 10,
            "mb" | "mib" => 20,
            "gb" | "gib" => 30,
            "tb" | "tib" => 40,
            _ => {
                return Err(self.invalid(
                    node,
                    key,
                    format!("unknown unit in `{text}`; accepted: B, KiB, MiB, GiB, TiB"),
                ))
            }
        };
        let bytes = amount.checked_shl(shift).filter(|bytes| *bytes >> shift == amount);
        match bytes {
            Some(0) => Err(self.invalid(node, key, "must be more than 0")),
            Some(bytes) if range.contains(&bytes) => Ok(ByteSize::new(bytes).expect("checked non-zero")),
            _ => Err(self.invalid(
                node,
                key,
                format!("must be between {} and {} bytes, found `{text}`", range.start(), range.end()),
            )),
        }
    }

    fn url(&self, node: &Node, key: &str) -> Result<http::Uri, ConfigError> {
        let text = self.text(node, key, "a URL")?.trim();
        if text
            .split_once("://")
            .map_or(text, |(_, rest)| rest)
            .split(['/', '?', '#'])
            .next()
            .is_some_and(|a| a.contains('@'))
        {
            // Credentials would end up in the Host header and in logs (so they are not echoed here
            // either); they go in a header instead.
            let message = "must not carry credentials (`user:password@`); set `headers.authorization` instead";
            return Err(self.invalid(node, key, message));
        }
        let uri: http::Uri =
            text.parse().map_err(|e| self.invalid(node, key, format!("`{text}` is not a valid URL: {e}")))?;
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
}

/// `"500ms"` → `("500", "ms")`; the unit is trimmed.
fn split_number(text: &str) -> (&str, &str) {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    (digits, unit.trim())
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
