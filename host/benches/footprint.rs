//! Footprint of the `mqhook` binary with the embedded broker and the default config: peak
//! resident memory (VmHWM) and CPU time (utime + stime from `/proc/<pid>/stat`) of the process
//! alone, idle, at a steady 2,000 publishes/s and saturated. The baseline, in the same run: the
//! same binary with the webhook disabled (`enable = false`: the broker takes the same publishes,
//! no rule selects them), so the CPU the webhook adds per event is the difference; and a bare
//! hyper client (this bench binary again, as a child process on tokio's default runtime, as mqhook
//! runs) that reads one byte per event from a TCP socket, paced here at the same rate, and posts a
//! publish body of the same size to the same endpoint for each: what the least webhook, one wake
//! on a socket and one HTTP exchange per event, costs on this machine; and the same child reading
//! the same bytes without posting, so that the exchange's own cost is the difference.
//!
//! Load: raw MQTT 3.1.1 publishers in this process (QoS 1, each waiting for its PUBACK), a
//! keep-alive HTTP server here too; only the child's CPU and memory are counted. "Cold" is the
//! first start with an empty `guest.cache_dir` (the built-in guest is compiled), "warm" every
//! later one (it is read from the cache).
//!
//! Run: `cargo bench -p mqhook --bench footprint` (env `RATE` publishes/s, default 2000;
//! `SECONDS` of steady load, default 10; `PUBLISHERS`, default 8; `MESSAGES` per publisher when
//! saturated, default 2000; `ROUNDS` of the broker alone and with the webhook, default 1, for
//! medians; `MQHOOK_BIN` to measure another build, an absolute path (cargo runs benches in
//! `host/`), e.g. `$PWD/target/dist/mqhook`; `GUEST_WORKERS` sets `guest.workers`, and the child
//! inherits `TOKIO_WORKER_THREADS`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

// The shared bench helpers; this bench uses the publishers and the endpoint, not the rounds.
#[allow(dead_code)]
mod load;
use load::{publish, publish_paced, serve, Arrivals, ACCEPTED};

/// Set to `<endpoint> <trigger> <requests> <post|read>`, this bench binary is the bare hyper
/// client (`read`: it only reads its triggers).
const BARE_CLIENT: &str = "FOOTPRINT_BARE_CLIENT";

/// USER_HZ: the unit of utime and stime in `/proc/<pid>/stat` (100 on every Linux architecture
/// with a stable ABI).
const TICKS_PER_SECOND: f64 = 100.0;

