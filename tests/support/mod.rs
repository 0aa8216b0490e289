//! Shared test parts: a real HTTP endpoint, the real `mqhook` binary, config files on disk.

pub mod endpoint;
pub mod guests;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet};

use endpoint::Recorded;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use mqhook::config::{Config, LiveConfig, Syntax};
use mqhook::delivery::{http::HttpSink, Sink};
use mqhook::event::Message;
use mqhook::{GuestEngine, GuestModule, Runtime};
use tokio::io::AsyncWriteExt;

/// Longest any single run of the binary, or any wait for a condition, may take before the test
/// fails.
pub const WAIT_LIMIT: Duration = Duration::from_secs(180);

/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(20);

/// Waits, bounded by [`WAIT_LIMIT`], until `done` holds; fails the test naming `what` if it never
/// does. The only way tests wait for something to happen.
pub async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A test's webhook config: a HOCON `webhook { … }` block built up line by line.
#[derive(Clone)]
pub struct Webhook {
    lines: Vec<String>,
    events: Vec<String>,
}

impl Webhook {
    /// A block posting to `url`, with no rules yet.
    pub fn new(url: &str) -> Webhook {
        Webhook { lines: vec![format!("  url = \"{url}\"")], events: Vec::new() }
    }

    /// Adds a rule for `event` (a config name such as `on_message_publish`), optionally with a
    /// topic filter.
    pub fn event(mut self, event: &str, topic: Option<&str>) -> Webhook {
        self.events.push(match topic {
            Some(topic) => format!("    {{ event = \"{event}\", topic = \"{topic}\" }}"),
            None => format!("    {{ event = \"{event}\" }}"),
        });
        self
    }

    /// Adds a rule for publishes on every topic.
    pub fn publishes(self) -> Webhook {
        self.event("on_message_publish", None)
    }

    /// Adds a rule for each of the twelve event kinds.
    pub fn all_events(self) -> Webhook {
        mqhook::EventKind::ALL.iter().fold(self, |webhook, kind| webhook.event(&kind.config_name(), None))
    }

    /// Adds `text` (one or more lines) inside the block.
    pub fn with(mut self, text: &str) -> Webhook {
        self.lines.push(text.to_string());
        self
    }

    /// The config file's text.
    pub fn text(&self) -> String {
        format!("webhook {{\n{}\n  events = [\n{}\n  ]\n}}\n", self.lines.join("\n"), self.events.join("\n"))
    }

    /// Writes the config into `scratch` as `name`; returns its path.
    pub fn write(&self, scratch: &Scratch, name: &str) -> PathBuf {
        scratch.file(name, &self.text())
    }

    /// The checked config, as `mqhook` would load it.
    pub fn config(&self) -> Config {
        Config::parse(&self.text(), Path::new("test.conf"), Syntax::Hocon).expect("the test config loads")
    }
}

/// The engine the tests compile guests with: one per test process, as in `mqhook` itself.
pub fn engine() -> &'static GuestEngine {
    static ENGINE: OnceLock<GuestEngine> = OnceLock::new();
    ENGINE.get_or_init(|| GuestEngine::new().expect("a wasmtime engine"))
}

/// Loads the guest at `path` (the built-in one for `None`) configured by `config`.
pub fn load_guest(path: Option<&str>, config: &Config) -> Result<GuestModule, mqhook::GuestError> {
    engine().load(path.map(Path::new), &config.guest, &config.filter)
}

/// Starts the pipeline of `config` with `guest`, posting over HTTP. Must run inside tokio.
pub fn start_runtime(config: Config, guest: GuestModule) -> Runtime {
    let live = LiveConfig::new(config);
    let sink = Sink::Http(HttpSink::new(live.clone()).expect("an HTTP sink for the endpoint"));
    Runtime::start(live, guest, sink).expect("the runtime starts")
}

/// A publish on `topic`: QoS 0, not retained, no publisher, empty payload, `ts` 0; tests change
/// the fields they care about with `Message { …, ..message(topic) }`.
pub fn message(topic: &str) -> Message {
    Message {
        ts: 0,
        topic: topic.into(),
        qos: 0,
        retain: false,
        from_clientid: None,
        from_username: None,
        receiver: None,
        payload: Vec::new(),
    }
}

/// The misbehaving test guest (guest/hostile).
pub const HOSTILE_GUEST: &str = env!("MQHOOK_GUEST_HOSTILE");

