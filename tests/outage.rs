//! Nothing lost with the default config: endpoint outages, an endpoint that refuses for good, and
//! a sink slower than the publishers — through the real binary, with a config that sets nothing
//! but the URL and the rules, real MQTT clients (Debian's mosquitto_pub) and a real HTTP server.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use hyper::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::support::endpoint::{Behaviour, Endpoint, Recorded};
use crate::support::wire;
use crate::support::{
    check_at_least_once, free_loopback_addr, mqhook, ndjson_publishes, spawn_mqhook, wait_for_listener, wait_until,
    Run, Scratch, Webhook, WAIT_LIMIT,
};

/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(10);

/// Waits for `child` (its stdin closed or signalled) and returns what it printed.
pub(crate) async fn finish(child: Child) -> Run {
    let output = tokio::time::timeout(WAIT_LIMIT, child.wait_with_output()).await.expect("mqhook finishes").unwrap();
    Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// mosquitto_pub's line mode stops early past 65,535 messages (its packet ids wrap around and it
/// takes an early one for the last), so longer runs are split into runs of this many.
const MOSQUITTO_PUB_RUN: usize = 50_000;

/// Publishes `count` messages `p-<first>` … on topic `t` as client `id`, with mosquitto_pub's line
/// mode (one message per line), in runs of [`MOSQUITTO_PUB_RUN`]; the task ends when all are out.
fn publish_lines(
    scratch: &Scratch,
    broker: SocketAddr,
    id: &str,
    qos: u8,
    first: usize,
    count: usize,
) -> tokio::task::JoinHandle<()> {
    let runs: Vec<_> = (first..first + count)
        .step_by(MOSQUITTO_PUB_RUN)
        .map(|start| {
            let lines: String =
                (start..(start + MOSQUITTO_PUB_RUN).min(first + count)).map(|i| format!("p-{i}\n")).collect();
            scratch.file(&format!("{id}-{start}.txt"), &lines)
        })
        .collect();
    let id = id.to_string();
    tokio::spawn(async move {
        for lines in runs {
            let child = Command::new("mosquitto_pub")
                .args(["-h", &broker.ip().to_string(), "-p", &broker.port().to_string()])
                .args(["-i", &id, "-t", "t", "-q", &qos.to_string(), "-l"])
                .stdin(Stdio::from(std::fs::File::open(lines).unwrap()))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("mosquitto_pub (Debian package mosquitto-clients)");
            let output =
                tokio::time::timeout(WAIT_LIMIT, child.wait_with_output()).await.expect("mosquitto_pub ends").unwrap();
            assert!(output.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&output.stderr));
        }
    })
}

/// Waits until a [`publish_lines`] task has published everything.
async fn published(task: tokio::task::JoinHandle<()>) {
    task.await.expect("mosquitto_pub runs");
}

