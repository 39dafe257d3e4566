//! Configuration reload (SPEC §8): on SIGHUP, and when the configuration file's content changes,
//! the file is loaded and validated again. A valid configuration replaces the request pipeline
//! (routes, identity headers, upstream, trusted proxies, API families, OpenID providers — each
//! discovered again), the trusted issuers and the TLS certificate; open connections stay open and
//! use it from their next request. An invalid one is refused with a log line and the running configuration stays. Settings read only at start
//! (listeners, store, secrets, …) are reported as needing a restart.
//!
//! A reload never weakens the running configuration by accident (SPEC §10): a file caught while
//! being written (empty, cut short, or reading differently twice [`SETTLE`] apart) is refused, and
//! a change that loosens access is named in a `warn` line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

use crate::api::services::Services;
use crate::config::{self, Access, Config, OidcProvider};
use crate::gateway::Gateway;
use crate::routes::AccessRules;
use crate::server::listener::SharedTls;
use crate::server::tls;

/// How often the configuration file is checked for a change.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The file must read the same twice this far apart before it is applied: an editor's
/// non-atomic save or a copy in progress reads differently, and is taken at a later check.
pub const SETTLE: Duration = Duration::from_millis(200);

/// The parts of a running server a reload replaces, and what it builds their replacements from.
#[derive(Clone)]
pub struct Reloadable {
    services: Services,
    gateway: Arc<ArcSwap<Gateway>>,
    tls: Option<SharedTls>,
    /// The configuration gatehouse started with.
    started: Arc<Config>,
    /// The configuration in force: the start-up one until a reload applies another.
    running: Arc<Mutex<Arc<Config>>>,
}

impl Reloadable {
    /// What a reload of a server started with `started` replaces: the request pipeline behind
    /// `gateway` (rebuilt around `services`) and the certificate in `tls`.
    pub fn new(
        services: Services,
        started: &Config,
        gateway: Arc<ArcSwap<Gateway>>,
        tls: Option<SharedTls>,
    ) -> Reloadable {
        let started = Arc::new(started.clone());
        Reloadable {
            services,
            gateway,
            tls,
            running: Arc::new(Mutex::new(started.clone())),
            started,
        }
    }

    /// The configuration in force: the last one applied, else the one the server started with.
    fn running(&self) -> Arc<Config> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `new` in force, all or nothing: everything that can fail is built before anything
    /// is replaced.
    pub fn apply(&self, new: &Config) -> Result<(), String> {
        let tls = match &self.tls {
            Some(_) => Some(tls::server_config(&new.tls, &new.server.public_url)?),
            None => None,
        };
        let issuers = self.services.auth.issuers_for(&new.auth)?;
        // The audit sink is opened again (a file rotated away is followed) and the retention
        // taken; a sink that cannot open refuses the reload before anything changes.
        crate::audit::configure(&new.audit)?;
        let mut gateway = Gateway::new(&self.services, new);
        // An identity header renamed away stays removed from clients until the next start.
        gateway.keep_removing_identity_of(&self.gateway.load());
        if let (Some(shared), Some(tls)) = (&self.tls, tls) {
            shared.store(tls);
        }
        self.services.auth.trust(issuers);
        // The policy first: the new pipeline finds the buckets of its rules there.
        let policy = crate::routes::Policy::reloaded(new, Some(&self.services.policy.load()));
        self.services.policy.store(Arc::new(policy));
        self.gateway.store(Arc::new(gateway));
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(new.clone());
        Ok(())
    }
}

