//! Browser sessions (SPEC §11) in sled: `sessions` keeps each record under its id hash,
//! `user_sessions` indexes them by user (user id ‖ id hash → `created`), so that signing a user
//! out everywhere and the per-user cap read only that user's entries, and `idp_sessions` indexes
//! the sessions signed in through an external provider that sent a session id (provider ‖ sid ‖
//! id hash, see [`idp_index_key`]), so that a back-channel logout reads only that sid's entries.
//! The three trees change together, in the transactions of [`tx_insert`] and [`tx_remove`].
//!
//! Sign-ins at external providers in progress (SPEC §12) are kept in `login_flows` under their
//! state hash.

use std::sync::{Arc, PoisonError};

use sled::Transactional;
use sled::transaction::TransactionalTree;

use crate::store::{LoginFlow, Session, StoreError, StoreResult};

use super::SledStore;
use super::codec::{
    TxResult, abort, backend, decode, encode, idp_index_key, idp_index_prefix, session_index_key,
    tx_decode, tx_encode, unwrap_tx,
};

/// How many times signing a user out everywhere looks again for sessions that appeared while it
/// deleted (a rotation that committed between the scan and the delete stores a new record).
const SIGN_OUT_ROUNDS: usize = 16;

/// The session trees as one transaction sees them.
struct Trees<'t> {
    sessions: &'t TransactionalTree,
    by_user: &'t TransactionalTree,
    by_idp: &'t TransactionalTree,
}

/// Removes the record under `id_hash` and its index entries; the removed record, if any.
fn tx_remove(t: &Trees, id_hash: &[u8]) -> TxResult<Option<Session>> {
    let Some(bytes) = t.sessions.remove(id_hash)? else {
        return Ok(None);
    };
    let session: Session = tx_decode(&bytes)?;
    t.by_user
        .remove(session_index_key(session.user_id, &session.id_hash))?;
    if let Some(link) = &session.idp
        && let Some(sid) = &link.sid
    {
        t.by_idp
            .remove(idp_index_key(&link.provider, sid, &session.id_hash))?;
    }
    Ok(Some(session))
}

/// Stores `session` and its index entries, replacing a record of the same id hash.
fn tx_insert(t: &Trees, session: &Session) -> TxResult<()> {
    tx_remove(t, session.id_hash.as_bytes())?;
    t.sessions
        .insert(session.id_hash.as_bytes(), tx_encode(session)?)?;
    t.by_user.insert(
        session_index_key(session.user_id, &session.id_hash),
        &session.created.to_be_bytes(),
    )?;
    if let Some(link) = &session.idp
        && let Some(sid) = &link.sid
    {
        t.by_idp.insert(
            idp_index_key(&link.provider, sid, &session.id_hash),
            &[] as &[u8],
        )?;
    }
    Ok(())
}

/// The user's sessions as the index lists them: `(created, id hash)`, oldest first (ties in id
/// hash order, the order PostgreSQL's cap uses too).
fn by_age(store: &SledStore, user_id: u64) -> StoreResult<Vec<(i64, Vec<u8>)>> {
    let mut found = Vec::new();
    for entry in store.user_sessions.scan_prefix(user_id.to_be_bytes()) {
        let (key, value) = entry.map_err(backend)?;
        let created = <[u8; 8]>::try_from(value.as_ref())
            .map(i64::from_be_bytes)
            .map_err(|_| StoreError::Backend("a session index entry is malformed".into()))?;
        found.push((created, key.get(8..).unwrap_or_default().to_vec()));
    }
    found.sort();
    Ok(found)
}

impl SledStore {
    /// Runs `change` in one transaction over the session trees.
    fn in_sessions<R>(&self, change: impl Fn(&Trees) -> TxResult<R>) -> StoreResult<R> {
        let result = (&self.sessions, &self.user_sessions, &self.idp_sessions).transaction(
            |(sessions, by_user, by_idp)| {
                change(&Trees {
                    sessions,
                    by_user,
                    by_idp,
                })
            },
        );
        unwrap_tx(result)
    }

