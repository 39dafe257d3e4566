//! Checking the raw configuration: one function per section, each taking the [`Checker`] and its
//! raw section and returning the typed section. Problems are collected, never returned early, so
//! that every invalid value is reported at once under its dotted key.

use std::path::Path;

mod check;
mod credentials;
mod features;
mod oidc;
mod transport;

use super::raw::*;
use super::*;
use check::*;
use credentials::*;
use features::*;
use oidc::oidc;
use transport::*;

#[cfg(test)]
pub(super) use check::{parse_duration, weak_admin_token};

/// Turns the raw sections into [`Config`], section by section in the order problems are reported.
pub(super) fn validate(raw: RawConfig, env_secrets: EnvSecrets) -> Result<Config, ConfigError> {
    let mut c = Checker::default();
    let server = server(&mut c, raw.server);
    let listen = listen(&mut c, raw.listen);
    let tls = tls(&mut c, raw.tls);
    let upstream = upstream(&mut c, raw.upstream);
    let proxy = proxy(&mut c, raw.proxy);
    let routes = routes(&mut c, raw.routes);
    let identity_headers = identity_headers(&mut c, raw.identity_headers);
    let log = log(&mut c, raw.log);
    let store = store(&mut c, raw.store);
    let admin = admin(&mut c, raw.admin, env_secrets.admin_token);
    let auth = auth(&mut c, raw.auth);
    let tokens = tokens(&mut c, raw.tokens, &server.public_url);
    audiences(&mut c, &tokens, &upstream);
    let bootstrap = bootstrap(&mut c, raw.bootstrap);
    let mfa = mfa(&mut c, raw.mfa);
    let secrets = secrets(&mut c, raw.secrets, env_secrets.master_key);
    let smtp = smtp(&mut c, raw.smtp);
    let (sms, sms_kind_given) = sms(&mut c, raw.sms);
    let apis = apis(&mut c, raw.apis);
    let domains = domains(&mut c, raw.domains);
    let sessions = sessions(&mut c, raw.sessions);
    let oidc = oidc(&mut c, raw.oidc);
    let websocket = websocket(&mut c, raw.websocket);
    let audit = audit(&mut c, raw.audit);

    if server.environment != Environment::Development {
        refuse_development_settings(
            &mut c,
            DevelopmentSettings {
                sms_kind: &sms.kind,
                sms_kind_given,
                master_key: secrets.master_key.is_some() || secrets.master_key_file.is_some(),
                self_signed: tls.self_signed,
                store_path: &store.path,
                bootstrap: bootstrap.file.as_deref(),
            },
        );
    }

    if c.problems.is_empty() {
        Ok(Config {
            domains,
            sessions,
            oidc,
            websocket,
            audit,
            mfa,
            secrets,
            smtp,
            sms,
            apis,
            store,
            admin,
            auth,
            tokens,
            bootstrap,
            server,
            listen,
            tls,
            upstream,
            proxy,
            routes,
            identity_headers,
            log,
        })
    } else {
        Err(ConfigError {
            problems: c.problems,
        })
    }
}

/// Across sections: an upstream audience that would make assertions usable as access tokens.
fn audiences(c: &mut Checker, tokens: &TokensConfig, upstream: &UpstreamConfig) {
    // Assertions and access tokens are signed by the same key: with one audience, every
    // X-Auth-Assertion the application receives would be accepted back as an access token.
    if tokens.audience == upstream.audience {
        c.problem(
            "upstream.audience",
            "must differ from tokens.audience, or X-Auth-Assertion would be an access token",
        );
    }
}

/// What [`refuse_development_settings`] looks at.
struct DevelopmentSettings<'a> {
    sms_kind: &'a str,
    /// `sms.kind` was written (else `log` is the default).
    sms_kind_given: bool,
    /// A master key is configured (a file named, or `GATEHOUSE_MASTER_KEY`).
    master_key: bool,
    self_signed: bool,
    store_path: &'a Path,
    bootstrap: Option<&'a Path>,
}

/// Outside `server.environment = "development"`, every setting that is safe only on a developer's
/// machine is a problem under its key (SPEC §10): each says what to use instead.
fn refuse_development_settings(c: &mut Checker, s: DevelopmentSettings<'_>) {
    const ONLY: &str = "is for development only (server.environment = \"development\")";
    if s.sms_kind == "log" {
        c.problem(
            "sms.kind",
            format!(
                "`log`{} writes text messages, codes included, in clear to {}: it {ONLY}; \
                 use `webhook` or `twilio` with sms.url, or `none` to send no text messages",
                if s.sms_kind_given {
                    ""
                } else {
                    " (the default)"
                },
                s.store_path.join("sms-outbox.log").display()
            ),
        );
    }
    if !s.master_key {
        c.problem(
            "secrets.master_key_file",
            format!(
                "no master key is configured, so one would be generated into {}: a generated key \
                 {ONLY}; give secrets.master_key_file or GATEHOUSE_MASTER_KEY (32 random bytes in \
                 base64, e.g. `head -c 32 /dev/urandom | base64`)",
                s.store_path.join("master.key").display()
            ),
        );
    }
    if s.self_signed {
        c.problem(
            "tls.self_signed",
            format!(
                "a self-signed certificate {ONLY}; give a real certificate in tls.cert and tls.key \
                 with tls.self_signed = false, or set listen.https = \"\" behind a TLS terminator"
            ),
        );
    }
    if let Some(path) = s.bootstrap {
        match crate::config::bootstrap_file::plaintext_secrets(path) {
            Ok(entries) => {
                for entry in entries {
                    c.problem(
                        "bootstrap.file",
                        format!("{}: {entry}; a plaintext secret {ONLY}", path.display()),
                    );
                }
            }
            Err(e) => c.problem("bootstrap.file", e),
        }
    }
}
