//! The `payload` field of message bodies: plain, base64 or base62 (spec §3).
//!
//! | encoding | non-empty payload | empty payload |
//! |---|---|---|
//! | plain | the bytes as a JSON string | key `payload` omitted |
//! | base64 | RFC 4648, standard alphabet, `=` padded | `"payload":null` |
//! | base62 | the payload as one big-endian integer in `0-9A-Za-z` | `"payload":""` |
//!
//! **Plain payloads that are not UTF-8.** NanoMQ copies such bytes raw, which makes the body
//! invalid JSON, and cuts the payload at its first NUL byte. mqhook does neither: a payload that is
//! valid UTF-8 is written as a JSON string with the usual escapes (so NUL becomes `\u0000`); a
//! payload that is not valid UTF-8 is written base64-encoded instead, and the key
//! `"payload_encoding":"base64"` follows `payload` immediately to say so. Receivers that only know
//! NanoMQ see a string either way; receivers that care can decode the bytes losslessly.
//!
//! **base62** reads the whole payload as one big-endian unsigned integer; each leading 0x00 byte
//! adds one leading `'0'`. Repeated division by 62 would be quadratic in the payload size, so the
//! conversion divides and conquers instead: split the number by 62^h, where h is half its digit
//! count, convert both parts recursively and zero-pad the low ones, down to leaves of at most 20
//! digits that fit a `u128`. With dashu's sub-quadratic multiplication and division the cost grows
//! like n^1.6 rather than n².
#![forbid(unsafe_code)]

use std::borrow::Cow;

use base64::Engine as _;
use dashu_int::ops::{BitTest as _, DivRem as _};
use dashu_int::UBig;

use crate::PayloadEncoding;

/// How the `payload` key of one message body is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadField<'a> {
    /// No `payload` key at all (plain, empty payload).
    Omitted,
    /// `"payload":null` (base64, empty payload).
    Null,
    /// `"payload":"…"` with this text, JSON-escaped.
    Text(Cow<'a, str>),
    /// `"payload":"…"` with this base64 text, then `"payload_encoding":"base64"`: a plain payload
    /// that is not valid UTF-8.
    Base64Fallback(String),
}

/// Encodes `payload` the way `encoding` says.
pub fn payload_field(encoding: PayloadEncoding, payload: &[u8]) -> PayloadField<'_> {
    match encoding {
        PayloadEncoding::Plain if payload.is_empty() => PayloadField::Omitted,
        PayloadEncoding::Plain => match std::str::from_utf8(payload) {
            Ok(text) => PayloadField::Text(Cow::Borrowed(text)),
            Err(_) => PayloadField::Base64Fallback(base64(payload)),
        },
        PayloadEncoding::Base64 if payload.is_empty() => PayloadField::Null,
        PayloadEncoding::Base64 => PayloadField::Text(Cow::Owned(base64(payload))),
        PayloadEncoding::Base62 => PayloadField::Text(Cow::Owned(base62(payload))),
    }
}

/// RFC 4648 base64 with the standard alphabet and `=` padding.
pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The base-62 digits, `'0'` = 0, `'A'` = 10, `'a'` = 36, `'z'` = 61.
const BASE62_ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The most digits a leaf of the conversion holds: 62^20 < 2^120, so a leaf fits a `u128`.
const LEAF_DIGITS: usize = 20;

/// 62^10 < 2^64: a leaf is converted as two `u64` halves of this many digits.
const HALF_LEAF_DIGITS: usize = 10;

/// The most bytes the host's `encoding.base62` import takes (the WIT says so).
pub const BASE62_MAX_INPUT: usize = 64 * 1024;

/// The most bytes the host's other `encoding` imports take.
pub const ENCODING_MAX_INPUT: usize = 16 * 1024 * 1024;

