//! The bridge ingest: mqhook as an MQTT client of a broker you already run (NanoMQ, mosquitto,
//! EMQX, HiveMQ, VerneMQ, or another mqhook), acknowledging each message only once it is safe.
//!
//! - **Owns** one MQTT session with the broker ([`client`]: rumqttc, MQTT 5 or 3.1.1, plain or
//!   TLS, reconnecting with backoff), its subscriptions, the acknowledgements owed to the broker,
//!   and the bridge's [`BridgeCounters`].
//! - **Receives** PUBLISHes; system-topic messages about clients ([`system`], spec §8).
//! - **Hands on** one `message_publish` [`Event`] per message (and the client events of a system
//!   message) to [`Submitter::submit_with`], each with a [`Completion`].
//!
//! # At-least-once, end to end
//! A QoS 1/2 message is acknowledged (PUBACK / PUBREC) only when the runtime completes every
//! event made of it: filtered, written to the spool, or without a spool delivered or given up
//! for good. MQTT wants acknowledgements in the order the PUBLISHes came (MQTT 3.1.1 and 5
//! §4.6), so they wait in arrival order and go out as the oldest completes. The broker sends at
//! most `receive_maximum` messages before an acknowledgement (MQTT 5; with 3.1.1 its own
//! in-flight limit), so while the endpoint is down the broker holds the backlog, not mqhook.
//! With a kept session (`clean_start = false`, the default, a fixed `client_id` and a
//! `session_expiry`) the broker also keeps what is published while mqhook is down, and sends
//! again what was not acknowledged when the connection broke: at-least-once, so the endpoint
//! may see a message twice (the same body; the `Idempotency-Key` differs per copy).
//!
//! # Subscriptions
//! `subscriptions`, or else one per publish rule (its topic filter, `#` without one), plus the
//! system topics of NanoMQ and EMQX when a `client_connack`, `client_connected` or
//! `client_disconnected` rule exists. With `share_group` each becomes `$share/<group>/<filter>`,
//! and the processes of the group split the messages.
//!
//! # Publisher identity
//! A subscriber does not see who published: `from_client_id` is null and `from_username`
//! "undefined", unless the broker forwards them as MQTT 5 user properties named by
//! `from_client_id_property` / `from_username_property`.

pub mod client;
pub mod system;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;

use crate::completion::{Completed, Completion, Outcome};
use crate::config::{BridgeConfig, BridgeUrl, FilterSettings};
use crate::event::{now_millis, Event, EventKind, Message};
use crate::metrics::BridgeCounters;
use crate::runtime::{SubmitError, Submitter};
use client::{AckHandle, Acked, Incoming};

/// How long an acknowledgement waits when the client's request channel is full.
const ACK_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// Why the bridge stopped.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// No broker URL: neither `--ingest mqtt://…` nor `bridge.url`.
    #[error("no broker to connect to: give `--ingest mqtt://host:port` or `webhook.bridge.url`")]
    NoUrl,
    /// The TLS settings cannot be used.
    #[error("webhook.bridge.tls: {0}")]
    Tls(#[from] crate::delivery::tls::TlsError),
    /// The broker refused the credentials, the client id or the protocol version.
    #[error("{url}: {reason}")]
    Refused {
        /// The broker.
        url: String,
        /// What it said.
        reason: String,
    },
}

/// The bridge's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct BridgeSnapshot {
    /// PUBLISHes received.
    pub messages: u64,
    /// Of them, sent again by the broker (DUP set): duplicates of a message already seen,
    /// mostly after a reconnect.
    pub redelivered: u64,
    /// QoS 1/2 messages acknowledged to the broker.
    pub acked: u64,
    /// Sessions established (the first connection and every reconnect).
    pub connects: u64,
    /// SUBSCRIBEs the broker answered (each filter's refusal is logged).
    pub subscribed: u64,
    /// Established connections that were lost.
    pub connection_losses: u64,
    /// Connection tries that failed (the broker unreachable or refusing for now).
    pub failed_connects: u64,
    /// System-topic messages about clients that could not be read (also counted as malformed).
    pub unreadable_system: u64,
}

