//! The sections of the features around sign-in: `mfa`, `smtp`, `sms`, `domains` and `apis`.

use std::time::Duration;

use http::Uri;

use super::check::*;
use crate::config::raw::*;
use crate::config::*;
use crate::path;

/// `[mfa]` with its `totp` and `lockout` tables.
pub(super) fn mfa(c: &mut Checker, m: RawMfa) -> MfaConfig {
    MfaConfig {
        default_factor: c.get(
            "mfa.default_factor",
            m.default_factor,
            "otp".into(),
            one_of(&["otp", "sms", "email"]),
        ),
        ticket_ttl: c.get(
            "mfa.ticket_ttl",
            m.ticket_ttl,
            Duration::from_secs(24 * 3600),
            parse_duration,
        ),
        code_ttl: c.get("mfa.code_ttl", m.code_ttl, Duration::from_secs(300), |s| {
            let d = parse_duration(s)?;
            if d.is_zero() || d > Duration::from_secs(600) {
                Err("must be between 1s and 10m (NIST SP 800-63B)".into())
            } else {
                Ok(d)
            }
        }),
        send_limit: c.get("mfa.send_limit", m.send_limit, 5, |v| {
            in_range(1, 100)(v).map(|v| v as u32)
        }),
        send_window: c.get(
            "mfa.send_window",
            m.send_window,
            Duration::from_secs(900),
            parse_duration,
        ),
        totp: TotpConfig {
            issuer: c.get(
                "mfa.totp.issuer",
                m.totp.issuer,
                "Gatehouse".into(),
                |s: String| {
                    if s.is_empty() || s.contains(':') {
                        Err("must be non-empty and contain no `:`".into())
                    } else {
                        Ok(s)
                    }
                },
            ),
            algorithm: c.get(
                "mfa.totp.algorithm",
                m.totp.algorithm,
                "SHA1".into(),
                one_of(&["SHA1", "SHA256", "SHA512"]),
            ),
            digits: c.get("mfa.totp.digits", m.totp.digits, 6, |v| {
                in_range(6, 8)(v).map(|v| v as u8)
            }),
            period: c.get("mfa.totp.period", m.totp.period, 30, in_range(15, 120)),
            skew: c.get("mfa.totp.skew", m.totp.skew, 1, |v| {
                in_range(0, 2)(v).map(|v| v as u8)
            }),
        },
        lockout: LockoutConfig {
            max_failures: c.get("mfa.lockout.max_failures", m.lockout.max_failures, 5, |v| {
                in_range(1, 100)(v).map(|v| v as u32)
            }),
            window: c.get(
                "mfa.lockout.window",
                m.lockout.window,
                Duration::from_secs(300),
                parse_duration,
            ),
            duration: c.get(
                "mfa.lockout.duration",
                m.lockout.duration,
                Duration::from_secs(900),
                parse_duration,
            ),
        },
    }
}

/// `[smtp]`.
pub(super) fn smtp(c: &mut Checker, sm: RawSmtp) -> SmtpConfig {
    SmtpConfig {
        url: c.get("smtp.url", sm.url, None, |s: String| {
            if s.trim().is_empty() {
                return Ok(None);
            }
            let uri: Uri = s
                .parse()
                .map_err(|_| "expected a URL such as `smtp://127.0.0.1:25`".to_owned())?;
            match uri.scheme_str() {
                Some("smtp" | "smtps") if uri.authority().is_some() => Ok(Some(Secret::new(s))),
                _ => Err("expected an smtp:// or smtps:// URL".to_owned()),
            }
        }),
        from: c.get(
            "smtp.from",
            sm.from,
            "Gatehouse <gatehouse@localhost>".into(),
            non_empty,
        ),
    }
}

/// `[sms]`, and whether `sms.kind` was written (else `log` is the default).
pub(super) fn sms(c: &mut Checker, sg: RawSms) -> (SmsConfig, bool) {
    let sms_kind_given = sg.kind.is_some();
    let auth_token_file = c.get(
        "sms.auth_token_file",
        sg.auth_token_file,
        None,
        optional_path,
    );
    let sms = SmsConfig {
        kind: c.get(
            "sms.kind",
            sg.kind,
            "log".into(),
            one_of(&["log", "webhook", "twilio", "none"]),
        ),
        url: c.get("sms.url", sg.url, None, |s: String| {
            parse_jwks_url(s.clone())
                .map(|_| Some(s))
                .map_err(|_| "expected an http(s) URL".to_owned())
        }),
        from: c.get("sms.from", sg.from, None, |s| ok(Some(s))),
        account_sid: c.get("sms.account_sid", sg.account_sid, None, |s| ok(Some(s))),
        auth_token: c
            .get("sms.auth_token", sg.auth_token, None, |s| {
                ok(Some(Secret::new(s)))
            })
            .or_else(|| {
                auth_token_file
                    .as_ref()
                    .and_then(|p| read_secret_file(c, "sms.auth_token_file", p))
            }),
    };
    match sms.kind.as_str() {
        "webhook" if sms.url.is_none() => {
            c.problem("sms.url", "is required when sms.kind = \"webhook\"")
        }
        "twilio" => {
            for (key, missing) in [
                ("sms.url", sms.url.is_none()),
                ("sms.from", sms.from.is_none()),
                ("sms.account_sid", sms.account_sid.is_none()),
                ("sms.auth_token", sms.auth_token.is_none()),
            ] {
                if missing {
                    c.problem(key, "is required when sms.kind = \"twilio\"");
                }
            }
        }
        _ => {}
    }
    (sms, sms_kind_given)
}

