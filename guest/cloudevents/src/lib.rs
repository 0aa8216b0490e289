//! An example guest: the events NanoMQ's WebHook would send, each wrapped in a CloudEvents 1.0
//! envelope in structured JSON mode.
//!
//! Rules, topic matching and bodies are the default guest's (`mqhook-guest-nanomq`, used here as a
//! library): an event is delivered when a rule selects it, and NanoMQ's body becomes the `data` of
//! this envelope, members in this order:
//!
//! - `specversion`: `"1.0"`.
//! - `id`: 32 hex digits, the 128-bit FNV-1a hash of `data`. Derived from the event rather than
//!   made up, so the same event always gets the same id and receivers can drop one reported twice;
//!   events whose bodies differ get different ids (a message's body holds client id, `ts`, topic
//!   and payload).
//! - `source`: the `source` setting, `"mqhook"` when it is not set.
//! - `type`: `io.nanomq.` followed by NanoMQ's `action` name, for example
//!   `io.nanomq.message_publish` or `io.nanomq.client_connack`.
//! - `subject`: the topic, for events that carry one (messages, and the topic filter of
//!   subscriptions); absent for events without one.
//! - `time`: RFC 3339 in UTC with milliseconds, for example `2024-01-31T12:22:04.960Z`: a message's
//!   `ts`, or `client_connected`'s `connected_at`; absent for events that carry no time.
//! - `datacontenttype`: `"application/json"`.
//! - `data`: NanoMQ's body, byte for byte, payload written as `body.encoding` says.
//!
//! Every delivery has the header `content-type: application/cloudevents+json`; remove a
//! `content-type` from the configured `headers`, or the request carries two.
//!
//! # Settings
//!
//! Read from `guest.settings`; `configure` refuses unknown ones.
//!
//! - `source`: the CloudEvents `source`, a URI-reference such as `mqtt://broker.example.com`;
//!   non-empty; default `mqhook`.

use mqhook_guest_nanomq::mqhook::filter::types::{Delivery, Event, FilterConfig};
use mqhook_guest_nanomq::{event, Filter, GuestLogic};

/// The `source` when no setting names one.
pub const DEFAULT_SOURCE: &str = "mqhook";

/// The media type of a structured-mode CloudEvent in JSON.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// The configured guest: NanoMQ's filter and bodies, wrapped in CloudEvents.
#[derive(Debug, Clone)]
pub struct CloudEvents {
    filter: Filter,
    source: String,
}

impl GuestLogic for CloudEvents {
    /// Builds the guest from its configuration: the rules as the default guest checks them, the
    /// `source` from the settings.
    fn configure(config: FilterConfig) -> Result<Self, String> {
        let mut source = None;
        for (key, value) in &config.settings {
            match key.as_str() {
                "source" if value.is_empty() => return Err("setting `source` must not be empty".to_owned()),
                "source" if source.is_some() => return Err("setting `source` is given twice".to_owned()),
                "source" => source = Some(value.clone()),
                _ => return Err(format!("unknown setting `{key}`: this guest reads only `source`")),
            }
        }
        Ok(Self { source: source.unwrap_or_else(|| DEFAULT_SOURCE.to_owned()), filter: Filter::new(config)? })
    }