    /// Stores the session in one transaction with a read of its user, so that a user deleted
    /// meanwhile gets none (the deletion's transaction writes that record); then trims the user's
    /// sessions to `keep`. Each creation trims after its own insert, so once concurrent creations
    /// have returned the user holds at most `keep`.
    pub(super) fn insert_session(&self, session: &Session, keep: usize) -> StoreResult<()> {
        let result = (
            &self.users,
            &self.sessions,
            &self.user_sessions,
            &self.idp_sessions,
        )
            .transaction(|(users, sessions, by_user, by_idp)| {
                if users.get(session.user_id.to_be_bytes())?.is_none() {
                    return abort(StoreError::NotFound(format!("user {}", session.user_id)));
                }
                let t = Trees {
                    sessions,
                    by_user,
                    by_idp,
                };
                tx_insert(&t, session)
            });
        unwrap_tx(result)?;
        let sessions = by_age(self, session.user_id)?;
        let excess = sessions.len().saturating_sub(keep);
        if excess > 0 {
            self.remove_sessions(sessions.into_iter().take(excess).map(|(_, id)| id))?;
        }
        Ok(())
    }

    /// The session stored under `id_hash`, decoded again only when its stored bytes changed
    /// since the last time; the decoded record is shared, not copied.
    pub(super) fn read_session(&self, id_hash: &str) -> StoreResult<Option<Arc<Session>>> {
        match self.sessions.get(id_hash).map_err(backend)? {
            Some(bytes) => self
                .decoded_sessions
                .of(id_hash.as_bytes(), bytes, |bytes| {
                    decode(bytes).map(Arc::new)
                })
                .map(Some),
            None => Ok(None),
        }
    }

    /// Moves `last_seen` forward with compare-and-swap: a rotation or deletion that lands first
    /// makes the swap fail, and the next look finds the record gone.
    pub(super) fn touch(&self, id_hash: &str, now: i64) -> StoreResult<bool> {
        loop {
            let Some(bytes) = self.sessions.get(id_hash).map_err(backend)? else {
                return Ok(false);
            };
            let mut session: Session = decode(&bytes)?;
            if session.last_seen >= now {
                return Ok(true);
            }
            session.last_seen = now;
            let new = encode(&session)?;
            if self
                .sessions
                .compare_and_swap(id_hash, Some(bytes), Some(new))
                .map_err(backend)?
                .is_ok()
            {
                return Ok(true);
            }
        }
    }

    /// Deletes `old_hash` and stores `new` in one transaction: of concurrent rotations of one
    /// session, the first to commit removes the record the others need.
    pub(super) fn rotate(&self, old_hash: &str, new: &Session) -> StoreResult<bool> {
        let _between_sign_outs = self
            .sign_outs
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        self.in_sessions(|t| {
            if tx_remove(t, old_hash.as_bytes())?.is_none() {
                return Ok(false);
            }
            tx_insert(t, new)?;
            Ok(true)
        })
    }

    /// Deletes the sessions of these id hashes (with their index entries) in one transaction; how
    /// many there were.
    pub(super) fn remove_sessions(
        &self,
        id_hashes: impl IntoIterator<Item = Vec<u8>>,
    ) -> StoreResult<u64> {
        self.remove_sessions_if(id_hashes, |_| true)
    }

    /// Deletes, in one transaction, those of the sessions of these id hashes that `matches`
    /// accepts as they are stored at that moment; how many.
    fn remove_sessions_if(
        &self,
        id_hashes: impl IntoIterator<Item = Vec<u8>>,
        matches: impl Fn(&Session) -> bool,
    ) -> StoreResult<u64> {
        let id_hashes: Vec<Vec<u8>> = id_hashes.into_iter().collect();
        if id_hashes.is_empty() {
            return Ok(0);
        }
        self.in_sessions(|t| {
            let mut removed = 0;
            for id in &id_hashes {
                let Some(bytes) = t.sessions.get(id)? else {
                    continue;
                };
                if matches(&tx_decode(&bytes)?) && tx_remove(t, id)?.is_some() {
                    removed += 1;
                }
            }
            Ok(removed)
        })
    }

    /// Deletes every session of the user. The index is read again after each round: a rotation
    /// that committed after the read stored a record the round did not know of, and one that
    /// commits after the round finds its old record gone and stores nothing.
    pub(super) fn remove_user_sessions(&self, user_id: u64) -> StoreResult<u64> {
        let _no_rotation = self
            .sign_outs
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut removed = 0;
        for _ in 0..SIGN_OUT_ROUNDS {
            let sessions = by_age(self, user_id)?;
            if sessions.is_empty() {
                break;
            }
            removed += self.remove_sessions(sessions.into_iter().map(|(_, id)| id))?;
        }
        Ok(removed)
    }