/// The bridge's counters now: they live with the other metrics (`mqhook_bridge_*_total`).
pub fn snapshot(counters: &BridgeCounters) -> BridgeSnapshot {
    BridgeSnapshot {
        messages: counters.messages.get(),
        redelivered: counters.redelivered.get(),
        acked: counters.acked.get(),
        connects: counters.connects.get(),
        subscribed: counters.subscribed.get(),
        connection_losses: counters.connection_losses.get(),
        failed_connects: counters.failed_connects.get(),
        unreadable_system: counters.unreadable_system.get(),
    }
}

fn bump(counter: &prometheus_client::metrics::counter::Counter) {
    counter.inc();
}

impl std::fmt::Display for BridgeSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "messages={} redelivered={} acked={} connects={} subscribed={} connection_losses={} failed_connects={} \
             unreadable_system={}",
            self.messages,
            self.redelivered,
            self.acked,
            self.connects,
            self.subscribed,
            self.connection_losses,
            self.failed_connects,
            self.unreadable_system
        )
    }
}

/// The topic filters the bridge subscribes to (before `$share/<group>/`): see the module doc.
pub fn subscriptions(config: &BridgeConfig, filter: &FilterSettings) -> Vec<String> {
    let mut filters: Vec<String> = if config.subscriptions.is_empty() {
        filter
            .rules
            .iter()
            .filter(|rule| rule.event == EventKind::MessagePublish)
            .map(|rule| rule.topic.clone().unwrap_or_else(|| "#".into()))
            .collect()
    } else {
        config.subscriptions.clone()
    };
    let client_kinds = [EventKind::ClientConnack, EventKind::ClientConnected, EventKind::ClientDisconnected];
    if filter.rules.iter().any(|rule| client_kinds.contains(&rule.event)) {
        filters.extend([system::NANOMQ_FILTER.to_string(), system::EMQX_FILTER.to_string()]);
    }
    let mut unique = Vec::new();
    for filter in filters {
        if !unique.contains(&filter) {
            unique.push(filter);
        }
    }
    match &config.share_group {
        Some(group) => unique.into_iter().map(|filter| format!("$share/{group}/{filter}")).collect(),
        None => unique,
    }
}

/// A bridge to one broker, ready to run.
pub struct Bridge {
    config: BridgeConfig,
    url: BridgeUrl,
    filters: Vec<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    submitter: Submitter,
    counters: BridgeCounters,
}

/// One message whose acknowledgement waits for its events to complete.
struct Owed {
    ack: AckHandle,
    /// The completions still to come, for the events of one message.
    pending: Vec<Completed>,
}

impl Bridge {
    /// A bridge for `config` (`url` overriding `config.url`), subscribing as the rules of `filter`
    /// say, submitting to `submitter`. Fails without a URL or on unusable TLS files.
    pub fn new(
        config: BridgeConfig,
        url: Option<BridgeUrl>,
        filter: &FilterSettings,
        submitter: Submitter,
    ) -> Result<Bridge, BridgeError> {
        let url = url.or_else(|| config.url.clone()).ok_or(BridgeError::NoUrl)?;
        let tls = if url.tls {
            let files = config.tls.clone().unwrap_or_default();
            Some(Arc::new(crate::delivery::tls::client_config(Some(&files))?))
        } else {
            None
        };
        let filters = subscriptions(&config, filter);
        let counters = submitter.bridge_counters();
        Ok(Bridge { config, url, filters, tls, submitter, counters })
    }

    /// The bridge's counters, live.
    pub fn counters(&self) -> BridgeCounters {
        self.counters.clone()
    }

