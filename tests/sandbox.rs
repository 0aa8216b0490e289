//! The sandbox: a guest that loops forever, allocates past its cap, or traps costs only the event
//! that set it off; the host keeps running and delivers the events after it.

use std::path::Path;

use mqhook::config::{Config, Syntax};
use mqhook::guest::Batch;
use mqhook::{Event, GuestError};

use crate::support::endpoint::{Behaviour, Endpoint};
use crate::support::{load_guest, message, mqhook, start_runtime, Run, Scratch, HOSTILE_GUEST};

fn publish_line(topic: &str, ts: u64) -> String {
    format!(
        r#"{{"event":"message_publish","from_client_id":"c","topic":"{topic}","qos":0,"retain":false,"payload":"p","ts":{ts}}}"#
    )
}

fn publish_event(topic: &str) -> Event {
    Event::MessagePublish(message(topic))
}

/// The hostile guest's config, in HCL on purpose: these tests are also the HCL syntax's end-to-end
/// check (the other tests write HOCON through `support::Webhook`).
fn hostile_config(url: &str, settings: &str) -> String {
    format!(
        "webhook {{\n  url = \"{url}\"\n  events = [{{ event = \"on_message_publish\" }}]\n  \
         guest {{\n    timeout = \"200ms\"\n    memory_limit = \"16MiB\"\n    workers = 1\n    settings = {{ {settings} }}\n  }}\n}}\n"
    )
}

/// `mqhook run` with the hostile guest over NDJSON, one publish per topic, delivering to `endpoint`.
async fn run_hostile(endpoint: &Endpoint, topics: &[&str]) -> Run {
    let scratch = Scratch::new();
    let config = scratch.file("hostile.hcl", &hostile_config(&endpoint.url(), ""));
    let input: String = topics.iter().enumerate().map(|(i, t)| publish_line(t, i as u64) + "\n").collect();
    mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap(), "--guest", HOSTILE_GUEST], &input)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_calls_are_contained_and_later_events_delivered() {
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let topics =
        ["ok/1", "hostile/loop", "ok/2", "hostile/alloc", "ok/3", "hostile/trap", "ok/4", "hostile/log", "ok/5"];
    let run = run_hostile(&endpoint, &topics).await;
    assert!(run.status.success(), "{}", run.stderr);
    let mut delivered: Vec<String> = endpoint.recorded().iter().map(|r| r.body_text()).collect();
    delivered.sort();
    assert_eq!(delivered, ["hostile/log", "ok/1", "ok/2", "ok/3", "ok/4", "ok/5"]);
    assert_eq!(run.summary("guest_timeouts"), 1, "{}", run.stderr);
    assert_eq!(run.summary("guest_traps"), 2, "{}", run.stderr);
    assert_eq!((run.summary("delivered"), run.summary("failed")), (6, 3));
    // Each failure is logged with the action and topic that caused it; guest output reaches the log.
    for topic in ["hostile/loop", "hostile/alloc", "hostile/trap"] {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains("Guest call failed") && l.contains(topic) && l.contains("message_publish")),
            "no failure logged for {topic}:\n{}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("hello from guest"), "the guest's log import reaches the host log");
    assert!(run.stderr.contains("guest stderr"), "the guest's panic message reaches the host log via stderr");
}

/// An event is run by the ingest that submits it when nothing waits (no thread hand-off); a
/// guest version whose call took too long there is run by the guest workers from then on, so a
/// stalling guest holds an ingest's (a broker's) thread once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_stalls_an_ingest_thread_once_is_run_on_the_workers_after() {
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let run = run_hostile(&endpoint, &["hostile/loop", "hostile/loop", "hostile/loop", "ok/1"]).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.summary("guest_timeouts"), 3, "every looping call is stopped by its deadline: {}", run.stderr);
    assert_eq!(run.summary("delivered"), 1, "{}", run.stderr);
    let moved = run.stderr.lines().filter(|line| line.contains("run on the guest workers only")).count();
    assert_eq!(moved, 1, "the first stall moves the guest to the workers, once:\n{}", run.stderr);
}

