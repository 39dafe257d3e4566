//! The declarative bootstrap file (`bootstrap.file`, TOML), applied at every start.
//!
//! It creates what is missing and leaves what exists alone: a user, application or organisation
//! that is already there keeps its current state (changes made through the admin API stand);
//! memberships and file grants are ensured, and so is a user's `disabled` where the entry gives
//! it (`true` disables the user and ends their sessions, `false` enables them again). Applying it twice changes nothing the second time.
//! Because a declared user or domain would come back at the next start, deleting one through an API
//! is refused (409) while the file declares it: remove it from the file first ([`declared`]).
//!
//! Secrets are given hashed. Their plaintext forms (`password`, `token`) are for development only:
//! refused outside `server.environment = "development"` ([`plaintext_secrets`]), warned about in it.
//!
//! ```toml
//! [[users]]
//! user_name = "ada"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."   # `gatehouse hash-password`
//! email = "ada@example.com"
//! scopes = ["read"]
//! disabled = false     # optional: true refuses every credential of the user
//!
//! [[applications]]
//! name = "web"
//! token_hash = "..."           # base64url(SHA-256(token)): `gatehouse hash-token`
//!
//! [[organizations]]
//! id = 7
//! name = "Acme"
//! members = [{ user_name = "ada", role = "admin" }]
//!
//! [[files]]
//! id = 12
//! members = ["ada"]
//!
//! [[domains]]
//! organization_id = 7
//! domain = "acme.example"
//! authentication_method = "sso"   # optional
//! verified = true                  # optional: declared verified, without a DNS check
//! ```

use std::path::Path;

use time::OffsetDateTime;

use crate::auth::secret;
use crate::clock::{self, Clock};
use crate::config::bootstrap_file::{
    ApplicationEntry, DomainEntry, File, FileEntry, OrganizationEntry, UserEntry, entry_problems,
    plaintext, read,
};
pub use crate::config::bootstrap_file::{Declared, check, declared, plaintext_secrets};
use crate::names;
use crate::store::{
    Application, Domain, Membership, NewUser, Organization, SCHEMA_VERSION, Store, StoreError,
};

/// What applying the file did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub created: usize,
    pub unchanged: usize,
}

/// Reads the file and applies it. Errors name the entry at fault; an entry invalid whatever the
/// store holds stops the file before anything is applied. Plaintext secrets are refused unless
/// `development`, where each is named in a warning.
///
/// Entries are applied in the file's sections' order: users, applications, organisations with
/// their members, file grants, domains.
pub async fn apply(
    path: &Path,
    store: &dyn Store,
    clock: &dyn Clock,
    development: bool,
) -> Result<Applied, String> {
    let file = read(path)?;
    let problems = entry_problems(&file);
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    admit_plaintext(path, &file, development)?;
    let now = clock.now();
    let mut applied = Applied::default();
    apply_users(store, clock, file.users, now, &mut applied).await?;
    apply_applications(store, file.applications, now, &mut applied).await?;
    apply_organizations(store, file.organizations, now, &mut applied).await?;
    apply_files(store, file.files, now).await?;
    apply_domains(store, file.domains, now, &mut applied).await?;
    Ok(applied)
}

impl Applied {
    fn count(&mut self, created: bool) {
        if created {
            self.created += 1;
        } else {
            self.unchanged += 1;
        }
    }
}

/// Refuses plaintext secrets outside `development`; in it, warns about each.
fn admit_plaintext(path: &Path, file: &File, development: bool) -> Result<(), String> {
    let plain = plaintext(file);
    if !plain.is_empty() && !development {
        return Err(format!(
            "bootstrap.file: {}: {}; plaintext secrets are for development only \
             (server.environment = \"development\")",
            path.display(),
            plain.join("; ")
        ));
    }
    for entry in &plain {
        tracing::warn!(
            file = %path.display(),
            entry = %entry,
            "plaintext secret in the bootstrap file: for development only"
        );
    }
    Ok(())
}