/// What a route's new `methods`, `source`, `any_scopes`, `factors` and `rate_limit` let through
/// that the old ones did not: requests the rule no longer covers (they fall to a rule that may be
/// weaker), more scopes or factors accepted, a limit removed or raised.
fn loosened_conditions(
    old: &crate::config::AccessRule,
    new: &crate::config::AccessRule,
) -> Vec<String> {
    let prefix = &old.path_prefix;
    let mut changes = Vec::new();
    let narrowed = |old: &[String], new: &[String]| {
        (old.is_empty() && !new.is_empty())
            || old.iter().any(|m| !new.is_empty() && !new.contains(m))
    };
    // Fewer requests: those left fall to another rule, maybe weaker. More requests: they leave
    // another rule of the prefix, maybe stronger, for this one.
    if narrowed(&old.methods, &new.methods) {
        changes.push(format!(
            "route {prefix} covers fewer methods ({})",
            new.methods.join(", ")
        ));
    }
    if widened(&old.methods, &new.methods) {
        changes.push(format!(
            "route {prefix} covers more methods ({})",
            or_any(&new.methods)
        ));
    }
    let old_source: Vec<String> = old.source.iter().map(ToString::to_string).collect();
    let new_source: Vec<String> = new.source.iter().map(ToString::to_string).collect();
    if narrowed(&old_source, &new_source) {
        changes.push(format!(
            "route {prefix} covers fewer clients ({})",
            new_source.join(", ")
        ));
    }
    if widened(&old_source, &new_source) {
        changes.push(format!(
            "route {prefix} covers more clients ({})",
            or_any(&new_source)
        ));
    }
    changes.extend(
        loosened_requirements(old, new)
            .into_iter()
            .map(|c| format!("route {prefix} {c}")),
    );
    changes
}

/// Whether a list where empty means "any" (`methods`, `source`, `any_scopes`, `factors`) takes
/// more in `new` than in `old`.
fn widened(old: &[String], new: &[String]) -> bool {
    !old.is_empty() && (new.is_empty() || new.iter().any(|s| !old.contains(s)))
}

/// What `new`'s `any_scopes`, `factors` and `rate_limit` let through that `old`'s did not,
/// each as a phrase (`accepts other factors`).
fn loosened_requirements(
    old: &crate::config::AccessRule,
    new: &crate::config::AccessRule,
) -> Vec<String> {
    let mut changes = Vec::new();
    if widened(&old.any_scopes, &new.any_scopes) {
        changes.push("accepts other any_scopes".to_owned());
    }
    let names = |f: &[crate::config::Factor]| -> Vec<String> {
        f.iter().map(|f| f.as_str().to_owned()).collect()
    };
    if widened(&names(&old.factors), &names(&new.factors)) {
        changes.push("accepts other factors".to_owned());
    }
    if let Some(before) = old.rate_limit {
        let per_second = |l: crate::config::RateLimit| f64::from(l.count) / l.per.as_secs_f64();
        match new.rate_limit {
            None => changes.push("rate_limit removed".to_owned()),
            Some(now) if per_second(now) > per_second(before) || now.count > before.count => {
                changes.push(format!("rate_limit {before} -> {now}"));
            }
            Some(_) => {}
        }
    }
    changes
}

fn strength(access: Access) -> u8 {
    match access {
        Access::Public => 0,
        Access::Authenticated => 1,
        Access::Mfa => 2,
    }
}

