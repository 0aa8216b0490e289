//! The publish that the filter and language benches give their guests.

use mqhook::event::Message;
use mqhook::Event;

/// A QoS 1 publish from `sensor-1` (username `alice`) to `topic`, carrying `payload`.
pub fn publish(topic: &str, payload: Vec<u8>) -> Event {
    Event::MessagePublish(Message {
        ts: 1706703724960,
        topic: topic.into(),
        qos: 1,
        retain: false,
        from_clientid: Some("sensor-1".into()),
        from_username: Some("alice".into()),
        receiver: None,
        payload,
    })
}
