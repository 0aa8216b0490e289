//! The example guests of guest/: each runs in the real binary, fed NDJSON events, and the real
//! endpoint receives exactly what the guest promises — bodies, paths and headers.
//!
//! An [`Example`] is a guest, its config and its events. The tests run each with the guest loaded
//! at start ([`Example::run_loaded_at_start`]), then swapped into a host already running the
//! built-in guest ([`Example::run_swapped_in`]), and check that both runs give the endpoint exactly
//! the same requests: the swap changed what the endpoint receives, without a restart.

use crate::support::endpoint::{Behaviour, Endpoint, Recorded};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::{
    admin, free_loopback_addr, mqhook, spawn_mqhook, wait_for_listener, Run, Scratch, CLOUDEVENTS_GUEST,
    PAYLOAD_FILTER_GUEST, ROUTER_GUEST,
};

/// A guest at work: the component, the config it runs under, the events it is fed.
pub(crate) struct Example {
    pub(crate) guest: &'static str,
    /// Lines added to the `webhook` block, such as headers.
    pub(crate) webhook: &'static str,
    /// The members of the `events` list.
    pub(crate) rules: &'static str,
    /// The members of `guest.settings`.
    pub(crate) settings: &'static str,
    /// NDJSON lines.
    pub(crate) events: Vec<String>,
}

/// One request as the endpoint received it, without `host`, `content-length` and
/// `idempotency-key`, which the host sets alike for every guest (the key differs per run).
#[derive(Debug, PartialEq)]
pub(crate) struct Received {
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Example {
    /// Starts `mqhook` with the guest loaded from the start, feeds it the events, and returns the
    /// run and what the endpoint received, sorted by body (requests are sent concurrently).
    pub(crate) async fn run_loaded_at_start(&self) -> (Run, Vec<Received>) {
        let endpoint = Endpoint::start(Behaviour::default()).await;
        let scratch = Scratch::new();
        let config = scratch.file("example.hcl", &self.config(&endpoint.url()));
        let input: String = self.events.iter().map(|line| format!("{line}\n")).collect();
        let run = mqhook(
            &["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap(), "--guest", self.guest],
            &input,
        )
        .await;
        (run, received(&endpoint))
    }

    /// Starts `mqhook` with the built-in guest and the admin API, swaps this guest in through
    /// `PUT /guest`, then feeds the events; returns the summary line and what the endpoint received.
    async fn run_swapped_in(&self) -> (String, Vec<Received>) {
        let endpoint = Endpoint::start(Behaviour::default()).await;
        let scratch = Scratch::new();
        let config = scratch.file("example.hcl", &self.config(&endpoint.url()));
        let addr = free_loopback_addr();
        let mut child =
            spawn_mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap(), "--admin", &addr]);
        wait_for_listener(&addr).await;
        let (status, swapped) = admin(&addr, "PUT", std::fs::read(self.guest).unwrap()).await;
        assert_eq!((status, swapped["generation"].as_u64()), (200, Some(1)), "{swapped}");
        let mut stdin = child.stdin.take().unwrap();
        let input: String = self.events.iter().map(|line| format!("{line}\n")).collect();
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin);
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("mqhook ends")
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let summary =
            String::from_utf8_lossy(&output.stdout).lines().find(|l| l.starts_with("summary:")).unwrap().to_string();
        (summary, received(&endpoint))
    }

    /// Runs the example both ways and checks the swapped-in run gives the same requests and counts.
    pub(crate) async fn run_both_ways(&self) -> (Run, Vec<Received>) {
        let (run, received) = self.run_loaded_at_start().await;
        let (summary, swapped) = self.run_swapped_in().await;
        assert_eq!(swapped, received, "swapped into a running host, the guest must act the same");
        let counts = |line: &str| {
            line.split_whitespace().filter(|pair| !pair.starts_with("retries")).map(str::to_string).collect::<Vec<_>>()
        };
        let started = run.stdout.lines().find(|l| l.starts_with("summary:")).unwrap_or_default();
        assert_eq!(counts(&summary), counts(started));
        (run, received)
    }

    fn config(&self, url: &str) -> String {
        format!(
            "webhook {{\n  url = \"{url}/hook\"\n{}\n  events = [{}]\n  guest {{\n    settings = {{\n{}\n    }}\n  }}\n}}\n",
            self.webhook, self.rules, self.settings
        )
    }
}

fn received(endpoint: &Endpoint) -> Vec<Received> {
    let received = endpoint
        .recorded()
        .iter()
        .map(|request: &Recorded| {
            assert_eq!(request.method, "POST");
            assert_eq!(request.header("content-length"), Some(request.body.len().to_string().as_str()));
            Received {
                path: request.path.clone(),
                headers: request
                    .headers
                    .iter()
                    .filter(|(name, _)| !["host", "content-length", "idempotency-key"].contains(&name.as_str()))
                    .cloned()
                    .collect(),
                body: request.body_text(),
            }
        })
        .collect();
    by_body(received)
}

