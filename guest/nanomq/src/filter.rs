//! Which events are delivered: the configured rules, OR-ed, and at most one body per event.
//!
//! A rule selects the events of its kind; for kinds that carry a topic (subscriptions and
//! messages) a rule with a topic filter selects only the events whose topic matches it. Client
//! events and `session_terminated` carry no topic, so a topic on their rules is ignored (and not
//! validated). However many rules select an event, it is delivered once.
#![forbid(unsafe_code)]

use crate::topic::TopicFilter;
use crate::{body, event, Event, EventKind, FilterConfig, PayloadEncoding};

/// The configured filter: decides whether an event is delivered and writes its body.
#[derive(Debug, Clone)]
pub struct Filter {
    rules: Vec<Rule>,
    encoding: PayloadEncoding,
}

/// One configured rule with its topic filter validated.
#[derive(Debug, Clone)]
struct Rule {
    event: EventKind,
    /// `None` selects every topic (and always for kinds without a topic).
    topic: Option<TopicFilter>,
}

impl Filter {
    /// Builds the filter from its configuration; an invalid topic filter is refused, naming the
    /// rule (counted from 1) and why.
    pub fn new(config: FilterConfig) -> Result<Self, String> {
        let rules = config
            .rules
            .into_iter()
            .enumerate()
            .map(|(index, rule)| {
                let topic = match rule.topic {
                    Some(topic) if event::carries_topic(rule.event) => {
                        let filter = TopicFilter::new(&topic).map_err(|reason| {
                            format!("rule {} (on_{}): {reason}", index + 1, event::action(rule.event))
                        })?;
                        Some(filter)
                    }
                    _ => None,
                };
                Ok(Rule { event: rule.event, topic })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { rules, encoding: config.encoding })
    }

    /// The body to deliver for `event`, or `None` when no rule selects it.
    pub fn handle(&self, event: &Event) -> Option<Vec<u8>> {
        self.selects(event).then(|| body::body(event, self.encoding))
    }

    /// Whether any rule selects `event`.
    pub fn selects(&self, event: &Event) -> bool {
        let kind = event::kind(event);
        let topic = event::topic(event);
        self.rules.iter().any(|rule| {
            rule.event == kind
                && match (&rule.topic, topic) {
                    (Some(filter), Some(topic)) => filter.matches(topic),
                    _ => true,
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{self, publish};
    use crate::{Client, Rule as ConfiguredRule, SubscribeOptions, Subscription};

    fn config(rules: &[(EventKind, Option<&str>)]) -> FilterConfig {
        FilterConfig {
            rules: rules
                .iter()
                .map(|&(event, topic)| ConfiguredRule { event, topic: topic.map(str::to_owned), endpoint: None })
                .collect(),
            encoding: PayloadEncoding::Plain,
            settings: Vec::new(),
            endpoints: Vec::new(),
        }
    }

    fn filter(rules: &[(EventKind, Option<&str>)]) -> Filter {
        Filter::new(config(rules)).expect("valid configuration")
    }

    fn client() -> Client {
        Client { clientid: "c1".to_owned(), username: Some("u1".to_owned()) }
    }

    fn connack() -> Event {
        sample::connack(client())
    }

    fn subscribe(topic: &str) -> Event {
        Event::ClientSubscribe(Subscription {
            client: client(),
            topic: topic.to_owned(),
            opts: SubscribeOptions { qos: 0, nl: None, rap: None, rh: None },
        })
    }

    #[test]
    fn no_rules_deliver_nothing() {
        let filter = filter(&[]);
        assert_eq!(filter.handle(&publish("a")), None);
        assert_eq!(filter.handle(&connack()), None);
    }

    #[test]
    fn a_rule_selects_its_kind_only() {
        let filter = filter(&[(EventKind::ClientConnack, None)]);
        assert!(filter.handle(&connack()).is_some());
        assert_eq!(filter.handle(&publish("a")), None);
    }

    #[test]
    fn a_rule_without_topic_selects_every_topic() {
        let filter = filter(&[(EventKind::MessagePublish, None)]);
        assert!(filter.selects(&publish("a/b")));
        assert!(filter.selects(&publish("$SYS/x")));
    }

    #[test]
    fn topic_filters_select_matching_messages() {
        let filter = filter(&[(EventKind::MessagePublish, Some("a/+/c"))]);
        assert!(filter.selects(&publish("a/b/c")));
        assert!(!filter.selects(&publish("a/b/d")));
    }

    #[test]
    fn topic_filters_apply_to_subscriptions() {
        let filter = filter(&[(EventKind::ClientSubscribe, Some("a/#"))]);
        assert!(filter.selects(&subscribe("a/+")));
        assert!(!filter.selects(&subscribe("b/+")));
    }

    #[test]
    fn sys_topics_need_a_rule_that_names_them() {
        let wildcard = filter(&[(EventKind::MessagePublish, Some("#"))]);
        assert!(!wildcard.selects(&publish("$SYS/brokers")));
        let named = filter(&[(EventKind::MessagePublish, Some("$SYS/#"))]);
        assert!(named.selects(&publish("$SYS/brokers")));
    }

    #[test]
    fn overlapping_rules_deliver_once() {
        let filter = filter(&[
            (EventKind::MessagePublish, Some("a/#")),
            (EventKind::MessagePublish, Some("a/b")),
            (EventKind::MessagePublish, None),
            (EventKind::MessagePublish, Some("+/b")),
        ]);
        let body = filter.handle(&publish("a/b")).expect("selected");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"ts":1,"topic":"a/b","retain":false,"qos":0,"action":"message_publish","from_username":"undefined","from_client_id":"c1","payload":"p"}"#
        );
    }

    #[test]
    fn rules_are_ored() {
        let filter = filter(&[(EventKind::MessagePublish, Some("a")), (EventKind::MessagePublish, Some("b"))]);
        assert!(filter.selects(&publish("a")));
        assert!(filter.selects(&publish("b")));
        assert!(!filter.selects(&publish("c")));
    }

    #[test]
    fn a_topic_on_a_client_event_rule_is_ignored() {
        let filter = filter(&[(EventKind::ClientConnack, Some("not/a/+topic"))]);
        assert!(filter.selects(&connack()));
    }

    #[test]
    fn an_invalid_topic_filter_is_refused_naming_the_rule() {
        let error = Filter::new(config(&[
            (EventKind::MessagePublish, Some("a/#")),
            (EventKind::MessageDelivered, Some("a/#/b")),
        ]))
        .unwrap_err();
        assert!(error.starts_with("rule 2 (on_message_delivered): "), "{error}");
        assert!(error.contains("\"a/#/b\""), "{error}");
    }

    #[test]
    fn the_configured_encoding_is_used() {
        let mut config = config(&[(EventKind::MessagePublish, None)]);
        config.encoding = PayloadEncoding::Base64;
        let body = Filter::new(config).unwrap().handle(&publish("a")).unwrap();
        assert!(body.ends_with(br#""payload":"cA=="}"#));
    }
}
