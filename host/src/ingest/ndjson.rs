//! NDJSON event input (spec §7): one event per line, named by `"event"`, with its body's fields.
//!
//! A malformed line is reported with its line number, counted, and skipped; it never stops the
//! stream. Missing `ts` / `connected_at` are stamped with the time the line was read.

use std::io::BufRead;

use base64::Engine as _;
use serde::Deserialize;

use crate::event::{now_millis, Client, Connack, Connection, Disconnection, Event, EventKind, Message};
use crate::event::{SubscribeOptions, Subscription};
use crate::runtime::{SubmitError, Submitter};

/// Why a line is not an event.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LineError {
    /// Not JSON, or a field of the wrong type.
    #[error("{0}")]
    Json(String),
    /// `"event"` names none of the twelve events.
    #[error("unknown event `{0}`")]
    UnknownEvent(String),
    /// A field this event needs is absent.
    #[error("`{field}` is required for {event}")]
    Missing {
        /// The field.
        field: &'static str,
        /// The event.
        event: &'static str,
    },
    /// A field has a value outside its range.
    #[error("`{field}`: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
struct Line {
    event: String,
    clientid: Option<String>,
    username: Option<String>,
    ipaddress: Option<String>,
    keepalive: Option<u16>,
    proto_ver: Option<u8>,
    connected_at: Option<u64>,
    reason_code: Option<u8>,
    reason: Option<String>,
    topic: Option<String>,
    opts: Option<Opts>,
    ts: Option<u64>,
    qos: Option<u8>,
    retain: Option<bool>,
    from_client_id: Option<String>,
    from_username: Option<String>,
    payload: Option<String>,
    payload_base64: Option<String>,
}

#[derive(Deserialize)]
struct Opts {
    qos: Option<u8>,
    nl: Option<u8>,
    rap: Option<u8>,
    rh: Option<u8>,
}

/// Parses one line into an event, stamping `now` where a time is absent.
pub fn parse_line(text: &str, now: u64) -> Result<Event, LineError> {
    let line: Line = serde_json::from_str(text).map_err(|e| LineError::Json(e.to_string()))?;
    let kind: EventKind = line.event.parse().map_err(|_| LineError::UnknownEvent(line.event.clone()))?;
    let event = kind.action();
    let missing = |field| LineError::Missing { field, event };
    let client = || -> Result<Client, LineError> {
        Ok(Client { clientid: line.clientid.clone().ok_or(missing("clientid"))?, username: line.username.clone() })
    };
    let proto_ver = || match line.proto_ver {
        Some(v @ 3..=5) => Ok(v),
        Some(v) => Err(LineError::Invalid { field: "proto_ver", message: format!("must be 3, 4 or 5, found {v}") }),
        None => Err(missing("proto_ver")),
    };
    let qos = |field, value: Option<u8>| match value.unwrap_or(0) {
        q @ 0..=2 => Ok(q),
        q => Err(LineError::Invalid { field, message: format!("must be 0, 1 or 2, found {q}") }),
    };
    let topic = || line.topic.clone().ok_or(missing("topic"));
    let connection = || -> Result<Connection, LineError> {
        Ok(Connection {
            client: client()?,
            ipaddress: line.ipaddress.clone().unwrap_or_default(),
            keepalive: line.keepalive.ok_or(missing("keepalive"))?,
            proto_ver: proto_ver()?,
            connected_at: line.connected_at.unwrap_or(now),
        })
    };
    let disconnection = || -> Result<Disconnection, LineError> {
        Ok(Disconnection { client: client()?, reason: line.reason.clone().ok_or(missing("reason"))? })
    };
    let subscription = || -> Result<Subscription, LineError> {
        let opts = match &line.opts {
            Some(o) => SubscribeOptions { qos: qos("opts.qos", o.qos)?, nl: o.nl, rap: o.rap, rh: o.rh },
            None => SubscribeOptions::default(),
        };
        Ok(Subscription { client: client()?, topic: topic()?, opts })
    };
    let message = |receiver: Option<Client>| -> Result<Message, LineError> {
        let payload = match (&line.payload, &line.payload_base64) {
            (Some(_), Some(_)) => {
                return Err(LineError::Invalid {
                    field: "payload",
                    message: "give `payload` or `payload_base64`, not both".into(),
                })
            }
            (Some(text), None) => text.clone().into_bytes(),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| LineError::Invalid { field: "payload_base64", message: e.to_string() })?,
            (None, None) => Vec::new(),
        };
        Ok(Message {
            ts: line.ts.unwrap_or(now),
            topic: topic()?,
            qos: qos("qos", line.qos)?,
            retain: line.retain.unwrap_or(false),
            from_clientid: line.from_client_id.clone(),
            from_username: line.from_username.clone(),
            receiver,
            payload,
        })
    };
    Ok(match kind {
        EventKind::ClientConnect => Event::ClientConnect(connection()?),
        EventKind::ClientConnack => Event::ClientConnack(Connack {
            client: client()?,
            keepalive: line.keepalive.ok_or(missing("keepalive"))?,
            proto_ver: proto_ver()?,
            reason_code: line.reason_code.ok_or(missing("reason_code"))?,
        }),
        EventKind::ClientConnected => Event::ClientConnected(connection()?),
        EventKind::ClientDisconnected => Event::ClientDisconnected(disconnection()?),
        EventKind::ClientSubscribe => Event::ClientSubscribe(subscription()?),
        EventKind::ClientUnsubscribe => Event::ClientUnsubscribe(subscription()?),
        EventKind::SessionSubscribed => Event::SessionSubscribed(subscription()?),
        EventKind::SessionUnsubscribed => Event::SessionUnsubscribed(subscription()?),
        EventKind::SessionTerminated => Event::SessionTerminated(disconnection()?),
        EventKind::MessagePublish => Event::MessagePublish(message(None)?),
        EventKind::MessageDelivered => Event::MessageDelivered(message(Some(client()?))?),
        EventKind::MessageAcked => Event::MessageAcked(message(Some(client()?))?),
    })
}

