//! Named endpoints: rules and guests choose them, each has its own queue, pool, health and
//! backoff, and one that is down holds up nobody else.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::endpoint::{Behaviour, Endpoint};
use crate::support::{
    free_loopback_addr, load_guest, parse_metrics, start_runtime, wait_until, HOSTILE_GUEST, ROUTER_GUEST,
};
use mqhook::event::{Event, Message};

/// One sample of the pipeline's metrics; a missing one fails the test.
fn sample(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or_else(|| panic!("no sample {key} in {samples:#?}"))
}

fn parse(text: &str) -> mqhook::Config {
    mqhook::Config::parse(text, std::path::Path::new("endpoints.conf"), mqhook::config::Syntax::Hocon)
        .expect("the config loads")
}

fn publish(topic: &str, n: usize) -> Event {
    Event::MessagePublish(Message {
        from_clientid: Some(format!("c{n}")),
        payload: format!("p-{n}").into_bytes(),
        ..crate::support::message(topic)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_for_ten_seconds_holds_up_no_other() {
    // `audit` is down: nothing listens on its port until the outage is over.
    let steady = Endpoint::start(Behaviour::default()).await;
    let audit_addr = free_loopback_addr();
    let text = format!(
        "webhook {{\n  url = \"{}\"\n  endpoints = [ {{ name = \"audit\", url = \"http://{audit_addr}/audit\" }} ]\n  \
         events = [\n    {{ event = \"on_message_publish\", topic = \"sensors/#\" }}\n    \
         {{ event = \"on_message_publish\", topic = \"sensors/#\", endpoint = \"audit\" }}\n  ]\n}}\n",
        steady.url()
    );
    let config = parse(&text);
    let runtime = start_runtime(config.clone(), load_guest(None, &config).unwrap());
    let (submitter, observer) = (runtime.submitter(), runtime.observer());
    let metrics = || parse_metrics(&observer.encode_metrics());

    // Ten seconds of publishes at 50 a second, every one for both endpoints. The steady endpoint
    // keeps up all along: each second, what it has received trails what was sent by at most one
    // second's worth.
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut sent = 0;
    for second in 1..=10 {
        for _ in 0..50 {
            ticks.tick().await;
            submitter.try_submit(publish("sensors/kitchen", sent)).expect("the runtime takes it");
            sent += 1;
        }
        let delivered = sample(&metrics(), "mqhook_requests_delivered_total{endpoint=\"default\"}") as usize;
        assert!(delivered + 50 >= sent, "second {second}: the steady endpoint got {delivered} of {sent}");
    }
    wait_until("the steady endpoint has every request", async || steady.count() == sent).await;

    let during = metrics();
    assert_eq!(sample(&during, "mqhook_requests_delivered_total{endpoint=\"default\"}"), sent as f64);
    assert_eq!(sample(&during, "mqhook_requests_delivered_total{endpoint=\"audit\"}"), 0.0);
    assert!(sample(&during, "mqhook_delivery_failures_total{endpoint=\"audit\",reason=\"connect\"}") >= 1.0);
    assert_eq!(sample(&during, "mqhook_endpoint_backing_off{endpoint=\"audit\"}"), 1.0);
    assert_eq!(sample(&during, "mqhook_endpoint_backing_off{endpoint=\"default\"}"), 0.0);
    assert_eq!(sample(&during, "mqhook_delivery_failures_total{endpoint=\"default\",reason=\"connect\"}"), 0.0);
    let status = observer.endpoints();
    assert_eq!((status[0].name.as_str(), status[0].status.state), ("default", "healthy"));
    assert_eq!((status[1].name.as_str(), status[1].status.state), ("audit", "backing_off"));
    assert_eq!(status[1].url, format!("http://{audit_addr}/audit"));

    // The outage ends: everything the audit endpoint missed arrives, once each, on its own path.
    let audit = Endpoint::start_at(audit_addr.parse().unwrap(), Behaviour::default()).await;
    wait_until("the audit endpoint has every request", async || audit.count() >= sent).await;
    drop(submitter);
    let totals = runtime.shutdown().await;
    assert_eq!(totals.delivered, 2 * sent as u64, "{totals}");
    let audited = audit.recorded();
    assert_eq!(audited.len(), sent);
    assert!(audited.iter().all(|request| request.path == "/audit"), "each went to the audit URL");
    let mut payloads: Vec<String> = audited.iter().map(|request| request.body_text()).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), sent, "no duplicates, none missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_choose_endpoints_and_an_event_several_select_goes_to_each() {
    let (default, alerts) = (Endpoint::start(Behaviour::default()).await, Endpoint::start(Behaviour::default()).await);
    let text = format!(
        "webhook {{\n  url = \"{}\"\n  endpoints = [ {{ name = \"alerts\", url = \"{}\", headers {{ x-team = \"ops\" }} }} ]\n  \
         events = [\n    {{ event = \"on_message_publish\", topic = \"alarm/#\", endpoint = \"alerts\" }}\n    \
         {{ event = \"on_message_publish\", topic = \"#\" }}\n    {{ event = \"on_client_connack\", endpoint = \"alerts\" }}\n  ]\n}}\n",
        default.url(),
        alerts.url()
    );
    let config = parse(&text);
    let runtime = start_runtime(config.clone(), load_guest(None, &config).unwrap());
    let submitter = runtime.submitter();
    submitter.try_submit(publish("alarm/fire", 1)).unwrap();
    submitter.try_submit(publish("sensors/t", 2)).unwrap();
    submitter
        .try_submit(Event::ClientConnack(mqhook::event::Connack {
            client: mqhook::event::Client { clientid: "k".into(), username: None },
            keepalive: 60,
            proto_ver: 4,
            reason_code: 0,
        }))
        .unwrap();
    drop(submitter);
    let totals = runtime.shutdown().await;
    assert_eq!(totals.delivered, 4, "{totals}");
    let bodies = |endpoint: &Endpoint| {
        let mut bodies: Vec<String> = endpoint.recorded().iter().map(|r| r.body_text()).collect();
        bodies.sort();
        bodies
    };
    let to_default = bodies(&default);
    let to_alerts = bodies(&alerts);
    assert_eq!(to_default.len(), 2, "{to_default:?}");
    assert!(
        to_default.iter().any(|b| b.contains("\"topic\":\"alarm/fire\""))
            && to_default.iter().any(|b| b.contains("\"topic\":\"sensors/t\""))
    );
    assert_eq!(to_alerts.len(), 2, "{to_alerts:?}");
    assert!(to_alerts.iter().any(|b| b.contains("\"topic\":\"alarm/fire\"")));
    assert!(to_alerts.iter().any(|b| b.contains("\"action\":\"client_connack\"")));
    assert!(alerts.recorded().iter().all(|r| r.header("x-team") == Some("ops")), "the endpoint's own headers");
    assert!(default.recorded().iter().all(|r| r.header("x-team").is_none()), "not inherited");
    // The fan-out copies keep one idempotency key each per endpoint's queue.
    assert!(alerts.recorded().iter().all(|r| r.header("idempotency-key").is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_naming_an_unknown_endpoint_is_refused_with_its_line() {
    let text = "webhook {\n  url = \"http://127.0.0.1:1\"\n  endpoints = [ { name = \"a\", url = \"http://127.0.0.1:2\" } ]\n  \
                events = [\n    { event = \"on_message_publish\", endpoint = \"b\" }\n  ]\n}\n";
    let error = mqhook::Config::parse(text, std::path::Path::new("bad.conf"), mqhook::config::Syntax::Hocon)
        .expect_err("an unknown endpoint is refused")
        .to_string();
    assert!(error.starts_with("bad.conf:5: `webhook.events[0].endpoint`: "), "{error}");
    assert!(error.contains("no endpoint is named `b`; configured: default, a"), "{error}");
    for (endpoints, problem) in [
        ("[ { url = \"http://127.0.0.1:2\" } ]", "`webhook.endpoints[0].name`: is required"),
        ("[ { name = \"default\", url = \"http://127.0.0.1:2\" } ]", "the name `default` is taken"),
        ("[ { name = \"a b\", url = \"http://127.0.0.1:2\" } ]", "is not a name"),
        ("[ { name = \"a\" } ]", "`webhook.endpoints[0].url`: is required"),
        (
            "[ { name = \"a\", url = \"http://127.0.0.1:2\", ordering = \"none\" } ]",
            "`webhook.endpoints[0].ordering`: unknown key",
        ),
    ] {
        let text = format!("webhook {{\n  url = \"http://127.0.0.1:1\"\n  endpoints = {endpoints}\n}}\n");
        let error = mqhook::Config::parse(&text, std::path::Path::new("bad.conf"), mqhook::config::Syntax::Hocon)
            .expect_err(problem)
            .to_string();
        assert!(error.contains(problem), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_chooses_an_endpoint_by_name_and_an_unknown_name_is_an_invalid_delivery() {
    // The router example guest sends to the endpoint its `endpoint.<topic-filter>` setting names.
    let (default, archive) = (Endpoint::start(Behaviour::default()).await, Endpoint::start(Behaviour::default()).await);
    let guest_block = |guest: &str, settings: &str| {
        format!(
            "webhook {{\n  url = \"{}\"\n  endpoints = [ {{ name = \"archive\", url = \"{}\" }} ]\n  \
             events = [ {{ event = \"on_message_publish\" }} ]\n  guest {{\n    path = \"{guest}\"\n    settings {{ {settings} }}\n  }}\n}}\n",
            default.url(),
            archive.url()
        )
    };
    let config = parse(&guest_block(ROUTER_GUEST, "\"endpoint.old/#\" = \"archive\""));
    let runtime = start_runtime(config.clone(), load_guest(Some(ROUTER_GUEST), &config).unwrap());
    let submitter = runtime.submitter();
    for (n, topic) in ["old/a", "new/b"].into_iter().enumerate() {
        submitter.try_submit(publish(topic, n)).unwrap();
    }
    drop(submitter);
    let totals = runtime.shutdown().await;
    assert_eq!(totals.delivered, 2, "{totals}");
    assert_eq!(archive.recorded().len(), 1);
    assert!(archive.recorded()[0].body_text().contains("\"topic\":\"old/a\""));
    assert_eq!(default.recorded().len(), 1);
    assert!(default.recorded()[0].body_text().contains("\"topic\":\"new/b\""));

    // The router checks its names against the configured endpoints when it is configured.
    let config = parse(&guest_block(ROUTER_GUEST, "\"endpoint.old/#\" = \"nowhere\""));
    let refused = load_guest(Some(ROUTER_GUEST), &config).err().expect("an unknown endpoint is refused");
    assert!(refused.to_string().contains("no endpoint is named `nowhere`"), "{refused}");

    // A guest that does not check gets its delivery refused by the host, counted.
    let config = parse(&guest_block(HOSTILE_GUEST, ""));
    let runtime = start_runtime(config.clone(), load_guest(Some(HOSTILE_GUEST), &config).unwrap());
    runtime.submitter().try_submit(publish("hostile/endpoint", 0)).unwrap();
    let observer = runtime.observer();
    let totals = runtime.shutdown().await;
    assert_eq!((totals.delivered, totals.failed), (0, 1), "{totals}");
    let samples = parse_metrics(&observer.encode_metrics());
    assert_eq!(sample(&samples, "mqhook_guest_invalid_deliveries_total"), 1.0, "`nowhere` is not configured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_endpoints_give_ups_go_to_its_dead_letter_file_and_replay_sends_them_back_to_it() {
    use crate::support::{mqhook, Scratch};
    let default = Endpoint::start(Behaviour::default()).await;
    let refusing = Endpoint::start(Behaviour { status: http::StatusCode::NOT_FOUND, ..Behaviour::default() }).await;
    let scratch = Scratch::new();
    let dead = scratch.0.path().join("audit.dead");
    let config_for = |audit_url: &str| {
        format!(
            "webhook {{\n  url = \"{}\"\n  endpoints = [ {{ name = \"audit\", url = \"{audit_url}\", dead_letter = \"{}\" }} ]\n  \
             events = [ {{ event = \"on_message_publish\", endpoint = \"audit\" }} ]\n}}\n",
            default.url(),
            dead.display()
        )
    };
    let config = scratch.file("run.conf", &config_for(&refusing.url()));
    let line = r#"{"event":"message_publish","from_client_id":"c1","topic":"a/b","qos":1,"payload":"kept","ts":1}"#;
    let run =
        mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()], &format!("{line}\n")).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!((run.summary("delivered"), run.summary("given_up_status")), (0, 1), "{}", run.stderr);
    assert!(std::fs::read_to_string(&dead).unwrap().contains("kept"), "the audit endpoint's dead-letter file");

    let accepting = Endpoint::start(Behaviour::default()).await;
    let replay_config = scratch.file("replay.conf", &config_for(&format!("{}/audit", accepting.url())));
    let args = ["replay", dead.to_str().unwrap(), "--config", replay_config.to_str().unwrap(), "--endpoint", "audit"];
    let run = mqhook(&args, "").await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.summary("delivered"), 1, "{}", run.stdout);
    let recorded = accepting.recorded();
    assert_eq!((recorded.len(), recorded[0].path.as_str()), (1, "/audit"));
    assert!(recorded[0].body_text().contains(r#""payload":"kept""#));
    assert!(default.recorded().is_empty(), "nothing went to the default endpoint");

    let run =
        mqhook(&["replay", dead.to_str().unwrap(), "--config", replay_config.to_str().unwrap(), "--endpoint", "x"], "")
            .await;
    assert!(!run.status.success());
    assert!(run.stderr.contains("no endpoint is named `x`"), "{}", run.stderr);
}
