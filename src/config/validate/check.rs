//! The [`Checker`] that collects problems, and the parsers of single values the sections share.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;

use crate::config::raw::*;
use crate::config::*;

/// Collects problems while values are checked, so that all of them are reported together.
#[derive(Default)]
pub(super) struct Checker {
    pub(super) problems: Vec<String>,
}

impl Checker {
    /// The value at `key` parsed by `parse`, or `default` when absent; a problem is recorded (and the
    /// default returned so checking can go on) when it is unreadable or `parse` refuses it.
    pub(super) fn get<T, U>(
        &mut self,
        key: &str,
        field: Field<T>,
        default: U,
        parse: impl FnOnce(T) -> Result<U, String>,
    ) -> U {
        match field {
            None => default,
            Some(Raw(Err(e))) => {
                self.problems.push(format!("{key}: {e}"));
                default
            }
            Some(Raw(Ok(v))) => parse(v).unwrap_or_else(|e| {
                self.problems.push(format!("{key}: {e}"));
                default
            }),
        }
    }

    pub(super) fn problem(&mut self, key: &str, message: impl fmt::Display) {
        self.problems.push(format!("{key}: {message}"));
    }
}

pub(super) fn ok<T>(v: T) -> Result<T, String> {
    Ok(v)
}

/// The longest expiry of an in-memory cache set from the configuration.
pub(super) const MAX_CACHE_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The longest duration any setting takes. Every timer and expiry gatehouse computes from a
/// setting (`Instant` and clock arithmetic, seconds in tokens) stays far from overflow below it.
pub(in crate::config) const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// The one reader of durations in the configuration.
pub(in crate::config) fn parse_duration(s: String) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|_| format!("expected a duration such as `10s`, `5m` or `24h`, got `{s}`"))?;
    if d > MAX_DURATION {
        return Err(format!("must be at most 100 years, got `{s}`"));
    }
    Ok(d)
}

pub(super) fn parse_addr(s: String) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("expected an address such as `127.0.0.1:8080`, got `{s}`"))
}

/// A listener address where an empty string disables the listener.
pub(super) fn parse_optional_addr(s: String) -> Result<Option<SocketAddr>, String> {
    if s.trim().is_empty() {
        Ok(None)
    } else {
        parse_addr(s).map(Some)
    }
}

pub(super) fn parse_access(s: String) -> Result<Access, String> {
    match s.as_str() {
        "public" => Ok(Access::Public),
        "authenticated" => Ok(Access::Authenticated),
        "mfa" => Ok(Access::Mfa),
        _ => Err(format!(
            "expected one of `public`, `authenticated`, `mfa`, got `{s}`"
        )),
    }
}

pub(super) fn in_range(min: u64, max: u64) -> impl FnOnce(u64) -> Result<u64, String> {
    move |v| {
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(format!("expected a number from {min} to {max}, got {v}"))
        }
    }
}

pub(super) fn parse_public_url(s: String) -> Result<String, String> {
    let uri: Uri = s
        .parse()
        .map_err(|_| format!("expected an absolute URL, got `{s}`"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("https" | "http"), Some(_)) => Ok(s.trim_end_matches('/').to_owned()),
        _ => Err(format!(
            "expected an absolute http(s) URL such as `https://app.example.com`, got `{s}`"
        )),
    }
}

pub(super) fn parse_upstream_url(s: String) -> Result<Uri, String> {
    let uri: Uri = s
        .parse()
        .map_err(|_| format!("expected a URL such as `http://127.0.0.1:3000`, got `{s}`"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!(
            "expected an http:// URL such as `http://127.0.0.1:3000`, got `{s}`"
        ));
    }
    if uri.path() != "/" || uri.query().is_some() {
        return Err(format!(
            "expected a URL without a path or query (requests keep their own), got `{s}`"
        ));
    }
    Ok(uri)
}

pub(super) fn parse_cidrs(list: Vec<String>) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("expected CIDRs such as `10.0.0.0/8`, got `{s}`"))
        })
        .collect()
}

pub(super) fn parse_header_name(s: String) -> Result<String, String> {
    match http::HeaderName::from_bytes(s.as_bytes()) {
        Ok(name) => Ok(name.as_str().to_owned()),
        Err(_) => Err(format!("expected a header name, got `{s}`")),
    }
}

/// The most users one trusted issuer may create per window: the window's count is one stored
/// record of that many timestamps, read and written at every creation.
pub(super) const MAX_NEW_USERS: u64 = 10_000;

