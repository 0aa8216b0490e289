//! The mosquitto plugin end to end, against its two baselines, with the same publishers in one
//! run: mosquitto alone (no plugin), mosquitto with `libmqhook_mosquitto.so` (every publish
//! POSTed), and mqhook's embedded broker with the same webhook. Publishers use QoS 1 and wait
//! for each PUBACK, so every counted publish was accepted by the broker; the endpoint is an
//! in-process hyper server. Reports publishes/s, webhooks delivered per second, latency and loss
//! (which must be 0), and the ratios against mosquitto alone.
//!
//! Needs Debian's mosquitto (`/usr/sbin/mosquitto`); the `.so` is built with this bench (a
//! dev-dependency of `mqhook`). Run: `cargo bench -p mqhook --bench mosquitto` (env
//! `PUBLISHERS`, `MESSAGES` per publisher).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod load;
use load::{drive, serve};

/// Longest any round may take to deliver its webhooks.
const ROUND_LIMIT: Duration = Duration::from_secs(180);

fn main() {
    let publishers: usize = env_or("PUBLISHERS", 8);
    let messages: usize = env_or("MESSAGES", 2000);
    let plugin = plugin_path();
    assert!(Path::new("/usr/sbin/mosquitto").exists(), "/usr/sbin/mosquitto is missing: apt-get install mosquitto");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let sent = publishers * messages;
        let alone = mosquitto_round(None, publishers, messages).await;
        let hooked = mosquitto_round(Some(&plugin), publishers, messages).await;
        let embedded = embedded_round(publishers, messages).await;
        let rate = |secs: f64| sent as f64 / secs;
        println!("publishers: {publishers}, messages each: {messages}, QoS 1, pool_size 32");
        println!(
            "{:<30} {:>12} {:>12} {:>10} {:>10} {:>6}",
            "", "publishes/s", "webhooks/s", "p50 µs", "p99 µs", "loss"
        );
        for (name, round) in
            [("mosquitto alone", &alone), ("mosquitto + plugin", &hooked), ("embedded broker + webhook", &embedded)]
        {
            let (p50, p99) = round.percentiles();
            println!(
                "{name:<30} {:>12.0} {:>12.0} {:>10} {:>10} {:>6}",
                rate(round.publishing),
                round.arrivals.len() as f64 / round.delivering,
                p50,
                p99,
                if round.webhooks { sent.saturating_sub(round.arrivals.len()) } else { 0 }
            );
        }
        println!(
            "ratio mosquitto + plugin / mosquitto alone (publishes/s): {:.2}",
            alone.publishing / hooked.publishing
        );
        println!(
            "ratio embedded / mosquitto + plugin (publishes/s):       {:.2}",
            hooked.publishing / embedded.publishing
        );
        println!(
            "ratio embedded / mosquitto + plugin (webhooks/s):        {:.2}",
            (embedded.arrivals.len() as f64 / embedded.delivering) / (hooked.arrivals.len() as f64 / hooked.delivering)
        );
    });
}

/// What one round measured.
struct Round {
    webhooks: bool,
    /// Seconds from the first publish to the last PUBACK.
    publishing: f64,
    /// Seconds from the first publish to the last webhook arrival.
    delivering: f64,
    /// Publish-to-arrival times (µs) of the webhooks that arrived.
    arrivals: Vec<u64>,
}

impl Round {
    fn percentiles(&self) -> (u64, u64) {
        load::percentiles(&self.arrivals)
    }
}

/// A private mosquitto on a free loopback port, with the plugin when given; killed when dropped.
struct Mosquitto {
    child: Child,
    /// Its config files, removed after it stopped.
    _files: tempfile::TempDir,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn mosquitto_round(plugin: Option<&Path>, publishers: usize, messages: usize) -> Round {
    let epoch = Instant::now();
    let (endpoint, arrivals) = serve(epoch, Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut conf = format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\nuser root\n");
    if let Some(plugin) = plugin {
        let hook = dir.path().join("mqhook.conf");
        std::fs::write(&hook, webhook_config(endpoint)).unwrap();
        conf.push_str(&format!("plugin {}\nplugin_opt_config {}\n", plugin.display(), hook.display()));
    }
    let conf_path = dir.path().join("mosquitto.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting mosquitto");
    let broker = Mosquitto { child, _files: dir };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + ROUND_LIMIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected = if plugin.is_some() { publishers * messages } else { 0 };
    let (publishing, delivering) = drive(addr, publishers, messages, epoch, &arrivals, expected).await;
    drop(broker);
    let arrivals = arrivals.lock().unwrap().clone();
    Round { webhooks: plugin.is_some(), publishing, delivering, arrivals }
}

async fn embedded_round(publishers: usize, messages: usize) -> Round {
    let expected = publishers * messages;
    let round = load::embedded_round(webhook_config, publishers, messages, Duration::ZERO, expected).await;
    Round { webhooks: true, publishing: round.publishing, delivering: round.delivering, arrivals: round.latencies }
}

/// Every publish on `bench/#` POSTed to `endpoint`, through a pool of 32.
fn webhook_config(endpoint: SocketAddr) -> String {
    format!(
        "webhook {{\n  url = \"http://{endpoint}/hook\"\n  pool_size = 32\n  events = [ {{ event = \"on_message_publish\", topic = \"bench/#\" }} ]\n}}\n"
    )
}

/// The plugin built with this bench, next to it in `target/release/deps`.
fn plugin_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench's path");
    let path = exe.parent().expect("target/release/deps").join("libmqhook_mosquitto.so");
    assert!(path.exists(), "{} is missing", path.display());
    path
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}