/// What `new` lets through that `old` did not: a weaker `proxy.default`, a route removed, a
/// route's access weakened or scopes dropped, a new route weaker than the rule that governed its
/// prefix (or public), `auth.require_application_token` turned off, trusted issuers or trusted
/// proxies added, an OpenID provider added or admitting more (see [`loosened_providers`]),
/// WebSocket origins added. Each entry names the setting.
pub fn loosened(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    if strength(new.proxy.default) < strength(old.proxy.default) {
        changes.push(format!(
            "proxy.default {} -> {}",
            old.proxy.default.as_str(),
            new.proxy.default.as_str()
        ));
    }
    let old_table = AccessRules::new(&old.routes, old.proxy.default);
    for (i, route) in old.routes.iter().enumerate() {
        let prefix = &route.path_prefix;
        let Some(now) = counterpart(&old.routes, i, &new.routes) else {
            changes.push(format!("route {prefix} removed"));
            continue;
        };
        if strength(now.access) < strength(route.access) {
            changes.push(format!(
                "route {prefix} access {} -> {}",
                route.access.as_str(),
                now.access.as_str()
            ));
        }
        let dropped: Vec<&str> = route
            .scopes
            .iter()
            .filter(|s| !now.scopes.contains(s))
            .map(String::as_str)
            .collect();
        if !dropped.is_empty() {
            changes.push(format!(
                "route {prefix} no longer requires scopes {}",
                dropped.join(", ")
            ));
        }
        changes.extend(loosened_conditions(route, now));
    }
    for (i, route) in new.routes.iter().enumerate() {
        let prefix = &route.path_prefix;
        if counterpart(&new.routes, i, &old.routes).is_some() {
            continue;
        }
        // Every rule that governed some of its requests before: those of the prefix in order,
        // down to the first that takes every method and client.
        for (_, before) in old_table.candidates(&crate::path::match_key(prefix)) {
            let missing = before.scopes.iter().any(|s| !route.scopes.contains(s));
            if route.access == Access::Public
                || strength(route.access) < strength(before.access)
                || missing
            {
                changes.push(format!(
                    "new route {prefix} is {} (was under {}: {})",
                    route.access.as_str(),
                    before.path_prefix,
                    before.access.as_str()
                ));
                break;
            }
            let requirements = loosened_requirements(before, route);
            if !requirements.is_empty() {
                changes.push(format!(
                    "new route {prefix} {} (was under {})",
                    requirements.join(", "),
                    before.path_prefix
                ));
                break;
            }
            if before.methods.is_empty() && before.source.is_empty() {
                break;
            }
        }
    }
    if old.auth.require_application_token && !new.auth.require_application_token {
        changes.push("auth.require_application_token turned off".into());
    }
    for issuer in &new.auth.trusted_issuers {
        let before = old
            .auth
            .trusted_issuers
            .iter()
            .find(|i| i.issuer == issuer.issuer);
        match before {
            None => changes.push(format!("trusted issuer {} added", issuer.issuer)),
            Some(before) => {
                let added = not_in(&issuer.algorithms, &before.algorithms);
                if before.jwks_url != issuer.jwks_url || before.audience != issuer.audience {
                    changes.push(format!(
                        "trusted issuer {} changed its keys or audience",
                        issuer.issuer
                    ));
                }
                if !added.is_empty() {
                    changes.push(format!(
                        "trusted issuer {} accepts algorithms {}",
                        issuer.issuer,
                        added.join(", ")
                    ));
                }
                changes.extend(more_new_users(
                    &format!("trusted issuer {}", issuer.issuer),
                    (before.max_new_users, before.new_users_window),
                    (issuer.max_new_users, issuer.new_users_window),
                ));
            }
        }
    }
    let old_proxies: BTreeSet<_> = old.server.trusted_proxies.iter().collect();
    let added: Vec<String> = new
        .server
        .trusted_proxies
        .iter()
        .filter(|p| !old_proxies.contains(p))
        .map(ToString::to_string)
        .collect();
    if !added.is_empty() {
        changes.push(format!("server.trusted_proxies added {}", added.join(", ")));
    }
    changes.extend(loosened_providers(&old.oidc.providers, &new.oidc.providers));
    let origins = not_in(
        &new.websocket.allowed_origins,
        &old.websocket.allowed_origins,
    );
    if !origins.is_empty() {
        changes.push(format!(
            "websocket.allowed_origins added {}",
            origins.join(", ")
        ));
    }
    changes
}

/// `who` may now create more new users than before: `(max_new_users, new_users_window)`.
fn more_new_users(who: &str, before: (u32, Duration), now: (u32, Duration)) -> Option<String> {
    (now.0 > before.0 || now.1 < before.1).then(|| {
        format!(
            "{who} may create more new users ({} per {})",
            now.0,
            humantime::format_duration(now.1)
        )
    })
}

/// The rule of `other` that stands where `rules[i]` does: the same prefix, and as many rules of
/// that prefix before it (rules of one prefix differ in `methods` or `source` and are tried in
/// order).
fn counterpart<'a>(
    rules: &[crate::config::AccessRule],
    i: usize,
    other: &'a [crate::config::AccessRule],
) -> Option<&'a crate::config::AccessRule> {
    let prefix = &rules.get(i)?.path_prefix;
    let nth = rules[..i]
        .iter()
        .filter(|r| &r.path_prefix == prefix)
        .count();
    other.iter().filter(|r| &r.path_prefix == prefix).nth(nth)
}

