//! Client events from brokers' system topics (spec §8): what a subscriber can learn about other
//! clients.
//!
//! - NanoMQ: `$SYS/brokers/client_status/<clientid>`, `online` → `client_connack`, `offline` →
//!   `client_disconnected`. The payload is written with `snprintf` and is not JSON: nothing in
//!   it is escaped, so it is read field by field without unescaping (see [`nanomq`]).
//! - EMQX 4/5 and RMQTT: `$SYS/brokers/<node>/clients/<clientid>/connected` → `client_connected`
//!   and `client_connack` (only accepted clients are announced), `…/disconnected` →
//!   `client_disconnected`; JSON payloads.
//!
//! Each message is read on its own: no state is kept between them, so an `offline` that arrives
//! before its `online` (NanoMQ does that for short-lived clients) is simply two events in the
//! order they came. A payload that cannot be read is an [`Unreadable`], counted and skipped by
//! the bridge.

use crate::event::{now_millis, Client, Connack, Connection, Disconnection, Event};

/// NanoMQ's client status topics: this prefix, then the client id (which may hold `/`).
pub const NANOMQ_PREFIX: &str = "$SYS/brokers/client_status/";
/// The filter for NanoMQ's client status topics.
pub const NANOMQ_FILTER: &str = "$SYS/brokers/client_status/#";
/// The filter for EMQX's and RMQTT's client topics.
pub const EMQX_FILTER: &str = "$SYS/brokers/+/clients/#";

/// A system message that is not a client event mqhook can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable client status on {topic}: {reason}")]
pub struct Unreadable {
    /// The topic it came on.
    pub topic: String,
    /// What is wrong.
    pub reason: String,
}

/// The client events a message on `topic` stands for: `None` when `topic` is no client topic
/// (an ordinary message).
pub fn client_events(topic: &str, payload: &[u8]) -> Option<Result<Vec<Event>, Unreadable>> {
    let unreadable = |reason: String| Unreadable { topic: topic.to_string(), reason };
    if let Some(clientid) = topic.strip_prefix(NANOMQ_PREFIX) {
        return Some(nanomq(clientid, payload).map_err(unreadable));
    }
    let levels: Vec<&str> = topic.split('/').collect();
    match levels.as_slice() {
        ["$SYS", "brokers", _node, "clients", id @ .., last @ ("connected" | "disconnected")] if !id.is_empty() => {
            Some(emqx(&id.join("/"), last == &"connected", payload).map_err(unreadable))
        }
        _ => None,
    }
}

/// One NanoMQ client status message (spec §8, with every quirk listed there):
/// - a stray `0x00` (MQTT 5 clients) or whitespace before the `{` is skipped;
/// - the client id is taken from the topic, never from the payload (it is not escaped there);
/// - string values are read raw, up to the next known key: a `"` or `\` inside a username is
///   kept as it is, as NanoMQ's own webhook would see it;
/// - `"username":"(null)"` (C's printf of a null pointer) is no username;
/// - `return_code` / `reason_code` are hexadecimal strings.
pub fn nanomq(clientid: &str, payload: &[u8]) -> Result<Vec<Event>, String> {
    if clientid.is_empty() {
        return Err("no client id in the topic".into());
    }
    let text = String::from_utf8_lossy(payload);
    let text = text.trim_start_matches(|c: char| c == '\0' || c.is_whitespace()).trim_end();
    let Some(body) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else {
        return Err("the payload is not a `{ … }` object".into());
    };
    let fields = Fields::read(body);
    let client = Client {
        clientid: clientid.to_string(),
        username: fields.text("username").filter(|name| !name.is_empty() && *name != "(null)").map(str::to_string),
    };
    match fields.text("status") {
        Some("online") => {
            let keepalive = fields.number("keepalive")?;
            let proto_ver = fields.number("proto_ver")?;
            if !(3..=5).contains(&proto_ver) {
                return Err(format!("`proto_ver` {proto_ver} is not 3, 4 or 5"));
            }
            let reason_code = match fields.text("return_code") {
                Some(code) => u8::from_str_radix(code.trim(), 16)
                    .map_err(|_| format!("`return_code` `{code}` is not a hexadecimal byte"))?,
                None => 0,
            };
            Ok(vec![Event::ClientConnack(Connack {
                client,
                keepalive: u16::try_from(keepalive).map_err(|_| "`keepalive` is out of range".to_string())?,
                proto_ver: proto_ver as u8,
                reason_code,
            })])
        }
        // NanoMQ's reason codes are nng's, not MQTT's (a clean MQTT 5 DISCONNECT reads "7"), and
        // NanoMQ's own webhook always says "normal": so does this.
        Some("offline") => Ok(vec![Event::ClientDisconnected(Disconnection { client, reason: "normal".into() })]),
        Some(other) => Err(format!("unknown status `{other}`")),
        None => Err("no `status`".into()),
    }
}

