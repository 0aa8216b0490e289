//! An example guest: NanoMQ's WebHook, except that a `message_publish` is delivered only when its
//! payload is JSON that meets one configured condition.
//!
//! Rules, topic matching and bodies are the default guest's (`mqhook-guest-nanomq`, used here as a
//! library): an event is delivered when a rule selects it, with NanoMQ's body. On top of that, a
//! publish whose payload is not JSON, or fails the condition, is filtered out. The condition is
//! tested on the payload as published, whatever `body.encoding` says. Other events are unaffected.
//!
//! # Settings
//!
//! Read from `guest.settings`; `configure` refuses missing, unknown or invalid ones.
//!
//! - `field`: where the tested value is. With a leading `/`, a JSON pointer (RFC 6901) such as
//!   `/sensor/temp`; without one, a top-level key such as `temp`.
//! - `op`: `gt`, `lt`, `eq`, `ne` or `exists`.
//! - `value`: what the field is compared with; required by every op but `exists`, which takes none.
//!
//! `gt` and `lt` compare numbers: `value` must be a JSON number, and a field that is not a number
//! fails. `eq` and `ne` compare JSON values: `value` is read as JSON when it is valid JSON (`21.5`,
//! `true`, `null`, `"\"on\""`), else as a string (`on`); two numbers compare by value, so `21`
//! equals `21.0`. Every op but `exists` needs the field to be there: a payload without it fails,
//! even with `ne`.
//!
//! ```hcl
//! guest {
//!   path     = "mqhook_guest_payload_filter.wasm"
//!   settings = { field = "/temp", op = "gt", value = "30" }
//! }
//! ```

use mqhook_guest_nanomq::mqhook::filter::types::{Delivery, Event, FilterConfig};
use mqhook_guest_nanomq::{Filter, GuestLogic};
use serde_json::Value;

/// The configured guest: NanoMQ's filter and bodies, plus the payload condition on publishes.
#[derive(Debug, Clone)]
pub struct PayloadFilter {
    filter: Filter,
    condition: Condition,
}

impl GuestLogic for PayloadFilter {
    /// Builds the filter from its configuration: the rules as the default guest checks them, the
    /// condition from the settings.
    fn configure(config: FilterConfig) -> Result<Self, String> {
        let condition = Condition::from_settings(&config.settings)?;
        Ok(Self { filter: Filter::new(config)?, condition })
    }

    /// NanoMQ's delivery for `event` (its body, no headers, no path), or `None` when no rule
    /// selects it or it is a publish whose payload fails the condition.
    fn handle(&self, event: &Event) -> Option<Delivery> {
        if let Event::MessagePublish(message) = event {
            if !self.condition.holds(&message.payload) {
                return None;
            }
        }
        let body = Filter::handle(&self.filter, event)?;
        Some(Delivery::body(body))
    }
}

/// Where the tested value sits in a JSON payload.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    /// A JSON pointer, leading `/` included.
    Pointer(String),
    /// A member of the top-level object.
    Key(String),
}

impl Field {
    fn find<'a>(&self, document: &'a Value) -> Option<&'a Value> {
        match self {
            Field::Pointer(pointer) => document.pointer(pointer),
            Field::Key(key) => document.get(key),
        }
    }
}

/// What the value at the field must satisfy.
#[derive(Debug, Clone, PartialEq)]
enum Test {
    Greater(f64),
    Less(f64),
    Equal(Value),
    NotEqual(Value),
    Exists,
}

/// The condition a publish's payload must meet to be delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    field: Field,
    test: Test,
}

const OPS: &str = "gt, lt, eq, ne or exists";

