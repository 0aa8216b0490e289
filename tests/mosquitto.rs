//! The mosquitto plugin end to end: Debian's own `/usr/sbin/mosquitto` 2.0.11 on a free loopback
//! port with `libmqhook_mosquitto.so` loaded, real clients (`mosquitto_pub`/`_sub` and the raw
//! client in support::wire), a real HTTP endpoint.
//!
//! The `.so` comes from the same cargo invocation as this test binary: `mqhook-mosquitto` is a
//! dev-dependency of `mqhook` (cdylib + rlib), so cargo builds the cdylib, with the same features,
//! before it links these tests, into the directory this binary runs from (`target/release/deps`).
//! No nested cargo, no stale copy from another build.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::endpoint::{Behaviour, Endpoint};
use crate::support::wire::{Client, Connect};
use crate::support::{
    check_at_least_once, finish_with_input, free_loopback_addr, signal, wait_until, Scratch, StderrLog, Webhook,
    HOSTILE_GUEST, WAIT_LIMIT,
};

/// Debian's broker binary (package `mosquitto`).
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// How long a stopping broker may take, beyond its `plugin_opt_drain_timeout`.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// Fails the test in one line when mosquitto is missing (scripts/test installs it).
fn require_mosquitto() {
    for (path, package) in [(MOSQUITTO, "mosquitto"), ("/usr/bin/mosquitto_pub", "mosquitto-clients")] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: install the Debian packages mosquitto mosquitto-clients mosquitto-dev \
             libmosquitto-dev (scripts/test does), package {package}"
        );
    }
}

/// The plugin built with this test binary (see the module doc).
fn plugin_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe.parent().expect("target/release/deps").join("libmqhook_mosquitto.so");
    assert!(path.exists(), "{} is missing: it is built with the tests (mqhook-mosquitto)", path.display());
    path
}

/// A private mosquitto, killed when dropped.
struct Mosquitto {
    child: tokio::process::Child,
    log: StderrLog,
    addr: SocketAddr,
}

/// mosquitto.conf for a broker on `addr`, with `extra` lines.
fn broker_conf(addr: SocketAddr, extra: &str) -> String {
    format!(
        "listener {} 127.0.0.1\nlog_dest stderr\nlog_dest topic\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
         # The test's files are the (root) test's own: do not drop to the mosquitto user.\nuser root\n{extra}\n",
        addr.port()
    )
}

/// The plugin's lines in mosquitto.conf.
fn plugin_conf(config: &Path, drain_timeout: &str) -> String {
    format!(
        "plugin {}\nplugin_opt_config {}\nplugin_opt_drain_timeout {drain_timeout}\n",
        plugin_path().display(),
        config.display()
    )
}

impl Mosquitto {
    /// Starts mosquitto with `conf` (written to `scratch` as `name`); waits until it runs.
    async fn start(scratch: &Scratch, name: &str, conf: &str, addr: SocketAddr) -> Mosquitto {
        let mut broker = Mosquitto::spawn(scratch, name, conf, addr);
        let log = broker.log.clone();
        wait_until("mosquitto runs or exits", async || {
            log.text().contains(" running") || broker.child.try_wait().unwrap().is_some()
        })
        .await;
        assert!(broker.child.try_wait().unwrap().is_none(), "mosquitto exited:\n{}", log.text());
        broker
    }

    fn spawn(scratch: &Scratch, name: &str, conf: &str, addr: SocketAddr) -> Mosquitto {
        require_mosquitto();
        let path = scratch.file(name, conf);
        let mut child = tokio::process::Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting mosquitto");
        let log = StderrLog::capture(&mut child);
        Mosquitto { child, log, addr }
    }

