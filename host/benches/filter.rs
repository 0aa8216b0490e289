//! Filter cost: one event through the real wasm guest vs the same logic compiled natively,
//! measured side by side in one run (these machines are noisy: read the ratio, not the times).
//!
//! - `match/<encoding>/<size>`: a publish a rule selects, payload of 100 B, 4 KiB, 64 KiB, one
//!   `handle` call per event;
//! - `batch64/<encoding>/<size>`: 64 such publishes in one `handle-batch` call (what a busy
//!   worker makes), against the native logic on the same 64 (read per event: divide by 64);
//! - `no_match/topic`: a publish whose topic no rule matches: the guest asked (it says no), and the
//!   host's own rule match at submit (`topic/host`), which is what the runtime does now;
//! - `no_match/kind`: an event kind no rule asks for, stopped by the host before the guest;
//! - `base62/<size>`: the encoder alone, native, against naive long division, to show the growth.
//!
//! Run: `cargo bench -p mqhook --bench filter`.

use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use mqhook::config::{Config, Syntax};
use mqhook::event::{Client, Disconnection};
use mqhook::guest::Batch;
use mqhook::{Event, GuestEngine};

mod sample;
use sample::publish as host_publish;

/// Events per `handle-batch` call in the batched benchmarks.
const BATCH: usize = 64;
use mqhook_guest_nanomq as native;

fn config(encoding: &str) -> Config {
    let text = format!(
        "webhook {{\n url = \"http://127.0.0.1:9\"\n body {{ encoding = \"{encoding}\" }}\n \
         events = [{{ event = \"on_message_publish\", topic = \"sensors/+/temp\" }}]\n}}\n"
    );
    Config::parse(&text, Path::new("bench.hcl"), Syntax::Hcl).expect("bench config")
}

fn payload(size: usize) -> Vec<u8> {
    // Printable ASCII, so plain stays plain; deterministic.
    (0..size).map(|i| b'a' + (i * 7 % 26) as u8).collect()
}

fn native_filter(encoding: native::PayloadEncoding) -> native::Filter {
    native::Filter::new(native::FilterConfig {
        rules: vec![native::Rule {
            event: native::EventKind::MessagePublish,
            topic: Some("sensors/+/temp".into()),
            endpoint: None,
        }],
        encoding,
        settings: Vec::new(),
        endpoints: Vec::new(),
    })
    .expect("native filter")
}

fn native_publish(topic: &str, payload: Vec<u8>) -> native::Event {
    native::Event::MessagePublish(native::Message {
        ts: 1706703724960,
        topic: topic.into(),
        qos: 1,
        retain: false,
        from_clientid: Some("sensor-1".into()),
        from_username: Some("alice".into()),
        receiver: None,
        payload,
    })
}

