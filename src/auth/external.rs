//! Users of external identity providers (SPEC §3, §12): the link `(iss, sub) → user` is the
//! identity, found in the store on every request; the user name is only a display value.
//!
//! A subject seen for the first time becomes a user, within a per-issuer bound on new users
//! (counted in the store, so replicas sharing PostgreSQL share the count). The name it gets is the
//! preferred one when free; otherwise the preferred one with a random suffix, tried a few times,
//! so that no name somebody registered first (guessing it from the victim's `sub`, say) can make
//! the creation fail. The outcomes are: the linked user, a new user, or a refusal because the
//! issuer is over its bound (or the profile breaks the name rules).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom;
use tokio::sync::OnceCell;

use crate::clock::Clock;
use crate::names::{self, NameError};
use crate::store::{ExternalId, NewUser, Store, StoreError, User};

/// Names tried with a random suffix after the preferred one is found taken. With 48 random bits
/// each, a name taken by someone else is a name chosen for the victim: only a store that fails
/// to tell which name conflicted could exhaust them.
const SUFFIXED_ATTEMPTS: usize = 4;

/// Random bytes of a suffix: 8 characters of base64url.
const SUFFIX_BYTES: usize = 6;

/// The longest `sub` a user is created for, in bytes: "It MUST NOT exceed 255 ASCII characters"
/// (<https://openid.net/specs/openid-connect-core-1_0.html#IDToken>).
const SUBJECT_MAX: usize = 255;

/// What a provider says about a subject, already mapped from its claims.
#[derive(Debug, Clone)]
pub struct Profile {
    pub issuer: String,
    pub subject: String,
    /// The name the user would like (`preferred_username`, else `email`, else `sub`).
    pub preferred_name: String,
    pub email: Option<String>,
    /// Kept as the user's nick name.
    pub display_name: Option<String>,
    /// The scopes a new user starts with.
    pub scopes: Vec<String>,
}

impl Profile {
    /// The profile of `subject` at `issuer` from its claims: named after `preferred_username`,
    /// else `email`, else `sub` (SPEC §3, §12).
    pub fn from_claims(
        issuer: &str,
        subject: &str,
        preferred_username: Option<&str>,
        email: Option<&str>,
        name: Option<&str>,
        scopes: Vec<String>,
    ) -> Profile {
        Profile {
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            preferred_name: preferred_username.or(email).unwrap_or(subject).to_owned(),
            email: email.map(str::to_owned),
            display_name: name.map(str::to_owned),
            scopes,
        }
    }
}

/// At most `max` new users per `window` from one issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewUserLimit {
    pub max: u32,
    pub window: Duration,
}

/// Why no user came of a profile.
#[derive(Debug)]
pub enum LinkError {
    /// A name, email or display name from the provider breaks the admin API's rules (SPEC §10),
    /// or the subject is not one a user is created for: what was refused, and why.
    Refused(String),
    /// The issuer created its `max` users within the window; retry after this many seconds.
    Limited(u64),
    Store(StoreError),
}

impl From<StoreError> for LinkError {
    fn from(e: StoreError) -> LinkError {
        LinkError::Store(e)
    }
}

/// Finds or creates the user of an external identity.
pub struct ExternalUsers {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    random: ring::rand::SystemRandom,
    /// Creations running now, by `(iss, sub)`: concurrent first requests of one subject on this
    /// replica share one creation (and count once against the bound). Entries leave when their
    /// creation ends. Across replicas the store's unique `(issuer, subject)` keeps one user.
    creating: Creating,
    /// By issuer, when the bound was last reported as reached (Unix time): once per window.
    warned: Mutex<HashMap<String, i64>>,
}

