//! The access rules of `[[routes]]`: which rule applies to a normalised path.
//!
//! Prefixes match whole segments: `/api` matches `/api` and `/api/x` but not `/apix`; a prefix
//! ending in `/` matches everything below it and also the bare path without the slash (`/admin/`
//! covers `/admin`, so a stricter rule is never escaped by dropping the slash). Letter case does
//! not count (`/ADMIN/x` is under `/admin/`): an upstream such as IIS, or Spring with
//! case-insensitive mappings, serves `/ADMIN/x` as `/admin/x` (SPEC §2). Nor do the non-ASCII
//! letters that such an upstream folds into ASCII ones (see [`strip_prefix_ignore_case`]), nor ASP.NET's cookieless
//! session segments (`/(S(x))/admin/x` is under `/admin/`). The longest matching
//! prefix wins; the query never takes part. A path no rule matches gets `proxy.default`.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::config::{Access, AccessRule};
pub use crate::path::{eq_ignore_case, strip_prefix_ignore_case};

/// The access rules in force with `auth.require_application_token`, replaced by each reload: what
/// an exchange that outlives its request (a tunnel, a stream) is checked against again.
#[derive(Debug)]
pub struct Policy {
    pub rules: AccessRules,
    pub require_app: bool,
    /// The buckets of the rules' `rate_limit`s.
    pub limits: crate::ratelimit::Limits,
}

impl Policy {
    pub fn of(config: &crate::config::Config) -> Policy {
        Policy::reloaded(config, None)
    }

    /// The policy of `config` replacing `previous`, whose buckets it keeps for the rules whose
    /// prefix and `rate_limit` are unchanged.
    pub fn reloaded(config: &crate::config::Config, previous: Option<&Policy>) -> Policy {
        Policy {
            rules: AccessRules::new(&config.routes, config.proxy.default),
            require_app: config.auth.require_application_token,
            limits: crate::ratelimit::Limits::new(&config.routes, previous.map(|p| &p.limits)),
        }
    }
}

/// The configured access rules, sorted for lookup.
#[derive(Debug, Clone)]
pub struct AccessRules {
    /// Longest prefix first, so the first match is the longest; each with its index in `[[routes]]`.
    rules: Vec<(usize, AccessRule)>,
    default: AccessRule,
}

/// Why a rule whose prefix covers a path does not apply to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// The request's method is not in the rule's `methods`.
    Method,
    /// The client's address is outside the rule's `source`.
    Source,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mismatch::Method => "the method is not in its `methods`",
            Mismatch::Source => "the client address is outside its `source`",
        })
    }
}

/// The headers with which a client asks the upstream to act as another method
/// (Rails, Laravel, Spring's `HiddenHttpMethodFilter` behind a filter, ASP.NET, Express's
/// `method-override`): a request carrying one must pass the rules of both methods.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The methods a request may be acted on as: `own` (its own, or those a forward-auth request
/// describes), then every value of the method override headers, in any spelling an upstream
/// folds into theirs (`_` or `.` for `-`), each comma-separated item trimmed, each method once
/// whatever its letter case.
pub fn acted_methods(own: &[&str], headers: &http::HeaderMap) -> Methods {
    // In any spelling a CGI-style upstream reads as the header (`X_HTTP_Method_Override`).
    let mut overrides = headers
        .iter()
        .filter(|(name, _)| {
            METHOD_OVERRIDE_HEADERS
                .iter()
                .any(|o| crate::hygiene::folded_eq(name.as_str().as_bytes(), o.as_bytes()))
        })
        .peekable();
    let mut methods = Methods::new();
    if overrides.peek().is_none() && own.len() <= 4 {
        // The usual request: its own method, or the few a forward-auth request describes,
        // compared with each other without a set.
        for m in own {
            let m = m.trim();
            if !m.is_empty() && !methods.iter().any(|k| k.eq_ignore_ascii_case(m)) {
                methods.push(method_name(m));
            }
        }
        return methods;
    }
    // A client may name any number of methods: a set keeps this linear.
    let mut seen = std::collections::HashSet::new();
    let mut add = |m: &str| {
        if !m.is_empty() && seen.insert(m.to_ascii_uppercase()) {
            methods.push(method_name(m));
        }
    };
    for m in own {
        add(m.trim());
    }
    for (_, value) in overrides {
        for item in String::from_utf8_lossy(value.as_bytes()).split(',') {
            add(item.trim());
        }
    }
    methods
}

