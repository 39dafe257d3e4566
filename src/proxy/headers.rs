//! Header hygiene: hop-by-hop headers, client-sent identity headers and untrusted forwarding
//! headers are removed here, before anything is added, and identity headers are set in one place.

use std::collections::HashSet;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use crate::auth::Principal;
use serde::Serialize;

/// Hop-by-hop headers of RFC 9110 §7.6.1, plus the proxy-only ones that must not travel on.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Headers through which a client could claim an address, scheme, host or path. They are believed
/// only from `server.trusted_proxies`; from anyone else they are dropped and rebuilt from the socket.
const FORWARDING: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
];

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
fn fold(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Decides which request headers a client may not send.
#[derive(Debug, Clone)]
pub struct Sanitizer {
    /// Folded identity header names: the configured ones and every preset's, so that switching
    /// presets never leaves a door open for an app that still reads the old names.
    identity: HashSet<String>,
}

impl Sanitizer {
    pub fn new(configured: &IdentityHeaderNames) -> Sanitizer {
        let identity = Preset::ALL
            .iter()
            .map(|p| p.names())
            .chain(std::iter::once(configured.clone()))
            .flat_map(|names| names.all().map(fold))
            .collect();
        Sanitizer { identity }
    }

    /// Removes hop-by-hop headers (and those `Connection` names), every identity header in any
    /// spelling, and — unless the peer is a trusted proxy — every forwarding header.
    pub fn clean_request(&self, headers: &mut HeaderMap, trusted_peer: bool) {
        strip_hop_by_hop(headers);
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| {
                let folded = fold(name.as_str());
                self.identity.contains(&folded)
                    || (!trusted_peer
                        && (folded.starts_with("x-forwarded-") || FORWARDING.contains(&&*folded)))
            })
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(&name);
        }
    }
}

/// Sets the identity headers for `principal` (SPEC §6). Called after [`Sanitizer::clean_request`],
/// so each header is inserted over nothing: there is exactly one copy of each, gatehouse's.
pub fn set_identity(
    headers: &mut HeaderMap,
    names: &IdentityHeaderNames,
    principal: &Principal,
    assertion: &str,
) {
    let methods: Vec<&str> = principal.methods.iter().map(|m| m.as_str()).collect();
    let values = [
        (&names.user, Some(principal.user_name.as_str())),
        (&names.user_id, Some(principal.user_id.as_str())),
        (&names.email, principal.email.as_deref()),
        (&names.scopes, Some(&*principal.scopes.join(" "))),
        (&names.methods, Some(&*methods.join(","))),
        (&names.assertion, Some(assertion)),
    ];
    for (name, value) in values {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        match value.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
            Some(v) => {
                headers.insert(name, v);
            }
            None => {
                headers.remove(name);
            }
        }
    }
}

/// Removes the hop-by-hop headers and every header a `Connection` header names (all copies).
/// `Host` is end-to-end by definition: naming it in `Connection` does not remove it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
    for name in HOP_BY_HOP {
        headers.remove(*name);
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
        set_identity(&mut h, &Preset::Authelia.names(), &principal, "jwt");
        assert_eq!(h["remote-user"], "ada");
        assert_eq!(h["remote-groups"], "read write");
        assert_eq!(h["remote-methods"], "pwd,otp");
        assert_eq!(h["remote-assertion"], "jwt");
        assert!(!h.contains_key("remote-email"));
    }
}
