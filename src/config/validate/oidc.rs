//! `[[oidc.providers]]` (SPEC §12).

use std::collections::{BTreeMap, HashSet};

use super::check::*;
use crate::config::raw::*;
use crate::config::*;

/// The most providers one gatehouse offers: each is a button and a discovery at start.
const MAX_PROVIDERS: usize = 32;

/// A provider's `id`: it names paths (`/auth/callback/{id}`), so letters, digits, `-` and `_`.
fn parse_id(id: String) -> Result<String, String> {
    let fine = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if fine {
        Ok(id)
    } else {
        Err(format!(
            "expected 1 to 64 letters, digits, `-` or `_`, got `{id}`"
        ))
    }
}

/// The issuer's URL: https, or http on this host only (development and tests), without a query
/// or fragment; kept as written (a trailing `/` included), since the ID token's `iss` must equal
/// it exactly.
fn parse_issuer(s: String) -> Result<String, String> {
    let uri: Uri = s
        .parse()
        .map_err(|_| format!("expected an https URL, got `{s}`"))?;
    let local = uri.host().is_some_and(is_loopback_host);
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if local => {}
        _ => {
            return Err(format!(
                "must be an https URL (http only for 127.0.0.0/8, ::1 or localhost), got `{s}`"
            ));
        }
    }
    if uri.authority().is_none() || uri.query().is_some() || s.contains('#') {
        return Err(format!(
            "expected an issuer URL without query or fragment, got `{s}`"
        ));
    }
    Ok(s)
}

fn parse_domains(list: Vec<String>) -> Result<Vec<String>, String> {
    list.into_iter()
        .map(|d| {
            let d = d.trim().trim_start_matches('@').to_ascii_lowercase();
            let fine = !d.is_empty()
                && d.len() <= 253
                && d.contains('.')
                && d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if fine {
                Ok(d)
            } else {
                Err(format!(
                    "expected domain names such as `example.com`, got `{d}`"
                ))
            }
        })
        .collect()
}

fn parse_scopes(list: Vec<String>) -> Result<Vec<String>, String> {
    if !list.iter().any(|s| s == "openid") {
        return Err("must include `openid`".into());
    }
    match list.iter().find(|s| {
        s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        Some(bad) => Err(format!("`{bad}` is not a scope token (RFC 6749 §3.3)")),
        None => Ok(list),
    }
}

/// Gatehouse scopes a group maps to: the same characters as any scope it grants.
fn parse_group_scopes(
    map: BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<String, Vec<String>>, String> {
    for (group, scopes) in &map {
        if let Some(bad) = scopes
            .iter()
            .find(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(format!("`{group}`: `{bad}` is not a scope"));
        }
        if scopes.iter().any(|s| s == "mfa") {
            return Err(format!(
                "`{group}`: `mfa` is earned by a second factor, never granted"
            ));
        }
    }
    Ok(map)
}

pub(super) fn oidc(c: &mut Checker, raw: RawOidc) -> OidcConfig {
    if raw.providers.len() > MAX_PROVIDERS {
        c.problem(
            "oidc.providers",
            format!(
                "at most {MAX_PROVIDERS} providers, got {}",
                raw.providers.len()
            ),
        );
    }
    let mut ids = HashSet::new();
    let mut providers = Vec::new();
    for (i, p) in raw.providers.into_iter().enumerate() {
        let key = |k: &str| format!("oidc.providers[{i}].{k}");
        for (k, missing) in [
            ("id", p.id.is_none()),
            ("name", p.name.is_none()),
            ("issuer", p.issuer.is_none()),
            ("client_id", p.client_id.is_none()),
        ] {
            if missing {
                c.problem(&key(k), "is required");
            }
        }
        let id = c.get(&key("id"), p.id, String::new(), parse_id);
        if !id.is_empty() && !ids.insert(id.to_ascii_lowercase()) {
            c.problem(&key("id"), format!("`{id}` is used by another provider"));
        }
        let name = c.get(&key("name"), p.name, String::new(), |s: String| {
            let s = non_empty(s)?;
            if s.chars().count() > 64 || s.chars().any(char::is_control) {
                Err("expected at most 64 characters, no control characters".into())
            } else {
                Ok(s)
            }
        });
        let issuer = c.get(&key("issuer"), p.issuer, String::new(), parse_issuer);
        let client_id = c.get(&key("client_id"), p.client_id, String::new(), non_empty);
        let client_secret_file = c.get(
            &key("client_secret_file"),
            p.client_secret_file,
            None,
            optional_path,
        );
        let inline = c.get(&key("client_secret"), p.client_secret, None, |s: String| {
            non_empty(s).map(Some)
        });
        let client_secret = match (inline, &client_secret_file) {
            (Some(_), Some(_)) => {
                c.problem(
                    &key("client_secret"),
                    "give client_secret or client_secret_file, not both",
                );
                Secret::new("")
            }
            (Some(secret), None) => Secret::new(secret),
            (None, Some(path)) => {
                read_secret_file(c, &key("client_secret_file"), path).unwrap_or(Secret::new(""))
            }
            (None, None) => {
                c.problem(
                    &key("client_secret"),
                    "client_secret or client_secret_file is required",
                );
                Secret::new("")
            }
        };
        let scopes = c.get(
            &key("scopes"),
            p.scopes,
            vec!["openid".into(), "email".into(), "profile".into()],
            parse_scopes,
        );
        let allowed_email_domains = c.get(
            &key("allowed_email_domains"),
            p.allowed_email_domains,
            Vec::new(),
            parse_domains,
        );
        let allowed_groups = c.get(&key("allowed_groups"), p.allowed_groups, Vec::new(), ok);
        let groups_claim = c.get(
            &key("groups_claim"),
            p.groups_claim,
            "groups".into(),
            non_empty,
        );
        let scopes_from_groups = c.get(
            &key("scopes_from_groups"),
            p.scopes_from_groups,
            BTreeMap::new(),
            parse_group_scopes,
        );
        let trust_idp_mfa = c.get(&key("trust_idp_mfa"), p.trust_idp_mfa, false, ok);
        let ca_file = c.get(&key("ca_file"), p.ca_file, None, optional_path);
        if let Some(path) = &ca_file
            && let Err(e) = std::fs::metadata(path)
        {
            c.problem(
                &key("ca_file"),
                format!("cannot read {}: {e}", path.display()),
            );
        }
        let (max_new_users, new_users_window) =
            new_user_limit(c, &key, p.max_new_users, p.new_users_window);
        providers.push(OidcProvider {
            id,
            name,
            issuer,
            client_id,
            client_secret,
            client_secret_file,
            scopes,
            allowed_email_domains,
            allowed_groups,
            groups_claim,
            scopes_from_groups,
            trust_idp_mfa,
            ca_file,
            max_new_users,
            new_users_window,
        });
    }
    OidcConfig { providers }
}
