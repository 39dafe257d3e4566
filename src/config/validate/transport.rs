//! The sections about serving traffic: `server`, `listen`, `tls`, `upstream`, `proxy`, `routes`,
//! `identity_headers` and `log`.

use std::net::SocketAddr;
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;

use super::check::*;
use crate::config::raw::*;
use crate::config::*;
use crate::hygiene::{IdentityHeaderNames, Preset};
use crate::path;

/// `[server]`.
pub(super) fn server(c: &mut Checker, s: RawServer) -> ServerConfig {
    let server = ServerConfig {
        environment: c.get(
            "server.environment",
            s.environment,
            Environment::Production,
            |s: String| match s.as_str() {
                "development" => Ok(Environment::Development),
                "production" => Ok(Environment::Production),
                _ => Err(format!("expected `development` or `production`, got `{s}`")),
            },
        ),
        public_url: c.get(
            "server.public_url",
            s.public_url,
            "https://localhost:8443".into(),
            parse_public_url,
        ),
        trusted_proxies: c.get(
            "server.trusted_proxies",
            s.trusted_proxies,
            loopback(),
            parse_cidrs,
        ),
        shutdown_grace: c.get(
            "server.shutdown_grace",
            s.shutdown_grace,
            Duration::from_secs(20),
            parse_duration,
        ),
        header_read_timeout: c.get(
            "server.header_read_timeout",
            s.header_read_timeout,
            Duration::from_secs(10),
            parse_duration,
        ),
        tls_handshake_timeout: c.get(
            "server.tls_handshake_timeout",
            s.tls_handshake_timeout,
            Duration::from_secs(10),
            parse_duration,
        ),
        send_timeout: c.get(
            "server.send_timeout",
            s.send_timeout,
            Duration::from_secs(60),
            parse_duration,
        ),
        max_headers: c.get("server.max_headers", s.max_headers, 100, |v| {
            in_range(1, 1000)(v).map(|v| v as usize)
        }),
        max_header_bytes: c.get(
            "server.max_header_bytes",
            s.max_header_bytes,
            64 * 1024,
            |v| in_range(8 * 1024, 1024 * 1024)(v).map(|v| v as usize),
        ),
        h2_max_concurrent_streams: c.get(
            "server.h2_max_concurrent_streams",
            s.h2_max_concurrent_streams,
            100,
            |v| in_range(1, 1000)(v).map(|v| v as u32),
        ),
        worker_threads: c.get("server.worker_threads", s.worker_threads, 0, |v| {
            in_range(0, 1024)(v).map(|v| v as usize)
        }),
        body_read_timeout: c.get(
            "server.body_read_timeout",
            s.body_read_timeout,
            Duration::from_secs(10),
            parse_duration,
        ),
        max_buffered_bytes: c.get(
            "server.max_buffered_bytes",
            s.max_buffered_bytes,
            64 * 1024 * 1024,
            |v| in_range(64 * 1024, 1 << 40)(v).map(|v| v as usize),
        ),
        max_body_bytes: c.get(
            "server.max_body_bytes",
            s.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
            |v| in_range(1024, 1 << 30)(v).map(|v| v as usize),
        ),
        max_connections: c.get("server.max_connections", s.max_connections, 10_000, |v| {
            in_range(1, 10_000_000)(v).map(|v| v as usize)
        }),
        max_connections_per_ip: c.get(
            "server.max_connections_per_ip",
            s.max_connections_per_ip,
            256,
            |v| in_range(1, 10_000_000)(v).map(|v| v as usize),
        ),
    };
    if server.max_body_bytes > server.max_buffered_bytes {
        c.problem(
            "server.max_body_bytes",
            format_args!(
                "must not exceed server.max_buffered_bytes ({}): a body that large could never \
                 be held",
                server.max_buffered_bytes
            ),
        );
    }
    if server.max_connections_per_ip > server.max_connections {
        c.problem(
            "server.max_connections_per_ip",
            format_args!(
                "must not exceed server.max_connections ({})",
                server.max_connections
            ),
        );
    }
    for (key, d) in [
        ("server.header_read_timeout", server.header_read_timeout),
        ("server.tls_handshake_timeout", server.tls_handshake_timeout),
        ("server.send_timeout", server.send_timeout),
        ("server.body_read_timeout", server.body_read_timeout),
    ] {
        if d.is_zero() {
            c.problem(key, "must be longer than zero");
        }
    }
    server
}