impl ExternalUsers {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> ExternalUsers {
        ExternalUsers {
            store,
            clock,
            random: ring::rand::SystemRandom::new(),
            creating: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashMap::new()),
        }
    }

    /// The user linked to `(profile.issuer, profile.subject)`, created on first sight within
    /// `limit`. A profile is checked against the name rules only when a user is to be created
    /// from it; a linked user is found whatever the provider now says.
    pub async fn find_or_create(
        &self,
        profile: &Profile,
        limit: NewUserLimit,
    ) -> Result<User, LinkError> {
        if let Some(user) = self.linked(profile).await? {
            return Ok(user);
        }
        check_profile(profile)?;
        let joined = Joined::new(&self.creating, profile);
        joined
            .cell
            .get_or_try_init(|| self.create(profile, limit))
            .await
            .cloned()
    }

    async fn linked(&self, profile: &Profile) -> Result<Option<User>, StoreError> {
        self.store
            .user_by_external(&profile.issuer, &profile.subject)
            .await
    }

    /// Creates the user, unless it was created meanwhile (by a request that finished before
    /// this one joined it, or on another replica) or the issuer is over its bound.
    async fn create(&self, profile: &Profile, limit: NewUserLimit) -> Result<User, LinkError> {
        if let Some(user) = self.linked(profile).await? {
            return Ok(user);
        }
        let now = self.clock.unix();
        let window = i64::try_from(limit.window.as_secs())
            .unwrap_or(i64::MAX)
            .max(1);
        let counted = self
            .store
            .count_send(
                &format!("new-users:{}", profile.issuer),
                now,
                window,
                limit.max,
            )
            .await?;
        if !counted {
            // Another replica may have created this very subject meanwhile: it may pass.
            if let Some(user) = self.linked(profile).await? {
                return Ok(user);
            }
            self.report_limited(&profile.issuer, limit, now, window);
            return Err(LinkError::Limited(window.unsigned_abs()));
        }
        let created = self.clock.unix();
        let mut new = NewUser {
            user_name: profile.preferred_name.clone(),
            email: profile.email.clone(),
            nick_name: profile.display_name.clone(),
            scopes: profile.scopes.clone(),
            external: Some(ExternalId {
                issuer: profile.issuer.clone(),
                subject: profile.subject.clone(),
            }),
            ..NewUser::default()
        };
        for _ in 0..=SUFFIXED_ATTEMPTS {
            match self.store.create_user(new.clone(), created).await {
                Ok(user) => return Ok(user),
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
            // Either this subject was linked meanwhile (another replica), or the name is taken.
            if let Some(user) = self.linked(profile).await? {
                return Ok(user);
            }
            new.user_name = self.suffixed(&profile.preferred_name)?;
        }
        Err(LinkError::Store(StoreError::Backend(format!(
            "no free user name for a new user of {} after {} attempts",
            profile.issuer,
            SUFFIXED_ATTEMPTS + 1
        ))))
    }

    /// `preferred#XXXXXXXX` with a random suffix, the preferred name shortened to keep within
    /// the length rule (and further, should a cut ever leave a name the rules refuse).
    fn suffixed(&self, preferred: &str) -> Result<String, LinkError> {
        let mut bytes = [0u8; SUFFIX_BYTES];
        self.random
            .fill(&mut bytes)
            .map_err(|_| StoreError::Backend("the system random source failed".into()))?;
        let suffix = format!("#{}", URL_SAFE_NO_PAD.encode(bytes));
        let room = names::USER_NAME_MAX - suffix.chars().count();
        let mut stem: Vec<char> = preferred.chars().take(room).collect();
        loop {
            let name = format!("{}{suffix}", stem.iter().collect::<String>());
            if names::check_user_name(&name).is_ok() || stem.is_empty() {
                return Ok(name);
            }
            stem.pop();
        }
    }

    /// A warning naming the issuer, once per window however many tokens are refused; whether
    /// this call wrote it.
    fn report_limited(&self, issuer: &str, limit: NewUserLimit, now: i64, window: i64) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        let due = warned.get(issuer).is_none_or(|at| now - at >= window);
        if due {
            warned.insert(issuer.to_owned(), now);
            tracing::warn!(
                issuer,
                max_new_users = limit.max,
                new_users_window = %humantime::format_duration(limit.window),
                "new users from this trusted issuer reached the bound: tokens of new subjects are \
                 refused with 429 until the window ends; its existing users are not affected"
            );
        }
        due
    }
}

type Creating = Mutex<HashMap<(String, String), Arc<OnceCell<User>>>>;

