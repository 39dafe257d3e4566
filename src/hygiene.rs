//! Header hygiene: which request headers a client may not send, in any spelling a server or
//! framework treats as the same name: hop-by-hop headers (and those `Connection` names), identity
//! headers of every preset, and forwarding and path claims from untrusted peers. The configuration
//! asks it which names a client can never send; the proxy removes them before anything is added.

use http::HeaderMap;
use http::header::{self, HeaderName};
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

const X_FORWARDED_PREFIX: &[u8] = b"x-forwarded-";

/// Prefixes of identity headers in any product's spelling (gatehouse's `X-Auth-*`, oauth2-proxy's
/// `X-Auth-Request-*`, Authelia's `Remote-*`): no client header starting so reaches the upstream,
/// whichever preset is active (SPEC §6).
const IDENTITY_PREFIXES: [&[u8]; 2] = [b"x-auth-", b"remote-"];

/// Identity names of SPEC §6 outside those prefixes, beyond whatever the presets name.
const IDENTITY_NAMES: [&str; 5] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
];

/// Headers naming another path than the request's. Forward-auth reads them from trusted peers;
/// an upstream never sees them, since IIS, Symfony and others would serve the path they name
/// instead of the one gatehouse authorised.
const PATH_CLAIMS: [&[u8]; 3] = [b"x-original-url", b"x-rewrite-url", b"x-original-uri"];

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
    pub(crate) fn all(&self) -> [&str; 6] {
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
pub(crate) fn folded_eq(name: &[u8], folded: &[u8]) -> bool {
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
    /// Folded identity header names: the configured ones, every preset's and SPEC §6's, so that
    /// switching presets never leaves a door open for an app that still reads the old names.
    identity: Vec<String>,
}

impl Sanitizer {
    pub fn new(configured: &IdentityHeaderNames) -> Sanitizer {
        let mut identity: Vec<String> = Preset::ALL
            .iter()
            .map(|p| p.names())
            .chain(std::iter::once(configured.clone()))
            .flat_map(|names| names.all().map(fold))
            .chain(IDENTITY_NAMES.iter().map(|n| fold(n)))
            .collect();
        identity.sort();
        identity.dedup();
        Sanitizer { identity }
    }

    /// Also removes every identity name `previous` removes: a name a reload renamed away may
    /// still be the one the application reads until it is changed too, so a client must not be
    /// able to send it. Names accumulate over reloads until the next start.
    pub fn keep_removing(&mut self, previous: &Sanitizer) {
        self.identity.extend(previous.identity.iter().cloned());
        self.identity.sort();
        self.identity.dedup();
    }

    fn doomed(&self, name: &HeaderName, trusted_peer: bool) -> bool {
        let name = name.as_str().as_bytes();
        IDENTITY_PREFIXES
            .iter()
            .any(|prefix| folded_starts_with(name, prefix))
            || self
                .identity
                .iter()
                .any(|id| folded_eq(name, id.as_bytes()))
            || (!trusted_peer
                && (folded_starts_with(name, X_FORWARDED_PREFIX)
                    || FORWARDING.iter().any(|f| folded_eq(name, f.as_bytes()))))
    }

    /// Removes hop-by-hop headers (and those `Connection` names), every identity header in any
    /// spelling, and — unless the peer is a trusted proxy — every forwarding header.
    pub fn clean_request(&self, headers: &mut HeaderMap, trusted_peer: bool) {
        strip_hop_by_hop(headers);
        remove_where(headers, |name| self.doomed(name, trusted_peer));
    }

    /// Removes, before a request goes upstream, the path claims a trusted peer may send for
    /// forward-auth ([`Sanitizer::clean_request`] already removed those of anyone else).
    pub fn clean_upstream(&self, headers: &mut HeaderMap, trusted_peer: bool) {
        if trusted_peer {
            remove_where(headers, |name| {
                let name = name.as_str().as_bytes();
                PATH_CLAIMS.iter().any(|claim| folded_eq(name, claim))
            });
        }
    }
}

/// Whether gatehouse removes a client header named `name` from some request whatever the
/// configuration (identity prefixes and names, every preset's, path claims and forwarding
/// headers): such a name cannot carry anything a client sends to gatehouse, such as the
/// ApplicationToken.
pub fn removed_from_clients(name: &str) -> bool {
    let sanitizer = Sanitizer::new(&Preset::Gatehouse.names());
    HeaderName::from_bytes(name.as_bytes()).is_ok_and(|name| sanitizer.doomed(&name, false))
}

/// Removes every header (all copies) whose name `doomed` picks.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    // Most requests carry none of these: look before allocating anything.
    if !headers.keys().any(&doomed) {
        return;
    }
    let doomed: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// The options the `Connection` headers list, beyond the hop-by-hop names (which go anyway).
fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !is_hop_by_hop(token))
}

