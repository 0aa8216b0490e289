//! An example guest: NanoMQ's WebHook, with each request's path, headers and endpoint chosen
//! from the event's topic.
//!
//! Rules, topic matching and bodies are the default guest's (`mqhook-guest-nanomq`, used here as a
//! library): an event is delivered when a rule selects it, with NanoMQ's body. This guest adds:
//!
//! - the path: the path of the first route, in settings order, whose topic filter matches the
//!   event's topic; the `default` path when none does or the event carries no topic; no path (the
//!   configured URL as it is) when there is no `default` either. The host appends it to the path of
//!   the configured URL.
//! - the endpoint: the named endpoint (`webhook.endpoints`) of the first `endpoint.<topic-filter>`
//!   setting whose filter matches the topic; none (the rules' endpoints) otherwise. A name that
//!   is not configured is refused by `configure`.
//! - the headers: every `header.<name>` setting, in settings order, then `x-mqhook-topic` with
//!   the event's topic, for events that carry one. Header values can hold only visible ASCII and
//!   spaces, so the topic's other bytes, spaces and `%` are percent-encoded (`a b/ü` becomes
//!   `a%20b/%C3%BC`).
//!
//! An event's topic is the message's topic, or for subscription events the subscribed topic
//! filter, matched as if it were a topic, as the default guest's rules do.
//!
//! # Settings
//!
//! Read from `guest.settings`; `configure` refuses unknown, repeated or invalid ones.
//!
//! - `route.<topic-filter>`: the path for topics the MQTT topic filter matches (`+` and `#`
//!   wildcards, as in the rules).
//! - `endpoint.<topic-filter>`: the named endpoint for topics the filter matches.
//! - `default`: the path for everything else.
//! - `header.<name>`: a header added to every request.
//!
//! A path starts with `/` and holds only visible ASCII, no `#`. Topic filters contain `/`, so
//! quote the keys:
//!
//! ```hcl
//! settings = {
//!   "route.sensors/+/temperature" = "/temperatures"
//!   "route.sensors/#"             = "/sensors"
//!   "default"                     = "/events"
//!   "header.x-api-version"        = "2"
//! }
//! ```

use std::collections::HashSet;
use std::fmt::Write as _;

use mqhook_guest_nanomq::mqhook::filter::types::{Delivery, Event, FilterConfig};
use mqhook_guest_nanomq::topic::TopicFilter;
use mqhook_guest_nanomq::{event, Filter, GuestLogic};

/// The header that carries the event's topic.
pub const TOPIC_HEADER: &str = "x-mqhook-topic";

/// The configured guest: NanoMQ's filter and bodies, with routes and headers.
#[derive(Debug, Clone)]
pub struct Router {
    filter: Filter,
    /// Topic filters and their paths, first match wins.
    routes: Vec<(TopicFilter, String)>,
    /// Topic filters and their endpoints' names, first match wins.
    endpoints: Vec<(TopicFilter, String)>,
    default: Option<String>,
    headers: Vec<(String, String)>,
}

impl GuestLogic for Router {
    /// Builds the router from its configuration: the rules as the default guest checks them,
    /// routes, default path and headers from the settings.
    fn configure(config: FilterConfig) -> Result<Self, String> {
        let mut routes = Vec::new();
        let mut endpoints = Vec::new();
        let mut default = None;
        let mut headers = Vec::new();
        let mut seen = HashSet::new();
        for (key, value) in &config.settings {
            if !seen.insert(key.as_str()) {
                return Err(format!("setting `{key}` is given twice"));
            }
            let refuse = |reason: String| format!("setting `{key}`: {reason}");
            if let Some(filter) = key.strip_prefix("route.") {
                let filter = TopicFilter::new(filter).map_err(refuse)?;
                routes.push((filter, checked_path(value).map_err(refuse)?));
            } else if let Some(filter) = key.strip_prefix("endpoint.") {
                let filter = TopicFilter::new(filter).map_err(refuse)?;
                if !config.endpoints.contains(value) {
                    let known = config.endpoints.join(", ");
                    return Err(refuse(format!("no endpoint is named `{value}` (webhook.endpoints has: {known})")));
                }
                endpoints.push((filter, value.clone()));
            } else if let Some(name) = key.strip_prefix("header.") {
                check_header(name, value).map_err(refuse)?;
                headers.push((name.to_owned(), value.clone()));
            } else if key == "default" {
                default = Some(checked_path(value).map_err(refuse)?);
            } else {
                return Err(format!(
                    "unknown setting `{key}`: this guest reads `route.<topic-filter>`, `endpoint.<topic-filter>`, `default` and `header.<name>`"
                ));
            }
        }
        Ok(Self { filter: Filter::new(config)?, routes, endpoints, default, headers })
    }