/// A condition's entries, or `any` for none.
fn or_any(entries: &[String]) -> String {
    if entries.is_empty() {
        "any".to_owned()
    } else {
        entries.join(", ")
    }
}

/// The entries of `new` that `old` lacks.
fn not_in<'a>(new: &'a [String], old: &[String]) -> Vec<&'a str> {
    new.iter()
        .filter(|v| !old.contains(v))
        .map(String::as_str)
        .collect()
}

/// What the OpenID providers of `new` admit that those of `old` did not (by `id`): a provider
/// added; its issuer, client, CA or groups claim changed; its MFA trusted; email domains or
/// groups allowed that were not (an emptied list allows any); scopes granted to a group; more new
/// users.
fn loosened_providers(old: &[OidcProvider], new: &[OidcProvider]) -> Vec<String> {
    let mut changes = Vec::new();
    for provider in new {
        let id = &provider.id;
        let Some(before) = old.iter().find(|p| p.id == *id) else {
            changes.push(format!("oidc provider {id} added"));
            continue;
        };
        if before.issuer != provider.issuer
            || before.client_id != provider.client_id
            || before.ca_file != provider.ca_file
            || before.groups_claim != provider.groups_claim
        {
            changes.push(format!(
                "oidc provider {id} changed its issuer, client, CA or groups claim"
            ));
        }
        if provider.trust_idp_mfa && !before.trust_idp_mfa {
            changes.push(format!("oidc provider {id} trust_idp_mfa turned on"));
        }
        for (key, was, now) in [
            (
                "allowed_email_domains",
                &before.allowed_email_domains,
                &provider.allowed_email_domains,
            ),
            (
                "allowed_groups",
                &before.allowed_groups,
                &provider.allowed_groups,
            ),
        ] {
            if was.is_empty() {
                continue;
            }
            if now.is_empty() {
                changes.push(format!("oidc provider {id} {key} emptied: any is allowed"));
            } else {
                let added = not_in(now, was);
                if !added.is_empty() {
                    changes.push(format!(
                        "oidc provider {id} {key} added {}",
                        added.join(", ")
                    ));
                }
            }
        }
        for (group, scopes) in &provider.scopes_from_groups {
            let added = not_in(
                scopes,
                before
                    .scopes_from_groups
                    .get(group)
                    .map_or(&[][..], Vec::as_slice),
            );
            if !added.is_empty() {
                changes.push(format!(
                    "oidc provider {id} grants group {group} scopes {}",
                    added.join(", ")
                ));
            }
        }
        changes.extend(more_new_users(
            &format!("oidc provider {id}"),
            (before.max_new_users, before.new_users_window),
            (provider.max_new_users, provider.new_users_window),
        ));
    }
    changes
}

/// Settings that differ between `old` and `new` but take effect only after a restart.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    /// Sections and keys a reload applies.
    const RELOADED: [&str; 12] = [
        "audit",
        "routes",
        "proxy",
        "identity_headers",
        "upstream",
        "apis",
        "tls",
        "server.trusted_proxies",
        "auth.trusted_issuers",
        "auth.require_application_token",
        "oidc",
        "websocket",
    ];
    let (Ok(Value::Object(old)), Ok(Value::Object(new))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut changed = Vec::new();
    for (section, old_value) in &old {
        if RELOADED.contains(&section.as_str()) {
            continue;
        }
        let new_value = new.get(section).unwrap_or(&Value::Null);
        match (old_value, new_value) {
            (Value::Object(a), Value::Object(b)) => {
                for (key, value) in a {
                    let name = format!("{section}.{key}");
                    if !RELOADED.contains(&name.as_str()) && b.get(key) != Some(value) {
                        changed.push(name);
                    }
                }
            }
            (a, b) if a != b => changed.push(section.clone()),
            _ => {}
        }
    }
    changed
}

