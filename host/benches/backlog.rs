//! Memory with a backlog: the `mqhook` binary with a spool, fed events against a dead endpoint
//! until every one is spooled, then its peak resident memory (VmHWM). The baseline, in the same
//! run: the same binary and config with a thousand events. Their ratio says how much a backlog of
//! a million costs in memory (it should cost disk, not memory).
//!
//! Run: `cargo bench -p mqhook --bench backlog` (env `EVENTS`, default 1000000).

use std::io::{BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BASELINE_EVENTS: usize = 1_000;

fn main() {
    let events: usize = std::env::var("EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let baseline = backlog(BASELINE_EVENTS);
    let measured = backlog(events);
    println!("| backlog | peak RSS | spool on disk | time to spool |\n|---|---|---|---|");
    for (count, run) in [(BASELINE_EVENTS, &baseline), (events, &measured)] {
        println!(
            "| {count} events | {:.1} MiB | {:.1} MiB | {:.1} s |",
            run.peak_kib as f64 / 1024.0,
            run.spool_bytes as f64 / (1 << 20) as f64,
            run.seconds
        );
    }
    println!(
        "peak RSS ratio, {events} / {BASELINE_EVENTS} events: {:.2}",
        measured.peak_kib as f64 / baseline.peak_kib as f64
    );
}

struct Backlog {
    peak_kib: u64,
    spool_bytes: u64,
    seconds: f64,
}

/// Runs the binary against a dead endpoint until `events` are spooled; measures, then kills it.
fn backlog(events: usize) -> Backlog {
    let dir = tempfile::tempdir().expect("temp dir");
    let dead = free_port();
    let admin = format!("127.0.0.1:{}", free_port());
    let spool = dir.path().join("spool");
    let config = dir.path().join("nanomq.conf");
    let text = format!(
        "webhook {{\n url = \"http://127.0.0.1:{dead}/\"\n queue_size = 1024\n retry {{ base = 100, cap = 1000 }}\n \
         spool {{ dir = \"{}\", max_size = \"16GiB\" }}\n events = [ {{ event = \"on_message_publish\" }} ]\n}}\n",
        spool.display()
    );
    std::fs::write(&config, text).expect("config");
    let input = dir.path().join("events.ndjson");
    let mut writer = BufWriter::new(std::fs::File::create(&input).expect("events file"));
    for i in 0..events {
        writeln!(
            writer,
            "{{\"event\":\"message_publish\",\"from_client_id\":\"c{}\",\"topic\":\"sensors/{}\",\"qos\":1,\"payload\":\"{{\\\"celsius\\\":{}.5}}\",\"ts\":1}}",
            i % 1000,
            i % 100,
            i % 40
        )
        .expect("writing events");
    }
    writer.flush().expect("writing events");
    drop(writer);

    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqhook"))
        .args(["run", "--ingest", &format!("ndjson:{}", input.display()), "--config"])
        .arg(&config)
        .args(["--admin", &admin])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting mqhook");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        assert!(Instant::now() < deadline, "{events} events were not spooled within 10 minutes");
        if spooled(&admin) == Some(events as u64) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak_kib = peak_rss_kib(child.id());
    let spool_bytes = dir_size(&spool);
    child.kill().expect("killing mqhook");
    child.wait().expect("reaping mqhook");
    Backlog { peak_kib, spool_bytes, seconds }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("binding").local_addr().expect("address").port()
}

/// `spooled` from the admin API's `GET /metrics.json`, if it answers.
fn spooled(admin: &str) -> Option<u64> {
    let mut stream = TcpStream::connect(admin).ok()?;
    stream.write_all(b"GET /metrics.json HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = response.split("\r\n\r\n").nth(1)?;
    serde_json::from_str::<serde_json::Value>(body).ok()?["spooled"].as_u64()
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("a number")
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map_or(0, |entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
}