/// `[listen]`: at least one public listener.
pub(super) fn listen(c: &mut Checker, l: RawListen) -> ListenConfig {
    let listen = ListenConfig {
        https: c.get(
            "listen.https",
            l.https,
            Some(SocketAddr::from(([0, 0, 0, 0], 8443))),
            parse_optional_addr,
        ),
        http: c.get(
            "listen.http",
            l.http,
            Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            parse_optional_addr,
        ),
        admin: c.get(
            "listen.admin",
            l.admin,
            SocketAddr::from(([127, 0, 0, 1], 9090)),
            parse_addr,
        ),
    };
    if listen.https.is_none() && listen.http.is_none() {
        c.problem(
            "listen",
            "`https` and `http` are both disabled; at least one must listen",
        );
    }
    listen
}

/// `[tls]`.
pub(super) fn tls(c: &mut Checker, t: RawTls) -> TlsConfig {
    TlsConfig {
        cert: c.get(
            "tls.cert",
            t.cert,
            "certs/gatehouse.crt".into(),
            |s: String| ok(s.into()),
        ),
        key: c.get(
            "tls.key",
            t.key,
            "certs/gatehouse.key".into(),
            |s: String| ok(s.into()),
        ),
        self_signed: c.get("tls.self_signed", t.self_signed, false, ok),
    }
}

/// `[upstream]`.
pub(super) fn upstream(c: &mut Checker, u: RawUpstream) -> UpstreamConfig {
    UpstreamConfig {
        url: c.get(
            "upstream.url",
            u.url,
            Uri::from_static("http://127.0.0.1:3000/"),
            parse_upstream_url,
        ),
        connect_timeout: c.get(
            "upstream.connect_timeout",
            u.connect_timeout,
            Duration::from_secs(2),
            parse_duration,
        ),
        response_timeout: c.get(
            "upstream.response_timeout",
            u.response_timeout,
            Duration::from_secs(30),
            parse_duration,
        ),
        audience: c.get(
            "upstream.audience",
            u.audience,
            "upstream".into(),
            non_empty,
        ),
        protocol: c.get(
            "upstream.protocol",
            u.protocol,
            UpstreamProtocol::Auto,
            |s| match s.as_str() {
                "http1" => Ok(UpstreamProtocol::Http1),
                "h2c" => Ok(UpstreamProtocol::H2c),
                "auto" => Ok(UpstreamProtocol::Auto),
                _ => Err(format!("expected one of `http1`, `h2c`, `auto`, got `{s}`")),
            },
        ),
    }
}

/// `[proxy]`.
pub(super) fn proxy(c: &mut Checker, p: RawProxy) -> ProxyConfig {
    ProxyConfig {
        default: c.get(
            "proxy.default",
            p.default,
            Access::Authenticated,
            parse_access,
        ),
        max_body: c.get("proxy.max_body", p.max_body, None, |v| ok(Some(v))),
        reauth_interval: c.get(
            "proxy.reauth_interval",
            p.reauth_interval,
            Duration::from_secs(30),
            |s| at_least(parse_duration(s)?, Duration::from_secs(1)),
        ),
    }
}

/// `[websocket]`.
pub(super) fn websocket(c: &mut Checker, w: RawWebsocket) -> WebsocketConfig {
    WebsocketConfig {
        allowed_origins: c.get(
            "websocket.allowed_origins",
            w.allowed_origins,
            Vec::new(),
            |list| list.into_iter().map(parse_origin).collect(),
        ),
        idle_timeout: c.get(
            "websocket.idle_timeout",
            w.idle_timeout,
            Duration::from_secs(15 * 60),
            |s| at_least(parse_duration(s)?, Duration::from_secs(1)),
        ),
        max_lifetime: c.get(
            "websocket.max_lifetime",
            w.max_lifetime,
            Duration::from_secs(24 * 3600),
            |s| at_least(parse_duration(s)?, Duration::from_secs(1)),
        ),
        max_tunnels_per_user: c.get(
            "websocket.max_tunnels_per_user",
            w.max_tunnels_per_user,
            64,
            |n| match usize::try_from(n) {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(format!("expected at least 1, got {n}")),
            },
        ),
    }
}

/// A duration no shorter than `min`.
fn at_least(d: Duration, min: Duration) -> Result<Duration, String> {
    if d < min {
        Err(format!(
            "must be at least {}, got {}",
            humantime::format_duration(min),
            humantime::format_duration(d)
        ))
    } else {
        Ok(d)
    }
}

