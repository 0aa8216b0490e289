//! mqhook's own broker event type: the border type every ingest converts into.
//!
//! Broker-specific types (rmqtt hook parameters, NDJSON lines, mosquitto callbacks) never travel
//! further than their ingest module; what enters the runtime is an [`Event`]. The guest runtime
//! converts it into the WIT event at its own border.

use std::fmt;
use std::str::FromStr;

/// The twelve broker events a webhook rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A client sent CONNECT.
    ClientConnect,
    /// The broker answered CONNECT.
    ClientConnack,
    /// A client's session is up.
    ClientConnected,
    /// A client's connection ended.
    ClientDisconnected,
    /// One topic filter of a SUBSCRIBE.
    ClientSubscribe,
    /// One topic filter of an UNSUBSCRIBE.
    ClientUnsubscribe,
    /// A subscription was added to a session.
    SessionSubscribed,
    /// A subscription was removed from a session.
    SessionUnsubscribed,
    /// A session ended.
    SessionTerminated,
    /// A client published a message.
    MessagePublish,
    /// A message went out to a subscriber.
    MessageDelivered,
    /// A subscriber acknowledged a message.
    MessageAcked,
}

impl EventKind {
    /// Every kind, in the order of the spec's table.
    pub const ALL: [EventKind; 12] = [
        EventKind::ClientConnect,
        EventKind::ClientConnack,
        EventKind::ClientConnected,
        EventKind::ClientDisconnected,
        EventKind::ClientSubscribe,
        EventKind::ClientUnsubscribe,
        EventKind::SessionSubscribed,
        EventKind::SessionUnsubscribed,
        EventKind::SessionTerminated,
        EventKind::MessagePublish,
        EventKind::MessageDelivered,
        EventKind::MessageAcked,
    ];

    /// The `action` field of the body, e.g. `message_publish`.
    pub fn action(self) -> &'static str {
        match self {
            EventKind::ClientConnect => "client_connect",
            EventKind::ClientConnack => "client_connack",
            EventKind::ClientConnected => "client_connected",
            EventKind::ClientDisconnected => "client_disconnected",
            EventKind::ClientSubscribe => "client_subscribe",
            EventKind::ClientUnsubscribe => "client_unsubscribe",
            EventKind::SessionSubscribed => "session_subscribed",
            EventKind::SessionUnsubscribed => "session_unsubscribed",
            EventKind::SessionTerminated => "session_terminated",
            EventKind::MessagePublish => "message_publish",
            EventKind::MessageDelivered => "message_delivered",
            EventKind::MessageAcked => "message_acked",
        }
    }

    /// The config name (`event = "on_message_publish"`).
    pub fn config_name(self) -> String {
        format!("on_{}", self.action())
    }

    /// The key of NanoMQ's old format (`web.hook.rule.message.publish.1`).
    pub fn legacy_key(self) -> String {
        self.action().replacen('_', ".", 1)
    }

    /// Parses a legacy rule key such as `message.publish`.
    pub fn from_legacy_key(key: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.legacy_key().eq_ignore_ascii_case(key))
    }

    /// A dense index, for per-kind tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether events of this kind carry a topic a rule's filter applies to.
    pub fn has_topic(self) -> bool {
        !matches!(
            self,
            EventKind::ClientConnect
                | EventKind::ClientConnack
                | EventKind::ClientConnected
                | EventKind::ClientDisconnected
                | EventKind::SessionTerminated
        )
    }

    /// The accepted config names, for error messages.
    pub fn accepted_names() -> String {
        EventKind::ALL.iter().map(|kind| kind.config_name()).collect::<Vec<_>>().join(", ")
    }
}

/// Error for an event name that is none of the twelve.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown event `{0}`")]
pub struct UnknownEventKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownEventKind;

    /// Accepts the config name (`on_message_publish`) and the action name (`message_publish`),
    /// case-insensitively, as NanoMQ does.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let lower = name.trim().to_ascii_lowercase();
        let action = lower.strip_prefix("on_").unwrap_or(&lower);
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.action() == action)
            .ok_or_else(|| UnknownEventKind(name.to_string()))
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.action())
    }
}

/// A client's identity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Client {
    /// The MQTT client identifier.
    pub clientid: String,
    /// The CONNECT username, if any.
    pub username: Option<String>,
}

/// Fields of `client_connect` and `client_connected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Who connected.
    pub client: Client,
    /// Peer address as the broker saw it.
    pub ipaddress: String,
    /// Keep-alive from CONNECT, seconds.
    pub keepalive: u16,
    /// MQTT protocol level: 3, 4 or 5.
    pub proto_ver: u8,
    /// When the connection was established, ms since the Unix epoch.
    pub connected_at: u64,
}