    /// SIGTERM; waits (bounded by `limit`) for the exit; returns how long it took.
    async fn stop(mut self, limit: Duration) -> Duration {
        let started = Instant::now();
        signal(&self.child, "-TERM").await;
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("mosquitto did not stop within {limit:?}:\n{}", self.log.text()))
            .unwrap();
        let took = started.elapsed();
        // The last lines (the plugin's summary) may still be in the pipe.
        self.log.wait_for_end().await;
        assert!(status.success(), "mosquitto exited with {status}:\n{}", self.log.text());
        took
    }

    /// `mosquitto_pub`/`mosquitto_sub` (`program`) against this broker; returns whether it
    /// succeeded and what it printed.
    async fn client(&self, program: &str, args: &[&str], stdin: &str) -> (bool, String) {
        let port = self.addr.port().to_string();
        let child = tokio::process::Command::new(program)
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        let run = finish_with_input(child, stdin).await;
        (run.status.success(), run.stdout + &run.stderr)
    }

    async fn publish(&self, args: &[&str]) {
        let (ok, printed) = self.client("mosquitto_pub", args, "").await;
        assert!(ok, "mosquitto_pub {args:?}: {printed}\n{}", self.log.text());
    }
}

/// A body with its `ts` set to 0, so that bodies compare exactly otherwise.
fn without_ts(body: &str) -> String {
    match body.find("\"ts\":") {
        Some(at) => {
            let digits = body[at + 5..].bytes().take_while(u8::is_ascii_digit).count();
            format!("{}\"ts\":0{}", &body[..at], &body[at + 5 + digits..])
        }
        None => body.to_string(),
    }
}

