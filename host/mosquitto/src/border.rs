//! The border: mosquitto's callback data becomes mqhook [`Event`]s here, and nowhere else.
//!
//! - **Receives** the event structs of [`crate::sys`], on the broker's thread, from the callbacks
//!   in `lib.rs`.
//! - **Owns** the conversion (which event kind each callback becomes, what each field is read
//!   from) and the one piece of state it needs: the `client_connack` still waiting for the
//!   broker's verdict.
//! - **Hands on** each event to [`Submitter::try_submit`], which never blocks; a full runtime queue
//!   drops the event (counted as `queue_full`, `rejected` in the summary, and logged through
//!   mqhook's one log limiter).
//!
//! # Where each event comes from (mosquitto 2.0.11)
//! | event | callback | fields |
//! |---|---|---|
//! | `message_publish` | `MOSQ_EVT_MESSAGE` | the publisher's id and username (`mosquitto_client_id`/`_username`); topic, payload, QoS and retain flag as received; `ts` when the callback ran (ms) |
//! | `client_connect` | `MOSQ_EVT_BASIC_AUTH` | client id, the CONNECT username, peer address, keepalive, protocol level (3, 4, 5) |
//! | `client_connack` | the callback after `MOSQ_EVT_BASIC_AUTH` (see below) | as `client_connect`; the return code 0, or "not authorised" (5; MQTT 5: 0x87) |
//! | `client_disconnected` | `MOSQ_EVT_DISCONNECT` | client id and username; `reason` is always `"normal"`: 2.0.11 passes -1 for every disconnect, clean or dropped. A refused CONNECT yields none |
//! | `client_subscribe` | `MOSQ_EVT_ACL_CHECK`, `MOSQ_ACL_SUBSCRIBE` | one per topic filter; `opts` is `{"qos":N}` |
//! | `client_unsubscribe` | `MOSQ_EVT_ACL_CHECK`, `MOSQ_ACL_UNSUBSCRIBE` | one per topic filter; `opts` is `{"qos":0}` |
//! | `message_delivered` | `MOSQ_EVT_ACL_CHECK`, `MOSQ_ACL_READ` | the receiver's id and username; topic, payload, QoS and retain flag of the message; no publisher |
//!
//! # The connack
//! The plugin's basic-auth callback defers, so when it runs the broker has not decided yet. It
//! decides right after, on the same thread and before it calls any plugin again: a refused client
//! is disconnected at once. So the pending `client_connack` is settled by the next callback of
//! any kind (the tick included): a `MOSQ_EVT_DISCONNECT` of that same client whose client id the
//! broker has already freed (it does so only on a refused CONNECT) means refused, anything else
//! means accepted.

use mqhook::event::{now_millis, Client, Connack, Connection, Disconnection, Message, SubscribeOptions, Subscription};
use mqhook::{Event, EventKind, SubmitError, Submitter};

use crate::sys::{self, BrokerApi, Mosquitto};

/// CONNACK "not authorised": MQTT 3.1/3.1.1 return code 5.
const REFUSED_NOT_AUTHORISED_V3: u8 = 5;
/// CONNACK "not authorized": MQTT 5 reason code 0x87.
const REFUSED_NOT_AUTHORISED_V5: u8 = 0x87;

/// Converts callback data and submits it (see the module doc). Used on the broker's thread.
pub struct Border {
    api: BrokerApi,
    submitter: Submitter,
    /// The `client_connack` waiting for the broker's verdict, with its client.
    pending: Option<(*mut Mosquitto, Connack)>,
}

impl Border {
    /// Hands events to `submitter`, reading clients through `api`.
    pub fn new(api: BrokerApi, submitter: Submitter) -> Border {
        Border { api, submitter, pending: None }
    }

    /// Settles a pending connack as accepted: the broker went on to something else.
    pub fn tick(&mut self) {
        self.settle(None);
    }

    /// `MOSQ_EVT_MESSAGE` → `message_publish`.
    ///
    /// # Safety
    /// `data` is the broker's event, valid for the call.
    pub unsafe fn message(&mut self, data: &sys::EvtMessage) {
        self.settle(None);
        if !self.submitter.admits(EventKind::MessagePublish) {
            return;
        }
        let client = self.client(data.client);
        let message = Message {
            ts: now_millis(),
            // SAFETY: the broker's topic string, valid for the callback.
            topic: unsafe { sys::string(data.topic) }.unwrap_or_default(),
            qos: data.qos,
            retain: data.retain,
            from_clientid: Some(client.clientid),
            from_username: client.username,
            receiver: None,
            // SAFETY: `payload` points at `payloadlen` bytes for the callback.
            payload: unsafe { bytes(data.payload.cast_const(), data.payloadlen) },
        };
        self.submit(Event::MessagePublish(message));
    }

