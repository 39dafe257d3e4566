//! The sections holding credentials and who may sign in: `store`, `admin`, `auth` (with its
//! trusted issuers), `tokens`, `bootstrap` and `secrets`.

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use super::check::*;
use crate::config::raw::*;
use crate::config::*;

/// `[store]`: the backend, and the PostgreSQL URL inline or from a file (never printed).
pub(super) fn store(c: &mut Checker, st: RawStore) -> StoreConfig {
    let backend = c.get("store.backend", st.backend, "sled".into(), |s: String| {
        if s == "sled" || s == "postgres" {
            Ok(s)
        } else {
            Err(format!("expected `sled` or `postgres`, got `{s}`"))
        }
    });
    let url_file = c.get("store.url_file", st.url_file, None, optional_path);
    let inline_url = c.get("store.url", st.url, None, |s: String| {
        Ok(Some(s).filter(|s| !s.trim().is_empty()))
    });
    let file_url = url_file
        .as_ref()
        .and_then(|path| match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
            Ok(_) => {
                c.problem("store.url_file", format!("{} is empty", path.display()));
                None
            }
            Err(e) => {
                c.problem(
                    "store.url_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        });
    let url = file_url.or(inline_url);
    if let Some(url) = &url
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        // The value itself may hold a password: only its shape is named.
        c.problem(
            if url_file.is_some() {
                "store.url_file"
            } else {
                "store.url"
            },
            "expected a URL such as postgres://user@host:5432/db",
        );
    }
    if backend == "postgres" && url.is_none() {
        c.problem(
            "store.url",
            "is required when store.backend = \"postgres\" (or give store.url_file)",
        );
    }
    StoreConfig {
        backend,
        path: c.get("store.path", st.path, "data".into(), |s: String| {
            non_empty(s).map(PathBuf::from)
        }),
        url: url.map(Secret::new),
        url_file,
        max_connections: c.get("store.max_connections", st.max_connections, 16, |v| {
            in_range(1, 1000)(v).map(|v| v as u32)
        }),
    }
}

/// `[admin]`: the token from `admin.token_file` or `GATEHOUSE_ADMIN_TOKEN`, judged for strength.
pub(super) fn admin(c: &mut Checker, ad: RawAdmin, env_admin_token: Option<Secret>) -> AdminConfig {
    let token_file = c.get("admin.token_file", ad.token_file, None, optional_path);
    let file_token = token_file
        .as_ref()
        .and_then(|path| match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Some(Secret::new(text.trim())),
            Ok(_) => {
                c.problem("admin.token_file", format!("{} is empty", path.display()));
                None
            }
            Err(e) => {
                c.problem(
                    "admin.token_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        });
    // The file wins over the environment, so only the token in use is judged.
    let (token, token_key) = match file_token {
        Some(token) => (Some(token), "admin.token_file"),
        None => (env_admin_token, "GATEHOUSE_ADMIN_TOKEN"),
    };
    if let Some(problem) = token.as_ref().and_then(|t| weak_admin_token(t.expose())) {
        c.problem(token_key, format!("the admin token {problem}"));
    }
    AdminConfig { token, token_file }
}

/// `[[auth.trusted_issuers]]`.
pub(super) fn trusted_issuers(
    c: &mut Checker,
    raw_issuers: Vec<RawTrustedIssuer>,
) -> Vec<TrustedIssuer> {
    let mut trusted_issuers = Vec::new();
    for (i, t) in raw_issuers.into_iter().enumerate() {
        let key = |k: &str| format!("auth.trusted_issuers[{i}].{k}");
        for (k, missing) in [
            ("issuer", t.issuer.is_none()),
            ("jwks_url", t.jwks_url.is_none()),
            ("audience", t.audience.is_none()),
        ] {
            if missing {
                c.problem(&key(k), "is required");
            }
        }
        let issuer = c.get(&key("issuer"), t.issuer, String::new(), non_empty);
        let jwks_url = c.get(
            &key("jwks_url"),
            t.jwks_url,
            Uri::from_static("http://invalid/"),
            parse_issuer_jwks_url,
        );
        let audience = c.get(&key("audience"), t.audience, String::new(), non_empty);
        let algorithms = c.get(
            &key("algorithms"),
            t.algorithms,
            vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            |list: Vec<String>| {
                if list.is_empty() {
                    return Err("must name at least one algorithm".into());
                }
                match list
                    .iter()
                    .find(|a| !ISSUER_ALGORITHMS.contains(&a.as_str()))
                {
                    Some(bad) => Err(format!(
                        "`{bad}` is not accepted; use asymmetric algorithms: {}",
                        ISSUER_ALGORITHMS.join(", ")
                    )),
                    None => Ok(list),
                }
            },
        );
        let (max_new_users, new_users_window) =
            new_user_limit(c, &key, t.max_new_users, t.new_users_window);
        trusted_issuers.push(TrustedIssuer {
            issuer,
            jwks_url,
            audience,
            algorithms,
            max_new_users,
            new_users_window,
        });
    }
    trusted_issuers
}

/// `[auth]` with its trusted issuers.
pub(super) fn auth(c: &mut Checker, a: RawAuth) -> AuthConfig {
    let trusted_issuers = trusted_issuers(c, a.trusted_issuers);
    let auth = AuthConfig {
        require_application_token: c.get(
            "auth.require_application_token",
            a.require_application_token,
            false,
            ok,
        ),
        application_token_header: c.get(
            "auth.application_token_header",
            a.application_token_header,
            "applicationtoken".into(),
            |s| {
                let name = parse_header_name(s)?;
                // Removed from every request before authentication could read it.
                match crate::hygiene::removed_from_clients(&name) {
                    true => Err(format!(
                        "`{name}` is removed from client requests (SPEC §6)"
                    )),
                    false => Ok(name),
                }
            },
        ),
        basic_cache_ttl: c.get(
            "auth.basic_cache_ttl",
            a.basic_cache_ttl,
            Duration::from_secs(60),
            parse_duration,
        ),
        revocation_lag: c.get(
            "auth.revocation_lag",
            a.revocation_lag,
            Duration::from_secs(1),
            parse_duration,
        ),
        jwks_min_refresh: c.get(
            "auth.jwks_min_refresh",
            a.jwks_min_refresh,
            Duration::from_secs(30),
            parse_duration,
        ),
        trusted_issuers,
        max_concurrent_hashes: c.get(
            "auth.max_concurrent_hashes",
            a.max_concurrent_hashes,
            std::thread::available_parallelism().map_or(1, usize::from),
            |v| in_range(1, 256)(v).map(|v| v as usize),
        ),
        max_queued_hashes: c.get("auth.max_queued_hashes", a.max_queued_hashes, 16, |v| {
            in_range(1, 4096)(v).map(|v| v as usize)
        }),
        failed_password_limit: c.get(
            "auth.failed_password_limit",
            a.failed_password_limit,
            10,
            |v| in_range(0, 1_000_000)(v).map(|v| v as u32),
        ),
        failed_password_window: c.get(
            "auth.failed_password_window",
            a.failed_password_window,
            Duration::from_secs(300),
            parse_duration,
        ),
    };
    if auth.revocation_lag > MAX_REVOCATION_LAG {
        c.problem("auth.revocation_lag", "must be at most 60s");
    }
    if auth.failed_password_window < Duration::from_secs(1) {
        c.problem("auth.failed_password_window", "must be at least 1s");
    }
    // Both size in-memory caches whose expiry cannot exceed 1000 years (the cache would refuse to
    // start); no sensible setting comes near the bound.
    for (key, d) in [
        ("auth.basic_cache_ttl", auth.basic_cache_ttl),
        ("auth.failed_password_window", auth.failed_password_window),
    ] {
        if d > MAX_CACHE_EXPIRY {
            c.problem(key, "must be at most 30d");
        }
    }
    auth
}

/// The longest `auth.revocation_lag`: a revocation that takes longer to reach every replica would
/// not deserve the name.
const MAX_REVOCATION_LAG: Duration = Duration::from_secs(60);

/// The longest `tokens.key_prepublish`.
const MAX_KEY_PREPUBLISH: Duration = Duration::from_secs(30 * 24 * 3600);
/// The shortest and longest `tokens.rotate_every`.
const MIN_ROTATE_EVERY: Duration = Duration::from_secs(1);
/// The most keys a rotation period may keep published at once.
const MAX_LIVE_KEYS: u64 = 100;
const MAX_ROTATE_EVERY: Duration = Duration::from_secs(3650 * 24 * 3600);

/// `[tokens]`: the issuer defaults to `server.public_url`.
pub(super) fn tokens(c: &mut Checker, tk: RawTokens, public_url: &str) -> TokensConfig {
    let tokens = TokensConfig {
        issuer: c.get("tokens.issuer", tk.issuer, public_url.to_owned(), non_empty),
        audience: c.get(
            "tokens.audience",
            tk.audience,
            "gatehouse".into(),
            non_empty,
        ),
        access_ttl: c.get(
            "tokens.access_ttl",
            tk.access_ttl,
            Duration::from_secs(3600),
            parse_duration,
        ),
        signing_key_file: c.get(
            "tokens.signing_key_file",
            tk.signing_key_file,
            None,
            optional_path,
        ),
        rotate_every: c.get("tokens.rotate_every", tk.rotate_every, None, |s| {
            if s.trim().is_empty() {
                Ok(None)
            } else {
                parse_duration(s).map(Some)
            }
        }),
        key_prepublish: c.get(
            "tokens.key_prepublish",
            tk.key_prepublish,
            Duration::from_secs(3600),
            parse_duration,
        ),
    };
    if tokens.access_ttl.is_zero() {
        c.problem("tokens.access_ttl", "must be longer than zero");
    }
    if tokens.key_prepublish > MAX_KEY_PREPUBLISH {
        c.problem("tokens.key_prepublish", "must be at most 30d");
    }
    if let Some(every) = tokens.rotate_every {
        if tokens.signing_key_file.is_some() {
            c.problem(
                "tokens.rotate_every",
                "cannot rotate the key of tokens.signing_key_file (it is not kept in the store); \
                 remove one of the two",
            );
        }
        if every <= tokens.key_prepublish {
            c.problem(
                "tokens.rotate_every",
                format!(
                    "must be longer than tokens.key_prepublish ({}): the next key is published \
                     that long before it signs",
                    crate::config::format_duration(tokens.key_prepublish)
                ),
            );
        } else if every < MIN_ROTATE_EVERY {
            c.problem("tokens.rotate_every", "must be at least 1s");
        } else if (tokens.access_ttl.max(Duration::from_secs(60)) + Duration::from_secs(60))
            .as_secs()
            / every.as_secs().max(1)
            > MAX_LIVE_KEYS
        {
            c.problem(
                "tokens.rotate_every",
                format!(
                    "too short for tokens.access_ttl: a retired key stays published until the \
                     tokens it signed have expired, so more than {MAX_LIVE_KEYS} keys would be \
                     published at once"
                ),
            );
        } else if every > MAX_ROTATE_EVERY {
            c.problem("tokens.rotate_every", "must be at most 3650d");
        }
    }
    tokens
}

/// `[bootstrap]`.
pub(super) fn bootstrap(c: &mut Checker, b: RawBootstrap) -> BootstrapConfig {
    BootstrapConfig {
        file: c.get("bootstrap.file", b.file, None, optional_path),
    }
}

/// `[secrets]`: the master key from `secrets.master_key_file` or `GATEHOUSE_MASTER_KEY`.
pub(super) fn secrets(
    c: &mut Checker,
    raw_secrets: RawSecrets,
    env_master_key: Option<Secret>,
) -> SecretsConfig {
    let master_key_file = c.get(
        "secrets.master_key_file",
        raw_secrets.master_key_file,
        None,
        optional_path,
    );
    let file_key = master_key_file
        .as_ref()
        .and_then(|path| read_secret_file(c, "secrets.master_key_file", path));
    SecretsConfig {
        master_key: file_key.or(env_master_key),
        master_key_file,
    }
}
