//! End to end: the `mqhook` binary reads NDJSON and POSTs to a real HTTP server on 127.0.0.1.

use std::time::Duration;

use hyper::StatusCode;

use crate::support::endpoint::{Behaviour, Endpoint};
use crate::support::{mqhook, signal, Scratch};

/// Every event once, with `ts`/`connected_at` given so bodies are deterministic; and the exact
/// body each must produce under the all-events config below.
const EVENTS: &[(&str, &str)] = &[
    (
        r#"{"event":"client_connect","clientid":"c1","username":"u1","ipaddress":"127.0.0.1:5000","keepalive":60,"proto_ver":4}"#,
        r#"{"clientid":"c1","username":"u1","ipaddress":"127.0.0.1:5000","keepalive":60,"proto_ver":4,"action":"client_connect"}"#,
    ),
    (
        r#"{"event":"client_connack","clientid":"wbhk_clientid","username":"wbhk_test","keepalive":60,"proto_ver":4,"reason_code":0}"#,
        r#"{"proto_ver":4,"keepalive":60,"conn_ack":"success","username":"wbhk_test","clientid":"wbhk_clientid","action":"client_connack"}"#,
    ),
    (
        r#"{"event":"client_connected","clientid":"c1","username":null,"ipaddress":"127.0.0.1:5000","keepalive":30,"proto_ver":5,"connected_at":1706703724000}"#,
        r#"{"clientid":"c1","username":"undefined","ipaddress":"127.0.0.1:5000","keepalive":30,"proto_ver":5,"connected_at":1706703724000,"action":"client_connected"}"#,
    ),
    (
        r#"{"event":"client_disconnected","clientid":"wbhk_clientid","username":"wbhk_test","reason":"normal"}"#,
        r#"{"reason":"normal","username":"wbhk_test","clientid":"wbhk_clientid","action":"client_disconnected"}"#,
    ),
    (
        r#"{"event":"client_subscribe","clientid":"c1","username":"u1","topic":"a/#","opts":{"qos":1}}"#,
        r#"{"clientid":"c1","username":"u1","topic":"a/#","opts":{"qos":1},"action":"client_subscribe"}"#,
    ),
    (
        r#"{"event":"client_unsubscribe","clientid":"c1","username":"u1","topic":"a/#","opts":{"qos":1}}"#,
        r#"{"clientid":"c1","username":"u1","topic":"a/#","opts":{"qos":1},"action":"client_unsubscribe"}"#,
    ),
    (
        r#"{"event":"session_subscribed","clientid":"c1","username":"u1","topic":"a/+","opts":{"qos":2,"nl":0,"rap":1,"rh":0}}"#,
        r#"{"clientid":"c1","username":"u1","topic":"a/+","opts":{"qos":2,"nl":0,"rap":1,"rh":0},"action":"session_subscribed"}"#,
    ),
    (
        r#"{"event":"session_unsubscribed","clientid":"c1","username":"u1","topic":"a/+"}"#,
        r#"{"clientid":"c1","username":"u1","topic":"a/+","action":"session_unsubscribed"}"#,
    ),
    (
        r#"{"event":"session_terminated","clientid":"c1","username":"u1","reason":"normal"}"#,
        r#"{"clientid":"c1","username":"u1","reason":"normal","action":"session_terminated"}"#,
    ),
    (
        r#"{"event":"message_publish","from_client_id":"wbhk_clientid","from_username":"wbhk_test","topic":"nmq/pub","qos":1,"retain":true,"payload":"Hello World!","ts":1706703724960}"#,
        r#"{"ts":1706703724960,"topic":"nmq/pub","retain":true,"qos":1,"action":"message_publish","from_username":"wbhk_test","from_client_id":"wbhk_clientid","payload":"Hello World!"}"#,
    ),
    (
        r#"{"event":"message_delivered","clientid":"c2","username":"u2","from_client_id":"c1","from_username":null,"topic":"nmq/pub","qos":0,"retain":false,"payload_base64":"//4A","ts":1706703724961}"#,
        r#"{"ts":1706703724961,"clientid":"c2","username":"u2","from_client_id":"c1","from_username":"undefined","topic":"nmq/pub","qos":0,"retain":false,"action":"message_delivered","payload":"//4A","payload_encoding":"base64"}"#,
    ),
    (
        r#"{"event":"message_acked","clientid":"c2","username":"u2","from_client_id":"c1","from_username":"u1","topic":"nmq/pub","qos":2,"retain":false,"payload":"","ts":1706703724962}"#,
        r#"{"ts":1706703724962,"clientid":"c2","username":"u2","from_client_id":"c1","from_username":"u1","topic":"nmq/pub","qos":2,"retain":false,"action":"message_acked"}"#,
    ),
];