/// Why the file's content could not be taken.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    Unreadable(String),
    /// Two reads [`SETTLE`] apart differed: the file is being written.
    Changing,
}

/// The file's content once it reads the same twice `settle` apart.
pub async fn read_settled(path: &Path, settle: Duration) -> Result<Vec<u8>, ReadError> {
    let read = || async {
        tokio::fs::read(path)
            .await
            .map_err(|e| ReadError::Unreadable(format!("cannot read the file: {e}")))
    };
    let first = read().await?;
    tokio::time::sleep(settle).await;
    let second = read().await?;
    if first == second {
        Ok(second)
    } else {
        Err(ReadError::Changing)
    }
}

/// Parses the content of a configuration file for a reload. Unlike at start, a file with no
/// setting at all is refused: it is far more likely a file caught while being written than a
/// wish to put every default (and so every route's removal) in force.
pub fn parse(content: &[u8]) -> Result<Config, String> {
    let text = std::str::from_utf8(content).map_err(|_| "the file is not UTF-8".to_string())?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("the file is not valid TOML: {}", e.message()))?;
    if table.is_empty() {
        return Err(
            "the file is empty (no setting at all); a reload never replaces the \
                    configuration with the built-in defaults"
                .into(),
        );
    }
    config::load_text(text).map_err(|e| e.to_string())
}

/// A reload keeps the environment gatehouse started in (SPEC §10): the file was validated
/// against the environment it names, so a file that switched to `development` would bring
/// development-only settings (a self-signed certificate, say) into a production server.
fn same_environment(running: &Config, new: &Config) -> Result<(), String> {
    let (old, new) = (running.server.environment, new.server.environment);
    if old == new {
        return Ok(());
    }
    let name = |e: config::Environment| match e {
        config::Environment::Development => "development",
        config::Environment::Production => "production",
    };
    Err(format!(
        "server.environment: the file says `{}` but gatehouse started in `{}`; the environment \
         changes only at a restart, and a reload is validated in the one gatehouse runs in",
        name(new),
        name(old)
    ))
}

/// Applies the configuration file's `content` (as read by [`read_settled`]); logs and counts
/// what happened.
pub fn reload(
    reloadable: &Reloadable,
    path: &Path,
    trigger: &str,
    content: Result<&[u8], &ReadError>,
) -> bool {
    let running = reloadable.running();
    let result = match content {
        Ok(content) => parse(content),
        Err(ReadError::Unreadable(e)) => Err(e.clone()),
        Err(ReadError::Changing) => Err(format!(
            "the file is still changing (it read differently {} ms apart); it is read again at \
             the next check",
            SETTLE.as_millis()
        )),
    }
    .and_then(|new| same_environment(&reloadable.started, &new).map(|()| new))
    .and_then(|new| reloadable.apply(&new).map(|()| new));
    match result {
        Ok(new) => {
            let restart = needs_restart(&reloadable.started, &new);
            if !restart.is_empty() {
                tracing::warn!(
                    settings = %restart.join(", "),
                    "these changed settings take effect after a restart"
                );
            }
            let loosened = loosened(&running, &new);
            if !loosened.is_empty() {
                tracing::warn!(
                    trigger,
                    file = %path.display(),
                    changes = %loosened.join("; "),
                    "the reloaded configuration loosens access"
                );
            }
            tracing::info!(trigger, file = %path.display(), "configuration reloaded");
            reloadable.services.meter.reload(true);
            true
        }
        Err(e) => {
            tracing::error!(
                trigger,
                file = %path.display(),
                error = %e.trim_end(),
                "configuration reload rejected; the running configuration stays"
            );
            reloadable.services.meter.reload(false);
            false
        }
    }
}