    /// `MOSQ_EVT_BASIC_AUTH` → `client_connect`, and the pending `client_connack`.
    ///
    /// # Safety
    /// `data` is the broker's event, valid for the call.
    pub unsafe fn basic_auth(&mut self, data: &sys::EvtBasicAuth) {
        self.settle(None);
        let (connect, connack) =
            (self.submitter.admits(EventKind::ClientConnect), self.submitter.admits(EventKind::ClientConnack));
        if !connect && !connack {
            return;
        }
        let mut client = self.client(data.client);
        // SAFETY: the CONNECT username (or NULL), valid for the callback.
        if let Some(username) = unsafe { sys::string(data.username) } {
            client.username = Some(username);
        }
        // SAFETY: `data.client` is the connecting client, valid for the callback.
        let keepalive = unsafe { (self.api.client_keepalive)(data.client) };
        // SAFETY: as above.
        let proto_ver = unsafe { (self.api.client_protocol_version)(data.client) };
        let (keepalive, proto_ver) = (u16::try_from(keepalive).unwrap_or(0), u8::try_from(proto_ver).unwrap_or(0));
        if connack {
            let pending = Connack { client: client.clone(), keepalive, proto_ver, reason_code: 0 };
            self.pending = Some((data.client, pending));
        }
        if connect {
            // SAFETY: as above.
            let address = unsafe { sys::string((self.api.client_address)(data.client)) };
            self.submit(Event::ClientConnect(Connection {
                client,
                ipaddress: address.unwrap_or_default(),
                keepalive,
                proto_ver,
                connected_at: now_millis(),
            }));
        }
    }

    /// `MOSQ_EVT_DISCONNECT` → `client_disconnected`.
    ///
    /// # Safety
    /// `data` is the broker's event, valid for the call.
    pub unsafe fn disconnect(&mut self, data: &sys::EvtDisconnect) {
        // A refused CONNECT never made a connection to report as ended.
        if self.settle(Some(data.client)) || !self.submitter.admits(EventKind::ClientDisconnected) {
            return;
        }
        // SAFETY: `data.client` is the disconnecting client, valid for the callback.
        if unsafe { (self.api.client_id)(data.client) }.is_null() {
            return;
        }
        let client = self.client(data.client);
        // mosquitto 2.0.11 passes -1 for every disconnect, so a clean one cannot be told from a
        // dropped one: "normal", as NanoMQ's webhook always says (see the README).
        self.submit(Event::ClientDisconnected(Disconnection { client, reason: "normal".to_string() }));
    }

    /// `MOSQ_EVT_ACL_CHECK` → `client_subscribe`, `client_unsubscribe` or `message_delivered`
    /// (a publish's write check is left to `MOSQ_EVT_MESSAGE`).
    ///
    /// # Safety
    /// `data` is the broker's event, valid for the call.
    pub unsafe fn acl_check(&mut self, data: &sys::EvtAclCheck) {
        self.settle(None);
        let kind = match data.access {
            sys::MOSQ_ACL_SUBSCRIBE => EventKind::ClientSubscribe,
            sys::MOSQ_ACL_UNSUBSCRIBE => EventKind::ClientUnsubscribe,
            sys::MOSQ_ACL_READ => EventKind::MessageDelivered,
            _ => return,
        };
        if !self.submitter.admits(kind) {
            return;
        }
        let client = self.client(data.client);
        // SAFETY: the broker's topic (or filter) string, valid for the callback.
        let topic = unsafe { sys::string(data.topic) }.unwrap_or_default();
        let event = match kind {
            EventKind::ClientSubscribe => Event::ClientSubscribe(Subscription {
                client,
                topic,
                opts: SubscribeOptions { qos: data.qos, ..SubscribeOptions::default() },
            }),
            EventKind::ClientUnsubscribe => {
                Event::ClientUnsubscribe(Subscription { client, topic, opts: SubscribeOptions::default() })
            }
            _ => Event::MessageDelivered(Message {
                ts: now_millis(),
                topic,
                qos: data.qos,
                retain: data.retain,
                from_clientid: None,
                from_username: None,
                receiver: Some(client),
                // SAFETY: `payload` points at `payloadlen` bytes for the callback.
                payload: unsafe { bytes(data.payload, data.payloadlen) },
            }),
        };
        self.submit(event);
    }

    /// Submits the pending connack, if any: refused when `disconnected` is its client and the
    /// broker has already taken the client id back (it does so only for a refused CONNECT);
    /// accepted otherwise. Returns whether it was refused.
    fn settle(&mut self, disconnected: Option<*mut Mosquitto>) -> bool {
        let Some((client, mut connack)) = self.pending.take() else { return false };
        // SAFETY: `client` is the client of the running disconnect callback.
        let refused = disconnected == Some(client) && unsafe { (self.api.client_id)(client) }.is_null();
        if refused {
            connack.reason_code =
                if connack.proto_ver == 5 { REFUSED_NOT_AUTHORISED_V5 } else { REFUSED_NOT_AUTHORISED_V3 };
        }
        self.submit(Event::ClientConnack(connack));
        refused
    }

    fn client(&self, client: *mut Mosquitto) -> Client {
        // SAFETY: `client` is the client of the running callback, which the broker keeps alive
        // for the call; the string is copied before it returns.
        let clientid = unsafe { sys::string((self.api.client_id)(client)) }.unwrap_or_default();
        // SAFETY: as above.
        let username = unsafe { sys::string((self.api.client_username)(client)) };
        Client { clientid, username }
    }

    fn submit(&self, event: Event) {
        match self.submitter.try_submit(event) {
            Ok(()) | Err(SubmitError::Closed(_)) => {}
            // Counted and logged (through the shared limiter) by the submitter.
            Err(SubmitError::Full(_)) => {}
        }
    }
}

/// Copies `len` bytes at `data`; empty for NULL.
///
/// # Safety
/// `data` is NULL or points at `len` readable bytes.
unsafe fn bytes(data: *const std::ffi::c_void, len: u32) -> Vec<u8> {
    if data.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: not NULL, and `len` bytes readable per this function's contract.
    unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len as usize) }.to_vec()
}