#[test]
fn a_guest_that_rejects_its_configuration_does_not_start() {
    let config =
        Config::parse(&hostile_config("http://127.0.0.1:9", "reject = \"yes\""), Path::new("h.hcl"), Syntax::Hcl)
            .unwrap();
    match load_guest(Some(HOSTILE_GUEST), &config) {
        Err(GuestError::Rejected { message, .. }) => assert_eq!(message, "rejected by configuration"),
        Err(other) => panic!("expected a rejection, got {other}"),
        Ok(_) => panic!("expected a rejection, the guest started"),
    }
}

#[test]
fn the_memory_cap_is_what_stops_the_allocating_guest() {
    let config = Config::parse(&hostile_config("http://127.0.0.1:9", ""), Path::new("h.hcl"), Syntax::Hcl).unwrap();
    let module = load_guest(Some(HOSTILE_GUEST), &config).unwrap();
    let event = publish_event;
    let mut instance = module.instance().unwrap();
    // The memory cap stopped it (a growth was refused, then it trapped), not the deadline.
    match instance.handle_event(event("hostile/alloc")) {
        Err(GuestError::MemoryLimit { limit, .. }) => assert_eq!(limit, 16 << 20),
        other => panic!("expected the memory limit, got {other:?}"),
    }
    // A fresh instance works again.
    let mut fresh = module.instance().unwrap();
    assert!(fresh.handle_event(event("ok")).unwrap().is_some());
}

/// guest.timeout (200 ms here) is when a looping call is stopped: not before, and not much after
/// (the epoch tick, an eighth of it). In a batch it is per event: three events get three times it.
#[test]
fn a_looping_call_is_stopped_at_its_deadline() {
    let config = Config::parse(&hostile_config("http://127.0.0.1:9", ""), Path::new("h.hcl"), Syntax::Hcl).unwrap();
    let module = load_guest(Some(HOSTILE_GUEST), &config).unwrap();
    let timeout = std::time::Duration::from_millis(200);
    let started = std::time::Instant::now();
    let stopped = module.instance().unwrap().handle_event(publish_event("hostile/loop"));
    let took = started.elapsed();
    assert!(matches!(stopped, Err(GuestError::Timeout(t)) if t == timeout), "{stopped:?}");
    assert!(took >= timeout, "stopped after {took:?}, before its deadline");
    // Generous for a loaded machine; the tick alone adds 25 ms.
    assert!(took < 5 * timeout, "stopped only after {took:?}");
    let mut batch = Batch::new();
    for topic in ["ok/1", "ok/2", "hostile/loop"] {
        batch.push(publish_event(topic));
    }
    let started = std::time::Instant::now();
    let stopped = module.instance().unwrap().handle_batch(&batch);
    let took = started.elapsed();
    assert!(matches!(stopped, Err(GuestError::Timeout(_))), "{:?}", stopped.map(|answers| answers.len()));
    assert!(took >= 3 * timeout, "a batch of three stopped after {took:?}");
    assert!(took < 8 * timeout, "a batch of three stopped only after {took:?}");
}

#[test]
fn guests_see_no_clock_environment_arguments_or_files() {
    // The test process has an environment, arguments and a clock; none of it may reach the guest.
    let config = Config::parse(&hostile_config("http://127.0.0.1:9", ""), Path::new("h.hcl"), Syntax::Hcl).unwrap();
    let module = load_guest(Some(HOSTILE_GUEST), &config).unwrap();
    let request = module.instance().unwrap().handle_event(publish_event("hostile/ambient")).unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&request.request.body), "clock=0 env=0 args=0 fs=false");
}

#[test]
fn an_oversized_body_or_a_bad_header_drops_the_event_and_is_counted() {
    let text = hostile_config("http://127.0.0.1:9", "").replace("workers = 1", "workers = 1\n    max_body = 4");
    let config = Config::parse(&text, Path::new("h.hcl"), Syntax::Hcl).unwrap();
    let module = load_guest(Some(HOSTILE_GUEST), &config).unwrap();
    let mut instance = module.instance().unwrap();
    assert!(instance.handle_event(publish_event("ok")).unwrap().is_some());
    match instance.handle_event(publish_event("too/long")) {
        Err(GuestError::InvalidDelivery(message)) => assert!(message.contains("guest.max_body"), "{message}"),
        other => panic!("expected an invalid delivery, got {other:?}"),
    }
    match instance.handle_event(publish_event("hostile/header")) {
        Err(GuestError::InvalidDelivery(message)) => assert!(message.contains("invalid header name"), "{message}"),
        other => panic!("expected an invalid delivery, got {other:?}"),
    }
    // A header the host writes itself (one `Host`, never two) is refused.
    match instance.handle_event(publish_event("hostile/host-header")) {
        Err(GuestError::InvalidDelivery(message)) => assert!(message.contains("set by the host"), "{message}"),
        other => panic!("expected an invalid delivery, got {other:?}"),
    }
    // The calls themselves worked: the same instance goes on.
    assert!(instance.handle_event(publish_event("ok")).unwrap().is_some());
    let stats = module.stats().snapshot();
    assert_eq!((stats.calls, stats.delivered, stats.invalid, stats.failing_streak), (5, 2, 3, 0));
}