impl Condition {
    /// Reads the condition from the `field`, `op` and `value` settings.
    pub fn from_settings(settings: &[(String, String)]) -> Result<Self, String> {
        let (mut field, mut op, mut value) = (None, None, None);
        for (key, setting) in settings {
            let slot = match key.as_str() {
                "field" => &mut field,
                "op" => &mut op,
                "value" => &mut value,
                _ => return Err(format!("unknown setting `{key}`: this guest reads `field`, `op` and `value`")),
            };
            if slot.replace(setting.as_str()).is_some() {
                return Err(format!("setting `{key}` is given twice"));
            }
        }
        let field = match field {
            None | Some("") => {
                return Err(
                    "setting `field` is required: a JSON pointer such as \"/temp\" or a top-level key".to_owned()
                )
            }
            Some(pointer) if pointer.starts_with('/') => Field::Pointer(pointer.to_owned()),
            Some(key) => Field::Key(key.to_owned()),
        };
        let op = op.ok_or_else(|| format!("setting `op` is required: {OPS}"))?;
        let test = match (op, value) {
            ("exists", None) => Test::Exists,
            ("exists", Some(_)) => return Err("`op = exists` takes no `value`".to_owned()),
            ("gt" | "lt" | "eq" | "ne", None) => return Err(format!("setting `value` is required with `op = {op}`")),
            ("gt", Some(value)) => Test::Greater(number(op, value)?),
            ("lt", Some(value)) => Test::Less(number(op, value)?),
            ("eq", Some(value)) => Test::Equal(json_or_string(value)),
            ("ne", Some(value)) => Test::NotEqual(json_or_string(value)),
            _ => return Err(format!("unknown `op` {op:?}: one of {OPS}")),
        };
        Ok(Self { field, test })
    }

    /// Whether `payload` is JSON whose field passes the test.
    pub fn holds(&self, payload: &[u8]) -> bool {
        let Ok(document) = serde_json::from_slice::<Value>(payload) else {
            return false;
        };
        let Some(found) = self.field.find(&document) else {
            return false;
        };
        match &self.test {
            Test::Greater(bound) => found.as_f64().is_some_and(|number| number > *bound),
            Test::Less(bound) => found.as_f64().is_some_and(|number| number < *bound),
            Test::Equal(expected) => json_equal(found, expected),
            Test::NotEqual(expected) => !json_equal(found, expected),
            Test::Exists => true,
        }
    }
}

/// The bound of `gt` or `lt`: a JSON number.
fn number(op: &str, value: &str) -> Result<f64, String> {
    serde_json::from_str(value).map_err(|_| format!("`op = {op}` compares numbers; `value` {value:?} is not a number"))
}

/// The operand of `eq` or `ne`: `value` as JSON when it is JSON, else as a string.
fn json_or_string(value: &str) -> Value {
    serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()))
}

/// JSON equality, except that numbers compare by value when either is a float: JSON does not tell
/// `21` from `21.0`, so neither may the condition.
fn json_equal(found: &Value, expected: &Value) -> bool {
    match (found, expected) {
        (Value::Number(found), Value::Number(expected)) if found.is_f64() || expected.is_f64() => {
            found.as_f64() == expected.as_f64()
        }
        _ => found == expected,
    }
}

mqhook_guest_nanomq::export_guest!(crate::PayloadFilter, "payload-filter");

