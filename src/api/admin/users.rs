//! `/admin/v1/users…`: create, read, change, delete users; reset their MFA; end their sessions.
//!
//! A user's browser sessions (SPEC §11) end when the password changes, when the MFA is reset
//! and on "sign out everywhere"; deleting the user deletes them in the store.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::{Admin, AdminError, AdminResult};
use crate::api;
use crate::auth::AuthError;
use crate::names;
use crate::notify::sms::valid_e164;
use crate::store::{Membership, NewUser, User, UserPatch};

/// The body of `POST /admin/v1/users` and `PATCH /admin/v1/users/{userName}`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserBody {
    pub user_name: Option<String>,
    pub password: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub nick_name: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// PATCH only: `true` disables the user (every credential refused, sessions ended),
    /// `false` enables them again. The seed's `isValid` is its negation and stays read-only.
    pub disabled: Option<bool>,
}

/// A user as the admin API shows it: the Manage seed's fields, ids, scopes and grants; never a
/// password hash.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView<'a> {
    id: u64,
    uuid: &'a str,
    user_name: &'a str,
    first_name: Option<&'a str>,
    last_name: Option<&'a str>,
    nick_name: Option<&'a str>,
    email: Option<&'a str>,
    phone: Option<&'a str>,
    text_number: Option<&'a str>,
    password_expires: Option<&'a str>,
    force_password_change: bool,
    latest_invite_status: Option<&'a str>,
    latest_invite_date: Option<&'a str>,
    #[serde(rename = "latestInviteUUID")]
    latest_invite_uuid: Option<&'a str>,
    is_valid: bool,
    /// `!isValid`: whether every credential of the user is refused.
    disabled: bool,
    last_login_timestamp: Option<&'a str>,
    user_rollout_stage: Option<&'a str>,
    has_password: bool,
    scopes: &'a [String],
    organizations: Vec<MembershipView>,
    files: &'a [i64],
    created: &'a str,
    modified: &'a str,
}

/// A page of `GET /admin/v1/users`.
#[derive(Debug, Serialize)]
struct UserPage<'a> {
    users: Vec<UserView<'a>>,
    next: Option<&'a str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MembershipView {
    organization_id: i64,
    role: crate::store::Role,
}

impl<'a> From<&'a User> for UserView<'a> {
    fn from(u: &'a User) -> UserView<'a> {
        UserView {
            id: u.id,
            uuid: &u.uuid,
            user_name: &u.user_name,
            first_name: u.first_name.as_deref(),
            last_name: u.last_name.as_deref(),
            nick_name: u.nick_name.as_deref(),
            email: u.email.as_deref(),
            phone: u.phone.as_deref(),
            text_number: u.text_number.as_deref(),
            password_expires: u.password_expires.as_deref(),
            force_password_change: u.force_password_change,
            latest_invite_status: u.latest_invite_status.as_deref(),
            latest_invite_date: u.latest_invite_date.as_deref(),
            latest_invite_uuid: u.latest_invite_uuid.as_deref(),
            is_valid: u.is_valid,
            disabled: u.disabled(),
            last_login_timestamp: u.last_login_timestamp.as_deref(),
            user_rollout_stage: u.user_rollout_stage.as_deref(),
            has_password: u.password_hash.is_some(),
            scopes: &u.scopes,
            organizations: u
                .memberships
                .iter()
                .map(|m: &Membership| MembershipView {
                    organization_id: m.organization_id,
                    role: m.role,
                })
                .collect(),
            files: &u.files,
            created: &u.created,
            modified: &u.modified,
        }
    }
}

pub fn user_response(status: StatusCode, user: &User) -> Response<crate::body::Body> {
    api::json(status, &UserView::from(user))
}

