//! Topic name and topic filter rules (MQTT 4.7): validation, shared-subscription syntax and
//! matching a filter against a name.

use thiserror::Error;

/// Why a topic name or filter is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TopicError {
    /// Empty topic name or filter (MQTT-4.7.3-1).
    #[error("topic must be at least one character long (MQTT-4.7.3-1)")]
    Empty,
    /// Wildcard in a topic name (MQTT-3.3.2-2).
    #[error("topic name must not contain wildcards (MQTT-3.3.2-2)")]
    WildcardInName,
    /// `#` not alone in the last level (MQTT-4.7.1-1).
    #[error("'#' must be the last character and occupy a whole level (MQTT-4.7.1-1)")]
    MultiLevelMisplaced,
    /// `+` not alone in its level (MQTT-4.7.1-2).
    #[error("'+' must occupy a whole level (MQTT-4.7.1-2)")]
    SingleLevelMisplaced,
    /// `$share/` without a valid non-empty group name and filter (MQTT-4.8.2-1, MQTT-4.8.2-2).
    #[error(
        "shared subscription must be $share/{{group}}/{{filter}} with a non-empty group free of '/', '+', '#' (MQTT-4.8.2-1)"
    )]
    InvalidShare,
    /// More levels than the configured limit.
    #[error("topic has more levels than allowed")]
    TooManyLevels,
}

/// Whether `c` is a wildcard character.
fn has_wildcard(s: &str) -> bool {
    s.bytes().any(|b| b == b'+' || b == b'#')
}

/// Validates a topic name for PUBLISH: non-empty, no wildcards.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if has_wildcard(name) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Validates a (non-shared) topic filter: non-empty, wildcards placed correctly.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MultiLevelMisplaced);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::SingleLevelMisplaced);
        }
    }
    Ok(())
}

/// Number of levels in a topic name or filter.
pub fn level_count(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// A parsed SUBSCRIBE topic filter: plain, or shared (`$share/{group}/{filter}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicFilter<'a> {
    /// The share group name, for a shared subscription.
    pub share_group: Option<&'a str>,
    /// The filter proper (without the `$share/{group}/` prefix).
    pub filter: &'a str,
}

impl<'a> TopicFilter<'a> {
    /// Parses and validates a filter as sent in SUBSCRIBE or UNSUBSCRIBE.
    pub fn parse(raw: &'a str) -> Result<TopicFilter<'a>, TopicError> {
        if let Some(rest) = raw.strip_prefix("$share/") {
            let (group, filter) = rest.split_once('/').ok_or(TopicError::InvalidShare)?;
            if group.is_empty() || has_wildcard(group) || filter.is_empty() {
                return Err(TopicError::InvalidShare);
            }
            validate_topic_filter(filter)?;
            Ok(TopicFilter { share_group: Some(group), filter })
        } else if raw == "$share" {
            Err(TopicError::InvalidShare)
        } else {
            validate_topic_filter(raw)?;
            Ok(TopicFilter { share_group: None, filter: raw })
        }
    }

    /// Whether the filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        has_wildcard(self.filter)
    }
}

/// Whether a valid topic `filter` matches a valid topic `name`.
///
/// Topic names starting with `$` are not matched by a filter starting with a wildcard
/// (MQTT-4.7.2-1).
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(nl)) if fl == nl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_validation() {
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/", "a//b", "sport/tennis/#", "+/tennis/#"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for (bad, e) in [
            ("", TopicError::Empty),
            ("a/#/b", TopicError::MultiLevelMisplaced),
            ("a#", TopicError::MultiLevelMisplaced),
            ("a/b#", TopicError::MultiLevelMisplaced),
            ("a+", TopicError::SingleLevelMisplaced),
            ("a/+b/c", TopicError::SingleLevelMisplaced),
        ] {
            assert_eq!(validate_topic_filter(bad), Err(e), "{bad}");
        }
    }

    #[test]
    fn shared_filters() {
        assert_eq!(
            TopicFilter::parse("$share/g1/a/+"),
            Ok(TopicFilter { share_group: Some("g1"), filter: "a/+" })
        );
        for bad in ["$share/", "$share//a", "$share/g", "$share/g/", "$share/g+/a", "$share/g#/a", "$share"] {
            assert_eq!(TopicFilter::parse(bad), Err(TopicError::InvalidShare), "{bad}");
        }
        assert_eq!(TopicFilter::parse("$shared/a").unwrap().share_group, None);
    }

    #[test]
    fn matching() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
            ("sport/#", "sport", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "$SYS/broker", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/broker", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
        ];
        for (f, n, want) in cases {
            assert_eq!(matches(f, n), want, "{f} vs {n}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(validate_topic_name("a/b"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(level_count("a/b/c"), 3);
        assert_eq!(level_count("/"), 2);
    }
}