/// Fields of `client_connack`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connack {
    /// Who connected.
    pub client: Client,
    /// Keep-alive from CONNECT, seconds.
    pub keepalive: u16,
    /// MQTT protocol level: 3, 4 or 5.
    pub proto_ver: u8,
    /// CONNACK return/reason code; 0 is success.
    pub reason_code: u8,
}

/// Fields of `client_disconnected` and `session_terminated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnection {
    /// Who disconnected.
    pub client: Client,
    /// `normal` for a clean disconnect, otherwise why it ended.
    pub reason: String,
}

/// Options of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscribeOptions {
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// MQTT 5 no-local flag.
    pub nl: Option<u8>,
    /// MQTT 5 retain-as-published flag.
    pub rap: Option<u8>,
    /// MQTT 5 retain handling.
    pub rh: Option<u8>,
}

/// Fields of the four subscription events (one event per topic filter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Whose subscription.
    pub client: Client,
    /// The topic filter.
    pub topic: String,
    /// Its options.
    pub opts: SubscribeOptions,
}

/// Fields of the three message events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// When the broker received it, ms since the Unix epoch.
    pub ts: u64,
    /// The topic it was published to.
    pub topic: String,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// Publisher's client id, when known.
    pub from_clientid: Option<String>,
    /// Publisher's username, if any.
    pub from_username: Option<String>,
    /// The receiving client, for delivered and acked.
    pub receiver: Option<Client>,
    /// Payload bytes as published.
    pub payload: Vec<u8>,
}

/// One broker event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // each case is documented on its EventKind
pub enum Event {
    ClientConnect(Connection),
    ClientConnack(Connack),
    ClientConnected(Connection),
    ClientDisconnected(Disconnection),
    ClientSubscribe(Subscription),
    ClientUnsubscribe(Subscription),
    SessionSubscribed(Subscription),
    SessionUnsubscribed(Subscription),
    SessionTerminated(Disconnection),
    MessagePublish(Message),
    MessageDelivered(Message),
    MessageAcked(Message),
}

impl Event {
    /// This event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::ClientConnect(_) => EventKind::ClientConnect,
            Event::ClientConnack(_) => EventKind::ClientConnack,
            Event::ClientConnected(_) => EventKind::ClientConnected,
            Event::ClientDisconnected(_) => EventKind::ClientDisconnected,
            Event::ClientSubscribe(_) => EventKind::ClientSubscribe,
            Event::ClientUnsubscribe(_) => EventKind::ClientUnsubscribe,
            Event::SessionSubscribed(_) => EventKind::SessionSubscribed,
            Event::SessionUnsubscribed(_) => EventKind::SessionUnsubscribed,
            Event::SessionTerminated(_) => EventKind::SessionTerminated,
            Event::MessagePublish(_) => EventKind::MessagePublish,
            Event::MessageDelivered(_) => EventKind::MessageDelivered,
            Event::MessageAcked(_) => EventKind::MessageAcked,
        }
    }

    /// The client the event is about: the publisher, for message events.
    pub fn clientid(&self) -> Option<&str> {
        match self {
            Event::ClientConnect(c) | Event::ClientConnected(c) => Some(&c.client.clientid),
            Event::ClientConnack(c) => Some(&c.client.clientid),
            Event::ClientDisconnected(d) | Event::SessionTerminated(d) => Some(&d.client.clientid),
            Event::ClientSubscribe(s)
            | Event::ClientUnsubscribe(s)
            | Event::SessionSubscribed(s)
            | Event::SessionUnsubscribed(s) => Some(&s.client.clientid),
            Event::MessagePublish(m) | Event::MessageDelivered(m) | Event::MessageAcked(m) => {
                m.from_clientid.as_deref()
            }
        }
    }

    /// The topic or topic filter, for events that carry one.
    pub fn topic(&self) -> Option<&str> {
        match self {
            Event::ClientSubscribe(s)
            | Event::ClientUnsubscribe(s)
            | Event::SessionSubscribed(s)
            | Event::SessionUnsubscribed(s) => Some(&s.topic),
            Event::MessagePublish(m) | Event::MessageDelivered(m) | Event::MessageAcked(m) => Some(&m.topic),
            _ => None,
        }
    }

    /// The payload, for message events.
    pub fn payload(&self) -> Option<&[u8]> {
        match self {
            Event::MessagePublish(m) | Event::MessageDelivered(m) | Event::MessageAcked(m) => Some(&m.payload),
            _ => None,
        }
    }
}

/// Milliseconds since the Unix epoch, the unit of every timestamp in an event.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(kind.config_name().parse::<EventKind>().unwrap(), kind);
            assert_eq!(kind.action().to_uppercase().parse::<EventKind>().unwrap(), kind);
            assert_eq!(EventKind::from_legacy_key(&kind.legacy_key()), Some(kind));
        }
        assert_eq!(EventKind::MessagePublish.legacy_key(), "message.publish");
        assert!("on_message_publishd".parse::<EventKind>().is_err());
    }
}
