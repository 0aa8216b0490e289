//! The same filter in three languages: the payload filter example as a Rust guest
//! (guest/payload-filter), a Python guest (guest/python, componentize-py) and a JavaScript guest
//! (guest/js, componentize-qjs), each a wasm component run by wasmtime as the runtime runs it,
//! side by side in one run (these machines are noisy: read the ratios, not the times).
//!
//! - `match/<size>/<language>`: a publish a rule selects whose JSON payload (100 B, 4 KiB) meets
//!   the condition: the payload parsed, NanoMQ's body written;
//! - `no_match/<language>`: a publish whose topic no rule matches (the guest is called and says no);
//! - `instance/<language>`: a new instance, as a worker makes one: store, instantiation, `configure`.
//!
//! Before the timings it prints what each guest's instances take: the component's size, its first
//! compile, and the memory an instance adds to the process (resident, averaged over 16).
//!
//! The Python and JavaScript guests are built by the tests' builder, with the toolchains
//! `scripts/test` installs. Run: `cargo bench -p mqhook --bench languages`.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use mqhook::config::{Config, Syntax};
use mqhook::{GuestEngine, GuestModule};

mod sample;
use sample::publish;

// The tests' builder of the Python and JavaScript guests, shared so that both build them alike.
#[path = "../../tests/support/guests.rs"]
#[allow(dead_code, reason = "the router builders are for the tests")]
mod guests;

/// The three guests, by language.
fn guests() -> [(&'static str, &'static str); 3] {
    [
        ("rust", env!("MQHOOK_GUEST_PAYLOAD_FILTER")),
        ("python", guests::python_payload_filter()),
        ("javascript", guests::js_payload_filter()),
    ]
}

/// The payload filter's config. The memory cap is raised from 64 MiB: componentize-py 0.25.1
/// leaks each returned body (guest/README.md), and criterion makes many calls on one instance.
fn config() -> Config {
    let text = "webhook {\n url = \"http://127.0.0.1:9\"\n \
                events = [{ event = \"on_message_publish\", topic = \"sensors/+/temp\" }]\n \
                guest {\n  memory_limit = \"2GiB\"\n  settings = { field = \"/temp\", op = \"gt\", value = \"30\" }\n }\n}\n";
    Config::parse(text, Path::new("bench.hcl"), Syntax::Hcl).expect("bench config")
}

/// A JSON payload of `size` bytes that meets the condition: `{"temp":31.5,"note":"aaa…"}`.
fn payload(size: usize) -> Vec<u8> {
    let head = br#"{"temp":31.5,"note":""#;
    let mut payload = head.to_vec();
    payload.extend((0..size - head.len() - 2).map(|i| b'a' + (i * 7 % 26) as u8));
    payload.extend(b"\"}");
    payload
}

/// The process's resident memory, bytes.
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("reading /proc/self/statm");
    let pages: usize = statm.split_whitespace().nth(1).and_then(|field| field.parse().ok()).expect("a page count");
    pages * 4096
}

/// Loads each guest (compiled once without the cache, to time it) and prints what it costs.
fn load(engine: &GuestEngine) -> Vec<(&'static str, GuestModule)> {
    let config = config();
    let mut uncached = config.guest.clone();
    uncached.cache_dir = None;
    guests()
        .into_iter()
        .map(|(language, path)| {
            let size = std::fs::metadata(path).expect("the guest is built").len();
            let started = Instant::now();
            let module = engine.load(Some(Path::new(path)), &uncached, &config.filter).expect("the guest loads");
            let compiled = started.elapsed();
            let before = resident();
            let instances: Vec<_> = (0..16).map(|_| module.instance().expect("an instance")).collect();
            let per_instance = (resident().saturating_sub(before)) / instances.len();
            println!(
                "{language}: component {:.1} MiB, first compile {compiled:.2?}, {:.1} MiB resident per instance",
                size as f64 / f64::from(1 << 20),
                per_instance as f64 / f64::from(1 << 20)
            );
            (language, module)
        })
        .collect()
}

fn languages(c: &mut Criterion) {
    let engine = GuestEngine::new().expect("engine");
    let modules = load(&engine);
    for size in [100, 4 << 10] {
        let mut group = c.benchmark_group(format!("match/{size}"));
        let event = publish("sensors/kitchen/temp", payload(size));
        for (language, module) in &modules {
            let mut instance = module.instance().expect("an instance");
            group.bench_function(*language, |b| {
                b.iter_batched(
                    || event.clone(),
                    |event| instance.handle_event(event).expect("guest call").expect("selected"),
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
    }
    let mut group = c.benchmark_group("no_match");
    let event = publish("sensors/kitchen/humidity", payload(100));
    for (language, module) in &modules {
        let mut instance = module.instance().expect("an instance");
        group.bench_function(*language, |b| {
            b.iter_batched(
                || event.clone(),
                |event| assert!(instance.handle_event(event).expect("guest call").is_none()),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    let mut group = c.benchmark_group("instance");
    group.sample_size(20);
    for (language, module) in &modules {
        group.bench_function(*language, |b| b.iter(|| module.instance().expect("an instance")));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = languages
}
criterion_main!(benches);