    /// Deletes the sessions signed in through `provider` that match `user_id` and `sid` where
    /// given. Candidates come from `idp_sessions` when `sid` is given, else from the user's
    /// entries in `user_sessions` (else from every session), and each is checked again in the
    /// deleting transaction. Like [`SledStore::remove_user_sessions`], it looks again after each
    /// round for a record a concurrent rotation stored.
    pub(super) fn remove_idp_sessions(
        &self,
        provider: &str,
        user_id: Option<u64>,
        sid: Option<&str>,
    ) -> StoreResult<u64> {
        let matches = |s: &Session| {
            s.idp.as_ref().is_some_and(|link| {
                link.provider == provider && sid.is_none_or(|sid| link.sid.as_deref() == Some(sid))
            }) && user_id.is_none_or(|id| s.user_id == id)
        };
        let _no_rotation = self
            .sign_outs
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut removed = 0;
        for _ in 0..SIGN_OUT_ROUNDS {
            let candidates: Vec<Vec<u8>> = match (sid, user_id) {
                (Some(sid), _) => {
                    let prefix = idp_index_prefix(provider, sid);
                    self.idp_sessions
                        .scan_prefix(&prefix)
                        .keys()
                        .map(|key| {
                            let key = key.map_err(backend)?;
                            Ok(key.get(prefix.len()..).unwrap_or_default().to_vec())
                        })
                        .collect::<StoreResult<_>>()?
                }
                (None, Some(user_id)) => by_age(self, user_id)?
                    .into_iter()
                    .map(|(_, id)| id)
                    .collect(),
                (None, None) => self
                    .sessions
                    .iter()
                    .keys()
                    .map(|key| key.map(|k| k.to_vec()).map_err(backend))
                    .collect::<StoreResult<_>>()?,
            };
            let mut matching = Vec::new();
            for id in candidates {
                if let Some(bytes) = self.sessions.get(&id).map_err(backend)?
                    && matches(&decode(&bytes)?)
                {
                    matching.push(id);
                }
            }
            if matching.is_empty() {
                break;
            }
            removed += self.remove_sessions_if(matching, matches)?;
        }
        Ok(removed)
    }

    /// Deletes every ended session, each after checking again, in its transaction, that it has
    /// ended (a request may have used it since the scan).
    pub(super) fn purge(&self, now: i64, idle_before: i64) -> StoreResult<u64> {
        let ended = |s: &Session| s.expires <= now || s.last_seen <= idle_before;
        let mut purged = 0;
        for entry in self.sessions.iter() {
            let (key, bytes) = entry.map_err(backend)?;
            if !ended(&decode(&bytes)?) {
                continue;
            }
            purged += self.remove_sessions_if([key.to_vec()], ended)?;
        }
        Ok(purged)
    }

    /// Stores a sign-in flow under its state hash, replacing one of the same hash.
    pub(super) fn insert_login_flow(&self, flow: &LoginFlow) -> StoreResult<()> {
        self.login_flows
            .insert(flow.state_hash.as_bytes(), encode(flow)?)
            .map_err(backend)?;
        Ok(())
    }

    /// Removes the flow in one atomic step, so that of concurrent takes one gets the record;
    /// the record, unless it had expired. Whether anything was removed comes second.
    pub(super) fn remove_login_flow(
        &self,
        state_hash: &str,
        now: i64,
    ) -> StoreResult<(Option<LoginFlow>, bool)> {
        let Some(bytes) = self.login_flows.remove(state_hash).map_err(backend)? else {
            return Ok((None, false));
        };
        let flow: LoginFlow = decode(&bytes)?;
        Ok(((flow.expires > now).then_some(flow), true))
    }

    /// Deletes every flow with `expires <= now`, each with compare-and-swap against the record
    /// the scan read; how many.
    pub(super) fn purge_flows(&self, now: i64) -> StoreResult<u64> {
        let mut purged = 0;
        for entry in self.login_flows.iter() {
            let (key, bytes) = entry.map_err(backend)?;
            if decode::<LoginFlow>(&bytes)?.expires > now {
                continue;
            }
            if self
                .login_flows
                .compare_and_swap(&key, Some(&bytes), None as Option<&[u8]>)
                .map_err(backend)?
                .is_ok()
            {
                purged += 1;
            }
        }
        Ok(purged)
    }
}
