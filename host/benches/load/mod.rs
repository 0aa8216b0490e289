//! What the end-to-end benches share: raw MQTT 3.1.1 QoS 1 publishers and an HTTP endpoint that
//! records each webhook's publish-to-arrival time.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Publish-to-arrival times, in microseconds, one per webhook.
pub type Arrivals = Arc<Mutex<Vec<u64>>>;

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

/// A keep-alive HTTP/1.1 server on 127.0.0.1 recording each body's publish-to-arrival time.
pub async fn serve(epoch: Instant, delay: Duration) -> (SocketAddr, Arrivals) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let arrivals: Arrivals = Arc::default();
    let recorded = arrivals.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let recorded = recorded.clone();
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        let now = epoch.elapsed().as_micros() as u64;
                        if let Some(sent) = sent_at(&body) {
                            recorded.lock().unwrap().push(now.saturating_sub(sent));
                        }
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

/// The publish time carried in a NanoMQ publish body's `payload`.
fn sent_at(body: &[u8]) -> Option<u64> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    json["payload"].as_str()?.parse().ok()
}