/// `max_new_users` (default 100) and `new_users_window` (default 1h, from 1s to 30d) of an
/// identity provider whose subjects become users (a trusted issuer, an OpenID provider); `key`
/// gives the dotted name of a key of that provider.
pub(super) fn new_user_limit(
    c: &mut Checker,
    key: &dyn Fn(&str) -> String,
    max: Field<u64>,
    window: Field<String>,
) -> (u32, Duration) {
    let max = c.get(&key("max_new_users"), max, 100, |v| {
        in_range(1, MAX_NEW_USERS)(v).map(|v| v as u32)
    });
    let window = c.get(
        &key("new_users_window"),
        window,
        Duration::from_secs(3600),
        parse_duration,
    );
    if !(Duration::from_secs(1)..=MAX_CACHE_EXPIRY).contains(&window) {
        c.problem(&key("new_users_window"), "must be from 1s to 30d");
    }
    (max, window)
}

/// Asymmetric JWT algorithms a trusted issuer may use; HMAC is never accepted from outside.
pub(super) const ISSUER_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

pub(super) fn non_empty(s: String) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s)
    }
}

pub(super) fn optional_path(s: String) -> Result<Option<PathBuf>, String> {
    Ok(Some(s).filter(|s| !s.trim().is_empty()).map(PathBuf::from))
}

pub(super) fn parse_jwks_url(s: String) -> Result<Uri, String> {
    let uri: Uri = s
        .parse()
        .map_err(|_| format!("expected an http(s) URL, got `{s}`"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("https" | "http"), Some(_)) => Ok(uri),
        _ => Err(format!("expected an http(s) URL, got `{s}`")),
    }
}

/// A trusted issuer's JWKS: the keys it serves decide who is signed in, so they are fetched over
/// TLS; plain HTTP only to this host, where nothing on the network can change them.
pub(super) fn parse_issuer_jwks_url(s: String) -> Result<Uri, String> {
    let uri = parse_jwks_url(s)?;
    if uri.scheme_str() == Some("https") || uri.host().is_some_and(is_loopback_host) {
        Ok(uri)
    } else {
        Err(format!(
            "must be an https URL (http only for 127.0.0.0/8, ::1 or localhost), got `{uri}`"
        ))
    }
}

pub(super) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads a secret from a file named by a configuration key (trimmed; empty is a problem).
pub(super) fn read_secret_file(c: &mut Checker, key: &str, path: &Path) -> Option<Secret> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Some(Secret::new(text.trim())),
        Ok(_) => {
            c.problem(key, format!("{} is empty", path.display()));
            None
        }
        Err(e) => {
            c.problem(key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// Shortest admin token accepted: 22 characters of a base64 alphabet carry 132 bits (SPEC §10).
pub(super) const ADMIN_TOKEN_MIN_CHARS: usize = 22;

/// Words that mark a token as a placeholder copied from an example rather than generated. Each is
/// long enough (6+ characters) that a random token contains one with negligible probability.
pub(super) const ADMIN_TOKEN_PLACEHOLDERS: &[&str] = &[
    "changeme",
    "replaceme",
    "placeholder",
    "example",
    "password",
    "passw0rd",
    "secret",
    "admintoken",
    "yourtoken",
    "testtoken",
    "tokenhere",
    "insecure",
    "donotuse",
    "letmein",
    "qwerty",
];

/// Why `token` cannot be the admin token, if it cannot (SPEC §10): it must have at least 128 bits
/// in form and must not be a known placeholder. The reason never repeats the token.
pub(in crate::config) fn weak_admin_token(token: &str) -> Option<String> {
    let body = token.trim_end_matches('=');
    let expected = format!(
        "must be at least {ADMIN_TOKEN_MIN_CHARS} characters of a base64 alphabet \
         (A-Z a-z 0-9 + / - _, `=` padding), generated at random, \
         e.g. `head -c 32 /dev/urandom | base64`"
    );
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
    {
        return Some(format!(
            "has characters outside the base64 alphabet: it {expected}"
        ));
    }
    let chars = body.chars().count();
    if chars < ADMIN_TOKEN_MIN_CHARS {
        return Some(format!("is {chars} characters long: it {expected}"));
    }
    let letters: String = body
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if ADMIN_TOKEN_PLACEHOLDERS.iter().any(|w| letters.contains(w)) {
        return Some(format!(
            "is a placeholder, not a generated token: it {expected}"
        ));
    }
    // Repetitions and runs ("aaaa…", "abcabc…", "0123456789…") have the form but not the entropy;
    // random tokens of the minimum length never come near these bounds.
    let bytes = body.as_bytes();
    let distinct = bytes.iter().collect::<std::collections::HashSet<_>>().len();
    let steps = bytes
        .windows(2)
        .filter(|w| w[0].abs_diff(w[1]) <= 1)
        .count();
    if distinct < 6 || steps * 4 >= (bytes.len() - 1) * 3 {
        return Some(format!(
            "is a pattern, not a generated token: it {expected}"
        ));
    }
    None
}

pub(super) fn one_of(
    allowed: &'static [&'static str],
) -> impl FnOnce(String) -> Result<String, String> {
    move |s| {
        if allowed.contains(&s.as_str()) {
            Ok(s)
        } else {
            Err(format!("expected one of {}, got `{s}`", allowed.join(", ")))
        }
    }
}
