//! A real HTTP/1.1 server on 127.0.0.1 that records every request it receives.
//!
//! It answers each request with a configurable status after a configurable delay, and tracks how
//! many requests were in flight at once, so tests can check `pool_size` from the outside.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names (lower case, as hyper normalises them) and values, in wire order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn body_text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("a UTF-8 body")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// How the server answers.
#[derive(Clone)]
pub struct Behaviour {
    /// The status of every answer (after the first `fail_first`, which get it instead of 200).
    pub status: StatusCode,
    pub delay: Duration,
    /// When set, only this many first requests get `status`; every later one gets 200.
    pub fail_first: Option<usize>,
    /// A `Retry-After` (seconds) sent with non-2xx answers.
    pub retry_after: Option<u64>,
    /// Serve HTTPS with this server configuration instead of plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// A body larger than this many bytes gets 413 (Payload Too Large), whatever else is set.
    pub max_body: Option<usize>,
}

impl Behaviour {
    /// Answers the first `count` requests with `status`, every later one with 200.
    pub fn failing_first(count: usize, status: StatusCode) -> Behaviour {
        Behaviour { status, fail_first: Some(count), ..Behaviour::default() }
    }
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            status: StatusCode::OK,
            delay: Duration::ZERO,
            fail_first: None,
            retry_after: None,
            tls: None,
            max_body: None,
        }
    }
}

#[derive(Default)]
struct State {
    recorded: Mutex<Vec<Recorded>>,
    answered: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    connections: AtomicUsize,
    /// While set, every answer has this status (an outage that still answers).
    failing: Mutex<Option<StatusCode>>,
}

/// The running server; stopped when dropped.
pub struct Endpoint {
    pub addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    stop: watch::Sender<bool>,
}

impl Endpoint {
    /// Starts a server on a free loopback port.
    pub async fn start(behaviour: Behaviour) -> Endpoint {
        Endpoint::start_at("127.0.0.1:0".parse().unwrap(), behaviour).await
    }

    /// Starts a server on `addr` (a loopback address), e.g. where a stopped one listened.
    pub async fn start_at(addr: SocketAddr, behaviour: Behaviour) -> Endpoint {
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let (stop, mut stopped) = watch::channel(false);
        let tls = behaviour.tls.is_some();
        let server_state = state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = stopped.changed() => return,
                };
                server_state.connections.fetch_add(1, Ordering::SeqCst);
                let state = server_state.clone();
                let behaviour = behaviour.clone();
                let mut stop_conn = stopped.clone();
                tokio::spawn(async move {
                    let tls = behaviour.tls.clone();
                    let service = service_fn(move |request| handle(request, state.clone(), behaviour.clone()));
                    let http = hyper::server::conn::http1::Builder::new();
                    let connection = async move {
                        match tls {
                            // A failed handshake (an untrusted client, say) just ends the connection.
                            Some(config) => {
                                if let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                                    drop(http.serve_connection(TokioIo::new(stream), service).await);
                                }
                            }
                            None => drop(http.serve_connection(TokioIo::new(stream), service).await),
                        }
                    };
                    tokio::select! {
                        _ = connection => {}
                        _ = stop_conn.changed() => {}
                    }
                });
            }
        });
        Endpoint { addr, tls, state, stop }
    }

    /// `http://` or `https://`, as it serves, with its address.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.recorded.lock().unwrap().clone()
    }

    /// How many requests were recorded (cheaper than `recorded().len()` for long runs).
    pub fn count(&self) -> usize {
        self.state.recorded.lock().unwrap().len()
    }

    /// Stops listening and drops open connections (as a crashed server would); returns what it
    /// recorded.
    pub async fn stop(self) -> Vec<Recorded> {
        let _ = self.stop.send(true);
        // Connection tasks see the stop at their next poll; let them.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.recorded()
    }

    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests answered so far, whatever the answer.
    pub fn answered(&self) -> usize {
        self.state.answered.load(Ordering::SeqCst)
    }

    /// From now on answers every request with `status` (`None`: as its behaviour says again).
    pub fn fail_with(&self, status: Option<StatusCode>) {
        *self.state.failing.lock().unwrap() = status;
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn handle(
    request: Request<Incoming>,
    state: Arc<State>,
    behaviour: Behaviour,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let method = request.method().to_string();
    let path = request.uri().path_and_query().map_or("/".to_string(), |p| p.to_string());
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let body = request.into_body().collect().await?.to_bytes().to_vec();
    let too_large = behaviour.max_body.is_some_and(|max| body.len() > max);
    tokio::time::sleep(behaviour.delay).await;
    state.recorded.lock().unwrap().push(Recorded { method, path, headers, body });
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    let answered = state.answered.fetch_add(1, Ordering::SeqCst);
    let failing = *state.failing.lock().unwrap();
    let status = match (failing, behaviour.fail_first) {
        _ if too_large => StatusCode::PAYLOAD_TOO_LARGE,
        (Some(status), _) => status,
        (None, Some(failures)) if answered >= failures => StatusCode::OK,
        (None, _) => behaviour.status,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    *response.status_mut() = status;
    if let (false, Some(seconds)) = (status.is_success(), behaviour.retry_after) {
        response.headers_mut().insert(hyper::header::RETRY_AFTER, seconds.into());
    }
    Ok(response)
}
