//! The JSON body of each of the twelve events (spec §2), keys in exactly NanoMQ's order.
//!
//! Conventions shared by all bodies: a missing or empty username is written `"undefined"` (both
//! `username` and `from_username`); an unknown publisher client id is `"from_client_id":null`
//! (the WIT field is `from-clientid`, the body key NanoMQ's `from_client_id`); `ts` and
//! `connected_at` are milliseconds. `client_connack`, `client_disconnected` and `message_publish`
//! are byte-compatible with NanoMQ; the nine others follow EMQX 4's web hook.
#![forbid(unsafe_code)]

use crate::encoding::{payload_field, PayloadField};
use crate::event::{action, kind};
use crate::json::JsonObject;
use crate::{Client, Connack, Connection, Disconnection, Event, Message, PayloadEncoding, Subscription};

/// Room for the keys and short values of any body; long strings are added on top.
const FIXED_CAPACITY: usize = 192;

/// The body NanoMQ would send for `event`, message payloads written as `encoding` says.
pub fn body(event: &Event, encoding: PayloadEncoding) -> Vec<u8> {
    let action = action(kind(event));
    match event {
        Event::ClientConnect(connection) => connection_body(connection, None, action),
        Event::ClientConnected(connection) => connection_body(connection, Some(connection.connected_at), action),
        Event::ClientConnack(connack) => connack_body(connack, action),
        Event::ClientDisconnected(disconnection) => disconnected_body(disconnection, action),
        Event::SessionTerminated(disconnection) => terminated_body(disconnection, action),
        Event::ClientSubscribe(subscription)
        | Event::ClientUnsubscribe(subscription)
        | Event::SessionSubscribed(subscription) => subscription_body(subscription, Opts::Included, action),
        Event::SessionUnsubscribed(subscription) => subscription_body(subscription, Opts::Omitted, action),
        Event::MessagePublish(message) => publish_body(message, encoding, action),
        Event::MessageDelivered(message) | Event::MessageAcked(message) => delivered_body(message, encoding, action),
    }
}

/// `client_connack`: `{"proto_ver":4,"keepalive":60,"conn_ack":"success","username":…,"clientid":…,"action":…}`.
fn connack_body(connack: &Connack, action: &str) -> Vec<u8> {
    let mut object = JsonObject::with_capacity(FIXED_CAPACITY + client_len(&connack.client));
    object
        .number("proto_ver", connack.proto_ver.into())
        .number("keepalive", connack.keepalive.into())
        .string("conn_ack", if connack.reason_code == 0 { "success" } else { "fail" })
        .string("username", username(&connack.client))
        .string("clientid", &connack.client.clientid)
        .string("action", action);
    object.finish()
}

/// `client_disconnected`: `reason`, `username`, `clientid`, `action`.
fn disconnected_body(disconnection: &Disconnection, action: &str) -> Vec<u8> {
    let client = &disconnection.client;
    let mut object = JsonObject::with_capacity(FIXED_CAPACITY + client_len(client) + disconnection.reason.len());
    object
        .string("reason", &disconnection.reason)
        .string("username", username(client))
        .string("clientid", &client.clientid)
        .string("action", action);
    object.finish()
}

/// `session_terminated`: `clientid`, `username`, `reason`, `action`.
fn terminated_body(disconnection: &Disconnection, action: &str) -> Vec<u8> {
    let client = &disconnection.client;
    let mut object = JsonObject::with_capacity(FIXED_CAPACITY + client_len(client) + disconnection.reason.len());
    object
        .string("clientid", &client.clientid)
        .string("username", username(client))
        .string("reason", &disconnection.reason)
        .string("action", action);
    object.finish()
}

/// `client_connect` (`connected_at` none) and `client_connected`: `clientid`, `username`,
/// `ipaddress`, `keepalive`, `proto_ver`, [`connected_at`], `action`.
fn connection_body(connection: &Connection, connected_at: Option<u64>, action: &str) -> Vec<u8> {
    let client = &connection.client;
    let mut object = JsonObject::with_capacity(FIXED_CAPACITY + client_len(client) + connection.ipaddress.len());
    object
        .string("clientid", &client.clientid)
        .string("username", username(client))
        .string("ipaddress", &connection.ipaddress)
        .number("keepalive", connection.keepalive.into())
        .number("proto_ver", connection.proto_ver.into());
    if let Some(connected_at) = connected_at {
        object.number("connected_at", connected_at);
    }
    object.string("action", action);
    object.finish()
}

