//! MQTT topic names as NATS subject tokens, losslessly (docs/clustering.md, "Topics to
//! subjects").
//!
//! Each MQTT level becomes one NATS token; levels are joined with `.`. NATS tokens may not
//! be empty, contain `.` or whitespace, or be exactly `*` or `>`; MQTT levels may be all of
//! these but never contain `/`. So `/` is the escape character: `/d` is a `.`, `/e` an
//! empty level, `/xHH` a control or whitespace byte or DEL, `/*` and `/>` the levels `*`
//! and `>`. Decoding is unambiguous because every `/` starts an escape.

use std::fmt::Write;

/// The longest mapped topic put in a subject; longer topics travel as [`LONG_TOKEN`] (the
/// topic is in the payload anyway), which keeps subjects under NATS's control-line limit.
pub const MAX_MAPPED_LEN: usize = 1024;

/// The token standing for a topic too long to map (never produced by [`encode_topic`]).
pub const LONG_TOKEN: &str = "/long";

/// The subject tokens of MQTT topic `topic`, joined with `.`.
pub fn encode_topic(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        match level {
            "" => out.push_str("/e"),
            "*" => out.push_str("/*"),
            ">" => out.push_str("/>"),
            _ => {
                for c in level.chars() {
                    match c {
                        '.' => out.push_str("/d"),
                        c if c.is_ascii_control() || c == ' ' || c == '\x7f' => {
                            let _ = write!(out, "/x{:02X}", c as u32);
                        }
                        // Unicode whitespace would split the NATS protocol line as well.
                        c if c.is_whitespace() => {
                            let mut buf = [0u8; 4];
                            for b in c.encode_utf8(&mut buf).bytes() {
                                let _ = write!(out, "/x{b:02X}");
                            }
                        }
                        c => out.push(c),
                    }
                }
            }
        }
    }
    out
}

/// The MQTT topic of subject tokens made by [`encode_topic`]; `None` if malformed.
pub fn decode_topic(subject: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(subject.len());
    for (i, token) in subject.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'/');
        }
        match token {
            "/e" => {}
            "/*" => bytes.push(b'*'),
            "/>" => bytes.push(b'>'),
            _ => {
                let t = token.as_bytes();
                let mut j = 0;
                while j < t.len() {
                    if t[j] != b'/' {
                        bytes.push(t[j]);
                        j += 1;
                        continue;
                    }
                    match t.get(j + 1)? {
                        b'd' => {
                            bytes.push(b'.');
                            j += 2;
                        }
                        b'x' => {
                            let hex = std::str::from_utf8(t.get(j + 2..j + 4)?).ok()?;
                            bytes.push(u8::from_str_radix(hex, 16).ok()?);
                            j += 4;
                        }
                        _ => return None,
                    }
                }
            }
        }
    }
    String::from_utf8(bytes).ok()
}

/// Whether `s` is usable as one NATS subject token of ours (node ids).
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_subject_tokens(s: &str) -> bool {
        s.split('.').all(|t| !t.is_empty() && t != "*" && t != ">" && !t.chars().any(char::is_whitespace))
    }

    #[test]
    fn round_trips_awkward_topics() {
        for topic in [
            "a/b/c",
            "sensors/room.1/temp",
            "/leading",
            "trailing/",
            "a//b",
            "/",
            "//",
            "$SYS/broker/load",
            "with space/and\ttab",
            "*/>/x*/>y",
            "unicode/ünïcødé/\u{3000}wide space",
            "slash-free/d/e/x41",
            "dots...",
            "\u{7f}del",
        ] {
            let enc = encode_topic(topic);
            assert!(valid_subject_tokens(&enc), "{topic:?} gave invalid subject {enc:?}");
            assert_eq!(decode_topic(&enc).as_deref(), Some(topic), "via {enc:?}");
        }
    }

    #[test]
    fn distinct_topics_give_distinct_subjects() {
        let topics = ["a.b", "a/b", "a//b", "a/", "a", "a/*", "a/>", "a/ ", "a/%20", "a/.", "a/e"];
        let mut seen = std::collections::HashSet::new();
        for t in topics {
            assert!(seen.insert(encode_topic(t)), "collision for {t:?}");
        }
    }

    #[test]
    fn long_token_is_never_produced() {
        assert_ne!(encode_topic("/long"), LONG_TOKEN);
        assert_eq!(encode_topic("long"), "long");
        assert!(decode_topic("/long").is_none());
    }

    #[test]
    fn node_ids() {
        assert!(is_token("tern-1"));
        assert!(!is_token("tern.1"));
        assert!(!is_token(""));
        assert!(!is_token("a b"));
    }
}