/// Reads events until end of input and submits each, waiting for room in the queue.
/// Returns the number of malformed lines. `source` names the input in messages.
pub fn ingest(reader: impl BufRead, source: &str, submitter: &Submitter) -> std::io::Result<u64> {
    let mut malformed = 0;
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line, now_millis()) {
            Ok(event) => match submitter.submit_blocking(event) {
                Ok(()) => {}
                Err(SubmitError::Closed(_) | SubmitError::Full(_)) => {
                    tracing::error!("{source}: the runtime stopped; input after line {} is not read.", index + 1);
                    break;
                }
            },
            Err(error) => {
                malformed += 1;
                submitter.record_malformed();
                tracing::warn!("{source}:{}: skipped a malformed event: {error}", index + 1);
            }
        }
    }
    Ok(malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples_parse() {
        let publish = parse_line(
            r#"{"event":"message_publish","from_client_id":"c1","from_username":null,"topic":"a/b","qos":1,"retain":false,"payload":"hello","ts":1706703724960}"#,
            5,
        )
        .unwrap();
        let Event::MessagePublish(m) = publish else { panic!() };
        assert_eq!((m.ts, m.qos, m.payload.as_slice(), m.from_username), (1706703724960, 1, &b"hello"[..], None));
        let binary = parse_line(
            r#"{"event":"message_publish","from_client_id":"c1","topic":"bin/x","qos":0,"retain":false,"payload_base64":"//4A"}"#,
            5,
        )
        .unwrap();
        let Event::MessagePublish(m) = binary else { panic!() };
        assert_eq!((m.ts, m.payload), (5, vec![0xff, 0xfe, 0x00]));
        let connack = parse_line(
            r#"{"event":"on_client_connack","clientid":"c1","username":"u1","keepalive":60,"proto_ver":4,"reason_code":0}"#,
            5,
        )
        .unwrap();
        assert_eq!(connack.kind(), EventKind::ClientConnack);
        let sub = parse_line(r#"{"event":"client_subscribe","clientid":"c1","username":"u1","topic":"a/#","opts":{"qos":1}}"#, 5)
            .unwrap();
        assert_eq!(sub.topic(), Some("a/#"));
    }

    #[test]
    fn bad_lines_say_why() {
        assert!(matches!(parse_line("not json", 0), Err(LineError::Json(_))));
        assert_eq!(parse_line(r#"{"event":"nope"}"#, 0), Err(LineError::UnknownEvent("nope".into())));
        assert_eq!(
            parse_line(r#"{"event":"message_publish","qos":0}"#, 0),
            Err(LineError::Missing { field: "topic", event: "message_publish" })
        );
        assert!(matches!(
            parse_line(r#"{"event":"message_publish","topic":"t","qos":3}"#, 0),
            Err(LineError::Invalid { field: "qos", .. })
        ));
        assert!(matches!(parse_line(r#"{"event":"message_publish","topic":"t","qos":-1}"#, 0), Err(LineError::Json(_))));
    }
}
