//! The bridge ingest against real brokers on loopback: Debian's mosquitto, and mqhook's own
//! embedded broker as the upstream; the real `mqhook` binary as the bridge, a real HTTP endpoint,
//! and every config at its defaults but the URL, the rules and (for restarts) the client id.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::process::{Child, Command};

use crate::outage::{finish, outage};
use crate::support::endpoint::{Behaviour, Endpoint, Recorded};
use crate::support::{
    free_loopback_addr, mqhook, signal, spawn_mqhook, wait_for_listener, wait_until, Scratch, StderrLog, Webhook,
};

/// Debian's mosquitto broker (package `mosquitto`).
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A mosquitto broker on a free loopback port, killed when dropped. It keeps sessions and
/// queued messages on disk across a restart, and queues enough for a bridge that is down.
struct Mosquitto {
    addr: String,
    conf: PathBuf,
    child: Child,
}

impl Mosquitto {
    async fn start(scratch: &Scratch, extra: &str) -> Mosquitto {
        let addr = free_loopback_addr();
        let port = addr.rsplit_once(':').unwrap().1;
        let data = scratch.0.path().join("mosquitto-data");
        std::fs::create_dir_all(&data).unwrap();
        // mosquitto's default of 1000 queued messages per client would drop what a bridge that is
        // down (or slow) has not taken yet: a broker holding a backlog must be allowed to. Run as
        // root, it would switch to the `mosquitto` user, which cannot write the test's directory.
        let conf = scratch.file(
            "mosquitto.conf",
            &format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
                 max_queued_messages 1000000\nuser root\n{extra}\n",
                data.display()
            ),
        );
        let child = Mosquitto::spawn(&conf);
        wait_for_listener(&addr).await;
        Mosquitto { addr, conf, child }
    }

    fn spawn(conf: &PathBuf) -> Child {
        Command::new(MOSQUITTO)
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto (Debian package mosquitto)")
    }

    /// Stops the broker cleanly (it writes its sessions and queues down), then starts it again on
    /// the same port.
    async fn restart(&mut self) {
        signal(&self.child, "-TERM").await;
        self.child.wait().await.unwrap();
        self.child = Mosquitto::spawn(&self.conf);
        wait_for_listener(&self.addr).await;
    }

    fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

/// Publishes `p-<first>` … `p-<first + count - 1>` at QoS 1 on topic `t` (each payload padded to
/// `size` bytes) as client `id`, retransmitting across broker restarts; the task keeps the session
/// alive until it is dropped, so what the broker had not acknowledged is sent again.
struct Publisher(tokio::task::JoinHandle<()>);

