//! Passkeys (SPEC §14) in sled. A user's passkeys are one record, the list, in the `mfa` tree
//! under the user id and `p`, written in the same transaction as the `webauthn` factor record
//! (present while the list is not empty) and the `passkey_ids` index (credential id → user id),
//! so that every rule (one registration per credential id, at most [`MAX_PASSKEYS`], counters
//! only forwards, the last factor kept) is checked and applied in one atomic step.
//! Ceremonies in progress are kept in `passkey_ceremonies` under their id hash.

use sled::Transactional;
use sled::transaction::TransactionalTree;

use crate::store::{
    Factor, FactorKind, MAX_PASSKEYS, Passkey, PasskeyAdded, PasskeyCeremony, PasskeyGrant,
    PasskeyRemoved, SCHEMA_VERSION, StoreResult, Ticket, stamp,
};

use super::SledStore;
use super::codec::{
    FACTOR_KINDS, TxResult, backend, decode, encode, mfa_key, tx_decode, tx_encode, unwrap_tx,
};

/// The key of a user's passkey list in the `mfa` tree.
pub(super) fn list_key(user_id: u64) -> Vec<u8> {
    mfa_key(user_id, b'p', &[])
}

fn marker_key(user_id: u64) -> Vec<u8> {
    mfa_key(user_id, b'f', &[FactorKind::Webauthn.tag()])
}

fn tx_list(mfa: &TransactionalTree, user_id: u64) -> TxResult<Vec<Passkey>> {
    match mfa.get(list_key(user_id))? {
        Some(bytes) => tx_decode(&bytes),
        None => Ok(Vec::new()),
    }
}

