//! The embedded MQTT broker: an rmqtt 0.24 server whose hooks feed mqhook's runtime.
//!
//! - **Owns** the broker: rmqtt's server context, one TCP listener (MQTT 3.1, 3.1.1 and 5.0), the
//!   hook handlers and the retained-message store. Every rmqtt type stays in this module.
//! - **Receives** rmqtt hook calls, made on rmqtt's own connection tasks.
//! - **Hands on** one [`Event`] per hook call (one per topic filter for the subscription hooks) to
//!   [`Submitter::submit`]. A hook whose event kind no rule selects builds no event at all (no
//!   payload is copied).
//!
//! # Where each event comes from
//! | event | rmqtt hook, `Type::…` | `Parameter::…` and what is read from it |
//! |---|---|---|
//! | `client_connect` | `ClientConnect` | `ClientConnect(&ConnectInfo)`: client id, username and peer address from its `Id`; keepalive and protocol level from the CONNECT |
//! | `client_connack` | `ClientConnack` | `ClientConnack(&ConnectInfo, &ConnectAckReason)`: the CONNACK return code (3.x) or reason code (5) |
//! | `client_connected` | `ClientConnected` | `ClientConnected(&Session)`: its CONNECT info and `connected_at` (ms) |
//! | `client_disconnected` | `ClientDisconnected` | `ClientDisconnected(&Session, Reason)`: see *Reasons* |
//! | `client_subscribe` | `ClientSubscribe` | `ClientSubscribe(&Session, &Subscribe)`: topic filter and options (QoS; MQTT 5 no-local, retain-as-published, retain handling) |
//! | `client_unsubscribe` | `ClientUnsubscribe` | `ClientUnsubscribe(&Session, &Unsubscribe)`: topic filter; UNSUBSCRIBE has no options, so `opts` are those of the subscription being removed (QoS 0 when there is none) |
//! | `session_subscribed` | `SessionSubscribed` | `SessionSubscribed(&Session, Subscribe)`: as `client_subscribe`, after ACL |
//! | `session_unsubscribed` | `SessionUnsubscribed` | `SessionUnsubscribed(&Session, Unsubscribe)`: topic filter |
//! | `session_terminated` | `SessionTerminated` | `SessionTerminated(&Session, Reason)`: see *Reasons* |
//! | `message_publish` | `MessagePublish` | `MessagePublish(_, From, &Publish)`: publisher id and username from `From` (for a last will, its owner); topic, QoS, retain flag, payload; `ts` is when rmqtt received it (ms) |
//! | `message_delivered` | `MessageDelivered` | `MessageDelivered(&Session, From, &Publish)`: the session is the receiver; QoS and retain flag as sent to it |
//! | `message_acked` | `MessageAcked` | `MessageAcked(&Session, From, &Publish)`: the receiver's PUBACK (QoS 1) or PUBCOMP (QoS 2) |
//!
//! `ipaddress` is the peer's IP address without the port, as EMQX 4 writes it.
//!
//! # Reasons
//! `client_disconnected` says `"normal"` when the client ended the connection with DISCONNECT
//! (MQTT 5: a reason code below 0x80) and `"abnormal"` otherwise: TCP closed without DISCONNECT,
//! keepalive timeout, protocol error, session taken over. `session_terminated` uses the same two
//! words and `"expired"` for a persistent session whose expiry interval ran out.
//!
//! # Queue full
//! When the runtime queue is full, the hook waits for room (`queues.when_full = block`, the
//! default). rmqtt runs a client's hooks on that client's own connection task, so only that
//! client waits: it stops reading from its socket, and MQTT flow control (QoS 1/2) and TCP slow
//! the publisher down, while other clients and the broker go on. Nothing waits on HTTP itself;
//! the queue drains as the guest workers and delivery make room. With `when_full = drop_new`
//! (or a bounded wait that runs out) the event is dropped instead: `submit` counts it (`rejected`
//! in the summary) and this module logs at `warn` how many were dropped, at most one line a
//! second (the first drop at once, later ones with the next drop a second on, the remainder when
//! the broker stops).
//!
//! # Retained messages
//! rmqtt 0.24's built-in store is a stub (`enable()` is false; `set` only logs "use the
//! rmqtt-retainer plugin"). The broker installs its own [`RetainStorage`]: rmqtt's in-memory topic
//! trie ([`DefaultRetainStorage`]) with retain switched on, which is what the `rmqtt-retainer`
//! plugin's `ram` backend does, without rmqtt's plugin machinery. A retained message is kept until
//! replaced or cleared (an empty retained publish) and is sent to later subscribers as rmqtt's
//! retain handling says; an MQTT 5 Message Expiry Interval is honoured, rmqtt's 5-minute listener
//! default for queued messages is not applied to retained ones. Nothing is persisted.
//!
//! # Refused connections
//! Upstream rmqtt 0.24 runs the `ClientConnack` hook only for accepted connections; the vendored
//! copy (`vendor/rmqtt`, see its README) also reports every CONNECT refused after it was parsed, so
//! a refusal arrives here as `client_connack` with a non-zero code (`"conn_ack":"fail"`). A
//! CONNECT that rmqtt's codec itself rejects (malformed, or MQTT 3.1.1's empty client id without a
//! clean session) has no parsed client to report and yields no event.
//!
//! # Stopping
//! [`Broker::serve`] returns once `shutdown` completes: the listener closes and the hooks stop
//! submitting. rmqtt never frees its server context (it refers to itself), so the hooks' `Submitter`
//! is revoked explicitly, also when a `Broker` or its `serve` future is dropped, rather than left
//! alive with the context. Clients still connected are not disconnected, and what they do
//! afterwards is not forwarded.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::Builder;
use rmqtt::retain::{DefaultRetainStorage, RetainStorage};
use rmqtt::server::MqttServer;
use rmqtt::session::Session;
use rmqtt::types::{
    ConnectAckReason, ConnectInfo, Disconnect, From as Origin, Id, Publish, Reason, Retain, SubscriptionOptions,
    TopicFilter, TopicName,
};