/// `payload` as one big-endian integer in base 62; each leading 0x00 byte adds a leading `'0'`.
/// In a component, the host computes it (`encoding.base62`, native speed) when the payload is
/// within that import's cap: wasm has no 64×64→128-bit multiply, which big-integer division needs.
pub fn base62(payload: &[u8]) -> String {
    #[cfg(target_arch = "wasm32")]
    if payload.len() <= BASE62_MAX_INPUT {
        if let Some(digits) = crate::mqhook::filter::encoding::base62(payload) {
            return digits;
        }
    }
    base62_here(payload)
}

/// [`base62`], computed in this process.
pub fn base62_here(payload: &[u8]) -> String {
    let leading_zeros = payload.iter().take_while(|&&byte| byte == 0).count();
    let significant = &payload[leading_zeros..];
    let mut digits = vec![b'0'; leading_zeros];
    if !significant.is_empty() {
        let value = UBig::from_be_bytes(significant);
        // log2(62) > 5.954, so this bounds the digit count from above; the first digits are
        // written without padding, so an overestimate only shifts where the number is split.
        let max_digits = value.bit_len() * 1000 / 5954 + 1;
        digits.reserve(max_digits);
        write_base62(value, &Split::plan(max_digits), Width::Minimal, &mut digits);
    }
    String::from_utf8(digits).expect("base-62 digits are ASCII")
}

/// One level of the divide-and-conquer conversion: numbers of up to `2 * low_digits` digits are
/// split into their `low_digits` low digits and the rest, by 62^low_digits.
///
/// Division by 62^h = 2^h · 31^h is a shift by `h` bits and a division by the 17 % shorter 31^h.
struct Split {
    low_digits: usize,
    /// 31^low_digits.
    odd_factor: UBig,
}

impl Split {
    /// The levels for numbers of up to `max_digits` digits, largest first: each level halves the
    /// digit count (rounding up) until pieces fit a leaf, so the splits stay balanced.
    fn plan(max_digits: usize) -> Vec<Split> {
        let mut low_digits = Vec::new();
        let mut piece_digits = max_digits;
        while piece_digits > LEAF_DIGITS {
            piece_digits = piece_digits.div_ceil(2);
            low_digits.push(piece_digits);
        }
        // Each power comes from the next smaller one: h = 2c or 2c - 1, so 31^h = (31^c)² or
        // (31^c)² / 31.
        let mut splits: Vec<Split> = Vec::with_capacity(low_digits.len());
        for &digits in low_digits.iter().rev() {
            let odd_factor = match splits.last() {
                None => UBig::from(31u8).pow(digits),
                Some(smaller) if digits == 2 * smaller.low_digits => smaller.odd_factor.sqr(),
                Some(smaller) => smaller.odd_factor.sqr() / 31u8,
            };
            splits.push(Split { low_digits: digits, odd_factor });
        }
        splits.reverse();
        splits
    }
}

/// How many digits a piece of the number is written with.
#[derive(Clone, Copy)]
enum Width {
    /// The leading piece: no leading zeros.
    Minimal,
    /// A lower piece: exactly this many digits, zero-padded.
    Exact(usize),
}

/// Writes `value` (below 62^(2·splits[0].low_digits), or a leaf when `splits` is empty).
fn write_base62(value: UBig, splits: &[Split], width: Width, out: &mut Vec<u8>) {
    let Some((split, smaller_splits)) = splits.split_first() else {
        let leaf = u128::try_from(value).expect("a leaf is below 62^20 < 2^120");
        write_leaf(leaf, width, out);
        return;
    };
    let low_digits = split.low_digits;
    // Rounding up at every level can leave a padded piece no wider than this level's split
    // (for example 10 digits against a split of 11): it has no high part, so it goes on whole.
    if matches!(width, Width::Exact(digits) if digits <= low_digits) {
        write_base62(value, smaller_splits, width, out);
        return;
    }
    let (low_bits, shifted) = value.split_bits(low_digits);
    let (high, low_odd) = shifted.div_rem(&split.odd_factor);
    let low = (low_odd << low_digits) | low_bits;
    match width {
        Width::Minimal if high.is_zero() => write_base62(low, smaller_splits, Width::Minimal, out),
        Width::Minimal => {
            write_base62(high, smaller_splits, Width::Minimal, out);
            write_base62(low, smaller_splits, Width::Exact(low_digits), out);
        }
        Width::Exact(digits) => {
            write_base62(high, smaller_splits, Width::Exact(digits - low_digits), out);
            write_base62(low, smaller_splits, Width::Exact(low_digits), out);
        }
    }
}