fn matching(c: &mut Criterion) {
    let encodings = [
        ("plain", native::PayloadEncoding::Plain),
        ("base64", native::PayloadEncoding::Base64),
        ("base62", native::PayloadEncoding::Base62),
    ];
    let plain = config("plain");
    let builtin = GuestEngine::new().expect("engine").load(None, &plain.guest, &plain.filter).expect("built-in guest");
    for (name, encoding) in encodings {
        let mut group = c.benchmark_group(format!("match/{name}"));
        let encoded = config(name);
        let module = builtin.with_config(&encoded.guest, &encoded.filter).expect("guest config");
        let mut instance = module.instance().expect("guest instance");
        let filter = native_filter(encoding);
        for size in [100, 4 << 10, 64 << 10] {
            if size == 64 << 10 && name == "base62" {
                group.sample_size(10);
            }
            group.throughput(Throughput::Bytes(size as u64));
            let host_event = host_publish("sensors/kitchen/temp", payload(size));
            let guest_event = native_publish("sensors/kitchen/temp", payload(size));
            group.bench_with_input(BenchmarkId::new("wasm", size), &size, |b, _| {
                b.iter_batched(
                    || host_event.clone(),
                    |event| instance.handle_event(event).expect("guest call").expect("selected"),
                    BatchSize::SmallInput,
                )
            });
            group.bench_with_input(BenchmarkId::new("native", size), &size, |b, _| {
                b.iter_batched(
                    || guest_event.clone(),
                    // Consumed, as the wasm call consumes its event: both drop it inside the timing.
                    |event| filter.handle(&{ event }).expect("selected"),
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
        let mut group = c.benchmark_group(format!("batch{BATCH}/{name}"));
        for size in [100, 4 << 10] {
            group.throughput(Throughput::Elements(BATCH as u64));
            let host_events: Vec<Event> =
                (0..BATCH).map(|_| host_publish("sensors/kitchen/temp", payload(size))).collect();
            let guest_events: Vec<native::Event> =
                (0..BATCH).map(|_| native_publish("sensors/kitchen/temp", payload(size))).collect();
            group.bench_with_input(BenchmarkId::new("wasm", size), &size, |b, _| {
                b.iter_batched(
                    || {
                        let mut batch = Batch::new();
                        host_events.iter().cloned().for_each(|event| batch.push(event));
                        batch
                    },
                    |batch| {
                        let answers = instance.handle_batch(&batch).expect("guest call");
                        assert!(answers.iter().all(|answer| matches!(answer, Ok(Some(_)))));
                    },
                    BatchSize::SmallInput,
                )
            });
            group.bench_with_input(BenchmarkId::new("native", size), &size, |b, _| {
                b.iter_batched(
                    || guest_events.clone(),
                    |events| {
                        for event in events {
                            filter.handle(&{ event }).expect("selected");
                        }
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
    }
}

fn non_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("no_match");
    let config = config("plain");
    let module = GuestEngine::new().expect("engine").load(None, &config.guest, &config.filter).expect("built-in guest");
    let mut instance = module.instance().expect("guest instance");
    let filter = native_filter(native::PayloadEncoding::Plain);
    let host_event = host_publish("sensors/kitchen/humidity", payload(100));
    let guest_event = native_publish("sensors/kitchen/humidity", payload(100));
    group.bench_function("topic/wasm", |b| {
        b.iter_batched(
            || host_event.clone(),
            |event| assert!(instance.handle_event(event).unwrap().is_none()),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("topic/native", |b| {
        b.iter_batched(
            || guest_event.clone(),
            |event| assert!(filter.handle(&{ event }).is_none()),
            BatchSize::SmallInput,
        )
    });
    // Kinds no rule asks for stop in the host, at submit: no queue, no guest call.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let live = mqhook::config::LiveConfig::new(config);
    let sink = mqhook::delivery::Sink::Print(mqhook::delivery::print::PrintSink::new(live.clone()));
    let pipeline = mqhook::Runtime::start(live, module, sink).unwrap();
    let submitter = pipeline.submitter();
    let disconnected = Event::ClientDisconnected(Disconnection {
        client: Client { clientid: "c".into(), username: None },
        reason: "normal".into(),
    });
    group.bench_function("kind/host", |b| {
        b.iter_batched(|| disconnected.clone(), |event| submitter.try_submit(event).unwrap(), BatchSize::SmallInput)
    });
    // A topic no rule matches stops in the host too, at submit, after the rule match.
    group.bench_function("topic/host", |b| {
        b.iter_batched(|| host_event.clone(), |event| submitter.try_submit(event).unwrap(), BatchSize::SmallInput)
    });
    group.finish();
    drop(submitter);
    runtime.block_on(pipeline.shutdown());
}

/// Long division by 62, the textbook method NanoMQ uses: O(n²).
fn naive_base62(payload: &[u8]) -> String {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let zeros = payload.iter().take_while(|&&b| b == 0).count();
    let mut number = payload[zeros..].to_vec();
    let mut digits = Vec::new();
    while !number.is_empty() {
        let mut remainder = 0u32;
        let mut quotient = Vec::with_capacity(number.len());
        for &byte in &number {
            let value = remainder * 256 + byte as u32;
            let digit = value / 62;
            remainder = value % 62;
            if !quotient.is_empty() || digit != 0 {
                quotient.push(digit as u8);
            }
        }
        digits.push(ALPHABET[remainder as usize]);
        number = quotient;
    }
    digits.extend(std::iter::repeat_n(b'0', zeros));
    digits.reverse();
    String::from_utf8(digits).unwrap()
}

fn base62_growth(c: &mut Criterion) {
    let mut group = c.benchmark_group("base62");
    group.sample_size(10);
    for size in [1 << 10, 4 << 10, 16 << 10, 64 << 10] {
        let data = payload(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("divide_and_conquer", size), &data, |b, data| {
            b.iter(|| native::encoding::base62(data))
        });
        if size <= 16 << 10 {
            assert_eq!(naive_base62(&data), native::encoding::base62(&data));
            group.bench_with_input(BenchmarkId::new("long_division", size), &data, |b, data| {
                b.iter(|| naive_base62(data))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, matching, non_matching, base62_growth);
criterion_main!(benches);