/// The methods a request may be acted on as ([`acted_methods`]): almost always one, a standard
/// one, kept without allocating.
pub type Methods = smallvec::SmallVec<[Cow<'static, str>; 2]>;

/// `method` as it was named: a standard method's name as a constant, any other a copy.
fn method_name(method: &str) -> Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().find(|s| **s == method) {
        Some(standard) => Cow::Borrowed(standard),
        None => Cow::Owned(method.to_owned()),
    }
}

/// Whether a rule's `methods` (upper case) admits `method`, compared ASCII-case-insensitively
/// (an upstream that folds `get` to `GET` must not get another rule); `GET` also covers `HEAD`.
pub fn method_matches(methods: &[String], method: &str) -> bool {
    methods.is_empty()
        || methods.iter().any(|m| {
            m.eq_ignore_ascii_case(method) || (m == "GET" && method.eq_ignore_ascii_case("HEAD"))
        })
}

/// Whether a rule's `source` admits `client` (an IPv4-mapped IPv6 address as its IPv4 one).
pub fn source_matches(source: &[ipnet::IpNet], client: IpAddr) -> bool {
    let client = client.to_canonical();
    source.is_empty() || source.iter().any(|net| net.contains(&client))
}

/// Why `rule` does not apply to a request with `method` from `client`, if it does not.
pub fn mismatch(rule: &AccessRule, method: &str, client: IpAddr) -> Option<Mismatch> {
    if !method_matches(&rule.methods, method) {
        Some(Mismatch::Method)
    } else if !source_matches(&rule.source, client) {
        Some(Mismatch::Source)
    } else {
        None
    }
}

impl AccessRules {
    /// The `[[routes]]` rules, and `default` (`proxy.default`) for the paths none of them covers.
    pub fn new(rules: &[AccessRule], default: Access) -> AccessRules {
        let mut rules: Vec<(usize, AccessRule)> = rules.iter().cloned().enumerate().collect();
        // Compared with match keys, so in the same decoded form (`/caf%C3%A9/` is `/café/`).
        for (_, rule) in &mut rules {
            rule.path_prefix = crate::path::match_key(&rule.path_prefix).into_owned();
        }
        rules.sort_by_key(|(_, r)| std::cmp::Reverse(r.path_prefix.len()));
        AccessRules {
            rules,
            default: AccessRule::new("/", default),
        }
    }

    /// The rule whose prefix is the longest to cover the [`crate::path::match_key`] of a
    /// normalised path, whatever its match conditions (`methods`, `source`).
    pub fn rule_for(&self, path: &str) -> &AccessRule {
        self.candidates(path)
            .next()
            .map_or(&self.default, |(_, rule)| rule)
    }

    /// The rules whose prefix covers `path`, longest first, each with its index in `[[routes]]`;
    /// `proxy.default` (index `None`) comes last.
    pub fn candidates<'a, 'p>(
        &'a self,
        path: &'p str,
    ) -> impl Iterator<Item = (Option<usize>, &'a AccessRule)> + use<'a, 'p> {
        let path = without_session_segments(path);
        self.rules
            .iter()
            .filter(move |(_, r)| prefix_matches(&r.path_prefix, &path))
            .map(|(i, r)| (Some(*i), r))
            .chain(std::iter::once((None, &self.default)))
    }