    /// NanoMQ's body for `event` with the path and headers its topic chooses, or `None` when no
    /// rule selects it.
    fn handle(&self, event: &Event) -> Option<Delivery> {
        let body = Filter::handle(&self.filter, event)?;
        let topic = event::topic(event);
        let first = |table: &[(TopicFilter, String)]| {
            topic.and_then(|topic| {
                table.iter().find(|(filter, _)| filter.matches(topic)).map(|(_, value)| value.clone())
            })
        };
        let (route, endpoint) = (first(&self.routes), first(&self.endpoints));
        let mut headers = self.headers.clone();
        if let Some(topic) = topic {
            headers.push((TOPIC_HEADER.to_owned(), header_value(topic)));
        }
        Some(Delivery { body, headers, path: route.or_else(|| self.default.clone()), endpoint })
    }
}

/// `path` when the host can append it to a URL: `/` first, then visible ASCII except `#`.
fn checked_path(path: &str) -> Result<String, String> {
    let visible = path.bytes().all(|byte| byte.is_ascii_graphic() && byte != b'#');
    if path.starts_with('/') && visible {
        Ok(path.to_owned())
    } else {
        Err(format!("the path {path:?} must start with `/` and hold only visible ASCII, no `#`"))
    }
}

/// Refuses what HTTP does not allow: a name that is not a token, or a value with control or
/// non-ASCII characters.
fn check_header(name: &str, value: &str) -> Result<(), String> {
    const TOKEN_SYMBOLS: &[u8] = b"!#$%&'*+-.^_`|~";
    let token = |byte: u8| byte.is_ascii_alphanumeric() || TOKEN_SYMBOLS.contains(&byte);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    if !value.bytes().all(|byte| byte.is_ascii_graphic() || byte == b' ' || byte == b'\t') {
        return Err(format!("the value of header {name:?} may hold only visible ASCII, spaces and tabs"));
    }
    Ok(())
}

/// `topic` as a header value: visible ASCII but `%` as it is, every other byte percent-encoded.
fn header_value(topic: &str) -> String {
    let mut value = String::with_capacity(topic.len());
    for byte in topic.bytes() {
        if byte.is_ascii_graphic() && byte != b'%' {
            value.push(char::from(byte));
        } else {
            write!(value, "%{byte:02X}").expect("writing to a String cannot fail");
        }
    }
    value
}

mqhook_guest_nanomq::export_guest!(crate::Router, "router");

#[cfg(test)]
mod tests {
    use mqhook_guest_nanomq::mqhook::filter::types::{Client, EventKind, SubscribeOptions, Subscription};
    use mqhook_guest_nanomq::sample::{self, publish};

    use super::*;

    fn config(settings: &[(&str, &str)]) -> FilterConfig {
        let kinds = [EventKind::MessagePublish, EventKind::ClientConnack, EventKind::ClientSubscribe];
        sample::config(&kinds, settings)
    }

    fn router(settings: &[(&str, &str)]) -> Router {
        Router::configure(config(settings)).expect("valid settings")
    }

    fn client() -> Client {
        Client { clientid: "c1".to_owned(), username: None }
    }

    fn connack() -> Event {
        sample::connack(client())
    }

    fn path(router: &Router, event: &Event) -> Option<String> {
        router.handle(event).expect("selected").path
    }

