//! Golden tests through the real wasm guest (the component the host embeds, run by wasmtime):
//! every body of spec §2, every encoding vector of §3, every truth-table row of §4.

use std::path::Path;
use std::sync::OnceLock;

use mqhook::config::{Config, Syntax};
use mqhook::event::{Client, Connack, Connection, Disconnection, Message, SubscribeOptions, Subscription};
use mqhook::{Event, GuestModule};

use crate::support::load_guest;

/// The built-in guest, compiled once for the whole test binary.
fn compiled() -> &'static GuestModule {
    static MODULE: OnceLock<GuestModule> = OnceLock::new();
    MODULE.get_or_init(|| load_guest(None, &config("[{ event = \"on_client_connack\" }]", "plain")).unwrap())
}

fn config(events: &str, encoding: &str) -> Config {
    let text = format!(
        "webhook {{\n url = \"http://127.0.0.1:9\"\n body {{ encoding = \"{encoding}\" }}\n events = {events}\n guest {{ workers = 1 }}\n}}\n"
    );
    Config::parse(&text, Path::new("golden.hcl"), Syntax::Hcl).unwrap()
}

/// Every event kind selected, no topic filter.
fn all_events() -> String {
    let rules: Vec<String> =
        mqhook::EventKind::ALL.iter().map(|k| format!("{{ event = \"{}\" }}", k.config_name())).collect();
    format!("[{}]", rules.join(", "))
}

/// The body the guest returns for `event` under `config`, or `None` when it filters it out.
fn body(config: &Config, event: Event) -> Option<String> {
    let module = compiled().with_config(&config.guest, &config.filter).unwrap();
    let request = module.instance().unwrap().handle_event(event).unwrap()?;
    Some(String::from_utf8(request.request.body.to_vec()).expect("bodies are UTF-8 JSON"))
}

fn client(id: &str, username: Option<&str>) -> Client {
    Client { clientid: id.into(), username: username.map(str::to_string) }
}

fn publish(topic: &str, payload: &[u8]) -> Message {
    Message {
        ts: 1706703724960,
        topic: topic.into(),
        qos: 1,
        retain: true,
        from_clientid: Some("wbhk_clientid".into()),
        from_username: Some("wbhk_test".into()),
        receiver: None,
        payload: payload.to_vec(),
    }
}

#[test]
fn nanomq_bodies_are_byte_exact() {
    let config = config(&all_events(), "plain");
    let connack = Event::ClientConnack(Connack {
        client: client("wbhk_clientid", Some("wbhk_test")),
        keepalive: 60,
        proto_ver: 4,
        reason_code: 0,
    });
    assert_eq!(
        body(&config, connack).unwrap(),
        r#"{"proto_ver":4,"keepalive":60,"conn_ack":"success","username":"wbhk_test","clientid":"wbhk_clientid","action":"client_connack"}"#
    );
    let refused =
        Event::ClientConnack(Connack { client: client("c", None), keepalive: 30, proto_ver: 5, reason_code: 135 });
    assert_eq!(
        body(&config, refused).unwrap(),
        r#"{"proto_ver":5,"keepalive":30,"conn_ack":"fail","username":"undefined","clientid":"c","action":"client_connack"}"#
    );
    let disconnected = Event::ClientDisconnected(Disconnection {
        client: client("wbhk_clientid", Some("wbhk_test")),
        reason: "normal".into(),
    });
    assert_eq!(
        body(&config, disconnected).unwrap(),
        r#"{"reason":"normal","username":"wbhk_test","clientid":"wbhk_clientid","action":"client_disconnected"}"#
    );
    assert_eq!(
        body(&config, Event::MessagePublish(publish("nmq/pub", b"Hello World!"))).unwrap(),
        r#"{"ts":1706703724960,"topic":"nmq/pub","retain":true,"qos":1,"action":"message_publish","from_username":"wbhk_test","from_client_id":"wbhk_clientid","payload":"Hello World!"}"#
    );
    let anonymous = Message {
        from_clientid: None,
        from_username: Some(String::new()),
        qos: 0,
        retain: false,
        ..publish("t", b"x")
    };
    assert_eq!(
        body(&config, Event::MessagePublish(anonymous)).unwrap(),
        r#"{"ts":1706703724960,"topic":"t","retain":false,"qos":0,"action":"message_publish","from_username":"undefined","from_client_id":null,"payload":"x"}"#
    );
}

