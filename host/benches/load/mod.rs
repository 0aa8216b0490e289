//! What the end-to-end benches share: raw MQTT 3.1.1 QoS 1 publishers, an HTTP endpoint that
//! records each webhook's publish-to-arrival time (each event of a batch too), and one round
//! through the embedded broker.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use mqhook::config::{Config, LiveConfig, Syntax};
use mqhook::delivery::http::HttpSink;
use mqhook::delivery::Sink;
use mqhook::ingest::broker::{Broker, BrokerConfig};
use mqhook::{GuestEngine, Runtime};

/// Longest a round waits for its webhooks.
const ROUND_LIMIT: Duration = Duration::from_secs(180);

/// What one round through the embedded broker measured.
pub struct Round {
    /// Seconds from the first publish to the last PUBACK.
    pub publishing: f64,
    /// Seconds from the first publish to the last webhook arrival.
    pub delivering: f64,
    /// Publish-to-arrival times (µs) of the webhooks that arrived, one per event.
    pub latencies: Vec<u64>,
    /// The runtime's counters at its end.
    #[allow(dead_code, reason = "each bench binary has this module; the mosquitto bench reads no counters")]
    pub totals: mqhook::MetricsSnapshot,
}

/// The 50th and 99th percentile of `latencies` (0 when there are none).
pub fn percentiles(latencies: &[u64]) -> (u64, u64) {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let at = |p: f64| sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))).copied();
    (at(0.50).unwrap_or(0), at(0.99).unwrap_or(0))
}

/// `publishers` × `messages` publishes through a fresh embedded broker and runtime whose config
/// (HOCON) `config` writes for the endpoint's address; the endpoint answers after `delay`.
/// Waits (bounded) for `expected` webhooks.
pub async fn embedded_round(
    config: impl Fn(SocketAddr) -> String,
    publishers: usize,
    messages: usize,
    delay: Duration,
    expected: usize,
) -> Round {
    let epoch = Instant::now();
    let (endpoint, arrivals) = serve(epoch, delay).await;
    let config = Config::parse(&config(endpoint), Path::new("bench.conf"), Syntax::Hocon).expect("bench config");
    let guest = GuestEngine::new().expect("engine").load(None, &config.guest, &config.filter).expect("built-in guest");
    let live = LiveConfig::new(config);
    let sink = Sink::Http(HttpSink::new(live.clone()).expect("sink"));
    let pipeline = Runtime::start(live, guest, sink).expect("runtime");
    let loopback = BrokerConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..BrokerConfig::default() };
    let broker = Broker::bind(loopback, pipeline.submitter()).await.expect("broker");
    let broker_addr = broker.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(broker.serve(async move {
        let _ = stopped.await;
    }));
    let (publishing, delivering) = drive(broker_addr, publishers, messages, epoch, &arrivals, expected).await;
    let _ = stop.send(());
    serving.await.expect("broker task").expect("broker");
    let totals = pipeline.shutdown().await;
    let latencies = arrivals.lock().unwrap().clone();
    Round { publishing, delivering, latencies, totals }
}

/// Publish-to-arrival times, in microseconds, one per webhook.
pub type Arrivals = Arc<Mutex<Vec<u64>>>;

/// Runs `publishers` clients of `messages` publishes each against `broker_addr` and waits
/// (bounded) for `expected` webhooks in `arrivals`. Returns the seconds from the first publish
/// to the last PUBACK, and to the last webhook (or the wait's end).
pub async fn drive(
    broker_addr: SocketAddr,
    publishers: usize,
    messages: usize,
    epoch: Instant,
    arrivals: &Arrivals,
    expected: usize,
) -> (f64, f64) {
    let started = Instant::now();
    let clients: Vec<_> =
        (0..publishers).map(|index| tokio::spawn(publish(broker_addr, index, messages, epoch))).collect();
    for client in clients {
        client.await.expect("publisher");
    }
    let publishing = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + ROUND_LIMIT;
    while arrivals.lock().unwrap().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (publishing, started.elapsed().as_secs_f64())
}

/// One MQTT 3.1.1 client publishing `messages` QoS 1 messages, each waiting for its PUBACK.
/// The payload is the publish time in µs since `epoch`.
pub async fn publish(broker: SocketAddr, index: usize, messages: usize, epoch: Instant) {
    publish_paced(broker, index, messages, epoch, None).await;
}

/// As [`publish`], one publish every `every` at most (a steady rate), or back to back with `None`.
pub async fn publish_paced(broker: SocketAddr, index: usize, messages: usize, epoch: Instant, every: Option<Duration>) {
    let mut ticks = every.map(|every| {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    let mut stream = TcpStream::connect(broker).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let clientid = format!("bench-{index}");
    let mut connect = Vec::new();
    put_string(&mut connect, "MQTT");
    connect.extend_from_slice(&[4, 0x02, 0, 60]);
    put_string(&mut connect, &clientid);
    stream.write_all(&packet(0x10, &connect)).await.expect("CONNECT");
    read_packet(&mut stream).await; // CONNACK
    for id in 1..=messages {
        if let Some(ticks) = &mut ticks {
            ticks.tick().await;
        }
        let packet_id = (id % 65535 + 1) as u16;
        let mut body = Vec::new();
        put_string(&mut body, &format!("bench/{index}"));
        body.extend_from_slice(&packet_id.to_be_bytes());
        body.extend_from_slice(epoch.elapsed().as_micros().to_string().as_bytes());
        stream.write_all(&packet(0x32, &body)).await.expect("PUBLISH");
        read_packet(&mut stream).await; // PUBACK
    }
    stream.write_all(&[0xe0, 0]).await.expect("DISCONNECT");
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![header];
    let mut length = body.len();
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        bytes.push(byte);
        if length == 0 {
            break;
        }
    }
    bytes.extend_from_slice(body);
    bytes
}

fn put_string(bytes: &mut Vec<u8>, text: &str) {
    bytes.extend_from_slice(&(text.len() as u16).to_be_bytes());
    bytes.extend_from_slice(text.as_bytes());
}

async fn read_packet(stream: &mut TcpStream) {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).await.expect("packet header");
    let mut rest = vec![0u8; usize::from(header[1])];
    stream.read_exact(&mut rest).await.expect("packet body");
}

/// Connections the endpoints of [`serve`] have accepted, all of them together.
pub static ACCEPTED: AtomicUsize = AtomicUsize::new(0);

/// A keep-alive HTTP/1.1 server on 127.0.0.1 recording each event's publish-to-arrival time: one
/// per body, or one per member of a batch (a JSON array, or NDJSON lines).
pub async fn serve(epoch: Instant, delay: Duration) -> (SocketAddr, Arrivals) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let arrivals: Arrivals = Arc::default();
    let recorded = arrivals.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let recorded = recorded.clone();
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        let now = epoch.elapsed().as_micros() as u64;
                        let sent = sent_at(&body);
                        recorded.lock().unwrap().extend(sent.into_iter().map(|sent| now.saturating_sub(sent)));
                        tokio::time::sleep(delay).await;
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, arrivals)
}

/// The publish times carried in the `payload` of a NanoMQ publish body, or of each body of a batch.
fn sent_at(body: &[u8]) -> Vec<u64> {
    let payload = |json: &serde_json::Value| json["payload"].as_str().and_then(|p| p.parse().ok());
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(members)) => members.iter().filter_map(payload).collect(),
        Ok(json) => payload(&json).into_iter().collect(),
        // NDJSON: one body a line.
        Err(_) => body
            .split(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice(line).ok())
            .filter_map(|json| payload(&json))
            .collect(),
    }
}