    /// Runs until `shutdown` completes (then it disconnects, the session kept) or the broker
    /// refuses the credentials or protocol version (an error). An unreachable broker is retried.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), BridgeError> {
        let Bridge { config, url, filters, tls, submitter, counters } = self;
        tracing::info!(broker = %url, client_id = %config.client_id, subscriptions = ?filters, "Connecting to the broker.");
        let (client, mut incoming, poller) = client::start(&config, &url, tls);
        let _poller = AbortOnDrop(poller);
        let mut owed: VecDeque<Owed> = VecDeque::new();
        let mut outage = Outage::default();
        let mut stalled = false;
        // When a busy client channel made the oldest acknowledgement wait.
        let mut retry_ack: Option<tokio::time::Instant> = None;
        let mut shutdown = std::pin::pin!(shutdown);
        let converter = Converter { config: &config, submitter: &submitter, counters: &counters };
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = wait_until(retry_ack), if retry_ack.is_some() => retry_ack = None,
                outcome = settled(&mut owed), if !stalled && retry_ack.is_none() => match outcome {
                    Outcome::Done => {
                        let front = owed.front().expect("settled only with an owed message");
                        match client.ack(&front.ack) {
                            Acked::Queued => bump(&counters.acked),
                            Acked::Stale => {}
                            Acked::Busy => {
                                retry_ack = Some(tokio::time::Instant::now() + ACK_RETRY);
                                continue;
                            }
                        }
                        owed.pop_front();
                    }
                    Outcome::Abandoned => {
                        // Only when the runtime shuts down: acknowledging later ones would skip this.
                        tracing::warn!("A message was not taken by the runtime; no more acknowledgements on this connection.");
                        stalled = true;
                    }
                },
                item = incoming.recv() => match item {
                    Some(Incoming::Connected { session_present }) => {
                        bump(&counters.connects);
                        // What the last connection owed is sent again by the broker (a kept
                        // session) or was never at risk (a new one): nothing is acknowledged twice.
                        owed.clear();
                        stalled = false;
                        // A kept session keeps its subscriptions. The first connection of a run
                        // always subscribes, as the config may have changed.
                        if !session_present || !outage.ever_connected {
                            client.subscribe(&filters, config.qos).await;
                        }
                        outage.connected(&url, session_present);
                    }
                    Some(Incoming::Subscribed(granted)) => {
                        for (filter, granted) in filters.iter().zip(&granted) {
                            if !granted {
                                tracing::warn!(broker = %url, "The broker refused the subscription to `{filter}`.");
                            }
                        }
                        bump(&counters.subscribed);
                        let count = granted.iter().filter(|granted| **granted).count();
                        tracing::info!(broker = %url, "Subscribed to {count} of {} topic filters.", filters.len());
                    }
                    Some(Incoming::Message(message)) => {
                        if let Some(debt) = converter.submit(*message).await {
                            owed.push_back(debt);
                        }
                    }
                    Some(Incoming::Lost { error, was_connected }) => {
                        if was_connected {
                            bump(&counters.connection_losses);
                        } else {
                            bump(&counters.failed_connects);
                        }
                        outage.lost(&url, &error);
                    }
                    Some(Incoming::Refused(reason)) => {
                        return Err(BridgeError::Refused { url: url.to_string(), reason });
                    }
                    None => break,
                },
            }
        }
        client.disconnect().await;
        tracing::info!(broker = %url, "Bridge stopped: {}.", snapshot(&counters));
        Ok(())
    }
}

/// Completes at `deadline` (never without one).
async fn wait_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Completes when the oldest owed message is settled: all its events completed (`Done`) or one
/// abandoned. Never completes while nothing is owed. Cancel-safe: a completion seen is removed.
async fn settled(owed: &mut VecDeque<Owed>) -> Outcome {
    let Some(front) = owed.front_mut() else {
        return std::future::pending().await;
    };
    while let Some(next) = front.pending.last_mut() {
        let outcome = next.await;
        front.pending.pop();
        if outcome == Outcome::Abandoned {
            return Outcome::Abandoned;
        }
    }
    Outcome::Done
}

/// Turns messages into events at the border and submits them.
struct Converter<'a> {
    config: &'a BridgeConfig,
    submitter: &'a Submitter,
    counters: &'a BridgeCounters,
}