/// Whether the user has a confirmed factor of another kind than passkeys.
fn tx_other_factor(mfa: &TransactionalTree, user_id: u64) -> TxResult<bool> {
    for kind in FACTOR_KINDS {
        if kind != FactorKind::Webauthn && mfa.get(mfa_key(user_id, b'f', &[kind.tag()]))?.is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

impl SledStore {
    pub(super) fn passkey_list(&self, user_id: u64) -> StoreResult<Vec<Passkey>> {
        match self.mfa.get(list_key(user_id)).map_err(backend)? {
            Some(bytes) => decode(&bytes),
            None => Ok(Vec::new()),
        }
    }

    pub(super) fn passkey_by_id(&self, id: &str) -> StoreResult<Option<Passkey>> {
        let Some(owner) = self.passkey_ids.get(id.as_bytes()).map_err(backend)? else {
            return Ok(None);
        };
        let Some(user_id) = user_of(&owner) else {
            return Ok(None);
        };
        Ok(self.passkey_list(user_id)?.into_iter().find(|p| p.id == id))
    }

    pub(super) fn insert_passkey(
        &self,
        passkey: &Passkey,
        grant: PasskeyGrant<'_>,
        recovery_hashes: Option<&Vec<String>>,
        now: i64,
    ) -> StoreResult<PasskeyAdded> {
        let user_id = passkey.user_id;
        let created = stamp(now)?;
        // The user's tickets, voided below as a confirmation voids them, whatever grants the
        // passkey (one made after this scan was made against the factors before it).
        let others = self
            .mfa
            .scan_prefix(mfa_key(user_id, b't', &[]))
            .keys()
            .map(|key| key.map(|k| k[9..].to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?;
        let result = (&self.users, &self.tickets, &self.mfa, &self.passkey_ids).transaction(
            |(users, tickets, mfa, ids)| {
                // A user deleted meanwhile gets none (its deletion resets its MFA after).
                if users.get(user_id.to_be_bytes())?.is_none() {
                    return Ok(PasskeyAdded::Refused);
                }
                let has_factor = || -> TxResult<bool> {
                    Ok(tx_other_factor(mfa, user_id)? || mfa.get(marker_key(user_id))?.is_some())
                };
                match grant {
                    PasskeyGrant::Ticket(ticket_id) => {
                        let Some(bytes) = tickets.get(ticket_id.as_bytes())? else {
                            return Ok(PasskeyAdded::Refused);
                        };
                        let ticket: Ticket = tx_decode(&bytes)?;
                        if ticket.used
                            || ticket.expires_at <= now
                            || ticket.user_id != user_id
                            || ticket.kind != FactorKind::Webauthn
                            || (!ticket.second_factor && has_factor()?)
                        {
                            return Ok(PasskeyAdded::Refused);
                        }
                    }
                    PasskeyGrant::SecondFactor => {}
                    PasskeyGrant::FirstFactor => {
                        if has_factor()? {
                            return Ok(PasskeyAdded::Refused);
                        }
                    }
                }
                if ids.get(passkey.id.as_bytes())?.is_some() {
                    return Ok(PasskeyAdded::Duplicate);
                }
                let mut list = tx_list(mfa, user_id)?;
                if list.len() >= MAX_PASSKEYS {
                    return Ok(PasskeyAdded::Full);
                }
                for id in &others {
                    let Some(bytes) = tickets.get(id)? else {
                        continue;
                    };
                    let mut other: Ticket = tx_decode(&bytes)?;
                    if !other.used {
                        other.used = true;
                        tickets.insert(id.as_slice(), tx_encode(&other)?)?;
                    }
                }
                list.push(passkey.clone());
                mfa.insert(list_key(user_id), tx_encode(&list)?)?;
                ids.insert(passkey.id.as_bytes(), &user_id.to_be_bytes())?;
                if mfa.get(marker_key(user_id))?.is_none() {
                    let marker = Factor {
                        v: SCHEMA_VERSION,
                        user_id,
                        kind: FactorKind::Webauthn,
                        sealed_secret: None,
                        destination: None,
                        last_step: None,
                        created: created.clone(),
                    };
                    mfa.insert(marker_key(user_id), tx_encode(&marker)?)?;
                }
                if let Some(hashes) = recovery_hashes {
                    mfa.insert(mfa_key(user_id, b'r', &[]), tx_encode(hashes)?)?;
                }
                Ok(PasskeyAdded::Added)
            },
        );
        unwrap_tx(result)
    }

    /// Applies `change` to the passkey `id` of `user_id` (or of whoever holds it) in one
    /// transaction; `None` when there is no such passkey.
    fn change_passkey<R>(
        &self,
        user_id: Option<u64>,
        id: &str,
        change: impl Fn(&mut Passkey) -> R,
        keep: impl Fn(&R) -> bool,
    ) -> StoreResult<Option<R>> {
        let result = (&self.mfa, &self.passkey_ids).transaction(|(mfa, ids)| {
            let Some(owner) = ids.get(id.as_bytes())? else {
                return Ok(None);
            };
            let Some(owner) = user_of(&owner) else {
                return Ok(None);
            };
            if user_id.is_some_and(|u| u != owner) {
                return Ok(None);
            }
            let mut list = tx_list(mfa, owner)?;
            let Some(passkey) = list.iter_mut().find(|p| p.id == id) else {
                return Ok(None);
            };
            let outcome = change(passkey);
            if keep(&outcome) {
                mfa.insert(list_key(owner), tx_encode(&list)?)?;
            }
            Ok(Some(outcome))
        });
        unwrap_tx(result)
    }

    pub(super) fn record_passkey_use(
        &self,
        id: &str,
        counter: u32,
        credential: &serde_json::Value,
        last_used: &str,
    ) -> StoreResult<bool> {
        let accepted = self.change_passkey(
            None,
            id,
            |p| {
                let forwards = counter > p.counter || (counter == 0 && p.counter == 0);
                if forwards {
                    p.counter = counter;
                    p.credential = credential.clone();
                    p.last_used = Some(last_used.to_owned());
                }
                forwards
            },
            |forwards| *forwards,
        )?;
        Ok(accepted == Some(true))
    }

    pub(super) fn rename(&self, user_id: u64, id: &str, name: &str) -> StoreResult<bool> {
        let renamed =
            self.change_passkey(Some(user_id), id, |p| p.name = name.to_owned(), |()| true)?;
        Ok(renamed.is_some())
    }

    pub(super) fn remove_passkey(
        &self,
        user_id: u64,
        id: &str,
        keep_a_factor: bool,
    ) -> StoreResult<PasskeyRemoved> {
        let result = (&self.mfa, &self.passkey_ids).transaction(|(mfa, ids)| {
            let mut list = tx_list(mfa, user_id)?;
            let Some(at) = list.iter().position(|p| p.id == id) else {
                return Ok(PasskeyRemoved::NotFound);
            };
            if keep_a_factor && list.len() == 1 && !tx_other_factor(mfa, user_id)? {
                return Ok(PasskeyRemoved::LastFactor);
            }
            list.remove(at);
            ids.remove(id.as_bytes())?;
            if list.is_empty() {
                mfa.remove(list_key(user_id))?;
                mfa.remove(marker_key(user_id))?;
            } else {
                mfa.insert(list_key(user_id), tx_encode(&list)?)?;
            }
            Ok(PasskeyRemoved::Removed)
        });
        unwrap_tx(result)
    }

    pub(super) fn insert_ceremony(&self, ceremony: &PasskeyCeremony) -> StoreResult<()> {
        self.passkey_ceremonies
            .insert(ceremony.id_hash.as_bytes(), encode(ceremony)?)
            .map_err(backend)?;
        Ok(())
    }

    /// Removes the ceremony in one atomic step; the record unless it had expired, and whether
    /// anything was removed.
    pub(super) fn remove_ceremony(
        &self,
        id_hash: &str,
        now: i64,
    ) -> StoreResult<(Option<PasskeyCeremony>, bool)> {
        let Some(bytes) = self
            .passkey_ceremonies
            .remove(id_hash.as_bytes())
            .map_err(backend)?
        else {
            return Ok((None, false));
        };
        let ceremony: PasskeyCeremony = decode(&bytes)?;
        Ok(((ceremony.expires > now).then_some(ceremony), true))
    }

    pub(super) fn purge_expired_ceremonies(&self, now: i64) -> StoreResult<u64> {
        let mut purged = 0;
        for entry in self.passkey_ceremonies.iter() {
            let (key, bytes) = entry.map_err(backend)?;
            if decode::<PasskeyCeremony>(&bytes)?.expires > now {
                continue;
            }
            if self
                .passkey_ceremonies
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

/// The user id an index entry holds.
fn user_of(bytes: &[u8]) -> Option<u64> {
    let raw: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(raw))
}
