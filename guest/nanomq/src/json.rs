//! A tiny writer for compact JSON objects whose keys come out in the order they are written.
//!
//! Webhook bodies are flat objects with a fixed key order (spec §2), so a general JSON library
//! would only add size to the component. Strings are escaped exactly as spec §2 says: `"` and `\`
//! get a backslash, `\b \f \n \r \t` their short escapes, every other byte below 0x20 becomes
//! `\u00xx` in lower-case hex, and everything else — `/`, 0x7F, non-ASCII UTF-8 — is written as it
//! is. Rust strings are valid UTF-8, so the output is always valid JSON text.
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
    pub fn string(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        write_string(&mut self.out, value);
        self
    }

    /// Adds `"key":"value"` when there is a value, else `"key":null`.
    pub fn string_or_null(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.string(key, value),
            None => self.null(key),
        }
    }

    /// Adds `"key":123`.
    pub fn number(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        write_decimal(&mut self.out, value);
        self
    }

    /// Adds `"key":true` or `"key":false`.
    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// Adds `"key":null`.
    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(b"null");
        self
    }

    /// Adds `"key":{…}` with a finished nested object.
    pub fn object(&mut self, key: &str, value: JsonObject) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(&value.finish());
        self
    }

    /// Closes the object and returns its text.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }

    fn key(&mut self, key: &str) {
        if self.has_members {
            self.out.push(b',');
        }
        self.has_members = true;
        write_string(&mut self.out, key);
        self.out.push(b':');
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
    let bytes = value.as_bytes();
    // Copy runs of bytes that need no escape in one go; most strings are one such run.
    let mut run_start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let mut unicode_escape = *b"\\u0000";
        let escape: &[u8] = match byte {
            b'"' => br#"\""#,
            b'\\' => br"\\",
            0x08 => br"\b",
            0x0C => br"\f",
            b'\n' => br"\n",
            b'\r' => br"\r",
            b'\t' => br"\t",
            0x00..=0x1F => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                unicode_escape[4] = HEX[usize::from(byte >> 4)];
                unicode_escape[5] = HEX[usize::from(byte & 0x0F)];
                &unicode_escape
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[run_start..index]);
        out.extend_from_slice(escape);
        run_start = index + 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
}

/// Appends `value` in decimal.
fn write_decimal(out: &mut Vec<u8>, mut value: u64) {
    // u64::MAX has 20 digits.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
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

    #[test]
    fn escapes_between_plain_runs() {
        assert_eq!(escaped("ab\ncd\u{2}ef"), r#""ab\ncd\u0002ef""#);
    }
}
