//! What operators see: the Prometheus metrics after a known input (read with a real
//! OpenMetrics parser), the health and status endpoints, the admin tokens, and secrets kept out
//! of logs, `/status` and `mqhook check`.

use std::collections::BTreeMap;

use http::StatusCode;
use tokio::io::AsyncWriteExt;

use crate::support::endpoint::{Behaviour, Endpoint};
use crate::support::{
    admin_call, admin_metrics, free_loopback_addr, mqhook, mqhook_command, parse_metrics, spawn_mqhook,
    wait_for_listener, wait_until, Scratch, StderrLog, Webhook, WAIT_LIMIT,
};

/// The metrics now, parsed; `token` as the bearer token if given.
async fn scrape(admin: &str, token: Option<&str>) -> BTreeMap<String, f64> {
    let answer = admin_call(admin, "GET", "/metrics", token, Vec::new()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.headers["content-type"], mqhook::admin::METRICS_CONTENT_TYPE);
    parse_metrics(&answer.body)
}

/// `mqhook run` on `config` with NDJSON on standard input (piped, still open) and the admin API on
/// a free loopback port; its log, and the admin address.
async fn start_with_admin(config: &std::path::Path) -> (tokio::process::Child, StderrLog, String) {
    let admin = free_loopback_addr();
    let mut child =
        spawn_mqhook(&["run", "--config", config.to_str().unwrap(), "--ingest", "ndjson:-", "--admin", &admin]);
    let log = StderrLog::capture(&mut child);
    wait_for_listener(&admin).await;
    (child, log, admin)
}

/// One sample's value; a missing sample fails the test.
fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or_else(|| panic!("no sample {key} in {samples:#?}"))
}