/// Every event kind selected, with three configured headers and `extra` lines.
fn all_events_config(url: &str, extra: &str) -> String {
    crate::support::Webhook::new(url)
        .with("  headers.content-type = \"application/json\"\n  headers.x-api-key = \"secret\"\n  headers.accept = \"*/*\"")
        .with(extra)
        .all_events()
        .text()
}

fn ndjson(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_posts_its_exact_body_and_headers() {
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    let config = scratch.file("nanomq.conf", &all_events_config(&format!("{}/hook", endpoint.url()), ""));
    let input = ndjson(&EVENTS.iter().map(|(line, _)| *line).collect::<Vec<_>>());
    let run = mqhook(&["run", "--config", config.to_str().unwrap(), "--ingest", "ndjson:-"], &input).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        (run.summary("received"), run.summary("delivered"), run.summary("failed"), run.summary("filtered")),
        (12, 12, 0, 0)
    );
    let recorded = endpoint.recorded();
    let mut bodies: Vec<String> = recorded.iter().map(|r| r.body_text()).collect();
    let mut expected: Vec<String> = EVENTS.iter().map(|(_, body)| body.to_string()).collect();
    bodies.sort();
    expected.sort();
    assert_eq!(bodies, expected);
    for request in &recorded {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hook");
        let names: Vec<&str> = request.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["host", "content-type", "x-api-key", "accept", "content-length", "idempotency-key"]);
        assert_eq!(request.header("host"), Some(endpoint.addr.to_string().as_str()));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("content-length"), Some(request.body.len().to_string().as_str()));
    }
    let mut keys: Vec<&str> = recorded.iter().filter_map(|r| r.header("idempotency-key")).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), EVENTS.len(), "every request has its own idempotency key");
    assert!(!run.stderr.contains("secret"), "header values are never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_by_event_and_topic_and_posts_to_root_without_a_path() {
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    let config = scratch.file(
        "nanomq.conf",
        &format!(
            "webhook {{\n url = \"{}\"\n body.encoding = base62\n events = [\n {{ event = \"on_message_publish\", topic = \"a/+/c\" }}\n ]\n}}\n",
            endpoint.url()
        ),
    );
    let input = ndjson(&[
        r#"{"event":"message_publish","from_client_id":"c1","topic":"a/b/c","qos":0,"retain":false,"payload":"hello","ts":1}"#,
        r#"{"event":"message_publish","from_client_id":"c1","topic":"a/b/d","qos":0,"retain":false,"payload":"hello","ts":2}"#,
        r#"{"event":"client_connack","clientid":"c1","keepalive":60,"proto_ver":4,"reason_code":0}"#,
    ]);
    let run = mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()], &input).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!((run.summary("received"), run.summary("filtered"), run.summary("delivered")), (3, 2, 1));
    let recorded = endpoint.recorded();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, "/");
    assert_eq!(
        recorded[0].body_text(),
        r#"{"ts":1,"topic":"a/b/c","retain":false,"qos":0,"action":"message_publish","from_username":"undefined","from_client_id":"c1","payload":"7tQLFHz"}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_bounds_concurrent_requests() {
    let endpoint = Endpoint::start(Behaviour { delay: Duration::from_millis(150), ..Behaviour::default() }).await;
    let scratch = Scratch::new();
    let config = scratch.file("nanomq.conf", &all_events_config(&endpoint.url(), "  pool_size = 3"));
    let lines: Vec<String> = (0..24)
        .map(|i| format!(r#"{{"event":"message_publish","from_client_id":"c","topic":"t/{i}","qos":0,"retain":false,"payload":"{i}","ts":{i}}}"#))
        .collect();
    let run = mqhook(
        &["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()],
        &ndjson(&lines.iter().map(String::as_str).collect::<Vec<_>>()),
    )
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.summary("delivered"), 24);
    assert_eq!(endpoint.recorded().len(), 24);
    let peak = endpoint.max_in_flight();
    assert!(peak <= 3, "{peak} requests were in flight with pool_size = 3");
    assert!(peak > 1, "requests were never concurrent (peak {peak})");
    assert!(endpoint.connections() <= 3, "keep-alive: at most pool_size connections, saw {}", endpoint.connections());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_2xx_answers_count_as_failed_after_their_retries() {
    let endpoint = Endpoint::start(Behaviour { status: StatusCode::SERVICE_UNAVAILABLE, ..Behaviour::default() }).await;
    let scratch = Scratch::new();
    let config =
        scratch.file("nanomq.conf", &all_events_config(&endpoint.url(), "  retry { max_attempts = 3, base = 10ms }"));
    let input = ndjson(&EVENTS.iter().take(3).map(|(line, _)| *line).collect::<Vec<_>>());
    let run = mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()], &input).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!((run.summary("delivered"), run.summary("failed"), run.summary("retries")), (0, 3, 6));
    assert_eq!(endpoint.recorded().len(), 9, "3 events, 3 attempts each");
    assert_eq!(run.summary("given_up_attempts"), 3, "given up for retry.max_attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_answer_is_permanent_and_not_retried() {
    let endpoint = Endpoint::start(Behaviour { status: StatusCode::NOT_FOUND, ..Behaviour::default() }).await;
    let scratch = Scratch::new();
    let config = scratch.file("nanomq.conf", &all_events_config(&endpoint.url(), "  retry { base = 10ms }"));
    let input = ndjson(&EVENTS.iter().take(2).map(|(line, _)| *line).collect::<Vec<_>>());
    let run = mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()], &input).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!((run.summary("delivered"), run.summary("failed"), run.summary("retries")), (0, 2, 0));
    assert_eq!(endpoint.recorded().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_until_delivered() {
    // The first 4 requests get 503 with Retry-After: 1, every later one 200.
    let behaviour = Behaviour {
        status: StatusCode::SERVICE_UNAVAILABLE,
        fail_first: Some(4),
        retry_after: Some(1),
        ..Behaviour::default()
    };
    let endpoint = Endpoint::start(behaviour).await;
    let scratch = Scratch::new();
    let config = scratch.file("nanomq.conf", &all_events_config(&endpoint.url(), "  retry { base = 10ms }"));
    let input = ndjson(&EVENTS.iter().take(4).map(|(line, _)| *line).collect::<Vec<_>>());
    let run = mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()], &input).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!((run.summary("delivered"), run.summary("failed"), run.summary("retries")), (4, 0, 4));
    let recorded = endpoint.recorded();
    assert_eq!(recorded.len(), 8);
    // Each body was sent twice, unchanged.
    let mut bodies: Vec<String> = recorded.iter().map(|r| r.body_text()).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_fails_every_event_and_still_exits() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let scratch = Scratch::new();
    let config = scratch.file(
        "nanomq.conf",
        &all_events_config(
            &format!("http://127.0.0.1:{port}"),
            "  cancel_timeout = 1000\n  retry { max_attempts = 2, base = 10ms }",
        ),
    );
    let input = ndjson(&EVENTS.iter().take(4).map(|(line, _)| *line).collect::<Vec<_>>());
    let run = mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()], &input).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!((run.summary("received"), run.summary("delivered"), run.summary("failed")), (4, 0, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_are_reported_and_skipped() {
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    let config = scratch.file("nanomq.conf", &all_events_config(&endpoint.url(), ""));
    let events = scratch.file(
        "events.ndjson",
        &ndjson(&[
            EVENTS[1].0,
            "{not json",
            r#"{"event":"on_fire","clientid":"c"}"#,
            "",
            r#"{"event":"message_publish","topic":"t","qos":7}"#,
            EVENTS[3].0,
        ]),
    );
    let ingest = format!("ndjson:{}", events.display());
    let run = mqhook(&["run", "--config", config.to_str().unwrap(), "--ingest", &ingest], "").await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!((run.summary("received"), run.summary("delivered"), run.summary("malformed")), (2, 2, 3));
    for line in [2, 3, 5] {
        assert!(run.stderr.contains(&format!("events.ndjson:{line}:")), "line {line} not reported:\n{}", run.stderr);
    }
    assert!(run.stderr.contains("unknown event `on_fire`"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_utf8_and_a_last_line_without_newline_do_not_stop_the_stream() {
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    let config = scratch.file("nanomq.conf", &all_events_config(&endpoint.url(), ""));
    let mut bytes = format!("{}\n", EVENTS[1].0).into_bytes();
    bytes.extend_from_slice(b"\xff\xfe\n{\"event\":\"message_publish\",\"topic\":\"a\0b\"}\x00\xff\n");
    bytes.extend_from_slice(EVENTS[3].0.as_bytes()); // no newline at the end
    let events = scratch.0.path().join("events.ndjson");
    std::fs::write(&events, bytes).unwrap();
    let ingest = format!("ndjson:{}", events.display());
    let run = mqhook(&["run", "--config", config.to_str().unwrap(), "--ingest", &ingest], "").await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!((run.summary("received"), run.summary("delivered"), run.summary("malformed")), (2, 2, 2));
    for line in [2, 3] {
        assert!(run.stderr.contains(&format!("events.ndjson:{line}:")), "line {line} not reported:\n{}", run.stderr);
    }
    assert!(run.stderr.contains("not UTF-8"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_head_is_written_as_nanomq_writes_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A bare TCP server, so the header names are seen as they were written, not as a parser
    // normalises them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buffer = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "the request ended before its head did");
            head.extend_from_slice(&buffer[..read]);
        }
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        String::from_utf8(head).unwrap()
    });
    let scratch = Scratch::new();
    let webhook = crate::support::Webhook::new(&format!("http://{addr}/hook"))
        .publishes()
        .with("  headers.content-type = \"application/json\"");
    let config = webhook.write(&scratch, "nanomq.conf");
    let run =
        mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()], &ndjson(&[EVENTS[9].0])).await;
    assert!(run.status.success(), "{}", run.stderr);
    let head = server.await.unwrap();
    let lines: Vec<&str> = head.split("\r\n\r\n").next().unwrap().split("\r\n").collect();
    let body_length = EVENTS[9].1.len();
    assert_eq!(
        lines[..4],
        [
            "POST /hook HTTP/1.1".to_string(),
            format!("Host: {addr}"),
            "Content-Type: application/json".to_string(),
            format!("Content-Length: {body_length}"),
        ],
        "NanoMQ's head: Host, the configured headers, Content-Length, in its letter case"
    );
    assert!(lines[4].starts_with("Idempotency-Key: "), "{head}");
    assert_eq!(lines.len(), 5, "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_standard_streams_end_every_command_quietly() {
    let scratch = Scratch::new();
    let config = scratch.file("nanomq.conf", &all_events_config("http://127.0.0.1:9", ""));
    let events = scratch.file("events.ndjson", &crate::support::ndjson_publishes(2000, 3));
    let binary = env!("CARGO_BIN_EXE_mqhook");
    let bash = |script: String| async move {
        let output = tokio::process::Command::new("bash").args(["-c", &script]).output().await.unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    // A dry run whose reader goes away after a few bytes still drains and exits 0 (a panic is 101).
    let (code, stderr) = bash(format!(
        "{binary} run --ingest ndjson:{} --config {} --dry-run | head -c 10 >/dev/null; exit ${{PIPESTATUS[0]}}",
        events.display(),
        config.display()
    ))
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // With stderr closed, a run logs into nothing and still drains, an error is still an exit code
    // of 1, and `--help` into `head` is fine.
    let (code, _) = bash(format!(
        "exec {binary} run --ingest ndjson:{} --config {} --dry-run 2>&- >/dev/null",
        events.display(),
        config.display()
    ))
    .await;
    assert_eq!(code, Some(0));
    let (code, _) = bash(format!("exec {binary} check --config /nonexistent 2>&-")).await;
    assert_eq!(code, Some(1));
    let (code, stderr) = bash(format!("{binary} --help | head -1 >/dev/null; exit ${{PIPESTATUS[0]}}")).await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_check_quietly() {
    let scratch = Scratch::new();
    let config = scratch.file("nanomq.conf", &all_events_config("http://127.0.0.1:9", ""));
    // `mqhook check | head -1`: the reader goes away after the first line.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqhook"))
        .args(["check", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = tokio::time::timeout(crate::support::WAIT_LIMIT, child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_requests_without_an_endpoint() {
    let scratch = Scratch::new();
    let config = scratch.file("nanomq.conf", &all_events_config("http://127.0.0.1:9/hook", ""));
    let run = mqhook(
        &["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap(), "--dry-run"],
        &ndjson(&[EVENTS[9].0]),
    )
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stdout.starts_with("POST /hook HTTP/1.1\nHost: 127.0.0.1:9\nContent-Type: application/json\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(&format!("\n\n{}\n", EVENTS[9].1)), "{}", run.stdout);
    assert_eq!(run.summary("delivered"), 1);
}

#[tokio::test]
async fn bad_invocations_fail_with_clear_errors() {
    let scratch = Scratch::new();
    let missing = scratch.0.path().join("absent.conf");
    let run = mqhook(&["run", "--config", missing.to_str().unwrap()], "").await;
    assert!(!run.status.success());
    assert!(run.stderr.contains("absent.conf: cannot read the config"), "{}", run.stderr);

    let config = scratch.file("nanomq.conf", &all_events_config("http://127.0.0.1:9", ""));
    let run = mqhook(&["run", "--config", config.to_str().unwrap(), "--ingest", "kafka:x"], "").await;
    assert!(!run.status.success());
    assert!(run.stderr.contains("ndjson:PATH"), "{}", run.stderr);

    let not_wasm = scratch.file("guest.wasm", "not a component");
    let run = mqhook(
        &["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap(), "--guest", not_wasm.to_str().unwrap()],
        "",
    )
    .await;
    assert!(!run.status.success());
    assert!(run.stderr.contains("is not a valid mqhook filter component"), "{}", run.stderr);

    for command in [&["--help"][..], &["run", "--help"], &["check", "--help"]] {
        let run = mqhook(command, "").await;
        assert!(run.status.success() && run.stdout.contains("Usage: mqhook"), "{command:?}: {}", run.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_go_to_the_dead_letter_file_and_replay_delivers_them() {
    let refusing = Endpoint::start(Behaviour { status: StatusCode::NOT_FOUND, ..Behaviour::default() }).await;
    let scratch = Scratch::new();
    let dead = scratch.0.path().join("dead.ndjson");
    let extra = format!("  dead_letter = \"{}\"", dead.display());
    let config = scratch.file("nanomq.conf", &all_events_config(&format!("{}/hook", refusing.url()), &extra));
    let input = ndjson(&[EVENTS[1].0, EVENTS[9].0]);
    let run = mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()], &input).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.summary("failed"), 2);
    let letters: Vec<serde_json::Value> =
        std::fs::read_to_string(&dead).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        assert_eq!((letter["status"].as_u64(), letter["attempts"].as_u64()), (Some(404), Some(1)), "{letter}");
        assert!(letter["error"].as_str().unwrap().contains("404"));
        assert!(!letter.to_string().contains("secret"), "configured headers (credentials) are not written");
    }

    let accepting = Endpoint::start(Behaviour::default()).await;
    let replay_config = scratch.file("replay.conf", &all_events_config(&format!("{}/hook", accepting.url()), ""));
    let run = mqhook(&["replay", dead.to_str().unwrap(), "--config", replay_config.to_str().unwrap()], "").await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!((run.summary("delivered"), run.summary("failed")), (2, 0));
    let sent = |endpoint: &Endpoint| {
        let mut sent: Vec<(String, String)> = endpoint
            .recorded()
            .iter()
            .map(|r| (r.body_text(), r.header("idempotency-key").unwrap_or_default().to_string()))
            .collect();
        sent.sort();
        sent
    };
    assert_eq!(sent(&accepting), sent(&refusing), "replay sends the same bytes with the same idempotency keys");
    assert!(accepting.recorded().iter().all(|r| r.path == "/hook" && r.header("x-api-key") == Some("secret")));
}

/// Starts `mqhook run` reading NDJSON from a pipe that stays open.
fn spawn_reading(config: &std::path::Path) -> tokio::process::Child {
    crate::support::spawn_mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_reading_and_delivers_everything_accepted() {
    use tokio::io::AsyncWriteExt;
    let endpoint = Endpoint::start(Behaviour { delay: Duration::from_millis(300), ..Behaviour::default() }).await;
    let scratch = Scratch::new();
    let config = scratch.file("nanomq.conf", &all_events_config(&endpoint.url(), "  pool_size = 2"));
    let mut child = spawn_reading(&config);
    let mut stdin = child.stdin.take().unwrap();
    let lines: String = (0..6)
        .map(|i| format!("{{\"event\":\"message_publish\",\"from_client_id\":\"c\",\"topic\":\"t/{i}\",\"qos\":0,\"retain\":false,\"payload\":\"{i}\",\"ts\":{i}}}\n"))
        .collect();
    stdin.write_all(lines.as_bytes()).await.unwrap();
    stdin.flush().await.unwrap();
    crate::support::wait_until("a request arrives", async || !endpoint.recorded().is_empty()).await;
    // The pipe stays open: only the signal ends ingest. Slow answers keep events in flight.
    signal(&child, "-TERM").await;
    let output =
        tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await.expect("it stops").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("received=6 filtered=0 delivered=6 failed=0"), "{stdout}");
    assert_eq!(endpoint.recorded().len(), 6);
    drop(stdin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    use tokio::io::AsyncWriteExt;
    let endpoint = Endpoint::start(Behaviour { delay: Duration::from_secs(30), ..Behaviour::default() }).await;
    let scratch = Scratch::new();
    let config = scratch.file("nanomq.conf", &all_events_config(&endpoint.url(), "  cancel_timeout = 60000"));
    let mut child = spawn_reading(&config);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{}\n", EVENTS[9].0).as_bytes()).await.unwrap();
    stdin.flush().await.unwrap();
    crate::support::wait_until("the request reaches the endpoint", async || endpoint.in_flight() > 0).await;
    let log = crate::support::StderrLog::capture(&mut child);
    signal(&child, "-TERM").await;
    log.wait_for("Stopping: no new events").await;
    signal(&child, "-INT").await;
    // The endpoint would hold the request for 30 s: only exiting at once ends it within the bound.
    let output =
        tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await.expect("it exits").unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", log.text());
    drop(stdin);
}
