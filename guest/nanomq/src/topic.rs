//! MQTT topic filters and how they match topics (spec §4).
//!
//! A filter is split into levels at `/`; empty levels count. A level that is exactly `+` matches
//! exactly one level; a last level that is exactly `#` matches the rest of the topic, including
//! its parent (`foo/#` matches `foo`). Any other level matches only the same text: like NanoMQ,
//! and as the spec's truth table has it (`a+` does not match `ab`), a `+` or `#` inside a level is
//! an ordinary character. A filter is refused when it is empty, contains NUL, or has a `#` level
//! that is not the last, since none of these can mean anything sensible.
//!
//! Topics starting with `$` (such as `$SYS/…`) are the broker's own: as MQTT 3.1.1 §4.7.2 says, a
//! filter whose first level is a wildcard does not match them, while `$SYS/#` does. NanoMQ lets
//! `#` and `+` match them; mqhook follows the MQTT specification.
#![forbid(unsafe_code)]

/// A validated MQTT topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    filter: String,
}

impl TopicFilter {
    /// Accepts `filter` unless it is empty, contains NUL, or has a `#` level before its last.
    pub fn new(filter: &str) -> Result<Self, String> {
        if filter.is_empty() {
            return Err("the topic filter is empty".to_owned());
        }
        if filter.contains('\0') {
            return Err(format!("the topic filter {filter:?} contains a NUL character"));
        }
        let mut levels = filter.split('/');
        levels.next_back();
        if levels.any(|level| level == "#") {
            return Err(format!(
                "the topic filter {filter:?} has `#` before its last level; `#` matches the rest of a topic, as in \"a/#\""
            ));
        }
        Ok(Self { filter: filter.to_owned() })
    }

    /// Whether `topic` matches this filter.
    pub fn matches(&self, topic: &str) -> bool {
        filter_matches(&self.filter, topic)
    }
}

/// The levels of a topic or filter, split at `/`.
fn levels(text: &str) -> impl Iterator<Item = &[u8]> {
    text.as_bytes().split(|&byte| byte == b'/')
}

/// Whether `topic` matches `filter`, a filter [`TopicFilter::new`] accepts (the host checks its
/// rules' filters at load time, and matches with this).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    // Split as bytes: `/` never occurs inside a multi-byte UTF-8 character, and a byte split is
    // a plain loop where `str::split` runs a general pattern searcher (much of a guest call's cost).
    let mut filter_levels = levels(filter).peekable();
    if topic.starts_with('$') && matches!(filter_levels.peek(), Some(&(b"+" | b"#"))) {
        return false;
    }
    let mut topic_levels = levels(topic);
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // Validation put `#` last: it takes whatever is left, even nothing.
            (Some(b"#"), _) => return true,
            (Some(b"+"), Some(_)) => {}
            (Some(filter_level), Some(topic_level)) if filter_level == topic_level => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(filter: &str, topic: &str) -> bool {
        TopicFilter::new(filter).unwrap().matches(topic)
    }

    #[test]
    fn spec_truth_table() {
        let table = [
            ("a/b/c", "a/b/c", true),
            ("a/b/c", "a/b", false),
            ("foo/#", "foo/bar", true),
            ("foo/#", "foo", true),
            ("foo/#", "fo/bar", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("+", "/a", false),
            ("+/+", "/a", true),
            ("+/#", "a", true),
            ("a/b", "a/b/", false),
            ("a+", "ab", false),
        ];
        for (filter, topic, expected) in table {
            assert_eq!(matches(filter, topic), expected, "filter {filter:?}, topic {topic:?}");
        }
    }

    #[test]
    fn wildcards_inside_a_level_are_ordinary_characters() {
        assert!(matches("a+", "a+"));
        assert!(matches("a#", "a#"));
        assert!(matches("x/+b/#", "x/+b/c/d"));
        assert!(!matches("x/+b/#", "x/ab/c"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(!matches("#", "$SYS/brokers"));
        assert!(!matches("+/brokers", "$SYS/brokers"));
        assert!(!matches("+/#", "$SYS/brokers"));
        assert!(matches("$SYS/#", "$SYS/brokers"));
        assert!(matches("$SYS/+", "$SYS/brokers"));
        assert!(matches("#", "a/$SYS"));
        assert!(matches("a/+", "a/$SYS"));
        // Only a wildcard level counts: `$x` matches itself.
        assert!(matches("$x/+", "$x/y"));
    }

    #[test]
    fn hash_alone_matches_everything_else() {
        for topic in ["a", "a/b/c", "/", "", "/a/"] {
            assert!(matches("#", topic), "topic {topic:?}");
        }
    }

    #[test]
    fn empty_levels_are_levels() {
        assert!(matches("/", "/"));
        assert!(matches("+/+", "/"));
        assert!(!matches("+", "/"));
        assert!(matches("a//b", "a//b"));
        assert!(matches("a/+/b", "a//b"));
        assert!(!matches("a/b", "a//b"));
    }

    #[test]
    fn invalid_filters_are_refused_with_a_reason() {
        for (filter, reason) in [("", "empty"), ("a/\0", "NUL"), ("a/#/b", "`#`"), ("#/", "`#`"), ("#/#", "`#`")] {
            let error = TopicFilter::new(filter).unwrap_err();
            assert!(error.contains(reason), "filter {filter:?}: {error}");
        }
    }

    #[test]
    fn valid_filters_are_accepted() {
        for filter in ["#", "+", "/", "a/+/#", "+/+/+", "$SYS/#", "a b/ü/€", "a+", "a/b#", "++/#"] {
            assert!(TopicFilter::new(filter).is_ok(), "filter {filter:?}");
        }
    }
}
