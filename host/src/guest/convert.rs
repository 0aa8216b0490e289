//! Conversions across the guest border: mqhook's types into WIT types and a guest's delivery back.

use http::{HeaderName, HeaderValue};

use super::bindings::wit;
use super::{GuestDelivery, GuestError};
use crate::config::{FilterSettings, PayloadEncoding};
use crate::event::{self, Event, EventKind};
use crate::request::Request;

/// Header names a guest may not set: the host writes them itself (`host`, `content-length`,
/// `idempotency-key`), or they would change how the request is framed or the connection kept.
/// A delivery that sets one is invalid. The list is in the WIT's `delivery` doc too.
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "idempotency-key",
];

/// The filter configuration every new instance is given.
pub(crate) fn filter_config(filter: &FilterSettings, settings: &[(String, String)]) -> wit::FilterConfig {
    wit::FilterConfig {
        rules: filter
            .rules
            .iter()
            .map(|rule| wit::Rule {
                event: event_kind(rule.event),
                topic: rule.topic.clone(),
                endpoint: rule.endpoint.clone(),
            })
            .collect(),
        encoding: match filter.encoding {
            PayloadEncoding::Plain => wit::PayloadEncoding::Plain,
            PayloadEncoding::Base64 => wit::PayloadEncoding::Base64,
            PayloadEncoding::Base62 => wit::PayloadEncoding::Base62,
        },
        settings: settings.to_vec(),
        endpoints: filter.endpoints.clone(),
    }
}

fn event_kind(kind: EventKind) -> wit::EventKind {
    match kind {
        EventKind::ClientConnect => wit::EventKind::ClientConnect,
        EventKind::ClientConnack => wit::EventKind::ClientConnack,
        EventKind::ClientConnected => wit::EventKind::ClientConnected,
        EventKind::ClientDisconnected => wit::EventKind::ClientDisconnected,
        EventKind::ClientSubscribe => wit::EventKind::ClientSubscribe,
        EventKind::ClientUnsubscribe => wit::EventKind::ClientUnsubscribe,
        EventKind::SessionSubscribed => wit::EventKind::SessionSubscribed,
        EventKind::SessionUnsubscribed => wit::EventKind::SessionUnsubscribed,
        EventKind::SessionTerminated => wit::EventKind::SessionTerminated,
        EventKind::MessagePublish => wit::EventKind::MessagePublish,
        EventKind::MessageDelivered => wit::EventKind::MessageDelivered,
        EventKind::MessageAcked => wit::EventKind::MessageAcked,
    }
}

fn client(client: event::Client) -> wit::Client {
    wit::Client { clientid: client.clientid, username: client.username }
}

fn connection(c: event::Connection) -> wit::Connection {
    wit::Connection {
        client: client(c.client),
        ipaddress: c.ipaddress,
        keepalive: c.keepalive,
        proto_ver: c.proto_ver,
        connected_at: c.connected_at,
    }
}

fn disconnection(d: event::Disconnection) -> wit::Disconnection {
    wit::Disconnection { client: client(d.client), reason: d.reason }
}

fn subscription(s: event::Subscription) -> wit::Subscription {
    wit::Subscription {
        client: client(s.client),
        topic: s.topic,
        opts: wit::SubscribeOptions { qos: s.opts.qos, nl: s.opts.nl, rap: s.opts.rap, rh: s.opts.rh },
    }
}

fn message(m: event::Message) -> wit::Message {
    wit::Message {
        ts: m.ts,
        topic: m.topic,
        qos: m.qos,
        retain: m.retain,
        from_clientid: m.from_clientid,
        from_username: m.from_username,
        receiver: m.receiver.map(client),
        payload: m.payload,
    }
}

/// Moves an event into its WIT form (the payload is moved, not copied).
pub(crate) fn event(event: Event) -> wit::Event {
    match event {
        Event::ClientConnect(c) => wit::Event::ClientConnect(connection(c)),
        Event::ClientConnack(c) => wit::Event::ClientConnack(wit::Connack {
            client: client(c.client),
            keepalive: c.keepalive,
            proto_ver: c.proto_ver,
            reason_code: c.reason_code,
        }),
        Event::ClientConnected(c) => wit::Event::ClientConnected(connection(c)),
        Event::ClientDisconnected(d) => wit::Event::ClientDisconnected(disconnection(d)),
        Event::ClientSubscribe(s) => wit::Event::ClientSubscribe(subscription(s)),
        Event::ClientUnsubscribe(s) => wit::Event::ClientUnsubscribe(subscription(s)),
        Event::SessionSubscribed(s) => wit::Event::SessionSubscribed(subscription(s)),
        Event::SessionUnsubscribed(s) => wit::Event::SessionUnsubscribed(subscription(s)),
        Event::SessionTerminated(d) => wit::Event::SessionTerminated(disconnection(d)),
        Event::MessagePublish(m) => wit::Event::MessagePublish(message(m)),
        Event::MessageDelivered(m) => wit::Event::MessageDelivered(message(m)),
        Event::MessageAcked(m) => wit::Event::MessageAcked(message(m)),
    }
}

/// The topic of a WIT event, for logging a failed call.
pub(crate) fn topic(event: &wit::Event) -> Option<&str> {
    match event {
        wit::Event::ClientSubscribe(s)
        | wit::Event::ClientUnsubscribe(s)
        | wit::Event::SessionSubscribed(s)
        | wit::Event::SessionUnsubscribed(s) => Some(&s.topic),
        wit::Event::MessagePublish(m) | wit::Event::MessageDelivered(m) | wit::Event::MessageAcked(m) => Some(&m.topic),
        _ => None,
    }
}

/// Checks a guest's delivery and turns it into the request for an event of `kind` from `client`,
/// with the endpoint it names (one of `endpoints`); header names and values, the path and the
/// endpoint come from untrusted code, so each is validated here.
pub(crate) fn delivery(
    kind: EventKind,
    client: Option<String>,
    delivery: wit::Delivery,
    endpoints: &[String],
) -> Result<GuestDelivery, GuestError> {
    let endpoint = match &delivery.endpoint {
        None => None,
        Some(name) => Some(endpoints.iter().position(|known| known == name).ok_or_else(|| {
            GuestError::InvalidDelivery(format!("endpoint {name:?} is not configured (webhook.endpoints)"))
        })?),
    };
    let headers = delivery
        .headers
        .into_iter()
        .map(|(name, value)| {
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| GuestError::InvalidDelivery(format!("invalid header name {name:?}")))?;
            if RESERVED_HEADERS.contains(&header_name.as_str()) {
                return Err(GuestError::InvalidDelivery(format!("header {name:?} is set by the host, not the guest")));
            }
            let header_value = HeaderValue::from_str(&value)
                .map_err(|_| GuestError::InvalidDelivery(format!("invalid value for header {name:?}")))?;
            Ok((header_name, header_value))
        })
        .collect::<Result<Vec<_>, GuestError>>()?;
    if let Some(path) = &delivery.path {
        let valid = path.starts_with('/') && http::uri::PathAndQuery::try_from(path.as_str()).is_ok();
        if !valid {
            return Err(GuestError::InvalidDelivery(format!("invalid path {path:?}: must start with `/`")));
        }
    }
    let request = Request {
        kind,
        body: delivery.body.into(),
        headers,
        path: delivery.path,
        client,
        idempotency_key: None,
        received_at: None,
    };
    Ok(GuestDelivery { request, endpoint })
}
