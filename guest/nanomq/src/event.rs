//! What every broker event is: its kind, its `action` name (spec §1) and the topic it carries.
#![forbid(unsafe_code)]

use crate::{Event, EventKind};

/// The kind of `event`, as rules name it.
pub fn kind(event: &Event) -> EventKind {
    match event {
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

/// The `action` value of bodies of this kind.
pub fn action(kind: EventKind) -> &'static str {
    match kind {
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

/// Whether events of this kind carry a topic (a topic filter for subscriptions), which a rule's
/// topic filter is matched against. Client events carry none.
pub fn carries_topic(kind: EventKind) -> bool {
    match kind {
        EventKind::ClientConnect
        | EventKind::ClientConnack
        | EventKind::ClientConnected
        | EventKind::ClientDisconnected
        | EventKind::SessionTerminated => false,
        EventKind::ClientSubscribe
        | EventKind::ClientUnsubscribe
        | EventKind::SessionSubscribed
        | EventKind::SessionUnsubscribed
        | EventKind::MessagePublish
        | EventKind::MessageDelivered
        | EventKind::MessageAcked => true,
    }
}

/// The topic `event` carries, if its kind carries one.
pub fn topic(event: &Event) -> Option<&str> {
    match event {
        Event::ClientConnect(_)
        | Event::ClientConnack(_)
        | Event::ClientConnected(_)
        | Event::ClientDisconnected(_)
        | Event::SessionTerminated(_) => None,
        Event::ClientSubscribe(subscription)
        | Event::ClientUnsubscribe(subscription)
        | Event::SessionSubscribed(subscription)
        | Event::SessionUnsubscribed(subscription) => Some(&subscription.topic),
        Event::MessagePublish(message) | Event::MessageDelivered(message) | Event::MessageAcked(message) => {
            Some(&message.topic)
        }
    }
}
