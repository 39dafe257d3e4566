//! The embedded store: sled, one replica. Multi-record changes run in sled transactions;
//! every write is flushed to disk before the call returns.

use std::path::Path;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Db, Transactional, Tree};

use super::{
    Application, AuditEvent, Membership, NewUser, Organization, SCHEMA_VERSION, SigningKey, Store,
    StoreError, StoreResult, User, UserPatch, WsKey,
};

/// sled trees, one per record kind, plus indexes.
pub struct SledStore {
    db: Db,
    users: Tree,
    user_names: Tree,
    user_external: Tree,
    applications: Tree,
    app_tokens: Tree,
    organizations: Tree,
    ws_keys: Tree,
    signing_keys: Tree,
    audit: Tree,
    mfa: Tree,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(backend)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(backend)
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_encode<T: Serialize>(value: &T) -> TxResult<Vec<u8>> {
    encode(value).or_else(abort)
}

fn tx_decode<T: DeserializeOwned>(bytes: &[u8]) -> TxResult<T> {
    decode(bytes).or_else(abort)
}

fn unwrap_tx<T>(result: Result<T, TransactionError<StoreError>>) -> StoreResult<T> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    })
}

fn name_key(user_name: &str) -> Vec<u8> {
    user_name.to_lowercase().into_bytes()
}

fn external_key(issuer: &str, subject: &str) -> Vec<u8> {
    let mut key = issuer.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(subject.as_bytes());
    key
}

/// Reads a user through its name index inside a transaction.
fn tx_user_by_name(
    users: &TransactionalTree,
    names: &TransactionalTree,
    user_name: &str,
) -> TxResult<Option<User>> {
    let Some(id) = names.get(name_key(user_name))? else {
        return Ok(None);
    };
    match users.get(id)? {
        Some(bytes) => tx_decode(&bytes).map(Some),
        None => Ok(None),
    }
}

impl SledStore {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> StoreResult<SledStore> {
        SledStore::from_db(sled::Config::new().path(path).open().map_err(backend)?)
    }

    /// A store that lives in a temporary directory and is removed when dropped (tests).
    pub fn temporary() -> StoreResult<SledStore> {
        SledStore::from_db(
            sled::Config::new()
                .temporary(true)
                .open()
                .map_err(backend)?,
        )
    }

    fn from_db(db: Db) -> StoreResult<SledStore> {
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        Ok(SledStore {
            users: tree("users")?,
            user_names: tree("user_names")?,
            user_external: tree("user_external")?,
            applications: tree("applications")?,
            app_tokens: tree("app_tokens")?,
            organizations: tree("organizations")?,
            ws_keys: tree("ws_keys")?,
            signing_keys: tree("signing_keys")?,
            audit: tree("audit")?,
            mfa: tree("mfa")?,
            db,
        })
    }

    async fn durable(&self) -> StoreResult<()> {
        self.db.flush_async().await.map(|_| ()).map_err(backend)
    }

    /// Read-modify-write of one user, by name, in a transaction with the name index.
    async fn modify_user(
        &self,
        user_name: &str,
        now: &str,
        change: impl Fn(&mut User) -> Result<(), StoreError>,
    ) -> StoreResult<User> {
        let result = (&self.users, &self.user_names).transaction(|(users, names)| {
            let Some(mut user) = tx_user_by_name(users, names, user_name)? else {
                return abort(StoreError::NotFound(format!("user {user_name}")));
            };
            let old_key = name_key(&user.user_name);
            change(&mut user).or_else(abort)?;
            let new_key = name_key(&user.user_name);
            if new_key != old_key {
                if names.get(&new_key)?.is_some() {
                    return abort(StoreError::Conflict(format!("user {}", user.user_name)));
                }
                names.remove(old_key)?;
                names.insert(new_key, &user.id.to_be_bytes())?;
            }
            user.modified = now.to_owned();
            users.insert(&user.id.to_be_bytes(), tx_encode(&user)?)?;
            Ok(user)
        });
        let user = unwrap_tx(result)?;
        self.durable().await?;
        Ok(user)
    }
}