    /// The CloudEvent for `event`, or `None` when no rule selects it.
    fn handle(&self, event: &Event) -> Option<Delivery> {
        let data = Filter::handle(&self.filter, event)?;
        let mut envelope = Vec::with_capacity(data.len() + 320);
        envelope.extend_from_slice(br#"{"specversion":"1.0""#);
        member(&mut envelope, "id", &event_id(&data));
        member(&mut envelope, "source", &self.source);
        member(&mut envelope, "type", &format!("io.nanomq.{}", event::action(event::kind(event))));
        if let Some(topic) = event::topic(event) {
            member(&mut envelope, "subject", topic);
        }
        if let Some(time) = timestamp(event).and_then(rfc3339) {
            member(&mut envelope, "time", &time);
        }
        member(&mut envelope, "datacontenttype", "application/json");
        // NanoMQ's body is a JSON object already: it goes in as it is.
        envelope.extend_from_slice(br#","data":"#);
        envelope.extend_from_slice(&data);
        envelope.push(b'}');
        Some(Delivery {
            body: envelope,
            headers: vec![("content-type".to_owned(), CONTENT_TYPE.to_owned())],
            path: None,
            endpoint: None,
        })
    }
}

/// Appends the member `,"key":"value"`.
fn member(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(b',');
    write_string(out, key);
    out.push(b':');
    write_string(out, value);
}

/// Appends `text` as a quoted, escaped JSON string.
fn write_string(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(out, text).expect("a string always serializes into a Vec");
}

/// The 128-bit FNV-1a hash of `data`, in lower-case hex.
fn event_id(data: &[u8]) -> String {
    const OFFSET_BASIS: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let hash = data.iter().fold(OFFSET_BASIS, |hash, &byte| (hash ^ u128::from(byte)).wrapping_mul(PRIME));
    format!("{hash:032x}")
}

/// When the event happened, in milliseconds since the Unix epoch, for the events that say.
fn timestamp(event: &Event) -> Option<u64> {
    match event {
        Event::MessagePublish(message) | Event::MessageDelivered(message) | Event::MessageAcked(message) => {
            Some(message.ts)
        }
        Event::ClientConnected(connection) => Some(connection.connected_at),
        _ => None,
    }
}

/// `milliseconds` since the Unix epoch as RFC 3339 UTC with milliseconds; `None` past the year
/// 9999, which RFC 3339's four-digit year cannot write.
fn rfc3339(milliseconds: u64) -> Option<String> {
    const MS_PER_DAY: u64 = 86_400_000;
    let (year, month, day) = civil_from_days(milliseconds / MS_PER_DAY);
    if year > 9999 {
        return None;
    }
    let ms_of_day = milliseconds % MS_PER_DAY;
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, millisecond) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    Some(format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millisecond:03}Z"))
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01: Howard Hinnant's
/// `civil_from_days`, for non-negative days only.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Count from 0000-03-01, so that the leap day ends each 400-year era and each year.
    let days = days + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

mqhook_guest_nanomq::export_guest!(crate::CloudEvents, "cloudevents");

#[cfg(test)]
mod tests {
    use mqhook_guest_nanomq::mqhook::filter::types::{Client, Connack, Connection, EventKind, Message};
    use mqhook_guest_nanomq::sample;

    use super::*;

    fn config(settings: &[(&str, &str)]) -> FilterConfig {
        let kinds = [EventKind::MessagePublish, EventKind::ClientConnack, EventKind::ClientConnected];
        sample::config(&kinds, settings)
    }

    fn client() -> Client {
        Client { clientid: "c1".to_owned(), username: Some("u1".to_owned()) }
    }

    fn publish(ts: u64) -> Event {
        Event::MessagePublish(Message {
            ts,
            topic: "sensors/kitchen".to_owned(),
            qos: 1,
            retain: false,
            from_clientid: Some("c1".to_owned()),
            from_username: Some("u1".to_owned()),
            receiver: None,
            payload: b"{\"temp\":21.5}".to_vec(),
        })
    }

    fn envelope(guest: &CloudEvents, event: &Event) -> String {
        let delivery = guest.handle(event).expect("selected");
        assert_eq!(delivery.headers, [("content-type".to_owned(), CONTENT_TYPE.to_owned())]);
        assert_eq!(delivery.path, None);
        String::from_utf8(delivery.body).expect("UTF-8")
    }

    #[test]
    fn a_publish_becomes_a_cloud_event_around_nanomqs_body() {
        let guest = CloudEvents::configure(config(&[("source", "mqtt://broker\"1\"")])).unwrap();
        let data = r#"{"ts":1706703724960,"topic":"sensors/kitchen","retain":false,"qos":1,"action":"message_publish","from_username":"u1","from_client_id":"c1","payload":"{\"temp\":21.5}"}"#;
        assert_eq!(
            envelope(&guest, &publish(1706703724960)),
            format!(
                r#"{{"specversion":"1.0","id":"{}","source":"mqtt://broker\"1\"","type":"io.nanomq.message_publish","subject":"sensors/kitchen","time":"2024-01-31T12:22:04.960Z","datacontenttype":"application/json","data":{data}}}"#,
                event_id(data.as_bytes())
            )
        );
    }

    #[test]
    fn client_events_have_no_subject_and_time_only_when_connected() {
        let guest = CloudEvents::configure(config(&[])).unwrap();
        let connack = Event::ClientConnack(Connack { client: client(), keepalive: 60, proto_ver: 4, reason_code: 0 });
        let text = envelope(&guest, &connack);
        assert!(text.starts_with(r#"{"specversion":"1.0","id":""#), "{text}");
        assert!(
            text.contains(r#","source":"mqhook","type":"io.nanomq.client_connack","datacontenttype":"application/json","data":{"proto_ver":4,"#),
            "{text}"
        );
        let connected = Event::ClientConnected(Connection {
            client: client(),
            ipaddress: "127.0.0.1:5000".to_owned(),
            keepalive: 60,
            proto_ver: 4,
            connected_at: 0,
        });
        let text = envelope(&guest, &connected);
        assert!(text.contains(r#""type":"io.nanomq.client_connected","time":"1970-01-01T00:00:00.000Z","#), "{text}");
    }

    #[test]
    fn ids_are_deterministic_and_follow_the_event() {
        let guest = CloudEvents::configure(config(&[])).unwrap();
        let id = |ts| {
            let text = envelope(&guest, &publish(ts));
            text[r#"{"specversion":"1.0","id":""#.len()..][..32].to_owned()
        };
        assert_eq!(id(1), id(1));
        assert_ne!(id(1), id(2));
        assert!(id(1).bytes().all(|digit| digit.is_ascii_hexdigit()));
        // FNV-1a 128 test vectors.
        assert_eq!(event_id(b""), "6c62272e07bb014262b821756295c58d");
        assert_eq!(event_id(b"a"), "d228cb696f1a8caf78912b704e4a8964");
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        for (milliseconds, expected) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (951_868_799_999, "2000-02-29T23:59:59.999Z"),
            (1_706_703_724_960, "2024-01-31T12:22:04.960Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339(milliseconds).as_deref(), Some(expected), "{milliseconds}");
        }
        assert_eq!(rfc3339(253_402_300_800_000), None);
        assert_eq!(rfc3339(u64::MAX), None);
    }

    #[test]
    fn invalid_settings_are_refused() {
        for (settings, reason) in [
            (&[("source", "")][..], "must not be empty"),
            (&[("source", "a"), ("source", "b")][..], "given twice"),
            (&[("type", "x")][..], "unknown setting `type`"),
        ] {
            let error = CloudEvents::configure(config(settings)).unwrap_err();
            assert!(error.contains(reason), "{settings:?}: {error}");
        }
    }
}
