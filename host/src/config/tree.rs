//! The syntax-neutral tree every config parser produces: values with the line they came from.
//!
//! HOCON, NanoMQ's old `web.hook.*` format and HCL each parse into a [`Node`]; `typed.rs` turns that
//! one shape into a [`Config`](super::Config), so every check and every error message is written once.

/// A parsed value and the 1-based line where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub line: usize,
    pub value: Value,
}

/// A parsed value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// A quoted string.
    Str(String),
    /// An unquoted token: a number, a boolean, a duration or a bare word.
    Bare(String),
    /// `null`.
    Null,
    /// A list.
    List(Vec<Node>),
    /// An object; keys keep their file order.
    Object(Vec<(String, Node)>),
}

impl Node {
    pub fn new(line: usize, value: Value) -> Self {
        Node { line, value }
    }

    pub fn object(line: usize) -> Self {
        Node::new(line, Value::Object(Vec::new()))
    }

    /// Looks up a direct child of an object.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `path` (already split on dots) to `value`, creating objects on the way. Objects merge
    /// with objects already there, anything else replaces what was there (HOCON's rules).
    pub fn insert_path(&mut self, path: &[String], value: Node) {
        let Value::Object(fields) = &mut self.value else {
            *self = Node::object(value.line);
            return self.insert_path(path, value);
        };
        let (first, rest) = path.split_first().expect("a key path is never empty");
        let position = fields.iter().position(|(k, _)| k == first);
        if rest.is_empty() {
            match position {
                Some(i) => merge_into(&mut fields[i].1, value),
                None => fields.push((first.clone(), value)),
            }
            return;
        }
        let index = position.unwrap_or_else(|| {
            fields.push((first.clone(), Node::object(value.line)));
            fields.len() - 1
        });
        let child = &mut fields[index].1;
        if !matches!(child.value, Value::Object(_)) {
            *child = Node::object(value.line);
        }
        child.insert_path(rest, value);
    }
}

/// Merges `new` into `old`: object fields merge recursively, anything else replaces.
fn merge_into(old: &mut Node, new: Node) {
    match (&mut old.value, new.value) {
        (Value::Object(_), Value::Object(new_fields)) => {
            for (key, value) in new_fields {
                old.insert_path(&[key], value);
            }
        }
        (_, value) => {
            old.line = new.line;
            old.value = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Node {
        Node::new(1, Value::Str(v.into()))
    }

    #[test]
    fn dotted_paths_build_objects_and_merge() {
        let mut root = Node::object(1);
        root.insert_path(&["a".into(), "b".into()], s("1"));
        root.insert_path(&["a".into(), "c".into()], s("2"));
        root.insert_path(&["a".into(), "b".into()], s("3"));
        let a = root.get("a").unwrap();
        assert_eq!(a.get("b").unwrap().value, Value::Str("3".into()));
        assert_eq!(a.get("c").unwrap().value, Value::Str("2".into()));
    }
}
