//! What every source does with text that came from elsewhere (an endpoint's
//! error message, a command's stderr, an error chain) before it goes into a
//! one-line message for the user: control characters become spaces, and
//! the length is bounded.

use std::time::Duration;

/// How much of a foreign message a [`super::SourceError`] quotes.
pub const MESSAGE_CHARS: usize = 300;

/// `s` with every control character (newlines included) as a space.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// [`printable`], cut to its first [`MESSAGE_CHARS`] characters (and `…`).
pub fn clip(s: &str) -> String {
    let s = printable(s);
    if s.chars().count() > MESSAGE_CHARS {
        format!("{}…", s.chars().take(MESSAGE_CHARS).collect::<String>())
    } else {
        s
    }
}

/// The last `max` characters of `s` (after `…` when cut): where a log's
/// reason usually is.
pub fn tail(s: &str, max: usize) -> String {
    let count = s.chars().count();
    if count > max {
        format!("…{}", s.chars().skip(count - max).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// An error and its sources on one line, each message once, clipped.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    clip(&parts.join(": "))
}

/// A `Retry-After` value in seconds (the form token endpoints send).
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// An HTTP `Date` (IMF-fixdate: `Wed, 02 Dec 2026 16:20:00 GMT`).
pub fn http_date(s: &str) -> Option<std::time::SystemTime> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(s.trim(), &format)
        .ok()
        .map(|t| std::time::SystemTime::from(t.assume_utc()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_text_is_one_bounded_line() {
        assert_eq!(printable("a\nb\tc\u{7}"), "a b c ");
        let long = "x".repeat(MESSAGE_CHARS + 5);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), MESSAGE_CHARS + 1);
        assert!(clipped.ends_with('…'));
        assert_eq!(clip("short\r\n"), "short  ");
        assert_eq!(tail("abcdef", 3), "…def");
        assert_eq!(tail("abc", 3), "abc");
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: inner failed")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner failed")]
        struct Inner(#[source] std::io::Error);
        let e = Outer(Inner(std::io::Error::other("disk on fire")));
        assert_eq!(error_chain(&e), "outer: inner failed: disk on fire");
    }

    #[test]
    fn retry_after_reads_seconds() {
        assert_eq!(retry_after(Some(" 30 ")), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(None), None);
    }
}