fn publish(topic: &str, i: usize) -> String {
    format!(
        r#"{{"event":"message_publish","from_client_id":"c{i}","topic":"{topic}","qos":1,"payload":"p-{i}","ts":1}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_known_input_are_exact() {
    // The first request is answered 503: one failed attempt, one retry, one outage.
    let endpoint = Endpoint::start(Behaviour::failing_first(1, StatusCode::SERVICE_UNAVAILABLE)).await;
    let scratch = Scratch::new();
    let config = Webhook::new(&endpoint.url())
        .event("on_message_publish", Some("sensors/#"))
        .event("on_client_connack", None)
        .write(&scratch, "nanomq.conf");
    let (mut child, log, admin) = start_with_admin(&config).await;
    let mut lines: Vec<String> = (0..6).map(|i| publish("sensors/kitchen", i)).collect();
    lines.extend((6..8).map(|i| publish("other/topic", i)));
    lines.extend(
        (0..3).map(|i| {
            format!(r#"{{"event":"client_disconnected","clientid":"d{i}","username":"u","reason":"normal"}}"#)
        }),
    );
    lines.extend((0..2).map(|i| {
        format!(
            r#"{{"event":"client_connack","clientid":"k{i}","username":"u","keepalive":60,"proto_ver":4,"reason_code":0}}"#
        )
    }));
    // Twelve malformed lines: five are logged, the other seven in one line when the window closes.
    lines.extend((0..6).map(|i| format!("{{not json {i}")));
    lines.extend((0..6).map(|_| r#"{"event":"on_fire"}"#.to_string()));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{}\n", lines.join("\n")).as_bytes()).await.unwrap();
    stdin.flush().await.unwrap();

    wait_until("8 requests delivered", async || {
        value(&scrape(&admin, None).await, "mqhook_requests_delivered_total{endpoint=\"default\"}") == 8.0
    })
    .await;
    let samples = scrape(&admin, None).await;
    let expected = [
        ("mqhook_events_received_total{kind=\"message_publish\"}", 8.0),
        ("mqhook_events_received_total{kind=\"client_disconnected\"}", 3.0),
        ("mqhook_events_received_total{kind=\"client_connack\"}", 2.0),
        ("mqhook_events_received_total{kind=\"client_connect\"}", 0.0),
        ("mqhook_events_filtered_total{stage=\"host\"}", 5.0),
        ("mqhook_events_filtered_total{stage=\"guest\"}", 0.0),
        ("mqhook_requests_delivered_total{endpoint=\"default\"}", 8.0),
        ("mqhook_delivery_failures_total{endpoint=\"default\",reason=\"status_5xx\"}", 1.0),
        ("mqhook_delivery_failures_total{endpoint=\"default\",reason=\"connect\"}", 0.0),
        ("mqhook_delivery_retries_total{endpoint=\"default\"}", 1.0),
        ("mqhook_endpoint_backoffs_total{endpoint=\"default\"}", 1.0),
        ("mqhook_input_malformed_total", 12.0),
        ("mqhook_requests_given_up_total{endpoint=\"default\",reason=\"permanent_status\"}", 0.0),
        ("mqhook_events_dropped_total{reason=\"queue_full\"}", 0.0),
        ("mqhook_guest_traps_total", 0.0),
        ("mqhook_guest_swaps_total", 0.0),
        ("mqhook_requests_in_flight{endpoint=\"default\"}", 0.0),
        ("mqhook_queue_events", 0.0),
        ("mqhook_endpoint_backing_off{endpoint=\"default\"}", 0.0),
        ("mqhook_spool_bytes", 0.0),
        // Every delivered request is timed from its event's arrival; every guest call is timed.
        ("mqhook_delivery_latency_seconds_count", 8.0),
        ("mqhook_guest_call_seconds_count", 8.0),
    ];
    for (key, want) in expected {
        assert_eq!(value(&samples, key), want, "{key}");
    }
    log.wait_for("… and 7 more `malformed_input`").await;
    assert_eq!(log.text().matches("skipped a malformed event").count(), 5, "{}", log.text());
    let latency = value(&samples, "mqhook_delivery_latency_seconds_sum");
    assert!(latency > 0.0 && latency < WAIT_LIMIT.as_secs_f64() * 8.0, "{latency}");

    // The JSON view says the same in the summary's words.
    let json = admin_call(&admin, "GET", "/metrics.json", None, Vec::new()).await;
    let json: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!((json["received"].as_u64(), json["filtered"].as_u64()), (Some(13), Some(5)));

    drop(stdin);
    let status = tokio::time::timeout(WAIT_LIMIT, child.wait()).await.expect("mqhook exits").unwrap();
    assert!(status.success(), "{}", log.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_status_follow_the_endpoint() {
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    let spool = scratch.0.path().join("spool");
    let config = Webhook::new(&endpoint.url())
        .publishes()
        .with(&format!("  spool {{ dir = \"{}\" }}", spool.display()))
        .write(&scratch, "nanomq.conf");
    let (mut child, log, admin) = start_with_admin(&config).await;
    let mut stdin = child.stdin.take().unwrap();

    let healthz = admin_call(&admin, "GET", "/healthz", None, Vec::new()).await;
    assert_eq!(healthz.status, 200);
    let ready = admin_call(&admin, "GET", "/readyz", None, Vec::new()).await;
    assert_eq!(ready.status, 200, "{}", ready.body);

    // The endpoint fails: delivery backs off, and the process is no longer ready (but live).
    endpoint.fail_with(Some(StatusCode::BAD_GATEWAY));
    stdin.write_all(format!("{}\n", publish("t", 0)).as_bytes()).await.unwrap();
    stdin.flush().await.unwrap();
    wait_until("not ready while the endpoint fails", async || {
        admin_call(&admin, "GET", "/readyz", None, Vec::new()).await.status == 503
    })
    .await;
    let ready: serde_json::Value =
        serde_json::from_str(&admin_call(&admin, "GET", "/readyz", None, Vec::new()).await.body).unwrap();
    assert_eq!(ready["checks"]["delivery_not_backing_off"], false);
    assert_eq!(ready["checks"]["spool_writable"], true);
    assert_eq!(admin_call(&admin, "GET", "/healthz", None, Vec::new()).await.status, 200);
    let status: serde_json::Value =
        serde_json::from_str(&admin_call(&admin, "GET", "/status", None, Vec::new()).await.body).unwrap();
    assert_eq!(status["endpoint"]["status"]["state"], "backing_off", "{status:#}");
    assert!(status["endpoint"]["status"]["last_error"].as_str().unwrap().contains("502"), "{status:#}");
    assert_eq!(status["guest"]["name"], "builtin:nanomq", "{status:#}");
    assert_eq!(status["guest"]["sha256"].as_str().map(str::len), Some(64), "{status:#}");
    assert_eq!(status["spool"]["records"], 1, "the request waits in the spool: {status:#}");
    assert!(status["config_file"].as_str().unwrap().ends_with("nanomq.conf"), "{status:#}");

    // It answers again: ready, with a last success.
    endpoint.fail_with(None);
    wait_until("ready again", async || admin_call(&admin, "GET", "/readyz", None, Vec::new()).await.status == 200)
        .await;
    wait_until("the request delivered", async || admin_metrics(&admin).await["delivered"] == 1).await;
    let status: serde_json::Value =
        serde_json::from_str(&admin_call(&admin, "GET", "/status", None, Vec::new()).await.body).unwrap();
    assert_eq!(status["endpoint"]["status"]["state"], "healthy", "{status:#}");
    assert!(status["endpoint"]["status"]["last_success_at_ms"].as_u64().is_some(), "{status:#}");

    drop(stdin);
    let exit = tokio::time::timeout(WAIT_LIMIT, child.wait()).await.expect("mqhook exits").unwrap();
    assert!(exit.success(), "{}", log.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_guard_every_route_but_healthz() {
    const WRITE: &str = "write-token-8c1f";
    const READ: &str = "read-token-77aa";
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    let config = Webhook::new(&endpoint.url()).publishes().write(&scratch, "nanomq.conf");
    let read_file = scratch.file("read.token", &format!("{READ}\n"));
    let admin = free_loopback_addr();
    let args = [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--ingest",
        "ndjson:-",
        "--admin",
        &admin,
        "--admin-read-token-file",
        read_file.to_str().unwrap(),
    ];
    let mut child =
        mqhook_command(&args).env("MQHOOK_ADMIN_TOKEN", WRITE).stdout(std::process::Stdio::null()).spawn().unwrap();
    let log = StderrLog::capture(&mut child);
    wait_for_listener(&admin).await;

    assert_eq!(admin_call(&admin, "GET", "/healthz", None, Vec::new()).await.status, 200, "liveness needs no token");
    let mut refused = 0;
    for path in ["/metrics", "/metrics.json", "/status", "/readyz", "/guest"] {
        let missing = admin_call(&admin, "GET", path, None, Vec::new()).await;
        assert_eq!(missing.status, 401, "{path} without a token");
        assert_eq!(missing.headers["www-authenticate"], "Bearer realm=\"mqhook\"");
        assert_eq!(admin_call(&admin, "GET", path, Some("wrong"), Vec::new()).await.status, 401, "{path}");
        assert_eq!(
            admin_call(&admin, "GET", path, Some(READ), Vec::new()).await.status,
            200,
            "{path} with the read token"
        );
        assert_eq!(admin_call(&admin, "GET", path, Some(WRITE), Vec::new()).await.status, 200, "{path}");
        refused += 2;
    }
    // Writing needs the write token: a read token is forbidden, no token unauthorized.
    let component = b"not a component".to_vec();
    assert_eq!(admin_call(&admin, "PUT", "/guest", None, component.clone()).await.status, 401);
    assert_eq!(admin_call(&admin, "PUT", "/guest", Some(READ), component.clone()).await.status, 403);
    assert_eq!(
        admin_call(&admin, "PUT", "/guest", Some(WRITE), component).await.status,
        422,
        "authorised, then judged"
    );
    refused += 2;

    let samples = scrape(&admin, Some(READ)).await;
    assert_eq!(value(&samples, "mqhook_admin_unauthorized_total"), f64::from(refused));
    let text = log.text();
    assert!(!text.contains(WRITE) && !text.contains(READ), "tokens never logged:\n{text}");
    drop(child.stdin.take());
    let exit = tokio::time::timeout(WAIT_LIMIT, child.wait()).await.expect("mqhook exits").unwrap();
    assert!(exit.success(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_header_is_never_shown_in_logs_status_or_check() {
    const SECRET: &str = "Bearer tok-5f0d9e";
    // Answered 400: the request is given up, and the give-up is logged with its URL.
    let endpoint = Endpoint::start(Behaviour { status: StatusCode::BAD_REQUEST, ..Behaviour::default() }).await;
    let scratch = Scratch::new();
    let url = format!("{}?api_key=query-secret", endpoint.url());
    let config = Webhook::new(&url)
        .publishes()
        .with(&format!("  headers.authorization = \"{SECRET}\""))
        .write(&scratch, "nanomq.conf");

    let check = mqhook(&["check", "--config", config.to_str().unwrap()], "").await;
    assert!(check.status.success(), "{}", check.stderr);
    assert!(check.stdout.contains("authorization") && check.stdout.contains("<redacted>"), "{}", check.stdout);

    let (mut child, log, admin) = start_with_admin(&config).await;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{}\n", publish("t", 0)).as_bytes()).await.unwrap();
    stdin.flush().await.unwrap();
    wait_until("the request given up", async || {
        value(
            &scrape(&admin, None).await,
            "mqhook_requests_given_up_total{endpoint=\"default\",reason=\"permanent_status\"}",
        ) == 1.0
    })
    .await;
    let samples = scrape(&admin, None).await;
    assert_eq!(value(&samples, "mqhook_delivery_failures_total{endpoint=\"default\",reason=\"status_4xx\"}"), 1.0);
    assert_eq!(endpoint.recorded()[0].header("authorization"), Some(SECRET), "the header is sent");
    let status = admin_call(&admin, "GET", "/status", None, Vec::new()).await.body;
    drop(stdin);
    let exit = tokio::time::timeout(WAIT_LIMIT, child.wait()).await.expect("mqhook exits").unwrap();
    let text = log.text();
    assert!(exit.success(), "{text}");
    // The give-up line names the action, the client, the URL (without its query) and the reason.
    let line =
        text.lines().find(|line| line.contains("given up")).unwrap_or_else(|| panic!("no give-up line:\n{text}"));
    for part in ["message_publish", "\"c0\"", &endpoint.url(), "permanent_status", "400"] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
    for (place, shown) in [("check", check.stdout.as_str()), ("status", status.as_str()), ("log", text.as_str())] {
        assert!(!shown.contains("tok-5f0d9e"), "the authorization value in {place}:\n{shown}");
    }
    // `check` shows the configured URL whole; logs and `/status` leave its query out.
    for (place, shown) in [("status", status.as_str()), ("log", text.as_str())] {
        assert!(!shown.contains("query-secret"), "the URL's query in {place}:\n{shown}");
    }
}
