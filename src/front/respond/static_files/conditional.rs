//! Validators and conditional requests (RFC 9110 §8.8 and §13) for files.
//!
//! A file's ETag is strong and made from its modification time (to the nanosecond) and
//! size, like nginx's; each precompressed sibling is a file of its own and so has its
//! own ETag, as a strong validator must differ between representations (§8.8.3).

use std::time::{SystemTime, UNIX_EPOCH};

use httpdate::HttpDate;
use hyper::HeaderMap;
use hyper::header::{
    HeaderValue, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
};

/// What identifies one version of a file.
#[derive(Debug, Clone)]
pub struct Validators {
    /// The strong entity tag, with its quotes.
    pub etag: String,
    /// The modification time, to the second, if the file system gives one.
    pub last_modified: Option<HttpDate>,
}

impl Validators {
    /// The validators of a file of `length` bytes modified at `modified`.
    pub fn new(length: u64, modified: Option<SystemTime>) -> Validators {
        let since_epoch = modified
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        Validators {
            etag: format!(
                "\"{:x}-{:x}-{:x}\"",
                since_epoch.as_secs(),
                since_epoch.subsec_nanos(),
                length
            ),
            last_modified: modified.map(HttpDate::from),
        }
    }

    /// The ETag header value.
    pub fn etag_value(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.etag).ok()
    }

    /// The Last-Modified header value.
    pub fn last_modified_value(&self) -> Option<HeaderValue> {
        self.last_modified
            .and_then(|date| HeaderValue::from_str(&date.to_string()).ok())
    }
}

/// The verdict of a request's preconditions.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Carry on with the request.
    Proceed,
    /// 304: the client's copy is current (GET and HEAD only).
    NotModified,
    /// 412: a precondition the client set is false.
    Failed,
}

/// Evaluates the preconditions in the order of RFC 9110 §13.2.2, for a GET or HEAD.
pub fn evaluate(headers: &HeaderMap, current: &Validators) -> Verdict {
    // Step 1 and 2: If-Match, or else If-Unmodified-Since.
    if let Some(value) = headers.get(IF_MATCH) {
        if !matches_any(value, |tag| strong_eq(tag, &current.etag)) {
            return Verdict::Failed;
        }
    } else if let (Some(since), Some(modified)) = (
        date(headers.get(IF_UNMODIFIED_SINCE)),
        current.last_modified,
    ) && modified > since
    {
        return Verdict::Failed;
    }
    // Step 3 and 4: If-None-Match, or else If-Modified-Since.
    if let Some(value) = headers.get(IF_NONE_MATCH) {
        if matches_any(value, |tag| weak_eq(tag, &current.etag)) {
            return Verdict::NotModified;
        }
    } else if let (Some(since), Some(modified)) =
        (date(headers.get(IF_MODIFIED_SINCE)), current.last_modified)
        && modified <= since
    {
        return Verdict::NotModified;
    }
    Verdict::Proceed
}

/// Whether a Range may be honoured given If-Range (§13.1.5): true without If-Range;
/// with one, only if it names the current version by a strong ETag or exact date.
pub fn range_allowed(headers: &HeaderMap, current: &Validators) -> bool {
    let Some(value) = headers.get(IF_RANGE) else {
        return true;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let text = text.trim();
    if text.starts_with('"') || text.starts_with("W/") {
        return strong_eq(text, &current.etag);
    }
    match (text.parse::<HttpDate>(), current.last_modified) {
        (Ok(date), Some(modified)) => date == modified,
        _ => false,
    }
}

fn date(value: Option<&HeaderValue>) -> Option<HttpDate> {
    value?.to_str().ok()?.trim().parse().ok()
}

/// Whether a list of entity tags (or `*`) has one for which `test` holds. A malformed
/// list matches nothing.
fn matches_any(value: &HeaderValue, test: impl Fn(&str) -> bool) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    if text.trim() == "*" {
        return true;
    }
    entity_tags(text).is_some_and(|tags| tags.iter().any(|tag| test(tag)))
}

/// Splits `#entity-tag` (§8.8.3): `W/"a", "b,c"`; None if malformed.
fn entity_tags(text: &str) -> Option<Vec<&str>> {
    let mut tags = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Some(tags);
        }
        let opaque_start = if rest.starts_with("W/\"") { 2 } else { 0 };
        if !rest[opaque_start..].starts_with('"') {
            return None;
        }
        let close = rest[opaque_start + 1..].find('"')? + opaque_start + 1;
        tags.push(&rest[..=close]);
        rest = &rest[close + 1..];
        if !(rest.is_empty() || rest.starts_with([' ', '\t', ','])) {
            return None;
        }
    }
}

