//! The MQTT client under the bridge: rumqttc's MQTT 5 or 3.1.1 client behind one small interface.
//!
//! - **Owns** the rumqttc client and its event loop (polled on a task of its own, as rumqttc
//!   asks: the loop must never wait on mqhook), the reconnect backoff, and the connection
//!   generation that keeps an acknowledgement from one connection off the next.
//! - **Receives** the broker's packets.
//! - **Hands on** [`Incoming`] items (connected, a message, subscription results, a lost
//!   connection, a fatal refusal) over a bounded channel, and sends acknowledgements
//!   ([`Client::ack`]) and subscriptions for the bridge.
//!
//! Every rumqttc type stays in this file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;
use tokio::sync::mpsc;

use crate::config::{BridgeConfig, BridgeUrl, MqttVersion};

/// The first wait before a reconnect; it doubles per failed try up to [`RECONNECT_CAP`].
pub const RECONNECT_BASE: Duration = Duration::from_millis(100);
/// The longest wait between two connection tries.
pub const RECONNECT_CAP: Duration = Duration::from_secs(10);
/// How long one connection try (TCP, TLS, CONNECT/CONNACK) may take.
const CONNECT_TIMEOUT_SECS: u64 = 10;
/// Room in the channel from the poll task; the broker's in-flight limit bounds QoS 1/2 messages.
const INCOMING_CHANNEL: usize = 256;

/// One message as the bridge sees it.
#[derive(Debug)]
pub struct Message {
    /// The topic it was published to.
    pub topic: Bytes,
    /// Its QoS as delivered: 0, 1 or 2.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// Redelivered (the DUP flag): the broker sent it before without an acknowledgement.
    pub dup: bool,
    /// The payload.
    pub payload: Bytes,
    /// MQTT 5 user properties, in order (none with 3.1.1).
    pub user_properties: Vec<(String, String)>,
    /// What [`Client::ack`] needs; `None` for QoS 0.
    pub ack: Option<AckHandle>,
}

/// What acknowledging one message takes: the packet (payload dropped) and its connection.
#[derive(Debug)]
pub struct AckHandle {
    packet: AckPacket,
    generation: u64,
}

#[derive(Debug)]
enum AckPacket {
    V4(rumqttc::Publish),
    V5(v5::mqttbytes::v5::Publish),
}

/// What became of an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// Queued for the broker.
    Queued,
    /// Its connection is gone; the broker sends the message again on the next one.
    Stale,
    /// The client's request channel is full: try again shortly (acknowledgements keep their order).
    Busy,
}

/// What the poll task hands on.
#[derive(Debug)]
pub enum Incoming {
    /// A CONNACK with success: the session is up (`session_present`: the broker kept it).
    Connected {
        /// The broker resumed the session.
        session_present: bool,
    },
    /// A PUBLISH (boxed: it is much larger than the other items).
    Message(Box<Message>),
    /// A SUBACK: for each filter, whether it was granted.
    Subscribed(Vec<bool>),
    /// The connection failed or was lost; the poll task tries again after a backoff.
    Lost {
        /// Why, for the log.
        error: String,
        /// Whether a connection had been up (`false`: a try to connect failed).
        was_connected: bool,
    },
    /// The broker refused the credentials or the protocol version: no point trying again.
    Refused(String),
}

/// The client half: acknowledgements and subscriptions.
pub struct Client {
    inner: ClientInner,
    /// Shared with the poll task: the number of the connection now up (or being set up).
    generation: Arc<Generation>,
}