/// Stops the endpoint for [`OUTAGE`] (connections refused), then starts it again at its address;
/// returns what it recorded before, and the new one.
pub(crate) async fn outage(endpoint: Endpoint) -> (Vec<Recorded>, Endpoint) {
    let addr = endpoint.addr;
    let before = endpoint.stop().await;
    // The outage itself: nothing listens for this long.
    tokio::time::sleep(OUTAGE).await;
    (before, Endpoint::start_at(addr, Behaviour::default()).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_through_a_ten_second_outage_loses_nothing_by_default() {
    const EVENTS: usize = 20_000;
    let scratch = Scratch::new();
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let config = Webhook::new(&endpoint.url()).publishes().write(&scratch, "nanomq.conf");
    let mut child = spawn_mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()]);
    let mut input = child.stdin.take().unwrap();
    let lines = ndjson_publishes(EVENTS, 10);
    let (before, after) = lines.split_at(lines.match_indices('\n').nth(EVENTS / 4 - 1).unwrap().0 + 1);
    input.write_all(before.as_bytes()).await.unwrap();
    wait_until("a first part is delivered", async || endpoint.count() >= EVENTS / 10).await;
    // The rest arrives while nothing listens.
    let after = after.to_string();
    let writer = tokio::spawn(async move {
        input.write_all(after.as_bytes()).await.unwrap();
        input
    });
    let (mut recorded, endpoint) = outage(endpoint).await;
    drop(writer.await.unwrap());
    let run = finish(child).await;
    assert!(run.status.success(), "{}", run.stderr);
    recorded.extend(endpoint.recorded());
    let duplicates = check_at_least_once(&recorded, EVENTS);
    println!("outage: {} requests for {EVENTS} events, {duplicates} duplicates (cut off by the stop)", recorded.len());
    assert_eq!((run.summary("delivered"), run.summary("failed"), run.summary("rejected")), (EVENTS as u64, 0, 0));
    assert!(endpoint.max_in_flight() > 1, "full concurrency once the endpoint is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_publishes_through_a_ten_second_outage_lose_nothing_by_default() {
    const EVENTS: usize = 10_000;
    let scratch = Scratch::new();
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let config = Webhook::new(&endpoint.url()).publishes().write(&scratch, "nanomq.conf");
    let listen = free_loopback_addr();
    let child = spawn_mqhook(&["run", "--config", config.to_str().unwrap(), "--listen", &listen]);
    wait_for_listener(&listen).await;
    let publisher = publish_lines(&scratch, listen.parse().unwrap(), "pub-1", 1, 0, EVENTS);
    wait_until("a first part is delivered", async || endpoint.count() >= EVENTS / 10).await;
    let (mut recorded, endpoint) = outage(endpoint).await;
    published(publisher).await;
    wait_until("every event is delivered", async || {
        let mut seen: Vec<Recorded> = recorded.clone();
        seen.extend(endpoint.recorded());
        seen.iter().map(crate::support::payload_id).collect::<std::collections::BTreeSet<_>>().len() >= EVENTS
    })
    .await;
    crate::support::signal(&child, "-TERM").await;
    let run = finish(child).await;
    assert!(run.status.success(), "{}", run.stderr);
    recorded.extend(endpoint.recorded());
    let duplicates = check_at_least_once(&recorded, EVENTS);
    println!("broker outage: {} requests for {EVENTS} publishes, {duplicates} duplicates", recorded.len());
    assert_eq!((run.summary("delivered"), run.summary("failed"), run.summary("rejected")), (EVENTS as u64, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_gets_a_handful_of_attempts_per_backoff_step() {
    const EVENTS: usize = 2_000;
    let scratch = Scratch::new();
    let endpoint = Endpoint::start(Behaviour::default()).await;
    endpoint.fail_with(Some(StatusCode::SERVICE_UNAVAILABLE));
    let config = Webhook::new(&endpoint.url()).publishes().write(&scratch, "nanomq.conf");
    let mut child = spawn_mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()]);
    let mut input = child.stdin.take().unwrap();
    input.write_all(ndjson_publishes(EVENTS, 4).as_bytes()).await.unwrap();
    wait_until("the outage has begun", async || endpoint.answered() >= 1).await;
    // Measurement windows, not waits for something to happen: the first second takes the first
    // wave (up to pool_size requests were in flight when the outage began) and the first probes;
    // the next six seconds are counted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (at_start, connections_at_start) = (endpoint.answered(), endpoint.connections());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let attempts = endpoint.answered() - at_start;
    let connections = endpoint.connections() - connections_at_start;
    endpoint.fail_with(None);
    drop(input);
    let run = finish(child).await;
    assert!(run.status.success(), "{}", run.stderr);
    // Backoff from 200 ms doubling (each wait at least half its step): at most 4 probes in these
    // 6 s, where one budget per request would have made thousands of attempts.
    assert!(attempts <= 8, "{attempts} attempts in 6 s of outage");
    assert!(connections <= 8, "{connections} connections opened in 6 s of outage");
    assert_eq!((run.summary("delivered"), run.summary("failed")), (EVENTS as u64, 0));
    assert!(run.summary("retries") >= attempts as u64, "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_tried_once_and_dead_lettered_and_a_501_is_not_retried() {
    for status in [StatusCode::BAD_REQUEST, StatusCode::NOT_IMPLEMENTED] {
        const EVENTS: usize = 20;
        let scratch = Scratch::new();
        let endpoint = Endpoint::start(Behaviour { status, ..Behaviour::default() }).await;
        let dead = scratch.0.path().join("dead.ndjson");
        let webhook =
            Webhook::new(&endpoint.url()).publishes().with(&format!("  dead_letter = \"{}\"", dead.display()));
        let config = webhook.write(&scratch, "nanomq.conf");
        let run = mqhook(
            &["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()],
            &ndjson_publishes(EVENTS, 2),
        )
        .await;
        assert!(run.status.success(), "{}", run.stderr);
        assert_eq!(endpoint.recorded().len(), EVENTS, "{status}: each request is tried once");
        assert_eq!((run.summary("failed"), run.summary("given_up_status"), run.summary("retries")), (20, 20, 0));
        let letters = std::fs::read_to_string(&dead).unwrap();
        assert_eq!(letters.lines().count(), EVENTS, "{status}: every one is dead-lettered");
        assert!(letters.lines().all(|line| line.contains(&format!("\"status\":{}", status.as_u16()))), "{letters}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_replay_cap_is_not_retried() {
    let scratch = Scratch::new();
    let endpoint = Endpoint::start(Behaviour { status: StatusCode::SERVICE_UNAVAILABLE, ..Behaviour::default() }).await;
    let webhook = Webhook::new(&endpoint.url()).publishes().with("  retry { max_replay_size = 16 }");
    let config = webhook.write(&scratch, "nanomq.conf");
    let run =
        mqhook(&["run", "--ingest", "ndjson:-", "--config", config.to_str().unwrap()], &ndjson_publishes(3, 1)).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(endpoint.recorded().len(), 3, "each is sent once");
    assert_eq!((run.summary("failed"), run.summary("given_up_too_large"), run.summary("retries")), (3, 3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_slows_the_publishers_down_and_loses_nothing() {
    const PER_CLIENT: usize = 100_000;
    let scratch = Scratch::new();
    // 10 ms per answer, and mqhook's default pool of 32: about 3,200 requests a second, far
    // fewer than two publishers send.
    let endpoint = Endpoint::start(Behaviour { delay: Duration::from_millis(10), ..Behaviour::default() }).await;
    let config = Webhook::new(&endpoint.url()).publishes().write(&scratch, "nanomq.conf");
    let listen = free_loopback_addr();
    let child = spawn_mqhook(&["run", "--config", config.to_str().unwrap(), "--listen", &listen]);
    wait_for_listener(&listen).await;
    let broker: SocketAddr = listen.parse().unwrap();
    // QoS 0 from the test's own client: mosquitto_pub drops what it has not written yet when its
    // input ends, but this client writes every packet, waiting as TCP makes it.
    let qos0 = tokio::spawn(async move {
        let connect = wire::Connect {
            version: 4,
            clientid: "flood-0",
            username: None,
            keepalive: 0,
            authentication_method: None,
        };
        let (mut client, code) = wire::Client::connect(broker, &connect).await;
        assert_eq!(code, 0);
        for i in 0..PER_CLIENT {
            client.publish("t", false, format!("p-{i}").as_bytes()).await;
        }
        client.disconnect().await;
    });
    let qos1 = publish_lines(&scratch, broker, "flood-1", 1, PER_CLIENT, PER_CLIENT);
    published(qos0).await;
    published(qos1).await;
    wait_until("every publish is delivered", async || endpoint.count() >= 2 * PER_CLIENT).await;
    crate::support::signal(&child, "-TERM").await;
    let run = finish(child).await;
    assert!(run.status.success(), "{}", run.stderr);
    let recorded = endpoint.recorded();
    assert_eq!(check_at_least_once(&recorded, 2 * PER_CLIENT), 0, "no duplicates without an outage");
    assert_eq!((run.summary("rejected"), run.summary("failed"), run.summary("dropped")), (0, 0, 0));
    assert!(endpoint.max_in_flight() <= 32, "pool_size holds");
    // Both publishers were served side by side: the second one's publishes kept being accepted
    // while the first one's were still arriving.
    let first_of = |client: &str| recorded.iter().position(|r| r.body_text().contains(client)).unwrap();
    let last_of = |client: &str| recorded.iter().rposition(|r| r.body_text().contains(client)).unwrap();
    assert!(first_of("flood-1") < last_of("flood-0") && first_of("flood-0") < last_of("flood-1"));
}