/// Writes a value below 62^LEAF_DIGITS.
fn write_leaf(leaf: u128, width: Width, out: &mut Vec<u8>) {
    const HALF_LEAF_BASE: u64 = 62u64.pow(HALF_LEAF_DIGITS as u32);
    let mut digits = [b'0'; LEAF_DIGITS];
    // One u128 division, then u64 arithmetic, which is much cheaper per digit.
    let halves = [(leaf % u128::from(HALF_LEAF_BASE)) as u64, (leaf / u128::from(HALF_LEAF_BASE)) as u64];
    let mut first_significant = LEAF_DIGITS;
    for (half_index, mut half) in halves.into_iter().enumerate() {
        let end = LEAF_DIGITS - half_index * HALF_LEAF_DIGITS;
        for position in (end - HALF_LEAF_DIGITS..end).rev() {
            if half == 0 {
                break;
            }
            digits[position] = BASE62_ALPHABET[(half % 62) as usize];
            half /= 62;
            first_significant = position;
        }
    }
    let start = match width {
        Width::Minimal => first_significant,
        Width::Exact(width) => LEAF_DIGITS - width,
    };
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook O(n²) conversion, to check the fast one against.
    fn base62_by_long_division(payload: &[u8]) -> String {
        let leading_zeros = payload.iter().take_while(|&&byte| byte == 0).count();
        let mut number: Vec<u8> = payload[leading_zeros..].to_vec();
        let mut reversed_digits = Vec::new();
        while !number.is_empty() {
            let mut remainder = 0u32;
            let mut quotient = Vec::with_capacity(number.len());
            for &byte in &number {
                let accumulator = remainder * 256 + u32::from(byte);
                let digit = accumulator / 62;
                remainder = accumulator % 62;
                if !(quotient.is_empty() && digit == 0) {
                    quotient.push(digit as u8);
                }
            }
            reversed_digits.push(BASE62_ALPHABET[remainder as usize]);
            number = quotient;
        }
        let mut text = "0".repeat(leading_zeros);
        text.extend(reversed_digits.iter().rev().map(|&digit| char::from(digit)));
        text
    }

    /// Deterministic, varied bytes (xorshift64), no rand crate needed.
    fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn base62_spec_vectors() {
        let vectors: &[(&[u8], &str)] = &[
            (b"hello", "7tQLFHz"),
            (&[0xff, 0xfe, 0x00], "18OO0"),
            (&[0x00, 0x00, 0x01], "001"),
            (&[0x00], "0"),
            (&[0x3d], "z"),
            (&[0x3e], "10"),
            (&[0xfb, 0xff], "GmV"),
            (b"i", "1h"),
            (b"messagei+/", "2a7oZkl5ty6sG7"),
            (b"", ""),
        ];
        for &(payload, expected) in vectors {
            assert_eq!(base62(payload), expected, "payload {payload:02x?}");
        }
    }

    #[test]
    fn base64_spec_vectors() {
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
        assert_eq!(base64(b"messagei+/"), "bWVzc2FnZWkrLw==");
    }

    #[test]
    fn base62_matches_long_division_across_sizes() {
        // Sizes around the leaf and power boundaries, and a few KB to exercise deep recursion.
        for (seed, len) in [1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200, 1000, 3001, 4096].into_iter().enumerate() {
            let payload = pseudo_random_bytes(len, seed as u64 + 1);
            assert_eq!(base62(&payload), base62_by_long_division(&payload), "length {len}");
        }
    }

    #[test]
    fn base62_pads_inner_zero_digits() {
        // 62^k and 62^k - 1 have long runs of '0' and 'z' digits that cross leaf and split borders.
        for exponent in [10u32, 20, 40, 41, 80, 160, 333] {
            let power = UBig::from(62u8).pow(exponent as usize);
            let below = &power - UBig::ONE;
            assert_eq!(base62(&power.to_be_bytes()), format!("1{}", "0".repeat(exponent as usize)));
            assert_eq!(base62(&below.to_be_bytes()), "z".repeat(exponent as usize));
        }
    }

    #[test]
    fn base62_leading_zero_bytes_before_a_large_number() {
        let mut payload = vec![0, 0, 0];
        payload.extend(pseudo_random_bytes(2000, 99));
        payload[3] |= 1;
        let encoded = base62(&payload);
        assert!(encoded.starts_with("000") && !encoded[3..].starts_with('0'));
        assert_eq!(encoded, base62_by_long_division(&payload));
    }

    /// Reads base-62 text back into bytes: leading '0's are zero bytes, the rest one integer.
    fn decode_base62(text: &str) -> Vec<u8> {
        let leading_zeros = text.bytes().take_while(|&digit| digit == b'0').count();
        let digit_value = |digit: u8| BASE62_ALPHABET.iter().position(|&d| d == digit).unwrap() as u64;
        let mut value = UBig::ZERO;
        // Horner's rule over chunks of ten digits (62^10 fits u64) keeps the check quick enough.
        for chunk in text.as_bytes()[leading_zeros..].chunks(HALF_LEAF_DIGITS) {
            let chunk_value = chunk.iter().fold(0u64, |acc, &digit| acc * 62 + digit_value(digit));
            value = value * UBig::from(62u64.pow(chunk.len() as u32)) + UBig::from(chunk_value);
        }
        let mut bytes = vec![0u8; leading_zeros];
        if !value.is_zero() {
            bytes.extend_from_slice(&value.to_be_bytes());
        }
        bytes
    }

    #[test]
    fn base62_64_kib_round_trip() {
        let mut payload = pseudo_random_bytes(64 * 1024, 7);
        payload[0] |= 0x80;
        let encoded = base62(&payload);
        // 2^524287 ≤ value < 2^524288 and log2(62) ≈ 5.9542, so log62(value) ≈ 88053.4: 88054 digits.
        assert_eq!(encoded.len(), 88_054);
        assert!(encoded.bytes().all(|digit| BASE62_ALPHABET.contains(&digit)));
        assert_eq!(decode_base62(&encoded), payload);
    }

    #[test]
    fn base62_padded_pieces_narrower_than_their_split() {
        // With the first bit set, these lengths give 81921 and 81922 digits, where halving with
        // rounding up leaves a padded 10-digit piece against a split of 11 digits.
        for len in [60_969, 60_970] {
            let mut payload = pseudo_random_bytes(len, len as u64);
            payload[0] |= 0x80;
            assert_eq!(decode_base62(&base62(&payload)), payload, "length {len}");
        }
    }

    #[test]
    fn plain_payload_field() {
        assert_eq!(payload_field(PayloadEncoding::Plain, b""), PayloadField::Omitted);
        assert_eq!(payload_field(PayloadEncoding::Plain, b"Hello World!"), PayloadField::Text("Hello World!".into()));
        assert_eq!(payload_field(PayloadEncoding::Plain, b"a\0b"), PayloadField::Text("a\0b".into()));
        assert_eq!(
            payload_field(PayloadEncoding::Plain, &[0xff, 0xfe, 0x00]),
            PayloadField::Base64Fallback("//4A".into())
        );
    }

    #[test]
    fn base64_payload_field() {
        assert_eq!(payload_field(PayloadEncoding::Base64, b""), PayloadField::Null);
        assert_eq!(payload_field(PayloadEncoding::Base64, b"hello"), PayloadField::Text("aGVsbG8=".into()));
    }

    #[test]
    fn base62_payload_field() {
        assert_eq!(payload_field(PayloadEncoding::Base62, b""), PayloadField::Text("".into()));
        assert_eq!(payload_field(PayloadEncoding::Base62, b"hello"), PayloadField::Text("7tQLFHz".into()));
    }
}