fn main() {
    if let Ok(args) = std::env::var(BARE_CLIENT) {
        return bare_client(&args);
    }
    let rate = env_or("RATE", 2000);
    let seconds = env_or("SECONDS", 10);
    let publishers = env_or("PUBLISHERS", 8);
    let messages = env_or("MESSAGES", 2000);
    let rounds = env_or("ROUNDS", 1).max(1);
    let binary =
        std::env::var_os("MQHOOK_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mqhook")), PathBuf::from);
    // Read whole into the page cache first: the kernel maps (faults around) only the pages it has
    // cached, so the file-backed part of the RSS would otherwise depend on what ran before.
    let size = std::fs::read(&binary).expect("reading the binary").len();
    println!("binary: {} ({:.1} MiB)", binary.display(), size as f64 / (1 << 20) as f64);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let load = Load { rate, steady: rate * seconds, publishers, saturated: messages };
        // Each round measures the baseline and then the webhook; the table shows the first round.
        let mut rounds_measured = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let baseline = measure(&binary, false, &load).await;
            rounds_measured.push((baseline, measure(&binary, true, &load).await));
        }
        let (baseline, hooked) = &rounds_measured[0];
        let bare = measure_bare_client(rate, rate * seconds, true).await;
        let triggers_alone = measure_bare_client(rate, rate * seconds, false).await;
        println!("| | broker alone (webhook disabled) | broker + webhook |\n|---|---|---|");
        let row = |name: &str, f: &dyn Fn(&Run) -> String| println!("| {name} | {} | {} |", f(baseline), f(hooked));
        let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
        row("peak RSS, idle, cold cache", &|r| mib(r.cold_idle.hwm));
        row("peak RSS, idle, warm cache", &|r| mib(r.idle.hwm));
        row("  of it anonymous / file", &|r| format!("{} / {}", mib(r.idle.anon), mib(r.idle.file)));
        row("threads, idle", &|r| r.idle.threads.to_string());
        row(&format!("peak RSS, {rate} publishes/s"), &|r| mib(r.steady.memory.hwm));
        row(&format!("RSS after {rate} publishes/s"), &|r| mib(r.steady.memory.rss));
        row("  of it anonymous / file", &|r| format!("{} / {}", mib(r.steady.memory.anon), mib(r.steady.memory.file)));
        row("peak RSS, saturated", &|r| mib(r.saturated.memory.hwm));
        row("threads, saturated", &|r| r.saturated.memory.threads.to_string());
        row(&format!("CPU per publish, {rate} publishes/s"), &|r| format!("{:.1} µs", r.steady.cpu_per_publish()));
        row("CPU per publish, saturated", &|r| format!("{:.1} µs", r.saturated.cpu_per_publish()));
        row(&format!("context switches per publish, {rate} publishes/s"), &|r| {
            format!("{:.1}", r.steady.switches_per_publish())
        });
        row("context switches per publish, saturated", &|r| format!("{:.1}", r.saturated.switches_per_publish()));
        row("publishes/s, saturated", &|r| format!("{:.0}", r.saturated.publishes as f64 / r.saturated.seconds));
        row("webhooks delivered (steady / saturated)", &|r| {
            format!("{} / {}", r.steady.delivered, r.saturated.delivered)
        });
        row("connections to the endpoint opened (steady / saturated)", &|r| {
            format!("{} / {}", r.steady.connections, r.saturated.connections)
        });
        for (name, base, with) in [
            (format!("{rate} publishes/s"), &baseline.steady, &hooked.steady),
            ("saturated".to_owned(), &baseline.saturated, &hooked.saturated),
        ] {
            println!(
                "CPU per delivered event, {name}: {:.1} µs in all, {:.1} µs of it the webhook's (over the baseline)",
                with.cpu_per_delivered(),
                webhook_share(base, with)
            );
        }
        assert_eq!(bare.delivered, bare.publishes, "the bare client's requests were all answered");
        let bare_per_request = bare.cpu_per_publish();
        let trigger_per_event = triggers_alone.cpu_per_publish();
        let exchange = bare_per_request - trigger_per_event;
        let added = webhook_share(&baseline.steady, &hooked.steady);
        println!(
            "bare hyper client at {rate}/s: {bare_per_request:.1} µs CPU per event read and posted \
             ({:.1} context switches each, {} connections opened after its first request), \
             {trigger_per_event:.1} µs per event only read ({:.1}): one HTTP exchange {exchange:.1} µs; \
             the webhook's share over the broker is {:.2} of a bare read and post, {:.2} of a bare \
             exchange",
            bare.switches_per_publish(),
            bare.connections,
            triggers_alone.switches_per_publish(),
            added / bare_per_request,
            added / exchange
        );
        if rounds > 1 {
            let each = |f: &dyn Fn(&Run, &Run) -> f64| -> String {
                let mut values: Vec<f64> = rounds_measured.iter().map(|(base, with)| f(base, with)).collect();
                let listed = values.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(" / ");
                values.sort_by(f64::total_cmp);
                format!("{:.1} ({listed})", values[values.len() / 2])
            };
            println!(
                "{rounds} rounds at {rate}/s, median (each round): peak RSS {} MiB; CPU per delivered event {} µs \
                 in all, {} µs of it the webhook's; {} connections",
                each(&|_, with| with.steady.memory.hwm as f64 / 1024.0),
                each(&|_, with| with.steady.cpu_per_delivered()),
                each(&|base, with| webhook_share(&base.steady, &with.steady)),
                each(&|_, with| with.steady.connections as f64),
            );
        }
        if rate == 2000 {
            // Issue 18's goals, for the webhook run in the table (10 MB is 10^6 bytes times ten).
            let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
            let verdict = |value: f64, goal: f64| {
                format!("{value:.2} of ≤ {goal} {}", if value <= goal { "met" } else { "NOT met" })
            };
            let per_event = hooked.steady.cpu_per_delivered();
            println!(
                "issue 18's goals: peak RSS idle (MB) {}; at 2000/s (MB) {}; saturated (MB) {}; CPU per delivered \
                 event at 2000/s (µs) {}",
                verdict(mb(hooked.idle.hwm), 10.0),
                verdict(mb(hooked.steady.memory.hwm), 10.0),
                verdict(mb(hooked.saturated.memory.hwm), 40.0),
                verdict(per_event, 35.0),
            );
        }
    });
}

