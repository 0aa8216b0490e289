//! The HTTP sink: one exchange with the endpoint over pooled HTTP/1.1 keep-alive connections
//! ([`ConnectionPool`]).
//!
//! Each request is built from the delivery settings in force ([`LiveConfig`]), so a reload's URL
//! and headers apply to the next request. The response status is read: 2xx is delivered, anything
//! else a failure; the response body is read (up to a cap) so the connection can be reused.
//! Whether and when to try again is [`retry`](super::retry)'s decision, not the sink's.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;

use super::error::DeliveryError;
use super::pool::ConnectionPool;
use super::request_builder::{self, Framing};
use super::tls;
use crate::config::{DeliveryConfig, LiveConfig};
use crate::request::Request;

/// Sends requests to the configured endpoint over a keep-alive pool.
#[derive(Clone)]
pub struct HttpSink {
    pool: ConnectionPool,
    live: LiveConfig,
    /// Which endpoint's settings it sends with ([`crate::config::Config::endpoint_delivery`]).
    slot: usize,
    timeout: Duration,
}

impl HttpSink {
    /// A client for the delivery settings in `live`: the pool, the timeout and TLS are fixed
    /// here; URL and headers are read for every request.
    pub fn new(live: LiveConfig) -> Result<Self, DeliveryError> {
        HttpSink::for_endpoint(live, 0)
    }

    /// As [`HttpSink::new`], for endpoint `slot` (`i + 1` for named endpoint `i`).
    pub fn for_endpoint(live: LiveConfig, slot: usize) -> Result<Self, DeliveryError> {
        let config = live.load();
        let delivery: &DeliveryConfig = config.endpoint_delivery(slot);
        match delivery.url.scheme_str() {
            Some("http") | Some("https") => {}
            other => return Err(DeliveryError::UnsupportedScheme(other.unwrap_or("").to_string())),
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        // http:// URLs stay plain; https:// ones (also after a reload) use these TLS settings.
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls::client_config(delivery.tls.as_ref())?)
            .https_or_http();
        let builder = match tls::server_name(delivery.tls.as_ref()) {
            Some(name) => builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name)),
            None => builder,
        };
        let connector = builder.enable_http1().wrap_connector(http);
        let pool = ConnectionPool::new(connector, delivery.pool.pool_size.get(), delivery.pool.idle_timeout);
        let timeout = delivery.timeout;
        drop(config);
        Ok(HttpSink { pool, live, slot, timeout })
    }

    /// Where `request` goes now, as a log line may show it (see [`request_builder::url_without_query`]).
    pub fn loggable_url(&self, request: &Request) -> String {
        request_builder::url_without_query(&self.live.load().endpoint_delivery(self.slot).url, request.path.as_deref())
    }

    /// One attempt: `Ok` only for a 2xx answer within `cancel_timeout`.
    pub async fn send(&self, request: &Request) -> Result<(), DeliveryError> {
        self.send_framed(request, Framing::Single).await
    }

    /// As [`HttpSink::send`], for a body framed as `framing` says (a batch).
    pub async fn send_framed(&self, request: &Request, framing: Framing<'_>) -> Result<(), DeliveryError> {
        match tokio::time::timeout(self.timeout, self.exchange(request, framing)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(DeliveryError::Timeout(self.timeout)),
        }
    }

    async fn exchange(&self, request: &Request, framing: Framing<'_>) -> Result<(), DeliveryError> {
        let http_request =
            request_builder::build_framed(self.live.load().endpoint_delivery(self.slot), request, framing);
        let answer = self.pool.send(http_request).await.map_err(|e| match tls_failure(&e) {
            Some(tls) => DeliveryError::Tls(tls),
            None => DeliveryError::Transport(error_chain(&e)),
        })?;
        let status = answer.status;
        let retry_after = answer
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| retry_after(value, std::time::SystemTime::now()));
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status { status, retry_after })
        }
    }
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date, which is read as the
/// time from `now` until then (zero when it has passed).
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// The TLS error behind a failed request, if that is why it failed. rustls reports through
/// `io::Error`s (nested, by hyper-rustls), whose `source` skips the error they wrap, so each
/// `io::Error` is opened by hand.
fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        let mut layer = current;
        loop {
            if let Some(tls) = layer.downcast_ref::<rustls::Error>() {
                return Some(tls.to_string());
            }
            match layer.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
                Some(inner) => layer = inner,
                None => break,
            }
        }
        cause = current.source();
    }
    None
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::{retry_after, HttpSink};
    use crate::config::{Config, LiveConfig, Syntax};
    use crate::event::EventKind;
    use crate::request::Request;

    fn sink(url: &str) -> HttpSink {
        let text = format!("webhook {{\n url = \"{url}\"\n events = [{{ event = \"on_message_publish\" }}]\n}}\n");
        let config = Config::parse(&text, std::path::Path::new("t.hcl"), Syntax::Hcl).expect("config");
        HttpSink::new(LiveConfig::new(config)).expect("sink")
    }

    fn request(body: &'static str) -> Request {
        Request {
            kind: EventKind::MessagePublish,
            body: body.into(),
            headers: Vec::new(),
            path: None,
            client: None,
            idempotency_key: None,
            received_at: None,
        }
    }

    /// A keep-alive HTTP/1.1 server on 127.0.0.1 answering 200 after a yield; counts the
    /// connections it accepts.
    async fn counting_endpoint() -> (String, Arc<AtomicUsize>) {
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let answer = hyper::service::service_fn(|_request| async {
                    tokio::task::yield_now().await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), answer));
            }
        });
        (url, accepted)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bursts_of_requests_open_no_more_connections_than_a_burst() {
        let (url, accepted) = counting_endpoint().await;
        let (sink, request) = (sink(&url), request("{}"));
        for _ in 0..200 {
            let burst = (0..4).map(|_| sink.send(&request));
            for sent in futures_util::future::join_all(burst).await {
                sent.expect("delivered");
            }
        }
        let connections = accepted.load(Ordering::SeqCst);
        assert!(connections <= 4, "bursts of 4 requests opened {connections} connections");
    }

    /// A server on 127.0.0.1 that answers one request per connection without saying it will
    /// close (no `Connection: close`), closes the connection when `close` hands it a socket (the
    /// client holds the connection idle by then), and then writes a byte to that socket.
    fn closing_endpoint(close: std::sync::mpsc::Receiver<std::os::unix::net::UnixStream>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap();
                        }
                    }
                    line.clear();
                }
                reader.read_exact(&mut vec![0; length]).unwrap();
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
                let Ok(mut closed) = close.recv() else { return };
                drop((reader, stream));
                if closed.write_all(&[1]).is_err() {
                    return;
                }
            }
        });
        url
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_used() {
        use tokio::io::AsyncReadExt;
        let (close, close_now) = std::sync::mpsc::channel();
        let sink = sink(&closing_endpoint(close_now));
        for round in 0..5 {
            sink.send(&request("{}")).await.unwrap_or_else(|e| panic!("request {round}: {e}"));
            // A new socket is read only once the runtime's poller reports it readable, which it
            // does after the close it learns of (sent before the byte) too.
            let (closed, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            closed.set_nonblocking(true).unwrap();
            let mut closed = tokio::net::UnixStream::from_std(closed).unwrap();
            close.send(theirs).unwrap();
            closed.read_exact(&mut [0]).await.expect("the server closed the connection");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO), "already past");
        assert_eq!(retry_after("soon", now), None);
    }
}