/// Starts reloading on SIGHUP and on changes to `path` (checked every `poll`). The signal handler
/// is installed before this returns, so a SIGHUP right after start-up is not fatal.
pub fn watch(
    reloadable: Reloadable,
    path: PathBuf,
    poll: Duration,
) -> std::io::Result<JoinHandle<()>> {
    let mut hangup = signal(SignalKind::hangup())?;
    let mut seen = std::fs::read(&path).ok();
    Ok(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let trigger = tokio::select! {
                received = hangup.recv() => match received {
                    Some(()) => "SIGHUP",
                    None => return,
                },
                _ = ticks.tick() => {
                    if tokio::fs::read(&path).await.ok() == seen {
                        continue;
                    }
                    "file changed"
                }
            };
            let content = read_settled(&path, SETTLE).await;
            // A file still being written is not remembered as seen, so the next check takes it
            // up again once it has settled.
            match &content {
                Ok(content) => seen = Some(content.clone()),
                Err(ReadError::Unreadable(_)) => seen = None,
                Err(ReadError::Changing) => {}
            }
            reload(&reloadable, &path, trigger, content.as_deref());
        }
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_settings_read_at_start_are_reported_as_needing_a_restart() {
        let old = config::development_toml_str("").unwrap();
        let new = config::development_toml_str(
            r#"
            [listen]
            admin = "127.0.0.1:9191"
            [mfa]
            code_ttl = "2m"
            [proxy]
            default = "public"
            [[routes]]
            path_prefix = "/x/"
            access = "mfa"
            [server]
            trusted_proxies = ["10.0.0.0/8"]
            "#,
        )
        .unwrap();
        assert_eq!(needs_restart(&old, &new), ["listen.admin", "mfa.code_ttl"]);
        assert!(needs_restart(&old, &old).is_empty());
    }

    const BASE: &str = r#"
        [proxy]
        default = "mfa"
        [auth]
        require_application_token = true
        [server]
        trusted_proxies = ["10.0.0.0/8"]
        [[routes]]
        path_prefix = "/admin/"
        access = "mfa"
        scopes = ["admin", "ops"]
        [[routes]]
        path_prefix = "/app/"
        access = "authenticated"
        "#;

    fn with(extra: &str) -> Config {
        config::development_toml_str(&format!("{BASE}{extra}")).unwrap()
    }

    #[test]
    fn tightening_or_an_unchanged_file_loosens_nothing() {
        let old = with("");
        assert!(loosened(&old, &old).is_empty());
        let tighter = config::development_toml_str(
            &BASE.replace("access = \"authenticated\"", "access = \"mfa\""),
        )
        .unwrap();
        assert!(loosened(&old, &tighter).is_empty());
        let new_stricter_route = with(
            "[[routes]]\npath_prefix = \"/admin/x/\"\naccess = \"mfa\"\nscopes = [\"admin\", \"ops\", \"x\"]\n",
        );
        assert!(loosened(&old, &new_stricter_route).is_empty());
        assert!(
            !loosened(&new_stricter_route, &old).is_empty(),
            "a route removed"
        );
    }

    #[test]
    fn narrower_conditions_and_wider_alternatives_are_named() {
        let route = |extra: &str| {
            with(&format!(
                "[[routes]]\npath_prefix = \"/x/\"\naccess = \"mfa\"\n{extra}"
            ))
        };
        let old = route(
            "any_scopes = [\"a\"]\nfactors = [\"totp\"]\nrate_limit = \"10/m\"\n\
             methods = [\"GET\", \"POST\"]\n",
        );
        let new = route(
            "any_scopes = [\"a\", \"b\"]\nfactors = [\"totp\", \"sms\"]\n\
             rate_limit = \"20/m\"\nmethods = [\"GET\"]\nsource = [\"10.0.0.0/8\"]\n",
        );
        let changes = loosened(&old, &new).join("; ");
        for expected in [
            "route /x/ covers fewer methods (GET)",
            "route /x/ covers fewer clients (10.0.0.0/8)",
            "route /x/ accepts other any_scopes",
            "route /x/ accepts other factors",
            "route /x/ rate_limit 10/m -> 20/m",
        ] {
            assert!(changes.contains(expected), "{expected} not in {changes}");
        }
        assert!(
            loosened(&new, &old)
                .join("; ")
                .find("covers fewer clients")
                .is_none()
        );
    }

    #[test]
    fn every_loosening_is_named() {
        let old = with("");
        let empty = config::development_toml_str("").unwrap();
        let all = loosened(&old, &empty);
        for expected in [
            "proxy.default mfa -> authenticated",
            "route /admin/ removed",
            "route /app/ removed",
            "auth.require_application_token turned off",
        ] {
            assert!(all.iter().any(|c| c == expected), "{expected}: {all:?}");
        }
        let text = BASE
            .replace("access = \"authenticated\"", "access = \"public\"")
            .replace("[\"admin\", \"ops\"]", "[\"admin\"]")
            .replace("[\"10.0.0.0/8\"]", "[\"10.0.0.0/8\", \"0.0.0.0/0\"]");
        let changes = loosened(&old, &config::development_toml_str(&text).unwrap());
        assert_eq!(
            changes,
            [
                "route /admin/ no longer requires scopes ops",
                "route /app/ access authenticated -> public",
                "server.trusted_proxies added 0.0.0.0/0",
            ]
        );
        let changes = loosened(
            &old,
            &with("[[routes]]\npath_prefix = \"/admin/open/\"\naccess = \"mfa\"\n"),
        );
        assert_eq!(
            changes,
            ["new route /admin/open/ is mfa (was under /admin/: mfa)"]
        );
        let changes = loosened(
            &old,
            &with("[[routes]]\npath_prefix = \"/other/\"\naccess = \"public\"\n"),
        );
        assert_eq!(changes, ["new route /other/ is public (was under /: mfa)"]);
        let issuer = r#"
            [[auth.trusted_issuers]]
            issuer = "https://idp.example"
            jwks_url = "https://idp.example/jwks"
            audience = "app"
            "#;
        let changes = loosened(&old, &with(issuer));
        assert_eq!(changes, ["trusted issuer https://idp.example added"]);
        let bounded = |extra: &str| with(&format!("{issuer}{extra}"));
        let (old, stricter) = (bounded(""), bounded("max_new_users = 50\n"));
        assert!(loosened(&old, &stricter).is_empty());
        for looser in ["max_new_users = 500\n", "new_users_window = \"1m\"\n"] {
            let changes = loosened(&old, &bounded(looser));
            assert_eq!(changes.len(), 1, "{looser}: {changes:?}");
            assert!(
                changes[0]
                    .starts_with("trusted issuer https://idp.example may create more new users"),
                "{changes:?}"
            );
        }
    }

    #[test]
    fn rules_of_one_prefix_are_compared_rule_by_rule() {
        let split = |get_methods: &str, extra: &str| {
            with(&format!(
                "[[routes]]\npath_prefix = \"/api/\"\nmethods = {get_methods}\naccess = \"public\"\n\
                 [[routes]]\npath_prefix = \"/api/\"\naccess = \"mfa\"\n{extra}"
            ))
        };
        let old = split("[\"GET\"]", "");
        assert!(loosened(&old, &old).is_empty());
        // POST leaves the MFA rule for the public one.
        assert_eq!(
            loosened(&old, &split("[\"GET\", \"POST\"]", "")),
            ["route /api/ covers more methods (GET, POST)"]
        );
        // A new route under the prefix is weaker than the rule POST met there before.
        let changes = loosened(
            &old,
            &split(
                "[\"GET\"]",
                "[[routes]]\npath_prefix = \"/api/v2/\"\naccess = \"authenticated\"\n",
            ),
        );
        assert_eq!(
            changes,
            ["new route /api/v2/ is authenticated (was under /api/: mfa)"]
        );
        // A new route as strong as the rule above it, without that rule's factors or limit.
        let guarded = with(
            "[[routes]]\npath_prefix = \"/keys/\"\naccess = \"mfa\"\n\
             factors = [\"webauthn\"]\nrate_limit = \"10/m\"\n",
        );
        let changes = loosened(
            &guarded,
            &with(
                "[[routes]]\npath_prefix = \"/keys/\"\naccess = \"mfa\"\n\
                 factors = [\"webauthn\"]\nrate_limit = \"10/m\"\n\
                 [[routes]]\npath_prefix = \"/keys/admin/\"\naccess = \"mfa\"\n",
            ),
        );
        assert_eq!(
            changes,
            ["new route /keys/admin/ accepts other factors, rate_limit removed (was under /keys/)"]
        );
    }

    #[test]
    fn every_loosening_of_sign_in_providers_and_websocket_origins_is_named() {
        let provider = |extra: &str| {
            with(&format!(
                "[[oidc.providers]]\nid = \"corp\"\nname = \"Corp\"\n\
                 issuer = \"https://idp.example\"\nclient_id = \"gh\"\nclient_secret = \"s\"\n{extra}"
            ))
        };
        let strict = provider(
            "allowed_email_domains = [\"example.com\"]\nallowed_groups = [\"staff\"]\n\
             scopes_from_groups = { staff = [\"read\"] }\nmax_new_users = 10\n",
        );
        assert!(loosened(&strict, &strict).is_empty());
        assert_eq!(loosened(&with(""), &strict), ["oidc provider corp added"]);
        assert!(
            loosened(&strict, &with("")).is_empty(),
            "removing one admits nobody"
        );
        let looser = provider(
            "trust_idp_mfa = true\nallowed_email_domains = [\"example.com\", \"evil.example\"]\n\
             scopes_from_groups = { staff = [\"read\", \"admin\"], all = [\"x\"] }\n\
             max_new_users = 10\ngroups_claim = \"roles\"\n",
        );
        let changes = loosened(&strict, &looser);
        for expected in [
            "oidc provider corp changed its issuer, client, CA or groups claim",
            "oidc provider corp trust_idp_mfa turned on",
            "oidc provider corp allowed_email_domains added evil.example",
            "oidc provider corp allowed_groups emptied: any is allowed",
            "oidc provider corp grants group all scopes x",
            "oidc provider corp grants group staff scopes admin",
        ] {
            assert!(
                changes.iter().any(|c| c == expected),
                "{expected}: {changes:?}"
            );
        }
        assert_eq!(changes.len(), 6, "{changes:?}");
        let more_users = provider(
            "allowed_email_domains = [\"example.com\"]\nallowed_groups = [\"staff\"]\n\
             scopes_from_groups = { staff = [\"read\"] }\nmax_new_users = 11\n",
        );
        let changes = loosened(&strict, &more_users);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(
            changes[0].starts_with("oidc provider corp may create more new users"),
            "{changes:?}"
        );
        let origins = with("[websocket]\nallowed_origins = [\"https://a.example\"]\n");
        let more =
            with("[websocket]\nallowed_origins = [\"https://a.example\", \"https://b.example\"]\n");
        assert_eq!(
            loosened(&origins, &more),
            ["websocket.allowed_origins added https://b.example"]
        );
        assert!(loosened(&more, &origins).is_empty());
    }

    #[test]
    fn a_file_caught_while_being_written_is_refused() {
        for content in ["", " \n\t\n", "# only a comment\n"] {
            let e = parse(content.as_bytes()).unwrap_err();
            assert!(e.contains("empty"), "{content:?}: {e}");
        }
        let e = parse(b"[proxy]\ndefault = \"mf").unwrap_err();
        assert!(e.contains("not valid TOML"), "{e}");
        assert!(parse(b"\xff\xfe").is_err());
        let base = BASE.replace("[server]", "[server]\nenvironment = \"development\"");
        assert_eq!(parse(base.as_bytes()).unwrap().proxy.default, Access::Mfa);
    }

    #[tokio::test]
    async fn a_file_must_read_the_same_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, "a = 1\n").unwrap();
        assert_eq!(
            read_settled(&path, Duration::from_millis(1)).await.unwrap(),
            b"a = 1\n"
        );
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::fs::write(&path, "a = 2\n").unwrap();
            })
        };
        let read = read_settled(&path, Duration::from_millis(300)).await;
        writer.await.unwrap();
        assert_eq!(read, Err(ReadError::Changing));
        assert!(matches!(
            read_settled(&dir.path().join("missing"), Duration::ZERO).await,
            Err(ReadError::Unreadable(_))
        ));
    }
}
