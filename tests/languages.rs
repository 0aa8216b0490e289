//! Guests in other languages: the Python payload filter (componentize-py), the JavaScript
//! payload filter and router (componentize-qjs), built from guest/python and guest/js by the tests
//! ([`crate::support::guests`]).
//!
//! Each is held to exactly what its Rust twin promises (the same [`Example`] runs: loaded at
//! start and swapped into a running host, the same requests at the endpoint), writes NanoMQ's
//! bodies byte for byte like the built-in guest, and is kept by the precompiled cache. The host's
//! limits fit them: `guest.max_instances` names itself when a component needs more core
//! instances, and a component built for the async ABI is refused with a line naming `--sync`.

use std::path::Path;
use std::time::Instant;

use mqhook::config::{Config, Syntax};
use mqhook::event::{Client, Connack, Connection, Disconnection, Message, SubscribeOptions, Subscription};
use mqhook::{Event, GuestError};

use crate::examples::{payload_filter_example, router_example};
use crate::support::guests::{
    js_built_for_0_1_0, js_payload_filter, js_router, js_router_async, python_payload_filter,
};
use crate::support::{engine, message, mqhook, Scratch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_payload_filter_delivers_what_the_rust_one_does_loaded_or_swapped_in() {
    payload_filter_example(python_payload_filter()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_payload_filter_delivers_what_the_rust_one_does_loaded_or_swapped_in() {
    payload_filter_example(js_payload_filter()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_router_delivers_what_the_rust_one_does_loaded_or_swapped_in() {
    router_example(js_router()).await;
}

/// A config selecting every event kind, with `encoding`, guest `settings` and extra guest `keys`.
fn config(encoding: &str, settings: &str, keys: &str) -> Config {
    let rules: Vec<String> =
        mqhook::EventKind::ALL.iter().map(|kind| format!("{{ event = \"{}\" }}", kind.config_name())).collect();
    let text = format!(
        "webhook {{\n  url = \"http://127.0.0.1:9\"\n  body {{ encoding = \"{encoding}\" }}\n  events = [{}]\n  guest {{\n    {keys}\n    settings = {{ {settings} }}\n  }}\n}}\n",
        rules.join(", ")
    );
    Config::parse(&text, Path::new("languages.hcl"), Syntax::Hcl).expect("the test config loads")
}

/// One event of each kind, with the awkward cases: no username, an unknown publisher, MQTT 5
/// options, a receiver, escapes, non-ASCII, a leading NUL byte.
fn every_kind(payload: &[u8]) -> Vec<Event> {
    let client = |id: &str, username: Option<&str>| Client { clientid: id.into(), username: username.map(Into::into) };
    let connection = Connection {
        client: client("c\"1", Some("")),
        ipaddress: "::1".into(),
        keepalive: 30,
        proto_ver: 5,
        connected_at: 1_706_703_724_000,
    };
    let subscription = |nl| Subscription {
        client: client("c1", Some("u1")),
        topic: "sensors/+/temp".into(),
        opts: SubscribeOptions { qos: 1, nl, rap: nl, rh: nl },
    };
    let sent = Message {
        ts: 1_706_703_724_960,
        from_clientid: Some("pub-1".into()),
        from_username: Some("ünï".into()),
        payload: payload.to_vec(),
        ..message("a/b\tc")
    };
    let delivered = Message { receiver: Some(client("sub-1", None)), from_clientid: None, ..sent.clone() };
    vec![
        Event::ClientConnect(connection.clone()),
        Event::ClientConnack(Connack { client: client("c1", None), keepalive: 60, proto_ver: 4, reason_code: 5 }),
        Event::ClientConnected(connection),
        Event::ClientDisconnected(Disconnection { client: client("c1", Some("u1")), reason: "abnormal".into() }),
        Event::ClientSubscribe(subscription(Some(1))),
        Event::ClientUnsubscribe(subscription(None)),
        Event::SessionSubscribed(subscription(Some(0))),
        Event::SessionUnsubscribed(subscription(None)),
        Event::SessionTerminated(Disconnection { client: client("c1", None), reason: "kicked\n".into() }),
        Event::MessagePublish(sent.clone()),
        Event::MessageDelivered(delivered.clone()),
        Event::MessageAcked(delivered),
    ]
}

/// The bodies the guest at `path` (the built-in one for `None`) writes for `events`.
fn bodies(path: Option<&str>, config: &Config, events: &[Event]) -> Vec<Option<String>> {
    let module = crate::support::load_guest(path, config).expect("the guest loads");
    let mut instance = module.instance().expect("an instance");
    events
        .iter()
        .map(|event| {
            let request = instance.handle_event(event.clone()).expect("the call succeeds")?;
            Some(String::from_utf8(request.request.body.to_vec()).expect("a UTF-8 body"))
        })
        .collect()
}

#[test]
fn python_and_javascript_write_nanomqs_bodies_byte_for_byte() {
    // JSON the payload filter lets through; a non-UTF-8 payload only for the router, which has no
    // condition on payloads.
    let json = br#"{"temp":31.5,"note":"caf\u00e9 \"hot\""}"#.as_slice();
    let cases: [(&str, &[u8]); 4] =
        [("plain", json), ("base64", json), ("base62", b"\0\0hello"), ("plain", b"\xff\xfe\0 not UTF-8")];
    for (encoding, payload) in cases {
        let events = every_kind(payload);
        let expected = bodies(None, &config(encoding, "", ""), &events);
        assert!(expected.iter().all(Option::is_some), "the built-in guest delivers every kind");
        let router = bodies(Some(js_router()), &config(encoding, "", ""), &events);
        assert_eq!(router, expected, "the JavaScript router, {encoding} payload {payload:?}");
        if payload.starts_with(b"{") {
            let filter = config(encoding, r#"field = "temp", op = "exists""#, "");
            for guest in [python_payload_filter(), js_payload_filter()] {
                assert_eq!(bodies(Some(guest), &filter, &events), expected, "{guest}, {encoding} payload {payload:?}");
            }
        }
    }
}

#[test]
fn a_guest_needing_more_core_instances_than_max_instances_is_refused_naming_the_setting() {
    // A Rust guest is three core instances; a componentize-py guest many more (14 with 0.25).
    let rust = crate::support::load_guest(None, &config("plain", "", "max_instances = 3"));
    assert!(rust.is_ok(), "{:?}", rust.err());
    let tight = config("plain", r#"field = "temp", op = "exists""#, "max_instances = 3");
    match crate::support::load_guest(Some(python_payload_filter()), &tight) {
        Err(error @ GuestError::InstanceLimit { limit: 3, .. }) => {
            assert!(error.to_string().contains("guest.max_instances = 3 allows"), "{error}");
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a componentize-py guest loaded with guest.max_instances = 3"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_built_for_the_async_abi_is_refused_with_a_line_naming_sync() {
    let scratch = Scratch::new();
    let conf = scratch.file("async.hcl", "webhook {\n  url = \"http://127.0.0.1:9\"\n}\n");
    let run =
        mqhook(&["run", "--ingest", "ndjson:-", "--config", conf.to_str().unwrap(), "--guest", js_router_async()], "")
            .await;
    assert!(!run.status.success(), "an async component started: {}", run.stderr);
    let line = run.stderr.lines().find(|line| line.contains("async ABI")).unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(line.contains("componentize-qjs: `--sync`"), "{line}");
}

#[test]
fn a_guest_built_against_wit_0_1_0_is_refused_naming_both_versions() {
    let config = config("plain", "", "");
    let refused = engine()
        .load(Some(Path::new(js_built_for_0_1_0())), &config.guest, &config.filter)
        .err()
        .expect("a 0.1.0 guest is refused");
    assert!(matches!(refused, GuestError::WitVersion { .. }), "{refused:?}");
    let message = refused.to_string();
    assert!(message.contains("built against mqhook:filter@0.1.0"), "{message}");
    assert!(message.contains("this host runs mqhook:filter@0.2.0 guests"), "{message}");
}

#[test]
fn the_precompiled_cache_keeps_python_and_javascript_guests() {
    let scratch = Scratch::new();
    let cache = format!("cache_dir = \"{}\"", scratch.0.path().display());
    for (guest, settings) in [(python_payload_filter(), r#"field = "temp", op = "exists""#), (js_router(), "")] {
        let config = config("plain", settings, &cache);
        let load = || {
            let started = Instant::now();
            let module = engine().load(Some(Path::new(guest)), &config.guest, &config.filter).expect("it loads");
            (module.from_cache(), started.elapsed())
        };
        let ((first, compiled), (second, cached)) = (load(), load());
        assert_eq!((first, second), (false, true), "{guest}: compiled once, then from the cache");
        eprintln!("{guest}: compiled and loaded in {compiled:?}, from the cache in {cached:?}");
    }
}
