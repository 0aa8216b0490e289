//! Batching (`batch { … }`), end to end through the real binary and a real HTTP endpoint on
//! 127.0.0.1: the exact bodies and headers of JSON and NDJSON batches, each limit (events, bytes,
//! linger) closing a batch, a 413 splitting one, retries and dead letters of a whole batch and
//! their replay, the spool across `kill -9`, per-client order, a signed batch checked by the
//! Standard Webhooks reference library, and the block in every config syntax.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hyper::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::support::endpoint::{Behaviour, Endpoint, Recorded};
use crate::support::{
    admin_metrics, free_loopback_addr, mqhook, mqhook_command, ndjson_publishes, spawn_mqhook, wait_for_listener,
    wait_until, Run, Scratch, Webhook, WAIT_LIMIT,
};

/// A publish of client `c<client>` with payload `p-<i>` and, for bulk, a long topic.
fn publish_line(i: usize, client: usize, topic: &str) -> String {
    format!(
        "{{\"event\":\"message_publish\",\"from_client_id\":\"c{client}\",\"topic\":\"{topic}\",\"qos\":1,\"payload\":\"p-{i}\",\"ts\":1}}\n"
    )
}

/// Runs `mqhook run` on `webhook` with `input` as NDJSON events.
async fn run(scratch: &Scratch, webhook: &Webhook, input: &str) -> Run {
    let config = webhook.write(scratch, "nanomq.conf");
    let run = mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()], input).await;
    assert!(run.status.success(), "{}", run.stderr);
    run
}

/// The body each event (by payload id) gets without batching, from the same input.
async fn bodies_unbatched(input: &str) -> BTreeMap<usize, String> {
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    run(&scratch, &Webhook::new(&endpoint.url()).publishes(), input).await;
    endpoint.recorded().iter().map(|request| (payload(&request.body_text()), request.body_text())).collect()
}

/// The `i` of a body's `p-<i>` payload.
fn payload(body: &str) -> usize {
    let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    json["payload"].as_str().and_then(|p| p.strip_prefix("p-")).expect("a test payload").parse().unwrap()
}

/// A batch's members as the endpoint received them: payload ids and idempotency keys, in body
/// order (the body is parsed by its content type).
fn members(request: &Recorded) -> Vec<(usize, String)> {
    let text = request.body_text();
    let ids: Vec<usize> = match request.header("content-type") {
        Some("application/x-ndjson") => {
            assert!(text.ends_with('\n'), "every NDJSON line ends with a newline: {text:?}");
            text.lines().map(payload).collect()
        }
        Some("application/json") => serde_json::from_str::<Vec<serde_json::Value>>(&text)
            .expect("a JSON array")
            .iter()
            .map(|member| payload(&member.to_string()))
            .collect(),
        other => panic!("not a batch's content type: {other:?}"),
    };
    let keys: Vec<String> =
        request.header("idempotency-keys").expect("Idempotency-Keys").split(',').map(str::to_string).collect();
    assert_eq!(ids.len(), keys.len(), "one key per member: {request:?}");
    ids.into_iter().zip(keys).collect()
}