/// Creates each declared user that does not exist yet.
async fn apply_users(
    store: &dyn Store,
    clock: &dyn Clock,
    users: Vec<UserEntry>,
    now: OffsetDateTime,
    applied: &mut Applied,
) -> Result<(), String> {
    for (i, u) in users.into_iter().enumerate() {
        let at = format!("bootstrap users[{i}] ({})", u.user_name.escape_debug());
        let user_name = u.user_name.clone();
        let disabled = u.disabled;
        applied.count(apply_user(store, &at, u, now).await?);
        if let Some(disabled) = disabled {
            apply_disabled(store, clock, &at, &user_name, disabled, now).await?;
        }
    }
    Ok(())
}

/// Makes the user disabled or enabled as the entry says, when it is not already: disabling
/// ends every session of the user, as the admin API's does. Recorded like the admin API's.
async fn apply_disabled(
    store: &dyn Store,
    clock: &dyn Clock,
    at: &str,
    user_name: &str,
    disabled: bool,
    now: OffsetDateTime,
) -> Result<(), String> {
    let fail = |e: StoreError| format!("{at}: {e}");
    let user = store
        .user_by_name(user_name)
        .await
        .map_err(fail)?
        .ok_or_else(|| format!("{at}: the user vanished while the file was applied"))?;
    if user.disabled() == disabled {
        return Ok(());
    }
    let patch = crate::store::UserPatch {
        is_valid: Some(!disabled),
        ..Default::default()
    };
    let user = store
        .update_user(user_name, patch, now.unix_timestamp())
        .await
        .map_err(fail)?;
    let (event, detail) = if disabled {
        let ended = store.delete_user_sessions(user.id).await.map_err(fail)?;
        (
            "user.disabled",
            format!("bootstrap; {ended} sessions ended"),
        )
    } else {
        ("user.enabled", "bootstrap".to_owned())
    };
    crate::audit::record(store, clock, event, Some(&user.user_name), Some(detail)).await;
    Ok(())
}

/// Creates the user unless one of that name exists; whether it was created.
async fn apply_user(
    store: &dyn Store,
    at: &str,
    u: UserEntry,
    now: OffsetDateTime,
) -> Result<bool, String> {
    // The admin API's rules: a name the API would refuse is not created behind its back.
    names::check_user_name(&u.user_name).map_err(|e| format!("{at}: {e}"))?;
    if let Some(email) = &u.email {
        names::check_email(email).map_err(|e| format!("{at}: {e}"))?;
    }
    for name in [&u.first_name, &u.last_name, &u.nick_name]
        .into_iter()
        .flatten()
    {
        names::check_display_name(name).map_err(|e| format!("{at}: {e}"))?;
    }
    if store
        .user_by_name(&u.user_name)
        .await
        .map_err(|e| format!("{at}: {e}"))?
        .is_some()
    {
        return Ok(false);
    }
    let password_hash = password_hash(at, u.password, u.password_hash)?;
    let new = NewUser {
        user_name: u.user_name,
        password_hash,
        email: u.email,
        phone: u.phone,
        first_name: u.first_name,
        last_name: u.last_name,
        nick_name: u.nick_name,
        scopes: u.scopes,
        external: None,
    };
    store
        .create_user(new, now.unix_timestamp())
        .await
        .map_err(|e| format!("{at}: {e}"))?;
    Ok(true)
}

/// The argon2id PHC string a user entry's `password` or `password_hash` gives, if any.
fn password_hash(
    at: &str,
    password: Option<String>,
    password_hash: Option<String>,
) -> Result<Option<String>, String> {
    match (password, password_hash) {
        (Some(_), Some(_)) => Err(format!(
            "{at}: give `password` or `password_hash`, not both"
        )),
        (Some(p), None) => Ok(Some(
            secret::hash_password(&p).map_err(|e| format!("{at}: {e}"))?,
        )),
        (None, Some(h)) => {
            secret::check_password_hash(&h).map_err(|e| format!("{at}: password_hash {e}"))?;
            Ok(Some(h))
        }
        (None, None) => Ok(None),
    }
}