use crate::config::BrokerLimits;
use crate::event::{now_millis, Client, Connack, Connection, Disconnection, Event, EventKind, Message};
use crate::event::{SubscribeOptions, Subscription};
use crate::runtime::{SubmitError, Submitter};

/// The rmqtt hooks the broker forwards, one per event kind.
const FORWARDED_HOOKS: [Type; 12] = [
    Type::ClientConnect,
    Type::ClientConnack,
    Type::ClientConnected,
    Type::ClientDisconnected,
    Type::ClientSubscribe,
    Type::ClientUnsubscribe,
    Type::SessionSubscribed,
    Type::SessionUnsubscribed,
    Type::SessionTerminated,
    Type::MessagePublish,
    Type::MessageDelivered,
    Type::MessageAcked,
];

/// How often retained messages whose MQTT 5 expiry has passed are removed from memory.
const EXPIRED_RETAINED_SWEEP: Duration = Duration::from_secs(60);

/// Where the embedded broker listens, and its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerConfig {
    /// TCP address for MQTT clients; port 0 picks a free port (see [`Broker::local_addr`]).
    pub listen: SocketAddr,
    /// What one client or a crowd of them may take (`webhook.broker`).
    pub limits: BrokerLimits,
}

impl Default for BrokerConfig {
    /// `127.0.0.1:1883`, MQTT's port on loopback only, with the default limits.
    fn default() -> Self {
        BrokerConfig { listen: SocketAddr::from(([127, 0, 0, 1], 1883)), limits: BrokerLimits::default() }
    }
}

/// Why the broker could not start or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The listening socket could not be set up (address in use, no permission, …).
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// What the operating system said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// rmqtt's server loop failed.
    #[error("the MQTT broker failed: {0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// rmqtt's server loop ended without being asked to.
    #[error("the MQTT broker stopped by itself")]
    Stopped,
}

/// A bound broker, its hooks attached to a runtime; [`Broker::serve`] runs it.
pub struct Broker {
    server: MqttServer,
    local_addr: SocketAddr,
    retained: RetainedMessages,
    forwarding: ForwardingLease,
}