#[test]
fn mqhook_bodies_follow_the_spec_order() {
    let config = config(&all_events(), "plain");
    let connection = Connection {
        client: client("c1", Some("u1")),
        ipaddress: "127.0.0.1:50000".into(),
        keepalive: 60,
        proto_ver: 5,
        connected_at: 1706703724000,
    };
    let v3 = SubscribeOptions { qos: 1, nl: None, rap: None, rh: None };
    let v5 = SubscribeOptions { qos: 2, nl: Some(1), rap: Some(0), rh: Some(2) };
    let subscription = |opts| Subscription { client: client("c1", Some("u1")), topic: "a/#".into(), opts };
    let delivered = Message { receiver: Some(client("c2", None)), ..publish("a/b", b"hi") };
    let cases = [
        (
            Event::ClientConnect(connection.clone()),
            r#"{"clientid":"c1","username":"u1","ipaddress":"127.0.0.1:50000","keepalive":60,"proto_ver":5,"action":"client_connect"}"#,
        ),
        (
            Event::ClientConnected(connection),
            r#"{"clientid":"c1","username":"u1","ipaddress":"127.0.0.1:50000","keepalive":60,"proto_ver":5,"connected_at":1706703724000,"action":"client_connected"}"#,
        ),
        (
            Event::ClientSubscribe(subscription(v3)),
            r#"{"clientid":"c1","username":"u1","topic":"a/#","opts":{"qos":1},"action":"client_subscribe"}"#,
        ),
        (
            Event::ClientSubscribe(subscription(v5)),
            r#"{"clientid":"c1","username":"u1","topic":"a/#","opts":{"qos":2,"nl":1,"rap":0,"rh":2},"action":"client_subscribe"}"#,
        ),
        (
            Event::ClientUnsubscribe(subscription(v3)),
            r#"{"clientid":"c1","username":"u1","topic":"a/#","opts":{"qos":1},"action":"client_unsubscribe"}"#,
        ),
        (
            Event::SessionSubscribed(subscription(v3)),
            r#"{"clientid":"c1","username":"u1","topic":"a/#","opts":{"qos":1},"action":"session_subscribed"}"#,
        ),
        (
            Event::SessionUnsubscribed(subscription(v3)),
            r#"{"clientid":"c1","username":"u1","topic":"a/#","action":"session_unsubscribed"}"#,
        ),
        (
            Event::SessionTerminated(Disconnection { client: client("c1", None), reason: "takenover".into() }),
            r#"{"clientid":"c1","username":"undefined","reason":"takenover","action":"session_terminated"}"#,
        ),
        (
            Event::MessageDelivered(delivered.clone()),
            r#"{"ts":1706703724960,"clientid":"c2","username":"undefined","from_client_id":"wbhk_clientid","from_username":"wbhk_test","topic":"a/b","qos":1,"retain":true,"action":"message_delivered","payload":"hi"}"#,
        ),
        (
            Event::MessageAcked(delivered),
            r#"{"ts":1706703724960,"clientid":"c2","username":"undefined","from_client_id":"wbhk_clientid","from_username":"wbhk_test","topic":"a/b","qos":1,"retain":true,"action":"message_acked","payload":"hi"}"#,
        ),
    ];
    for (event, expected) in cases {
        assert_eq!(body(&config, event).unwrap(), expected);
    }
}