/// The load of one measurement.
struct Load {
    /// Publishes per second in the steady phase.
    rate: usize,
    /// Publishes in the steady phase.
    steady: usize,
    publishers: usize,
    /// Publishes per publisher in the saturated phase.
    saturated: usize,
}

/// What one process measured.
struct Run {
    cold_idle: Memory,
    idle: Memory,
    steady: Phase,
    saturated: Phase,
}

/// The process's memory now (KiB), and its threads.
#[derive(Clone, Copy)]
struct Memory {
    hwm: u64,
    rss: u64,
    anon: u64,
    file: u64,
    threads: u64,
}

/// One load phase.
struct Phase {
    publishes: usize,
    delivered: usize,
    cpu_seconds: f64,
    /// Voluntary and involuntary context switches of the threads alive at both ends of the phase.
    switches: u64,
    seconds: f64,
    memory: Memory,
    /// Connections the endpoint accepted during the phase (the bare client opens its one before).
    connections: usize,
}

impl Phase {
    fn cpu_per_publish(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.publishes as f64
    }

    fn cpu_per_delivered(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.delivered.max(1) as f64
    }

    fn switches_per_publish(&self) -> f64 {
        self.switches as f64 / self.publishes as f64
    }
}

/// A phase's counters as they were at its start: the endpoint's arrivals and accepted
/// connections, and the measured process's CPU and context switches.
struct PhaseStart {
    arrived: usize,
    accepted: usize,
    cpu: f64,
    switches: HashMap<u64, u64>,
}

impl PhaseStart {
    fn now(pid: u32, arrivals: &Arrivals) -> PhaseStart {
        PhaseStart {
            arrived: arrivals.lock().unwrap().len(),
            accepted: ACCEPTED.load(Ordering::Relaxed),
            cpu: cpu_seconds(pid),
            switches: context_switches(pid),
        }
    }

    /// The phase since: `publishes` made in `seconds`, the rest read now.
    fn end(self, pid: u32, arrivals: &Arrivals, publishes: usize, seconds: f64) -> Phase {
        Phase {
            publishes,
            delivered: arrivals.lock().unwrap().len() - self.arrived,
            cpu_seconds: cpu_seconds(pid) - self.cpu,
            switches: switches_since(pid, &self.switches),
            seconds,
            memory: memory(pid),
            connections: ACCEPTED.load(Ordering::Relaxed) - self.accepted,
        }
    }
}

/// The CPU the webhook adds per delivered event (µs): the run with it, less the baseline's CPU
/// scaled to the same publishes.
fn webhook_share(base: &Phase, with: &Phase) -> f64 {
    (with.cpu_seconds - base.cpu_seconds * with.publishes as f64 / base.publishes as f64) * 1e6
        / with.delivered.max(1) as f64
}

