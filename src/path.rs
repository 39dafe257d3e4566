//! Path normalisation: the one path that route rules, local endpoints and the upstream all see.
//!
//! Percent-encoded unreserved characters are decoded (RFC 3986 §6.2.2.2), other escapes are kept
//! with upper-case hex, `.` and `..` segments are resolved (RFC 3986 §5.2.4, never above the root)
//! and empty segments collapsed. An encoded `/`, `\` or `;`, a `\` or a NUL would let the
//! application see a different path than the one authorised, so they are refused instead of
//! guessed at.
//!
//! Matching must agree with the most lenient server an upstream could be (SPEC §2). Tomcat, Jetty
//! and Spring read `;` as the start of a segment's parameters (`/admin;a=b/x` is `/admin/x` to
//! them) and resolve `..;` as `..`, so here too a segment whose name (before its first `;`) is
//! empty, `.` or `..` is an empty or dot segment, whatever parameters follow. Parameters of
//! ordinary segments are kept in the path that is forwarded (Java applications carry
//! `;jsessionid=` there) and ignored for matching: [`match_key`] is what rules and local endpoints
//! compare, ASCII-case-insensitively, against.

use std::fmt;

/// Why a request path was refused (answered 400, never forwarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/` (for example `*` or an empty path).
    NotAbsolute,
    /// `%2F`: a slash the application would decode into a segment separator.
    EncodedSlash,
    /// `\` or `%5C`: some servers treat it as a separator.
    Backslash,
    /// `%3B`: an application that decodes before it splits parameters off would read a `;` that
    /// matching did not see.
    EncodedSemicolon,
    /// A NUL byte, raw or as `%00`.
    Nul,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// A raw `#` in a described request's path (forward-auth): a request target has no fragment.
    Fragment,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path must start with `/`",
            PathError::EncodedSlash => "the path contains an encoded `/` (%2F)",
            PathError::Backslash => "the path contains a backslash",
            PathError::EncodedSemicolon => "the path contains an encoded `;` (%3B)",
            PathError::Nul => "the path contains a NUL byte",
            PathError::BadEscape => "the path contains a malformed percent escape",
            PathError::Fragment => "the path contains a `#`",
        })
    }
}