/// Checks field values; the message names the field. Names and emails obey [`crate::names`],
/// the rules that also hold for the bootstrap file and for names from trusted issuers.
pub fn validate(body: &UserBody) -> Result<(), AdminError> {
    let invalid = |msg: &str| Err(AdminError::Invalid(msg.to_owned()));
    if let Some(name) = &body.user_name {
        names::check_user_name(name).map_err(|e| AdminError::Invalid(e.to_string()))?;
    }
    if let Some(password) = &body.password
        && !(8..=1024).contains(&password.chars().count())
    {
        return invalid("password must be 8 to 1024 characters");
    }
    if let Some(email) = &body.email {
        names::check_email(email).map_err(|e| AdminError::Invalid(e.to_string()))?;
    }
    if let Some(phone) = &body.phone
        && !valid_e164(phone)
    {
        return invalid("phone must be an E.164 number such as +14155550123");
    }
    if let Some(scopes) = &body.scopes
        && scopes.iter().any(|s| {
            s.is_empty() || s.len() > 128 || s.chars().any(|c| c.is_whitespace() || c.is_control())
        })
    {
        return invalid("scopes must be non-empty strings without whitespace");
    }
    for (field, value) in [
        ("firstName", &body.first_name),
        ("lastName", &body.last_name),
        ("nickName", &body.nick_name),
    ] {
        if let Some(v) = value
            && names::check_display_name(v).is_err()
        {
            return Err(AdminError::Invalid(format!(
                "{field} must be at most 256 characters in Unicode NFC without control characters"
            )));
        }
    }
    Ok(())
}

impl Admin {
    /// Hashes a password on the bounded hashing threads (argon2 takes 19 MiB and tens of
    /// milliseconds).
    async fn hash(&self, password: String) -> Result<String, AdminError> {
        self.auth
            .hash_password(password)
            .await
            .map_err(|e| match e {
                AuthError::Busy => AdminError::Busy,
                AuthError::Malformed(_)
                | AuthError::Invalid(_)
                | AuthError::Unavailable(_)
                | AuthError::Throttled(_)
                | AuthError::NewUsersLimited(_) => AdminError::Store(format!("{e:?}")),
            })
    }

    pub(super) async fn create_user(&self, req: Request<Incoming>) -> AdminResult {
        let body: UserBody = self.bodies.read_json(req).await?;
        validate(&body)?;
        if body.disabled.is_some() {
            return Err(AdminError::Invalid(
                "disabled is set with PATCH /admin/v1/users/{userName}, once the user exists"
                    .into(),
            ));
        }
        let Some(user_name) = body.user_name else {
            return Err(AdminError::Invalid("userName is required".into()));
        };
        let password_hash = match body.password {
            Some(p) => Some(self.hash(p).await?),
            None => None,
        };
        let user = self
            .store
            .create_user(
                NewUser {
                    user_name,
                    password_hash,
                    email: body.email,
                    phone: body.phone,
                    first_name: body.first_name,
                    last_name: body.last_name,
                    nick_name: body.nick_name,
                    scopes: body.scopes.unwrap_or_default(),
                    external: None,
                },
                self.clock.unix(),
            )
            .await?;
        self.record("user.created", Some(&user.user_name), None)
            .await;
        Ok(user_response(StatusCode::CREATED, &user))
    }

    /// One page of users ordered by name (in any letter case): `limit` of them (1–1000,
    /// default 100) after the user named `after`. `next` is the name to pass as `after` for the
    /// following page, `null` on the last one.
    pub(super) async fn list_users(&self, query: Option<&str>) -> AdminResult {
        let limit = super::limit(query)?;
        let after = crate::api::query_value(query, "after");
        // One more than asked shows whether another page follows.
        let mut users = self
            .store
            .list_users(after.as_deref(), limit.saturating_add(1))
            .await?;
        let more = users.len() > limit;
        users.truncate(limit);
        let next = more
            .then(|| users.last().map(|u| u.user_name.as_str()))
            .flatten();
        let page = UserPage {
            users: users.iter().map(UserView::from).collect(),
            next,
        };
        Ok(api::json(StatusCode::OK, &page))
    }

    pub(super) async fn get_user(&self, name: &str) -> AdminResult {
        match self.store.user_by_name(name).await? {
            Some(user) => Ok(user_response(StatusCode::OK, &user)),
            None => Err(AdminError::NotFound(format!("user {name}"))),
        }
    }

