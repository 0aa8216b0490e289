//! Delivery nobody loses data to: an endpoint outage, `kill -9` and restart, a backlog of a
//! million events against a dead endpoint, and per-client order — all through the real binary,
//! a real spool directory and a real HTTP server on 127.0.0.1.

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::StatusCode;
use tokio::io::AsyncWriteExt;

use crate::support::endpoint::{Behaviour, Endpoint};
use crate::support::{
    admin_metrics, check_at_least_once, free_loopback_addr, mqhook, ndjson_publishes as publishes, payload_id, signal,
    spawn_mqhook, wait_for_listener, wait_until, Scratch, StderrLog, Webhook, WAIT_LIMIT,
};

/// `count` publishes, `clients` publishers taking turns, payload `p-<i>`.
/// `mqhook run` reading NDJSON events from `input`, with the admin API on `admin`.
fn run_from_file(input: &std::path::Path, config: &str, admin: &str) -> tokio::process::Child {
    let ingest = format!("ndjson:{}", input.display());
    spawn_mqhook(&["run", "--ingest", &ingest, "--config", config, "--admin", admin])
}

/// A spooled config for publishes to `url`, with `extra` lines; returns its path.
fn config(scratch: &Scratch, url: &str, extra: &str) -> String {
    let spool = scratch.0.path().join("spool");
    let webhook =
        Webhook::new(url).publishes().with(&format!("  spool {{ dir = \"{}\" }}", spool.display())).with(extra);
    webhook.write(scratch, "nanomq.conf").to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_for_ten_seconds_loses_nothing() {
    const EVENTS: usize = 20_000;
    let scratch = Scratch::new();
    let first = Endpoint::start(Behaviour::default()).await;
    let addr = first.addr;
    let retry = "  pool_size = 8\n  queue_size = 1000\n  retry { base = 50, cap = 500 }";
    let config = config(&scratch, &first.url(), retry);
    let mut child = spawn_mqhook(&["run", "--ingest", "ndjson:-", "--config", &config]);
    let mut input = child.stdin.take().unwrap();
    let lines = publishes(EVENTS, 10);
    let (before, after) = lines.split_at(lines.match_indices('\n').nth(EVENTS / 4 - 1).unwrap().0 + 1);
    input.write_all(before.as_bytes()).await.unwrap();
    wait_until("a first part is delivered", async || first.recorded().len() >= EVENTS / 10).await;
    let seen_before = first.stop().await;
    // The rest arrives while nothing listens.
    input.write_all(after.as_bytes()).await.unwrap();
    input.flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let second = Endpoint::start_at(addr, Behaviour::default()).await;
    drop(input);
    let output = tokio::time::timeout(WAIT_LIMIT, child.wait_with_output()).await.expect("mqhook finishes").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let mut recorded = seen_before;
    recorded.extend(second.recorded());
    let duplicates = check_at_least_once(&recorded, EVENTS);
    println!("outage: {} requests for {EVENTS} events, {duplicates} duplicates", recorded.len());
    assert!(stdout.contains(&format!("delivered={EVENTS} failed=0")), "{stdout}");
    assert!(stdout.contains(&format!("spooled={EVENTS} recovered=0 dropped=0")), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_delivers_every_accepted_event() {
    const EVENTS: usize = 3_000;
    let scratch = Scratch::new();
    let endpoint = Endpoint::start(Behaviour { delay: Duration::from_millis(5), ..Behaviour::default() }).await;
    let config = config(&scratch, &endpoint.url(), "  pool_size = 2");
    let input = scratch.file("events.ndjson", &publishes(EVENTS, 7));
    let admin = free_loopback_addr();
    let mut child = run_from_file(&input, &config, &admin);
    wait_for_listener(&admin).await;
    wait_until("every event is spooled", async || admin_metrics(&admin).await["spooled"] == EVENTS).await;
    wait_until("some are delivered", async || endpoint.recorded().len() >= EVENTS / 10).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let before_restart = endpoint.recorded().len();
    assert!(before_restart < EVENTS, "killed mid-stream: {before_restart} of {EVENTS} delivered");

    let run = mqhook(&["run", "--ingest", "ndjson:-", "--config", &config], "").await;
    assert!(run.status.success(), "{}", run.stderr);
    let recovered = run.summary("recovered") as usize;
    assert!(recovered >= EVENTS - before_restart, "recovered {recovered}, undelivered {}", EVENTS - before_restart);
    assert_eq!(run.summary("delivered") as usize, recovered);
    let duplicates = check_at_least_once(&endpoint.recorded(), EVENTS);
    println!("kill -9: {before_restart} delivered before, {recovered} recovered, {duplicates} duplicates");

    // A third run finds nothing left to send.
    let again = mqhook(&["run", "--ingest", "ndjson:-", "--config", &config], "").await;
    assert_eq!(again.summary("recovered"), 0, "{}", again.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_the_spool_keeps_the_rest() {
    const EVENTS: usize = 500;
    let scratch = Scratch::new();
    let addr = free_loopback_addr();
    // Nothing listens yet: every request fails and waits to be retried.
    let config = config(&scratch, &format!("http://{addr}"), "  retry { base = 100, cap = 1000 }");
    let admin = free_loopback_addr();
    let mut child = spawn_mqhook(&["run", "--ingest", "ndjson:-", "--config", &config, "--admin", &admin]);
    let mut input = child.stdin.take().unwrap();
    input.write_all(publishes(EVENTS, 5).as_bytes()).await.unwrap();
    input.flush().await.unwrap();
    wait_for_listener(&admin).await;
    wait_until("every event is spooled", async || admin_metrics(&admin).await["spooled"] == EVENTS).await;
    let log = StderrLog::capture(&mut child);
    signal(&child, "-TERM").await;
    log.wait_for("Stopping: no new events").await;
    signal(&child, "-TERM").await;
    let output = tokio::time::timeout(WAIT_LIMIT, child.wait_with_output()).await.expect("it exits").unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", log.text());
    drop(input);

    let endpoint = Endpoint::start_at(addr.parse().unwrap(), Behaviour::default()).await;
    let run = mqhook(&["run", "--ingest", "ndjson:-", "--config", &config], "").await;
    assert_eq!(run.summary("recovered"), EVENTS as u64, "{}", run.stderr);
    assert_eq!(run.summary("delivered"), EVENTS as u64);
    assert_eq!(check_at_least_once(&endpoint.recorded(), EVENTS), 0);
}

/// The stated bound: a million requests wait on disk, not in memory.
const BACKLOG_RSS_BOUND_MIB: u64 = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_events_against_a_dead_endpoint_stay_on_disk_not_in_memory() {
    const EVENTS: usize = 1_000_000;
    let scratch = Scratch::new();
    let dead = format!("http://{}", free_loopback_addr());
    let config = config(&scratch, &dead, "  queue_size = 1024\n  retry { base = 100, cap = 1000 }");
    let input = scratch.file("events.ndjson", &publishes(EVENTS, 100));
    let admin = free_loopback_addr();
    let mut child = run_from_file(&input, &config, &admin);
    let pid = child.id().unwrap();
    wait_for_listener(&admin).await;
    wait_until("every event is spooled", async || admin_metrics(&admin).await["spooled"] == EVENTS).await;
    let peak_mib = crate::support::peak_rss_kib(pid) / 1024;
    let metrics = admin_metrics(&admin).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    println!("backlog: {EVENTS} events spooled, peak RSS {peak_mib} MiB, {metrics}");
    assert_eq!(metrics["delivered"], 0);
    assert_eq!(metrics["dropped"], 0);
    assert!(peak_mib < BACKLOG_RSS_BOUND_MIB, "peak RSS {peak_mib} MiB with a backlog of {EVENTS}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_order_holds_through_retries() {
    const EVENTS: usize = 400;
    const CLIENTS: usize = 4;
    let scratch = Scratch::new();
    // The first answers fail, so without per-client order their retries would land after later
    // events of the same client.
    let behaviour = Behaviour { status: StatusCode::SERVICE_UNAVAILABLE, fail_first: Some(12), ..Behaviour::default() };
    let endpoint = Endpoint::start(behaviour).await;
    let extra = "  pool_size = 8\n  ordering = per_client\n  retry { max_attempts = 100, base = 20, cap = 50 }";
    let config = config(&scratch, &endpoint.url(), extra);
    let run = mqhook(&["run", "--ingest", "ndjson:-", "--config", &config], &publishes(EVENTS, CLIENTS)).await;
    assert_eq!(run.summary("delivered"), EVENTS as u64, "{}", run.stderr);
    assert!(run.summary("retries") >= 12, "{}", run.stdout);
    let mut per_client: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for request in endpoint.recorded() {
        let id = payload_id(&request);
        let sequence = per_client.entry(id % CLIENTS).or_default();
        // A retry of the request just before is the same event, not a step back.
        if sequence.last() != Some(&id) {
            sequence.push(id);
        }
    }
    for (client, ids) in &per_client {
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "client c{client} out of order: {ids:?}");
        assert_eq!(ids.len(), EVENTS / CLIENTS);
    }
}
