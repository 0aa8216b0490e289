//! A tiny writer for compact JSON objects whose keys come out in the order they are written.
//!
//! Webhook bodies are flat objects with a fixed key order (spec §2), so a general JSON library
//! would only add size to the component. Keys are literals that need no escape; string values are
//! escaped exactly as spec §2 says: `"` and `\` get a backslash, `\b \f \n \r \t` their short
//! escapes, every other byte below 0x20 becomes `\u00xx` in lower-case hex, and everything else —
//! `/`, 0x7F, non-ASCII UTF-8 — is written as it is. Rust strings are valid UTF-8, so the output
//! is always valid JSON text.
#![forbid(unsafe_code)]

/// A JSON object being written: `{` is already out, members follow in call order.
#[derive(Debug)]
pub struct JsonObject {
    out: Vec<u8>,
    has_members: bool,
}

impl JsonObject {
    /// Starts an object, reserving `capacity` bytes for the whole text.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity);
        out.push(b'{');
        Self { out, has_members: false }
    }

    /// Adds `"key":"value"`.
    #[inline]
    pub fn string(&mut self, key: &'static str, value: &str) -> &mut Self {
        self.key(key);
        write_string(&mut self.out, value);
        self
    }

    /// Adds `"key":"value"` when there is a value, else `"key":null`.
    #[inline]
    pub fn string_or_null(&mut self, key: &'static str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.string(key, value),
            None => self.null(key),
        }
    }

    /// Adds `"key":123`.
    #[inline]
    pub fn number(&mut self, key: &'static str, value: u64) -> &mut Self {
        self.key(key);
        write_decimal(&mut self.out, value);
        self
    }

    /// Adds `"key":true` or `"key":false`.
    #[inline]
    pub fn bool(&mut self, key: &'static str, value: bool) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// Adds `"key":null`.
    #[inline]
    pub fn null(&mut self, key: &'static str) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(b"null");
        self
    }

    /// Adds `"key":{…}` with a finished nested object.
    #[inline]
    pub fn object(&mut self, key: &'static str, value: JsonObject) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(&value.finish());
        self
    }

    /// Closes the object and returns its text.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }

    /// Writes `"key":`, after a comma unless it is the first member. Keys are the bodies' own
    /// literals, none of which needs an escape, so they are written as they are; inlined, each is
    /// a copy of known size, which a wasm guest does with a few stores instead of a `memory.copy`
    /// call into the host.
    #[inline(always)]
    fn key(&mut self, key: &'static str) {
        debug_assert_eq!(clean_prefix(key.as_bytes()), key.len(), "the key {key:?} needs an escape");
        self.out.reserve(key.len() + 4);
        if self.has_members {
            self.out.push(b',');
        }
        self.has_members = true;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }
}

/// `value` as the inside of a JSON string, escaped as spec §2 says (no quotes added). The host's
/// `encoding.json-escape` import is this function.
pub fn escape(value: &str) -> String {
    let mut out = Vec::with_capacity(value.len());
    escape_into(&mut out, value);
    String::from_utf8(out).expect("escaping keeps UTF-8 valid: only ASCII is inserted, at ASCII bytes")
}

/// Appends `value` as a quoted, escaped JSON string.
fn write_string(out: &mut Vec<u8>, value: &str) {
    out.reserve(value.len() + 2);
    out.push(b'"');
    escape_into(out, value);
    out.push(b'"');
}

/// Appends `value`, escaped, without quotes.
fn escape_into(out: &mut Vec<u8>, value: &str) {
    let mut rest = value.as_bytes();
    // Copy runs of bytes that need no escape in one go; most strings are one such run.
    loop {
        let run = clean_prefix(rest);
        out.extend_from_slice(&rest[..run]);
        let Some(&byte) = rest.get(run) else { return };
        match ESCAPES[usize::from(byte)] {
            b'u' => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let (high, low) = (HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0x0F)]);
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', high, low]);
            }
            short => out.extend_from_slice(&[b'\\', short]),
        }
        rest = &rest[run + 1..];
    }
}

/// For each byte value: 0 when it is written as it is, else the character its escape puts after
/// the backslash (`u` for the six-character `\u00xx`).
const ESCAPES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x0C] = b'f';
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// How many bytes at the start of `bytes` need no escape. Eight bytes are tested at a time
/// (a word-at-a-time test that is exact for "some byte in the word needs one"); when every whole
/// word is clean, the last eight bytes, overlapping the last word, stand for the tail; only a word
/// that has a byte to escape, or a string shorter than a word, is searched byte by byte. A payload
/// is mostly long runs, and this loop is most of a body's cost, in the guest even more than
/// natively.
fn clean_prefix(bytes: &[u8]) -> usize {
    let word = |chunk: &[u8]| {
        u64::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7]])
    };
    let mut clean = 0;
    for chunk in bytes.chunks_exact(8) {
        if needs_escape(word(chunk)) {
            break;
        }
        clean += 8;
    }
    if clean == bytes.len() {
        return clean;
    }
    if clean == bytes.len() & !7 && clean >= 8 && !needs_escape(word(&bytes[bytes.len() - 8..])) {
        return bytes.len();
    }
    let tail = &bytes[clean..];
    clean + tail.iter().position(|&byte| ESCAPES[usize::from(byte)] != 0).unwrap_or(tail.len())
}

