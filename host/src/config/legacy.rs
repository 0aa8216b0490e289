//! NanoMQ's old `key=value` format (`web.hook.*` lines), mapped onto the same tree as HOCON.
//!
//! `web.hook.url` becomes `webhook.url`, `web.hook.body.encoding_of_payload_field` becomes
//! `webhook.body.encoding`, `web.hook.ssl.*` stays `webhook.ssl.*`, and every
//! `web.hook.rule.<event.key>.<N>={"action": …, "topic": …}` becomes one entry of
//! `webhook.events`, its event taken from the key (as NanoMQ does), not from `action`.
//! Lines that are not `web.hook.*` belong to other parts of the broker and are ignored.

use super::hocon::SyntaxError;
use super::tree::{Node, Value};
use crate::event::EventKind;

/// Whether `text` is in the old format: it has at least one `web.hook.` line.
pub(crate) fn detect(text: &str) -> bool {
    text.lines().any(|line| line.trim_start().starts_with("web.hook."))
}

/// Parses the `web.hook.*` lines into a root object holding a `webhook` object.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut webhook = Node::object(1);
    let mut rules: Vec<(usize, Node)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        let Some(rest) = trimmed.strip_prefix("web.hook.") else { continue };
        let Some((key, value)) = rest.split_once('=') else {
            return Err(SyntaxError { line, column: 1, message: format!("expected `key=value`, found `{trimmed}`") });
        };
        let (key, value) = (key.trim(), value.trim());
        if let Some(rule_key) = key.strip_prefix("rule.") {
            rules.push((line, rule(line, rule_key, value)?));
            continue;
        }
        let key = match key {
            "body.encoding_of_payload_field" => "body.encoding",
            other => other,
        };
        let path: Vec<String> = match key.strip_prefix("headers.") {
            // A header name may itself contain dots; only the first one separates.
            Some(name) => vec!["headers".into(), name.into()],
            None => key.split('.').map(str::to_string).collect(),
        };
        webhook.insert_path(&path, Node::new(line, Value::Bare(value.to_string())));
    }
    if !rules.is_empty() {
        let line = rules[0].0;
        let list = rules.into_iter().map(|(_, node)| node).collect();
        webhook.insert_path(&["events".into()], Node::new(line, Value::List(list)));
    }
    let mut root = Node::object(1);
    if webhook.get("url").is_some() || webhook.get("enable").is_some() || webhook.get("events").is_some() {
        root.insert_path(&["webhook".into()], webhook);
    }
    Ok(root)
}

/// How a key of the common tree is written in this format, for error messages:
/// `webhook.body.encoding` is `web.hook.body.encoding_of_payload_field`.
pub(crate) fn spelling(key: &str) -> String {
    let key = key.replacen("webhook.", "web.hook.", 1);
    match key.as_str() {
        "web.hook.body.encoding" => "web.hook.body.encoding_of_payload_field".to_string(),
        _ => key,
    }
}

/// One `rule.<event.key>.<N>={…}` line as an `{ event, topic? }` object.
fn rule(line: usize, rule_key: &str, value: &str) -> Result<Node, SyntaxError> {
    let error = |message: String| SyntaxError { line, column: 1, message };
    let event_key = rule_key.rsplit_once('.').map_or(rule_key, |(event, _number)| event);
    let kind = EventKind::from_legacy_key(event_key).ok_or_else(|| {
        let accepted: Vec<String> = EventKind::ALL.iter().map(|k| k.legacy_key()).collect();
        error(format!("`web.hook.rule.{rule_key}`: unknown event `{event_key}`; accepted: {}", accepted.join(", ")))
    })?;
    let spec: serde_json::Value = serde_json::from_str(value)
        .map_err(|e| error(format!("`web.hook.rule.{rule_key}`: the value is not JSON: {e}")))?;
    let mut object = Node::object(line);
    object.insert_path(&["event".into()], Node::new(line, Value::Str(kind.config_name())));
    match spec.get("topic") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(topic)) => {
            object.insert_path(&["topic".into()], Node::new(line, Value::Str(topic.clone())))
        }
        Some(other) => {
            return Err(error(format!("`web.hook.rule.{rule_key}`: `topic` must be a string, found {other}")))
        }
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keys_and_rules() {
        let text = "web.hook.url=http://x:1/\nweb.hook.headers.content-type=application/json\n\
                    web.hook.body.encoding_of_payload_field=base62\n\
                    web.hook.rule.message.publish.1={\"action\": \"on_message_publish\", \"topic\": \"a/#\"}\n";
        assert!(detect(text));
        let root = parse(text).unwrap();
        let webhook = root.get("webhook").unwrap();
        assert_eq!(webhook.get("url").unwrap().value, Value::Bare("http://x:1/".into()));
        assert_eq!(webhook.get("body").unwrap().get("encoding").unwrap().line, 3);
        let Value::List(events) = &webhook.get("events").unwrap().value else { panic!() };
        assert_eq!(events[0].get("event").unwrap().value, Value::Str("on_message_publish".into()));
        assert_eq!(events[0].get("topic").unwrap().value, Value::Str("a/#".into()));
    }

    #[test]
    fn unknown_rule_event_names_its_line() {
        let err = parse("web.hook.url=http://x\nweb.hook.rule.message.publishd.1={}\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("message.publishd"), "{}", err.message);
    }
}