/// `[sessions]`.
pub(super) fn sessions(c: &mut Checker, s: RawSessions) -> SessionsConfig {
    let cookie_name = c.get(
        "sessions.cookie_name",
        s.cookie_name,
        "__Host-gatehouse".into(),
        |name: String| {
            // RFC 6265 §4.1.1: a cookie name is an RFC 9110 token.
            let token = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
                });
            if token {
                Ok(name)
            } else {
                Err(format!(
                    "expected a cookie name (letters, digits and !#$%&'*+-.^_`|~, at most 64), got `{name}`"
                ))
            }
        },
    );
    let idle_timeout = c.get(
        "sessions.idle_timeout",
        s.idle_timeout,
        Duration::from_secs(3600),
        positive_duration,
    );
    let max_age = c.get(
        "sessions.max_age",
        s.max_age,
        Duration::from_secs(12 * 3600),
        positive_duration,
    );
    let max_per_user = c.get("sessions.max_per_user", s.max_per_user, 20, |n: u64| {
        if (1..=1000).contains(&n) {
            Ok(n as usize)
        } else {
            Err(format!("expected 1 to 1000, got {n}"))
        }
    });
    SessionsConfig {
        cookie_name,
        idle_timeout,
        max_age,
        max_per_user,
    }
}

/// A duration of at least one second.
/// `[audit]`.
pub(super) fn audit(c: &mut Checker, a: RawAudit) -> AuditConfig {
    let retention = c.get(
        "audit.retention",
        a.retention,
        Duration::from_secs(30 * 24 * 3600),
        |s: String| {
            let d = parse_duration(s)?;
            if d < Duration::from_secs(60) {
                Err("must be at least 1m".into())
            } else {
                Ok(d)
            }
        },
    );
    let sink = c.get(
        "audit.sink",
        a.sink,
        "store".to_owned(),
        one_of(&["store", "stdout", "file"]),
    );
    let file = c.get("audit.file", a.file, None, optional_path);
    let sink = match (sink.as_str(), file) {
        ("file", Some(path)) => AuditSink::File(path),
        ("file", None) => {
            c.problem("audit.file", "is required when audit.sink = \"file\"");
            AuditSink::Store
        }
        (_, Some(_)) => {
            c.problem("audit.file", "is only used when audit.sink = \"file\"");
            AuditSink::Store
        }
        ("stdout", None) => AuditSink::Stdout,
        _ => AuditSink::Store,
    };
    AuditConfig { retention, sink }
}

fn positive_duration(s: String) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        Err("must be at least 1s".into())
    } else {
        Ok(d)
    }
}

/// `[domains]`.
pub(super) fn domains(c: &mut Checker, d: RawDomains) -> DomainsConfig {
    DomainsConfig {
        code_prefix: c.get(
            "domains.code_prefix",
            d.code_prefix,
            "gatehouse-verification=".into(),
            |s: String| {
                if s.len() > 64 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    Err("must be at most 64 characters without whitespace".into())
                } else {
                    Ok(s)
                }
            },
        ),
        code_ttl: c.get(
            "domains.code_ttl",
            d.code_ttl,
            Duration::from_secs(7 * 86400),
            parse_duration,
        ),
        record_name: c.get(
            "domains.record_name",
            d.record_name,
            "_gatehouse-challenge".into(),
            |s: String| {
                let ok = !s.is_empty()
                    && s.len() <= 63
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if ok {
                    Ok(s)
                } else {
                    Err(format!(
                        "expected one DNS label such as `_gatehouse-challenge`, got `{s}`"
                    ))
                }
            },
        ),
        resolver: c.get("domains.resolver", d.resolver, None, parse_optional_addr),
    }
}
/// One API family's `enabled` and `base_path` under `apis.<name>`.
pub(super) fn api_family(c: &mut Checker, name: &str, raw: RawFamily, base: &str) -> ApiFamily {
    ApiFamily {
        enabled: c.get(&format!("apis.{name}.enabled"), raw.enabled, true, ok),
        base_path: c.get(
            &format!("apis.{name}.base_path"),
            raw.base_path,
            base.to_owned(),
            |s: String| {
                let trimmed = s.trim_end_matches('/').to_owned();
                if trimmed.is_empty() {
                    return Ok(trimmed);
                }
                match path::normalize(&trimmed) {
                    Ok(n) if n == trimmed => Ok(trimmed),
                    _ => Err(format!(
                        "expected a normalised path such as `/nexus`, got `{s}`"
                    )),
                }
            },
        ),
    }
}

/// `[apis]`: the Nexus, WS and Manage families.
pub(super) fn apis(c: &mut Checker, raw_apis: RawApis) -> ApisConfig {
    let rm = raw_apis.manage;
    let manage_family = RawFamily {
        enabled: rm.enabled,
        base_path: rm.base_path,
    };
    ApisConfig {
        nexus: api_family(c, "nexus", raw_apis.nexus, ""),
        ws: api_family(c, "ws", raw_apis.ws, ""),
        manage: ManageApi {
            family: api_family(c, "manage", manage_family, "/manage"),
            client_ip_limit: c.get(
                "apis.manage.client_ip_limit",
                rm.client_ip_limit,
                600,
                |v| in_range(0, 1_000_000)(v).map(|v| v as u32),
            ),
            client_ip_window: c.get(
                "apis.manage.client_ip_window",
                rm.client_ip_window,
                Duration::from_secs(60),
                parse_duration,
            ),
        },
    }
}
