//! Where to go after signing in (`rd`, SPEC §11): only a path of this origin, normalised like
//! any request path; anything else is `/`.

use http::uri::PathAndQuery;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::path;

/// Bytes a target keeps as they are: RFC 3986 `pchar`, `/`, `?` and `%` (escapes are checked by
/// the normaliser). Everything else, non-ASCII included, is percent-encoded.
const ESCAPED: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'[')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'\\');

/// The same-origin path and query that `rd` names, or `/`: it must begin with one `/` (not `//`
/// or `/\`, which browsers read as another host), hold no backslash or control character and
/// no scheme, and its path must normalise; the result is what the normaliser makes of it.
pub fn target(rd: &str) -> String {
    same_origin(rd).unwrap_or_else(|| "/".to_owned())
}

fn same_origin(rd: &str) -> Option<String> {
    let bytes = rd.as_bytes();
    if bytes.first() != Some(&b'/') || matches!(bytes.get(1), Some(b'/' | b'\\')) {
        return None;
    }
    if rd.chars().any(|c| c.is_control() || c == '\\') {
        return None;
    }
    // A fragment is the browser's own; it is not sent and not kept.
    let rd = rd.split('#').next().unwrap_or_default();
    let (raw_path, query) = match rd.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rd, None),
    };
    let raw_path = utf8_percent_encode(raw_path, ESCAPED).to_string();
    let normalised = path::normalize(&raw_path).ok()?;
    if !normalised.starts_with('/') || normalised.starts_with("//") {
        return None;
    }
    let target = match query.filter(|q| !q.is_empty()) {
        Some(q) => format!("{normalised}?{}", utf8_percent_encode(q, ESCAPED)),
        None => normalised,
    };
    PathAndQuery::try_from(target.as_str()).ok()?;
    Some(target)
}

/// `target` as a query parameter value.
pub fn encode(target: &str) -> String {
    form_urlencoded::byte_serialize(target.as_bytes()).collect()
}

/// The sign-in page's URL for coming back to `target`.
pub fn login_url(target: &str) -> String {
    format!("/auth/login?rd={}", encode(target))
}

/// The step-up page's URL for coming back to `target`.
pub fn step_up_url(target: &str) -> String {
    format!("/auth/step-up?rd={}", encode(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_targets_become_the_root() {
        for rd in [
            "",
            "//evil.example",
            "//evil.example/path",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example",
            "http:/evil.example",
            "javascript:alert(1)",
            " //evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/%2F%2Fevil.example",
            "/%5Cevil.example",
            "evil.example",
            "./x",
            "/a\\b",
            "/\u{0085}/evil",
        ] {
            assert_eq!(target(rd), "/", "{rd:?}");
        }
    }

    #[test]
    fn paths_of_this_origin_are_kept_normalised() {
        assert_eq!(target("/app/page"), "/app/page");
        assert_eq!(target("/app/page?x=1&y=2"), "/app/page?x=1&y=2");
        assert_eq!(target("/app/../admin/x"), "/admin/x");
        assert_eq!(target("/a/./b//c"), "/a/b/c");
        assert_eq!(target("/..//evil.example"), "/evil.example");
        assert_eq!(target("/app#frag"), "/app");
        assert_eq!(target("/café"), "/caf%C3%A9");
        assert_eq!(target("/x?q=a b"), "/x?q=a%20b");
        // An escaped control character stays escaped: a path of this origin still.
        assert_eq!(target("/%0a/evil"), "/%0A/evil");
    }

    #[test]
    fn urls_carry_the_target_encoded() {
        assert_eq!(
            login_url("/a?b=1&c=2"),
            "/auth/login?rd=%2Fa%3Fb%3D1%26c%3D2"
        );
        assert_eq!(step_up_url("/"), "/auth/step-up?rd=%2F");
    }
}
