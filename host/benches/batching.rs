//! Batching end to end through the embedded broker: MQTT publishers → rmqtt → wasm guest →
//! delivery (no batching, and `batch { max_events = 1 | 10 | 100 }`) → an in-process hyper
//! server, all on 127.0.0.1, side by side in one run. The baseline, run first: the same broker
//! and publishers with the webhook disabled (the broker alone), and with the webhook on but no
//! rule matching the publishes' topic (the broker and the guest's work per event, no HTTP at all:
//! the ceiling any batching can reach).
//!
//! Each setting runs against two endpoints: one that answers at once (loopback), and one that
//! answers after 1 ms, as an endpoint a little way off does, which caps one-request-per-event
//! delivery at `pool_size` / 1 ms = 32,000 events/s. Reports, per setting, publishes/s (what the
//! broker took), events/s (first publish → last webhook), requests per event, latency and loss
//! (which must be 0). Delivery is bound by the broker when events/s keeps up with publishes/s;
//! by HTTP when it falls behind (the queue grows and drains after the publishers are done).
//!
//! Run: `cargo bench -p mqhook --bench batching` (env `PUBLISHERS`, `MESSAGES` per publisher,
//! `ROUNDS` per setting, the median is shown).

use std::net::SocketAddr;
use std::time::Duration;

mod load;
use load::{embedded_round, Round};

/// The batch settings compared, beside no batching at all.
const BATCHES: [Option<usize>; 4] = [None, Some(1), Some(10), Some(100)];

/// The endpoints: one answering at once, one after 1 ms.
const DELAYS: [(&str, Duration); 2] =
    [("loopback endpoint", Duration::ZERO), ("endpoint answering in 1 ms", Duration::from_millis(1))];

/// One configuration of a round.
#[derive(Clone, Copy)]
enum Setting {
    /// The webhook disabled: the broker alone.
    Alone,
    /// The webhook on, no rule matching the topic: broker and guest, no HTTP.
    NoHttp,
    /// Every publish POSTed, to an endpoint answering after `delay`, batched by `batch`.
    Hooked { delay: Duration, batch: Option<usize> },
}

fn main() {
    let publishers = env_or("PUBLISHERS", 8);
    let messages = env_or("MESSAGES", 2000);
    let rounds = env_or("ROUNDS", 3).max(1);
    let sent = publishers * messages;
    let mut settings = vec![Setting::Alone, Setting::NoHttp];
    for (_, delay) in DELAYS {
        settings.extend(BATCHES.map(|batch| Setting::Hooked { delay, batch }));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        // Each round runs every setting once, so a noisy moment of the machine spreads over all.
        let mut results: Vec<Vec<Round>> = settings.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (setting, results) in settings.iter().zip(&mut results) {
                let round = match *setting {
                    Setting::Alone => {
                        embedded_round(|e| config(e, false, None), publishers, messages, Duration::ZERO, 0).await
                    }
                    Setting::NoHttp => {
                        let unmatched = |e| config(e, true, None).replace("bench/#", "elsewhere/#");
                        embedded_round(unmatched, publishers, messages, Duration::ZERO, 0).await
                    }
                    Setting::Hooked { delay, batch } => {
                        embedded_round(|e| config(e, true, batch), publishers, messages, delay, sent).await
                    }
                };
                results.push(round);
            }
        }
        let publish_rate = |results: &[Round]| median(results.iter().map(|r| sent as f64 / r.publishing).collect());
        let alone = publish_rate(&results[0]);
        let no_http = publish_rate(&results[1]);
        println!("publishers: {publishers}, messages each: {messages}, QoS 1, pool_size 32, {rounds} rounds (medians)");
        println!("broker alone (no webhook): {alone:.0} publishes/s");
        println!("broker + guest, no HTTP (no rule matches): {no_http:.0} publishes/s ({:.2} of alone)", no_http / alone);
        for (index, (endpoint, _)) in DELAYS.iter().enumerate() {
            println!("{endpoint}:");
            println!(
                "  {:<16} {:>12} {:>10} {:>10} {:>10} {:>13} {:>9} {:>9} {:>5}",
                "batch", "publishes/s", "of no-HTTP", "events/s", "of pub/s", "requests/evt", "p50 ms", "p99 ms", "loss"
            );
            let mut unbatched_rate = None;
            let first = 2 + index * BATCHES.len();
            for (batch, results) in BATCHES.iter().zip(&results[first..first + BATCHES.len()]) {
                let publishes = publish_rate(results);
                let events = median(results.iter().map(|r| r.latencies.len() as f64 / r.delivering).collect());
                // Latency and requests from the median round by delivery time.
                let mut by_time: Vec<&Round> = results.iter().collect();
                by_time.sort_by(|a, b| a.delivering.total_cmp(&b.delivering));
                let middle = by_time[by_time.len() / 2];
                let requests = match batch {
                    Some(_) => middle.totals.batches as f64 / middle.totals.delivered.max(1) as f64,
                    None => 1.0,
                };
                let (p50, p99) = load::percentiles(&middle.latencies);
                let lost = results.iter().map(|r| sent.saturating_sub(r.latencies.len())).max().unwrap_or(0);
                let name = batch.map_or("none".to_string(), |n| format!("max_events {n}"));
                let speedup = unbatched_rate.map_or(String::new(), |base: f64| format!("  ×{:.2}", events / base));
                unbatched_rate.get_or_insert(events);
                println!(
                    "  {name:<16} {publishes:>12.0} {:>10.2} {events:>10.0} {:>10.2} {requests:>13.3} {:>9.2} {:>9.2} {lost:>5}{speedup}",
                    publishes / no_http,
                    events / publishes,
                    p50 as f64 / 1000.0,
                    p99 as f64 / 1000.0,
                );
            }
        }
    });
}

/// The webhook block: every publish on `bench/#` to `endpoint` through a pool of 32, batched
/// by at most `batch` events (default bytes and linger) when given.
fn config(endpoint: SocketAddr, enabled: bool, batch: Option<usize>) -> String {
    let batch = batch.map_or(String::new(), |n| format!(" batch {{ max_events = {n} }}\n"));
    format!(
        "webhook {{\n enable = {enabled}\n url = \"http://{endpoint}/hook\"\n pool_size = 32\n{batch} events = [{{ event = \"on_message_publish\", topic = \"bench/#\" }}]\n}}\n"
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}
