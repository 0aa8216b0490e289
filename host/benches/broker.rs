//! End to end through the embedded broker: MQTT publishers → rmqtt → wasm guest → HTTP pool →
//! an in-process hyper server, all on 127.0.0.1. Reports events/s, publish-to-arrival latency
//! (p50, p99) and loss, which must be 0. Publishers use QoS 1 and wait for each PUBACK, so every
//! counted publish was accepted by the broker. The baseline, run first in the same process: the
//! same broker and publishers with the webhook disabled; the ratio of publish rates says what the
//! webhook costs the broker.
//!
//! Then overload: a sink that takes 10 ms per answer (about 3,200 webhooks a second through the
//! default pool of 32), slower than the publishers. With the default queues the publishers'
//! events pile up in memory and wait there; with a short queue the publishers are held back (the
//! broker waits for room before it acknowledges), so an event's publish-to-arrival latency falls.
//!
//! Then the bridge, in the same run: the same publishers publish to Debian's mosquitto
//! (`/usr/sbin/mosquitto`, skipped when it is not installed), and mqhook subscribes to it with the
//! bridge ingest (default `webhook.bridge`: MQTT 5, QoS 1, acknowledged after delivery) → guest →
//! HTTP. Reports events/s and loss beside the embedded-broker path.
//!
//! Run: `cargo bench -p mqhook --bench broker` (env `PUBLISHERS`, `MESSAGES` per publisher).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use mqhook::config::{BridgeUrl, Config, LiveConfig, Syntax};
use mqhook::delivery::http::HttpSink;
use mqhook::delivery::Sink;
use mqhook::ingest::bridge::Bridge;
use mqhook::{GuestEngine, Runtime};

mod load;
use load::{drive, embedded_round, percentiles, serve, Round};

fn main() {
    let publishers: usize = env_or("PUBLISHERS", 8);
    let messages: usize = env_or("MESSAGES", 2000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        // The baseline first: the same broker and publishers, with no webhook selecting anything.
        let baseline = round(false, publishers, messages, Duration::ZERO, "").await;
        let hooked = round(true, publishers, messages, Duration::ZERO, "").await;
        let sent = publishers * messages;
        let received = hooked.latencies.len();
        let (p50, p99) = percentiles(&hooked.latencies);
        let rate = |secs: f64| sent as f64 / secs;
        println!("publishers: {publishers}, messages each: {messages}, QoS 1, pool_size 32");
        println!("broker alone (no webhook): {:.0} publishes/s", rate(baseline.publishing));
        println!("broker + webhook:          {:.0} publishes/s", rate(hooked.publishing));
        println!("ratio with / without webhook: {:.2}", baseline.publishing / hooked.publishing);
        println!("events/s (publish start → last webhook): {:.0}", received as f64 / hooked.delivering);
        println!("publish-to-arrival latency: p50 {p50} µs, p99 {p99} µs");
        println!("sent {sent}, received {received}, loss {}", sent.saturating_sub(received));
        println!("runtime: {}", hooked.totals);
        match bridged(publishers, messages).await {
            Some(bridge) => {
                let received = bridge.latencies.len();
                let (p50, p99) = percentiles(&bridge.latencies);
                println!("mosquitto → bridge → HTTP:");
                println!("  publishes/s to mosquitto: {:.0}", rate(bridge.publishing));
                println!("  events/s (publish start → last webhook): {:.0}", received as f64 / bridge.delivering);
                println!("  publish-to-arrival latency: p50 {p50} µs, p99 {p99} µs");
                println!("  sent {sent}, received {received}, loss {}", sent.saturating_sub(received));
                println!("  runtime: {}", bridge.totals);
            }
            None => println!("mosquitto → bridge → HTTP: skipped (no /usr/sbin/mosquitto)"),
        }
        println!("overload: a sink at 10 ms per answer (about 3,200 webhooks/s), the same publishers");
        for (name, extra) in [("default queues (65,536)", ""), ("queue_size = 512", " queue_size = 512\n")] {
            let overloaded = round(true, publishers, messages, Duration::from_millis(10), extra).await;
            let (p50, p99) = percentiles(&overloaded.latencies);
            println!(
                "  {name:<24} publishes/s {:>7.0}  latency p50 {p50:>8} µs  p99 {p99:>8} µs  loss {}  rejected {}",
                rate(overloaded.publishing),
                sent.saturating_sub(overloaded.latencies.len()),
                overloaded.totals.rejected
            );
        }
    });
}

/// Runs the publishers once through a fresh broker; with `webhooks`, every publish is a webhook.
/// The sink answers after `delay`; `extra` lines go into the webhook block.
async fn round(webhooks: bool, publishers: usize, messages: usize, delay: Duration, extra: &str) -> Round {
    let config = |endpoint: SocketAddr| {
        format!(
            "webhook {{\n enable = {webhooks}\n url = \"http://{endpoint}/hook\"\n pool_size = 32\n{extra} events = [{{ event = \"on_message_publish\", topic = \"bench/#\" }}]\n}}\n"
        )
    };
    let expected = if webhooks { publishers * messages } else { 0 };
    embedded_round(config, publishers, messages, delay, expected).await
}

/// The bridge path: publishers → mosquitto → bridge ingest → guest → HTTP; `None` without mosquitto.
async fn bridged(publishers: usize, messages: usize) -> Option<Round> {
    const MOSQUITTO: &str = "/usr/sbin/mosquitto";
    if !Path::new(MOSQUITTO).exists() {
        return None;
    }
    let scratch = tempfile::tempdir().expect("a temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let conf = scratch.path().join("mosquitto.conf");
    // Enough queue that mosquitto drops nothing for a bridge that is behind.
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n"))
        .expect("mosquitto.conf");
    let _mosquitto = tokio::process::Command::new(MOSQUITTO)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto");
    let broker_addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect(broker_addr).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let epoch = Instant::now();
    let (endpoint, arrivals) = serve(epoch, Duration::ZERO).await;
    let text = format!(
        "webhook {{\n url = \"http://{endpoint}/hook\"\n events = [{{ event = \"on_message_publish\", topic = \"bench/#\" }}]\n bridge {{ client_id = \"bench-bridge\", clean_start = true }}\n}}\n"
    );
    let config = Config::parse(&text, Path::new("bench.conf"), Syntax::Hocon).expect("bench config");
    let guest = GuestEngine::new().expect("engine").load(None, &config.guest, &config.filter).expect("built-in guest");
    let (bridge_config, filter) = (config.bridge.clone(), config.filter.clone());
    let live = LiveConfig::new(config);
    let sink = Sink::Http(HttpSink::new(live.clone()).expect("sink"));
    let pipeline = Runtime::start(live, guest, sink).expect("runtime");
    let url = BridgeUrl::parse(&format!("mqtt://{broker_addr}")).expect("url");
    let bridge = Bridge::new(bridge_config, Some(url), &filter, pipeline.submitter()).expect("bridge");
    let counters = bridge.counters();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(bridge.run(async move {
        let _ = stopped.await;
    }));
    while counters.subscribed.get() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let expected = publishers * messages;
    let (publishing, delivering) = drive(broker_addr, publishers, messages, epoch, &arrivals, expected).await;
    let _ = stop.send(());
    running.await.expect("bridge task").expect("bridge");
    let totals = pipeline.shutdown().await;
    let latencies = arrivals.lock().unwrap().clone();
    Some(Round { publishing, delivering, latencies, totals })
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}
