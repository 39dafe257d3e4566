//! Browser sessions (SPEC §11) in `gatehouse_sessions`. Every field is compared or updated by a
//! statement, so a session is kept in plain columns rather than a JSONB document.
//!
//! Changes to a user's set of sessions (creation with its cap, rotation, signing out everywhere)
//! first lock the user's row, so they take turns: a rotation cannot slip a new session past a
//! sign-out, and concurrent creations cannot together exceed the cap. The user's row is always
//! locked before any session row, as [`PgStore::delete_user_once`] does by deleting it first.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::{Json, ToSql};

use crate::store::{IdpLink, LoginFlow, Session, StoreError};

use super::{Fail, PgStore, exec, key, row, rows, unkey};

/// Stores a session, replacing one of the same id hash.
const INSERT: &str = "INSERT INTO gatehouse_sessions
        (id_hash, user_id, methods, created, last_seen, expires, idp_provider, idp_sid)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (id_hash) DO UPDATE SET user_id = excluded.user_id, methods = excluded.methods,
        created = excluded.created, last_seen = excluded.last_seen, expires = excluded.expires,
        idp_provider = excluded.idp_provider, idp_sid = excluded.idp_sid";

/// The columns [`session_from`] reads.
pub(super) const COLUMNS: &str =
    "id_hash, user_id, methods, created, last_seen, expires, idp_provider, idp_sid";

pub(super) fn session_from(row: &Row) -> Result<Session, Fail> {
    let provider: Option<String> = row.try_get("idp_provider")?;
    let sid: Option<String> = row.try_get("idp_sid")?;
    Ok(Session {
        id_hash: row.try_get("id_hash")?,
        user_id: unkey(row.try_get("user_id")?),
        methods: row.try_get::<_, Json<Vec<String>>>("methods")?.0,
        created: row.try_get("created")?,
        last_seen: row.try_get("last_seen")?,
        expires: row.try_get("expires")?,
        idp: provider.map(|provider| IdpLink { provider, sid }),
    })
}

/// The columns [`flow_from`] reads.
pub(super) const FLOW_COLUMNS: &str = "state_hash, provider, nonce, pkce_verifier, rd, expires";

pub(super) fn flow_from(row: &Row) -> Result<LoginFlow, Fail> {
    Ok(LoginFlow {
        state_hash: row.try_get("state_hash")?,
        provider: row.try_get("provider")?,
        nonce: row.try_get("nonce")?,
        pkce_verifier: row.try_get("pkce_verifier")?,
        rd: row.try_get("rd")?,
        expires: row.try_get("expires")?,
    })
}

async fn insert(c: &impl GenericClient, session: &Session) -> Result<(), Fail> {
    exec(
        c,
        INSERT,
        &[
            &session.id_hash,
            &key(session.user_id),
            &Json(&session.methods),
            &session.created,
            &session.last_seen,
            &session.expires,
            &session.idp.as_ref().map(|link| &link.provider),
            &session.idp.as_ref().and_then(|link| link.sid.as_ref()),
        ],
    )
    .await?;
    Ok(())
}

/// Locks the user's row until the transaction ends; whether there is one.
async fn lock_user(c: &impl GenericClient, user_id: i64) -> Result<bool, Fail> {
    Ok(row(
        c,
        "SELECT 1 FROM gatehouse_users WHERE id = $1 FOR UPDATE",
        &[&user_id],
    )
    .await?
    .is_some())
}

impl PgStore {
    /// Stores the session, then deletes the user's oldest beyond `keep` (by `created`, ties by id
    /// hash in byte order, as sled orders them); the id hashes of those deleted. `NotFound` when
    /// the user does not exist.
    pub(super) async fn create_session_once(
        &self,
        session: &Session,
        keep: i64,
    ) -> Result<Vec<String>, Fail> {
        let user_id = key(session.user_id);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !lock_user(&tx, user_id).await? {
            return Err(StoreError::NotFound(format!("user {}", session.user_id)).into());
        }
        insert(&tx, session).await?;
        let ended = rows(
            &tx,
            "DELETE FROM gatehouse_sessions WHERE id_hash IN (
                SELECT id_hash FROM gatehouse_sessions WHERE user_id = $1
                ORDER BY created DESC, id_hash COLLATE \"C\" DESC OFFSET $2
            ) RETURNING id_hash",
            &[&user_id, &keep],
        )
        .await?;
        tx.commit().await?;
        Ok(ended
            .iter()
            .map(|r| r.try_get("id_hash"))
            .collect::<Result<_, _>>()?)
    }

    /// Deletes `old_hash` and stores `new`; of concurrent rotations of one session, the first to
    /// delete the old row wins and the others find nothing to delete.
    pub(super) async fn replace_session_once(
        &self,
        old_hash: &str,
        new: &Session,
    ) -> Result<bool, Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(old) = row(
            &tx,
            "SELECT user_id FROM gatehouse_sessions WHERE id_hash = $1",
            &[&old_hash],
        )
        .await?
        else {
            return Ok(false);
        };
        lock_user(&tx, old.try_get("user_id")?).await?;
        let deleted = exec(
            &tx,
            "DELETE FROM gatehouse_sessions WHERE id_hash = $1",
            &[&old_hash],
        )
        .await?;
        if deleted == 0 {
            return Ok(false);
        }
        insert(&tx, new).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes every session of the user, after the rotations and creations already holding the
    /// user's row have committed, so that none of theirs survives.
    pub(super) async fn delete_user_sessions_once(&self, user_id: u64) -> Result<u64, Fail> {
        let user_id = key(user_id);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lock_user(&tx, user_id).await?;
        let deleted = exec(
            &tx,
            "DELETE FROM gatehouse_sessions WHERE user_id = $1",
            &[&user_id],
        )
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }

    /// Deletes the sessions signed in through `provider` that match `user_id` and `sid` where
    /// given. Their users' rows are locked first, as signing out everywhere does, so that a
    /// rotation of one of them either commits before the delete (which then sees its new row) or
    /// finds its old row gone.
    pub(super) async fn delete_idp_sessions_once(
        &self,
        provider: &str,
        user_id: Option<u64>,
        sid: Option<&str>,
    ) -> Result<u64, Fail> {
        let user_id = user_id.map(key);
        // One statement for each combination of filters, so that each uses its index.
        let mut filter = String::from("idp_provider = $1");
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&provider];
        if let Some(user_id) = &user_id {
            params.push(user_id);
            filter.push_str(&format!(" AND user_id = ${}", params.len()));
        }
        if let Some(sid) = &sid {
            params.push(sid);
            filter.push_str(&format!(" AND idp_sid = ${}", params.len()));
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        rows(
            &tx,
            &format!(
                "SELECT id FROM gatehouse_users WHERE id IN (
                    SELECT user_id FROM gatehouse_sessions WHERE {filter}
                ) ORDER BY id FOR UPDATE"
            ),
            &params,
        )
        .await?;
        let deleted = exec(
            &tx,
            &format!("DELETE FROM gatehouse_sessions WHERE {filter}"),
            &params,
        )
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }
}