/// Strong comparison (§8.8.3.2): neither weak, same opaque tag.
fn strong_eq(tag: &str, ours: &str) -> bool {
    !tag.starts_with("W/") && tag == ours
}

/// Weak comparison (§8.8.3.2): same opaque tag, weakness ignored.
fn weak_eq(tag: &str, ours: &str) -> bool {
    tag.strip_prefix("W/").unwrap_or(tag) == ours.strip_prefix("W/").unwrap_or(ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn current() -> Validators {
        Validators::new(10, Some(UNIX_EPOCH + Duration::from_secs(1_000_000)))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn etag_shape() {
        let v = current();
        assert_eq!(v.etag, "\"f4240-0-a\"");
        assert_eq!(
            v.last_modified_value().unwrap(),
            "Mon, 12 Jan 1970 13:46:40 GMT"
        );
        let other = Validators::new(11, Some(UNIX_EPOCH + Duration::from_secs(1_000_000)));
        assert_ne!(v.etag, other.etag);
    }

    #[test]
    fn if_none_match() {
        let v = current();
        let tag = v.etag.clone();
        assert_eq!(
            evaluate(&headers(&[("if-none-match", &tag)]), &v),
            Verdict::NotModified
        );
        assert_eq!(
            evaluate(&headers(&[("if-none-match", &format!("W/{tag}"))]), &v),
            Verdict::NotModified
        );
        assert_eq!(
            evaluate(&headers(&[("if-none-match", &format!("\"x\", {tag}"))]), &v),
            Verdict::NotModified
        );
        assert_eq!(
            evaluate(&headers(&[("if-none-match", "*")]), &v),
            Verdict::NotModified
        );
        assert_eq!(
            evaluate(&headers(&[("if-none-match", "\"other\"")]), &v),
            Verdict::Proceed
        );
        // If-None-Match present: If-Modified-Since is not looked at (§13.1.3).
        assert_eq!(
            evaluate(
                &headers(&[
                    ("if-none-match", "\"other\""),
                    ("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT")
                ]),
                &v
            ),
            Verdict::Proceed
        );
    }

    #[test]
    fn dates() {
        let v = current();
        let same = "Mon, 12 Jan 1970 13:46:40 GMT";
        let before = "Mon, 12 Jan 1970 13:46:39 GMT";
        assert_eq!(
            evaluate(&headers(&[("if-modified-since", same)]), &v),
            Verdict::NotModified
        );
        assert_eq!(
            evaluate(&headers(&[("if-modified-since", before)]), &v),
            Verdict::Proceed
        );
        assert_eq!(
            evaluate(&headers(&[("if-modified-since", "garbage")]), &v),
            Verdict::Proceed
        );
        assert_eq!(
            evaluate(&headers(&[("if-unmodified-since", before)]), &v),
            Verdict::Failed
        );
        assert_eq!(
            evaluate(&headers(&[("if-unmodified-since", same)]), &v),
            Verdict::Proceed
        );
    }

    #[test]
    fn if_match() {
        let v = current();
        assert_eq!(
            evaluate(&headers(&[("if-match", &v.etag.clone())]), &v),
            Verdict::Proceed
        );
        assert_eq!(
            evaluate(&headers(&[("if-match", &format!("W/{}", v.etag))]), &v),
            Verdict::Failed
        );
        assert_eq!(
            evaluate(&headers(&[("if-match", "\"nope\"")]), &v),
            Verdict::Failed
        );
        assert_eq!(
            evaluate(&headers(&[("if-match", "*")]), &v),
            Verdict::Proceed
        );
    }

    #[test]
    fn if_range() {
        let v = current();
        assert!(range_allowed(&HeaderMap::new(), &v));
        assert!(range_allowed(
            &headers(&[("if-range", &v.etag.clone())]),
            &v
        ));
        assert!(!range_allowed(
            &headers(&[("if-range", &format!("W/{}", v.etag))]),
            &v
        ));
        assert!(!range_allowed(&headers(&[("if-range", "\"old\"")]), &v));
        assert!(range_allowed(
            &headers(&[("if-range", "Mon, 12 Jan 1970 13:46:40 GMT")]),
            &v
        ));
        assert!(!range_allowed(
            &headers(&[("if-range", "Mon, 12 Jan 1970 13:46:39 GMT")]),
            &v
        ));
    }

    #[test]
    fn tag_lists() {
        assert_eq!(
            entity_tags("W/\"a\", \"b,c\",\"d\""),
            Some(vec!["W/\"a\"", "\"b,c\"", "\"d\""])
        );
        assert_eq!(entity_tags("abc"), None);
        assert_eq!(entity_tags("\"a\"x"), None);
        assert_eq!(entity_tags("\"unterminated"), None);
    }
}