/// The example guests (guest/payload-filter, guest/cloudevents, guest/router).
pub const PAYLOAD_FILTER_GUEST: &str = env!("MQHOOK_GUEST_PAYLOAD_FILTER");
pub const CLOUDEVENTS_GUEST: &str = env!("MQHOOK_GUEST_CLOUDEVENTS");
pub const ROUTER_GUEST: &str = env!("MQHOOK_GUEST_ROUTER");

/// A fresh directory for one test's files, removed when dropped.
pub struct Scratch(pub tempfile::TempDir);

impl Scratch {
    pub fn new() -> Scratch {
        Scratch(tempfile::tempdir().expect("creating a temp dir"))
    }

    /// Writes `name` with `text` and returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).expect("writing a test file");
        path
    }
}

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The `summary:` line's `key=value` pairs.
    pub fn summary(&self, key: &str) -> u64 {
        let line = self
            .stdout
            .lines()
            .find(|l| l.starts_with("summary:"))
            .unwrap_or_else(|| panic!("no summary line in stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr));
        line.split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no `{key}` in {line}"))
            .1
            .parse()
            .expect("a number")
    }
}

/// Starts `mqhook ARGS` with piped standard streams; it is killed if the test drops it.
pub fn spawn_mqhook(args: &[&str]) -> tokio::process::Child {
    mqhook_command(args).spawn().expect("starting mqhook")
}

/// `mqhook ARGS` with piped standard streams, logging at info, killed if the test drops it; for
/// a test that sets more (its environment) before it spawns.
pub fn mqhook_command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqhook"));
    command.args(args).env("RUST_LOG", "info").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.kill_on_drop(true);
    command
}

/// A child's stderr, collected as it is written, so that a test can wait for a log line.
#[derive(Clone)]
pub struct StderrLog(std::sync::Arc<Collected>);

#[derive(Default)]
struct Collected {
    text: std::sync::Mutex<String>,
    /// The pipe reached its end (the child closed it, or exited).
    ended: std::sync::atomic::AtomicBool,
}

impl StderrLog {
    /// Takes `child`'s piped stderr and collects it from now on.
    pub fn capture(child: &mut tokio::process::Child) -> StderrLog {
        use tokio::io::AsyncBufReadExt;
        let log = StderrLog(Default::default());
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let collected = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut text = collected.0.text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
            collected.0.ended.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        log
    }

    /// What was written so far.
    pub fn text(&self) -> String {
        self.0.text.lock().unwrap().clone()
    }

    /// Waits, bounded, until a line containing `part` was written.
    pub async fn wait_for(&self, part: &str) {
        wait_until(&format!("the log says {part:?}"), async || self.text().contains(part)).await;
    }

    /// Waits, bounded, until everything the child wrote is read: after it exited, the last lines
    /// may still be in the pipe.
    pub async fn wait_for_end(&self) {
        wait_until("the log is read to its end", async || self.0.ended.load(std::sync::atomic::Ordering::SeqCst)).await;
    }
}

/// Sends signal `name` (`-TERM`, `-INT`, …) to a running child.
pub async fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("still running").to_string();
    let status = tokio::process::Command::new("kill").args([name, &pid]).status().await.unwrap();
    assert!(status.success());
}

/// A process's peak resident memory (VmHWM), in KiB, from `/proc`.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM")
}

/// A process's resident memory now (VmRSS), in KiB, from `/proc`.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// One of the `… kB` fields of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let line = status.lines().find(|l| l.split(':').next() == Some(field)).unwrap_or_else(|| panic!("a {field} line"));
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).unwrap_or_else(|| panic!("{field} in KiB"))
}

/// A free loopback address: bound, then released for the process under test to take.
pub fn free_loopback_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}")
}

/// Waits, bounded, until something listens on `addr`.
pub async fn wait_for_listener(addr: &str) {
    wait_until(&format!("something listens on {addr}"), async || tokio::net::TcpStream::connect(addr).await.is_ok())
        .await;
}

/// Runs `mqhook ARGS` with `stdin` as standard input, bounded in time.
pub async fn mqhook(args: &[&str], stdin: &str) -> Run {
    finish_with_input(spawn_mqhook(args), stdin).await
}

/// Writes `stdin` to a child started with piped standard streams and waits, bounded in time, for
/// it to exit.
pub async fn finish_with_input(mut child: tokio::process::Child, stdin: &str) -> Run {
    let mut input = child.stdin.take().unwrap();
    let text = stdin.to_string();
    let writer = tokio::spawn(async move {
        let _ = input.write_all(text.as_bytes()).await;
    });
    let output = tokio::time::timeout(WAIT_LIMIT, child.wait_with_output())
        .await
        .expect("the program did not finish in time")
        .expect("waiting for the program");
    writer.await.unwrap();
    Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The NanoMQ fixture files shipped with the tests.
pub fn fixtures_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/nanomq"))
}

