//! Delivery throughput: events pushed through the whole host (submit → guest → HTTP pool) to an
//! in-process hyper server, against a bare hyper client posting the same pre-built bodies with the
//! same concurrency, in the same run. Read the ratio: these machines are noisy.
//!
//! Then a sweep over `pool_size` and payload size, both ways again, drawn as a chart (PNG) into
//! `benchmarks/delivery-throughput.png`.
//!
//! Run: `cargo bench -p mqhook --bench delivery` (env `EVENTS` sets the headline count, default
//! 20000; `SWEEP=0` skips the sweep and the chart).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mqhook::config::{Config, LiveConfig, Syntax};
use mqhook::delivery::http::HttpSink;
use mqhook::delivery::Sink;
use mqhook::event::Message;
use mqhook::{Event, GuestEngine, GuestModule, Runtime};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

const POOL_SIZE: usize = 32;
const ROUNDS: usize = 3;
/// The headline's payload: a small JSON reading, about 100 bytes.
const HEADLINE_PAYLOAD: usize = 100;
/// The sweep: every pool size against every payload size (bytes), with events per point.
const SWEEP_POOLS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
const SWEEP_PAYLOADS: [(usize, usize); 3] = [(100, 6000), (4096, 3000), (65536, 600)];

fn main() {
    let events: usize = std::env::var("EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let sweep = std::env::var("SWEEP").map_or(true, |v| v != "0");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let (addr, received) = serve().await;
        let first = config(addr, POOL_SIZE);
        let guest = GuestEngine::new().expect("engine").load(None, &first.guest, &first.filter).expect("built-in guest");
        let mut host_rates = Vec::new();
        let mut bare_rates = Vec::new();
        for _ in 0..ROUNDS {
            let (host, bare) = both_ways(addr, &guest, POOL_SIZE, HEADLINE_PAYLOAD, events, &received).await;
            host_rates.push(host);
            bare_rates.push(bare);
        }
        let (host, bare) = (median(&mut host_rates), median(&mut bare_rates));
        println!("events: {events}, pool_size: {POOL_SIZE}, rounds: {ROUNDS} (medians)");
        println!("mqhook (submit → wasm guest → HTTP pool): {host:>10.0} events/s");
        println!("bare hyper client, pre-built bodies:      {bare:>10.0} events/s");
        println!("ratio mqhook / bare: {:.2}", host / bare);
        if sweep {
            let mut lines = Vec::new();
            println!("\nsweep (one round per point):\n| payload | pool_size | mqhook events/s | bare events/s | ratio |\n|---|---|---|---|---|");
            for (payload, count) in SWEEP_PAYLOADS {
                let (mut host_line, mut bare_line) = (Vec::new(), Vec::new());
                for pool in SWEEP_POOLS {
                    let (host, bare) = both_ways(addr, &guest, pool, payload, count, &received).await;
                    println!("| {payload} B | {pool} | {host:.0} | {bare:.0} | {:.2} |", host / bare);
                    host_line.push((pool as f64, host));
                    bare_line.push((pool as f64, bare));
                }
                lines.push(chart::Line { label: format!("mqhook, {payload} B payload"), points: host_line, baseline: false });
                lines.push(chart::Line { label: format!("bare hyper, {payload} B payload"), points: bare_line, baseline: true });
            }
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benchmarks/delivery-throughput.png");
            match chart::draw(&path, &lines) {
                Ok(()) => println!("\nchart: {}", path.display()),
                Err(error) => println!("\nno chart: {error}"),
            }
        }
    });
}

/// One measurement of each: the whole host, then the bare client with the same bodies.
async fn both_ways(
    addr: SocketAddr,
    guest: &GuestModule,
    pool_size: usize,
    payload: usize,
    events: usize,
    received: &AtomicU64,
) -> (f64, f64) {
    let config = config(addr, pool_size);
    let bodies = prebuilt_bodies(guest, events, payload);
    let host = through_host(&config, guest, events, payload, received).await;
    let bare = bare_client(addr, &bodies, pool_size, received).await;
    (host, bare)
}

fn config(addr: SocketAddr, pool_size: usize) -> Config {
    let text = format!(
        "webhook {{\n url = \"http://{addr}/hook\"\n headers {{ content-type = \"application/json\" }}\n \
         pool_size = {pool_size}\n events = [{{ event = \"on_message_publish\" }}]\n}}\n"
    );
    Config::parse(&text, Path::new("bench.hcl"), Syntax::Hcl).expect("bench config")
}

/// A publish whose payload is JSON of about `payload` bytes.
fn publish(index: usize, payload: usize) -> Event {
    let reading = format!("{{\"celsius\":{}.5,\"pad\":\"\"}}", index % 40);
    let pad = "x".repeat(payload.saturating_sub(reading.len()));
    Event::MessagePublish(Message {
        ts: 1706703724960 + index as u64,
        topic: format!("sensors/{}/temp", index % 100),
        qos: 1,
        retain: false,
        from_clientid: Some(format!("sensor-{}", index % 1000)),
        from_username: Some("alice".into()),
        receiver: None,
        payload: format!("{{\"celsius\":{}.5,\"pad\":\"{pad}\"}}", index % 40).into_bytes(),
    })
}