/// An origin as browsers send it: `scheme://host[:port]`, lowercase, without a default port, a
/// path or a trailing slash.
fn parse_origin(s: String) -> Result<String, String> {
    crate::origin::of_url(&s)
        .ok_or_else(|| format!("expected an origin such as `https://app.example.com`, got `{s}`"))
}

/// `[[routes]]`: each rule complete, normalised and not given twice.
pub(super) fn routes(c: &mut Checker, raw_routes: Vec<RawRoute>) -> Vec<AccessRule> {
    let mut routes: Vec<AccessRule> = Vec::new();
    for (i, r) in raw_routes.into_iter().enumerate() {
        let key = |k: &str| format!("routes[{i}].{k}");
        let Some(prefix) = r.path_prefix else {
            c.problem(&key("path_prefix"), "is required");
            continue;
        };
        let path_prefix = c.get(&key("path_prefix"), Some(prefix), None, |s: String| {
            match path::normalize(&s) {
                Ok(_) if s.contains(';') => Err(format!(
                    "`{s}` has a `;`: parameters are ignored for matching, so no path would match it"
                )),
                Ok(n) if n == s => Ok(Some(s)),
                Ok(n) => Err(format!(
                    "`{s}` is not a normalised path; write `{n}` (rules match normalised paths only)"
                )),
                Err(e) => Err(format!("`{s}` is not a valid path: {e}")),
            }
        });
        if r.access.is_none() {
            c.problem(
                &key("access"),
                "is required (`public`, `authenticated` or `mfa`)",
            );
        }
        let access = c.get(&key("access"), r.access, None, |s| {
            parse_access(s).map(Some)
        });
        let scopes = c.get(&key("scopes"), r.scopes, Vec::new(), ok);
        let methods = list(c, &key("methods"), r.methods, parse_method);
        let source = list(c, &key("source"), r.source, parse_source);
        let any_scopes = list(c, &key("any_scopes"), r.any_scopes, |s: String| {
            if s.trim().is_empty() {
                Err("is empty".to_owned())
            } else {
                Ok(s)
            }
        });
        let factors = list(c, &key("factors"), r.factors, |s: String| {
            Factor::parse(&s).ok_or_else(|| {
                format!(
                    "expected one of `{}` (or `otp`, `hwk`, `passkey`), got `{s}`",
                    Factor::NAMES.join("`, `")
                )
            })
        });
        let rate_limit = c.get(&key("rate_limit"), r.rate_limit, None, |s: String| {
            RateLimit::parse(&s).map(Some).ok_or_else(|| {
                format!("expected N/s, N/m or N/h with N at least 1 (such as `100/m`), got `{s}`")
            })
        });
        if let (Some(path_prefix), Some(access)) = (path_prefix, access) {
            // Prefixes match in any letter case, so `/Admin/` and `/admin/` are one prefix. Rules
            // of one prefix are tried in their order: one whose requests an earlier rule of the
            // prefix all takes would never apply.
            if routes.iter().any(|earlier| {
                crate::path::eq_ignore_case(&earlier.path_prefix, &path_prefix)
                    && covers(&earlier.methods, &methods, |e, l| {
                        e == l || (e == "GET" && l == "HEAD")
                    })
                    && covers(&earlier.source, &source, |e, l| e.contains(l))
            }) {
                c.problem(
                    &key("path_prefix"),
                    format!(
                        "`{path_prefix}` is already used by an earlier route that takes every \
                         request this one would; rules of one prefix need other `methods` or \
                         `source`, the narrower first"
                    ),
                );
            }
            if access == Access::Public && !scopes.is_empty() {
                c.problem(&key("scopes"), "a public route cannot require scopes");
            }
            if access == Access::Public && !any_scopes.is_empty() {
                c.problem(&key("any_scopes"), "a public route cannot require scopes");
            }
            if access != Access::Mfa && !factors.is_empty() {
                c.problem(&key("factors"), "only with access = \"mfa\"");
            }
            routes.push(AccessRule {
                path_prefix,
                access,
                scopes,
                methods,
                source,
                any_scopes,
                factors,
                rate_limit,
            });
        }
    }
    routes
}

/// Whether an earlier rule's match condition (`methods` or `source`; empty: any) admits every
/// request a later rule's admits, `takes(e, l)` saying whether the entry `e` admits all that `l`
/// does (`GET` takes `HEAD`, a network its subnets).
fn covers<T>(earlier: &[T], later: &[T], takes: impl Fn(&T, &T) -> bool) -> bool {
    earlier.is_empty()
        || (!later.is_empty() && later.iter().all(|l| earlier.iter().any(|e| takes(e, l))))
}