    /// The rule for a request with `method` from `client` to `path` (a match key): the longest
    /// prefix whose match conditions admit the request, else `proxy.default`.
    pub fn rule_for_request(&self, path: &str, method: &str, client: IpAddr) -> &AccessRule {
        self.candidates(path)
            .find(|(_, r)| mismatch(r, method, client).is_none())
            .map_or(&self.default, |(_, rule)| rule)
    }

    /// The rules a request must pass: that of each method it may be acted on as (see
    /// [`acted_methods`]), each rule once.
    pub fn rules_for_request(
        &self,
        path: &str,
        methods: &[Cow<'_, str>],
        client: IpAddr,
    ) -> Rules<'_> {
        let mut out = Rules::new();
        // Methods no rule lists all get the same rule: it is looked up once, however many such
        // methods a client names.
        let mut unlisted_done = false;
        for method in methods {
            let listed = self
                .rules
                .iter()
                .any(|(_, r)| !r.methods.is_empty() && method_matches(&r.methods, method));
            if !listed {
                if unlisted_done {
                    continue;
                }
                unlisted_done = true;
            }
            let rule = self.rule_for_request(path, method, client);
            if !out.iter().any(|r| std::ptr::eq(*r, rule)) {
                out.push(rule);
            }
        }
        out
    }
}

/// The rules a request must pass ([`AccessRules::rules_for_request`]): almost always one.
pub type Rules<'a> = smallvec::SmallVec<[&'a AccessRule; 2]>;

