//! One spooled request on disk: a length, a CRC-32 of the payload, then the payload.
//!
//! The payload holds the sequence number, the event kind, the idempotency key, the client id
//! (for per-client order), the guest's path and headers, the body, and (optional, last) when its
//! event arrived. All integers are little
//! endian; strings and byte strings are length-prefixed. A frame whose checksum does not match is
//! never decoded, so a torn or flipped record is detected rather than delivered.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::event::EventKind;
use crate::request::Request;

/// Bytes before the payload: its length and its CRC-32.
pub(super) const FRAME_HEADER: usize = 8;
/// No record is larger; a length field above it marks the rest of a segment as unreadable.
pub(super) const MAX_PAYLOAD: usize = 256 << 20;

/// Appends one framed record to `out`.
pub(super) fn encode(seq: u64, request: &Request, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(request.kind.index() as u8);
    put_optional(out, request.idempotency_key.as_deref().map(str::as_bytes));
    put_optional(out, request.client.as_deref().map(str::as_bytes));
    put_optional(out, request.path.as_deref().map(str::as_bytes));
    out.extend_from_slice(&(request.headers.len() as u32).to_le_bytes());
    for (name, value) in &request.headers {
        put_bytes(out, name.as_str().as_bytes());
        put_bytes(out, value.as_bytes());
    }
    put_bytes(out, &request.body);
    // A trailer older versions never read: when the event arrived, in nanoseconds since the epoch.
    if let Some(nanos) = request.received_at.and_then(|at| at.duration_since(UNIX_EPOCH).ok()) {
        out.extend_from_slice(&u64::try_from(nanos.as_nanos()).unwrap_or(u64::MAX).to_le_bytes());
    }
    let payload = &out[start + FRAME_HEADER..];
    let length = payload.len() as u32;
    let checksum = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
}

/// What the start of a frame says: the payload length and its checksum.
pub(super) fn frame_header(bytes: &[u8; FRAME_HEADER]) -> (usize, u32) {
    let length = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    let checksum = u32::from_le_bytes(bytes[4..].try_into().expect("4 bytes"));
    (length, checksum)
}

/// Decodes a payload whose checksum matched. `None` if it is not a record this version wrote.
pub(super) fn decode(payload: &[u8]) -> Option<(u64, Request)> {
    let mut input = Input(payload);
    let seq = u64::from_le_bytes(input.take(8)?.try_into().ok()?);
    let kind = *EventKind::ALL.get(usize::from(input.take(1)?[0]))?;
    let idempotency_key = input.optional_string()?;
    let client = input.optional_string()?;
    let path = input.optional_string()?;
    let count = input.u32()?;
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = HeaderName::from_bytes(input.bytes()?).ok()?;
        let value = HeaderValue::from_bytes(input.bytes()?).ok()?;
        headers.push((name, value));
    }
    let body = Bytes::copy_from_slice(input.bytes()?);
    // Records written before the trailer existed end here.
    let received_at = match input.take(8) {
        Some(nanos) => Some(UNIX_EPOCH + Duration::from_nanos(u64::from_le_bytes(nanos.try_into().ok()?))),
        None => None,
    };
    Some((seq, Request { kind, body, headers, path, client, idempotency_key, received_at }))
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// `u32::MAX` as the length means "absent".
fn put_optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => put_bytes(out, bytes),
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let length = self.u32()? as usize;
        self.take(length)
    }

    /// `Some(None)` for an absent string, `None` for a malformed one.
    fn optional_string(&mut self) -> Option<Option<String>> {
        match self.u32()? {
            u32::MAX => Some(None),
            length => Some(Some(String::from_utf8(self.take(length as usize)?.to_vec()).ok()?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_a_flipped_bit_is_caught() {
        let request = Request {
            kind: EventKind::MessagePublish,
            body: Bytes::from_static(b"{\"payload\":\"\xff\"}"),
            headers: vec![(HeaderName::from_static("x-a"), HeaderValue::from_static("1"))],
            path: Some("/p".into()),
            client: Some("c1".into()),
            idempotency_key: Some("k-7".into()),
            received_at: Some(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_795_875_941_711_000_123)),
        };
        let mut frame = Vec::new();
        encode(7, &request, &mut frame);
        let (length, checksum) = frame_header(frame[..FRAME_HEADER].try_into().unwrap());
        assert_eq!(length, frame.len() - FRAME_HEADER);
        assert_eq!(checksum, crc32fast::hash(&frame[FRAME_HEADER..]));
        let (seq, decoded) = decode(&frame[FRAME_HEADER..]).unwrap();
        assert_eq!(seq, 7);
        assert_eq!(decoded.body, request.body);
        assert_eq!(decoded.headers, request.headers);
        assert_eq!(
            (decoded.path, decoded.client, decoded.idempotency_key, decoded.received_at),
            (request.path, request.client, request.idempotency_key, request.received_at)
        );
        frame[20] ^= 1;
        assert_ne!(crc32fast::hash(&frame[FRAME_HEADER..]), checksum);
    }
}