/// `requests` sorted by body: the order expectations are written in does not matter.
fn by_body(mut requests: Vec<Received>) -> Vec<Received> {
    requests.sort_by(|a, b| a.body.cmp(&b.body));
    requests
}

/// A `message_publish` line from client `c1`; `payload` is the payload's text.
pub(crate) fn publish(topic: &str, payload: &str, ts: u64) -> String {
    let payload = serde_json::to_string(payload).unwrap();
    format!(
        r#"{{"event":"message_publish","from_client_id":"c1","from_username":"u1","topic":"{topic}","qos":1,"retain":false,"payload":{payload},"ts":{ts}}}"#
    )
}

/// NanoMQ's body for [`publish`].
fn publish_body(topic: &str, payload: &str, ts: u64) -> String {
    let payload = serde_json::to_string(payload).unwrap();
    format!(
        r#"{{"ts":{ts},"topic":"{topic}","retain":false,"qos":1,"action":"message_publish","from_username":"u1","from_client_id":"c1","payload":{payload}}}"#
    )
}

const CONNACK: &str =
    r#"{"event":"client_connack","clientid":"c1","username":"u1","keepalive":60,"proto_ver":4,"reason_code":0}"#;
const CONNACK_BODY: &str =
    r#"{"proto_ver":4,"keepalive":60,"conn_ack":"success","username":"u1","clientid":"c1","action":"client_connack"}"#;

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|&(name, value)| (name.to_string(), value.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_filter_delivers_only_publishes_whose_json_meets_the_condition() {
    payload_filter_example(PAYLOAD_FILTER_GUEST).await;
}

/// The payload filter example, run both ways, and what the endpoint must receive: the Rust guest
/// and its Python twin are held to the same.
pub(crate) async fn payload_filter_example(guest: &'static str) {
    let example = Example {
        guest,
        webhook: "",
        rules: r#"{ event = "on_message_publish", topic = "sensors/#" }, { event = "on_client_connack" }"#,
        settings: r#"field = "/temp", op = "gt", value = "30""#,
        events: vec![
            publish("sensors/kitchen", r#"{"temp":31.5}"#, 1),
            publish("sensors/kitchen", r#"{"temp":29}"#, 2),
            publish("sensors/kitchen", "31.5 degrees", 3),
            publish("sensors/kitchen", r#"{"humidity":50}"#, 4),
            publish("lights/kitchen", r#"{"temp":99}"#, 5),
            CONNACK.to_string(),
        ],
    };
    let (run, received) = example.run_both_ways().await;
    assert!(run.status.success(), "{}", run.stderr);
    // Too cold, not JSON, no `temp`, and a topic no rule selects.
    assert_eq!((run.summary("received"), run.summary("filtered"), run.summary("delivered")), (6, 4, 2));
    let expected = [publish_body("sensors/kitchen", r#"{"temp":31.5}"#, 1), CONNACK_BODY.to_string()];
    let expected = expected.into_iter().map(|body| Received { path: "/hook".into(), headers: Vec::new(), body });
    assert_eq!(received, by_body(expected.collect()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_wraps_nanomqs_bodies_in_structured_cloud_events() {
    let connected_line = r#"{"event":"client_connected","clientid":"c1","username":"u1","ipaddress":"127.0.0.1:5000","keepalive":60,"proto_ver":4,"connected_at":1706703724000}"#;
    let example = Example {
        guest: CLOUDEVENTS_GUEST,
        webhook: "",
        rules: r#"{ event = "on_message_publish" }, { event = "on_client_connack" }, { event = "on_client_connected" }"#,
        settings: r#"source = "mqtt://broker.example""#,
        events: vec![
            publish("sensors/kitchen", r#"{"temp":21.5}"#, 1706703724960),
            publish("sensors/kitchen", r#"{"temp":21.5}"#, 1706703724960),
            CONNACK.to_string(),
            connected_line.to_string(),
        ],
    };
    let (run, received) = example.run_both_ways().await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.summary("delivered"), 4);
    // Each body with its id replaced by `ID`, and the id.
    let mut events: Vec<(String, String)> = received
        .iter()
        .map(|request| {
            assert_eq!(request.path, "/hook");
            assert_eq!(request.headers, headers(&[("content-type", "application/cloudevents+json")]));
            let event: serde_json::Value = serde_json::from_str(&request.body).expect("a JSON body");
            let id = event["id"].as_str().expect("a string id").to_string();
            assert!(id.len() == 32 && id.bytes().all(|digit| digit.is_ascii_hexdigit()), "id {id}");
            (request.body.replacen(&id, "ID", 1), id)
        })
        .collect();
    events.sort();
    let (bodies, ids): (Vec<String>, Vec<String>) = events.into_iter().unzip();
    let envelope = |type_subject_time: &str, data: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"ID","source":"mqtt://broker.example",{type_subject_time},"datacontenttype":"application/json","data":{data}}}"#
        )
    };
    let publish = envelope(
        r#""type":"io.nanomq.message_publish","subject":"sensors/kitchen","time":"2024-01-31T12:22:04.960Z""#,
        &publish_body("sensors/kitchen", r#"{"temp":21.5}"#, 1706703724960),
    );
    let connack = envelope(r#""type":"io.nanomq.client_connack""#, CONNACK_BODY);
    let connected = envelope(
        r#""type":"io.nanomq.client_connected","time":"2024-01-31T12:22:04.000Z""#,
        r#"{"clientid":"c1","username":"u1","ipaddress":"127.0.0.1:5000","keepalive":60,"proto_ver":4,"connected_at":1706703724000,"action":"client_connected"}"#,
    );
    // In sorted order: connack, connected, then the two publishes.
    assert_eq!(bodies, [connack, connected, publish.clone(), publish]);
    assert_eq!(ids[2], ids[3], "the same event gets the same id");
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "different events get different ids: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_chooses_path_and_headers_from_the_topic() {
    router_example(ROUTER_GUEST).await;
}

/// The router example, run both ways, and what the endpoint must receive: the Rust guest and its
/// JavaScript twin are held to the same.
pub(crate) async fn router_example(guest: &'static str) {
    let example = Example {
        guest,
        webhook: r#"  headers = { x-api-key = "secret" }"#,
        rules: r#"{ event = "on_message_publish" }, { event = "on_client_connack" }"#,
        settings: r#"
      "route.sensors/+/temp" = "/temps"
      "route.sensors/#"      = "/sensors"
      "default"              = "/other"
      "header.x-api-version" = "2"
"#,
        events: vec![
            publish("sensors/kitchen/temp", "21.5", 1),
            publish("sensors/küche/temp", "22", 2),
            publish("sensors/kitchen/humidity", "40", 3),
            publish("lights/kitchen", "on", 4),
            CONNACK.to_string(),
        ],
    };
    let (run, received) = example.run_both_ways().await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.summary("delivered"), 5);
    // The configured header, the guest's `header.*` settings, then the topic.
    let routed = |path: &str, topic: &str, payload: &str, ts: u64| Received {
        path: path.into(),
        headers: headers(&[("x-api-key", "secret"), ("x-api-version", "2"), ("x-mqhook-topic", topic)]),
        body: publish_body(topic, payload, ts),
    };
    let mut umlaut = routed("/hook/temps", "sensors/küche/temp", "22", 2);
    // A header value cannot hold `ü`: it is percent-encoded.
    umlaut.headers[2].1 = "sensors/k%C3%BCche/temp".into();
    let expected = vec![
        routed("/hook/temps", "sensors/kitchen/temp", "21.5", 1),
        umlaut,
        routed("/hook/sensors", "sensors/kitchen/humidity", "40", 3),
        routed("/hook/other", "lights/kitchen", "on", 4),
        Received {
            path: "/hook/other".into(),
            headers: headers(&[("x-api-key", "secret"), ("x-api-version", "2")]),
            body: CONNACK_BODY.into(),
        },
    ];
    assert_eq!(received, by_body(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_without_a_default_posts_unmatched_events_to_the_url() {
    let example = Example {
        guest: ROUTER_GUEST,
        webhook: "",
        rules: r#"{ event = "on_message_publish" }, { event = "on_client_connack" }"#,
        settings: r#""route.sensors/#" = "/sensors""#,
        events: vec![publish("sensors/1", "a", 1), publish("lights/1", "b", 2), CONNACK.to_string()],
    };
    let (run, received) = example.run_both_ways().await;
    assert!(run.status.success(), "{}", run.stderr);
    let routes: Vec<(&str, Option<&str>)> = received
        .iter()
        .map(|request| {
            let topic = request.headers.iter().find(|(name, _)| name == "x-mqhook-topic");
            (request.path.as_str(), topic.map(|(_, value)| value.as_str()))
        })
        .collect();
    // Sorted by body: the connack, then the publishes by ts.
    assert_eq!(routes, [("/hook", None), ("/hook/sensors", Some("sensors/1")), ("/hook", Some("lights/1"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_guests_refuse_invalid_settings_and_the_host_does_not_start() {
    let cases = [
        (PAYLOAD_FILTER_GUEST, r#"field = "/temp", op = "between", value = "30""#, r#"unknown `op` "between""#),
        (PAYLOAD_FILTER_GUEST, r#"op = "exists""#, "setting `field` is required"),
        (CLOUDEVENTS_GUEST, r#"source = """#, "setting `source` must not be empty"),
        (ROUTER_GUEST, r#""route.a/#/b" = "/a""#, "setting `route.a/#/b`: the topic filter"),
        (ROUTER_GUEST, r#""default" = "other""#, "setting `default`: the path \"other\" must start with `/`"),
    ];
    for (guest, settings, reason) in cases {
        let example = Example {
            guest,
            webhook: "",
            rules: r#"{ event = "on_message_publish" }"#,
            settings,
            events: vec![publish("t", "p", 1)],
        };
        let (run, received) = example.run_loaded_at_start().await;
        assert!(!run.status.success(), "{guest} started with {settings}");
        assert!(run.stderr.contains("rejected the configuration") && run.stderr.contains(reason), "{}", run.stderr);
        assert!(received.is_empty());
    }
}
