//! The plugin's options: the `plugin_opt_<key> <value>` lines under its `plugin` line in
//! mosquitto.conf.
//!
//! - **Receives** the `(key, value)` pairs mosquitto hands to init.
//! - **Owns** their meaning and checks: `config` (required), `admin`, `drain_timeout`.
//! - **Hands on** a checked [`Options`] to the plugin; an unknown key or a bad value is an
//!   [`OptionsError`] that names it, and fails the plugin's init.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How long cleanup waits, by default, for accepted events to be delivered (or spooled).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `drain_timeout` accepted.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);

/// The plugin's checked options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `plugin_opt_config`: the mqhook config file (nanomq.conf, the old `web.hook.*` format or
    /// HCL), as for `mqhook run --config`.
    pub config: PathBuf,
    /// `plugin_opt_admin`: a loopback address for mqhook's admin API (`GET /metrics`,
    /// `GET`/`PUT /guest`); none by default.
    pub admin: Option<SocketAddr>,
    /// `plugin_opt_drain_timeout`: how long the broker's stop waits for accepted events to be
    /// delivered, e.g. `10s` or `500ms`. What is still undelivered then stays in the spool (if
    /// one is configured) or is counted and reported as lost.
    pub drain_timeout: Duration,
    /// `plugin_opt_admin_token_file`: the admin API's bearer token (else `$MQHOOK_ADMIN_TOKEN`);
    /// with one, every admin route but `/healthz` needs it.
    pub admin_token_file: Option<PathBuf>,
    /// `plugin_opt_admin_read_token_file`: a read-only token, for `GET`s only (else
    /// `$MQHOOK_ADMIN_READ_TOKEN`).
    pub admin_read_token_file: Option<PathBuf>,
}

/// Why the options were refused.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// `plugin_opt_config` is missing.
    #[error("`plugin_opt_config /path/to/mqhook.conf` is required")]
    MissingConfig,
    /// A key this plugin does not know.
    #[error(
        "unknown option `plugin_opt_{0}` (accepted: plugin_opt_config, plugin_opt_admin, plugin_opt_drain_timeout, plugin_opt_admin_token_file, plugin_opt_admin_read_token_file)"
    )]
    Unknown(String),
    /// A value that does not parse or is out of range.
    #[error("`plugin_opt_{key} {value}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        reason: String,
    },
}

impl Options {
    /// Checks the options mosquitto passed.
    pub fn parse<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Options, OptionsError> {
        let (mut config, mut admin, mut drain_timeout) = (None, None, DEFAULT_DRAIN_TIMEOUT);
        let (mut admin_token_file, mut admin_read_token_file) = (None, None);
        for (key, value) in pairs {
            let value = value.trim();
            let invalid =
                |key, reason: &str| OptionsError::Invalid { key, value: value.to_string(), reason: reason.into() };
            match key {
                "config" if value.is_empty() => return Err(invalid("config", "a path is needed")),
                "config" => config = Some(PathBuf::from(value)),
                "admin" => {
                    let addr: SocketAddr =
                        value.parse().map_err(|_| invalid("admin", "expected an address such as 127.0.0.1:9090"))?;
                    admin = Some(addr);
                }
                "drain_timeout" => {
                    drain_timeout =
                        parse_duration(value).filter(|timeout| *timeout <= MAX_DRAIN_TIMEOUT).ok_or_else(|| {
                            invalid("drain_timeout", "expected a duration from 0s to 3600s, e.g. 10s or 500ms")
                        })?;
                }
                "admin_token_file" if value.is_empty() => return Err(invalid("admin_token_file", "a path is needed")),
                "admin_read_token_file" if value.is_empty() => {
                    return Err(invalid("admin_read_token_file", "a path is needed"))
                }
                "admin_token_file" => admin_token_file = Some(PathBuf::from(value)),
                "admin_read_token_file" => admin_read_token_file = Some(PathBuf::from(value)),
                other => return Err(OptionsError::Unknown(other.to_string())),
            }
        }
        let config = config.ok_or(OptionsError::MissingConfig)?;
        Ok(Options { config, admin, drain_timeout, admin_token_file, admin_read_token_file })
    }
}

/// `10s`, `500ms` or a bare number of seconds.
fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = match text.strip_suffix("ms") {
        Some(number) => (number, Duration::from_millis(1)),
        None => (text.strip_suffix('s').unwrap_or(text), Duration::from_secs(1)),
    };
    let count: u32 = number.trim().parse().ok()?;
    unit.checked_mul(count)
}
