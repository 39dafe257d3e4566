//! The bootstrap file's format (`bootstrap.file`, TOML; see [`crate::bootstrap`]): reading it,
//! what is wrong with its entries whatever the store holds, the secrets it holds in clear, and what it
//! declares. Applying it to a store is [`crate::bootstrap::apply`].

use std::path::Path;

use serde::Deserialize;

use crate::identity::Role;
use crate::names;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct File {
    pub(crate) users: Vec<UserEntry>,
    pub(crate) applications: Vec<ApplicationEntry>,
    pub(crate) organizations: Vec<OrganizationEntry>,
    pub(crate) files: Vec<FileEntry>,
    pub(crate) domains: Vec<DomainEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DomainEntry {
    pub(crate) organization_id: i64,
    pub(crate) domain: String,
    pub(crate) authentication_method: Option<String>,
    #[serde(default)]
    pub(crate) verified: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserEntry {
    pub(crate) user_name: String,
    pub(crate) password: Option<String>,
    pub(crate) password_hash: Option<String>,
    pub(crate) email: Option<String>,
    pub(crate) phone: Option<String>,
    pub(crate) first_name: Option<String>,
    pub(crate) last_name: Option<String>,
    pub(crate) nick_name: Option<String>,
    #[serde(default)]
    pub(crate) scopes: Vec<String>,
    /// `true` disables the user (every credential refused, sessions ended), `false` enables
    /// them again; applied at every start, unlike the other fields. Absent: left as it is.
    pub(crate) disabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApplicationEntry {
    pub(crate) name: String,
    pub(crate) token: Option<String>,
    pub(crate) token_hash: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrganizationEntry {
    /// An int32, as seed 002's `organizationId`: larger ids could never reach the domain API.
    pub(crate) id: i32,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) members: Vec<MemberEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemberEntry {
    pub(crate) user_name: String,
    pub(crate) role: Role,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileEntry {
    pub(crate) id: i64,
    #[serde(default)]
    pub(crate) members: Vec<String>,
}

pub(crate) fn read(path: &Path) -> Result<File, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("bootstrap.file: cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("bootstrap.file: {}: {e}", path.display()))
}

/// The entries of the file at `path` that hold a secret in clear, each named with what to give
/// instead (`users[0] (ada): plaintext `password`; give `password_hash` …`). Never the secret.
pub fn plaintext_secrets(path: &Path) -> Result<Vec<String>, String> {
    read(path).map(|file| plaintext(&file))
}

pub(crate) fn plaintext(file: &File) -> Vec<String> {
    let users = file
        .users
        .iter()
        .enumerate()
        .filter(|(_, u)| u.password.is_some())
        .map(|(i, u)| {
            format!(
                "users[{i}] ({}) has a plaintext `password`; give `password_hash` instead, an \
                 argon2id PHC string (`gatehouse hash-password` prints one)",
                u.user_name.escape_debug()
            )
        });
    let applications = file
        .applications
        .iter()
        .enumerate()
        .filter(|(_, a)| a.token.is_some())
        .map(|(i, a)| {
            format!(
                "applications[{i}] ({}) has a plaintext `token`; give `token_hash` instead, \
                 base64url(SHA-256(token)) (`gatehouse hash-token` prints it)",
                a.name.escape_debug()
            )
        });
    users.chain(applications).collect()
}

/// What a bootstrap file declares that an API could delete; see [`declared`].
#[derive(Debug, Default)]
pub struct Declared {
    users: Vec<String>,
    domains: Vec<(i64, String)>,
}

impl Declared {
    /// Whether the file declares the user `name`, compared as the store compares user names
    /// (regardless of letter case).
    pub fn declares_user(&self, name: &str) -> bool {
        let name = name.to_lowercase();
        self.users.iter().any(|u| u.to_lowercase() == name)
    }

    /// Whether the file declares the (normalised) domain `name` for the organisation.
    pub fn declares_domain(&self, organization_id: i64, name: &str) -> bool {
        self.domains
            .iter()
            .any(|(org, d)| *org == organization_id && d == name)
    }
}

/// What the file at `path` declares, read now: an entry taken out of the file stops being
/// protected at once, without a restart.
pub fn declared(path: &Path) -> Result<Declared, String> {
    let file = read(path)?;
    Ok(Declared {
        users: file.users.into_iter().map(|u| u.user_name).collect(),
        domains: file
            .domains
            .into_iter()
            .filter_map(|d| {
                let name = crate::names::domain::normalise(&d.domain).ok()?;
                Some((d.organization_id, name))
            })
            .collect(),
    })
}

/// What is wrong with the entries whatever the store holds, each naming its entry.
pub(crate) fn entry_problems(file: &File) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, u) in file.users.iter().enumerate() {
        let at = format!("bootstrap users[{i}] ({})", u.user_name.escape_debug());
        let mut check = |result: Result<(), String>| {
            if let Err(e) = result {
                problems.push(format!("{at}: {e}"));
            }
        };
        check(names::check_user_name(&u.user_name).map_err(|e| e.to_string()));
        if let Some(email) = &u.email {
            check(names::check_email(email).map_err(|e| e.to_string()));
        }
        for name in [&u.first_name, &u.last_name, &u.nick_name]
            .into_iter()
            .flatten()
        {
            check(names::check_display_name(name).map_err(|e| e.to_string()));
        }
        match (&u.password, &u.password_hash) {
            (Some(_), Some(_)) => check(Err("give `password` or `password_hash`, not both".into())),
            (None, Some(h)) if !h.starts_with("$argon2") => {
                check(Err("password_hash must be an argon2 PHC string".into()))
            }
            _ => {}
        }
    }
    for (i, a) in file.applications.iter().enumerate() {
        let at = format!("bootstrap applications[{i}] ({})", a.name);
        match (&a.token, &a.token_hash) {
            (Some(t), None) if t.len() < 32 => {
                problems.push(format!("{at}: token must be at least 32 characters"));
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => problems.push(format!("{at}: give exactly one of `token` or `token_hash`")),
        }
    }
    for (i, d) in file.domains.iter().enumerate() {
        let at = format!("bootstrap domains[{i}] ({})", d.domain);
        if let Err(e) = crate::names::domain::normalise(&d.domain) {
            problems.push(format!("{at}: {e}"));
        }
    }
    problems
}

/// What [`apply`] would refuse before touching the store: a file it cannot read or parse, or an
/// entry that is invalid whatever the store holds.
pub fn check(path: &Path) -> Vec<String> {
    match read(path) {
        Ok(file) => entry_problems(&file),
        Err(e) => vec![e],
    }
}
