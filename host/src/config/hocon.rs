//! A parser for the HOCON subset NanoMQ's `nanomq.conf` uses, keeping the line of every value.
//!
//! Written here rather than taken from a crate because errors must name the line of the offending
//! key, and the HOCON crates on crates.io keep no positions. Covered: `#` and `//` comments, objects
//! with or without a root brace, `=`/`:`/`{` after a key, dotted keys (`headers.content-type`) that
//! build nested objects, quoted and unquoted keys and values, `"""` strings, lists whose items are
//! separated by commas or newlines, object merging on repeated keys, and `include "…"` (ignored:
//! only the `webhook` section matters to mqhook, and NanoMQ uses includes elsewhere).
//! Substitutions (`${…}`) are not supported and read as unquoted text.

use super::tree::{Node, Value};

/// A syntax error, positioned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses a whole HOCON document into an object node.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut parser = Parser { chars: text.chars().collect(), pos: 0, line: 1, column: 1 };
    parser.skip_separators();
    let root = if parser.peek() == Some('{') {
        let line = parser.line;
        parser.bump();
        let body = parser.object_body(line, Some('}'))?;
        parser.skip_separators();
        body
    } else {
        parser.object_body(1, None)?
    };
    match parser.peek() {
        None => Ok(root),
        Some(c) => Err(parser.error(format!("unexpected `{c}` after the end of the document"))),
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    column: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn error(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError { line: self.line, column: self.column, message: message.into() }
    }

    fn at_comment(&self) -> bool {
        self.peek() == Some('#') || (self.peek() == Some('/') && self.peek_at(1) == Some('/'))
    }

    fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' {
                break;
            }
            self.bump();
        }
    }

    /// Skips spaces and comments on the current line; returns at a newline or a token.
    fn skip_inline_space(&mut self) {
        loop {
            match self.peek() {
                Some(c) if c != '\n' && c.is_whitespace() => {
                    self.bump();
                }
                Some(_) if self.at_comment() => self.skip_comment(),
                _ => return,
            }
        }
    }

    /// Skips whitespace, newlines, commas and comments: whatever may separate fields or items.
    fn skip_separators(&mut self) {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() || c == ',' => {
                    self.bump();
                }
                Some(_) if self.at_comment() => self.skip_comment(),
                _ => return,
            }
        }
    }

    /// Fields up to `close` (or the end of input when `close` is `None`).
    fn object_body(&mut self, line: usize, close: Option<char>) -> Result<Node, SyntaxError> {
        let mut object = Node::object(line);
        loop {
            self.skip_separators();
            match (self.peek(), close) {
                (None, None) => return Ok(object),
                (None, Some(c)) => return Err(self.error(format!("missing `{c}` before the end of the file"))),
                (Some(c), Some(close)) if c == close => {
                    self.bump();
                    return Ok(object);
                }
                _ => {}
            }
            let key_line = self.line;
            let path = self.key_path()?;
            self.skip_inline_space();
            if path.len() == 1 && path[0] == "include" && matches!(self.peek(), Some('"')) {
                self.quoted_string()?;
                continue;
            }
            let value = match self.peek() {
                Some('=') | Some(':') => {
                    self.bump();
                    self.skip_inline_space();
                    self.value()?
                }
                Some('{') => self.value()?,
                Some('+') if self.peek_at(1) == Some('=') => {
                    return Err(self.error("`+=` is not supported"));
                }
                _ => return Err(self.error(format!("expected `=`, `:` or `{{` after the key `{}`", path.join(".")))),
            };
            let value = Node { line: key_line, ..value };
            object.insert_path(&path, value);
        }
    }

    fn key_path(&mut self) -> Result<Vec<String>, SyntaxError> {
        let mut path = Vec::new();
        loop {
            let part = if self.peek() == Some('"') {
                self.quoted_string()?
            } else {
                let mut part = String::new();
                while let Some(c) = self.peek() {
                    if c.is_whitespace() || "=:{}[],.\"#".contains(c) || self.at_comment() {
                        break;
                    }
                    if c == '+' && self.peek_at(1) == Some('=') {
                        break;
                    }
                    part.push(c);
                    self.bump();
                }
                if part.is_empty() {
                    let found = self.peek().map_or("the end of the file".to_string(), |c| format!("`{c}`"));
                    return Err(self.error(format!("expected a key, found {found}")));
                }
                part
            };
            path.push(part);
            if self.peek() == Some('.') {
                self.bump();
            } else {
                return Ok(path);
            }
        }
    }

    fn value(&mut self) -> Result<Node, SyntaxError> {
        let line = self.line;
        match self.peek() {
            Some('{') => {
                self.bump();
                self.object_body(line, Some('}'))
            }
            Some('[') => {
                self.bump();
                self.list(line)
            }
            Some('"') => Ok(Node::new(line, Value::Str(self.quoted_string()?))),
            None | Some('\n') | Some(',') | Some('}') | Some(']') => Err(self.error("missing value")),
            Some(_) => {
                let text = self.unquoted();
                if text.is_empty() {
                    return Err(self.error("missing value"));
                }
                Ok(Node::new(line, if text == "null" { Value::Null } else { Value::Bare(text) }))
            }
        }
    }

    fn list(&mut self, line: usize) -> Result<Node, SyntaxError> {
        let mut items = Vec::new();
        loop {
            self.skip_separators();
            match self.peek() {
                None => return Err(self.error("missing `]` before the end of the file")),
                Some(']') => {
                    self.bump();
                    return Ok(Node::new(line, Value::List(items)));
                }
                _ => items.push(self.value()?),
            }
        }
    }

    /// An unquoted value: up to the end of the line, a separator or a comment; trimmed.
    fn unquoted(&mut self) -> String {
        let mut text = String::new();
        while let Some(c) = self.peek() {
            if c == '\n' || ",}]".contains(c) || self.at_comment() {
                break;
            }
            text.push(c);
            self.bump();
        }
        text.trim().to_string()
    }

    fn quoted_string(&mut self) -> Result<String, SyntaxError> {
        if self.peek_at(1) == Some('"') && self.peek_at(2) == Some('"') {
            return self.triple_quoted();
        }
        let (line, column) = (self.line, self.column);
        self.bump();
        let mut text = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => return Err(SyntaxError { line, column, message: "unterminated string".into() }),
                Some('"') => return Ok(text),
                Some('\\') => text.push(self.escape()?),
                Some(c) => text.push(c),
            }
        }
    }

    fn escape(&mut self) -> Result<char, SyntaxError> {
        Ok(match self.bump() {
            Some('n') => '\n',
            Some('t') => '\t',
            Some('r') => '\r',
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            Some('u') => {
                let hex: String = (0..4).filter_map(|_| self.bump()).collect();
                u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| self.error(format!("bad unicode escape `\\u{hex}`")))?
            }
            Some(c @ ('"' | '\\' | '/')) => c,
            Some(c) => return Err(self.error(format!("unknown escape `\\{c}`"))),
            None => return Err(self.error("unterminated string")),
        })
    }

    fn triple_quoted(&mut self) -> Result<String, SyntaxError> {
        let (line, column) = (self.line, self.column);
        for _ in 0..3 {
            self.bump();
        }
        let mut text = String::new();
        loop {
            if self.peek() == Some('"') && self.peek_at(1) == Some('"') && self.peek_at(2) == Some('"') {
                for _ in 0..3 {
                    self.bump();
                }
                return Ok(text);
            }
            match self.bump() {
                Some(c) => text.push(c),
                None => return Err(SyntaxError { line, column, message: "unterminated `\"\"\"` string".into() }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_objects_lists_and_comments() {
        let doc = "a { b = 1 # c\n  c.d: \"x\\ty\" // e\n}\nl = [ {x = 1}\n {x = 2}, ]\nu = 256MB\n";
        let root = parse(doc).unwrap();
        let a = root.get("a").unwrap();
        assert_eq!(a.get("b").unwrap().value, Value::Bare("1".into()));
        assert_eq!(a.get("c").unwrap().get("d").unwrap().value, Value::Str("x\ty".into()));
        assert_eq!(a.get("c").unwrap().get("d").unwrap().line, 2);
        let Value::List(items) = &root.get("l").unwrap().value else { panic!() };
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].line, 5);
        assert_eq!(root.get("u").unwrap().value, Value::Bare("256MB".into()));
    }

    #[test]
    fn repeated_objects_merge_and_include_is_skipped() {
        let root = parse("p = {include \"/x\"}\np = { \"admin\": \"public\" }\n").unwrap();
        assert_eq!(root.get("p").unwrap().get("admin").unwrap().value, Value::Str("public".into()));
    }

    #[test]
    fn errors_are_positioned() {
        let err = parse("a {\n  b = \"open\n}").unwrap_err();
        assert_eq!((err.line, err.column), (2, 7));
        let err = parse("a {\n  b = 1\n").unwrap_err();
        assert!(err.message.contains("missing `}`"), "{err:?}");
        let err = parse("a {\n  b 1\n}").unwrap_err();
        assert_eq!(err.line, 2);
    }
}