/// What mqhook promises a batch's key is: `batch-` and the first 128 bits of the SHA-256 of its
/// `Idempotency-Keys` value.
fn batch_key(keys: &str) -> String {
    let digest = Sha256::digest(keys.as_bytes());
    format!("batch-{}", digest[..16].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The sequence number at the end of a queue key (`<prefix>-<seq>`).
fn seq(key: &str) -> u64 {
    key.rsplit('-').next().unwrap().parse().expect("a queue key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_ndjson_batches_carry_the_bodies_unchanged_with_every_key() {
    const EVENTS: usize = 25;
    let input = ndjson_publishes(EVENTS, 3);
    let unbatched = bodies_unbatched(&input).await;
    for (format, content_type) in [("json", "application/json"), ("ndjson", "application/x-ndjson")] {
        let endpoint = Endpoint::start(Behaviour::default()).await;
        let scratch = Scratch::new();
        // The linger is long: only the count (10) and the end of the input close a batch.
        let webhook = Webhook::new(&format!("{}/hook", endpoint.url()))
            .publishes()
            .with("  headers { content-type = \"text/plain\", x-batch-test = \"kept\" }")
            .with(&format!("  batch {{ max_events = 10, linger = 60s, format = {format} }}"));
        let run = run(&scratch, &webhook, &input).await;
        assert_eq!((run.summary("delivered"), run.summary("batches"), run.summary("failed")), (25, 3, 0));
        let recorded = endpoint.recorded();
        // The three are in flight at once: they may arrive in any order.
        let mut sizes: Vec<usize> = recorded.iter().map(|request| members(request).len()).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, vec![5, 10, 10], "{format}: two full batches, and what the end of the input left");
        let mut keys = BTreeSet::new();
        for request in &recorded {
            let content_types: Vec<&str> =
                request.headers.iter().filter(|(name, _)| name == "content-type").map(|(_, v)| v.as_str()).collect();
            assert_eq!(content_types, vec![content_type], "{format}: the format's content type, once");
            assert_eq!((request.path.as_str(), request.header("x-batch-test")), ("/hook", Some("kept")));
            let listed = request.header("idempotency-keys").unwrap();
            assert_eq!(request.header("idempotency-key"), Some(batch_key(listed).as_str()), "derived from the members");
            let members = members(request);
            assert!(members.windows(2).all(|w| seq(&w[0].1) < seq(&w[1].1)), "in queue order: {members:?}");
            let expected: Vec<&str> = members.iter().map(|(id, _)| unbatched[id].as_str()).collect();
            let body = match format {
                "json" => format!("[{}]", expected.join(",")),
                _ => expected.iter().map(|body| format!("{body}\n")).collect(),
            };
            assert_eq!(request.body_text(), body, "{format}: the guests' bodies, unchanged");
            keys.extend(members.into_iter().map(|(_, key)| key));
        }
        assert_eq!(keys.len(), EVENTS, "{format}: each event's own key, once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bytes_closes_a_batch_before_it_grows_past_it() {
    const EVENTS: usize = 40;
    const MAX: usize = 1024;
    let input = ndjson_publishes(EVENTS, 3);
    let longest = bodies_unbatched(&input).await.values().map(String::len).max().unwrap();
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    let webhook =
        Webhook::new(&endpoint.url()).publishes().with("  batch { max_events = 1000, max_bytes = 1KiB, linger = 60s }");
    let run = run(&scratch, &webhook, &input).await;
    assert_eq!(run.summary("delivered"), EVENTS as u64);
    let recorded = endpoint.recorded();
    assert!(recorded.len() >= 4, "{} batches", recorded.len());
    assert!(recorded.iter().all(|request| request.body.len() <= MAX), "none over max_bytes");
    // Only the bytes, or the end of the input (once), close a batch: all but one are full.
    let short = recorded.iter().filter(|request| request.body.len() + longest < MAX).count();
    assert!(short <= 1, "{short} batches closed with room left");
    assert_eq!(recorded.iter().map(|request| members(request).len()).sum::<usize>(), EVENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_event_goes_when_the_linger_is_over_and_a_burst_shares_one_batch() {
    const LINGER: Duration = Duration::from_millis(500);
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    let config = Webhook::new(&endpoint.url())
        .publishes()
        .with("  batch { max_events = 100, linger = 500ms }")
        .write(&scratch, "nanomq.conf");
    let mut child = spawn_mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()]);
    let mut input = child.stdin.take().unwrap();
    let written = tokio::time::Instant::now();
    input.write_all(publish_line(0, 0, "t").as_bytes()).await.unwrap();
    input.flush().await.unwrap();
    wait_until("the lone event arrives", async || endpoint.count() == 1).await;
    let waited = written.elapsed();
    assert!(waited >= LINGER, "sent after {waited:?}, before the linger was over");
    assert!(waited < LINGER + Duration::from_secs(10), "sent after {waited:?}");
    let burst: String = (1..4).map(|i| publish_line(i, 0, "t")).collect();
    input.write_all(burst.as_bytes()).await.unwrap();
    input.flush().await.unwrap();
    wait_until("the burst arrives", async || endpoint.count() >= 2).await;
    drop(input);
    let output = tokio::time::timeout(WAIT_LIMIT, child.wait_with_output()).await.expect("mqhook finishes").unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let recorded = endpoint.recorded();
    let ids: Vec<Vec<usize>> =
        recorded.iter().map(|request| members(request).into_iter().map(|(id, _)| id).collect()).collect();
    assert_eq!(ids, vec![vec![0], vec![1, 2, 3]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_endpoint_finds_too_large_is_split_down_to_the_event_it_refuses() {
    const LIMIT: usize = 600;
    // Fifteen events of about 140 bytes and one of about 850 (its long topic).
    let mut input = ndjson_publishes(15, 3);
    input.push_str(&publish_line(15, 0, &format!("t/{}", "x".repeat(700))));
    let endpoint = Endpoint::start(Behaviour { max_body: Some(LIMIT), ..Behaviour::default() }).await;
    let scratch = Scratch::new();
    let dead = scratch.0.path().join("dead.ndjson");
    let webhook = Webhook::new(&endpoint.url())
        .publishes()
        .with(&format!("  dead_letter = \"{}\"", dead.display()))
        .with("  batch { max_events = 16, linger = 60s }");
    let run = run(&scratch, &webhook, &input).await;
    // 16 → 8 + 8 → four batches of 4, three of which fit; the fourth → 2 + 2 → the large
    // event alone, which gets 413 too and is given up, as without batching.
    let counts = ["delivered", "failed", "given_up_status", "batch_splits", "retries"].map(|key| run.summary(key));
    assert_eq!(counts, [15, 1, 1, 5, 0], "{}", run.stdout);
    let recorded = endpoint.recorded();
    let accepted: Vec<usize> = recorded
        .iter()
        .filter(|request| request.body.len() <= LIMIT)
        .flat_map(|request| members(request).into_iter().map(|(id, _)| id))
        .collect();
    assert_eq!(accepted.iter().copied().collect::<BTreeSet<_>>(), (0..15).collect(), "each small event once");
    assert_eq!(accepted.len(), 15);
    let letters: Vec<serde_json::Value> =
        std::fs::read_to_string(&dead).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["status"], 413);
    assert_eq!(payload(letters[0]["body"].as_str().unwrap()), 15, "the large event's own body");
    let refused_alone =
        recorded.iter().find(|request| request.body.len() > LIMIT && members(request).len() == 1).unwrap();
    assert_eq!(letters[0]["idempotency_key"].as_str(), refused_alone.header("idempotency-keys"), "its own key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_retried_whole_then_given_up_whole_and_replayed_as_the_same_batch() {
    let input = ndjson_publishes(5, 2);
    let batch = "  batch { max_events = 10, linger = 60s }\n  retry { base = 10ms }";

    // Two 503s, then 200: the same request three times.
    let flaky = Endpoint::start(Behaviour::failing_first(2, StatusCode::SERVICE_UNAVAILABLE)).await;
    let scratch = Scratch::new();
    let run_flaky = run(&scratch, &Webhook::new(&flaky.url()).publishes().with(batch), &input).await;
    assert_eq!(["delivered", "retries", "batches"].map(|key| run_flaky.summary(key)), [5, 2, 1]);
    let attempts = flaky.recorded();
    assert_eq!(attempts.len(), 3);
    for attempt in &attempts[1..] {
        assert_eq!(attempt.body, attempts[0].body, "the same body on every attempt");
        for header in ["idempotency-key", "idempotency-keys"] {
            assert_eq!(attempt.header(header), attempts[0].header(header), "the same {header} on every attempt");
        }
    }

    // 400: the whole batch is given up, one dead letter per event.
    let refusing = Endpoint::start(Behaviour { status: StatusCode::BAD_REQUEST, ..Behaviour::default() }).await;
    let dead = scratch.0.path().join("dead.ndjson");
    let webhook =
        Webhook::new(&refusing.url()).publishes().with(batch).with(&format!("  dead_letter = \"{}\"", dead.display()));
    let refused = run(&scratch, &webhook, &input).await;
    assert_eq!(["delivered", "failed", "given_up_status", "batches"].map(|key| refused.summary(key)), [0, 5, 5, 1]);
    let sent = refusing.recorded();
    assert_eq!(sent.len(), 1, "a permanent answer is not retried");
    let letters: Vec<serde_json::Value> =
        std::fs::read_to_string(&dead).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let lettered: Vec<(usize, String)> = letters
        .iter()
        .map(|letter| (payload(letter["body"].as_str().unwrap()), letter["idempotency_key"].as_str().unwrap().into()))
        .collect();
    assert_eq!(lettered, members(&sent[0]), "each member's body and own key, in body order");
    assert!(letters.iter().all(|letter| letter["status"] == 400));

    // Replayed with the same batch settings, the same members make the same batch, same key.
    let accepting = Endpoint::start(Behaviour::default()).await;
    let replay_config = Webhook::new(&accepting.url()).publishes().with(batch).write(&scratch, "replay.conf");
    let replay = mqhook(&["replay", dead.to_str().unwrap(), "--config", replay_config.to_str().unwrap()], "").await;
    assert!(replay.status.success(), "{}", replay.stderr);
    assert_eq!((replay.summary("delivered"), replay.summary("failed")), (5, 0));
    let replayed = accepting.recorded();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].body, sent[0].body);
    for header in ["idempotency-key", "idempotency-keys"] {
        assert_eq!(replayed[0].header(header), sent[0].header(header), "replay sends the same {header}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_spool_a_kill_9_mid_batch_loses_nothing() {
    const EVENTS: usize = 2_000;
    let scratch = Scratch::new();
    let endpoint = Endpoint::start(Behaviour { delay: Duration::from_millis(20), ..Behaviour::default() }).await;
    let spool = scratch.0.path().join("spool");
    let config = Webhook::new(&endpoint.url())
        .publishes()
        .with(&format!("  spool {{ dir = \"{}\" }}", spool.display()))
        .with("  pool_size = 2\n  batch { max_events = 10, linger = 5ms }")
        .write(&scratch, "nanomq.conf");
    let config = config.to_str().unwrap();
    let input = scratch.file("events.ndjson", &ndjson_publishes(EVENTS, 7));
    let admin = free_loopback_addr();
    let ingest = format!("ndjson:{}", input.display());
    let mut child = spawn_mqhook(&["run", "--ingest", &ingest, "--config", config, "--admin", &admin]);
    wait_for_listener(&admin).await;
    wait_until("every event is spooled", async || admin_metrics(&admin).await["spooled"] == EVENTS).await;
    wait_until("some batches are delivered", async || endpoint.count() >= 10).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let before = endpoint.count();

    let again = mqhook(&["run", "--ingest", "ndjson:-", "--config", config], "").await;
    assert!(again.status.success(), "{}", again.stderr);
    assert!(again.summary("recovered") > 0, "{}", again.stdout);
    assert_eq!(again.summary("delivered"), again.summary("recovered"));
    // Every event at least once, each with one key across both runs, no two sharing one.
    let mut keys: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for request in endpoint.recorded() {
        for (id, key) in members(&request) {
            keys.entry(id).or_default().insert(key);
        }
    }
    assert_eq!(keys.len(), EVENTS, "{} of {EVENTS} events arrived ({before} batches before the kill)", keys.len());
    assert!(keys.values().all(|k| k.len() == 1), "one key per event, across the restart");
    assert_eq!(keys.values().flatten().collect::<BTreeSet<_>>().len(), EVENTS, "no two events share a key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_order_holds_across_batches() {
    const EVENTS: usize = 300;
    let endpoint = Endpoint::start(Behaviour { delay: Duration::from_millis(2), ..Behaviour::default() }).await;
    let scratch = Scratch::new();
    let webhook = Webhook::new(&endpoint.url())
        .publishes()
        .with("  ordering = per_client\n  pool_size = 4\n  batch { max_events = 8, linger = 5ms }");
    let input: String = (0..EVENTS).map(|i| publish_line(i, i % 5, "t")).collect();
    let run = run(&scratch, &webhook, &input).await;
    assert_eq!(run.summary("delivered"), EVENTS as u64);
    let mut last: BTreeMap<usize, usize> = BTreeMap::new();
    let mut batches = 0;
    for request in endpoint.recorded() {
        batches += 1;
        for (id, _) in members(&request) {
            let client = id % 5;
            assert!(last.get(&client).is_none_or(|before| *before < id), "client {client}: {id} after {last:?}");
            last.insert(client, id);
        }
    }
    assert!(batches < EVENTS, "events shared batches: {batches} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_batch_is_verified_by_the_reference_library() {
    use crate::signing::{verified_by, CURRENT, WRONG};
    let endpoint = Endpoint::start(Behaviour::failing_first(1, StatusCode::SERVICE_UNAVAILABLE)).await;
    let scratch = Scratch::new();
    let config = Webhook::new(&endpoint.url())
        .publishes()
        .with("  signing { secrets = [\"env:MQHOOK_TEST_SIGNING_SECRET\"] }")
        .with("  batch { max_events = 10, linger = 60s }\n  retry { base = 10ms }")
        .write(&scratch, "nanomq.conf");
    let mut child = mqhook_command(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()])
        .env("MQHOOK_TEST_SIGNING_SECRET", CURRENT)
        .spawn()
        .expect("starting mqhook");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(ndjson_publishes(4, 2).as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(WAIT_LIMIT, child.wait_with_output()).await.expect("mqhook finishes").unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let recorded = endpoint.recorded();
    assert_eq!(recorded.len(), 2, "one batch, sent twice");
    for request in &recorded {
        assert_eq!(members(request).len(), 4);
        assert_eq!(request.header("webhook-id"), request.header("idempotency-key"), "the batch's key is the id");
    }
    assert_eq!(verified_by(CURRENT, &recorded), vec![true; 2], "the batch is signed as one body");
    assert_eq!(verified_by(WRONG, &recorded), vec![false; 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_named_endpoint_batches_by_its_own_block() {
    let plain = Endpoint::start(Behaviour::default()).await;
    let batched = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    let text = format!(
        "webhook {{\n  url = \"{}\"\n  endpoints = [\n    {{ name = \"bulk\", url = \"{}\", batch {{ max_events = 4, linger = 60s, format = ndjson }} }}\n  ]\n  \
         events = [\n    {{ event = \"on_message_publish\" }}\n    {{ event = \"on_message_publish\", endpoint = \"bulk\" }}\n  ]\n}}\n",
        plain.url(),
        batched.url()
    );
    let config = scratch.file("nanomq.conf", &text);
    let run =
        mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()], &ndjson_publishes(8, 2)).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!((run.summary("delivered"), run.summary("batches")), (16, 2), "{}", run.stdout);
    let singles = plain.recorded();
    assert_eq!(singles.len(), 8, "the default endpoint has no batch block: one request per event");
    assert!(singles.iter().all(|request| request.header("idempotency-keys").is_none()));
    let batches = batched.recorded();
    assert_eq!(batches.iter().map(|request| members(request).len()).collect::<Vec<_>>(), vec![4, 4]);
}

#[tokio::test]
async fn a_dry_run_prints_a_batch_as_it_would_send_it() {
    let scratch = Scratch::new();
    let config = Webhook::new("http://127.0.0.1:9/hook")
        .publishes()
        .with("  batch { linger = 60s, format = ndjson }")
        .write(&scratch, "nanomq.conf");
    let args = ["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap(), "--dry-run"];
    let run = mqhook(&args, &ndjson_publishes(3, 1)).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.summary("batches"), 1);
    let head = run.stdout.split("\n\n").next().unwrap();
    assert!(head.starts_with("POST /hook HTTP/1.1\nHost: 127.0.0.1:9\nContent-Type: application/x-ndjson\n"), "{head}");
    let keys = head.lines().find_map(|line| line.strip_prefix("Idempotency-Keys: ")).expect("the members' keys");
    assert_eq!(keys.split(',').count(), 3);
    let key = head.lines().find_map(|line| line.strip_prefix("Idempotency-Key: ")).unwrap();
    assert_eq!(key, batch_key(keys));
    assert_eq!(run.stdout.matches("\"payload\":\"p-").count(), 3, "one body a line: {}", run.stdout);
}

#[test]
fn the_batch_block_reads_the_same_in_every_syntax_and_bad_values_name_their_key() {
    use mqhook::config::{BatchFormat, BatchSettings, ByteSize, Config};
    let scratch = Scratch::new();
    let load = |name: &str, text: &str| Config::load(&scratch.file(name, text));
    let expected = BatchSettings {
        max_events: std::num::NonZeroUsize::new(50).unwrap(),
        max_bytes: ByteSize::new(2 << 20).unwrap(),
        linger: Duration::from_millis(25),
        format: BatchFormat::Ndjson,
    };
    let hocon = "webhook {\n url = \"http://h\"\n batch { max_events = 50, max_bytes = 2MiB, linger = 25ms, format = ndjson }\n}\n";
    let hcl = "webhook {\n  url = \"http://h\"\n  batch {\n    max_events = 50\n    max_bytes = \"2MB\"\n    linger = \"25ms\"\n    format = \"ndjson\"\n  }\n}\n";
    let legacy = "web.hook.url=http://h\nweb.hook.batch.max_events=50\nweb.hook.batch.max_bytes=2MB\n\
                  web.hook.batch.linger=25\nweb.hook.batch.format=ndjson\n";
    for (name, text) in [("nanomq.conf", hocon), ("mqhook.hcl", hcl), ("old.conf", legacy)] {
        assert_eq!(load(name, text).unwrap().delivery.batch, Some(expected), "{name}");
    }
    let defaults = load("defaults.conf", "webhook {\n url = \"http://h\"\n batch {}\n}\n").unwrap();
    assert_eq!(defaults.delivery.batch, Some(BatchSettings::default()));
    assert_eq!(load("none.conf", "webhook {\n url = \"http://h\"\n}\n").unwrap().delivery.batch, None, "opt-in");

    for (text, line, key, hint) in [
        ("batch {\n  max_events = 0\n }", 4, "webhook.batch.max_events", "at least 1"),
        ("batch { max_events = 1001 }", 3, "webhook.batch.max_events", "between 1 and 1000"),
        ("batch { max_bytes = 100 }", 3, "webhook.batch.max_bytes", "between 1024 and"),
        ("batch { linger = 0 }", 3, "webhook.batch.linger", "more than 0"),
        ("batch { linger = 5m }", 3, "webhook.batch.linger", "between"),
        ("batch {\n  format = xml\n }", 4, "webhook.batch.format", "json, ndjson"),
        ("batch { size = 3 }", 3, "webhook.batch.size", "max_events, max_bytes, linger, format"),
        ("batch = 10", 3, "webhook.batch", "an object"),
    ] {
        let error = load("bad.conf", &format!("webhook {{\n url = \"http://h\"\n {text}\n}}\n")).expect_err(text);
        let message = error.to_string();
        assert!(message.contains(&format!("bad.conf:{line}:")), "{text}: no file:line in {message}");
        assert!(message.contains(&format!("`{key}`")), "{text}: {key} not named in {message}");
        assert!(message.contains(hint), "{text}: `{hint}` missing from {message}");
    }
}