#[test]
fn mosquitto_bindings_match_the_installed_headers() {
    use mqhook_mosquitto::sys::{CONSTANTS, LAYOUTS};
    for header in ["mosquitto_broker.h", "mosquitto_plugin.h", "mosquitto.h"] {
        assert!(
            Path::new("/usr/include").join(header).exists(),
            "/usr/include/{header} is missing: install mosquitto-dev and libmosquitto-dev (scripts/test does)"
        );
    }
    let mut program = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <mosquitto.h>\n#include <mosquitto_broker.h>\n\
         #include <mosquitto_plugin.h>\nint main(void) {\n",
    );
    let mut expected = String::new();
    for (name, size, fields) in LAYOUTS {
        program.push_str(&format!("  printf(\"{name} %zu\", sizeof({name}));\n"));
        expected.push_str(&format!("{name} {size}"));
        for (field, offset) in *fields {
            program.push_str(&format!("  printf(\" {field}=%zu\", offsetof({name}, {field}));\n"));
            expected.push_str(&format!(" {field}={offset}"));
        }
        program.push_str("  printf(\"\\n\");\n");
        expected.push('\n');
    }
    for (name, value) in CONSTANTS {
        program.push_str(&format!("  printf(\"{name} %lld\\n\", (long long)({name}));\n"));
        expected.push_str(&format!("{name} {value}\n"));
    }
    program.push_str("  return 0;\n}\n");
    let scratch = Scratch::new();
    let source = scratch.file("layout.c", &program);
    let binary = scratch.0.path().join("layout");
    let compiled = std::process::Command::new("cc").arg(&source).arg("-o").arg(&binary).output().expect("running cc");
    assert!(compiled.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&compiled.stderr));
    let run = std::process::Command::new(&binary).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), expected, "sys.rs does not match the headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_events_reach_the_endpoint_as_nanomq_bodies() {
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    let config = Webhook::new(&endpoint.url()).all_events().write(&scratch, "mqhook.conf");
    let addr: SocketAddr = free_loopback_addr().parse().unwrap();
    let broker = Mosquitto::start(
        &scratch,
        "mosquitto.conf",
        &broker_conf(addr, &format!("allow_anonymous true\n{}", plugin_conf(&config, "10s"))),
        addr,
    )
    .await;

    let (mut subscriber, code) = Client::connect(
        addr,
        &Connect { version: 4, clientid: "sub-1", username: Some("bob"), keepalive: 30, authentication_method: None },
    )
    .await;
    assert_eq!(code, 0);
    subscriber.subscribe(1, &[("a/#", 1), ("b/+", 0)]).await;
    subscriber.unsubscribe(2, &["b/+"]).await;
    broker.publish(&["-i", "pub-0", "-t", "a/q0", "-m", "zero", "-q", "0"]).await;
    broker.publish(&["-i", "pub-1", "-u", "alice", "-t", "a/q1", "-m", "one", "-q", "1"]).await;
    broker.publish(&["-i", "pub-2", "-u", "alice", "-t", "a/q2", "-m", "two", "-q", "2", "-r"]).await;
    for expected in ["a/q0", "a/q1", "a/q2"] {
        assert_eq!(subscriber.next_publish().await.0, expected, "the broker still delivers");
    }
    subscriber.disconnect().await;
    // Dropped: the TCP connection ends without DISCONNECT.
    let (dropped, _) = Client::connect(
        addr,
        &Connect { version: 5, clientid: "drop-1", username: None, keepalive: 20, authentication_method: None },
    )
    .await;
    drop(dropped);

    let connect = |id: &str, user: &str, keepalive: u16, proto: u8| {
        vec![
            format!(
                r#"{{"clientid":"{id}","username":"{user}","ipaddress":"127.0.0.1","keepalive":{keepalive},"proto_ver":{proto},"action":"client_connect"}}"#
            ),
            format!(
                r#"{{"proto_ver":{proto},"keepalive":{keepalive},"conn_ack":"success","username":"{user}","clientid":"{id}","action":"client_connack"}}"#
            ),
            format!(r#"{{"reason":"normal","username":"{user}","clientid":"{id}","action":"client_disconnected"}}"#),
        ]
    };
    let publish = |id: &str, user: &str, topic: &str, qos: u8, retain: bool, payload: &str| {
        [
            format!(
                r#"{{"ts":0,"topic":"{topic}","retain":{retain},"qos":{qos},"action":"message_publish","from_username":"{user}","from_client_id":"{id}","payload":"{payload}"}}"#
            ),
            format!(
                r#"{{"ts":0,"clientid":"sub-1","username":"bob","from_client_id":null,"from_username":"undefined","topic":"{topic}","qos":{qos},"retain":{retain},"action":"message_delivered","payload":"{payload}"}}"#
            ),
        ]
    };
    let mut expected: Vec<String> = [
        connect("sub-1", "bob", 30, 4),
        connect("pub-0", "undefined", 60, 4),
        connect("pub-1", "alice", 60, 4),
        connect("pub-2", "alice", 60, 4),
        connect("drop-1", "undefined", 20, 5),
    ]
    .concat();
    expected.extend(publish("pub-0", "undefined", "a/q0", 0, false, "zero"));
    expected.extend(publish("pub-1", "alice", "a/q1", 1, false, "one"));
    expected.extend(publish("pub-2", "alice", "a/q2", 2, true, "two"));
    for (action, topic, qos) in [("subscribe", "a/#", 1), ("subscribe", "b/+", 0), ("unsubscribe", "b/+", 0)] {
        expected.push(format!(
            r#"{{"clientid":"sub-1","username":"bob","topic":"{topic}","opts":{{"qos":{qos}}},"action":"client_{action}"}}"#
        ));
    }
    expected.sort();
    wait_until("every event reached the endpoint", async || endpoint.count() >= expected.len()).await;
    broker.stop(Duration::from_secs(10) + STOP_LIMIT).await;
    let mut bodies: Vec<String> = endpoint.recorded().iter().map(|r| without_ts(&r.body_text())).collect();
    bodies.sort();
    assert_eq!(bodies, expected);
}