/// Runs this bench binary as the bare hyper client against a fresh endpoint, and measures the
/// child's CPU from its first trigger to its last answer (or, when it does not `post`, to its
/// last trigger read).
async fn measure_bare_client(rate: usize, requests: usize, post: bool) -> Phase {
    let (endpoint, arrivals) = serve(Instant::now(), Duration::ZERO).await;
    let triggers = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
    let trigger = triggers.local_addr().expect("local addr");
    let mut child = Command::new(std::env::current_exe().expect("this bench's path"))
        .env(BARE_CLIENT, format!("{endpoint} {trigger} {requests} {}", if post { "post" } else { "read" }))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the bare client");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut next_line =
        move || tokio::task::block_in_place(|| lines.next().and_then(Result::ok)).expect("a line from the bare client");
    let (mut stream, _) = triggers.accept().await.expect("the bare client connects");
    assert_eq!(next_line(), "ready");
    let start = PhaseStart::now(child.id(), &arrivals);
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    for _ in 0..requests {
        pace.tick().await;
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"e").await.expect("triggering the bare client");
    }
    assert_eq!(next_line(), "done");
    // After its last answer ("done"), so every arrival is counted.
    let phase = start.end(child.id(), &arrivals, requests, started.elapsed().as_secs_f64());
    drop(child.stdin.take());
    child.wait().expect("the bare client's exit");
    phase
}

/// The bare client: hyper-util's pooled client on tokio's default runtime (mqhook's own), in a
/// task on its workers; one POST of a NanoMQ publish body for each byte read from the trigger
/// socket, after the last answer (`read`: none, the bytes are only read). Says `ready` after a
/// first request (connection made), `done` after `requests` more, and exits when its stdin closes.
fn bare_client(args: &str) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let mut args = args.split_whitespace();
    let mut arg = || args.next().expect("FOOTPRINT_BARE_CLIENT=<endpoint> <trigger> <requests> <post|read>");
    let (endpoint, trigger, requests): (SocketAddr, SocketAddr, usize) =
        (arg().parse().unwrap(), arg().parse().unwrap(), arg().parse().unwrap());
    let posts = arg() == "post";
    // The body the built-in guest writes for a load publish (its payload is a number: the
    // endpoint parses it as the send time).
    let body = Bytes::from_static(
        br#"{"ts":1706703724960,"topic":"bench/0","retain":false,"qos":1,"action":"message_publish","from_username":"undefined","from_client_id":"bench-0","payload":"0"}"#,
    );
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let task = runtime.spawn(async move {
        let mut trigger = tokio::net::TcpStream::connect(trigger).await.expect("connecting to the trigger");
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let uri: hyper::Uri = format!("http://{endpoint}/webhook").parse().unwrap();
        let post = || {
            let request = hyper::Request::post(uri.clone())
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))
                .unwrap();
            let client = client.clone();
            async move {
                let response = client.request(request).await.expect("the endpoint answers");
                http_body_util::BodyExt::collect(response.into_body()).await.expect("the answer's body");
            }
        };
        post().await;
        println!("ready");
        let (mut posted, mut bytes) = (0, [0u8; 64]);
        while posted < requests {
            let read = tokio::io::AsyncReadExt::read(&mut trigger, &mut bytes).await.expect("reading the trigger");
            assert_ne!(read, 0, "the trigger closed after {posted} of {requests} events");
            for _ in 0..read {
                if posts {
                    post().await;
                }
            }
            posted += read;
        }
        println!("done");
    });
    runtime.block_on(task).expect("the bare client's task");
    std::io::stdin().lines().for_each(drop);
}

