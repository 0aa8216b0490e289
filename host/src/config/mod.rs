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
mod live;
mod sections;
mod tree;
mod typed;

pub use live::LiveConfig;
pub use sections::*;
pub use typed::DEFAULT_ENDPOINT;

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The webhook configuration the runtime runs with, in one section per component.
///
/// `Default` is the configuration of a file with no webhook section: disabled, every other
/// setting at its default. In `mqhook check`'s JSON the delivery and filter settings stand at the
/// top level, under NanoMQ's names (`url`, `pool_size`, `rules`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Config {
    /// `false` when the file disables the webhook (`enable = false`) or has no webhook section.
    pub enabled: bool,
    /// Which events, and how payloads are written: handed to the guest.
    #[serde(flatten)]
    pub filter: FilterSettings,
    /// Where and how requests are sent: the default endpoint (`url`).
    #[serde(flatten)]
    pub delivery: DeliveryConfig,
    /// The named endpoints, in file order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<NamedEndpoint>,
    /// The filter guest and its sandbox.
    pub guest: GuestConfig,
    /// The bounds of the in-memory queues.
    pub queues: QueueConfig,
    /// The durable on-disk queue in front of delivery; `None` keeps requests in memory only.
    pub spool: Option<SpoolConfig>,
    /// The embedded broker's limits (with `--ingest broker`).
    pub broker: BrokerLimits,
    /// The bridge ingest: mqhook as a client of an existing broker (with `--ingest mqtt://…`).
    pub bridge: BridgeConfig,
}

impl Config {
    /// The delivery settings of endpoint `slot`: 0 the default endpoint, `i + 1` named endpoint
    /// `i` (the default one's, should a reload have removed it).
    pub fn endpoint_delivery(&self, slot: usize) -> &DeliveryConfig {
        slot.checked_sub(1).and_then(|named| self.endpoints.get(named)).map_or(&self.delivery, |named| &named.delivery)
    }
}

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
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_path_buf(), source })?;
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
        if let (Syntax::Legacy, Some(tls)) = (syntax, &mut config.delivery.tls) {
            tls.section = legacy::spelling(&tls.section);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod fuzz {
    //! Arbitrary text never panics a parser: it yields a config or an error with a position.
    //! Longer runs: `PROPTEST_CASES=200000 cargo test --release -p mqhook --lib fuzz`.

    use proptest::prelude::*;

    use super::*;

    /// Text made mostly of the characters the three syntaxes give meaning to.
    fn config_text() -> impl Strategy<Value = String> {
        let pieces = prop_oneof![
            Just("webhook {".to_string()),
            Just("webhook = {".to_string()),
            Just("web.hook.".to_string()),
            Just("url = \"http://127.0.0.1:1\"".to_string()),
            Just("events = [".to_string()),
            Just("{ event = \"on_message_publish\" }".to_string()),
            Just("pool_size = ".to_string()),
            Just("spool { dir = s }".to_string()),
            Just("queues.when_full".to_string()),
            "[{}\\[\\]=:,\"\n #a-z0-9._$\\\\-]{0,12}",
            any::<char>().prop_map(String::from),
        ];
        proptest::collection::vec(pieces, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_yields_a_config_or_an_error_with_a_position(text in config_text()) {
            for syntax in [Syntax::Hocon, Syntax::Legacy, Syntax::Hcl] {
                match Config::parse(&text, Path::new("fuzz.conf"), syntax) {
                    Ok(_) => {}
                    Err(error) => prop_assert!(error.line().is_some_and(|line| line >= 1), "{error}"),
                }
            }
        }
    }
}