impl Drop for Publisher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn publish(addr: &str, id: &str, first: usize, count: usize, size: usize) -> Publisher {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut options = MqttOptions::new(id, host, port.parse().unwrap());
    options.set_clean_session(false).set_keep_alive(Duration::from_secs(30)).set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    Publisher(tokio::spawn(async move {
        // Kept for as long as the event loop runs: with no client left, rumqttc's loop ends.
        let _client = client.clone();
        tokio::spawn(async move {
            for i in first..first + count {
                let mut payload = format!("p-{i}");
                if payload.len() < size {
                    payload.push('-');
                    payload.extend(std::iter::repeat_n('x', size - payload.len()));
                }
                if client.publish("t", QoS::AtLeastOnce, false, payload).await.is_err() {
                    return; // the publisher was dropped
                }
            }
        });
        // Polled until the test drops it: what the broker has not acknowledged is sent again.
        loop {
            if eventloop.poll().await.is_err() {
                // The broker restarts: try again shortly.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }))
}

/// The `<i>` of a `p-<i>` payload in a recorded body.
fn id_of(request: &Recorded) -> usize {
    let body = request.body_text();
    let start = body.find("\"payload\":\"p-").expect("a test payload") + "\"payload\":\"p-".len();
    body[start..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

/// How many copies of each of `p-0` … `p-<count - 1>` arrived, checking none is missing;
/// returns the number of duplicates.
fn all_delivered(recorded: &[Recorded], count: usize) -> usize {
    let mut copies: BTreeMap<usize, usize> = BTreeMap::new();
    for request in recorded {
        *copies.entry(id_of(request)).or_default() += 1;
    }
    let missing: Vec<usize> = (0..count).filter(|i| !copies.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} messages never arrived, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    recorded.len() - count
}

/// Waits until every one of `count` messages reached `endpoint`.
async fn wait_all(endpoint: &Endpoint, count: usize) {
    wait_until(&format!("all {count} messages are delivered"), async || {
        let recorded = endpoint.recorded();
        recorded.len() >= count && {
            let mut seen = vec![false; count];
            recorded.iter().for_each(|r| seen[id_of(r)] = true);
            seen.into_iter().all(|s| s)
        }
    })
    .await;
}

/// Starts a bridge to `broker` with `webhook`'s config; returns it once it has subscribed.
async fn bridge(scratch: &Scratch, name: &str, webhook: &Webhook, broker: &str) -> (Child, StderrLog) {
    let config = webhook.write(scratch, &format!("{name}.conf"));
    let mut child = spawn_mqhook(&["run", "--ingest", broker, "--config", config.to_str().unwrap()]);
    let log = StderrLog::capture(&mut child);
    log.wait_for("Subscribed to").await;
    (child, log)
}

/// A bridge block with only a client id.
fn client_id(id: &str) -> String {
    format!("  bridge {{ client_id = \"{id}\" }}")
}

/// The resident set size of a process at its peak, in bytes.
fn peak_rss(child: &Child) -> u64 {
    crate::support::peak_rss_kib(child.id().unwrap()) * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_qos1_publishes_through_mosquitto_arrive_with_exact_bodies() {
    const MESSAGES: usize = 20_000;
    let scratch = Scratch::new();
    let broker = Mosquitto::start(&scratch, "").await;
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let webhook = Webhook::new(&endpoint.url()).publishes().with(&client_id("bridge-exact"));
    let (child, _log) = bridge(&scratch, "bridge", &webhook, &broker.url()).await;
    let started = std::time::Instant::now();
    let _publisher = publish(&broker.addr, "pub-exact", 0, MESSAGES, 0);
    wait_all(&endpoint, MESSAGES).await;
    println!("bridge: {MESSAGES} QoS 1 messages through mosquitto in {:?}", started.elapsed());
    let recorded = endpoint.recorded();
    assert_eq!(all_delivered(&recorded, MESSAGES), 0, "no duplicates without a disruption");
    for request in &recorded {
        let body = request.body_text();
        let ts = body.strip_prefix("{\"ts\":").and_then(|rest| rest.split(',').next()).expect("ts first");
        let expected = format!(
            "{{\"ts\":{ts},\"topic\":\"t\",\"retain\":false,\"qos\":1,\"action\":\"message_publish\",\
             \"from_username\":\"undefined\",\"from_client_id\":null,\"payload\":\"p-{}\"}}",
            id_of(request)
        );
        assert_eq!(body, expected);
    }
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_3_1_1_bridge_acknowledges_too() {
    const MESSAGES: usize = 2_000;
    let scratch = Scratch::new();
    let broker = Mosquitto::start(&scratch, "").await;
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let webhook = Webhook::new(&endpoint.url())
        .publishes()
        .with("  bridge { client_id = \"bridge-v311\", protocol = \"3.1.1\" }");
    let (mut child, _log) = bridge(&scratch, "bridge", &webhook, &broker.url()).await;
    let _publisher = publish(&broker.addr, "pub-v311", 0, MESSAGES, 0);
    wait_all(&endpoint, MESSAGES).await;
    assert_eq!(all_delivered(&endpoint.recorded(), MESSAGES), 0);
    signal(&child, "-TERM").await;
    child.wait().await.unwrap();
    let mut log_text = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stdout.as_mut().unwrap(), &mut log_text).await.unwrap();
    assert!(log_text.contains(&format!("delivered={MESSAGES}")), "{log_text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqhooks_own_broker_as_the_upstream() {
    // The embedded broker queues 1,000 messages for a subscriber that is behind and drops the
    // rest (rmqtt's `max_mqueue_len`): this stays within it.
    const MESSAGES: usize = 900;
    let scratch = Scratch::new();
    let endpoint = Endpoint::start(Behaviour::default()).await;
    // The upstream: mqhook's embedded broker, its own webhook selecting nothing.
    let upstream = free_loopback_addr();
    let quiet =
        Webhook::new(&endpoint.url()).event("on_message_publish", Some("nothing/here")).write(&scratch, "up.conf");
    let mut up = spawn_mqhook(&["run", "--config", quiet.to_str().unwrap(), "--listen", &upstream]);
    let _up_log = StderrLog::capture(&mut up);
    wait_for_listener(&upstream).await;
    let webhook = Webhook::new(&endpoint.url()).publishes().with(&client_id("bridge-up"));
    let (_child, _log) = bridge(&scratch, "bridge", &webhook, &format!("mqtt://{upstream}")).await;
    let _publisher = publish(&upstream, "pub-up", 0, MESSAGES, 0);
    wait_all(&endpoint, MESSAGES).await;
    assert_eq!(all_delivered(&endpoint.recorded(), MESSAGES), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_bridge_restarted_with_its_client_id_loses_nothing() {
    const MESSAGES: usize = 10_000;
    let scratch = Scratch::new();
    let broker = Mosquitto::start(&scratch, "").await;
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let webhook = Webhook::new(&endpoint.url()).publishes().with(&client_id("bridge-kill"));
    let (mut child, _log) = bridge(&scratch, "bridge", &webhook, &broker.url()).await;
    let _publisher = publish(&broker.addr, "pub-kill", 0, MESSAGES, 0);
    wait_until("a first part is delivered", async || endpoint.count() >= MESSAGES / 5).await;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let at_kill = endpoint.count();
    let (_child, _log) = bridge(&scratch, "bridge", &webhook, &broker.url()).await;
    wait_all(&endpoint, MESSAGES).await;
    let duplicates = all_delivered(&endpoint.recorded(), MESSAGES);
    println!("kill -9 after {at_kill} deliveries: {duplicates} duplicates (sent again by the broker)");
    assert!(at_kill < MESSAGES, "killed mid-stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_second_endpoint_outage_loses_nothing_and_the_broker_holds_the_backlog() {
    const MESSAGES: usize = 2_000;
    // 32 KiB each: 64 MiB in all, published while the endpoint is down.
    const SIZE: usize = 32 << 10;
    let scratch = Scratch::new();
    let broker = Mosquitto::start(&scratch, "").await;
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let webhook = Webhook::new(&endpoint.url()).publishes().with(&client_id("bridge-outage"));
    let (child, _log) = bridge(&scratch, "bridge", &webhook, &broker.url()).await;
    let publisher = publish(&broker.addr, "pub-outage", 0, MESSAGES / 10, SIZE);
    wait_until("a first part is delivered", async || endpoint.count() >= MESSAGES / 20).await;
    // The rest is published while nothing listens.
    let rest = publish(&broker.addr, "pub-outage-2", MESSAGES / 10, MESSAGES - MESSAGES / 10, SIZE);
    let (mut recorded, endpoint) = outage(endpoint).await;
    let peak_during_outage = peak_rss(&child);
    wait_until("the rest is delivered", async || {
        let mut all = recorded.clone();
        all.extend(endpoint.recorded());
        let mut seen = vec![false; MESSAGES];
        all.iter().for_each(|r| seen[id_of(r)] = true);
        seen.into_iter().all(|s| s)
    })
    .await;
    recorded.extend(endpoint.recorded());
    let duplicates = all_delivered(&recorded, MESSAGES);
    let peak = peak_rss(&child);
    println!(
        "endpoint outage: {} requests for {MESSAGES} messages of {SIZE} bytes, {duplicates} duplicates; \
         bridge peak RSS {} MiB during the outage, {} MiB in all",
        recorded.len(),
        peak_during_outage >> 20,
        peak >> 20
    );
    // The backlog (64 MiB of payloads) stays in the broker: the bridge holds its in-flight
    // window (receive maximum 64) and the pipeline's memory, not the backlog.
    assert!(peak < 120 << 20, "the bridge's memory stays bounded: peak {} MiB", peak >> 20);
    drop((publisher, rest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_broker_restarted_mid_stream_loses_no_qos1_message() {
    const MESSAGES: usize = 10_000;
    let scratch = Scratch::new();
    let mut broker = Mosquitto::start(&scratch, "").await;
    let endpoint = Endpoint::start(Behaviour { delay: Duration::from_millis(1), ..Behaviour::default() }).await;
    let webhook = Webhook::new(&endpoint.url()).publishes().with(&client_id("bridge-restart"));
    let (_child, log) = bridge(&scratch, "bridge", &webhook, &broker.url()).await;
    let _publisher = publish(&broker.addr, "pub-restart", 0, MESSAGES, 0);
    wait_until("a first part is delivered", async || endpoint.count() >= MESSAGES / 5).await;
    broker.restart().await;
    let at_restart = endpoint.count();
    wait_all(&endpoint, MESSAGES).await;
    log.wait_for("Connected to the broker again").await;
    let duplicates = all_delivered(&endpoint.recorded(), MESSAGES);
    println!("broker restart after {at_restart} deliveries: {duplicates} duplicates");
    assert!(at_restart < MESSAGES, "restarted mid-stream");
    let losses = log.text().matches("Connection to the broker lost").count();
    assert_eq!(losses, 1, "one outage, one line, however many tries:\n{}", log.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_bridges_in_one_share_group_split_the_stream() {
    const MESSAGES: usize = 9_000;
    let scratch = Scratch::new();
    let broker = Mosquitto::start(&scratch, "").await;
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let mut bridges = Vec::new();
    for n in 0..3 {
        let webhook = Webhook::new(&format!("{}/b{n}", endpoint.url()))
            .publishes()
            .with(&format!("  bridge {{ client_id = \"bridge-share-{n}\", share_group = \"hooks\" }}"));
        bridges.push(bridge(&scratch, &format!("b{n}"), &webhook, &broker.url()).await);
    }
    let _publisher = publish(&broker.addr, "pub-share", 0, MESSAGES, 0);
    wait_all(&endpoint, MESSAGES).await;
    let recorded = endpoint.recorded();
    let duplicates = all_delivered(&recorded, MESSAGES);
    let mut per_bridge: BTreeMap<String, usize> = BTreeMap::new();
    for request in &recorded {
        *per_bridge.entry(request.path.clone()).or_default() += 1;
    }
    println!("share group: {per_bridge:?}, {duplicates} duplicates");
    assert_eq!(per_bridge.len(), 3, "all three did part of the work: {per_bridge:?}");
    assert!(per_bridge.values().all(|&n| n >= MESSAGES / 10), "{per_bridge:?}");
}

/// The quirks of NanoMQ's client status messages (spec §8), published by a test client to
/// mqhook's embedded broker; the bridge turns them into NanoMQ's own webhook bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nanomq_client_status_messages_become_nanomq_bodies() {
    let scratch = Scratch::new();
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let upstream = free_loopback_addr();
    // The bridge starts first: a broker that cannot be reached yet is retried.
    let webhook = Webhook::new(&endpoint.url())
        .event("on_client_connack", None)
        .event("on_client_disconnected", None)
        .with(&client_id("bridge-sys"));
    let config = webhook.write(&scratch, "bridge.conf");
    let mut child =
        spawn_mqhook(&["run", "--ingest", &format!("mqtt://{upstream}"), "--config", config.to_str().unwrap()]);
    let log = StderrLog::capture(&mut child);
    log.wait_for("Cannot reach the broker").await;
    let quiet =
        Webhook::new(&endpoint.url()).event("on_message_publish", Some("nothing/here")).write(&scratch, "up.conf");
    let mut up = spawn_mqhook(&["run", "--config", quiet.to_str().unwrap(), "--listen", &upstream]);
    let _up_log = StderrLog::capture(&mut up);
    log.wait_for("Subscribed to").await;

    let status = |id: &str, payload: &[u8]| (format!("$SYS/brokers/client_status/{id}"), payload.to_vec());
    let messages = [
        // The offline of a short-lived client before its online.
        status("c0", br#"{"status":"offline", "username":"u0","ts":1706703725960,"reason_code":"0","client_id":"c0","IPv4":"127.0.0.1"}"#),
        status("c0", br#"{"status":"online", "username":"u0", "ts":1706703724960,"proto_name":"MQTT","keepalive":60,"return_code":"0","proto_ver":4,"client_id":"c0","clean_start":1, "IPv4":"127.0.0.1"}"#),
        // No username, written as C prints a null pointer; a refused CONNECT, in hexadecimal.
        status("c1", br#"{"status":"online", "username":"(null)", "ts":1,"proto_name":"MQTT","keepalive":30,"return_code":"86","proto_ver":4,"client_id":"c1","clean_start":1, "IPv4":"127.0.0.1"}"#),
        // An MQTT 5 client: a stray NUL first; a clean MQTT 5 DISCONNECT reads "7".
        status("c5", b"\0{\"status\":\"online\", \"username\":\"u5\", \"ts\":1,\"proto_name\":\"MQTT\",\"keepalive\":10,\"return_code\":\"0\",\"proto_ver\":5,\"client_id\":\"c5\",\"clean_start\":1, \"IPv4\":\"127.0.0.1\"}"),
        status("c5", b"\0{\"status\":\"offline\", \"username\":\"u5\",\"ts\":2,\"reason_code\":\"7\",\"client_id\":\"c5\",\"IPv4\":\"127.0.0.1\"}"),
        // A client id and a username holding `"` and `\`, copied raw: not JSON.
        status("pub\"q", br#"{"status":"online", "username":"a"b\c", "ts":1,"proto_name":"MQTT","keepalive":60,"return_code":"0","proto_ver":4,"client_id":"pub"q","clean_start":1, "IPv4":"127.0.0.1"}"#),
        // Unreadable: counted and skipped.
        status("bad", b"\xff{garbage"),
    ];
    let (host, port) = upstream.rsplit_once(':').unwrap();
    let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("nanomq-sys", host, port.parse().unwrap()), 64);
    let publisher = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    for (topic, payload) in messages {
        client.publish(topic, QoS::AtMostOnce, false, payload).await.unwrap();
    }
    let expected = [
        r#"{"reason":"normal","username":"u0","clientid":"c0","action":"client_disconnected"}"#,
        r#"{"proto_ver":4,"keepalive":60,"conn_ack":"success","username":"u0","clientid":"c0","action":"client_connack"}"#,
        r#"{"proto_ver":4,"keepalive":30,"conn_ack":"fail","username":"undefined","clientid":"c1","action":"client_connack"}"#,
        r#"{"proto_ver":5,"keepalive":10,"conn_ack":"success","username":"u5","clientid":"c5","action":"client_connack"}"#,
        r#"{"reason":"normal","username":"u5","clientid":"c5","action":"client_disconnected"}"#,
        r#"{"proto_ver":4,"keepalive":60,"conn_ack":"success","username":"a\"b\\c","clientid":"pub\"q","action":"client_connack"}"#,
    ];
    wait_until("every readable status is delivered", async || endpoint.count() >= expected.len()).await;
    log.wait_for("unreadable client status").await;
    signal(&child, "-TERM").await;
    let run = finish(child).await;
    assert!(run.status.success(), "{}", run.stderr);
    let mut bodies: Vec<String> = endpoint.recorded().iter().map(Recorded::body_text).collect();
    bodies.sort();
    let mut expected: Vec<String> = expected.iter().map(|b| b.to_string()).collect();
    expected.sort();
    assert_eq!(bodies, expected);
    assert_eq!(run.summary("malformed"), 1, "{}", run.stdout);
    publisher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_a_clear_error_and_the_password_stays_secret() {
    let scratch = Scratch::new();
    let broker = Mosquitto::start(&scratch, "").await;
    std::fs::write(
        &broker.conf,
        std::fs::read_to_string(&broker.conf).unwrap().replace("allow_anonymous true", "allow_anonymous false"),
    )
    .unwrap();
    let mut broker = broker;
    broker.restart().await;
    let password = scratch.file("password", "s3cret-Pa55\n");
    let webhook = Webhook::new("http://127.0.0.1:9/").publishes().with(&format!(
        "  bridge {{ url = \"{}\", username = \"hook\", password_file = \"{}\" }}",
        broker.url(),
        password.display()
    ));
    let config = webhook.write(&scratch, "bridge.conf");
    let run = mqhook(&["run", "--ingest", "bridge", "--config", config.to_str().unwrap()], "").await;
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("refused the connection"), "{}", run.stderr);
    let check = mqhook(&["check", "--config", config.to_str().unwrap()], "").await;
    assert!(check.status.success(), "{}", check.stderr);
    assert!(check.stdout.contains("\"password\": \"<redacted>\""), "{}", check.stdout);
    for output in [&run.stdout, &run.stderr, &check.stdout, &check.stderr] {
        assert!(!output.contains("s3cret"), "the password leaked: {output}");
    }
}

/// A "broker" that answers every connection with bytes that are not MQTT: the bridge counts a
/// failed try, backs off and tries again, and never stops or panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_mqtt_socket_is_retried_not_fatal() {
    let scratch = Scratch::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    let server = tokio::spawn(async move {
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let garbage = garbage.clone();
            tokio::spawn(async move {
                let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &[0x20, 0xff, 0xff, 0xff, 0xff]).await;
                let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &garbage).await;
            });
        }
    });
    let webhook = Webhook::new("http://127.0.0.1:9/").publishes().with(&client_id("bridge-garbage"));
    let config = webhook.write(&scratch, "bridge.conf");
    let mut child = spawn_mqhook(&["run", "--ingest", &format!("mqtt://{addr}"), "--config", config.to_str().unwrap()]);
    let log = StderrLog::capture(&mut child);
    wait_until("the bridge tried three times", async || accepted.load(std::sync::atomic::Ordering::SeqCst) >= 3).await;
    assert!(child.try_wait().unwrap().is_none(), "still running:\n{}", log.text());
    assert_eq!(log.text().matches("Cannot reach the broker").count(), 1, "one line per outage:\n{}", log.text());
    assert!(!log.text().contains("panicked"), "{}", log.text());
    server.abort();
}

/// With a spool a message is acknowledged once its request is on disk: with the endpoint
/// refusing everything the broker's stream still drains into the spool, and after `kill -9` the
/// next start delivers it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_spool_messages_are_acknowledged_once_on_disk_and_survive_kill_9() {
    const MESSAGES: usize = 3_000;
    let scratch = Scratch::new();
    let broker = Mosquitto::start(&scratch, "").await;
    let endpoint = Endpoint::start(Behaviour::default()).await;
    endpoint.fail_with(Some(hyper::StatusCode::SERVICE_UNAVAILABLE));
    let spool = scratch.0.path().join("spool");
    let webhook = Webhook::new(&endpoint.url())
        .publishes()
        .with(&client_id("bridge-spool"))
        .with(&format!("  spool {{ dir = \"{}\" }}", spool.display()));
    let config = webhook.write(&scratch, "bridge.conf");
    let admin = free_loopback_addr();
    let mut child =
        spawn_mqhook(&["run", "--ingest", &broker.url(), "--config", config.to_str().unwrap(), "--admin", &admin]);
    let log = StderrLog::capture(&mut child);
    log.wait_for("Subscribed to").await;
    let _publisher = publish(&broker.addr, "pub-spool", 0, MESSAGES, 0);
    // Nothing is delivered, yet everything is taken: acknowledged once spooled.
    wait_until("every message is spooled", async || crate::support::admin_metrics(&admin).await["spooled"] == MESSAGES)
        .await;
    // …and acknowledged to the broker, as the bridge's metrics say (read by the OpenMetrics parser).
    wait_until("every message acknowledged", async || {
        let exposition = crate::support::admin_call(&admin, "GET", "/metrics", None, Vec::new()).await.body;
        let samples = crate::support::parse_metrics(&exposition);
        samples.get("mqhook_bridge_acked_total") == Some(&(MESSAGES as f64))
            && samples.get("mqhook_bridge_messages_total") == Some(&(MESSAGES as f64))
    })
    .await;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    endpoint.fail_with(None);
    let (_child, _log) = bridge(&scratch, "bridge", &webhook, &broker.url()).await;
    wait_until(&format!("all {MESSAGES} messages are delivered"), async || {
        let mut seen = vec![false; MESSAGES];
        endpoint.recorded().iter().filter(|r| r.body_text().contains("p-")).for_each(|r| seen[id_of(r)] = true);
        seen.into_iter().all(|s| s)
    })
    .await;
}
