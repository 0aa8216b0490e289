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
    line.into_event(kind, now)
}

impl Line {
    /// The event of `kind` this line describes.
    fn into_event(self, kind: EventKind, now: u64) -> Result<Event, LineError> {
        Ok(match kind {
            EventKind::ClientConnect => Event::ClientConnect(self.connection(kind, now)?),
            EventKind::ClientConnack => Event::ClientConnack(Connack {
                client: self.client(kind)?,
                keepalive: self.keepalive.ok_or(missing("keepalive", kind))?,
                proto_ver: self.proto_ver(kind)?,
                reason_code: self.reason_code.ok_or(missing("reason_code", kind))?,
            }),
            EventKind::ClientConnected => Event::ClientConnected(self.connection(kind, now)?),
            EventKind::ClientDisconnected => Event::ClientDisconnected(self.disconnection(kind)?),
            EventKind::ClientSubscribe => Event::ClientSubscribe(self.subscription(kind)?),
            EventKind::ClientUnsubscribe => Event::ClientUnsubscribe(self.subscription(kind)?),
            EventKind::SessionSubscribed => Event::SessionSubscribed(self.subscription(kind)?),
            EventKind::SessionUnsubscribed => Event::SessionUnsubscribed(self.subscription(kind)?),
            EventKind::SessionTerminated => Event::SessionTerminated(self.disconnection(kind)?),
            EventKind::MessagePublish => Event::MessagePublish(self.message(kind, false, now)?),
            EventKind::MessageDelivered => Event::MessageDelivered(self.message(kind, true, now)?),
            EventKind::MessageAcked => Event::MessageAcked(self.message(kind, true, now)?),
        })
    }

    fn client(&self, kind: EventKind) -> Result<Client, LineError> {
        Ok(Client {
            clientid: self.clientid.clone().ok_or(missing("clientid", kind))?,
            username: self.username.clone(),
        })
    }

    fn proto_ver(&self, kind: EventKind) -> Result<u8, LineError> {
        match self.proto_ver {
            Some(v @ 3..=5) => Ok(v),
            Some(v) => Err(LineError::Invalid { field: "proto_ver", message: format!("must be 3, 4 or 5, found {v}") }),
            None => Err(missing("proto_ver", kind)),
        }
    }

    fn topic(&self, kind: EventKind) -> Result<String, LineError> {
        self.topic.clone().ok_or(missing("topic", kind))
    }

    fn connection(self, kind: EventKind, now: u64) -> Result<Connection, LineError> {
        Ok(Connection {
            client: self.client(kind)?,
            keepalive: self.keepalive.ok_or(missing("keepalive", kind))?,
            proto_ver: self.proto_ver(kind)?,
            connected_at: self.connected_at.unwrap_or(now),
            ipaddress: self.ipaddress.unwrap_or_default(),
        })
    }

    fn disconnection(self, kind: EventKind) -> Result<Disconnection, LineError> {
        Ok(Disconnection { client: self.client(kind)?, reason: self.reason.ok_or(missing("reason", kind))? })
    }

    fn subscription(self, kind: EventKind) -> Result<Subscription, LineError> {
        let opts = match &self.opts {
            Some(o) => SubscribeOptions { qos: qos("opts.qos", o.qos)?, nl: o.nl, rap: o.rap, rh: o.rh },
            None => SubscribeOptions::default(),
        };
        Ok(Subscription { client: self.client(kind)?, topic: self.topic(kind)?, opts })
    }

    /// A message; `with_receiver` for the kinds that go to a subscriber (its `clientid`).
    fn message(self, kind: EventKind, with_receiver: bool, now: u64) -> Result<Message, LineError> {
        let receiver = with_receiver.then(|| self.client(kind)).transpose()?;
        let topic = self.topic(kind)?;
        let payload = match (self.payload, self.payload_base64) {
            (Some(_), Some(_)) => {
                return Err(LineError::Invalid {
                    field: "payload",
                    message: "give `payload` or `payload_base64`, not both".into(),
                })
            }
            (Some(text), None) => text.into_bytes(),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| LineError::Invalid { field: "payload_base64", message: e.to_string() })?,
            (None, None) => Vec::new(),
        };
        Ok(Message {
            ts: self.ts.unwrap_or(now),
            topic,
            qos: qos("qos", self.qos)?,
            retain: self.retain.unwrap_or(false),
            from_clientid: self.from_client_id,
            from_username: self.from_username,
            receiver,
            payload,
        })
    }
}

fn missing(field: &'static str, kind: EventKind) -> LineError {
    LineError::Missing { field, event: kind.action() }
}

fn qos(field: &'static str, value: Option<u8>) -> Result<u8, LineError> {
    match value.unwrap_or(0) {
        q @ 0..=2 => Ok(q),
        q => Err(LineError::Invalid { field, message: format!("must be 0, 1 or 2, found {q}") }),
    }
}

/// Longest line read; a longer one is skipped whole (counted as malformed) and the stream goes on.
pub const MAX_LINE: usize = 16 << 20;

/// One line of input, as read.
enum LineRead {
    /// The line's bytes, without its newline.
    Line,
    /// The line was longer than [`MAX_LINE`]; its bytes were skipped.
    TooLong,
}