    pub(super) async fn patch_user(&self, name: &str, req: Request<Incoming>) -> AdminResult {
        let body: UserBody = self.bodies.read_json(req).await?;
        validate(&body)?;
        if body
            .user_name
            .as_deref()
            .is_some_and(|new| new.to_lowercase() != name.to_lowercase())
        {
            self.refuse_declared_user(name, "renamed")?;
        }
        let password_changed = body.password.is_some();
        let disabled = body.disabled;
        let other_change = body.user_name.is_some()
            || body.password.is_some()
            || body.email.is_some()
            || body.phone.is_some()
            || body.first_name.is_some()
            || body.last_name.is_some()
            || body.nick_name.is_some()
            || body.scopes.is_some();
        let password_hash = match body.password {
            Some(p) => Some(self.hash(p).await?),
            None => None,
        };
        let patch = UserPatch {
            user_name: body.user_name,
            password_hash,
            email: body.email,
            phone: body.phone,
            first_name: body.first_name,
            last_name: body.last_name,
            nick_name: body.nick_name,
            scopes: body.scopes,
            last_login_timestamp: None,
            is_valid: disabled.map(|d| !d),
        };
        // Disabling writes the record first and ends the sessions after: a sign-in racing it
        // either stored its session before (ended here) or reads the disabled record once its
        // session is stored and ends it itself (`Authenticator::password_unchanged`, the OIDC
        // callback). Every credential is refused from the write on (`Principal::admit`).
        let user = self
            .store
            .update_user(name, patch, self.clock.unix())
            .await?;
        let mut ended = None;
        if password_changed || disabled == Some(true) {
            // A session signed in with the old password proves nothing about the new one, and
            // a disabled user has none.
            ended = Some(self.store.delete_user_sessions(user.id).await?);
        }
        if other_change || disabled.is_none() {
            let detail = password_changed.then(|| "password changed".to_owned());
            self.record("user.updated", Some(&user.user_name), detail)
                .await;
        }
        match disabled {
            Some(true) => {
                let detail = ended.map(|n| format!("{n} sessions ended"));
                self.record("user.disabled", Some(&user.user_name), detail)
                    .await;
            }
            Some(false) => {
                self.record("user.enabled", Some(&user.user_name), None)
                    .await;
            }
            None => {}
        }
        Ok(user_response(StatusCode::OK, &user))
    }

    pub(super) async fn delete_user(&self, name: &str) -> AdminResult {
        self.refuse_declared_user(name, "deleted")?;
        if !self.store.delete_user(name).await? {
            return Err(AdminError::NotFound(format!("user {name}")));
        }
        self.record("user.deleted", Some(name), None).await;
        Ok(api::no_content())
    }

    pub(super) async fn reset_mfa(&self, name: &str) -> AdminResult {
        let Some(user) = self.store.user_by_name(name).await? else {
            return Err(AdminError::NotFound(format!("user {name}")));
        };
        self.store.reset_mfa(user.id).await?;
        // A session's second factor may be the one just removed.
        self.store.delete_user_sessions(user.id).await?;
        self.record("mfa.reset", Some(&user.user_name), None).await;
        Ok(api::no_content())
    }

    /// `POST /admin/v1/users/{userName}/tokens/revoke` (SPEC §13): every access token gatehouse
    /// issued to the user until now is refused from now on, on every replica (the cut-off is in
    /// the user's record, which every Bearer request reads), and so is every token of a trusted
    /// issuer with an earlier `iat`. WS access keys are per-user tokens too: they are deleted.
    /// Browser sessions are not tokens and stay (`DELETE …/sessions` ends them).
    pub(super) async fn revoke_tokens(&self, name: &str) -> AdminResult {
        let now = self.clock.unix();
        let user = self
            .store
            .modify_user(name, now, &|user| user.revoke_tokens(now))
            .await?;
        let keys = self.store.delete_user_ws_keys(user.id).await?;
        self.record(
            "tokens.revoked",
            Some(&user.user_name),
            Some(format!("{keys} WS access keys deleted")),
        )
        .await;
        Ok(api::no_content())
    }

    /// "Sign out everywhere": ends every session of the user, on every replica at its next
    /// request.
    pub(super) async fn sign_out_user(&self, name: &str) -> AdminResult {
        let Some(user) = self.store.user_by_name(name).await? else {
            return Err(AdminError::NotFound(format!("user {name}")));
        };
        let ended = self.store.delete_user_sessions(user.id).await?;
        self.record(
            "sessions.revoked",
            Some(&user.user_name),
            Some(format!("{ended} sessions ended")),
        )
        .await;
        Ok(api::no_content())
    }
}