#[cfg(test)]
mod tests {
    use mqhook_guest_nanomq::mqhook::filter::types::{Client, Connack, EventKind, Message, PayloadEncoding, Rule};

    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|&(key, value)| (key.to_owned(), value.to_owned())).collect()
    }

    fn condition(pairs: &[(&str, &str)]) -> Condition {
        Condition::from_settings(&settings(pairs)).expect("valid settings")
    }

    fn refusal(pairs: &[(&str, &str)]) -> String {
        Condition::from_settings(&settings(pairs)).unwrap_err()
    }

    #[test]
    fn gt_and_lt_compare_numbers() {
        let hot = condition(&[("field", "/temp"), ("op", "gt"), ("value", "30")]);
        assert!(hot.holds(br#"{"temp":30.5}"#));
        assert!(!hot.holds(br#"{"temp":30}"#));
        assert!(!hot.holds(br#"{"temp":"31"}"#), "a string is not a number");
        let cold = condition(&[("field", "temp"), ("op", "lt"), ("value", "-1.5")]);
        assert!(cold.holds(br#"{"temp":-2}"#));
        assert!(!cold.holds(br#"{"temp":-1.5}"#));
    }

    #[test]
    fn a_pointer_reaches_into_objects_and_arrays_and_a_key_does_not() {
        let nested = condition(&[("field", "/sensor/readings/1"), ("op", "eq"), ("value", "7")]);
        assert!(nested.holds(br#"{"sensor":{"readings":[3,7]}}"#));
        let key = condition(&[("field", "sensor/readings"), ("op", "exists")]);
        assert!(!key.holds(br#"{"sensor":{"readings":[]}}"#));
        assert!(key.holds(br#"{"sensor/readings":0}"#));
    }

    #[test]
    fn eq_and_ne_compare_json_values_or_strings() {
        let on = condition(&[("field", "state"), ("op", "eq"), ("value", "on")]);
        assert!(on.holds(br#"{"state":"on"}"#));
        assert!(!on.holds(br#"{"state":"off"}"#));
        let quoted = condition(&[("field", "code"), ("op", "eq"), ("value", r#""21""#)]);
        assert!(quoted.holds(br#"{"code":"21"}"#));
        assert!(!quoted.holds(br#"{"code":21}"#));
        let number = condition(&[("field", "code"), ("op", "eq"), ("value", "21")]);
        assert!(number.holds(br#"{"code":21.0}"#));
        let not_null = condition(&[("field", "error"), ("op", "ne"), ("value", "null")]);
        assert!(not_null.holds(br#"{"error":"overheat"}"#));
        assert!(!not_null.holds(br#"{"error":null}"#));
    }

    #[test]
    fn a_missing_field_or_a_payload_that_is_not_json_fails() {
        let not_off = condition(&[("field", "state"), ("op", "ne"), ("value", "off")]);
        assert!(!not_off.holds(br#"{"other":1}"#));
        assert!(!not_off.holds(b"state=on"));
        assert!(!not_off.holds(b""));
        let exists = condition(&[("field", "state"), ("op", "exists")]);
        assert!(exists.holds(br#"{"state":null}"#));
        assert!(!exists.holds(br#"["state"]"#));
    }

    #[test]
    fn invalid_settings_are_refused_with_a_reason() {
        for (pairs, reason) in [
            (&[("op", "exists")][..], "`field` is required"),
            (&[("field", ""), ("op", "exists")][..], "`field` is required"),
            (&[("field", "a")][..], "`op` is required"),
            (&[("field", "a"), ("op", "ge"), ("value", "1")][..], "unknown `op` \"ge\""),
            (&[("field", "a"), ("op", "gt")][..], "`value` is required with `op = gt`"),
            (&[("field", "a"), ("op", "lt"), ("value", "cold")][..], "\"cold\" is not a number"),
            (&[("field", "a"), ("op", "exists"), ("value", "1")][..], "takes no `value`"),
            (&[("field", "a"), ("op", "exists"), ("field", "b")][..], "`field` is given twice"),
            (&[("field", "a"), ("op", "exists"), ("fields", "b")][..], "unknown setting `fields`"),
        ] {
            let error = refusal(pairs);
            assert!(error.contains(reason), "settings {pairs:?}: {error}");
        }
    }

    fn config(pairs: &[(&str, &str)]) -> FilterConfig {
        FilterConfig {
            rules: [EventKind::MessagePublish, EventKind::ClientConnack]
                .into_iter()
                .map(|event| Rule { event, topic: None, endpoint: None })
                .collect(),
            encoding: PayloadEncoding::Plain,
            settings: settings(pairs),
            endpoints: Vec::new(),
        }
    }

    fn publish(payload: &[u8]) -> Event {
        Event::MessagePublish(Message {
            ts: 1,
            topic: "t".to_owned(),
            qos: 0,
            retain: false,
            from_clientid: Some("c".to_owned()),
            from_username: None,
            receiver: None,
            payload: payload.to_vec(),
        })
    }

    #[test]
    fn only_publishes_are_tested_and_bodies_are_nanomqs() {
        let filter = PayloadFilter::configure(config(&[("field", "on"), ("op", "eq"), ("value", "true")]))
            .expect("valid configuration");
        let delivery = filter.handle(&publish(br#"{"on":true}"#)).expect("delivered");
        assert_eq!((delivery.headers.len(), delivery.path), (0, None));
        assert_eq!(
            String::from_utf8(delivery.body).unwrap(),
            r#"{"ts":1,"topic":"t","retain":false,"qos":0,"action":"message_publish","from_username":"undefined","from_client_id":"c","payload":"{\"on\":true}"}"#
        );
        assert!(filter.handle(&publish(br#"{"on":false}"#)).is_none());
        let connack = Event::ClientConnack(Connack {
            client: Client { clientid: "c".to_owned(), username: None },
            keepalive: 60,
            proto_ver: 4,
            reason_code: 0,
        });
        assert!(filter.handle(&connack).is_some());
    }

    #[test]
    fn the_rules_are_checked_as_by_the_default_guest() {
        let mut invalid = config(&[("field", "on"), ("op", "exists")]);
        invalid.rules[0].topic = Some("a/#/b".to_owned());
        let error = PayloadFilter::configure(invalid).unwrap_err();
        assert!(error.starts_with("rule 1 (on_message_publish): "), "{error}");
    }
}
