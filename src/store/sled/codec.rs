//! How records are keyed and encoded in sled's trees, inside and outside transactions.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use crate::store::{FactorKind, StoreError, StoreResult, User};

pub(super) fn domain_name_key(organization_id: i64, name: &str) -> Vec<u8> {
    let mut key = organization_id.to_be_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

pub(super) fn domain_key(organization_id: i64, domain_id: i64) -> Vec<u8> {
    let mut key = organization_id.to_be_bytes().to_vec();
    key.extend_from_slice(&domain_id.to_be_bytes());
    key
}

pub(super) fn mfa_key(user_id: u64, tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = user_id.to_be_bytes().to_vec();
    key.push(tag);
    key.extend_from_slice(rest);
    key
}

/// A user's session in the `user_sessions` index: the user id's 8 bytes, then the id hash.
pub(super) fn session_index_key(user_id: u64, id_hash: &str) -> Vec<u8> {
    let mut key = user_id.to_be_bytes().to_vec();
    key.extend_from_slice(id_hash.as_bytes());
    key
}

/// Where `idp_sessions` lists the sessions signed in through `provider` with the provider's
/// session id `sid`: each part preceded by its length (4 bytes, big-endian), so that no provider
/// and sid run into another pair's. The session's id hash follows this prefix in the key.
pub(super) fn idp_index_prefix(provider: &str, sid: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + provider.len() + sid.len() + 64);
    for part in [provider, sid] {
        key.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

/// A session's entry in the `idp_sessions` index: [`idp_index_prefix`], then the id hash.
pub(super) fn idp_index_key(provider: &str, sid: &str, id_hash: &str) -> Vec<u8> {
    let mut key = idp_index_prefix(provider, sid);
    key.extend_from_slice(id_hash.as_bytes());
    key
}

/// Every kind of factor: the keys a transaction names when it must see all of a user's factors.
pub(super) const FACTOR_KINDS: [FactorKind; 4] = [
    FactorKind::Otp,
    FactorKind::Sms,
    FactorKind::Email,
    FactorKind::Webauthn,
];

pub(super) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(super) fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(backend)
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(backend)
}

pub(super) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

pub(super) fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

pub(super) fn tx_encode<T: Serialize>(value: &T) -> TxResult<Vec<u8>> {
    encode(value).or_else(abort)
}

pub(super) fn tx_decode<T: DeserializeOwned>(bytes: &[u8]) -> TxResult<T> {
    decode(bytes).or_else(abort)
}

pub(super) fn unwrap_tx<T>(result: Result<T, TransactionError<StoreError>>) -> StoreResult<T> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    })
}

pub(super) fn name_key(user_name: &str) -> Vec<u8> {
    user_name.to_lowercase().into_bytes()
}

pub(super) fn external_key(issuer: &str, subject: &str) -> Vec<u8> {
    let mut key = issuer.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(subject.as_bytes());
    key
}

/// Reads a user through its name index inside a transaction.
pub(super) fn tx_user_by_name(
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