/// Reads the next line into `buffer` (cleared first); `None` at the end of the input. A last line
/// without a newline is a line; one longer than `max` bytes is skipped whole.
fn next_line(reader: &mut impl BufRead, buffer: &mut Vec<u8>, max: usize) -> std::io::Result<Option<LineRead>> {
    buffer.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if available.is_empty() {
            return Ok(read_any.then_some(if too_long { LineRead::TooLong } else { LineRead::Line }));
        }
        read_any = true;
        let (chunk, ends) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..end], Some(end + 1)),
            None => (available, None),
        };
        if !too_long && buffer.len() + chunk.len() <= max {
            buffer.extend_from_slice(chunk);
        } else {
            too_long = true;
            buffer.clear();
        }
        let consumed = ends.unwrap_or(available.len());
        reader.consume(consumed);
        if ends.is_some() {
            return Ok(Some(if too_long { LineRead::TooLong } else { LineRead::Line }));
        }
    }
}

/// Reads events until end of input and submits each, waiting for room in the queue. A line that
/// is not an event (bad JSON, not UTF-8, longer than [`MAX_LINE`]) is reported with its number,
/// counted and skipped. Returns the number of malformed lines. `source` names the input in
/// messages.
pub fn ingest(mut reader: impl BufRead, source: &str, submitter: &Submitter) -> std::io::Result<u64> {
    let mut malformed = 0;
    let mut buffer = Vec::new();
    let mut number = 0;
    while let Some(read) = next_line(&mut reader, &mut buffer, MAX_LINE)? {
        number += 1;
        let parsed = match read {
            LineRead::TooLong => Err(format!("the line is longer than {MAX_LINE} bytes")),
            LineRead::Line => match std::str::from_utf8(&buffer) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => parse_line(text, now_millis()).map_err(|error| error.to_string()),
                Err(error) => Err(format!("not UTF-8: {error}")),
            },
        };
        match parsed {
            Ok(event) => match submitter.submit_blocking(event) {
                Ok(()) => {}
                Err(SubmitError::Closed(_) | SubmitError::Full(_)) => {
                    tracing::error!("{source}: the runtime stopped; input after line {number} is not read.");
                    break;
                }
            },
            Err(error) => {
                malformed += 1;
                submitter.record_malformed(format_args!("{source}:{number}: skipped a malformed event: {error}"));
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
        let sub = parse_line(
            r#"{"event":"client_subscribe","clientid":"c1","username":"u1","topic":"a/#","opts":{"qos":1}}"#,
            5,
        )
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
        assert!(matches!(
            parse_line(r#"{"event":"message_publish","topic":"t","qos":-1}"#, 0),
            Err(LineError::Json(_))
        ));
    }

    #[test]
    fn an_overlong_line_is_skipped_and_the_next_one_read() {
        let input = format!("{}\n{}\nshort", "x".repeat(100), "y".repeat(10));
        let mut reader = std::io::Cursor::new(input.as_bytes());
        let mut buffer = Vec::new();
        let mut seen = Vec::new();
        while let Some(read) = next_line(&mut reader, &mut buffer, 64).unwrap() {
            seen.push(match read {
                LineRead::TooLong => "too long".to_string(),
                LineRead::Line => String::from_utf8(buffer.clone()).unwrap(),
            });
        }
        assert_eq!(seen, ["too long".to_string(), "y".repeat(10), "short".to_string()]);
    }

    mod fuzz {
        //! Any byte sequence is read line by line and never panics the parser.
        //! Longer runs: `PROPTEST_CASES=200000 cargo test --release -p mqhook --lib fuzz`.

        use proptest::prelude::*;

        use super::super::*;

        /// Lines of the spec's shapes, mutated: bytes flipped, cut short, NULs and invalid UTF-8.
        fn input() -> impl Strategy<Value = Vec<u8>> {
            let line = prop_oneof![
                Just(
                    br#"{"event":"message_publish","from_client_id":"c1","topic":"a/b","qos":1,"payload":"hello"}"#
                        .to_vec()
                ),
                Just(
                    br#"{"event":"client_connack","clientid":"c1","keepalive":60,"proto_ver":4,"reason_code":0}"#
                        .to_vec()
                ),
                Just(br#"{"event":"client_subscribe","clientid":"c1","topic":"a/#","opts":{"qos":1}}"#.to_vec()),
                Just(br#"{"event":"message_publish","topic":"t","qos":99999999999999999999,"ts":-1}"#.to_vec()),
                Just(br#"{"event":"message_publish","topic":"t","topic":"u","payload_base64":"!!"}"#.to_vec()),
                Just(b"[".repeat(300)),
                proptest::collection::vec(any::<u8>(), 0..200),
            ];
            let mutated = (line, proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4))
                .prop_map(|(mut line, flips)| {
                    for (at, byte) in flips {
                        if !line.is_empty() {
                            let at = at.index(line.len());
                            line[at] = byte;
                        }
                    }
                    line
                });
            (proptest::collection::vec(mutated, 0..20), any::<bool>()).prop_map(|(lines, last_newline)| {
                let mut bytes = lines.join(&b'\n');
                if last_newline {
                    bytes.push(b'\n');
                }
                bytes
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

            #[test]
            fn any_bytes_are_handled_line_by_line(bytes in input()) {
                let mut reader = std::io::Cursor::new(&bytes);
                let mut buffer = Vec::new();
                let mut lines = 0;
                while let Some(read) = next_line(&mut reader, &mut buffer, 64).unwrap() {
                    lines += 1;
                    if let (LineRead::Line, Ok(text)) = (read, std::str::from_utf8(&buffer)) {
                        let _ = parse_line(text, 0);
                    }
                }
                let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
                let unterminated = usize::from(!bytes.is_empty() && bytes.last() != Some(&b'\n'));
                prop_assert_eq!(lines, newlines + unterminated, "every line, the last one without a newline too");
            }
        }
    }
}
