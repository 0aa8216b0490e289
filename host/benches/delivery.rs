//! Delivery throughput: events pushed through the whole host (submit → guest → HTTP pool) to an
//! in-process hyper server, against a bare hyper client posting the same pre-built bodies with the
//! same concurrency, in the same run. Read the ratio: these machines are noisy.
//!
//! Run: `cargo bench -p mqhook --bench delivery` (env `EVENTS` sets the count, default 20000).

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
use mqhook::config::{Config, Syntax};
use mqhook::delivery::http::HttpSink;
use mqhook::delivery::Sink;
use mqhook::event::Message;
use mqhook::{Event, GuestModule, Runtime};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

const POOL_SIZE: usize = 32;
const ROUNDS: usize = 3;

fn main() {
    let events: usize = std::env::var("EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let (addr, received) = serve().await;
        let config = config(addr);
        let guest = GuestModule::load(None, &config).expect("built-in guest");
        let bodies = prebuilt_bodies(&guest, events);
        let mut host_rates = Vec::new();
        let mut bare_rates = Vec::new();
        for _ in 0..ROUNDS {
            host_rates.push(through_host(&config, &guest, events, &received).await);
            bare_rates.push(bare_client(addr, &bodies, &received).await);
        }
        let (host, bare) = (median(&mut host_rates), median(&mut bare_rates));
        println!("events: {events}, pool_size: {POOL_SIZE}, rounds: {ROUNDS} (medians)");
        println!("mqhook (submit → wasm guest → HTTP pool): {host:>10.0} events/s");
        println!("bare hyper client, pre-built bodies:      {bare:>10.0} events/s");
        println!("ratio mqhook / bare: {:.2}", host / bare);
    });
}

fn config(addr: SocketAddr) -> Config {
    let text = format!(
        "webhook {{\n url = \"http://{addr}/hook\"\n headers {{ content-type = \"application/json\" }}\n \
         pool_size = {POOL_SIZE}\n events = [{{ event = \"on_message_publish\" }}]\n}}\n"
    );
    Config::parse(&text, Path::new("bench.hcl"), Syntax::Hcl).expect("bench config")
}

fn publish(index: usize) -> Event {
    Event::MessagePublish(Message {
        ts: 1706703724960 + index as u64,
        topic: format!("sensors/{}/temp", index % 100),
        qos: 1,
        retain: false,
        from_clientid: Some(format!("sensor-{}", index % 1000)),
        from_username: Some("alice".into()),
        receiver: None,
        payload: format!("{{\"celsius\":{}.5,\"pad\":\"{}\"}}", index % 40, "x".repeat(64)).into_bytes(),
    })
}

/// The bodies the guest makes, computed once, for the bare client to post.
fn prebuilt_bodies(guest: &GuestModule, events: usize) -> Vec<Bytes> {
    let mut instance = guest.instance().expect("guest instance");
    (0..events)
        .map(|i| instance.handle(publish(i)).expect("guest call").expect("selected").body)
        .collect()
}

/// Events per second through the whole host: from the first submit to the end of the drain.
async fn through_host(config: &Config, guest: &GuestModule, events: usize, received: &AtomicU64) -> f64 {
    let module = guest.with_config(config).expect("guest config");
    let prepared: Vec<Event> = (0..events).map(publish).collect();
    let before = received.load(Ordering::SeqCst);
    let started = Instant::now();
    let pipeline = Runtime::start(config, module, Sink::Http(HttpSink::new(config).expect("http sink"))).expect("runtime");
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
async fn bare_client(addr: SocketAddr, bodies: &[Bytes], received: &AtomicU64) -> f64 {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(POOL_SIZE).build(connector);
    let permits = Arc::new(Semaphore::new(POOL_SIZE));
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
    let _all = permits.acquire_many(POOL_SIZE as u32).await.expect("semaphore");
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
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
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