    #[test]
    fn the_first_matching_route_wins_then_the_default() {
        let router =
            router(&[("route.sensors/+/temp", "/temps"), ("route.sensors/#", "/sensors"), ("default", "/other")]);
        assert_eq!(path(&router, &publish("sensors/kitchen/temp")).as_deref(), Some("/temps"));
        assert_eq!(path(&router, &publish("sensors/kitchen/hum")).as_deref(), Some("/sensors"));
        assert_eq!(path(&router, &publish("lights/1")).as_deref(), Some("/other"));
        assert_eq!(path(&router, &connack()).as_deref(), Some("/other"));
    }

    #[test]
    fn without_a_default_unmatched_events_have_no_path() {
        let router = router(&[("route.a", "/a")]);
        assert_eq!(path(&router, &publish("b")), None);
        assert_eq!(path(&router, &connack()), None);
    }

    #[test]
    fn subscriptions_route_by_their_topic_filter() {
        let router = router(&[("route.a/#", "/a")]);
        let subscribe = Event::ClientSubscribe(Subscription {
            client: client(),
            topic: "a/+".to_owned(),
            opts: SubscribeOptions { qos: 0, nl: None, rap: None, rh: None },
        });
        let delivery = router.handle(&subscribe).expect("selected");
        assert_eq!(delivery.path.as_deref(), Some("/a"));
        assert_eq!(delivery.headers, [(TOPIC_HEADER.to_owned(), "a/+".to_owned())]);
    }

    #[test]
    fn configured_headers_come_first_then_the_topic() {
        let router = router(&[("header.x-api-version", "2"), ("header.X-Team", "iot west")]);
        let delivery = router.handle(&publish("a b/ü%")).expect("selected");
        assert_eq!(
            delivery.headers,
            [
                ("x-api-version".to_owned(), "2".to_owned()),
                ("X-Team".to_owned(), "iot west".to_owned()),
                (TOPIC_HEADER.to_owned(), "a%20b/%C3%BC%25".to_owned()),
            ]
        );
        let connack = router.handle(&connack()).expect("selected");
        assert_eq!(connack.headers.len(), 2, "client events carry no topic");
    }

    #[test]
    fn the_body_is_nanomqs() {
        let delivery = router(&[]).handle(&publish("t")).expect("selected");
        assert_eq!(
            String::from_utf8(delivery.body).unwrap(),
            r#"{"ts":1,"topic":"t","retain":false,"qos":0,"action":"message_publish","from_username":"undefined","from_client_id":"c1","payload":"p"}"#
        );
    }

    #[test]
    fn invalid_settings_are_refused_naming_the_setting() {
        for (settings, reason) in [
            (&[("route.a/#/b", "/x")][..], "setting `route.a/#/b`: the topic filter"),
            (&[("route.", "/x")][..], "setting `route.`: the topic filter is empty"),
            (&[("route.a", "x")][..], "setting `route.a`: the path \"x\" must start with `/`"),
            (&[("default", "/a b")][..], "setting `default`: the path \"/a b\""),
            (&[("header.bad name", "1")][..], "\"bad name\" is not a valid header name"),
            (&[("header.", "1")][..], "\"\" is not a valid header name"),
            (&[("header.x", "caf\u{e9}")][..], "may hold only visible ASCII"),
            (&[("default", "/a"), ("default", "/b")][..], "`default` is given twice"),
            (&[("routes.a", "/a")][..], "unknown setting `routes.a`"),
            (&[("endpoint.a", "archive")][..], "setting `endpoint.a`: no endpoint is named `archive`"),
        ] {
            let error = Router::configure(config(settings)).unwrap_err();
            assert!(error.contains(reason), "{settings:?}: {error}");
        }
    }

    #[test]
    fn the_first_matching_endpoint_setting_chooses_the_endpoint() {
        let settings = [("endpoint.old/#", "archive"), ("endpoint.#", "audit")];
        let endpoints = vec!["audit".to_owned(), "archive".to_owned()];
        let router = Router::configure(FilterConfig { endpoints, ..config(&settings) }).expect("valid settings");
        let endpoint = |event: &Event| router.handle(event).expect("selected").endpoint;
        assert_eq!(endpoint(&publish("old/a")).as_deref(), Some("archive"));
        assert_eq!(endpoint(&publish("new/a")).as_deref(), Some("audit"));
        assert_eq!(endpoint(&connack()), None, "no topic, no choice: the rules' endpoints");
    }
}