/// Whether a subscription body has an `opts` member: all but `session_unsubscribed` do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Opts {
    Included,
    Omitted,
}

/// `client_subscribe`, `client_unsubscribe`, `session_subscribed`: `clientid`, `username`,
/// `topic`, `opts`, `action`; `session_unsubscribed` the same without `opts`.
fn subscription_body(subscription: &Subscription, opts_member: Opts, action: &str) -> Vec<u8> {
    let client = &subscription.client;
    let mut object = JsonObject::with_capacity(FIXED_CAPACITY + client_len(client) + subscription.topic.len());
    object
        .string("clientid", &client.clientid)
        .string("username", username(client))
        .string("topic", &subscription.topic);
    if opts_member == Opts::Included {
        let opts = &subscription.opts;
        let mut opts_object = JsonObject::with_capacity(32);
        opts_object.number("qos", opts.qos.into());
        // MQTT 5 clients have all three; MQTT 3.x clients none.
        for (key, value) in [("nl", opts.nl), ("rap", opts.rap), ("rh", opts.rh)] {
            if let Some(value) = value {
                opts_object.number(key, value.into());
            }
        }
        object.object("opts", opts_object);
    }
    object.string("action", action);
    object.finish()
}

/// `message_publish`: `ts`, `topic`, `retain`, `qos`, `action`, `from_username`,
/// `from_client_id`, `payload`.
fn publish_body(message: &Message, encoding: PayloadEncoding, action: &str) -> Vec<u8> {
    let payload = payload_field(encoding, &message.payload);
    let mut object = JsonObject::with_capacity(message_capacity(message, &payload));
    object
        .number("ts", message.ts)
        .string("topic", &message.topic)
        .bool("retain", message.retain)
        .number("qos", message.qos.into())
        .string("action", action)
        .string("from_username", non_empty_or_undefined(message.from_username.as_deref()))
        .string_or_null("from_client_id", message.from_clientid.as_deref());
    write_payload(&mut object, payload);
    object.finish()
}

/// `message_delivered` and `message_acked`: `ts`, `clientid`, `username` (of the receiver),
/// `from_client_id`, `from_username`, `topic`, `qos`, `retain`, `action`, `payload`.
///
/// The WIT record makes the receiver optional; without one, `clientid` is null and `username`
/// "undefined", as for an unknown publisher.
fn delivered_body(message: &Message, encoding: PayloadEncoding, action: &str) -> Vec<u8> {
    let payload = payload_field(encoding, &message.payload);
    let receiver = message.receiver.as_ref();
    let capacity = message_capacity(message, &payload) + receiver.map_or(0, client_len);
    let mut object = JsonObject::with_capacity(capacity);
    object
        .number("ts", message.ts)
        .string_or_null("clientid", receiver.map(|receiver| receiver.clientid.as_str()))
        .string("username", receiver.map_or("undefined", username))
        .string_or_null("from_client_id", message.from_clientid.as_deref())
        .string("from_username", non_empty_or_undefined(message.from_username.as_deref()))
        .string("topic", &message.topic)
        .number("qos", message.qos.into())
        .bool("retain", message.retain)
        .string("action", action);
    write_payload(&mut object, payload);
    object.finish()
}

/// Adds the `payload` member (and, for the non-UTF-8 fallback, `payload_encoding`).
fn write_payload(object: &mut JsonObject, payload: PayloadField<'_>) {
    match payload {
        PayloadField::Omitted => {}
        PayloadField::Null => {
            object.null("payload");
        }
        PayloadField::Text(text) => {
            object.string("payload", &text);
        }
        PayloadField::Base64Fallback(text) => {
            object.string("payload", &text).string("payload_encoding", "base64");
        }
    }
}

