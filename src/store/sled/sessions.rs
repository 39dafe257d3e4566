//! Browser sessions (SPEC §11) in sled: `sessions` keeps each record under its id hash, and
//! `user_sessions` indexes them by user (user id ‖ id hash → `created`), so that signing a user
//! out everywhere and the per-user cap read only that user's entries.

use sled::Transactional;
use sled::transaction::TransactionalTree;

use crate::store::{Session, StoreError, StoreResult};

use super::SledStore;
use super::codec::{
    TxResult, abort, backend, decode, encode, session_index_key, tx_decode, tx_encode, unwrap_tx,
};

/// How many times signing a user out everywhere looks again for sessions that appeared while it
/// deleted (a rotation that committed between the scan and the delete stores a new record).
const SIGN_OUT_ROUNDS: usize = 16;

/// Removes the record under `id_hash` and its index entry; the removed record, if any.
fn tx_remove(
    sessions: &TransactionalTree,
    index: &TransactionalTree,
    id_hash: &[u8],
) -> TxResult<Option<Session>> {
    let Some(bytes) = sessions.remove(id_hash)? else {
        return Ok(None);
    };
    let session: Session = tx_decode(&bytes)?;
    index.remove(session_index_key(session.user_id, &session.id_hash))?;
    Ok(Some(session))
}

/// Stores `session` and its index entry, replacing a record of the same id hash.
fn tx_insert(
    sessions: &TransactionalTree,
    index: &TransactionalTree,
    session: &Session,
) -> TxResult<()> {
    tx_remove(sessions, index, session.id_hash.as_bytes())?;
    sessions.insert(session.id_hash.as_bytes(), tx_encode(session)?)?;
    index.insert(
        session_index_key(session.user_id, &session.id_hash),
        &session.created.to_be_bytes(),
    )?;
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
    /// Stores the session in one transaction with a read of its user, so that a user deleted
    /// meanwhile gets none (the deletion's transaction writes that record); then trims the user's
    /// sessions to `keep`. Each creation trims after its own insert, so once concurrent creations
    /// have returned the user holds at most `keep`.
    pub(super) fn insert_session(&self, session: &Session, keep: usize) -> StoreResult<()> {
        let result = (&self.users, &self.sessions, &self.user_sessions).transaction(
            |(users, sessions, index)| {
                if users.get(session.user_id.to_be_bytes())?.is_none() {
                    return abort(StoreError::NotFound(format!("user {}", session.user_id)));
                }
                tx_insert(sessions, index, session)
            },
        );
        unwrap_tx(result)?;
        let sessions = by_age(self, session.user_id)?;
        let excess = sessions.len().saturating_sub(keep);
        if excess > 0 {
            self.remove_sessions(sessions.into_iter().take(excess).map(|(_, id)| id))?;
        }
        Ok(())
    }

    pub(super) fn read_session(&self, id_hash: &str) -> StoreResult<Option<Session>> {
        match self.sessions.get(id_hash).map_err(backend)? {
            Some(bytes) => decode(&bytes).map(Some),
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
        let result = (&self.sessions, &self.user_sessions).transaction(|(sessions, index)| {
            if tx_remove(sessions, index, old_hash.as_bytes())?.is_none() {
                return Ok(false);
            }
            tx_insert(sessions, index, new)?;
            Ok(true)
        });
        unwrap_tx(result)
    }

    /// Deletes the sessions of these id hashes (with their index entries) in one transaction; how
    /// many there were.
    pub(super) fn remove_sessions(
        &self,
        id_hashes: impl IntoIterator<Item = Vec<u8>>,
    ) -> StoreResult<u64> {
        let id_hashes: Vec<Vec<u8>> = id_hashes.into_iter().collect();
        if id_hashes.is_empty() {
            return Ok(0);
        }
        let result = (&self.sessions, &self.user_sessions).transaction(|(sessions, index)| {
            let mut removed = 0;
            for id in &id_hashes {
                if tx_remove(sessions, index, id)?.is_some() {
                    removed += 1;
                }
            }
            Ok(removed)
        });
        unwrap_tx(result)
    }

    /// Deletes every session of the user. The index is read again after each round: a rotation
    /// that committed after the read stored a record the round did not know of, and one that
    /// commits after the round finds its old record gone and stores nothing.
    pub(super) fn remove_user_sessions(&self, user_id: u64) -> StoreResult<u64> {
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
            let result = (&self.sessions, &self.user_sessions).transaction(|(sessions, index)| {
                let Some(bytes) = sessions.get(&key)? else {
                    return Ok(false);
                };
                if !ended(&tx_decode(&bytes)?) {
                    return Ok(false);
                }
                Ok(tx_remove(sessions, index, &key)?.is_some())
            });
            if unwrap_tx(result)? {
                purged += 1;
            }
        }
        Ok(purged)
    }
}