/// Starts the binary twice with the same fresh home (so a cold, then a warm guest cache) and
/// loads the second.
async fn measure(binary: &Path, webhook: bool, load: &Load) -> Run {
    let home = tempfile::tempdir().expect("a temp dir");
    let epoch = Instant::now();
    let (endpoint, arrivals) = serve(epoch, Duration::ZERO).await;
    let config = home.path().join("nanomq.conf");
    // The default config but for the URL, and a rule that selects every publish of the load.
    let workers = std::env::var("GUEST_WORKERS").map_or_else(|_| String::new(), |n| format!("  guest.workers = {n}\n"));
    let text = format!(
        "webhook = {{\n  enable = {webhook}\n  url = \"http://{endpoint}/webhook\"\n{workers}  \
         events = [ {{ event = \"on_message_publish\", topic = \"bench/#\" }} ]\n}}\n"
    );
    std::fs::write(&config, text).expect("writing the config");
    let cold = Mqhook::start(binary, &config, home.path());
    let cold_idle = cold.settled();
    drop(cold);
    let mqhook = Mqhook::start(binary, &config, home.path());
    let idle = mqhook.settled();

    // For attaching a tracer or a profiler (e.g. `strace -c -f -p PID`) to the steady phase.
    eprintln!("mqhook pid {} (webhook {webhook}): steady load starts", mqhook.child.id());
    let interval = Duration::from_secs_f64(load.publishers as f64 / load.rate as f64);
    let each = load.steady / load.publishers;
    let steady = mqhook.phase(&arrivals, webhook, each * load.publishers, || {
        (0..load.publishers)
            .map(|index| tokio::spawn(publish_paced(mqhook.broker, index, each, epoch, Some(interval))))
            .collect()
    });
    let steady = steady.await;
    let saturated = mqhook.phase(&arrivals, webhook, load.saturated * load.publishers, || {
        (0..load.publishers)
            .map(|index| tokio::spawn(publish(mqhook.broker, load.publishers + index, load.saturated, epoch)))
            .collect()
    });
    let saturated = saturated.await;
    Run { cold_idle, idle, steady, saturated }
}

/// A running `mqhook run` with the embedded broker; killed on drop.
struct Mqhook {
    child: Child,
    broker: SocketAddr,
}

impl Mqhook {
    /// Starts it and waits until the broker listens (its log line says so).
    fn start(binary: &Path, config: &Path, home: &Path) -> Mqhook {
        let broker = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut child = Command::new(binary)
            .args(["run", "--config"])
            .arg(config)
            .args(["--listen", &broker.to_string()])
            .env("HOME", home)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting mqhook");
        let (ready, listening) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        // Keeps draining the log after the line, so that the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains("MQTT broker listening") {
                    let _ = ready.send(());
                }
            }
        });
        listening.recv_timeout(Duration::from_secs(120)).expect("mqhook did not start its broker within 2 minutes");
        Mqhook { child, broker }
    }

    /// The memory a second after start-up.
    fn settled(&self) -> Memory {
        std::thread::sleep(Duration::from_secs(1));
        memory(self.child.id())
    }

    /// Runs the publishers `spawn` starts and waits for their `publishes` to be delivered.
    async fn phase(
        &self,
        arrivals: &Arrivals,
        webhook: bool,
        publishes: usize,
        spawn: impl FnOnce() -> Vec<tokio::task::JoinHandle<()>>,
    ) -> Phase {
        let start = PhaseStart::now(self.child.id(), arrivals);
        let started = Instant::now();
        for publisher in spawn() {
            publisher.await.expect("publisher");
        }
        // The publishing rate's time; the CPU is read once the webhooks are in too.
        let seconds = started.elapsed().as_secs_f64();
        let expected = start.arrived + if webhook { publishes } else { 0 };
        let deadline = Instant::now() + Duration::from_secs(120);
        while arrivals.lock().unwrap().len() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.end(self.child.id(), arrivals, publishes, seconds)
    }
}

impl Drop for Mqhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    Memory {
        hwm: field("VmHWM:"),
        rss: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        threads: field("Threads:"),
    }
}

/// User and system CPU time of the whole process so far, its exited threads included.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("a stat line").1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / TICKS_PER_SECOND
}

/// Each thread's context switches so far (voluntary: it waited; involuntary: it was preempted),
/// from `/proc/<pid>/task/<tid>/status`: the wake-ups a hand-off between threads costs.
fn context_switches(pid: u32) -> HashMap<u64, u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task");
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let thread = task.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let count = status
                .lines()
                .filter(|line| line.contains("ctxt_switches:"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            Some((thread, count))
        })
        .collect()
}

/// Context switches since `before` ([`context_switches`]) of the threads alive now.
fn switches_since(pid: u32, before: &HashMap<u64, u64>) -> u64 {
    context_switches(pid).iter().map(|(thread, count)| count - before.get(thread).copied().unwrap_or(0)).sum()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("binding").local_addr().expect("address").port()
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}
