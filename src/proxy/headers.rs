//! Header hygiene: hop-by-hop headers, client-sent identity headers and untrusted forwarding
//! headers are removed here, before anything is added, and identity headers are set in one place.

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use crate::auth::Principal;
use serde::Serialize;

/// Hop-by-hop headers of RFC 9110 §7.6.1, plus the proxy-only ones that must not travel on.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Headers through which a client could claim an address, scheme, host or path. They are believed
/// only from `server.trusted_proxies`; from anyone else they are dropped and rebuilt from the socket.
/// Compared folded (see [`folded_eq`]), like every `x-forwarded-*` header.
const FORWARDING: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
];

const X_FORWARDED_PREFIX: &str = "x-forwarded-";

/// The names gatehouse uses for the identity it sends upstream (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdentityHeaderNames {
    pub user: String,
    pub user_id: String,
    pub email: String,
    pub scopes: String,
    pub methods: String,
    pub assertion: String,
}

/// Header name sets of the products whose upstream apps gatehouse can stand in front of unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Gatehouse,
    Oauth2Proxy,
    Authelia,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::Gatehouse, Preset::Oauth2Proxy, Preset::Authelia];

    pub fn from_name(name: &str) -> Option<Preset> {
        match name {
            "gatehouse" => Some(Preset::Gatehouse),
            "oauth2-proxy" => Some(Preset::Oauth2Proxy),
            "authelia" => Some(Preset::Authelia),
            _ => None,
        }
    }

    pub fn names(self) -> IdentityHeaderNames {
        let [user, user_id, email, scopes, methods, assertion] = match self {
            Preset::Gatehouse => [
                "x-auth-user",
                "x-auth-user-id",
                "x-auth-email",
                "x-auth-scopes",
                "x-auth-methods",
                "x-auth-assertion",
            ],
            Preset::Oauth2Proxy => [
                "x-forwarded-preferred-username",
                "x-forwarded-user",
                "x-forwarded-email",
                "x-forwarded-groups",
                "x-auth-request-methods",
                "x-forwarded-access-token",
            ],
            Preset::Authelia => [
                "remote-user",
                "remote-user-id",
                "remote-email",
                "remote-groups",
                "remote-methods",
                "remote-assertion",
            ],
        };
        IdentityHeaderNames {
            user: user.into(),
            user_id: user_id.into(),
            email: email.into(),
            scopes: scopes.into(),
            methods: methods.into(),
            assertion: assertion.into(),
        }
    }
}

impl IdentityHeaderNames {
    fn all(&self) -> [&str; 6] {
        [
            &self.user,
            &self.user_id,
            &self.email,
            &self.scopes,
            &self.methods,
            &self.assertion,
        ]
    }
}

/// Folds the spellings a server or framework may treat as the same header: letter case (already
/// lower in `http`), and `_` or `.` written for `-` (CGI-style and some frameworks map them all to `_`).
fn fold_byte(b: u8) -> u8 {
    match b {
        b'_' | b'.' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

fn fold(name: &str) -> String {
    name.bytes().map(|b| char::from(fold_byte(b))).collect()
}

/// Whether `name` folds to `folded` (which is already folded).
fn folded_eq(name: &[u8], folded: &[u8]) -> bool {
    name.len() == folded.len() && name.iter().zip(folded).all(|(&a, &b)| fold_byte(a) == b)
}

/// Whether `name`, folded, starts with `folded`.
fn folded_starts_with(name: &[u8], folded: &[u8]) -> bool {
    name.get(..folded.len())
        .is_some_and(|head| folded_eq(head, folded))
}

/// Decides which request headers a client may not send.
#[derive(Debug, Clone)]
pub struct Sanitizer {
    /// Folded identity header names: the configured ones and every preset's, so that switching
    /// presets never leaves a door open for an app that still reads the old names.
    identity: Vec<String>,
}

impl Sanitizer {
    pub fn new(configured: &IdentityHeaderNames) -> Sanitizer {
        let mut identity: Vec<String> = Preset::ALL
            .iter()
            .map(|p| p.names())
            .chain(std::iter::once(configured.clone()))
            .flat_map(|names| names.all().map(fold))
            .collect();
        identity.sort();
        identity.dedup();
        Sanitizer { identity }
    }

    fn doomed(&self, name: &HeaderName, trusted_peer: bool) -> bool {
        let name = name.as_str().as_bytes();
        self.identity
            .iter()
            .any(|id| folded_eq(name, id.as_bytes()))
            || (!trusted_peer
                && (folded_starts_with(name, X_FORWARDED_PREFIX.as_bytes())
                    || FORWARDING.iter().any(|f| folded_eq(name, f.as_bytes()))))
    }

    /// Removes hop-by-hop headers (and those `Connection` names), every identity header in any
    /// spelling, and — unless the peer is a trusted proxy — every forwarding header.
    pub fn clean_request(&self, headers: &mut HeaderMap, trusted_peer: bool) {
        strip_hop_by_hop(headers);
        // Most requests carry none of these: look before allocating anything.
        if !headers.keys().any(|name| self.doomed(name, trusted_peer)) {
            return;
        }
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| self.doomed(name, trusted_peer))
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(&name);
        }
    }
}