/// The username a body writes for `client`.
fn username(client: &Client) -> &str {
    non_empty_or_undefined(client.username.as_deref())
}

/// NanoMQ writes a missing or empty username as "undefined".
fn non_empty_or_undefined(username: Option<&str>) -> &str {
    match username {
        Some(username) if !username.is_empty() => username,
        _ => "undefined",
    }
}

/// Bytes the client's strings add to a body, to size its buffer.
fn client_len(client: &Client) -> usize {
    client.clientid.len() + client.username.as_ref().map_or(0, String::len)
}

/// A buffer size for a message body: the fixed keys plus the strings it carries.
fn message_capacity(message: &Message, payload: &PayloadField<'_>) -> usize {
    let payload_len = match payload {
        PayloadField::Omitted | PayloadField::Null => 0,
        PayloadField::Text(text) => text.len(),
        PayloadField::Base64Fallback(text) => text.len(),
    };
    FIXED_CAPACITY
        + message.topic.len()
        + message.from_clientid.as_ref().map_or(0, String::len)
        + message.from_username.as_ref().map_or(0, String::len)
        + payload_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SubscribeOptions;

    fn client(clientid: &str, username: Option<&str>) -> Client {
        Client { clientid: clientid.to_owned(), username: username.map(str::to_owned) }
    }

    fn wbhk_client() -> Client {
        client("wbhk_clientid", Some("wbhk_test"))
    }

    fn connection() -> Connection {
        Connection {
            client: wbhk_client(),
            ipaddress: "127.0.0.1:51234".to_owned(),
            keepalive: 60,
            proto_ver: 5,
            connected_at: 1706703724961,
        }
    }

    fn subscription(opts: SubscribeOptions) -> Subscription {
        Subscription { client: wbhk_client(), topic: "a/#".to_owned(), opts }
    }

    const MQTT3_OPTS: SubscribeOptions = SubscribeOptions { qos: 1, nl: None, rap: None, rh: None };
    const MQTT5_OPTS: SubscribeOptions = SubscribeOptions { qos: 2, nl: Some(1), rap: Some(0), rh: Some(2) };

    fn publish(payload: &[u8]) -> Message {
        Message {
            ts: 1706703724960,
            topic: "nmq/pub".to_owned(),
            qos: 1,
            retain: true,
            from_clientid: Some("wbhk_clientid".to_owned()),
            from_username: Some("wbhk_test".to_owned()),
            receiver: None,
            payload: payload.to_vec(),
        }
    }

    fn delivered(payload: &[u8]) -> Message {
        Message { receiver: Some(client("receiver_id", Some("receiver_user"))), ..publish(payload) }
    }

    fn text(event: &Event, encoding: PayloadEncoding) -> String {
        String::from_utf8(body(event, encoding)).expect("bodies are UTF-8")
    }

    fn plain(event: &Event) -> String {
        text(event, PayloadEncoding::Plain)
    }

    #[test]
    fn spec_client_connack() {
        let connack = Connack { client: wbhk_client(), keepalive: 60, proto_ver: 4, reason_code: 0 };
        assert_eq!(
            plain(&Event::ClientConnack(connack)),
            r#"{"proto_ver":4,"keepalive":60,"conn_ack":"success","username":"wbhk_test","clientid":"wbhk_clientid","action":"client_connack"}"#
        );
    }

    #[test]
    fn connack_with_a_non_zero_code_is_fail() {
        let connack = Connack { client: client("c", None), keepalive: 0, proto_ver: 5, reason_code: 0x87 };
        assert_eq!(
            plain(&Event::ClientConnack(connack)),
            r#"{"proto_ver":5,"keepalive":0,"conn_ack":"fail","username":"undefined","clientid":"c","action":"client_connack"}"#
        );
    }

    #[test]
    fn spec_client_disconnected() {
        let disconnection = Disconnection { client: wbhk_client(), reason: "normal".to_owned() };
        assert_eq!(
            plain(&Event::ClientDisconnected(disconnection)),
            r#"{"reason":"normal","username":"wbhk_test","clientid":"wbhk_clientid","action":"client_disconnected"}"#
        );
    }

    #[test]
    fn spec_message_publish() {
        assert_eq!(
            plain(&Event::MessagePublish(publish(b"Hello World!"))),
            r#"{"ts":1706703724960,"topic":"nmq/pub","retain":true,"qos":1,"action":"message_publish","from_username":"wbhk_test","from_client_id":"wbhk_clientid","payload":"Hello World!"}"#
        );
    }

    #[test]
    fn publish_from_an_unknown_client_without_username() {
        let message = Message { from_clientid: None, from_username: None, retain: false, qos: 0, ..publish(b"x") };
        assert_eq!(
            plain(&Event::MessagePublish(message)),
            r#"{"ts":1706703724960,"topic":"nmq/pub","retain":false,"qos":0,"action":"message_publish","from_username":"undefined","from_client_id":null,"payload":"x"}"#
        );
    }

    #[test]
    fn empty_usernames_are_undefined() {
        let connack = Connack { client: client("c", Some("")), keepalive: 60, proto_ver: 4, reason_code: 0 };
        assert!(plain(&Event::ClientConnack(connack)).contains(r#""username":"undefined""#));
        let message = Message { from_username: Some(String::new()), ..publish(b"x") };
        assert!(plain(&Event::MessagePublish(message)).contains(r#""from_username":"undefined""#));
    }

    #[test]
    fn client_connect() {
        assert_eq!(
            plain(&Event::ClientConnect(connection())),
            r#"{"clientid":"wbhk_clientid","username":"wbhk_test","ipaddress":"127.0.0.1:51234","keepalive":60,"proto_ver":5,"action":"client_connect"}"#
        );
    }

    #[test]
    fn client_connected() {
        assert_eq!(
            plain(&Event::ClientConnected(connection())),
            r#"{"clientid":"wbhk_clientid","username":"wbhk_test","ipaddress":"127.0.0.1:51234","keepalive":60,"proto_ver":5,"connected_at":1706703724961,"action":"client_connected"}"#
        );
    }

    #[test]
    fn client_subscribe_mqtt3() {
        assert_eq!(
            plain(&Event::ClientSubscribe(subscription(MQTT3_OPTS))),
            r#"{"clientid":"wbhk_clientid","username":"wbhk_test","topic":"a/#","opts":{"qos":1},"action":"client_subscribe"}"#
        );
    }

    #[test]
    fn client_subscribe_mqtt5() {
        assert_eq!(
            plain(&Event::ClientSubscribe(subscription(MQTT5_OPTS))),
            r#"{"clientid":"wbhk_clientid","username":"wbhk_test","topic":"a/#","opts":{"qos":2,"nl":1,"rap":0,"rh":2},"action":"client_subscribe"}"#
        );
    }

    #[test]
    fn client_unsubscribe() {
        assert_eq!(
            plain(&Event::ClientUnsubscribe(subscription(MQTT3_OPTS))),
            r#"{"clientid":"wbhk_clientid","username":"wbhk_test","topic":"a/#","opts":{"qos":1},"action":"client_unsubscribe"}"#
        );
    }

    #[test]
    fn session_subscribed() {
        assert_eq!(
            plain(&Event::SessionSubscribed(subscription(MQTT5_OPTS))),
            r#"{"clientid":"wbhk_clientid","username":"wbhk_test","topic":"a/#","opts":{"qos":2,"nl":1,"rap":0,"rh":2},"action":"session_subscribed"}"#
        );
    }

    #[test]
    fn session_unsubscribed_has_no_opts() {
        assert_eq!(
            plain(&Event::SessionUnsubscribed(subscription(MQTT5_OPTS))),
            r#"{"clientid":"wbhk_clientid","username":"wbhk_test","topic":"a/#","action":"session_unsubscribed"}"#
        );
    }

    #[test]
    fn session_terminated() {
        let disconnection = Disconnection { client: client("c1", None), reason: "takenover".to_owned() };
        assert_eq!(
            plain(&Event::SessionTerminated(disconnection)),
            r#"{"clientid":"c1","username":"undefined","reason":"takenover","action":"session_terminated"}"#
        );
    }

    #[test]
    fn message_delivered() {
        assert_eq!(
            plain(&Event::MessageDelivered(delivered(b"Hello World!"))),
            r#"{"ts":1706703724960,"clientid":"receiver_id","username":"receiver_user","from_client_id":"wbhk_clientid","from_username":"wbhk_test","topic":"nmq/pub","qos":1,"retain":true,"action":"message_delivered","payload":"Hello World!"}"#
        );
    }

    #[test]
    fn message_acked() {
        let message = Message { from_clientid: None, from_username: None, ..delivered(b"hello") };
        assert_eq!(
            text(&Event::MessageAcked(message), PayloadEncoding::Base62),
            r#"{"ts":1706703724960,"clientid":"receiver_id","username":"receiver_user","from_client_id":null,"from_username":"undefined","topic":"nmq/pub","qos":1,"retain":true,"action":"message_acked","payload":"7tQLFHz"}"#
        );
    }

    #[test]
    fn delivered_without_receiver() {
        assert_eq!(
            plain(&Event::MessageDelivered(publish(b""))),
            r#"{"ts":1706703724960,"clientid":null,"username":"undefined","from_client_id":"wbhk_clientid","from_username":"wbhk_test","topic":"nmq/pub","qos":1,"retain":true,"action":"message_delivered"}"#
        );
    }

    #[test]
    fn empty_payload_per_encoding() {
        let event = Event::MessagePublish(publish(b""));
        let prefix = r#"{"ts":1706703724960,"topic":"nmq/pub","retain":true,"qos":1,"action":"message_publish","from_username":"wbhk_test","from_client_id":"wbhk_clientid""#;
        assert_eq!(text(&event, PayloadEncoding::Plain), format!("{prefix}}}"));
        assert_eq!(text(&event, PayloadEncoding::Base64), format!(r#"{prefix},"payload":null}}"#));
        assert_eq!(text(&event, PayloadEncoding::Base62), format!(r#"{prefix},"payload":""}}"#));
    }

    #[test]
    fn payload_per_encoding() {
        let event = Event::MessagePublish(publish(b"messagei+/"));
        assert!(text(&event, PayloadEncoding::Plain).ends_with(r#","payload":"messagei+/"}"#));
        assert!(text(&event, PayloadEncoding::Base64).ends_with(r#","payload":"bWVzc2FnZWkrLw=="}"#));
        assert!(text(&event, PayloadEncoding::Base62).ends_with(r#","payload":"2a7oZkl5ty6sG7"}"#));
    }

    #[test]
    fn plain_non_utf8_payload_falls_back_to_base64_and_says_so() {
        let event = Event::MessagePublish(publish(&[0xff, 0xfe, 0x00]));
        assert!(plain(&event)
            .ends_with(r#","from_client_id":"wbhk_clientid","payload":"//4A","payload_encoding":"base64"}"#));
        // Only plain falls back: the other encodings carry any bytes already.
        assert!(text(&event, PayloadEncoding::Base64).ends_with(r#","payload":"//4A"}"#));
        assert!(text(&event, PayloadEncoding::Base62).ends_with(r#","payload":"18OO0"}"#));
    }

    #[test]
    fn plain_payload_is_escaped_and_never_cut_at_nul() {
        let event = Event::MessagePublish(publish(b"a\0b\"c\\d\n\x01\x7f/\xc3\xa9"));
        assert!(plain(&event).ends_with("\"payload\":\"a\\u0000b\\\"c\\\\d\\n\\u0001\u{7f}/\u{e9}\"}"));
    }

    #[test]
    fn strings_from_the_broker_are_escaped() {
        let message = Message {
            topic: "t/\"q\"\t".to_owned(),
            from_clientid: Some("id\u{1b}".to_owned()),
            from_username: Some("u\\ser".to_owned()),
            ..publish(b"")
        };
        assert_eq!(
            plain(&Event::MessagePublish(message)),
            r#"{"ts":1706703724960,"topic":"t/\"q\"\t","retain":true,"qos":1,"action":"message_publish","from_username":"u\\ser","from_client_id":"id\u001b"}"#
        );
    }
}
