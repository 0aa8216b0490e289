//! Sample events and configurations for guests' unit tests: this crate's and the example guests'.

use crate::{Client, Connack, Event, EventKind, FilterConfig, Message, PayloadEncoding, Rule};

/// A publish from client `c1` (no username) to `topic`: QoS 0, payload `p`, `ts` 1.
pub fn publish(topic: &str) -> Event {
    Event::MessagePublish(Message {
        ts: 1,
        topic: topic.to_owned(),
        qos: 0,
        retain: false,
        from_clientid: Some("c1".to_owned()),
        from_username: None,
        receiver: None,
        payload: b"p".to_vec(),
    })
}

/// A successful MQTT 3.1.1 CONNACK of `client`, keep-alive 60.
pub fn connack(client: Client) -> Event {
    Event::ClientConnack(Connack { client, keepalive: 60, proto_ver: 4, reason_code: 0 })
}

/// A configuration with one topic-less rule per kind, plain encoding, and `settings`.
pub fn config(kinds: &[EventKind], settings: &[(&str, &str)]) -> FilterConfig {
    FilterConfig {
        rules: kinds.iter().map(|&event| Rule { event, topic: None, endpoint: None }).collect(),
        encoding: PayloadEncoding::Plain,
        settings: settings.iter().map(|&(key, value)| (key.to_owned(), value.to_owned())).collect(),
        endpoints: Vec::new(),
    }
}