impl Broker {
    /// Binds the listener and attaches the hooks, which hand events to `submitter`. Must be called
    /// inside a tokio runtime, which then runs the broker.
    pub async fn bind(config: BrokerConfig, submitter: Submitter) -> Result<Broker, BrokerError> {
        let listen_error = |source: rmqtt::Error| BrokerError::Listen { addr: config.listen, source: source.into() };
        // SO_REUSEADDR, as tokio's own listeners do, so a restart does not wait out TIME_WAIT.
        let listener = Builder::new()
            .name("mqhook")
            .laddr(config.listen)
            .reuseaddr(Some(true))
            .max_packet_size(u32::try_from(config.limits.max_packet_size.get()).unwrap_or(u32::MAX))
            .max_connections(config.limits.max_connections.get())
            .max_inflight(config.limits.max_inflight)
            .handshake_timeout(config.limits.connect_timeout)
            .bind()
            .map_err(listen_error)?;
        let local_addr = listener.local_addr().map_err(listen_error)?;

        // rmqtt's CPU-load check refuses connections when the machine is busy; a webhook broker
        // should not depend on what else runs on the host.
        let context = ServerContext::new().busy_check_enable(false).build().await;
        let retained = RetainedMessages::default();
        *context.extends.retain_mut().await = Box::new(retained.clone());

        let forwarder = Arc::new(EventForwarder::new(submitter));
        let register = context.extends.hook_mgr().register();
        for hook in FORWARDED_HOOKS {
            register.add(hook, Box::new(ForwardingHook(forwarder.clone()))).await;
        }
        register.start().await;

        let server = MqttServer::new(context).listener_by_id(listener, local_addr.port()).build();
        Ok(Broker { server, local_addr, retained, forwarding: ForwardingLease(forwarder) })
    }

    /// The address the broker listens on (with the actual port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves MQTT clients until `shutdown` completes, then closes the listener and stops
    /// forwarding events (see the module doc).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), BrokerError> {
        let Broker { server, local_addr, retained, forwarding } = self;
        let outcome = {
            let mut running = std::pin::pin!(server.run());
            let mut shutdown = std::pin::pin!(shutdown);
            let mut sweep = tokio::time::interval(EXPIRED_RETAINED_SWEEP);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = &mut shutdown => break Ok(()),
                    ended = &mut running => break match ended {
                        Ok(()) => Err(BrokerError::Stopped),
                        Err(error) => Err(BrokerError::Failed(error.into())),
                    },
                    _ = sweep.tick() => {
                        retained.remove_expired().await;
                    }
                }
            }
            // `running` is dropped here: the listener closes.
        };
        drop(forwarding);
        tracing::info!(listen = %local_addr, "MQTT broker stopped.");
        outcome
    }
}

/// The hooks' hold on the runtime: dropping it revokes their `Submitter` (see the module doc).
struct ForwardingLease(Arc<EventForwarder>);

impl Drop for ForwardingLease {
    fn drop(&mut self) {
        self.0.revoke();
    }
}

/// What every hook handler shares: the revocable `Submitter`.
struct EventForwarder {
    /// `None` once revoked. Hooks only read it; the one write is the revocation.
    submitter: RwLock<Option<Submitter>>,
}

impl EventForwarder {
    fn new(submitter: Submitter) -> Self {
        EventForwarder { submitter: RwLock::new(Some(submitter)) }
    }

    /// Whether events of `kind` are forwarded now (see [`Submitter::admits`]).
    fn admits(&self, kind: EventKind) -> bool {
        let submitter = self.submitter.read().unwrap_or_else(PoisonError::into_inner);
        submitter.as_ref().is_some_and(|submitter| submitter.admits(kind))
    }

    /// Hands `event` to the runtime as `queues.when_full` says: by default waiting for room on
    /// this hook's connection task (see the module doc).
    async fn forward(&self, event: Event) {
        let submitter = self.submitter.read().unwrap_or_else(PoisonError::into_inner).clone();
        let Some(submitter) = submitter else { return };
        let outcome = submitter.submit(event).await;
        match outcome {
            Ok(()) => {}
            // Counted and logged by the submitter.
            Err(SubmitError::Full(_)) => {}
            Err(SubmitError::Closed(_)) => {
                let taken = self.submitter.write().unwrap_or_else(PoisonError::into_inner).take();
                if taken.is_some() {
                    tracing::error!("The runtime has shut down: broker events are no longer forwarded.");
                }
            }
        }
    }

    /// Stops forwarding for good.
    fn revoke(&self) {
        drop(self.submitter.write().unwrap_or_else(PoisonError::into_inner).take());
    }
}

/// The handler registered for each of [`FORWARDED_HOOKS`].
struct ForwardingHook(Arc<EventForwarder>);

// rmqtt's trait elides `Parameter`'s lifetime; naming it here would not match the trait.
#[allow(elided_lifetimes_in_paths)]
#[async_trait]
impl Handler for ForwardingHook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        if kind_of(param).is_some_and(|kind| self.0.admits(kind)) {
            if let Some(event) = event_from(param).await {
                self.0.forward(event).await;
            }
        }
        // Observe only: the chain goes on with whatever earlier handlers decided.
        (true, acc)
    }
}