/// A list of a route's, each entry parsed by `parse` (problems name the entry: `routes[2].source[0]`).
/// An empty list is refused: it would read as "none", but an absent key means "any".
fn list<T>(
    c: &mut Checker,
    key: &str,
    field: Field<Vec<String>>,
    parse: impl Fn(String) -> Result<T, String>,
) -> Vec<T> {
    let raw = c.get(key, field, None, |v| Ok(Some(v)));
    let Some(raw) = raw else {
        return Vec::new();
    };
    if raw.is_empty() {
        c.problem(
            key,
            "is an empty list; leave the key out to have no such condition",
        );
        return Vec::new();
    }
    let mut out = Vec::with_capacity(raw.len());
    for (j, v) in raw.into_iter().enumerate() {
        match parse(v) {
            Ok(v) => out.push(v),
            Err(e) => c.problem(&format!("{key}[{j}]"), e),
        }
    }
    out
}

/// A method token (RFC 9110 `token`), in upper case as requests are compared with it.
fn parse_method(s: String) -> Result<String, String> {
    const SPECIAL: &str = "!#$%&'*+-.^_`|~";
    if s.is_empty()
        || !s
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || SPECIAL.contains(ch))
    {
        return Err(format!("`{s}` is not a method name"));
    }
    let upper = s.to_ascii_uppercase();
    if !KNOWN_METHODS.contains(&upper.as_str()) {
        return Err(format!(
            "unknown method `{s}`; expected one of {}",
            KNOWN_METHODS.join(", ")
        ));
    }
    Ok(upper)
}

/// The methods a rule may name: HTTP's (RFC 9110, PATCH) and WebDAV's. Another name is more
/// likely a typo, which would leave the rule never applying.
const KNOWN_METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "OPTIONS",
    "TRACE",
    "CONNECT",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "SEARCH",
    "QUERY",
];

/// A CIDR, or a bare address as its own network (`/32`, `/128`); an IPv4-mapped IPv6 network as
/// its IPv4 one, as clients are compared.
fn parse_source(s: String) -> Result<IpNet, String> {
    let t = s.trim();
    let net = match t.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => t
            .parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|_| {
                format!("not a CIDR: expected such as `10.0.0.0/8` or `2001:db8::1`, got `{s}`")
            })?,
    };
    Ok(crate::config::canonical_net(net))
}

/// `[identity_headers]`: a preset, then any name given one by one.
pub(super) fn identity_headers(c: &mut Checker, h: RawIdentityHeaders) -> IdentityHeaderNames {
    let preset = c.get(
        "identity_headers.preset",
        h.preset,
        Preset::Gatehouse,
        |s: String| {
            Preset::from_name(&s).ok_or_else(|| {
                format!("expected one of `gatehouse`, `oauth2-proxy`, `authelia`, got `{s}`")
            })
        },
    );
    let mut identity_headers = preset.names();
    for (key, field, slot) in [
        ("identity_headers.user", h.user, &mut identity_headers.user),
        (
            "identity_headers.user_id",
            h.user_id,
            &mut identity_headers.user_id,
        ),
        (
            "identity_headers.email",
            h.email,
            &mut identity_headers.email,
        ),
        (
            "identity_headers.scopes",
            h.scopes,
            &mut identity_headers.scopes,
        ),
        (
            "identity_headers.methods",
            h.methods,
            &mut identity_headers.methods,
        ),
        (
            "identity_headers.assertion",
            h.assertion,
            &mut identity_headers.assertion,
        ),
    ] {
        *slot = c.get(key, field, slot.clone(), parse_header_name);
    }
    identity_headers
}

/// `[log]`.
pub(super) fn log(c: &mut Checker, lg: RawLog) -> LogConfig {
    LogConfig {
        format: c.get(
            "log.format",
            lg.format,
            LogFormat::Text,
            |s: String| match s.as_str() {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err(format!("expected `text` or `json`, got `{s}`")),
            },
        ),
        level: c.get("log.level", lg.level, "info".into(), |s: String| {
            tracing_subscriber::EnvFilter::try_new(&s)
                .map(|_| s.clone())
                .map_err(|e| format!("expected a log filter such as `info`, got `{s}`: {e}"))
        }),
    }
}

fn loopback() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}