/// The outcome of each probe against one broker: `(succeeded, printed)`.
async fn auth_probes(broker: &Mosquitto) -> Vec<(bool, String)> {
    let mut outcomes = Vec::new();
    let alice = ["-u", "alice", "-P", "secret"];
    let probes: [(&str, Vec<&str>); 6] = [
        ("mosquitto_pub", vec!["-i", "p1", "-t", "open/x", "-m", "1", "-q", "1"]),
        ("mosquitto_pub", [&alice[..], &["-i", "p2", "-t", "open/x", "-m", "1", "-q", "1"]].concat()),
        ("mosquitto_pub", vec!["-i", "p3", "-u", "alice", "-P", "wrong", "-t", "open/x", "-m", "1", "-q", "1"]),
        ("mosquitto_pub", [&alice[..], &["-V", "5", "-i", "p4", "-t", "closed/x", "-m", "1", "-q", "1"]].concat()),
        ("mosquitto_sub", [&alice[..], &["-V", "5", "-i", "s5", "-t", "closed/#", "-C", "1", "-W", "1"]].concat()),
        ("mosquitto_pub", [&alice[..], &["-i", "p6", "-t", "open/r", "-m", "kept", "-r", "-q", "1"]].concat()),
    ];
    for (program, args) in &probes {
        outcomes.push(broker.client(program, args, "").await);
    }
    // The retained message goes back out only if reading it is allowed.
    outcomes.push(
        broker
            .client("mosquitto_sub", &[&alice[..], &["-i", "s7", "-t", "open/r", "-C", "1", "-W", "2"]].concat(), "")
            .await,
    );
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_allows_and_refuses_the_same_with_and_without_the_plugin() {
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    let config = Webhook::new(&endpoint.url()).all_events().write(&scratch, "mqhook.conf");
    let passwords = scratch.file("passwords", "");
    let made = std::process::Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(&passwords)
        .args(["alice", "secret"])
        .output()
        .expect("running mosquitto_passwd");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let acl = scratch.file("acl", "pattern readwrite open/#\n");
    let setups = [
        ("no files", String::new()),
        ("a password file", format!("password_file {}\n", passwords.display())),
        ("an ACL file", format!("acl_file {}\n", acl.display())),
        ("both", format!("password_file {}\nacl_file {}\n", passwords.display(), acl.display())),
    ];
    let mut seen = Vec::new();
    for (index, (setup, files)) in setups.iter().enumerate() {
        let mut outcomes = Vec::new();
        for with_plugin in [false, true] {
            let addr: SocketAddr = free_loopback_addr().parse().unwrap();
            let plugin = if with_plugin { plugin_conf(&config, "5s") } else { String::new() };
            let conf = broker_conf(addr, &format!("allow_anonymous true\n{files}{plugin}"));
            let broker = Mosquitto::start(&scratch, &format!("m{index}-{with_plugin}.conf"), &conf, addr).await;
            outcomes.push(auth_probes(&broker).await);
            broker.stop(Duration::from_secs(5) + STOP_LIMIT).await;
        }
        assert_eq!(outcomes[0], outcomes[1], "with {setup}: without the plugin (left) and with it (right)");
        seen.push(outcomes.swap_remove(0));
    }
    // The files did change what the broker allows, so the comparison above compared something.
    assert!(seen[0][2].0, "no password file: a wrong password still connects");
    assert!(!seen[1][2].0, "a password file refuses a wrong password");
    assert_ne!(seen[0][3], seen[2][3], "an ACL file refuses closed/x");
    assert!(seen[2][6].1.contains("kept") && seen[0][6].1.contains("kept"));
    // And the plugin saw the clients: connects and publishes reached the endpoint.
    assert!(endpoint.recorded().iter().any(|r| r.body_text().contains(r#""action":"client_connect""#)));
}

/// `count` lines `p-0` … for `mosquitto_pub -l`.
fn payload_lines(count: usize) -> String {
    (0..count).map(|i| format!("p-{i}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sigterm_drains_every_accepted_event() {
    const COUNT: usize = 300;
    let endpoint = Endpoint::start(Behaviour { delay: Duration::from_millis(5), ..Behaviour::default() }).await;
    let scratch = Scratch::new();
    let config = Webhook::new(&endpoint.url()).publishes().with("  pool_size = 4").write(&scratch, "mqhook.conf");
    let addr: SocketAddr = free_loopback_addr().parse().unwrap();
    let conf = broker_conf(addr, &format!("allow_anonymous true\n{}", plugin_conf(&config, "20s")));
    let broker = Mosquitto::start(&scratch, "mosquitto.conf", &conf, addr).await;
    let (ok, printed) =
        broker.client("mosquitto_pub", &["-i", "c1", "-t", "t", "-q", "1", "-l"], &payload_lines(COUNT)).await;
    assert!(ok, "{printed}");
    // Every PUBACK is in, so every publish was accepted; most are still on their way.
    let took = broker.stop(Duration::from_secs(20) + STOP_LIMIT).await;
    check_at_least_once(&endpoint.recorded(), COUNT);
    assert!(took < Duration::from_secs(10), "the drain took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_outage_with_a_spool_loses_nothing_across_a_stop() {
    const COUNT: usize = 200;
    let endpoint = Endpoint::start(Behaviour::default()).await;
    endpoint.fail_with(Some(http::StatusCode::SERVICE_UNAVAILABLE));
    let scratch = Scratch::new();
    let spool = scratch.0.path().join("spool");
    let config = Webhook::new(&endpoint.url())
        .publishes()
        .with(&format!("  spool {{ dir = \"{}\" }}\n  retry {{ base = 50ms, cap = 200ms }}", spool.display()))
        .write(&scratch, "mqhook.conf");
    let addr: SocketAddr = free_loopback_addr().parse().unwrap();
    let conf = broker_conf(addr, &format!("allow_anonymous true\n{}", plugin_conf(&config, "1s")));
    let broker = Mosquitto::start(&scratch, "mosquitto.conf", &conf, addr).await;
    let (ok, printed) =
        broker.client("mosquitto_pub", &["-i", "c1", "-t", "t", "-q", "1", "-l"], &payload_lines(COUNT)).await;
    assert!(ok, "{printed}");
    let log = broker.log.clone();
    // The endpoint is down: the drain gives up after 1 s and leaves the requests in the spool.
    let took = broker.stop(Duration::from_secs(1) + STOP_LIMIT).await;
    assert!(log.text().contains("they stay in the spool"), "{}", log.text());
    assert!(took < Duration::from_secs(1) + STOP_LIMIT);

    // The endpoint comes back (a fresh server on the same address, so that it records only what
    // it answered 200), and the next start delivers what the spool kept.
    let at = endpoint.addr;
    drop(endpoint.stop().await);
    let endpoint = Endpoint::start_at(at, Behaviour::default()).await;
    let broker = Mosquitto::start(&scratch, "mosquitto.conf", &conf, addr).await;
    wait_until("the spooled events are delivered", async || endpoint.count() >= COUNT).await;
    broker.stop(Duration::from_secs(1) + STOP_LIMIT).await;
    check_at_least_once(&endpoint.recorded(), COUNT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_survives_a_hostile_guest_and_reloads_on_sighup() {
    let endpoint = Endpoint::start(Behaviour::default()).await;
    let scratch = Scratch::new();
    let hostile = Webhook::new(&endpoint.url())
        .publishes()
        .with(&format!("  guest {{ path = \"{HOSTILE_GUEST}\", timeout = 200ms, memory_limit = 16MiB, workers = 1 }}"));
    let config = hostile.write(&scratch, "mqhook.conf");
    let addr: SocketAddr = free_loopback_addr().parse().unwrap();
    let conf = broker_conf(addr, &format!("allow_anonymous true\n{}", plugin_conf(&config, "5s")));
    let broker = Mosquitto::start(&scratch, "mosquitto.conf", &conf, addr).await;
    for topic in ["hostile/loop", "hostile/alloc", "hostile/trap", "ok/1"] {
        broker.publish(&["-i", "c1", "-t", topic, "-m", "x", "-q", "1"]).await;
    }
    wait_until("ok/1 is delivered", async || endpoint.recorded().iter().any(|r| r.body_text() == "ok/1")).await;
    let bodies: Vec<String> = endpoint.recorded().iter().map(|r| r.body_text()).collect();
    assert_eq!(bodies, ["ok/1"]);

    // SIGHUP is mosquitto's reload; the plugin reloads its config with it: the built-in guest now.
    Webhook::new(&endpoint.url()).event("on_message_publish", Some("ok/#")).write(&scratch, "mqhook.conf");
    signal(&broker.child, "-HUP").await;
    broker.log.wait_for("Reloaded after mosquitto's reload").await;
    broker.publish(&["-i", "c1", "-t", "ok/2", "-m", "after", "-q", "1"]).await;
    wait_until("ok/2 is delivered", async || endpoint.count() == 2).await;
    assert!(endpoint.recorded()[1].body_text().contains(r#""topic":"ok/2""#));
    broker.stop(Duration::from_secs(5) + STOP_LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_refuses_to_start_on_a_bad_mqhook_config() {
    let scratch = Scratch::new();
    let config = Webhook::new("http://127.0.0.1:9")
        .publishes()
        .with("  body.encoding = \"base63\"")
        .write(&scratch, "mqhook.conf");
    let addr: SocketAddr = free_loopback_addr().parse().unwrap();
    let conf = broker_conf(addr, &format!("allow_anonymous true\n{}", plugin_conf(&config, "5s")));
    let mut broker = Mosquitto::spawn(&scratch, "mosquitto.conf", &conf, addr);
    let status = tokio::time::timeout(WAIT_LIMIT, broker.child.wait()).await.expect("mosquitto exits").unwrap();
    assert!(!status.success());
    let log = broker.log.clone();
    wait_until("the log is read to its end", async || log.text().contains("Error")).await;
    let text = log.text();
    let line = text.lines().find(|line| line.contains("mqhook: cannot start:")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("base63") && line.contains("mqhook.conf"), "{line}");
}

/// The `key=N` of the plugin's last `summary:` line in the broker's log.
fn summary(log: &str, key: &str) -> u64 {
    let line = log.lines().rev().find(|line| line.contains("summary:")).unwrap_or_else(|| panic!("no summary:\n{log}"));
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .1
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_never_waits_for_a_full_queue_and_counts_what_it_drops() {
    const COUNT: usize = 100;
    // 10 webhooks a second, and room for one event: nearly every publish finds the queue full.
    let endpoint = Endpoint::start(Behaviour { delay: Duration::from_millis(100), ..Behaviour::default() }).await;
    let scratch = Scratch::new();
    let config = Webhook::new(&endpoint.url())
        .publishes()
        .with("  queue_size = 1\n  pool_size = 1\n  guest { workers = 1 }")
        .write(&scratch, "mqhook.conf");
    let admin = free_loopback_addr();
    let addr: SocketAddr = free_loopback_addr().parse().unwrap();
    let conf =
        broker_conf(addr, &format!("allow_anonymous true\n{}plugin_opt_admin {admin}\n", plugin_conf(&config, "20s")));
    let broker = Mosquitto::start(&scratch, "mosquitto.conf", &conf, addr).await;
    // The queue-full warning is written while a callback runs; with `log_dest topic` mosquitto
    // publishes it to this subscriber, and ACL-checks that delivery: the plugin again, inside
    // its own callback.
    let (mut log_reader, _) = Client::connect(
        addr,
        &Connect { version: 4, clientid: "log-reader", username: None, keepalive: 60, authentication_method: None },
    )
    .await;
    log_reader.subscribe(1, &[("$SYS/broker/log/#", 0)]).await;
    let started = Instant::now();
    let (ok, printed) =
        broker.client("mosquitto_pub", &["-i", "c1", "-t", "t", "-q", "1", "-l"], &payload_lines(COUNT)).await;
    assert!(ok, "{printed}");
    // Waiting for room would have taken about COUNT × 100 ms.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(COUNT as u64 / 20), "the broker waited for the webhook: {took:?}");
    // The admin API (plugin_opt_admin) serves the runtime's counters while the broker runs.
    let rejected = crate::support::admin_metrics(&admin).await["rejected"].as_u64().unwrap();
    assert!(rejected > 0, "nothing was counted as rejected");
    broker.log.wait_for("The runtime queue is full").await;
    let log = broker.log.clone();
    broker.stop(Duration::from_secs(20) + STOP_LIMIT).await;
    let text = log.text();
    // Every publish is either delivered or counted as rejected: none is lost silently.
    assert_eq!(summary(&text, "delivered") + summary(&text, "rejected"), COUNT as u64, "{text}");
    assert_eq!(endpoint.count() as u64, summary(&text, "delivered"));
}

#[test]
fn mosquitto_plugin_options_are_checked() {
    use mqhook_mosquitto::options::{Options, OptionsError, DEFAULT_DRAIN_TIMEOUT};
    let parsed = Options::parse([("config", "/etc/mqhook.conf"), ("admin", "127.0.0.1:9090")]).unwrap();
    assert_eq!(parsed.config, Path::new("/etc/mqhook.conf"));
    assert_eq!(parsed.admin, Some("127.0.0.1:9090".parse().unwrap()));
    assert_eq!(parsed.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    let timeout = |value| Options::parse([("config", "c"), ("drain_timeout", value)]).map(|o| o.drain_timeout);
    assert_eq!(timeout("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(timeout("3s").unwrap(), Duration::from_secs(3));
    assert_eq!(timeout("7").unwrap(), Duration::from_secs(7));
    assert!(matches!(timeout("soon"), Err(OptionsError::Invalid { key: "drain_timeout", .. })));
    assert!(matches!(timeout("2h"), Err(OptionsError::Invalid { .. })));
    assert!(matches!(Options::parse([("admin", "127.0.0.1:1")]), Err(OptionsError::MissingConfig)));
    let unknown = Options::parse([("config", "c"), ("confg", "d")]).unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "unknown option `plugin_opt_confg` (accepted: plugin_opt_config, plugin_opt_admin, plugin_opt_drain_timeout, \
         plugin_opt_admin_token_file, plugin_opt_admin_read_token_file)"
    );
    let tokens = Options::parse([("config", "c"), ("admin_token_file", "/etc/mqhook/admin.token")]).unwrap();
    assert_eq!(tokens.admin_token_file.as_deref(), Some(Path::new("/etc/mqhook/admin.token")));
    assert!(matches!(
        Options::parse([("config", "c"), ("admin_read_token_file", " ")]),
        Err(OptionsError::Invalid { key: "admin_read_token_file", .. })
    ));
}

#[test]
fn mosquitto_auth_answers_follow_the_broker_setup() {
    use mqhook_mosquitto::auth::AuthSetup;
    use mqhook_mosquitto::sys::{MOSQ_ERR_PLUGIN_DEFER as DEFER, MOSQ_ERR_SUCCESS as ALLOW};
    let answers = |lines: &[(&str, &str)]| {
        let lines: Vec<(String, String)> = lines.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let setup = AuthSetup::from_lines(&lines, None);
        (setup.basic_auth(), setup.acl())
    };
    // Nothing after mqhook decides: it answers what the broker would with no check at all.
    assert_eq!(answers(&[("listener", "1883"), ("allow_anonymous", "true")]), (ALLOW, ALLOW));
    assert_eq!(answers(&[]), (ALLOW, ALLOW), "no listener: anonymous access is on by default");
    assert_eq!(answers(&[("listener", "1883")]), (DEFER, ALLOW), "a listener: anonymous access is off");
    // Something after it decides: it defers.
    assert_eq!(answers(&[("allow_anonymous", "true"), ("password_file", "/p")]), (DEFER, ALLOW));
    assert_eq!(answers(&[("allow_anonymous", "true"), ("acl_file", "/a")]), (ALLOW, DEFER));
    assert_eq!(answers(&[("allow_anonymous", "true"), ("plugin", "/other.so")]), (DEFER, DEFER));
    assert_eq!(answers(&[("per_listener_settings", "true"), ("allow_anonymous", "true")]), (DEFER, DEFER));
    assert_eq!(AuthSetup::UNKNOWN.basic_auth(), DEFER);
    assert_eq!(AuthSetup::UNKNOWN.acl(), DEFER);
}