/// The event kind a hook call becomes; `None` for hooks that are not forwarded.
fn kind_of(param: &Parameter<'_>) -> Option<EventKind> {
    Some(match param {
        Parameter::ClientConnect(..) => EventKind::ClientConnect,
        Parameter::ClientConnack(..) => EventKind::ClientConnack,
        Parameter::ClientConnected(..) => EventKind::ClientConnected,
        Parameter::ClientDisconnected(..) => EventKind::ClientDisconnected,
        Parameter::ClientSubscribe(..) => EventKind::ClientSubscribe,
        Parameter::ClientUnsubscribe(..) => EventKind::ClientUnsubscribe,
        Parameter::SessionSubscribed(..) => EventKind::SessionSubscribed,
        Parameter::SessionUnsubscribed(..) => EventKind::SessionUnsubscribed,
        Parameter::SessionTerminated(..) => EventKind::SessionTerminated,
        Parameter::MessagePublish(..) => EventKind::MessagePublish,
        Parameter::MessageDelivered(..) => EventKind::MessageDelivered,
        Parameter::MessageAcked(..) => EventKind::MessageAcked,
        _ => return None,
    })
}

/// The border: one hook call as an mqhook [`Event`]; `None` for hooks that are not forwarded.
async fn event_from(param: &Parameter<'_>) -> Option<Event> {
    Some(match param {
        Parameter::ClientConnect(info) => Event::ClientConnect(connection(info, now_millis())),
        Parameter::ClientConnack(info, reason) => Event::ClientConnack(Connack {
            client: client(info.id()),
            keepalive: info.keep_alive(),
            proto_ver: info.proto_ver(),
            reason_code: connack_code(reason),
        }),
        Parameter::ClientConnected(session) => {
            let info = match session.connect_info().await {
                Ok(info) => info,
                Err(error) => {
                    tracing::warn!(
                        clientid = %session.id.client_id,
                        "client_connected not forwarded: the session has no CONNECT info ({error})."
                    );
                    return None;
                }
            };
            let connected_at = session.connected_at().await.map_or_else(|_| now_millis(), epoch_millis);
            Event::ClientConnected(connection(&info, connected_at))
        }
        Parameter::ClientDisconnected(session, reason) => Event::ClientDisconnected(Disconnection {
            client: client(&session.id),
            reason: disconnect_reason(reason).to_string(),
        }),
        Parameter::ClientSubscribe(session, subscribe) => Event::ClientSubscribe(Subscription {
            client: client(&session.id),
            topic: subscribe.topic_filter.to_string(),
            opts: subscribe_options(&subscribe.opts),
        }),
        Parameter::ClientUnsubscribe(session, unsubscribe) => Event::ClientUnsubscribe(Subscription {
            client: client(&session.id),
            topic: unsubscribe.topic_filter.to_string(),
            opts: current_options(session, &unsubscribe.topic_filter).await,
        }),
        Parameter::SessionSubscribed(session, subscribe) => Event::SessionSubscribed(Subscription {
            client: client(&session.id),
            topic: subscribe.topic_filter.to_string(),
            opts: subscribe_options(&subscribe.opts),
        }),
        Parameter::SessionUnsubscribed(session, unsubscribe) => Event::SessionUnsubscribed(Subscription {
            client: client(&session.id),
            topic: unsubscribe.topic_filter.to_string(),
            // The body of session_unsubscribed has no `opts`.
            opts: SubscribeOptions::default(),
        }),
        Parameter::SessionTerminated(session, reason) => Event::SessionTerminated(Disconnection {
            client: client(&session.id),
            reason: termination_reason(reason).to_string(),
        }),
        Parameter::MessagePublish(_, from, publish) => Event::MessagePublish(message(from, publish, None)),
        Parameter::MessageDelivered(session, from, publish) => {
            Event::MessageDelivered(message(from, publish, Some(client(&session.id))))
        }
        Parameter::MessageAcked(session, from, publish) => {
            Event::MessageAcked(message(from, publish, Some(client(&session.id))))
        }
        _ => return None,
    })
}

fn client(id: &Id) -> Client {
    Client { clientid: id.client_id.to_string(), username: id.username.as_ref().map(ToString::to_string) }
}

fn connection(info: &ConnectInfo, connected_at: u64) -> Connection {
    let id = info.id();
    Connection {
        client: client(id),
        ipaddress: id.remote_addr.map(|addr| addr.ip().to_canonical().to_string()).unwrap_or_default(),
        keepalive: info.keep_alive(),
        proto_ver: info.proto_ver(),
        connected_at,
    }
}