/// Registers each declared application whose name is not taken yet.
async fn apply_applications(
    store: &dyn Store,
    applications: Vec<ApplicationEntry>,
    now: OffsetDateTime,
    applied: &mut Applied,
) -> Result<(), String> {
    for (i, a) in applications.into_iter().enumerate() {
        let at = format!("bootstrap applications[{i}] ({})", a.name);
        let token_hash = match (a.token, a.token_hash) {
            (Some(t), None) if t.len() >= 32 => secret::hash_token(&t),
            (Some(_), None) => return Err(format!("{at}: token must be at least 32 characters")),
            (None, Some(h)) if secret::is_token_hash(&h) => h,
            (None, Some(_)) => {
                return Err(format!(
                    "{at}: token_hash must be base64url(SHA-256(token)), 43 characters without `=`"
                ));
            }
            _ => return Err(format!("{at}: give exactly one of `token` or `token_hash`")),
        };
        let app = Application {
            v: SCHEMA_VERSION,
            name: a.name,
            token_hash,
            created: clock::rfc3339(now),
        };
        match store.create_application(app).await {
            Ok(()) => applied.count(true),
            Err(StoreError::Conflict(_)) => applied.count(false),
            Err(e) => return Err(format!("{at}: {e}")),
        }
    }
    Ok(())
}

/// Creates each declared organisation that does not exist yet, and ensures its members'
/// memberships and roles.
async fn apply_organizations(
    store: &dyn Store,
    organizations: Vec<OrganizationEntry>,
    now: OffsetDateTime,
    applied: &mut Applied,
) -> Result<(), String> {
    for (i, o) in organizations.into_iter().enumerate() {
        let at = format!("bootstrap organizations[{i}] ({})", o.id);
        let org = Organization {
            v: SCHEMA_VERSION,
            id: i64::from(o.id),
            name: o.name,
            created: clock::rfc3339(now),
        };
        match store.create_organization(org).await {
            Ok(()) => applied.count(true),
            Err(StoreError::Conflict(_)) => applied.count(false),
            Err(e) => return Err(format!("{at}: {e}")),
        }
        for m in o.members {
            let membership = Membership {
                organization_id: i64::from(o.id),
                role: m.role,
            };
            let user = store
                .user_by_name(&m.user_name)
                .await
                .map_err(|e| format!("{at}: {e}"))?;
            if user.is_some_and(|u| u.memberships.contains(&membership)) {
                continue;
            }
            store
                .set_membership(&m.user_name, membership, now.unix_timestamp())
                .await
                .map_err(|e| format!("{at}: member {}: {e}", m.user_name))?;
        }
    }
    Ok(())
}

/// Ensures each declared file grant; grants are not counted.
async fn apply_files(
    store: &dyn Store,
    files: Vec<FileEntry>,
    now: OffsetDateTime,
) -> Result<(), String> {
    for (i, f) in files.into_iter().enumerate() {
        let at = format!("bootstrap files[{i}] ({})", f.id);
        for user_name in f.members {
            let user = store
                .user_by_name(&user_name)
                .await
                .map_err(|e| format!("{at}: {e}"))?;
            if user.is_some_and(|u| u.files.contains(&f.id)) {
                continue;
            }
            store
                .grant_file(&user_name, f.id, now.unix_timestamp())
                .await
                .map_err(|e| format!("{at}: member {user_name}: {e}"))?;
        }
    }
    Ok(())
}

/// Adds each declared domain its organisation does not have yet, verified when declared so.
async fn apply_domains(
    store: &dyn Store,
    domains: Vec<DomainEntry>,
    now: OffsetDateTime,
    applied: &mut Applied,
) -> Result<(), String> {
    for (i, d) in domains.into_iter().enumerate() {
        let at = format!("bootstrap domains[{i}] ({})", d.domain);
        applied.count(apply_domain(store, &at, d, now).await?);
    }
    Ok(())
}

