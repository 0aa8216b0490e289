//! The keep-alive connections to an endpoint: at most one per exchange in flight, the newest
//! reused first, each closed once unused for `pool_idle_timeout`.
//!
//! - **Receives** one HTTP/1.1 request at a time per caller, with its absolute URL (from
//!   [`HttpSink`](super::http::HttpSink)).
//! - **Owns** the idle connections and the connector that opens new ones (TCP, and TLS for
//!   `https://`).
//! - **Hands back** the answer's status and headers, its body read to the end (or up to a cap,
//!   and then the connection is closed instead of kept).
//!
//! It replaces hyper-util's pool for the footprint at everyday rates, in two ways:
//! - an exchange that finds no idle connection opens one and keeps it, where hyper-util races the
//!   connect against connections coming free and pools the loser too: a burst of n requests
//!   leaves at most n connections (hyper-util's grew to 18 under bursts of 8, ~47 KiB each);
//! - a connection's I/O is driven by the exchange that holds it, in that exchange's task, not by
//!   a task of its own: a request and its answer wake one task instead of handing off twice.
//!
//! An idle connection is not polled, so one the server closed is found closed when it is next
//! taken; an exchange that a closed connection did not send goes out on another one.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_service::Service;

type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Answer bodies are read up to this size, then the connection is dropped instead of reused.
const MAX_ANSWER_BODY: usize = 1 << 20;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// No connection could be opened (TCP, or the TLS handshake).
    #[error("could not connect")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A new connection closed before it could take the request.
    #[error("the connection closed before the request could be sent")]
    Closed,
    /// Writing the request or reading the answer failed.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// The endpoint's connections; clones share them.
#[derive(Clone)]
pub struct ConnectionPool {
    shared: Arc<Shared>,
}

struct Shared {
    connector: HttpsConnector<HttpConnector>,
    /// Idle connections, oldest first: taken from and returned to the end.
    idle: Mutex<Idle>,
    idle_timeout: Duration,
    max_idle: usize,
}

#[derive(Default)]
struct Idle {
    connections: Vec<IdleConnection>,
    /// Whether a task is closing connections as they time out.
    swept: bool,
}

struct IdleConnection {
    connection: Connection,
    origin: Origin,
    since: Instant,
}

/// Where a connection goes: a reload may change the URL, and a connection serves one origin.
#[derive(Clone, PartialEq, Eq)]
struct Origin {
    scheme: Option<Scheme>,
    authority: Option<Authority>,
}

impl Origin {
    fn of(uri: &Uri) -> Origin {
        Origin { scheme: uri.scheme().cloned(), authority: uri.authority().cloned() }
    }
}

/// One HTTP/1.1 connection: the handle requests go in by, and the state machine that does its
/// I/O, polled by whoever holds the connection.
struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    io: http1::Connection<Stream, Full<Bytes>>,
}

impl ConnectionPool {
    /// A pool that opens connections with `connector`, keeps at most `max_idle` of them unused,
    /// and closes one unused for `idle_timeout`.
    pub fn new(connector: HttpsConnector<HttpConnector>, max_idle: usize, idle_timeout: Duration) -> ConnectionPool {
        let idle = Mutex::new(Idle::default());
        ConnectionPool { shared: Arc::new(Shared { connector, idle, idle_timeout, max_idle }) }
    }

    /// Sends `request` (its URI absolute) over an idle connection to its origin, or a new one,
    /// and reads the answer's body to its end. Returns the answer's head.
    pub async fn send(&self, mut request: Request<Full<Bytes>>) -> Result<http::response::Parts, ExchangeError> {
        let url = request.uri().clone();
        let origin = Origin::of(&url);
        // HTTP/1.1 to an origin server names the path only (RFC 9112 §3.2.1); `Host` is set.
        *request.uri_mut() = origin_form(&url);
        // Each turn takes an idle connection away or ends: bounded by the pool's size.
        loop {
            let (mut connection, reused) = match self.take(&origin) {
                Some(connection) => (connection, true),
                None => (self.connect(&url).await?, false),
            };
            if !connection.ready().await {
                match reused {
                    true => continue,
                    false => return Err(ExchangeError::Closed),
                }
            }
            match connection.exchange(request).await {
                Ok((head, reusable)) => {
                    if reusable {
                        self.put(connection, origin);
                    }
                    return Ok(head);
                }
                Err(mut unsent) => match unsent.take_message() {
                    // The server closed it while it was idle, before the request went out.
                    Some(back) if reused => request = back,
                    _ => return Err(unsent.into_error().into()),
                },
            }
        }
    }