/// `path` without ASP.NET's cookieless session segments (`/(S(…))/`, `/(A(…)F(…))/`): ASP.NET on
/// IIS removes such a segment wherever it stands before routing, so `/(S(x))/admin/x` is served as
/// `/admin/x` and must be decided as it.
fn without_session_segments(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('(') {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/').skip(1) {
        if !is_session_segment(segment) {
            out.push('/');
            out.push_str(segment);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    std::borrow::Cow::Owned(out)
}

/// `(` then one or more `X(…)` (a letter, then anything but `)`) then `)`, as ASP.NET reads it.
fn is_session_segment(segment: &str) -> bool {
    let Some(mut rest) = segment
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .filter(|s| !s.is_empty())
    else {
        return false;
    };
    while !rest.is_empty() {
        let mut chars = rest.chars();
        let (Some(letter), Some('(')) = (chars.next(), chars.next()) else {
            return false;
        };
        if !letter.is_ascii_alphabetic() {
            return false;
        }
        let value = chars.as_str();
        let Some(end) = value.find(')') else {
            return false;
        };
        rest = &value[end + 1..];
    }
    true
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match strip_prefix_ignore_case(path, prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        // `/x/` also covers `/x`.
        None => prefix
            .strip_suffix('/')
            .is_some_and(|bare| !bare.is_empty() && eq_ignore_case(path, bare)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table() -> AccessRules {
        let route = |p: &str, access| AccessRule::new(p, access);
        AccessRules::new(
            &[
                route("/public/", Access::Public),
                route("/public/private/", Access::Mfa),
                route("/api", Access::Public),
            ],
            Access::Authenticated,
        )
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table();
        assert_eq!(t.rule_for("/public/a").access, Access::Public);
        assert_eq!(t.rule_for("/public/private/a").access, Access::Mfa);
        assert_eq!(t.rule_for("/public/private/").access, Access::Mfa);
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let t = table();
        assert_eq!(t.rule_for("/api").access, Access::Public);
        assert_eq!(t.rule_for("/api/v1").access, Access::Public);
        assert_eq!(t.rule_for("/apix").access, Access::Authenticated);
        assert_eq!(t.rule_for("/publicx").access, Access::Authenticated);
    }

    #[test]
    fn a_prefix_with_a_slash_also_covers_the_bare_path() {
        let t = table();
        assert_eq!(t.rule_for("/public").access, Access::Public);
        assert_eq!(t.rule_for("/public/private").access, Access::Mfa);
        assert_eq!(t.rule_for("/PUBLIC/Private").access, Access::Mfa);
    }

    #[test]
    fn prefixes_match_in_any_letter_case() {
        let t = table();
        assert_eq!(t.rule_for("/PUBLIC/a").access, Access::Public);
        assert_eq!(t.rule_for("/Public/PRIVATE/a").access, Access::Mfa);
        assert_eq!(t.rule_for("/API/v1").access, Access::Public);
        assert_eq!(t.rule_for("/\u{e9}/x").access, Access::Authenticated);
    }

    #[test]
    fn letters_an_upstream_folds_into_ascii_match_their_ascii_letter() {
        let t = table();
        assert_eq!(t.rule_for("/publ\u{130}c/private/x").access, Access::Mfa);
        assert_eq!(t.rule_for("/PUBL\u{131}C/private").access, Access::Mfa);
        assert_eq!(t.rule_for("/publ\u{131}c/").access, Access::Public);
        assert_eq!(t.rule_for("/publ\u{131}cx").access, Access::Authenticated);
        assert_eq!(
            strip_prefix_ignore_case("/\u{17f}\u{212a}y/a", "/sky/"),
            Some("a")
        );
        assert!(eq_ignore_case("/\u{212a}", "/k"));
        assert!(!eq_ignore_case("/\u{e9}", "/e"));
        assert!(!eq_ignore_case("/\u{212a}x", "/k"));
    }

    #[test]
    fn asp_net_session_segments_do_not_hide_a_prefix() {
        let t = table();
        assert_eq!(t.rule_for("/(S(abc))/public/private/x").access, Access::Mfa);
        assert_eq!(t.rule_for("/public/(A(1)F(2))/private").access, Access::Mfa);
        assert_eq!(t.rule_for("/(S(x))").access, Access::Authenticated);
        for kept in [
            "/(x)/public/a",
            "/(S(x)/public/a",
            "/()/public/a",
            "/(S(x)y)/public/a",
        ] {
            assert_eq!(t.rule_for(kept).access, Access::Authenticated, "{kept}");
        }
    }

    #[test]
    fn methods_and_sources_are_match_conditions_and_overrides_add_rules() {
        let rules = AccessRules::new(
            &[
                AccessRule {
                    methods: vec!["GET".into()],
                    ..AccessRule::new("/docs/", Access::Public)
                },
                AccessRule {
                    source: vec!["10.0.0.0/8".parse().unwrap()],
                    ..AccessRule::new("/docs/lan/", Access::Public)
                },
            ],
            Access::Mfa,
        );
        let here: IpAddr = "192.0.2.1".parse().unwrap();
        let lan: IpAddr = "::ffff:10.1.1.1".parse().unwrap();
        let at = |m: &str, ip| rules.rule_for_request("/docs/lan/x", m, ip).access;
        assert_eq!(at("get", here), Access::Public);
        assert_eq!(at("HEAD", here), Access::Public);
        assert_eq!(at("POST", here), Access::Mfa);
        assert_eq!(at("POST", lan), Access::Public);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-http-method-override", "delete, GET".parse().unwrap());
        headers.append("x-method-override", "Delete".parse().unwrap());
        let methods = acted_methods(&["get"], &headers);
        assert_eq!(methods.as_slice(), ["get", "delete"]);
        let decided = rules.rules_for_request("/docs/x", &methods, here);
        let access: Vec<Access> = decided.iter().map(|r| r.access).collect();
        assert_eq!(access, [Access::Public, Access::Mfa]);
    }

    #[test]
    fn many_unlisted_override_methods_cost_one_lookup() {
        let rules = AccessRules::new(
            &[AccessRule {
                methods: vec!["GET".into()],
                ..AccessRule::new("/docs/", Access::Public)
            }],
            Access::Authenticated,
        );
        let many: String = (0..5000).map(|i| format!("M{i},")).collect();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-http-method", many.parse().unwrap());
        let methods = acted_methods(&["GET"], &headers);
        assert_eq!(methods.len(), 5001);
        let decided = rules.rules_for_request("/docs/x", &methods, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(decided.len(), 2);
    }

    #[test]
    fn unmatched_paths_get_the_default() {
        assert_eq!(table().rule_for("/").access, Access::Authenticated);
    }
}

#[cfg(test)]
mod properties {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::path::{fold, match_key, normalize};
    use proptest::prelude::*;

    /// How the most lenient upstream (Tomcat, Jetty, Spring, IIS, Express) reads a path: every
    /// escape decoded, `;` parameters dropped, dot segments resolved, empty segments collapsed,
    /// letter case folded, and a trailing slash ignored (Spring's trailing-slash match, Express
    /// without `strict`).
    fn lenient(path: &str) -> String {
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        let mut stack: Vec<String> = Vec::new();
        for segment in decoded.split('/').skip(1) {
            let name = segment.split(';').next().unwrap_or_default();
            match name {
                "" | "." => {}
                ".." => {
                    stack.pop();
                }
                name => stack.push(name.chars().map(fold).collect()),
            }
        }
        // ASP.NET drops a session segment after the dot segments are resolved.
        let out: String = stack
            .iter()
            .filter(|s| !is_session_segment(s))
            .map(|s| format!("/{s}"))
            .collect();
        if out.is_empty() { "/".to_owned() } else { out }
    }

    const PREFIXES: &[&str] = &[
        "/admin/",
        "/admin/x/",
        "/public/",
        "/api",
        "/Api/v1",
        "/a b/",
        "/caf%C3%A9/",
    ];

    fn table(prefixes: &[&str]) -> AccessRules {
        let routes: Vec<AccessRule> = prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| AccessRule {
                // The scope names the rule, so equal rules are the same rule.
                scopes: vec![i.to_string()],
                ..AccessRule::new(*p, Access::Public)
            })
            .collect();
        AccessRules::new(&routes, Access::Authenticated)
    }

    fn any_path() -> impl Strategy<Value = String> {
        let atom = prop::sample::select(vec![
            "admin",
            "ADMIN",
            "Admin",
            "x",
            "X",
            "public",
            "api",
            "API",
            "v1",
            "a%20b",
            "a b",
            ".",
            "..",
            "",
            "%2e",
            "%2E%2e",
            "..;",
            "..;x=1",
            "%2e%2e;",
            ".;",
            ";p",
            "admin;a=b",
            "admin;",
            "Api;v=1",
            "%61dmin",
            "%41PI",
            "%78",
            "%25",
            "%3B",
            "%2F",
            "y",
            "caf%c3%a9",
            "caf\u{e9}",
            "adm\u{130}n",
            "adm%C4%B1n",
            "%E2%84%AApi",
            "(S(x))",
            "%28S%28a%29F%28b%29%29",
        ]);
        prop::collection::vec(atom, 0..7).prop_map(|atoms| format!("/{}", atoms.join("/")))
    }

    proptest! {
        /// The rule chosen for a request is the rule the upstream's own reading of the forwarded
        /// path falls under, and the rule the upstream would have applied to the path as sent.
        #[test]
        fn the_rule_chosen_is_the_rule_of_the_lenient_reading_of_the_forwarded_path(
            path in any_path(),
            rules in prop::sample::subsequence(PREFIXES.to_vec(), 0..=PREFIXES.len()),
        ) {
            let table = table(&rules);
            let Ok(forwarded) = normalize(&path) else {
                return Ok(());
            };
            let chosen = table.rule_for(&match_key(&forwarded));
            let rule = |p: &str| table.rule_for(p).path_prefix.clone();
            prop_assert_eq!(&chosen.path_prefix, &rule(&lenient(&forwarded)), "{}", forwarded);
            prop_assert_eq!(&chosen.path_prefix, &rule(&lenient(&path)), "{}", path);
            // The forwarded path, normalised again, is decided the same way.
            prop_assert_eq!(
                &chosen.path_prefix,
                &rule(&match_key(&normalize(&forwarded).unwrap()))
            );
        }
    }
}