/// Whether some byte of `word` needs an escape: a control byte, `"` or `\`.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Bit 7 of a byte is set where that byte of `word` is below `limit` (`limit` ≤ 0x80), when
    // no lower byte borrowed: exact for "any byte below", which is all this asks.
    let below = |word: u64, limit: u8| word.wrapping_sub(ONES * u64::from(limit)) & !word;
    let control = below(word, 0x20);
    let quote = below(word ^ (ONES * u64::from(b'"')), 1);
    let backslash = below(word ^ (ONES * u64::from(b'\\')), 1);
    (control | quote | backslash) & HIGHS != 0
}

/// Appends `value` in decimal.
fn write_decimal(out: &mut Vec<u8>, value: u64) {
    // u64::MAX has 20 digits.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut put = |mut low: u32, at_least: usize| {
        let end = start;
        while low != 0 || end - start < at_least {
            // low / 10, exact for every u32, as a multiply: LLVM keeps division instructions in
            // wasm (tens of cycles each) where natively it would multiply.
            let tenth = ((u64::from(low) * 0xCCCC_CCCD) >> 35) as u32;
            start -= 1;
            digits[start] = b'0' + (low - tenth * 10) as u8;
            low = tenth;
        }
    };
    // Eight digits at a time split off in u64 (one division each), then digit by digit in u32.
    let mut high = value;
    while high >= 100_000_000 {
        put((high % 100_000_000) as u32, 8);
        high /= 100_000_000;
    }
    put(high as u32, 1);
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(value: &str) -> String {
        let mut out = Vec::new();
        write_string(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn members_keep_their_order_and_types() {
        let mut opts = JsonObject::with_capacity(16);
        opts.number("qos", 1);
        let mut object = JsonObject::with_capacity(64);
        object
            .number("z", 0)
            .string("a", "x")
            .bool("t", true)
            .bool("f", false)
            .null("n")
            .string_or_null("s", Some("y"))
            .string_or_null("o", None)
            .object("opts", opts)
            .number("max", u64::MAX);
        assert_eq!(
            String::from_utf8(object.finish()).unwrap(),
            r#"{"z":0,"a":"x","t":true,"f":false,"n":null,"s":"y","o":null,"opts":{"qos":1},"max":18446744073709551615}"#
        );
    }

    #[test]
    fn numbers_are_written_in_decimal_with_no_leading_zeros() {
        let mut values = vec![0, 1, 9, 10, 99_999_999, 100_000_000, 100_000_001, 1_706_703_724_960, u64::MAX];
        values.extend((0..20).map(|exponent| 10u64.pow(exponent)));
        values.extend((1..20).map(|exponent| 10u64.pow(exponent) - 1));
        values.extend((0..64).map(|shift| 1u64 << shift));
        values.extend([u64::from(u32::MAX), 4_294_967_290, 99_999_990, 1_999_999_999_999]);
        values.extend((0..=u64::from(u32::MAX)).step_by(99_991));
        for value in values {
            let mut out = Vec::new();
            write_decimal(&mut out, value);
            assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
        }
    }

    #[test]
    fn empty_object() {
        assert_eq!(JsonObject::with_capacity(2).finish(), b"{}");
    }

    #[test]
    fn quote_and_backslash_are_escaped() {
        assert_eq!(escaped(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn short_escapes() {
        assert_eq!(escaped("\u{8}\u{c}\n\r\t"), r#""\b\f\n\r\t""#);
    }

    #[test]
    fn other_control_bytes_are_lower_case_unicode_escapes() {
        assert_eq!(escaped("\0\u{1}\u{b}\u{1a}\u{1f}"), r#""\u0000\u0001\u000b\u001a\u001f""#);
    }

    #[test]
    fn slash_del_and_non_ascii_are_written_as_they_are() {
        assert_eq!(escaped("a/b\u{7f}é€😀"), "\"a/b\u{7f}é€😀\"");
    }

    /// Spec §2's escape, one character at a time: what the word-at-a-time scan must agree with.
    fn escaped_char_by_char(value: &str) -> String {
        let mut out = String::from("\"");
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\0'..='\u{1f}' => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                _ => out.push(c),
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn every_ascii_character_at_every_place_of_a_word_is_escaped_as_the_spec_says() {
        // 19 bytes: two whole words and a tail, with multi-byte characters around the one tested.
        for place in 0..17 {
            for byte in 0u8..0x80 {
                let mut value: Vec<char> = "abé€cdefghij😀kl".chars().collect();
                value.insert(place.min(value.len()), char::from(byte));
                let value: String = value.into_iter().collect();
                assert_eq!(escaped(&value), escaped_char_by_char(&value), "byte {byte:#04x} at {place}");
                let twice = format!("{value}{value}");
                assert_eq!(escaped(&twice), escaped_char_by_char(&twice), "byte {byte:#04x} at {place}, twice");
            }
        }
    }

    #[test]
    fn an_escape_anywhere_in_strings_of_every_length_up_to_three_words_is_found() {
        // Covers strings shorter than a word (byte by byte), whole words, and the overlapping last
        // word that stands for a tail.
        for len in 0..=24 {
            for place in 0..=len {
                for byte in [b'"', b'\\', 0x00, 0x1f, b' ', b'a', 0x7f] {
                    let mut value = vec![b'x'; len];
                    if place < len {
                        value[place] = byte;
                    }
                    let value = String::from_utf8(value).unwrap();
                    assert_eq!(escaped(&value), escaped_char_by_char(&value), "{byte:#04x} at {place} of {len}");
                }
            }
        }
    }

    #[test]
    fn escapes_between_plain_runs() {
        assert_eq!(escaped("ab\ncd\u{2}ef"), r#""ab\ncd\u0002ef""#);
    }
}