    async fn connect(&self, url: &Uri) -> Result<Connection, ExchangeError> {
        let stream = self.shared.connector.clone().call(url.clone()).await.map_err(ExchangeError::Connect)?;
        let (sender, io) = http1::Builder::new()
            // NanoMQ writes `Host`, `Content-Type`, `Content-Length`: so does mqhook, byte for byte.
            .title_case_headers(true)
            .handshake(stream)
            .await?;
        Ok(Connection { sender, io })
    }

    /// The newest idle connection to `origin`, if there is one.
    fn take(&self, origin: &Origin) -> Option<Connection> {
        let mut idle = self.shared.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let newest = idle.connections.last()?;
        if newest.since.elapsed() >= self.shared.idle_timeout {
            // The newest is past its time, so all are: the sweeper has not woken yet.
            idle.connections.clear();
        } else if newest.origin != *origin {
            // The URL changed on a reload: the old origin's connections will not be used again.
            idle.connections.retain(|idle| idle.origin == *origin);
        }
        idle.connections.pop().map(|idle| idle.connection)
    }

    /// Keeps `connection` for the next exchange, unless `max_idle` are kept already.
    fn put(&self, connection: Connection, origin: Origin) {
        let mut idle = self.shared.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.connections.len() >= self.shared.max_idle {
            return;
        }
        idle.connections.push(IdleConnection { connection, origin, since: Instant::now() });
        if !idle.swept {
            idle.swept = true;
            tokio::spawn(sweep(Arc::downgrade(&self.shared)));
        }
    }
}

/// Closes idle connections as they reach `idle_timeout`, waking once per oldest connection's
/// deadline; ends when none is left (the next `put` starts it again) or the pool is gone.
async fn sweep(shared: Weak<Shared>) {
    loop {
        let next = {
            let Some(shared) = shared.upgrade() else { return };
            let mut idle = shared.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let expired =
                idle.connections.partition_point(|idle| now.duration_since(idle.since) >= shared.idle_timeout);
            drop(idle.connections.drain(..expired));
            match idle.connections.first() {
                Some(oldest) => oldest.since + shared.idle_timeout,
                None => {
                    idle.swept = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

impl Connection {
    /// Waits until the connection can take a request; `false` when it has closed.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            // Polling the I/O notices a close, and tells the handle it wants a request.
            if Pin::new(&mut self.io).poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|ready| ready.is_ok())
        })
        .await
    }

    /// Sends `request` and reads the answer, driving the connection's I/O meanwhile. Returns the
    /// answer's head, and whether the connection may be reused.
    async fn exchange(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<(http::response::Parts, bool), hyper::client::conn::TrySendError<Request<Full<Bytes>>>> {
        let answer = self.sender.try_send_request(request);
        let mut answer = pin!(async move {
            let (head, body) = answer.await?.into_parts();
            let whole = Limited::new(body, MAX_ANSWER_BODY).collect().await.is_ok();
            Ok((head, whole))
        });
        let mut open = true;
        let io = &mut self.io;
        let (head, whole) = poll_fn(|cx| {
            // Once the I/O ends, the answer (or its error) is already on its way.
            if open && Pin::new(&mut *io).poll(cx).is_ready() {
                open = false;
            }
            answer.as_mut().poll(cx)
        })
        .await?;
        Ok((head, whole && open))
    }
}

/// `url`'s path and query alone.
fn origin_form(url: &Uri) -> Uri {
    let path = url.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}