fn connack_code(reason: &ConnectAckReason) -> u8 {
    match *reason {
        ConnectAckReason::V3(code) => code.into(),
        ConnectAckReason::V5(code) => code.into(),
    }
}

/// `normal` or `abnormal`, for `client_disconnected`.
fn disconnect_reason(reason: &Reason) -> &'static str {
    if ended_by_client(reason) {
        "normal"
    } else {
        "abnormal"
    }
}

/// `normal`, `expired` or `abnormal`, for `session_terminated`.
fn termination_reason(reason: &Reason) -> &'static str {
    match reason {
        _ if ended_by_client(reason) => "normal",
        Reason::SessionExpiration => "expired",
        _ => "abnormal",
    }
}

/// Whether the client sent DISCONNECT (MQTT 5: with a success reason code). rmqtt hands the hooks
/// every reason it collected, as `Reason::Reasons`.
fn ended_by_client(reason: &Reason) -> bool {
    match reason {
        Reason::ConnectDisconnect(Some(Disconnect::V3)) => true,
        Reason::ConnectDisconnect(Some(Disconnect::V5(packet))) => u8::from(packet.reason_code) < 0x80,
        Reason::Reasons(reasons) => reasons.iter().any(ended_by_client),
        _ => false,
    }
}

fn subscribe_options(opts: &SubscriptionOptions) -> SubscribeOptions {
    match opts {
        SubscriptionOptions::V3(v3) => SubscribeOptions { qos: v3.qos.value(), nl: None, rap: None, rh: None },
        SubscriptionOptions::V5(v5) => SubscribeOptions {
            qos: v5.qos.value(),
            nl: Some(u8::from(v5.no_local)),
            rap: Some(u8::from(v5.retain_as_published)),
            rh: Some(v5.retain_handling_value()),
        },
    }
}

/// The options `session` currently subscribes to `topic_filter` with (default when it does not).
async fn current_options(session: &Session, topic_filter: &str) -> SubscribeOptions {
    let Ok(subscriptions) = session.subscriptions().await else {
        return SubscribeOptions::default();
    };
    let subscriptions = subscriptions.read().await;
    subscriptions.get(topic_filter).map(subscribe_options).unwrap_or_default()
}

fn message(from: &Origin, publish: &Publish, receiver: Option<Client>) -> Message {
    Message {
        ts: publish.create_time.map_or_else(now_millis, epoch_millis),
        topic: publish.topic.to_string(),
        qos: publish.qos.value(),
        retain: publish.retain,
        from_clientid: Some(from.id.client_id.to_string()),
        from_username: from.id.username.as_ref().map(ToString::to_string),
        receiver,
        payload: publish.payload.to_vec(),
    }
}

/// rmqtt's millisecond timestamps are signed.
fn epoch_millis(millis: i64) -> u64 {
    u64::try_from(millis).unwrap_or(0)
}

/// Retained messages in memory: rmqtt's topic trie with retain switched on (see the module doc).
#[derive(Clone, Default)]
struct RetainedMessages(Arc<DefaultRetainStorage>);

impl RetainedMessages {
    async fn remove_expired(&self) {
        let removed = self.0.remove_expired_messages().await;
        if removed > 0 {
            tracing::debug!(removed, "Expired retained messages removed.");
        }
    }
}

#[async_trait]
impl RetainStorage for RetainedMessages {
    fn enable(&self) -> bool {
        true
    }

    /// Ignores rmqtt's `expiry_interval`, which falls back to the listener's default for queued
    /// messages; only the publisher's own MQTT 5 Message Expiry Interval limits a retained message.
    async fn set(&self, topic: &TopicName, retain: Retain, _expiry_interval: Option<Duration>) -> rmqtt::Result<()> {
        let expiry = retain
            .publish
            .properties
            .as_ref()
            .and_then(|properties| properties.message_expiry_interval)
            .map(|seconds| Duration::from_secs(seconds.get().into()));
        self.0.set_with_timeout(topic, retain, expiry).await
    }

    async fn get(&self, topic_filter: &TopicFilter) -> rmqtt::Result<Vec<(TopicName, Retain)>> {
        self.0.get_message(topic_filter).await
    }

    async fn count(&self) -> isize {
        self.0.count().await
    }

    async fn max(&self) -> isize {
        self.0.max().await
    }
}