/// Whether a `Connection` option names a header that is present. Usually the only option is
/// `keep-alive` or `close`, naming nothing that is there.
fn names_other_headers(headers: &HeaderMap) -> bool {
    connection_options(headers)
        .any(|token| std::str::from_utf8(token).is_ok_and(|name| headers.contains_key(name)))
}

fn is_hop_by_hop(token: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|hop| hop.as_str().as_bytes().eq_ignore_ascii_case(token))
}

/// The bit of [`strip_hop_by_hop`]'s set for a (lower-case) header name: `1 << i` for
/// `HOP_BY_HOP[i]`, 0 for any other name. A `match` on the name, which the compiler turns into
/// length checks first, costs far less than comparing it with each hop-by-hop name in turn.
fn hop_by_hop_bit(name: &str) -> u16 {
    match name {
        "connection" => 1,
        "proxy-connection" => 1 << 1,
        "keep-alive" => 1 << 2,
        "te" => 1 << 3,
        "trailer" => 1 << 4,
        "transfer-encoding" => 1 << 5,
        "upgrade" => 1 << 6,
        "proxy-authorization" => 1 << 7,
        "proxy-authenticate" => 1 << 8,
        _ => 0,
    }
}

/// Removes the hop-by-hop headers and every header a `Connection` header names (all copies).
/// `Host` is end-to-end by definition: naming it in `Connection` does not remove it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass notes which hop-by-hop headers are present (bit i for `HOP_BY_HOP[i]`); almost
    // every message has none, or only `Connection: keep-alive`, and then nothing is allocated.
    let mut present = 0u16;
    for name in headers.keys() {
        present |= hop_by_hop_bit(name.as_str());
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 && names_other_headers(headers) {
        let named: Vec<HeaderName> = connection_options(headers)
            .filter_map(|token| HeaderName::from_bytes(token).ok())
            .filter(|name| name != header::HOST && headers.contains_key(name))
            .collect();
        for name in named {
            headers.remove(&name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

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
    fn each_hop_by_hop_name_has_its_own_bit() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_bit(name.as_str()), 1 << i, "{name}");
        }
        assert_eq!(hop_by_hop_bit("x-connection"), 0);
        assert_eq!(hop_by_hop_bit("host"), 0);
    }

    #[test]
    fn connection_options_remove_headers_of_their_name_only_when_present() {
        let mut h = headers(&[("connection", "Close"), ("close", "1"), ("x-kept", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);

        let mut h = headers(&[
            ("connection", "keep-alive, close, x-absent"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
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
    fn identity_prefixes_and_spec_names_are_removed_from_trusted_peers_too() {
        let s = Sanitizer::new(&Preset::Gatehouse.names());
        let mut h = headers(&[
            ("X-Auth-Groups", "admins"),
            ("x_auth_roles", "admin"),
            ("X-Auth-Request-User", "root"),
            ("x.auth.request.email", "root@example.com"),
            ("Remote-Name", "root"),
            ("X_Forwarded_User", "root"),
            ("x-forwarded-access-token", "t"),
            ("x-authorization", "kept"),
            ("remoteuser", "kept"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        s.clean_request(&mut h, true);
        let mut kept: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["remoteuser", "x-authorization", "x-forwarded-for"]);
    }

    #[test]
    fn names_clients_cannot_use_are_known_to_configuration() {
        for name in [
            "X-Auth-App",
            "remote_token",
            "x-forwarded-key",
            "x-original-url",
        ] {
            assert!(removed_from_clients(name), "{name}");
        }
        for name in ["ApplicationToken", "x-app-token"] {
            assert!(!removed_from_clients(name), "{name}");
        }
    }

    #[test]
    fn path_claims_of_trusted_peers_never_go_upstream() {
        let s = Sanitizer::new(&Preset::Gatehouse.names());
        let mut h = headers(&[
            ("X-Original-URL", "/admin/"),
            ("x_rewrite_url", "/admin/"),
            ("X.Original.Uri", "/admin/"),
            ("x-forwarded-uri", "/public/"),
        ]);
        s.clean_request(&mut h, true);
        assert_eq!(h.len(), 4, "forward-auth still reads them");
        s.clean_upstream(&mut h, true);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-forwarded-uri"]
        );
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
mod properties {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    /// Forwarding headers, written out here rather than taken from the code under test.
    const FORWARDING_NAMES: [&str; 9] = [
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-original-uri",
        "x-rewrite-url",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-uri",
    ];

    const HOP_BY_HOP_NAMES: [&str; 9] = [
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

    /// `name` as a client might spell it: any letter case, `_` or `.` for any `-`.
    fn spelling(name: String) -> impl Strategy<Value = String> {
        let n = name.len();
        prop::collection::vec((any::<bool>(), 0..3u8), n).prop_map(move |choices| {
            name.chars()
                .zip(&choices)
                .map(|(c, &(upper, dash))| match c {
                    '-' => ['-', '_', '.'][usize::from(dash)],
                    c if upper => c.to_ascii_uppercase(),
                    c => c,
                })
                .collect()
        })
    }

    fn folded(name: &str) -> String {
        name.to_ascii_lowercase().replace(['_', '.'], "-")
    }

    fn configured_names() -> impl Strategy<Value = IdentityHeaderNames> {
        prop::collection::vec("x-[a-z]{1,6}(-[a-z]{1,6}){0,2}", 6).prop_map(|n| {
            IdentityHeaderNames {
                user: n[0].clone(),
                user_id: n[1].clone(),
                email: n[2].clone(),
                scopes: n[3].clone(),
                methods: n[4].clone(),
                assertion: n[5].clone(),
            }
        })
    }

    fn identity_names(configured: &IdentityHeaderNames) -> Vec<String> {
        Preset::ALL
            .iter()
            .map(|p| p.names())
            .chain(std::iter::once(configured.clone()))
            .flat_map(|names| names.all().map(str::to_owned))
            .collect()
    }

    /// Whether nothing gatehouse strips could be meant by `name`.
    fn unrelated(name: &str, configured: &IdentityHeaderNames) -> bool {
        let name = folded(name);
        !identity_names(configured).iter().any(|n| folded(n) == name)
            && !name.starts_with("x-auth-")
            && !name.starts_with("remote-")
            && !name.starts_with("x-forwarded-")
            && !FORWARDING_NAMES.contains(&name.as_str())
            && !HOP_BY_HOP_NAMES.contains(&name.as_str())
    }

    type Pairs = Vec<(String, String)>;

    /// A request's headers: copies of identity headers in random spellings, forwarding headers
    /// in random spellings, and unrelated headers, shuffled.
    fn request() -> impl Strategy<Value = (IdentityHeaderNames, Pairs, Pairs, Pairs)> {
        configured_names().prop_flat_map(|configured| {
            let identity =
                prop::sample::select(identity_names(&configured)).prop_flat_map(spelling);
            let forwarding = prop_oneof![
                prop::sample::select(FORWARDING_NAMES.to_vec()).prop_map(str::to_owned),
                "x-forwarded-[a-z]{1,8}",
            ]
            .prop_flat_map(spelling);
            let other = "[a-zA-Z][a-zA-Z0-9_.-]{0,16}";
            let value = "[ -~]{0,20}";
            let keep = configured.clone();
            (
                Just(configured),
                prop::collection::vec((identity, value), 0..8),
                prop::collection::vec((forwarding, value), 0..4),
                prop::collection::vec((other, value), 0..8).prop_map(move |others| {
                    others
                        .into_iter()
                        .filter(|(n, _)| unrelated(n, &keep))
                        .collect::<Pairs>()
                }),
            )
        })
    }

    fn header_map(groups: &[&[(String, String)]], order: &[usize]) -> HeaderMap {
        let all: Vec<&(String, String)> = groups.iter().flat_map(|g| g.iter()).collect();
        let mut headers = HeaderMap::new();
        for i in order
            .iter()
            .map(|&i| i % all.len().max(1))
            .chain(0..all.len())
        {
            if let Some((name, value)) = all.get(i) {
                headers.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
        }
        headers
    }

    fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a [u8]> {
        headers
            .get_all(name.to_ascii_lowercase().as_str())
            .iter()
            .map(|v| v.as_bytes())
            .collect()
    }

    proptest! {
        #[test]
        fn no_identity_header_survives_in_any_spelling_or_number_of_copies(
            (configured, identity, forwarding, others) in request(),
            order in prop::collection::vec(any::<usize>(), 0..8),
            trusted_peer in any::<bool>(),
        ) {
            let mut headers = header_map(&[&identity, &forwarding, &others], &order);
            let before = headers.clone();
            Sanitizer::new(&configured).clean_request(&mut headers, trusted_peer);
            let identity_folded: Vec<String> =
                identity_names(&configured).iter().map(|n| folded(n)).collect();
            for name in headers.keys() {
                let name = folded(name.as_str());
                prop_assert!(!identity_folded.contains(&name), "{} survived", name);
                prop_assert!(!name.starts_with("x-auth-") && !name.starts_with("remote-"), "{} survived", name);
            }
            // Unrelated headers survive untouched: every copy, in order.
            for (name, _) in &others {
                prop_assert_eq!(values(&headers, name), values(&before, name), "{}", name);
            }
        }

        #[test]
        fn untrusted_peers_lose_every_forwarding_header_and_trusted_ones_keep_them(
            (configured, identity, forwarding, others) in request(),
            trusted_peer in any::<bool>(),
        ) {
            let mut headers = header_map(&[&identity, &forwarding, &others], &[]);
            let before = headers.clone();
            Sanitizer::new(&configured).clean_request(&mut headers, trusted_peer);
            let identity_folded: Vec<String> =
                identity_names(&configured).iter().map(|n| folded(n)).collect();
            for (name, _) in &forwarding {
                let is_identity = identity_folded.contains(&folded(name));
                if trusted_peer && !is_identity {
                    prop_assert_eq!(values(&headers, name), values(&before, name), "{}", name);
                } else {
                    prop_assert!(!headers.contains_key(name.to_ascii_lowercase().as_str()), "{} survived", name);
                }
            }
        }

        #[test]
        fn hop_by_hop_headers_and_those_connection_names_are_removed_and_nothing_else(
            others in prop::collection::vec(("[a-z][a-z0-9-]{0,12}", "[ -~]{0,12}"), 0..8),
            named in prop::collection::vec(("[a-z][a-z0-9-]{0,12}", any::<bool>()), 0..4),
            hop in prop::collection::vec(prop::sample::select(HOP_BY_HOP_NAMES.to_vec()), 0..4),
            name_host in any::<bool>(),
        ) {
            let configured = Preset::Gatehouse.names();
            let others: Vec<(String, String)> = others
                .into_iter()
                .filter(|(n, _)| unrelated(n, &configured) && n != "host")
                .collect();
            let named: Vec<(String, bool)> = named.into_iter().filter(|(n, _)| n != "host").collect();
            let mut tokens: Vec<String> = named
                .iter()
                .map(|(n, upper)| if *upper { n.to_ascii_uppercase() } else { n.clone() })
                .collect();
            if name_host {
                tokens.push("Host".into());
            }
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static("app.test"));
            for (name, value) in &others {
                headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
            }
            for &name in &hop {
                // A value that names no header: `Connection: x` would rightly remove an `x` header.
                headers.append(HeaderName::from_static(name), HeaderValue::from_static("x/y"));
            }
            for (name, _) in &named {
                headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("named"));
            }
            headers.append(header::CONNECTION, HeaderValue::from_str(&tokens.join(" , ")).unwrap());
            let before = headers.clone();
            strip_hop_by_hop(&mut headers);
            for name in HOP_BY_HOP_NAMES {
                prop_assert!(!headers.contains_key(name), "{}", name);
            }
            for (name, _) in &named {
                prop_assert!(!headers.contains_key(name.as_str()), "{}", name);
            }
            prop_assert_eq!(&headers[header::HOST], "app.test");
            for (name, _) in &others {
                if !named.iter().any(|(n, _)| n == name) {
                    prop_assert_eq!(values(&headers, name), values(&before, name), "{}", name);
                }
            }
        }
    }
}