/// The bodies the guest makes, computed once, for the bare client to post.
fn prebuilt_bodies(guest: &GuestModule, events: usize, payload: usize) -> Vec<Bytes> {
    let mut instance = guest.instance().expect("guest instance");
    (0..events)
        .map(|i| instance.handle_event(publish(i, payload)).expect("guest call").expect("selected").request.body)
        .collect()
}

/// Events per second through the whole host: from the first submit to the end of the drain.
async fn through_host(
    config: &Config,
    guest: &GuestModule,
    events: usize,
    payload: usize,
    received: &AtomicU64,
) -> f64 {
    let module = guest.with_config(&config.guest, &config.filter).expect("guest config");
    let prepared: Vec<Event> = (0..events).map(|i| publish(i, payload)).collect();
    let before = received.load(Ordering::SeqCst);
    let started = Instant::now();
    let live = LiveConfig::new(config.clone());
    let sink = Sink::Http(HttpSink::new(live.clone()).expect("http sink"));
    let pipeline = Runtime::start(live, module, sink).expect("runtime");
    let submitter = pipeline.submitter();
    let feeder = tokio::task::spawn_blocking(move || {
        for event in prepared {
            submitter.submit_blocking(event).expect("the runtime accepts");
        }
    });
    feeder.await.expect("feeder");
    let totals = pipeline.shutdown().await;
    let elapsed = started.elapsed();
    assert_eq!(totals.delivered, events as u64, "every event delivered: {totals}");
    assert_eq!(received.load(Ordering::SeqCst) - before, events as u64);
    events as f64 / elapsed.as_secs_f64()
}

/// Events per second for a bare hyper client with the same pool and concurrency.
async fn bare_client(addr: SocketAddr, bodies: &[Bytes], pool_size: usize, received: &AtomicU64) -> f64 {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(pool_size).build(connector);
    let permits = Arc::new(Semaphore::new(pool_size));
    let uri: http::Uri = format!("http://{addr}/hook").parse().expect("uri");
    let before = received.load(Ordering::SeqCst);
    let started = Instant::now();
    for body in bodies {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let request = Request::post(uri.clone())
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .expect("request");
        let client = client.clone();
        tokio::spawn(async move {
            let response = client.request(request).await.expect("bare request");
            let _ = response.into_body().collect().await;
            drop(permit);
        });
    }
    let _all = permits.acquire_many(pool_size as u32).await.expect("semaphore");
    let elapsed = started.elapsed();
    assert_eq!(received.load(Ordering::SeqCst) - before, bodies.len() as u64);
    bodies.len() as f64 / elapsed.as_secs_f64()
}

/// A keep-alive HTTP/1.1 server on 127.0.0.1 answering 200 at once; counts requests.
async fn serve() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let counter = counter.clone();
                    async move {
                        let _ = request.into_body().collect().await;
                        counter.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    // The server task ends with the process; the bench is bounded by its event count.
    (addr, received)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The sweep's chart: events/s against `pool_size` (log scale), one line per payload size and
/// sender; the bare client's lines are thin, mqhook's thick, same colour per payload.
mod chart {
    use std::path::Path;

    use plotters::prelude::*;
    use plotters::style::{register_font, FontStyle};

    /// One line of the chart.
    pub struct Line {
        pub label: String,
        pub points: Vec<(f64, f64)>,
        pub baseline: bool,
    }

    /// Fonts tried for the labels; plotters draws no text without one.
    const FONTS: [&str; 3] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ];

    pub fn draw(path: &Path, lines: &[Line]) -> Result<(), Box<dyn std::error::Error>> {
        let font = FONTS
            .iter()
            .find_map(|candidate| std::fs::read(candidate).ok())
            .ok_or("no DejaVu Sans font found (Debian: apt install fonts-dejavu-core)")?;
        register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
            .map_err(|_| "the font cannot be read")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let top = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(0.0, f64::max) * 1.1;
        let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Delivery throughput: mqhook (thick) vs a bare hyper client (thin)", ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d((1f64..64f64).log_scale(), 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("pool_size (requests in flight)")
            .y_desc("events/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(TRANSPARENT)
            .label_style(("sans-serif", 15))
            .draw()?;
        for (index, line) in lines.iter().enumerate() {
            let colour = Palette99::pick(index / 2).to_rgba();
            let width = if line.baseline { 1 } else { 3 };
            chart
                .draw_series(LineSeries::new(line.points.iter().copied(), colour.stroke_width(width)))?
                .label(line.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(width)));
            chart.draw_series(line.points.iter().map(|&point| Circle::new(point, 3, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    }
}