#[test]
fn a_batch_is_answered_in_order_and_a_trap_in_it_fails_the_whole_call() {
    let config = Config::parse(&hostile_config("http://127.0.0.1:9", ""), Path::new("h.hcl"), Syntax::Hcl).unwrap();
    let module = load_guest(Some(HOSTILE_GUEST), &config).unwrap();
    let mut instance = module.instance().unwrap();
    let mut batch = Batch::new();
    for topic in ["ok/1", "ok/2", "hostile/endpoint", "ok/3"] {
        batch.push(publish_event(topic));
    }
    let answers = instance.handle_batch(&batch).expect("the call works");
    let bodies: Vec<String> = answers
        .iter()
        .map(|answer| match answer {
            Ok(Some(delivery)) => String::from_utf8_lossy(&delivery.request.body).into_owned(),
            Ok(None) => "filtered".into(),
            Err(error) => format!("invalid: {error}"),
        })
        .collect();
    assert_eq!(bodies[..2], ["ok/1", "ok/2"]);
    assert!(bodies[2].starts_with("invalid: ") && bodies[2].contains("\"nowhere\" is not configured"), "{bodies:?}");
    assert_eq!(bodies[3], "ok/3");
    // A trap fails the call as a whole; the runtime then retries the events one by one.
    batch.clear();
    for topic in ["ok/1", "hostile/trap", "ok/2"] {
        batch.push(publish_event(topic));
    }
    assert!(matches!(instance.handle_batch(&batch), Err(GuestError::Trap(_))));
    let mut fresh = module.instance().unwrap();
    assert!(fresh.handle(&batch, 0).unwrap().is_some());
    assert!(matches!(fresh.handle(&batch, 1), Err(GuestError::Trap(_))));
    let mut fresh = module.instance().unwrap();
    assert!(fresh.handle(&batch, 2).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_in_guest_that_keeps_failing_is_rolled_back() {
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let text = hostile_config(&endpoint.url(), "").replace("workers = 1", "workers = 1\n    rollback_after = 3");
    let config = Config::parse(&text, Path::new("h.hcl"), Syntax::Hcl).unwrap();
    let builtin = load_guest(None, &config).unwrap();
    let runtime = start_runtime(config.clone(), builtin);
    let control = runtime.active_guest();
    control.swap(load_guest(Some(HOSTILE_GUEST), &config).unwrap(), config);
    let submitter = runtime.submitter();
    for _ in 0..5 {
        submitter.try_submit(publish_event("hostile/trap")).unwrap();
    }
    drop(submitter);
    let observer = runtime.observer();
    let totals = runtime.shutdown().await;
    // Three traps in a row roll the hostile guest back; the built-in guest delivers the other two.
    assert_eq!((totals.guest_traps, totals.delivered), (3, 2), "{totals}");
    let metrics = observer.encode_metrics();
    for sample in ["mqhook_guest_swaps_total 1\n", "mqhook_guest_rollbacks_total 1\n", "mqhook_guest_traps_total 3\n"] {
        assert!(metrics.contains(sample), "{sample:?} in\n{metrics}");
    }
    let (generation, running) = control.current();
    assert_eq!((generation, running.name()), (2, "builtin:nanomq"));
    for body in endpoint.recorded().iter().map(|r| r.body_text()) {
        assert!(body.starts_with(r#"{"ts":0,"topic":"hostile/trap""#), "a NanoMQ body: {body}");
    }
}

#[test]
fn a_guest_seen_before_is_loaded_precompiled_from_the_cache() {
    let scratch = crate::support::Scratch::new();
    let cache = scratch.0.path().join("cache");
    let text = hostile_config("http://127.0.0.1:9", "")
        .replace("workers = 1", &format!("workers = 1\n    cache_dir = \"{}\"", cache.display()));
    let config = Config::parse(&text, Path::new("h.hcl"), Syntax::Hcl).unwrap();
    let first = load_guest(Some(HOSTILE_GUEST), &config).unwrap();
    assert!(!first.from_cache());
    let artifacts: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert!(artifacts[0].to_str().unwrap().starts_with(first.sha256()));
    let second = load_guest(Some(HOSTILE_GUEST), &config).unwrap();
    assert!(second.from_cache(), "the second load skips compiling");
    assert_eq!(second.sha256(), first.sha256());
    // The artifact rewritten in place (truncated, then garbage) while the guest loaded from it
    // runs: its code was read into memory, so new instances and calls are unaffected (a mapping
    // of the artifact would crash this process with SIGBUS: checked).
    let artifact = cache.join(&artifacts[0]);
    std::fs::write(&artifact, b"garbage").unwrap();
    let request = second.instance().unwrap().handle_event(publish_event("cached")).unwrap().unwrap();
    assert_eq!(&request.request.body[..], b"cached");
    // A corrupt artifact is ignored, not trusted: the guest is compiled again.
    let third = load_guest(Some(HOSTILE_GUEST), &config).unwrap();
    assert!(!third.from_cache());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_builtin_delivers_the_nanomq_body_instead() {
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    let text = hostile_config(&endpoint.url(), "").replace("workers = 1", "workers = 1\n    on_failure = \"builtin\"");
    let config = scratch.file("hostile.hcl", &text);
    let input = [publish_line("hostile/trap", 7), publish_line("ok/1", 8)].join("\n") + "\n";
    let run = mqhook(
        &["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap(), "--guest", HOSTILE_GUEST],
        &input,
    )
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!((run.summary("guest_traps"), run.summary("delivered"), run.summary("failed")), (1, 2, 0));
    let mut bodies: Vec<String> = endpoint.recorded().iter().map(|r| r.body_text()).collect();
    bodies.sort();
    assert_eq!(bodies[0], "ok/1", "the hostile guest's own body");
    assert_eq!(
        bodies[1],
        r#"{"ts":7,"topic":"hostile/trap","retain":false,"qos":0,"action":"message_publish","from_username":"undefined","from_client_id":"c","payload":"p"}"#,
        "the trapped event, saved by the built-in guest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_dead_letter_keeps_the_event_for_replay() {
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    let dead = scratch.0.path().join("dead.ndjson");
    let text = hostile_config(&endpoint.url(), "")
        .replace("workers = 1", "workers = 1\n    on_failure = \"dead_letter\"")
        .replace("  guest {", &format!("  dead_letter = \"{}\"\n  guest {{", dead.display()));
    let config = scratch.file("hostile.hcl", &text);
    let input = [publish_line("hostile/trap", 7), publish_line("ok/1", 8)].join("\n") + "\n";
    let run = mqhook(
        &["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap(), "--guest", HOSTILE_GUEST],
        &input,
    )
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!((run.summary("guest_traps"), run.summary("delivered"), run.summary("failed")), (1, 1, 1));
    let letters = std::fs::read_to_string(&dead).unwrap();
    let letter: serde_json::Value = serde_json::from_str(letters.trim()).unwrap();
    assert_eq!(letter["attempts"], 0);
    assert!(letter["error"].as_str().unwrap().contains("guest trapped"), "{letter}");
    let nanomq_body = r#"{"ts":7,"topic":"hostile/trap","retain":false,"qos":0,"action":"message_publish","from_username":"undefined","from_client_id":"c","payload":"p"}"#;
    assert_eq!(letter["body"], nanomq_body);

    // Replay (with the built-in guest's config) delivers it.
    let run = mqhook(&["replay", dead.to_str().unwrap(), "--config", config.to_str().unwrap()], "").await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.summary("delivered"), 1);
    assert!(endpoint.recorded().iter().any(|r| r.body_text() == nanomq_body));
}