impl std::error::Error for PathError {}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes unreserved escapes and refuses the dangerous ones; the result is still a valid path.
fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi << 4 | lo;
                match v {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    b';' => return Err(PathError::EncodedSemicolon),
                    0 => return Err(PathError::Nul),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    v => {
                        out.push('%');
                        out.push(char::from(HEX[usize::from(v >> 4)]));
                        out.push(char::from(HEX[usize::from(v & 0xf)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            _ => {
                // Copy the run up to the next byte of interest in one go (keeps UTF-8 intact).
                let end = bytes[i..]
                    .iter()
                    .position(|b| matches!(b, b'%' | b'\\' | 0))
                    .map_or(bytes.len(), |p| i + p);
                out.push_str(&raw[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

/// Normalises a request path (without its query).
pub fn normalize(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(raw) {
        return Ok(raw.to_owned());
    }
    resolve(raw)
}

/// [`normalize`] the long way: decode, then resolve the segments.
pub(crate) fn resolve(raw: &str) -> Result<String, PathError> {
    let decoded = decode_unreserved(raw)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split('/').skip(1) {
        trailing_slash = true;
        match segment_name(segment) {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// A segment's name: what precedes its first `;` (its parameters).
fn segment_name(segment: &str) -> &str {
    segment.split_once(';').map_or(segment, |(name, _)| name)
}

/// What route rules and local endpoints compare a normalised path with: the path without each
/// segment's `;` parameters (`/admin;a=b/x` is `/admin/x`), its remaining escapes decoded as an
/// application decodes them (`/caf%C3%A9` is `/café`). Decoding cannot split or join segments
/// here: the escapes that would (`%2F`, `%3B`, `%5C`, `%00`) were refused. Borrowed when there is
/// nothing to remove or decode, as for most paths.
pub fn match_key(normal: &str) -> std::borrow::Cow<'_, str> {
    if !normal.contains([';', '%']) {
        return std::borrow::Cow::Borrowed(normal);
    }
    let mut key = String::with_capacity(normal.len());
    for segment in normal.split('/').skip(1) {
        key.push('/');
        key.push_str(segment_name(segment));
    }
    std::borrow::Cow::Owned(
        percent_encoding::percent_decode_str(&key)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// Whether `raw` (absolute) is already what [`normalize`] would make of it: nothing to decode or
/// refuse, no empty segment but a trailing one, no `.` or `..` segment (parameters or not). Most
/// paths are.
fn is_normal(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    // One pass over the bytes: where the current segment starts (just after its `/`), and where
    // its name ends (its first `;`). Nothing before the first `/` is a segment.
    let mut start: Option<usize> = None;
    let mut name_end: Option<usize> = None;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' | 0 => return false,
            b'/' => {
                // A segment with another after it needs a name, and not `.` or `..`.
                if let Some(start) = start
                    && !is_plain_name(&bytes[start..name_end.unwrap_or(i)])
                {
                    return false;
                }
                start = Some(i + 1);
                name_end = None;
            }
            b';' if name_end.is_none() => name_end = Some(i),
            _ => {}
        }
    }
    // The last segment may be empty (a trailing `/`), else it needs a plain name too.
    match start {
        Some(start) if start < bytes.len() => {
            is_plain_name(&bytes[start..name_end.unwrap_or(bytes.len())])
        }
        _ => true,
    }
}

/// Whether a segment's name is a name: not empty, `.` or `..`.
fn is_plain_name(name: &[u8]) -> bool {
    !matches!(name, b"" | b"." | b"..")
}

/// A character as paths are compared in any letter case: ASCII letters in lower case, and the
/// non-ASCII letters whose simple case mapping is an ASCII letter as that letter. Java's
/// `equalsIgnoreCase` and `Character.toLowerCase`, behind Spring's case-insensitive path
/// matching, read `İ` (U+0130) and `ı` (U+0131) as `i`, `ſ` (U+017F) as `s` and the Kelvin sign
/// (U+212A) as `k`, so such an upstream serves `/adm%C4%B0n/x` as `/admin/x`.
pub(crate) fn fold(c: char) -> char {
    match c {
        '\u{130}' | '\u{131}' => 'i',
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    }
}

/// `path` after `prefix`, when it starts with it in any letter case ([`fold`]).
pub fn strip_prefix_ignore_case<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    if let Some(head) = path.as_bytes().get(..prefix.len())
        && head.eq_ignore_ascii_case(prefix.as_bytes())
    {
        // Only ASCII letters differ, so the split falls where it falls in `prefix`: on a boundary.
        return path.get(prefix.len()..);
    }
    if path.is_ascii() && prefix.is_ascii() {
        return None;
    }
    let mut rest = path.chars();
    for p in prefix.chars() {
        if fold(rest.next()?) != fold(p) {
            return None;
        }
    }
    Some(rest.as_str())
}

/// Whether `a` and `b` are equal in any letter case ([`fold`]).
pub fn eq_ignore_case(a: &str, b: &str) -> bool {
    strip_prefix_ignore_case(a, b).is_some_and(str::is_empty)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_taken_as_already_normal_are_what_resolving_gives() {
        let paths = [
            "/",
            "/a",
            "/a/",
            "/a/b/c",
            "/a//b",
            "//",
            "/a/.",
            "/a/..",
            "/./a",
            "/a/../b/",
            "/a/.b",
            "/a/..b/",
            "/..",
            "/.well-known/jwks.json",
            "/a%2e",
            "/a/b//",
            "/é/ü",
        ];
        for p in paths {
            if is_normal(p) {
                assert_eq!(resolve(p).unwrap(), p, "{p}");
            }
            assert_eq!(normalize(p), resolve(p), "{p}");
        }
        assert!(is_normal("/public/a/b.txt"));
        assert!(!is_normal("/a//b"));
    }

    #[test]
    fn dot_segments_resolve_and_never_climb_above_root() {
        assert_eq!(normalize("/public/../admin").unwrap(), "/admin");
        assert_eq!(normalize("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(normalize("/public/%2E./admin").unwrap(), "/admin");
        assert_eq!(normalize("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(normalize("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(normalize("/a/b/..").unwrap(), "/a/");
    }

    #[test]
    fn duplicate_slashes_collapse_and_trailing_slash_is_kept() {
        assert_eq!(normalize("//admin//x/").unwrap(), "/admin/x/");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("//").unwrap(), "/");
        assert_eq!(normalize("/a").unwrap(), "/a");
    }

    #[test]
    fn unreserved_escapes_decode_and_others_are_kept_upper_case() {
        assert_eq!(normalize("/%61%7e%2D").unwrap(), "/a~-");
        assert_eq!(normalize("/a%20b%3f").unwrap(), "/a%20b%3F");
        assert_eq!(normalize("/%252e%252e/").unwrap(), "/%252e%252e/");
        assert_eq!(normalize("/caf\u{e9}").unwrap(), "/caf\u{e9}");
    }

    #[test]
    fn dangerous_encodings_are_refused() {
        assert_eq!(normalize("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%5Cb"), Err(PathError::Backslash));
        assert_eq!(normalize("/a\\b"), Err(PathError::Backslash));
        assert_eq!(normalize("/a%00"), Err(PathError::Nul));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEscape));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a%3Bb"), Err(PathError::EncodedSemicolon));
        assert_eq!(normalize("/a%3b/x"), Err(PathError::EncodedSemicolon));
    }

    #[test]
    fn a_segment_named_dot_or_dot_dot_before_its_parameters_is_a_dot_segment() {
        assert_eq!(normalize("/public/..;/admin/x").unwrap(), "/admin/x");
        assert_eq!(normalize("/public/..;a=b/admin/x").unwrap(), "/admin/x");
        assert_eq!(normalize("/public/%2e%2e;/admin/x").unwrap(), "/admin/x");
        assert_eq!(normalize("/public/.;x/a").unwrap(), "/public/a");
        assert_eq!(normalize("/;x/admin/;y").unwrap(), "/admin/");
        assert_eq!(normalize("/a/..;").unwrap(), "/");
    }

    #[test]
    fn parameters_of_ordinary_segments_are_kept_and_left_out_of_the_match_key() {
        assert_eq!(normalize("/admin;a=b/x").unwrap(), "/admin;a=b/x");
        assert_eq!(match_key("/admin;a=b/x"), "/admin/x");
        assert_eq!(match_key("/a/b;jsessionid=1"), "/a/b");
        assert_eq!(match_key("/a;/"), "/a/");
        assert_eq!(match_key("/caf%C3%A9/a%20b;x"), "/caf\u{e9}/a b");
        assert_eq!(match_key("/%252e%252e/"), "/%2e%2e/");
        assert!(matches!(
            match_key("/a/b"),
            std::borrow::Cow::Borrowed("/a/b")
        ));
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in ["/a/../b/./c//d/", "/%7euser/x", "/x/%2e", "/a%20b"] {
            let once = normalize(p).unwrap();
            assert_eq!(normalize(&once).unwrap(), once, "{p}");
        }
    }
}

#[cfg(test)]
mod properties {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// Pieces of a path with what each decodes to: plain and encoded dot segments, unreserved
    /// and reserved escapes, non-ASCII, and every escape that must be refused.
    const ATOMS: &[(&str, Result<&str, PathError>)] = &[
        // Plain: the first PLAIN atoms need no decoding.
        ("", Ok("")),
        ("a", Ok("a")),
        ("public", Ok("public")),
        ("B~c_d-e", Ok("B~c_d-e")),
        (".", Ok(".")),
        ("..", Ok("..")),
        ("...", Ok("...")),
        (".a", Ok(".a")),
        ("\u{e9}", Ok("\u{e9}")),
        // Escaped.
        ("%2e", Ok(".")),
        ("%2E%2e", Ok("..")),
        (".%2E", Ok("..")),
        ("%2e.", Ok("..")),
        ("%41%7e%5F", Ok("A~_")),
        ("%20", Ok("%20")),
        ("a%3fb", Ok("a%3Fb")),
        ("%25", Ok("%25")),
        ("%252e", Ok("%252e")),
        ("%e2%82%ac", Ok("%E2%82%AC")),
        // Parameters: ignored for matching, and a dot segment stays one whatever follows its `;`.
        ("a;b=c", Ok("a;b=c")),
        (";x", Ok(";x")),
        ("..;", Ok("..;")),
        (".;x", Ok(".;x")),
        ("%2e%2e;a", Ok("..;a")),
        // Refused.
        ("%2F", Err(PathError::EncodedSlash)),
        ("%2f", Err(PathError::EncodedSlash)),
        ("%5C", Err(PathError::Backslash)),
        ("\\", Err(PathError::Backslash)),
        ("%00", Err(PathError::Nul)),
        ("\0", Err(PathError::Nul)),
        ("%3B", Err(PathError::EncodedSemicolon)),
        ("a%3bb", Err(PathError::EncodedSemicolon)),
        ("%zz", Err(PathError::BadEscape)),
        ("%4", Err(PathError::BadEscape)),
        ("%", Err(PathError::BadEscape)),
    ];
    const PLAIN: usize = 9;

    /// RFC 3986 §5.2.4 on the decoded segments, written the simple way: a stack.
    fn model(atoms: &[usize]) -> Result<String, PathError> {
        let mut stack: Vec<&str> = Vec::new();
        let mut trailing_slash = atoms.is_empty();
        for &i in atoms {
            let decoded = ATOMS[i].1?;
            let name = decoded.split(';').next().unwrap_or_default();
            trailing_slash = matches!(name, "" | "." | "..");
            match name {
                "" | "." => {}
                ".." => {
                    stack.pop();
                }
                _ => stack.push(decoded),
            }
        }
        let mut out: String = stack.iter().map(|s| format!("/{s}")).collect();
        if trailing_slash || stack.is_empty() {
            out.push('/');
        }
        Ok(out)
    }

    fn atom_path() -> impl Strategy<Value = (String, Vec<usize>)> {
        // Mostly plain atoms, so that many paths take the shortcut for already normal ones.
        let atom = prop_oneof![3 => 0..PLAIN, 2 => 0..ATOMS.len()];
        prop::collection::vec(atom, 0..12).prop_map(|atoms| {
            let path: String = atoms.iter().map(|&i| format!("/{}", ATOMS[i].0)).collect();
            (
                if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                },
                atoms,
            )
        })
    }

    /// Any text that starts with `/`, biased towards the characters that matter here.
    fn any_path() -> impl Strategy<Value = String> {
        prop_oneof![
            "/[a-zA-Z0-9./%_~;=\\\\-]{0,40}",
            "/(%[0-9a-fA-FgG]{0,2}|[./;]|\\PC){0,30}",
            atom_path().prop_map(|(p, _)| p),
        ]
    }

    fn assert_normal(path: &str) -> Result<(), TestCaseError> {
        prop_assert!(path.starts_with('/'), "{}", path);
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        for (i, segment) in segments.iter().enumerate() {
            let name = segment_name(segment);
            prop_assert!(!matches!(name, "." | ".."), "dot segment in {}", path);
            prop_assert!(
                !name.is_empty() || (i + 1 == segments.len() && segment.is_empty()),
                "empty segment in {}",
                path
            );
        }
        prop_assert!(!path.contains('\\') && !path.contains('\0'), "{}", path);
        let upper = path.to_ascii_uppercase();
        prop_assert!(
            !upper.contains("%2F")
                && !upper.contains("%5C")
                && !upper.contains("%00")
                && !upper.contains("%3B"),
            "{}",
            path
        );
        Ok(())
    }

    proptest! {
        #[test]
        fn normalising_is_idempotent(path in any_path()) {
            if let Ok(once) = normalize(&path) {
                prop_assert_eq!(normalize(&once), Ok(once.clone()));
            }
        }

        #[test]
        fn a_normalised_path_has_no_dot_or_empty_inner_segment(path in any_path()) {
            if let Ok(normal) = normalize(&path) {
                assert_normal(&normal)?;
            }
        }

        #[test]
        fn dot_segments_resolve_like_a_stack_that_never_climbs_above_the_root(
            (path, atoms) in atom_path(),
        ) {
            prop_assert_eq!(normalize(&path), model(&atoms), "{}", path);
        }

        #[test]
        fn a_path_that_is_already_normal_is_returned_unchanged(
            segments in prop::collection::vec("[a-zA-Z0-9_~-]{1,8}|\\.[a-z.]{1,4}|[a-z]{1,4}\\.|\\PC{1,3}", 0..8),
            trailing_slash in any::<bool>(),
        ) {
            let segments: Vec<String> = segments
                .into_iter()
                .filter(|s| {
                    !matches!(segment_name(s), "" | "." | "..") && !s.contains(['/', '%', '\\', '\0'])
                })
                .collect();
            let mut path: String = segments.iter().map(|s| format!("/{s}")).collect();
            if trailing_slash || path.is_empty() {
                path.push('/');
            }
            prop_assert!(is_normal(&path), "{}", path);
            prop_assert_eq!(normalize(&path), Ok(path.clone()));
        }

        #[test]
        fn a_path_is_normal_exactly_when_each_of_its_segments_is(
            path in "[ab/;.%\\\\é]{0,12}",
        ) {
            // The definition, segment by segment, that the one-pass check must agree with.
            let by_segments = !path.contains(['%', '\\', '\0']) && {
                let mut segments = path.split('/').skip(1).peekable();
                let mut normal = true;
                while let Some(segment) = segments.next() {
                    let last = segments.peek().is_none();
                    let name = segment_name(segment);
                    if matches!(name, "." | "..") || (name.is_empty() && !(last && segment.is_empty())) {
                        normal = false;
                    }
                }
                normal
            };
            prop_assert_eq!(is_normal(&path), by_segments, "{}", path);
        }

        #[test]
        fn the_match_key_has_the_segments_of_the_normalised_path_without_parameters(
            path in any_path(),
        ) {
            if let Ok(normal) = normalize(&path) {
                let key = match_key(&normal);
                prop_assert!(!key.contains(['\\', '\0']), "{}", key);
                let segments: Vec<&str> = normal.split('/').collect();
                let key_segments: Vec<&str> = key.split('/').collect();
                prop_assert_eq!(segments.len(), key_segments.len(), "{} {}", normal, key);
                for (segment, key_segment) in segments.iter().zip(&key_segments) {
                    let name = segment_name(segment);
                    prop_assert!(!matches!(*key_segment, "." | ".."), "{}", key);
                    prop_assert_eq!(
                        key_segment.to_string(),
                        percent_encoding::percent_decode_str(name).decode_utf8_lossy().into_owned()
                    );
                }
            }
        }

        #[test]
        fn the_fast_path_agrees_with_resolving(path in any_path()) {
            prop_assert_eq!(normalize(&path), resolve(&path));
        }

        #[test]
        fn a_path_not_starting_with_a_slash_is_refused(path in "[^/]\\PC{0,20}|") {
            prop_assert_eq!(normalize(&path), Err(PathError::NotAbsolute));
        }
    }
}