/// Adds the domain unless its organisation has it already; whether it was added.
async fn apply_domain(
    store: &dyn Store,
    at: &str,
    d: DomainEntry,
    now: OffsetDateTime,
) -> Result<bool, String> {
    let name = crate::names::domain::normalise(&d.domain).map_err(|e| format!("{at}: {e}"))?;
    let existing = store
        .domains(d.organization_id)
        .await
        .map_err(|e| format!("{at}: {e}"))?;
    if existing.iter().any(|x| x.domain == name) {
        return Ok(false);
    }
    let domain = Domain {
        v: SCHEMA_VERSION,
        organization_id: d.organization_id,
        domain_id: 0,
        domain: name,
        authentication_method: d.authentication_method,
        created: clock::rfc3339(now),
        created_by: "bootstrap".into(),
        modified: clock::rfc3339(now),
        modified_by: "bootstrap".into(),
        is_verified: false,
        verification_code: None,
        verification_code_expires: None,
        verification_code_expires_at: None,
        verification_method: None,
        owner_organization_id: d.organization_id,
    };
    if store
        .organization(d.organization_id)
        .await
        .map_err(|e| format!("{at}: {e}"))?
        .is_none()
    {
        return Err(format!(
            "{at}: organization {} does not exist",
            d.organization_id
        ));
    }
    let mut created = store
        .create_domain(domain)
        .await
        .map_err(|e| format!("{at}: {e}"))?;
    if d.verified {
        created.is_verified = true;
        created.verification_method = Some("bootstrap".into());
        store
            .save_domain(created)
            .await
            .map_err(|e| format!("{at}: {e}"))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::clock::FixedClock;
    use crate::store::sled::SledStore;

    const FILE: &str = r#"
[[users]]
user_name = "ada"
password = "correct horse battery"
scopes = ["read"]

[[users]]
user_name = "bob"

[[applications]]
name = "web"
token = "gha_0123456789abcdef0123456789abcdef"

[[organizations]]
id = 7
name = "Acme"
members = [{ user_name = "ada", role = "admin" }, { user_name = "bob", role = "member" }]

[[files]]
id = 12
members = ["ada"]

[[domains]]
organization_id = 7
domain = "Acme.Example"
verified = true
"#;

    #[tokio::test]
    async fn invalid_entries_are_all_named_and_stop_the_file_before_anything_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.toml");
        std::fs::write(
            &path,
            format!(
                "{FILE}\n[[applications]]\nname = \"short\"\ntoken = \"gha_short\"\n\
                 [[domains]]\norganization_id = 7\ndomain = \"..\"\n"
            ),
        )
        .unwrap();
        let problems = check(&path);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].starts_with("bootstrap applications[1] (short)"));
        assert!(problems[1].starts_with("bootstrap domains[1]"));
        let store = SledStore::temporary().unwrap();
        let err = apply(&path, &store, FixedClock::at(1_800_000_000).as_ref(), true)
            .await
            .unwrap_err();
        assert!(
            err.contains("applications[1]") && err.contains("domains[1]"),
            "{err}"
        );
        assert!(store.user_by_name("ada").await.unwrap().is_none());
        std::fs::write(&path, FILE).unwrap();
        assert!(check(&path).is_empty());
        std::fs::write(&path, "[[users]\n").unwrap();
        assert!(check(&path)[0].starts_with("bootstrap.file:"));
    }

    #[tokio::test]
    async fn applying_twice_creates_once_and_keeps_admin_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.toml");
        std::fs::write(&path, FILE).unwrap();
        let store = SledStore::temporary().unwrap();
        let clock = FixedClock::at(1_800_000_000);

        let first = apply(&path, &store, clock.as_ref(), true).await.unwrap();
        assert_eq!(
            first,
            Applied {
                created: 5,
                unchanged: 0
            }
        );
        let domains = store.domains(7).await.unwrap();
        assert_eq!(domains.len(), 1);
        assert_eq!(domains[0].domain, "acme.example");
        assert!(domains[0].is_verified);
        let ada = store.user_by_name("ada").await.unwrap().unwrap();
        assert!(secret::verify_password(
            "correct horse battery",
            ada.password_hash.as_deref().unwrap()
        ));
        assert_eq!(ada.files, vec![12]);
        assert_eq!(ada.memberships.len(), 1);
        let token_hash = secret::hash_token("gha_0123456789abcdef0123456789abcdef");
        assert!(
            store
                .application_by_token_hash(&token_hash)
                .await
                .unwrap()
                .is_some()
        );

        let patch = crate::store::UserPatch {
            scopes: Some(vec!["read".into(), "ops".into()]),
            ..Default::default()
        };
        store
            .update_user("ada", patch, 1_900_000_000)
            .await
            .unwrap();
        let second = apply(&path, &store, clock.as_ref(), true).await.unwrap();
        assert_eq!(
            second,
            Applied {
                created: 0,
                unchanged: 5
            }
        );
        assert_eq!(store.domains(7).await.unwrap().len(), 1);
        let ada_again = store.user_by_name("ada").await.unwrap().unwrap();
        assert_eq!(ada_again.scopes, vec!["read", "ops"]);
        assert_eq!(ada_again.modified, "2030-03-17T17:46:40Z");
    }

    #[tokio::test]
    async fn a_user_entry_disables_and_enables_again_ending_sessions_and_leaving_it_alone_when_silent()
     {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.toml");
        let write = |disabled: &str| {
            std::fs::write(
                &path,
                format!(
                    "[[users]]\nuser_name = \"ada\"\n{disabled}\n[[users]]\nuser_name = \"bob\"\n"
                ),
            )
            .unwrap();
        };
        let store = SledStore::temporary().unwrap();
        let clock = FixedClock::at(1_800_000_000);
        let session = |id: &str, user_id: u64| crate::store::Session {
            id_hash: id.into(),
            user_id,
            methods: vec!["pwd".into()],
            created: 1_800_000_000,
            last_seen: 1_800_000_000,
            expires: 1_800_003_600,
            idp: None,
        };

        // Created disabled.
        write("disabled = true");
        apply(&path, &store, clock.as_ref(), true).await.unwrap();
        let ada = store.user_by_name("ada").await.unwrap().unwrap();
        assert!(ada.disabled());
        assert!(!store.user_by_name("bob").await.unwrap().unwrap().disabled());

        // `false` enables again; absent leaves the API's choice alone.
        write("disabled = false");
        apply(&path, &store, clock.as_ref(), true).await.unwrap();
        assert!(!store.user_by_name("ada").await.unwrap().unwrap().disabled());
        store
            .create_session(session("s1", ada.id), 10)
            .await
            .unwrap();
        let patch = crate::store::UserPatch {
            is_valid: Some(false),
            ..Default::default()
        };
        store.update_user("ada", patch, 1).await.unwrap();
        write("");
        apply(&path, &store, clock.as_ref(), true).await.unwrap();
        assert!(store.user_by_name("ada").await.unwrap().unwrap().disabled());
        write("disabled = false");
        apply(&path, &store, clock.as_ref(), true).await.unwrap();

        // Disabling an existing user ends their sessions, once.
        write("disabled = true");
        apply(&path, &store, clock.as_ref(), true).await.unwrap();
        assert!(store.session("s1").await.unwrap().is_none());
        assert!(store.user_by_name("ada").await.unwrap().unwrap().disabled());
        let events: Vec<String> = store
            .audit(10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(
            events,
            vec![
                "user.disabled",
                "user.enabled",
                "user.enabled",
                "user.disabled"
            ]
        );
        // Applied again, nothing changes and nothing more is recorded.
        apply(&path, &store, clock.as_ref(), true).await.unwrap();
        assert_eq!(store.audit(10).await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn plaintext_secrets_are_refused_outside_development_naming_each_entry_never_the_secret()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.toml");
        std::fs::write(&path, FILE).unwrap();
        let store = SledStore::temporary().unwrap();
        let err = apply(&path, &store, FixedClock::at(0).as_ref(), false)
            .await
            .unwrap_err();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(
            err.contains("users[0] (ada) has a plaintext `password`"),
            "{err}"
        );
        assert!(err.contains("give `password_hash`"), "{err}");
        assert!(
            err.contains("applications[0] (web) has a plaintext `token`"),
            "{err}"
        );
        assert!(err.contains("give `token_hash`"), "{err}");
        assert!(
            !err.contains("correct horse") && !err.contains("gha_0123"),
            "{err}"
        );
        assert!(store.user_by_name("ada").await.unwrap().is_none());
        assert!(store.user_by_name("bob").await.unwrap().is_none());

        // The hashed forms of the same entries are accepted anywhere.
        let hashed = FILE
            .replace(
                "password = \"correct horse battery\"",
                &format!(
                    "password_hash = \"{}\"",
                    secret::hash_password("correct horse battery").unwrap()
                ),
            )
            .replace(
                "token = \"gha_0123456789abcdef0123456789abcdef\"",
                &format!(
                    "token_hash = \"{}\"",
                    secret::hash_token("gha_0123456789abcdef0123456789abcdef")
                ),
            );
        std::fs::write(&path, hashed).unwrap();
        assert!(plaintext_secrets(&path).unwrap().is_empty());
        apply(&path, &store, FixedClock::at(0).as_ref(), false)
            .await
            .unwrap();
        let ada = store.user_by_name("ada").await.unwrap().unwrap();
        assert!(secret::verify_password(
            "correct horse battery",
            ada.password_hash.as_deref().unwrap()
        ));
        let token_hash = secret::hash_token("gha_0123456789abcdef0123456789abcdef");
        assert!(
            store
                .application_by_token_hash(&token_hash)
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn hashes_that_could_never_match_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.toml");
        for (entry, at) in [
            (
                "[[users]]\nuser_name = \"ada\"\npassword_hash = \"$argon2id$nonsense\"",
                "users[0]",
            ),
            (
                "[[users]]\nuser_name = \"ada\"\npassword_hash = \"hunter2\"",
                "users[0]",
            ),
            (
                "[[applications]]\nname = \"web\"\ntoken_hash = \"not-a-sha256\"",
                "applications[0]",
            ),
        ] {
            std::fs::write(&path, entry).unwrap();
            let store = SledStore::temporary().unwrap();
            let err = apply(&path, &store, FixedClock::at(0).as_ref(), false)
                .await
                .unwrap_err();
            assert!(err.contains(at), "{entry}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn declared_users_match_in_any_letter_case_and_domains_once_normalised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.toml");
        std::fs::write(&path, FILE).unwrap();
        let declared = declared(&path).unwrap();
        assert!(declared.declares_user("ada") && declared.declares_user("ADA"));
        assert!(!declared.declares_user("carol"));
        assert!(declared.declares_domain(7, "acme.example"));
        assert!(!declared.declares_domain(8, "acme.example"));
    }

    #[tokio::test]
    async fn errors_name_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.toml");
        std::fs::write(&path, "[[organizations]]\nid = 1\nname = \"x\"\nmembers = [{ user_name = \"ghost\", role = \"admin\" }]\n").unwrap();
        let store = SledStore::temporary().unwrap();
        let err = apply(&path, &store, FixedClock::at(0).as_ref(), true)
            .await
            .unwrap_err();
        assert!(
            err.contains("organizations[0]") && err.contains("ghost"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn organization_ids_beyond_int32_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.toml");
        std::fs::write(&path, "[[organizations]]\nid = 2147483648\nname = \"x\"\n").unwrap();
        let store = SledStore::temporary().unwrap();
        let err = apply(&path, &store, FixedClock::at(0).as_ref(), true)
            .await
            .unwrap_err();
        assert!(err.contains("bootstrap.file"), "{err}");
        assert!(store.organization(2_147_483_648).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn users_breaking_the_admin_name_rules_are_refused_and_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.toml");
        for entry in [
            "user_name = \"hank \"",
            "user_name = \"hank\\n\"",
            "user_name = \"zoe\\u0308\"",
            "user_name = \"hank\"\nemail = \"hank@example.com\\r\\nX: y\"",
            "user_name = \"hank\"\nnick_name = \"Hank\\u001b[2J\"",
        ] {
            std::fs::write(&path, format!("[[users]]\n{entry}\n")).unwrap();
            let store = SledStore::temporary().unwrap();
            let err = apply(&path, &store, FixedClock::at(0).as_ref(), true)
                .await
                .unwrap_err();
            assert!(err.contains("users[0]"), "{entry}: {err}");
            assert!(!err.contains('\n') && !err.contains('\u{1b}'), "{err:?}");
            for name in ["hank", "hank ", "hank\n", "zoe\u{308}"] {
                assert!(store.user_by_name(name).await.unwrap().is_none(), "{entry}");
            }
        }
    }
}
