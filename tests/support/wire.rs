//! A minimal MQTT 3.1.1 / 5 client: clean sessions, QoS 0 publishing, every read bounded.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const READ_LIMIT: Duration = Duration::from_secs(10);
const MQTT_5: u8 = 5;

/// What goes into CONNECT.
pub struct Connect<'a> {
    /// Protocol level: 4 (MQTT 3.1.1) or 5.
    pub version: u8,
    pub clientid: &'a str,
    pub username: Option<&'a str>,
    pub keepalive: u16,
    /// MQTT 5 Authentication Method property (enhanced authentication).
    pub authentication_method: Option<&'a str>,
}

pub struct Client {
    stream: TcpStream,
    version: u8,
}

impl Client {
    /// Connects and reads CONNACK; returns the client and the CONNACK return/reason code.
    pub async fn connect(broker: SocketAddr, connect: &Connect<'_>) -> (Client, u8) {
        let stream = TcpStream::connect(broker).await.expect("connecting to the broker");
        let mut client = Client { stream, version: connect.version };
        client.send(&connect_packet(connect)).await;
        let (header, body) = client.read().await;
        assert_eq!(header, 0x20, "expected CONNACK, got {header:#04x}");
        (client, body[1])
    }

    /// SUBSCRIBE with `(topic filter, options byte)` pairs; waits for SUBACK.
    pub async fn subscribe(&mut self, packet_id: u16, filters: &[(&str, u8)]) {
        let mut body = packet_id.to_be_bytes().to_vec();
        self.no_properties(&mut body);
        for (filter, options) in filters {
            string(&mut body, filter);
            body.push(*options);
        }
        self.send(&packet(0x82, &body)).await;
        self.expect(0x90, "SUBACK").await;
    }

    /// UNSUBSCRIBE; waits for UNSUBACK.
    pub async fn unsubscribe(&mut self, packet_id: u16, filters: &[&str]) {
        let mut body = packet_id.to_be_bytes().to_vec();
        self.no_properties(&mut body);
        for filter in filters {
            string(&mut body, filter);
        }
        self.send(&packet(0xA2, &body)).await;
        self.expect(0xB0, "UNSUBACK").await;
    }

    /// PUBLISH at QoS 0.
    pub async fn publish(&mut self, topic: &str, retain: bool, payload: &[u8]) {
        let mut body = Vec::new();
        string(&mut body, topic);
        self.no_properties(&mut body);
        body.extend_from_slice(payload);
        self.send(&packet(0x30 | u8::from(retain), &body)).await;
    }

    /// Reads the next packet, which must be a PUBLISH; returns its topic and payload.
    pub async fn next_publish(&mut self) -> (String, Vec<u8>) {
        let (header, body) = self.read().await;
        assert_eq!(header & 0xF0, 0x30, "expected PUBLISH, got {header:#04x}");
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = String::from_utf8(body[2..2 + topic_len].to_vec()).expect("a UTF-8 topic");
        let mut at = 2 + topic_len;
        if header & 0x06 != 0 {
            at += 2; // packet identifier
        }
        if self.version == MQTT_5 {
            let (length, used) = varint(&body[at..]);
            at += used + length;
        }
        (topic, body[at..].to_vec())
    }

    /// DISCONNECT (MQTT 5: reason 0, normal), then closes the connection.
    pub async fn disconnect(mut self) {
        self.send(&[0xE0, 0x00]).await;
    }

    fn no_properties(&self, body: &mut Vec<u8>) {
        if self.version == MQTT_5 {
            body.push(0);
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("writing to the broker");
    }

    async fn expect(&mut self, header: u8, name: &str) {
        let (got, _) = self.read().await;
        assert_eq!(got, header, "expected {name}, got {got:#04x}");
    }

    /// One packet: its first byte and its body.
    async fn read(&mut self) -> (u8, Vec<u8>) {
        let stream = &mut self.stream;
        timeout(READ_LIMIT, async move {
            let header = stream.read_u8().await.expect("reading a packet");
            let mut length = 0usize;
            for shift in (0..28).step_by(7) {
                let byte = stream.read_u8().await.expect("reading a packet length");
                length |= usize::from(byte & 0x7F) << shift;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            let mut body = vec![0; length];
            stream.read_exact(&mut body).await.expect("reading a packet body");
            (header, body)
        })
        .await
        .expect("the broker answers in time")
    }
}

fn connect_packet(connect: &Connect<'_>) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.push(connect.version);
    let clean_session = 0x02;
    let username = if connect.username.is_some() { 0x80 } else { 0 };
    body.push(clean_session | username);
    body.extend_from_slice(&connect.keepalive.to_be_bytes());
    if connect.version == MQTT_5 {
        let mut properties = Vec::new();
        if let Some(method) = connect.authentication_method {
            properties.push(0x15);
            string(&mut properties, method);
        }
        put_varint(&mut body, properties.len());
        body.extend_from_slice(&properties);
    }
    string(&mut body, connect.clientid);
    if let Some(username) = connect.username {
        string(&mut body, username);
    }
    packet(0x10, &body)
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![header];
    put_varint(&mut bytes, body.len());
    bytes.extend_from_slice(body);
    bytes
}

fn put_varint(bytes: &mut Vec<u8>, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        bytes.push(byte);
        if value == 0 {
            return;
        }
    }
}

/// A variable byte integer at the start of `bytes`: its value and how many bytes it took.
fn varint(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0;
    for (index, byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return (value, index + 1);
        }
    }
    panic!("a malformed variable byte integer");
}

fn string(bytes: &mut Vec<u8>, text: &str) {
    let length = u16::try_from(text.len()).expect("an MQTT string is at most 65535 bytes");
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(text.as_bytes());
}