/// A request's share in the creation of one subject's user. Dropping it (when the creation ends,
/// or when the request is abandoned mid-way) removes the entry unless a later creation replaced
/// it, so that the map holds only creations in progress.
struct Joined<'a> {
    creating: &'a Creating,
    key: (String, String),
    cell: Arc<OnceCell<User>>,
}

impl<'a> Joined<'a> {
    fn new(creating: &'a Creating, profile: &Profile) -> Joined<'a> {
        let key = (profile.issuer.clone(), profile.subject.clone());
        let cell = creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        Joined {
            creating,
            key,
            cell,
        }
    }
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if creating
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
        {
            creating.remove(&self.key);
        }
    }
}

/// The admin API's rules (SPEC §10): a name, email or display name that breaks them is refused
/// with the token, never stored, never repaired.
/// The subject, too, must be one the store keeps as sent: no control characters (PostgreSQL
/// cannot hold a NUL), and no longer than OpenID Connect allows.
fn check_profile(profile: &Profile) -> Result<(), LinkError> {
    let refused = |what: &str, e: NameError| LinkError::Refused(format!("{what}: {e}"));
    let subject = &profile.subject;
    if subject.is_empty() || subject.len() > SUBJECT_MAX || subject.chars().any(char::is_control) {
        return Err(LinkError::Refused(format!(
            "sub: must be 1 to {SUBJECT_MAX} bytes without control characters"
        )));
    }
    names::check_user_name(&profile.preferred_name).map_err(|e| refused("user name", e))?;
    if let Some(email) = &profile.email {
        names::check_email(email).map_err(|e| refused("email", e))?;
    }
    if let Some(name) = &profile.display_name {
        names::check_display_name(name).map_err(|e| refused("name", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::clock;
    use crate::store::sled::SledStore;

    fn users() -> ExternalUsers {
        ExternalUsers::new(
            Arc::new(SledStore::temporary().unwrap()),
            Arc::new(clock::SystemClock),
        )
    }

    fn profile(subject: &str) -> Profile {
        Profile {
            issuer: "https://idp".into(),
            subject: subject.into(),
            preferred_name: "erin".into(),
            email: None,
            display_name: None,
            scopes: Vec::new(),
        }
    }

    #[tokio::test]
    async fn only_creations_in_progress_are_remembered() {
        let users = users();
        let limit = NewUserLimit {
            max: 10,
            window: Duration::from_secs(60),
        };
        let first = users.find_or_create(&profile("1"), limit).await.unwrap();
        let again = users.find_or_create(&profile("1"), limit).await.unwrap();
        assert_eq!(first.id, again.id);
        assert!(users.creating.lock().unwrap().is_empty());
        // A request abandoned while it takes part in a creation leaves nothing behind either.
        let abandoned = Joined::new(&users.creating, &profile("2"));
        assert_eq!(users.creating.lock().unwrap().len(), 1);
        drop(abandoned);
        assert!(users.creating.lock().unwrap().is_empty());
    }

    #[test]
    fn a_reached_bound_is_reported_once_per_window_and_issuer() {
        let users = users();
        let limit = NewUserLimit {
            max: 3,
            window: Duration::from_secs(60),
        };
        let reported = |issuer: &str, now: i64| users.report_limited(issuer, limit, now, 60);
        assert!(reported("https://a", 1000));
        assert!(!reported("https://a", 1001));
        assert!(!reported("https://a", 1059));
        assert!(reported("https://b", 1059));
        assert!(reported("https://a", 1060));
    }

    #[test]
    fn a_suffixed_name_keeps_within_the_rules_and_differs_each_time() {
        let users = users();
        let long = "é".repeat(names::USER_NAME_MAX);
        let a = users.suffixed(&long).unwrap();
        let b = users.suffixed(&long).unwrap();
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert_eq!(name.chars().count(), names::USER_NAME_MAX, "{name}");
            assert!(names::check_user_name(name).is_ok(), "{name}");
        }
        let short = users.suffixed("erin").unwrap();
        assert!(short.starts_with("erin#") && short.len() == 13, "{short}");
    }
}