/// The identity header names, parsed once (SPEC §6).
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// user, user id, email, scopes, methods, assertion; `None` for a name `http` cannot carry
    /// (configuration validation rejects those, so this is only a guard).
    names: [Option<HeaderName>; 6],
}

impl IdentityHeaders {
    pub fn new(names: &IdentityHeaderNames) -> IdentityHeaders {
        IdentityHeaders {
            names: names
                .all()
                .map(|name| HeaderName::from_bytes(name.as_bytes()).ok()),
        }
    }

    /// Sets the identity headers for `principal`. Called after [`Sanitizer::clean_request`], so
    /// each header is inserted over nothing: there is exactly one copy of each, gatehouse's.
    pub fn set(&self, headers: &mut HeaderMap, principal: &Principal, assertion: &str) {
        let scopes = principal.scopes.join(" ");
        let mut methods = String::new();
        for (i, m) in principal.methods.iter().enumerate() {
            if i > 0 {
                methods.push(',');
            }
            methods.push_str(m.as_str());
        }
        let values = [
            Some(principal.user_name.as_str()),
            Some(principal.user_id.as_str()),
            principal.email.as_deref(),
            Some(scopes.as_str()),
            Some(methods.as_str()),
            Some(assertion),
        ];
        for (name, value) in self.names.iter().zip(values) {
            let Some(name) = name else {
                continue;
            };
            match value.and_then(|v| HeaderValue::from_str(v).ok()) {
                Some(v) => {
                    headers.insert(name.clone(), v);
                }
                None => {
                    headers.remove(name);
                }
            }
        }
    }
}

/// Removes the hop-by-hop headers and every header a `Connection` header names (all copies).
/// `Host` is end-to-end by definition: naming it in `Connection` does not remove it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| name != header::HOST)
        .collect();
    for name in named {
        headers.remove(&name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn identity_headers_are_removed_in_every_spelling_and_copy() {
        let s = Sanitizer::new(&Preset::Gatehouse.names());
        let mut h = headers(&[
            ("X-Auth-User", "a"),
            ("x-auth-user", "b"),
            ("X_Auth_User", "c"),
            ("x.auth.user-id", "d"),
            ("remote-user", "e"),
            ("x-forwarded-email", "f"),
            ("accept", "text/html"),
        ]);
        s.clean_request(&mut h, true);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn connection_named_headers_and_hop_by_hop_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn forwarding_headers_survive_only_from_trusted_peers() {
        let s = Sanitizer::new(&Preset::Gatehouse.names());
        let sent = [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-uri", "/public/"),
            ("x-original-url", "/public/"),
            ("forwarded", "for=1.2.3.4"),
        ];
        let mut untrusted = headers(&sent);
        s.clean_request(&mut untrusted, false);
        assert!(untrusted.is_empty(), "{untrusted:?}");
        let mut trusted = headers(&sent);
        s.clean_request(&mut trusted, true);
        assert_eq!(trusted.len(), 4);
    }
}

#[cfg(test)]
mod identity_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::auth::Method;

    #[test]
    fn identity_headers_carry_the_principal_under_the_preset_names() {
        let principal = Principal {
            user_id: "7".into(),
            user_name: "ada".into(),
            email: None,
            scopes: vec!["read".into(), "write".into()],
            organizations: vec![],
            methods: vec![Method::Pwd, Method::Otp],
        };
        let mut h = HeaderMap::new();
        h.insert("remote-email", HeaderValue::from_static("stale"));
        IdentityHeaders::new(&Preset::Authelia.names()).set(&mut h, &principal, "jwt");
        assert_eq!(h["remote-user"], "ada");
        assert_eq!(h["remote-groups"], "read write");
        assert_eq!(h["remote-methods"], "pwd,otp");
        assert_eq!(h["remote-assertion"], "jwt");
        assert!(!h.contains_key("remote-email"));
    }
}