impl Converter<'_> {
    /// Submits the events of `message`; what its acknowledgement waits for, for QoS 1/2.
    async fn submit(&self, message: client::Message) -> Option<Owed> {
        bump(&self.counters.messages);
        if message.dup {
            bump(&self.counters.redelivered);
        }
        let mut pending = Vec::new();
        let Ok(topic) = String::from_utf8(message.topic.to_vec()) else {
            // MQTT forbids it; nothing can be built from it, so it is done with.
            self.submitter.record_malformed(format_args!("Skipped a message whose topic is not UTF-8."));
            return message.ack.map(|ack| Owed { ack, pending });
        };
        let mut events = Vec::new();
        match system::client_events(&topic, &message.payload) {
            Some(Ok(client_events)) => events.extend(client_events),
            Some(Err(unreadable)) => {
                bump(&self.counters.unreadable_system);
                self.submitter.record_malformed(format_args!("Skipped: {unreadable}."));
            }
            None => {}
        }
        let property = |name: &Option<String>| {
            let name = name.as_deref()?;
            message.user_properties.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone())
        };
        events.push(Event::MessagePublish(Message {
            ts: now_millis(),
            topic,
            qos: message.qos,
            retain: message.retain,
            from_clientid: property(&self.config.from_client_id_property),
            from_username: property(&self.config.from_username_property),
            receiver: None,
            payload: message.payload.to_vec(),
        }));
        for event in events {
            let outcome = match &message.ack {
                Some(_) => {
                    let (token, completed) = Completion::new();
                    pending.push(completed);
                    self.submitter.submit_with(event, token).await
                }
                None => self.submitter.submit(event).await,
            };
            match outcome {
                Ok(()) => {}
                // A bounded `queues.when_full` ran out: counted as rejected by the runtime; the
                // token is abandoned, so the message is not acknowledged.
                Err(SubmitError::Full(_)) => {}
                Err(SubmitError::Closed(_)) => break,
            }
        }
        message.ack.map(|ack| Owed { ack, pending })
    }
}

/// Logs a connection outage once: when it starts and when it ends, not per try.
#[derive(Default)]
struct Outage {
    /// Tries failed since the last connection, and whether one was ever up.
    failures: u64,
    ever_connected: bool,
}

impl Outage {
    fn lost(&mut self, url: &BridgeUrl, error: &str) {
        self.failures += 1;
        if self.failures == 1 {
            if self.ever_connected {
                tracing::warn!(broker = %url, "Connection to the broker lost ({error}); reconnecting with backoff.");
            } else {
                tracing::warn!(broker = %url, "Cannot reach the broker ({error}); retrying with backoff.");
            }
        }
    }

    fn connected(&mut self, url: &BridgeUrl, session_present: bool) {
        if self.ever_connected || self.failures > 0 {
            tracing::info!(broker = %url, tries = self.failures, session_present, "Connected to the broker again.");
        } else {
            tracing::info!(broker = %url, session_present, "Connected to the broker.");
        }
        self.failures = 0;
        self.ever_connected = true;
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rule;

    #[test]
    fn subscriptions_come_from_the_publish_rules_and_the_client_rules() {
        let rule = |event, topic: Option<&str>| Rule { event, topic: topic.map(str::to_string), endpoint: None };
        let filter = FilterSettings {
            rules: vec![
                rule(EventKind::MessagePublish, Some("a/#")),
                rule(EventKind::MessagePublish, None),
                rule(EventKind::MessagePublish, Some("a/#")),
                rule(EventKind::ClientConnack, None),
            ],
            ..FilterSettings::default()
        };
        let mut config = BridgeConfig::default();
        assert_eq!(subscriptions(&config, &filter), ["a/#", "#", system::NANOMQ_FILTER, system::EMQX_FILTER]);
        config.share_group = Some("g".into());
        config.subscriptions = vec!["x".into()];
        let shared = subscriptions(&config, &FilterSettings { rules: filter.rules[..1].to_vec(), ..filter });
        assert_eq!(shared, ["$share/g/x"]);
    }
}