#[test]
fn strings_are_escaped_as_the_spec_says() {
    let config = config(&all_events(), "plain");
    let message = publish("a\"b\\c/d", "\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f}é€ and \0 too".as_bytes());
    let text = body(&config, Event::MessagePublish(message)).unwrap();
    assert!(text.contains(r#""topic":"a\"b\\c/d""#), "{text}");
    assert!(text.contains("\"payload\":\"\\b\\f\\n\\r\\t\\u0001\\u001f\u{7f}é€ and \\u0000 too\""), "{text}");
    serde_json::from_str::<serde_json::Value>(&text).expect("valid JSON");
}

#[test]
fn every_encoding_vector() {
    let plain = config(&all_events(), "plain");
    let base64 = config(&all_events(), "base64");
    let base62 = config(&all_events(), "base62");
    let payload_field = |config: &Config, payload: &[u8]| {
        let text = body(config, Event::MessagePublish(publish("t", payload))).unwrap();
        let start = text.find(",\"payload\"").map_or(text.len() - 1, |i| i);
        text[start..].to_string()
    };
    let base62_vectors: &[(&[u8], &str)] = &[
        (b"hello", "7tQLFHz"),
        (&[0xff, 0xfe, 0x00], "18OO0"),
        (&[0x00, 0x00, 0x01], "001"),
        (&[0x00], "0"),
        (&[0x3d], "z"),
        (&[0x3e], "10"),
        (&[0xfb, 0xff], "GmV"),
        (b"i", "1h"),
        (b"messagei+/", "2a7oZkl5ty6sG7"),
    ];
    for (payload, expected) in base62_vectors {
        assert_eq!(payload_field(&base62, payload), format!(",\"payload\":\"{expected}\"}}"), "{payload:?}");
    }
    let base64_vectors: &[(&[u8], &str)] =
        &[(b"hello", "aGVsbG8="), (&[0xff, 0xfe, 0x00], "//4A"), (b"messagei+/", "bWVzc2FnZWkrLw==")];
    for (payload, expected) in base64_vectors {
        assert_eq!(payload_field(&base64, payload), format!(",\"payload\":\"{expected}\"}}"), "{payload:?}");
    }
    // Empty payloads: plain omits the key, base64 writes null, base62 an empty string.
    assert_eq!(payload_field(&plain, b""), "}");
    assert_eq!(payload_field(&base64, b""), ",\"payload\":null}");
    assert_eq!(payload_field(&base62, b""), ",\"payload\":\"\"}");
    // Plain bytes that are not UTF-8: base64 instead, said in a field; valid JSON, nothing cut.
    assert_eq!(payload_field(&plain, &[0xff, 0xfe, 0x00]), ",\"payload\":\"//4A\",\"payload_encoding\":\"base64\"}");
}

#[test]
fn base62_of_64_kib_matches_the_native_guest() {
    let config = config(&all_events(), "base62");
    let payload: Vec<u8> = (0..65536u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let text = body(&config, Event::MessagePublish(publish("t", &payload))).unwrap();
    let native = mqhook_guest_nanomq::encoding::base62(&payload);
    assert!(text.ends_with(&format!(",\"payload\":\"{native}\"}}")));
    assert!(native.len() > 80_000, "64 KiB is about 89,000 base-62 digits");
}

#[test]
fn every_topic_truth_table_row() {
    let rows = [
        ("a/b/c", "a/b/c", true),
        ("a/b/c", "a/b", false),
        ("foo/#", "foo/bar", true),
        ("foo/#", "foo", true),
        ("foo/#", "fo/bar", false),
        ("a/+", "a/b", true),
        ("a/+", "a/b/c", false),
        ("a/+", "a", false),
        ("a/+", "a/", true),
        ("+", "/a", false),
        ("+/+", "/a", true),
        ("+/#", "a", true),
        ("a/b", "a/b/", false),
        ("a+", "ab", false),
        // MQTT 3.1.1 §4.7.2: a leading wildcard does not match `$` topics.
        ("#", "$SYS/broker", false),
        ("+/broker", "$SYS/broker", false),
        ("$SYS/#", "$SYS/broker", true),
    ];
    for (filter, topic, expected) in rows {
        let config = config(&format!("[{{ event = \"on_message_publish\", topic = \"{filter}\" }}]"), "plain");
        let delivered = body(&config, Event::MessagePublish(publish(topic, b"x"))).is_some();
        assert_eq!(delivered, expected, "filter {filter:?} against topic {topic:?}");
    }
}

#[test]
fn rules_are_ored_and_deliver_at_most_once() {
    let config = config(
        "[{ event = \"on_message_publish\", topic = \"a/#\" }, { event = \"on_message_publish\", topic = \"a/b\" }, { event = \"on_client_connack\", topic = \"ignored/for/clients\" }]",
        "plain",
    );
    let module = compiled().with_config(&config.guest, &config.filter).unwrap();
    let mut instance = module.instance().unwrap();
    assert!(instance.handle_event(Event::MessagePublish(publish("a/b", b"x"))).unwrap().is_some());
    assert!(instance.handle_event(Event::MessagePublish(publish("b", b"x"))).unwrap().is_none());
    let connack =
        Event::ClientConnack(Connack { client: client("c", None), keepalive: 1, proto_ver: 4, reason_code: 0 });
    assert!(instance.handle_event(connack).unwrap().is_some(), "a rule's topic is ignored for client events");
    let disconnected = Event::ClientDisconnected(Disconnection { client: client("c", None), reason: "normal".into() });
    assert!(instance.handle_event(disconnected).unwrap().is_none(), "no rule selects it");
}

/// The same publish as the native library's type, for [`one_instance_answers_every_call_as_the_native_library_does`].
fn native_publish(message: &Message) -> mqhook_guest_nanomq::Event {
    mqhook_guest_nanomq::Event::MessagePublish(mqhook_guest_nanomq::Message {
        ts: message.ts,
        topic: message.topic.clone(),
        qos: message.qos,
        retain: message.retain,
        from_clientid: message.from_clientid.clone(),
        from_username: message.from_username.clone(),
        receiver: None,
        payload: message.payload.clone(),
    })
}

/// One instance across thousands of calls, one by one and in batches of every size, with payloads
/// from empty to past the guest's per-call arena (and not UTF-8 now and then): every body is the
/// one the same library writes natively, so no call's memory is reused while still live.
#[test]
fn one_instance_answers_every_call_as_the_native_library_does() {
    use mqhook::guest::Batch;
    use mqhook_guest_nanomq as native;

    for (encoding, native_encoding) in
        [("plain", native::PayloadEncoding::Plain), ("base64", native::PayloadEncoding::Base64)]
    {
        let config = config("[{ event = \"on_message_publish\", topic = \"s/+/t\" }]", encoding);
        let module = compiled().with_config(&config.guest, &config.filter).unwrap();
        let mut instance = module.instance().unwrap();
        let filter = native::Filter::new(native::FilterConfig {
            rules: vec![native::Rule {
                event: native::EventKind::MessagePublish,
                topic: Some("s/+/t".into()),
                endpoint: None,
            }],
            encoding: native_encoding,
            settings: Vec::new(),
            endpoints: Vec::new(),
        })
        .unwrap();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut events = 0;
        for round in 0..300 {
            let batch_len = 1 + (next() % 64) as usize;
            let messages: Vec<Message> = (0..batch_len)
                .map(|_| {
                    // Past the arena only in calls of one event, which batches would cap.
                    let size = match next() % 8 {
                        0 => 0,
                        1 if round % 3 == 0 => 300_000,
                        _ => (next() % 9000) as usize,
                    } / if round % 2 == 0 { 1 } else { 64 };
                    let mut payload: Vec<u8> = (0..size).map(|_| b' ' + (next() % 95) as u8).collect();
                    if next() % 10 == 0 && !payload.is_empty() {
                        payload[0] = 0xff;
                    }
                    let mut message = publish(&format!("s/{}/t", next() % 1000), &payload);
                    message.ts = next() >> 20;
                    message
                })
                .collect();
            let expected: Vec<Vec<u8>> =
                messages.iter().map(|message| filter.handle(&native_publish(message)).expect("selected")).collect();
            let bodies: Vec<Vec<u8>> = if round % 3 == 0 {
                messages
                    .into_iter()
                    .map(|message| {
                        let answer = instance.handle_event(Event::MessagePublish(message)).unwrap();
                        answer.expect("selected").request.body.to_vec()
                    })
                    .collect()
            } else {
                let mut batch = Batch::new();
                messages.into_iter().for_each(|message| batch.push(Event::MessagePublish(message)));
                let answers = instance.handle_batch(&batch).unwrap();
                answers.into_iter().map(|answer| answer.unwrap().expect("selected").request.body.to_vec()).collect()
            };
            assert_eq!(bodies.len(), expected.len());
            for (index, (body, expected)) in bodies.iter().zip(&expected).enumerate() {
                assert!(
                    body == expected,
                    "{encoding}, round {round}, event {index}: the body differs from the native one"
                );
            }
            events += expected.len();
        }
        assert!(events > 5_000, "{events} events");
    }
}