#[async_trait]
impl Store for SledStore {
    async fn check(&self) -> StoreResult<()> {
        self.db.insert("health", b"ok").map_err(backend)?;
        Ok(())
    }

    async fn create_user(&self, new: NewUser, now: &str) -> StoreResult<User> {
        let id = self.db.generate_id().map_err(backend)?;
        let user = User {
            v: SCHEMA_VERSION,
            id,
            uuid: uuid::Uuid::new_v4().to_string(),
            user_name: new.user_name,
            first_name: new.first_name,
            last_name: new.last_name,
            nick_name: new.nick_name,
            email: new.email,
            phone: new.phone,
            text_number: None,
            password_hash: new.password_hash,
            password_expires: None,
            force_password_change: false,
            latest_invite_status: None,
            latest_invite_date: None,
            latest_invite_uuid: None,
            is_valid: true,
            last_login_timestamp: None,
            user_rollout_stage: None,
            scopes: new.scopes,
            memberships: Vec::new(),
            files: Vec::new(),
            external: new.external,
            created: now.to_owned(),
            modified: now.to_owned(),
        };
        let result = (&self.users, &self.user_names, &self.user_external).transaction(
            |(users, names, external)| {
                let key = name_key(&user.user_name);
                if names.get(&key)?.is_some() {
                    return abort(StoreError::Conflict(format!("user {}", user.user_name)));
                }
                if let Some(ext) = &user.external {
                    let ext_key = external_key(&ext.issuer, &ext.subject);
                    if external.get(&ext_key)?.is_some() {
                        return abort(StoreError::Conflict("external user".into()));
                    }
                    external.insert(ext_key, &id.to_be_bytes())?;
                }
                names.insert(key, &id.to_be_bytes())?;
                users.insert(&id.to_be_bytes(), tx_encode(&user)?)?;
                Ok(())
            },
        );
        unwrap_tx(result)?;
        self.durable().await?;
        Ok(user)
    }