/// One request to the admin API's `/guest`; returns the status and the JSON body.
pub async fn admin(addr: &str, method: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    admin_request(addr, method, "/guest", body).await
}

/// The counters from the admin API's `GET /metrics.json`.
pub async fn admin_metrics(addr: &str) -> serde_json::Value {
    let (status, metrics) = admin_request(addr, "GET", "/metrics.json", Vec::new()).await;
    assert_eq!(status, 200, "{metrics}");
    metrics
}

/// One request to the admin API; returns the status and the JSON body.
pub async fn admin_request(addr: &str, method: &str, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let answer = admin_call(addr, method, path, None, body).await;
    (answer.status, serde_json::from_str(&answer.body).unwrap())
}

/// An admin API answer.
pub struct AdminAnswer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

/// One request to the admin API, with `token` as its bearer token if given.
pub async fn admin_call(addr: &str, method: &str, path: &str, token: Option<&str>, body: Vec<u8>) -> AdminAnswer {
    use http_body_util::{BodyExt, Full};
    let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let mut request = hyper::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Full::new(bytes::Bytes::from(body))).unwrap();
    let response =
        tokio::time::timeout(WAIT_LIMIT, client.request(request)).await.expect("the admin API answers").unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    AdminAnswer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

/// Where `scripts/test` installs the Python packages of `tests/requirements.txt`.
pub fn python_packages() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/python")).to_path_buf()
}

/// Runs the Python program `code` with the test requirements importable, `input` on its standard
/// input; returns its standard output. Fails with one line naming the fix when they are missing.
pub fn python(code: &str, input: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(code)
        .env("PYTHONPATH", python_packages())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the tests' Python packages are missing: run scripts/test (it installs tests/requirements.txt into {})",
        python_packages().display()
    );
    assert!(output.status.success(), "python failed: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// Parses a metrics exposition with the Python `prometheus_client` package's OpenMetrics parser
/// (strict: it refuses what Prometheus would refuse). Keys are `name{label="value",…}`, labels
/// sorted; histogram samples are included (`…_bucket{le="…"}`, `…_count`, `…_sum`).
pub fn parse_metrics(exposition: &str) -> BTreeMap<String, f64> {
    const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
samples = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
        samples[sample.name + ("{" + labels + "}" if labels else "")] = sample.value
print(json.dumps(samples))
"#;
    serde_json::from_str(&python(PARSE, exposition)).expect("the parser's JSON")
}

/// `count` NDJSON publishes (QoS 1, topic `t`) from `clients` clients in turn, with payloads
/// `p-0`, `p-1`, …
pub fn ndjson_publishes(count: usize, clients: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "{{\"event\":\"message_publish\",\"from_client_id\":\"c{}\",\"topic\":\"t\",\"qos\":1,\"payload\":\"p-{i}\",\"ts\":1}}\n",
                i % clients
            )
        })
        .collect()
}

/// The `i` of the `p-<i>` payload in a request's body.
pub fn payload_id(request: &Recorded) -> usize {
    let body = request.body_text();
    let start = body.find("\"payload\":\"p-").expect("a test payload") + "\"payload\":\"p-".len();
    body[start..].split('"').next().unwrap().parse().unwrap()
}

/// Each of `count` events (`p-0` … ) delivered at least once, and the same idempotency key on
/// every copy of one event and on no other. Returns how many requests were duplicates.
pub fn check_at_least_once(recorded: &[Recorded], count: usize) -> usize {
    let mut keys: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for request in recorded {
        let key = request.header("idempotency-key").expect("an idempotency key").to_string();
        keys.entry(payload_id(request)).or_default().insert(key);
    }
    let missing: Vec<usize> = (0..count).filter(|i| !keys.contains_key(i)).collect();
    assert!(missing.is_empty(), "{} events never arrived, e.g. {:?}", missing.len(), &missing[..missing.len().min(10)]);
    assert!(keys.values().all(|k| k.len() == 1), "one key per event, across retries and restarts");
    let distinct: BTreeSet<&String> = keys.values().flatten().collect();
    assert_eq!(distinct.len(), count, "no two events share a key");
    recorded.len() - count
}