enum ClientInner {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The connection generation, and the lock under which an acknowledgement is queued or the
/// generation moves on, so that no acknowledgement of one connection goes out on the next.
#[derive(Default)]
struct Generation {
    current: AtomicU64,
    switch: Mutex<()>,
}

/// Connects (in the background, retrying) and returns the client and the stream of incoming items;
/// the poll task ends when the receiver is dropped or after a fatal refusal.
pub fn start(
    config: &BridgeConfig,
    url: &BridgeUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> (Client, mpsc::Receiver<Incoming>, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel(INCOMING_CHANNEL);
    let generation = Arc::new(Generation::default());
    // Acknowledgements are bounded by the in-flight limit; subscriptions add a few.
    let capacity = usize::from(config.receive_maximum.get()) + 64;
    let transport = tls.map(|tls| rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
    let keepalive = Duration::from_secs(config.keepalive.as_secs());
    let password = config.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default();
    let (inner, task) = match config.protocol {
        MqttVersion::V5 => {
            let mut options = v5::MqttOptions::new(&config.client_id, &url.host, url.port);
            options
                .set_keep_alive(keepalive)
                .set_clean_start(config.clean_start)
                .set_manual_acks(true)
                .set_connection_timeout(CONNECT_TIMEOUT_SECS)
                .set_receive_maximum(Some(config.receive_maximum.get()))
                .set_max_packet_size(Some(u32::try_from(config.max_packet_size.get()).unwrap_or(u32::MAX)));
            let expiry = u32::try_from(config.session_expiry.as_secs()).unwrap_or(u32::MAX);
            options.set_session_expiry_interval((!config.clean_start).then_some(expiry));
            if let Some(username) = &config.username {
                options.set_credentials(username, &password);
            }
            if let Some(transport) = transport {
                options.set_transport(transport);
            }
            let (client, eventloop) = v5::AsyncClient::new(options, capacity);
            let task = tokio::spawn(poll(eventloop, sender, generation.clone()));
            (ClientInner::V5(client), task)
        }
        MqttVersion::V311 => {
            let mut options = rumqttc::MqttOptions::new(&config.client_id, &url.host, url.port);
            let max = usize::try_from(config.max_packet_size.get()).unwrap_or(usize::MAX);
            options
                .set_keep_alive(keepalive)
                .set_clean_session(config.clean_start)
                .set_manual_acks(true)
                .set_max_packet_size(max, max);
            if let Some(username) = &config.username {
                options.set_credentials(username, &password);
            }
            if let Some(transport) = transport {
                options.set_transport(transport);
            }
            let (client, eventloop) = rumqttc::AsyncClient::new(options, capacity);
            let task = tokio::spawn(poll(eventloop, sender, generation.clone()));
            (ClientInner::V4(client), task)
        }
    };
    (Client { inner, generation }, receiver, task)
}

// === impl Client ===

impl Client {
    /// Subscribes to `filters` at `qos` (one SUBSCRIBE; the answer comes as [`Incoming::Subscribed`]).
    pub async fn subscribe(&self, filters: &[String], qos: u8) {
        let sent = match &self.inner {
            ClientInner::V4(client) => {
                let qos = rumqttc::qos(qos).unwrap_or(rumqttc::QoS::AtLeastOnce);
                let filters = filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos));
                client.subscribe_many(filters).await.map_err(|e| e.to_string())
            }
            ClientInner::V5(client) => {
                let qos = v5::mqttbytes::qos(qos).unwrap_or(v5::mqttbytes::QoS::AtLeastOnce);
                let filters = filters.iter().map(|f| v5::mqttbytes::v5::Filter::new(f.clone(), qos));
                client.subscribe_many(filters).await.map_err(|e| e.to_string())
            }
        };
        if let Err(error) = sent {
            tracing::error!("Cannot subscribe: {error}.");
        }
    }

    /// Acknowledges one message (PUBACK for QoS 1, PUBREC for QoS 2), unless the connection it
    /// came on is gone: then the broker sends it again on the next one, and this is a no-op.
    pub fn ack(&self, handle: &AckHandle) -> Acked {
        let _switch = self.generation.switch.lock().unwrap_or_else(PoisonError::into_inner);
        if self.generation.current.load(Ordering::Acquire) != handle.generation {
            return Acked::Stale;
        }
        let full = match (&self.inner, &handle.packet) {
            (ClientInner::V4(client), AckPacket::V4(publish)) => client.try_ack(publish).is_err(),
            (ClientInner::V5(client), AckPacket::V5(publish)) => client.try_ack(publish).is_err(),
            // One client speaks one version: a handle always matches its client.
            _ => unreachable!("an acknowledgement of another protocol version"),
        };
        // The request channel is full (the event loop is busy reading): try again shortly. A
        // closed one means the poll task is gone, and the run is ending.
        if full {
            Acked::Busy
        } else {
            Acked::Queued
        }
    }

    /// Sends DISCONNECT (with MQTT 5 the session is kept for its expiry interval).
    pub async fn disconnect(&self) {
        let _ = match &self.inner {
            ClientInner::V4(client) => client.disconnect().await.map_err(|e| e.to_string()),
            ClientInner::V5(client) => client.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

// === impl Generation ===

impl Generation {
    /// Moves on to the next connection: acknowledgements of the last one are dropped from here on;
    /// `clean` drops those already queued (rumqttc's `EventLoop::clean` drops queued PUBACKs).
    fn next(&self, clean: impl FnOnce()) {
        let _switch = self.switch.lock().unwrap_or_else(PoisonError::into_inner);
        self.current.fetch_add(1, Ordering::AcqRel);
        clean();
    }

    fn get(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }
}

/// The wait before reconnect try number `failures` (1 for the first): doubling, jittered into
/// its upper half, capped.
fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let wait = RECONNECT_BASE.saturating_mul(1 << exponent).min(RECONNECT_CAP);
    wait / 2 + wait.mul_f64(fastrand::f64() / 2.0)
}

/// What a failed poll means.
enum Failure {
    /// Retry after a backoff.
    Transient(String),
    /// Stop: the broker refused who we are or how we speak.
    Fatal(String),
}

/// What one poll of an event loop gave.
enum Polled {
    /// The broker accepted the connection.
    Connected { session_present: bool },
    /// Something to hand on.
    Item(Incoming),
    /// Nothing the bridge needs (pings, acks of its own packets).
    Nothing,
    /// The connection failed or was refused.
    Failed(Failure),
}

/// rumqttc's two event loops, MQTT 5 and 3.1.1, as [`poll`] drives them.
trait EventLoop: Send {
    /// Polls once, and reads what came in.
    fn poll_once(&mut self, generation: &Generation) -> impl std::future::Future<Output = Polled> + Send;
    /// Drops the acknowledgements queued for the connection that was lost.
    fn clean(&mut self);
}

impl EventLoop for v5::EventLoop {
    async fn poll_once(&mut self, generation: &Generation) -> Polled {
        use v5::mqttbytes::v5::{ConnectReturnCode as Code, Packet, SubscribeReasonCode};
        match self.poll().await {
            Ok(v5::Event::Incoming(Packet::ConnAck(connack))) => {
                Polled::Connected { session_present: connack.session_present }
            }
            Ok(v5::Event::Incoming(Packet::Publish(publish))) => {
                let qos = publish.qos as u8;
                let user_properties =
                    publish.properties.as_ref().map(|p| p.user_properties.clone()).unwrap_or_default();
                let ack = (qos > 0).then(|| AckHandle {
                    packet: AckPacket::V5(v5::mqttbytes::v5::Publish {
                        payload: Bytes::new(),
                        properties: None,
                        topic: Bytes::new(),
                        ..publish.clone()
                    }),
                    generation: generation.get(),
                });
                Polled::Item(Incoming::Message(Box::new(Message {
                    topic: publish.topic,
                    qos,
                    retain: publish.retain,
                    dup: publish.dup,
                    payload: publish.payload,
                    user_properties,
                    ack,
                })))
            }
            Ok(v5::Event::Incoming(Packet::SubAck(suback))) => Polled::Item(Incoming::Subscribed(
                suback.return_codes.iter().map(|code| matches!(code, SubscribeReasonCode::Success(_))).collect(),
            )),
            Ok(_) => Polled::Nothing,
            Err(error) => Polled::Failed(match &error {
                v5::ConnectionError::ConnectionRefused(
                    code @ (Code::BadUserNamePassword
                    | Code::NotAuthorized
                    | Code::Banned
                    | Code::BadAuthenticationMethod
                    | Code::RefusedProtocolVersion
                    | Code::UnsupportedProtocolVersion
                    | Code::ClientIdentifierNotValid
                    | Code::BadClientId),
                ) => Failure::Fatal(format!("the broker refused the connection: {code:?}")),
                other => Failure::Transient(other.to_string()),
            }),
        }
    }

    fn clean(&mut self) {
        v5::EventLoop::clean(self);
    }
}

impl EventLoop for rumqttc::EventLoop {
    async fn poll_once(&mut self, generation: &Generation) -> Polled {
        use rumqttc::{ConnectReturnCode as Code, Packet, SubscribeReasonCode};
        match self.poll().await {
            Ok(rumqttc::Event::Incoming(Packet::ConnAck(connack))) => {
                Polled::Connected { session_present: connack.session_present }
            }
            Ok(rumqttc::Event::Incoming(Packet::Publish(publish))) => {
                let qos = publish.qos as u8;
                let ack = (qos > 0).then(|| AckHandle {
                    packet: AckPacket::V4(rumqttc::Publish {
                        payload: Bytes::new(),
                        topic: String::new(),
                        ..publish.clone()
                    }),
                    generation: generation.get(),
                });
                Polled::Item(Incoming::Message(Box::new(Message {
                    topic: Bytes::from(publish.topic.into_bytes()),
                    qos,
                    retain: publish.retain,
                    dup: publish.dup,
                    payload: publish.payload,
                    user_properties: Vec::new(),
                    ack,
                })))
            }
            Ok(rumqttc::Event::Incoming(Packet::SubAck(suback))) => Polled::Item(Incoming::Subscribed(
                suback.return_codes.iter().map(|code| matches!(code, SubscribeReasonCode::Success(_))).collect(),
            )),
            Ok(_) => Polled::Nothing,
            Err(error) => Polled::Failed(match &error {
                rumqttc::ConnectionError::ConnectionRefused(
                    code @ (Code::BadUserNamePassword
                    | Code::NotAuthorized
                    | Code::RefusedProtocolVersion
                    | Code::BadClientId),
                ) => Failure::Fatal(format!("the broker refused the connection: {code:?}")),
                other => Failure::Transient(other.to_string()),
            }),
        }
    }

    fn clean(&mut self) {
        rumqttc::EventLoop::clean(self);
    }
}

/// Polls an event loop until the receiver goes away or the broker refuses for good.
async fn poll(mut eventloop: impl EventLoop, sender: mpsc::Sender<Incoming>, generation: Arc<Generation>) {
    let mut failures = 0u32;
    let mut connected = false;
    loop {
        let item = match eventloop.poll_once(&generation).await {
            Polled::Connected { session_present } => {
                failures = 0;
                connected = true;
                Incoming::Connected { session_present }
            }
            Polled::Item(item) => item,
            Polled::Nothing => continue,
            Polled::Failed(failure) => {
                generation.next(|| eventloop.clean());
                match lost(&sender, failure, &mut connected, &mut failures).await {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => return,
                }
                continue;
            }
        };
        if sender.send(item).await.is_err() {
            return;
        }
    }
}

/// Reports a failed poll; the wait before the next try, or `None` to stop.
async fn lost(
    sender: &mpsc::Sender<Incoming>,
    failure: Failure,
    connected: &mut bool,
    failures: &mut u32,
) -> Option<Duration> {
    let item = match failure {
        Failure::Fatal(reason) => {
            let _ = sender.send(Incoming::Refused(reason)).await;
            return None;
        }
        Failure::Transient(error) => Incoming::Lost { error, was_connected: std::mem::take(connected) },
    };
    sender.send(item).await.ok()?;
    *failures += 1;
    Some(backoff(*failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        for failures in 1..40 {
            let wait = backoff(failures);
            let full = RECONNECT_BASE.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(RECONNECT_CAP);
            assert!(wait >= full / 2 && wait <= full, "{failures}: {wait:?}");
        }
        assert!(backoff(30) >= RECONNECT_CAP / 2);
    }
}