    async fn user_by_name(&self, user_name: &str) -> StoreResult<Option<User>> {
        match self.user_names.get(name_key(user_name)).map_err(backend)? {
            Some(id) => match self.users.get(id).map_err(backend)? {
                Some(bytes) => decode(&bytes).map(Some),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    async fn user_by_id(&self, id: u64) -> StoreResult<Option<User>> {
        match self.users.get(id.to_be_bytes()).map_err(backend)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn user_by_external(&self, issuer: &str, subject: &str) -> StoreResult<Option<User>> {
        match self
            .user_external
            .get(external_key(issuer, subject))
            .map_err(backend)?
        {
            Some(id) => match self.users.get(id).map_err(backend)? {
                Some(bytes) => decode(&bytes).map(Some),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    async fn update_user(&self, user_name: &str, patch: UserPatch, now: &str) -> StoreResult<User> {
        self.modify_user(user_name, now, |user| {
            let p = patch.clone();
            if let Some(v) = p.user_name {
                user.user_name = v;
            }
            if let Some(v) = p.password_hash {
                user.password_hash = Some(v);
            }
            if let Some(v) = p.email {
                user.email = Some(v);
            }
            if let Some(v) = p.phone {
                user.phone = Some(v);
            }
            if let Some(v) = p.first_name {
                user.first_name = Some(v);
            }
            if let Some(v) = p.last_name {
                user.last_name = Some(v);
            }
            if let Some(v) = p.nick_name {
                user.nick_name = Some(v);
            }
            if let Some(v) = p.scopes {
                user.scopes = v;
            }
            if let Some(v) = p.last_login_timestamp {
                user.last_login_timestamp = Some(v);
            }
            Ok(())
        })
        .await
    }

    async fn delete_user(&self, user_name: &str) -> StoreResult<bool> {
        let result = (&self.users, &self.user_names, &self.user_external).transaction(
            |(users, names, external)| {
                let Some(user) = tx_user_by_name(users, names, user_name)? else {
                    return Ok(None);
                };
                names.remove(name_key(&user.user_name))?;
                users.remove(&user.id.to_be_bytes())?;
                if let Some(ext) = &user.external {
                    external.remove(external_key(&ext.issuer, &ext.subject))?;
                }
                Ok(Some(user.id))
            },
        );
        let Some(id) = unwrap_tx(result)? else {
            return Ok(false);
        };
        // Keys bound to the user go with it.
        for entry in self.ws_keys.iter() {
            let (k, bytes) = entry.map_err(backend)?;
            if decode::<WsKey>(&bytes)?.user_id == id {
                self.ws_keys.remove(k).map_err(backend)?;
            }
        }
        self.reset_mfa(id).await?;
        self.durable().await?;
        Ok(true)
    }

    async fn reset_mfa(&self, user_id: u64) -> StoreResult<()> {
        for key in self.mfa.scan_prefix(user_id.to_be_bytes()).keys() {
            self.mfa.remove(key.map_err(backend)?).map_err(backend)?;
        }
        self.durable().await
    }

    async fn create_application(&self, app: Application) -> StoreResult<()> {
        let result = (&self.applications, &self.app_tokens).transaction(|(apps, tokens)| {
            if apps.get(app.name.as_bytes())?.is_some() {
                return abort(StoreError::Conflict(format!("application {}", app.name)));
            }
            apps.insert(app.name.as_bytes(), tx_encode(&app)?)?;
            tokens.insert(app.token_hash.as_bytes(), app.name.as_bytes())?;
            Ok(())
        });
        unwrap_tx(result)?;
        self.durable().await
    }

    async fn application_by_token_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<Application>> {
        let Some(name) = self.app_tokens.get(token_hash).map_err(backend)? else {
            return Ok(None);
        };
        match self.applications.get(name).map_err(backend)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn create_organization(&self, org: Organization) -> StoreResult<()> {
        let bytes = encode(&org)?;
        let swapped = self
            .organizations
            .compare_and_swap(org.id.to_be_bytes(), None as Option<&[u8]>, Some(bytes))
            .map_err(backend)?;
        if swapped.is_err() {
            return Err(StoreError::Conflict(format!("organization {}", org.id)));
        }
        self.durable().await
    }

    async fn organization(&self, id: i64) -> StoreResult<Option<Organization>> {
        match self.organizations.get(id.to_be_bytes()).map_err(backend)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn set_membership(
        &self,
        user_name: &str,
        membership: Membership,
        now: &str,
    ) -> StoreResult<User> {
        if self
            .organization(membership.organization_id)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound(format!(
                "organization {}",
                membership.organization_id
            )));
        }
        self.modify_user(user_name, now, |user| {
            user.memberships
                .retain(|m| m.organization_id != membership.organization_id);
            user.memberships.push(membership);
            Ok(())
        })
        .await
    }

    async fn grant_file(&self, user_name: &str, file_id: i64, now: &str) -> StoreResult<User> {
        self.modify_user(user_name, now, |user| {
            if !user.files.contains(&file_id) {
                user.files.push(file_id);
            }
            Ok(())
        })
        .await
    }

    async fn create_ws_key(&self, key: WsKey) -> StoreResult<()> {
        let bytes = encode(&key)?;
        let swapped = self
            .ws_keys
            .compare_and_swap(key.key_hash.as_bytes(), None as Option<&[u8]>, Some(bytes))
            .map_err(backend)?;
        if swapped.is_err() {
            return Err(StoreError::Conflict("ws key".into()));
        }
        self.durable().await
    }

    async fn ws_key(&self, key_hash: &str) -> StoreResult<Option<WsKey>> {
        match self.ws_keys.get(key_hash).map_err(backend)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKey>> {
        self.signing_keys
            .iter()
            .values()
            .map(|v| decode(&v.map_err(backend)?))
            .collect()
    }

    async fn add_signing_key(&self, key: SigningKey) -> StoreResult<()> {
        let id = self.db.generate_id().map_err(backend)?;
        self.signing_keys
            .insert(id.to_be_bytes(), encode(&key)?)
            .map_err(backend)?;
        self.durable().await
    }

    async fn append_audit(&self, event: AuditEvent) -> StoreResult<()> {
        let id = self.db.generate_id().map_err(backend)?;
        self.audit
            .insert(id.to_be_bytes(), encode(&event)?)
            .map_err(backend)?;
        self.durable().await
    }

    async fn audit(&self, limit: usize) -> StoreResult<Vec<AuditEvent>> {
        self.audit
            .iter()
            .values()
            .rev()
            .take(limit)
            .map(|v| decode(&v.map_err(backend)?))
            .collect()
    }

    async fn flush(&self) -> StoreResult<()> {
        self.durable().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::Role;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn new_user(name: &str) -> NewUser {
        NewUser {
            user_name: name.into(),
            ..NewUser::default()
        }
    }

    #[tokio::test]
    async fn user_names_are_unique_regardless_of_case() {
        let store = SledStore::temporary().unwrap();
        store.create_user(new_user("Ada"), NOW).await.unwrap();
        let err = store.create_user(new_user("ada"), NOW).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        assert!(store.user_by_name("ADA").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn renaming_moves_the_index_and_refuses_taken_names() {
        let store = SledStore::temporary().unwrap();
        store.create_user(new_user("ada"), NOW).await.unwrap();
        store.create_user(new_user("bob"), NOW).await.unwrap();
        let taken = UserPatch {
            user_name: Some("BOB".into()),
            ..UserPatch::default()
        };
        assert!(matches!(
            store.update_user("ada", taken, NOW).await,
            Err(StoreError::Conflict(_))
        ));
        let rename = UserPatch {
            user_name: Some("grace".into()),
            ..UserPatch::default()
        };
        store.update_user("ada", rename, NOW).await.unwrap();
        assert!(store.user_by_name("ada").await.unwrap().is_none());
        assert!(store.user_by_name("grace").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn memberships_need_an_existing_organization() {
        let store = SledStore::temporary().unwrap();
        store.create_user(new_user("ada"), NOW).await.unwrap();
        let m = Membership {
            organization_id: 7,
            role: Role::Admin,
        };
        assert!(matches!(
            store.set_membership("ada", m, NOW).await,
            Err(StoreError::NotFound(_))
        ));
        store
            .create_organization(Organization {
                v: SCHEMA_VERSION,
                id: 7,
                name: "Acme".into(),
                created: NOW.into(),
            })
            .await
            .unwrap();
        let user = store.set_membership("ada", m, NOW).await.unwrap();
        assert_eq!(user.memberships, vec![m]);
    }

    #[tokio::test]
    async fn deleting_a_user_removes_its_keys() {
        let store = SledStore::temporary().unwrap();
        let user = store.create_user(new_user("ada"), NOW).await.unwrap();
        store
            .create_ws_key(WsKey {
                v: SCHEMA_VERSION,
                key_hash: "h".into(),
                user_id: user.id,
                file_id: 1,
                created: NOW.into(),
            })
            .await
            .unwrap();
        assert!(store.delete_user("ada").await.unwrap());
        assert!(store.ws_key("h").await.unwrap().is_none());
        assert!(!store.delete_user("ada").await.unwrap());
    }

    #[tokio::test]
    async fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.create_user(new_user("ada"), NOW).await.unwrap();
        }
        // sled's flusher thread lets go of the directory lock shortly after the drop.
        let mut reopened = SledStore::open(dir.path());
        for _ in 0..50 {
            if reopened.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            reopened = SledStore::open(dir.path());
        }
        let user = reopened
            .unwrap()
            .user_by_name("ada")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.v, SCHEMA_VERSION);
    }
}
