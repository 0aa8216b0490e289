//! mqhook's native HCL format (`.hcl`), parsed with hcl-rs and mapped onto the common tree.
//!
//! The keys are those of the HOCON format, so one document explains both:
//! ```hcl
//! webhook {
//!   url       = "http://127.0.0.1:8080/hook"
//!   headers   = { "content-type" = "application/json" }
//!   body { encoding = "base64" }
//!   pool_size = 32
//!   events    = [{ event = "on_message_publish", topic = "a/#" }, { event = "on_client_connack" }]
//!   guest { memory_limit = "64MiB", timeout = "100ms" }
//! }
//! ```
//! Blocks and object values both become objects; a block's labels are not used. hcl-rs's
//! `edit` parser is used because it keeps byte spans, from which every value gets its line.

use hcl::edit::expr::{Expression, ObjectKey};
use hcl::edit::structure::{Body, Structure};
use hcl::edit::Span;

use super::hocon::SyntaxError;
use super::tree::{Node, Value};

/// Parses an HCL document into an object node.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let body = hcl::edit::parser::parse_body(text).map_err(|e| SyntaxError {
        line: e.location().line(),
        column: e.location().column(),
        message: e.message().to_string(),
    })?;
    let lines = LineIndex::new(text);
    body_node(&body, 1, &lines)
}

fn body_node(body: &Body, line: usize, lines: &LineIndex) -> Result<Node, SyntaxError> {
    let mut object = Node::object(line);
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attribute) => {
                let line = lines.line_of(attribute.span());
                let value = expression(&attribute.value, line, lines)?;
                object.insert_path(&[attribute.key.as_str().to_string()], value);
            }
            Structure::Block(block) => {
                let line = lines.line_of(block.span());
                let value = body_node(&block.body, line, lines)?;
                object.insert_path(&[block.ident.as_str().to_string()], value);
            }
        }
    }
    Ok(object)
}

fn expression(expr: &Expression, line: usize, lines: &LineIndex) -> Result<Node, SyntaxError> {
    let value = match expr {
        Expression::Null(_) => Value::Null,
        Expression::Bool(b) => Value::Bare(b.value().to_string()),
        Expression::Number(n) => Value::Bare(n.value().to_string()),
        Expression::String(s) => Value::Str(s.value().clone()),
        Expression::Array(array) => Value::List(
            array
                .iter()
                .map(|item| expression(item, lines.line_of(item.span()).max(line), lines))
                .collect::<Result<_, _>>()?,
        ),
        Expression::Object(object) => {
            let mut node = Node::object(line);
            for (key, value) in object.iter() {
                let key_text = match key {
                    ObjectKey::Ident(ident) => ident.as_str().to_string(),
                    ObjectKey::Expression(Expression::String(s)) => s.value().clone(),
                    ObjectKey::Expression(other) => {
                        return Err(unsupported(lines.line_of(other.span()).max(line), "object key"))
                    }
                };
                let value_line = lines.line_of(value.expr().span()).max(line);
                node.insert_path(&[key_text], expression(value.expr(), value_line, lines)?);
            }
            return Ok(node);
        }
        _ => return Err(unsupported(line, "expression (only literals, lists and objects are allowed)")),
    };
    Ok(Node::new(line, value))
}

fn unsupported(line: usize, what: &str) -> SyntaxError {
    SyntaxError { line, column: 1, message: format!("unsupported {what}") }
}

/// Byte offset to 1-based line number.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        LineIndex { starts }
    }

    fn line_of(&self, span: Option<std::ops::Range<usize>>) -> usize {
        let offset = span.map_or(0, |range| range.start);
        self.starts.partition_point(|&start| start <= offset).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_attributes_and_objects_keep_lines() {
        let text = "webhook {\n  url = \"http://x\"\n  headers = { \"content-type\" = \"a\" }\n  \
                    events = [\n    { event = \"on_client_connack\" },\n  ]\n  pool_size = 4\n}\n";
        let root = parse(text).unwrap();
        let webhook = root.get("webhook").unwrap();
        assert_eq!(webhook.get("url").unwrap().line, 2);
        assert_eq!(webhook.get("pool_size").unwrap().value, Value::Bare("4".into()));
        assert_eq!(webhook.get("headers").unwrap().get("content-type").unwrap().value, Value::Str("a".into()));
        let Value::List(events) = &webhook.get("events").unwrap().value else { panic!() };
        assert_eq!(events[0].line, 5);
    }

    #[test]
    fn syntax_errors_are_positioned() {
        let err = parse("webhook {\n  url = \n}\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
    }
}