/// The `"key":value` pairs of a NanoMQ payload, values raw.
struct Fields<'a>(Vec<(&'a str, &'a str)>);

/// The keys NanoMQ writes; a value runs up to the next of them.
const NANOMQ_KEYS: &[&str] = &[
    "status",
    "username",
    "ts",
    "proto_name",
    "keepalive",
    "return_code",
    "reason_code",
    "proto_ver",
    "client_id",
    "clean_start",
    "IPv4",
    "IPv6",
];

impl<'a> Fields<'a> {
    fn read(body: &'a str) -> Fields<'a> {
        // Where each known key starts (`"key":`), in payload order.
        let mut starts: Vec<(usize, &str)> = NANOMQ_KEYS
            .iter()
            .flat_map(|key| {
                let pattern = format!("\"{key}\":");
                body.match_indices(&pattern).map(move |(at, _)| (at, *key)).collect::<Vec<_>>()
            })
            .collect();
        starts.sort();
        // A key inside an earlier raw value (a username `x","ts":1`) would cut that value short;
        // the first occurrence of each key wins, as the payload's order is fixed.
        let mut seen = Vec::new();
        starts.retain(|(_, key)| {
            let first = !seen.contains(key);
            seen.push(*key);
            first
        });
        let fields = starts
            .iter()
            .enumerate()
            .map(|(index, &(at, key))| {
                let value_start = at + key.len() + 3;
                let value_end = starts.get(index + 1).map_or(body.len(), |&(next, _)| next);
                let raw = body[value_start..value_end].trim();
                let raw = raw.strip_suffix(',').unwrap_or(raw).trim();
                let value = raw.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(raw);
                (key, value)
            })
            .collect();
        Fields(fields)
    }

    fn text(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn number(&self, key: &str) -> Result<u64, String> {
        let text = self.text(key).ok_or_else(|| format!("no `{key}`"))?;
        text.trim().parse().map_err(|_| format!("`{key}` `{text}` is not a number"))
    }
}

/// One EMQX / RMQTT `connected` or `disconnected` message.
fn emqx(clientid_from_topic: &str, connected: bool, payload: &[u8]) -> Result<Vec<Event>, String> {
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let text = |key: &str| value.get(key).and_then(serde_json::Value::as_str);
    let number = |key: &str| value.get(key).and_then(serde_json::Value::as_u64);
    let client = Client {
        clientid: text("clientid").unwrap_or(clientid_from_topic).to_string(),
        username: text("username").filter(|name| !name.is_empty() && *name != "undefined").map(str::to_string),
    };
    if !connected {
        let reason = if text("reason").is_none_or(|reason| reason == "normal") { "normal" } else { "abnormal" };
        return Ok(vec![Event::ClientDisconnected(Disconnection { client, reason: reason.into() })]);
    }
    let proto_ver = number("proto_ver").ok_or("no `proto_ver`")?;
    if !(3..=5).contains(&proto_ver) {
        return Err(format!("`proto_ver` {proto_ver} is not 3, 4 or 5"));
    }
    let keepalive =
        u16::try_from(number("keepalive").ok_or("no `keepalive`")?).map_err(|_| "`keepalive` is out of range")?;
    // EMQX 5 writes "ip:port", EMQX 4 the address alone; the body has the address alone.
    let ipaddress = text("ipaddress").unwrap_or_default();
    let ipaddress = match ipaddress.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr.ip().to_string(),
        Err(_) => ipaddress.to_string(),
    };
    let connected_at = number("connected_at").or_else(|| number("ts")).unwrap_or_else(now_millis);
    let proto_ver = proto_ver as u8;
    Ok(vec![
        Event::ClientConnack(Connack { client: client.clone(), keepalive, proto_ver, reason_code: 0 }),
        Event::ClientConnected(Connection { client, ipaddress, keepalive, proto_ver, connected_at }),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connack(events: &[Event]) -> &Connack {
        match &events[0] {
            Event::ClientConnack(connack) => connack,
            other => panic!("not a connack: {other:?}"),
        }
    }

    #[test]
    fn nanomq_online_and_offline() {
        let online = br#"{"status":"online", "username":"u1", "ts":1706703724960,"proto_name":"MQTT","keepalive":60,"return_code":"0","proto_ver":4,"client_id":"c1","clean_start":1, "IPv4":"127.0.0.1"}"#;
        let events = client_events("$SYS/brokers/client_status/c1", online).unwrap().unwrap();
        let c = connack(&events);
        assert_eq!((c.client.clientid.as_str(), c.client.username.as_deref()), ("c1", Some("u1")));
        assert_eq!((c.keepalive, c.proto_ver, c.reason_code), (60, 4, 0));
        let offline =
            br#"{"status":"offline", "username":"u1","ts":1706703725960,"reason_code":"0","client_id":"c1","IPv4":"127.0.0.1"}"#;
        let events = client_events("$SYS/brokers/client_status/c1", offline).unwrap().unwrap();
        assert!(
            matches!(&events[0], Event::ClientDisconnected(d) if d.reason == "normal" && d.client.clientid == "c1")
        );
    }

    #[test]
    fn nanomq_quirks() {
        // Hexadecimal return code, `(null)` username, a stray NUL (MQTT 5), raw quotes and a
        // backslash in the client id (taken from the topic) and the username.
        let payload = b"\0{\"status\":\"online\", \"username\":\"(null)\", \"ts\":1,\"proto_name\":\"MQTT\",\"keepalive\":30,\"return_code\":\"86\",\"proto_ver\":5,\"client_id\":\"pub\"q\",\"clean_start\":1, \"IPv4\":\"127.0.0.1\"}";
        let events = client_events("$SYS/brokers/client_status/pub\"q", payload).unwrap().unwrap();
        let c = connack(&events);
        assert_eq!((c.client.clientid.as_str(), c.client.username.as_deref()), ("pub\"q", None));
        assert_eq!((c.keepalive, c.proto_ver, c.reason_code), (30, 5, 0x86));
        let payload =
            br#"{"status":"offline", "username":"a"b\c","ts":1,"reason_code":"7","client_id":"x","IPv4":"127.0.0.1"}"#;
        let events = client_events("$SYS/brokers/client_status/x/y", payload).unwrap().unwrap();
        assert!(matches!(&events[0], Event::ClientDisconnected(d)
            if d.client.username.as_deref() == Some("a\"b\\c") && d.client.clientid == "x/y"));
    }

    #[test]
    fn unreadable_status_messages_say_why() {
        for payload in
            [&b""[..], b"garbage", b"{}", b"{\"status\":\"sideways\"}", b"{\"status\":\"online\"}", b"\xff\xfe{"]
        {
            assert!(client_events("$SYS/brokers/client_status/c", payload).unwrap().is_err());
        }
        assert!(client_events("$SYS/brokers/client_status/", b"{\"status\":\"offline\"}").unwrap().is_err());
        assert!(client_events("a/b", b"{}").is_none());
        assert!(client_events("$SYS/broker/load/bytes", b"1").is_none());
    }

    #[test]
    fn emqx_connected_and_disconnected() {
        let connected = br#"{"username":"u1","ts":5,"sockport":1883,"proto_ver":5,"proto_name":"MQTT","keepalive":60,"ipaddress":"127.0.0.1:50000","expiry_interval":0,"connected_at":4,"clientid":"c1","clean_start":true}"#;
        let events = client_events("$SYS/brokers/emqx@127.0.0.1/clients/c1/connected", connected).unwrap().unwrap();
        assert_eq!(events.len(), 2);
        assert!(matches!(&events[1], Event::ClientConnected(c) if c.ipaddress == "127.0.0.1" && c.connected_at == 4));
        let disconnected = br#"{"username":"u1","reason":"tcp_closed","clientid":"c1","disconnected_at":6}"#;
        let events = client_events("$SYS/brokers/n/clients/c1/disconnected", disconnected).unwrap().unwrap();
        assert!(matches!(&events[0], Event::ClientDisconnected(d) if d.reason == "abnormal"));
    }
}
