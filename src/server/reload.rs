//! Configuration reload (SPEC §8): on SIGHUP, and when the configuration file's content changes,
//! the file is loaded and validated again. A valid configuration replaces the request pipeline
//! (routes, identity headers, upstream, trusted proxies, API families), the trusted issuers and
//! the TLS certificate; open connections stay open and use it from their next request. An invalid
//! one is refused with a log line and the running configuration stays. Settings read only at start
//! (listeners, store, secrets, …) are reported as needing a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

use super::listener::SharedTls;
use super::tls;
use crate::app::App;
use crate::config::{self, Config};
use crate::gateway::Gateway;

/// How often the configuration file is checked for a change.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The parts of a running server a reload replaces.
#[derive(Clone)]
pub struct Reloadable {
    gateway: Arc<ArcSwap<Gateway>>,
    tls: Option<SharedTls>,
}

impl Reloadable {
    pub(super) fn new(gateway: Arc<ArcSwap<Gateway>>, tls: Option<SharedTls>) -> Reloadable {
        Reloadable { gateway, tls }
    }

    /// Puts `new` in force, all or nothing: everything that can fail is built before anything
    /// is replaced.
    pub fn apply(&self, app: &App, new: &Config) -> Result<(), String> {
        let tls = match &self.tls {
            Some(_) => Some(tls::server_config(&new.tls, &new.server.public_url)?),
            None => None,
        };
        let issuers = app.auth.issuers_for(&new.auth)?;
        let gateway = Gateway::new(app, new);
        if let (Some(shared), Some(tls)) = (&self.tls, tls) {
            shared.store(tls);
        }
        app.auth.trust(issuers);
        self.gateway.store(Arc::new(gateway));
        Ok(())
    }
}

/// Settings that differ between `old` and `new` but take effect only after a restart.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    /// Sections and keys a reload applies.
    const RELOADED: [&str; 9] = [
        "routes",
        "proxy",
        "identity_headers",
        "upstream",
        "apis",
        "tls",
        "server.trusted_proxies",
        "auth.trusted_issuers",
        "auth.require_application_token",
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

/// Loads the configuration again and applies it; logs and counts what happened.
pub fn reload(app: &App, reloadable: &Reloadable, path: &Path, trigger: &str) -> bool {
    let result = config::load(Some(path))
        .map_err(|e| e.to_string())
        .and_then(|new| reloadable.apply(app, &new).map(|()| new));
    match result {
        Ok(new) => {
            let restart = needs_restart(&app.config, &new);
            if !restart.is_empty() {
                tracing::warn!(
                    settings = %restart.join(", "),
                    "these changed settings take effect after a restart"
                );
            }
            tracing::info!(trigger, file = %path.display(), "configuration reloaded");
            app.meter.reload(true);
            true
        }
        Err(e) => {
            tracing::error!(
                trigger,
                file = %path.display(),
                error = %e.trim_end(),
                "configuration reload rejected; the running configuration stays"
            );
            app.meter.reload(false);
            false
        }
    }
}

/// Starts reloading on SIGHUP and on changes to `path` (checked every `poll`). The signal handler
/// is installed before this returns, so a SIGHUP right after start-up is not fatal.
pub fn watch(
    app: Arc<App>,
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
                    let content = std::fs::read(&path).ok();
                    if content == seen {
                        continue;
                    }
                    seen = content;
                    "file changed"
                }
            };
            if trigger == "SIGHUP" {
                seen = std::fs::read(&path).ok();
            }
            reload(&app, &reloadable, &path, trigger);
        }
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_settings_read_at_start_are_reported_as_needing_a_restart() {
        let old = config::from_toml_str("").unwrap();
        let new = config::from_toml_str(
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
}
