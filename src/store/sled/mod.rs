//! The embedded store: sled, one replica. Multi-record changes run in sled transactions;
//! every write is flushed to disk before the call returns.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::{Db, Tree};

use crate::store::{AuditEvent, Session, StoreError, StoreResult, User};

mod codec;
mod impl_store;
mod passkeys;
mod sessions;
#[cfg(test)]
mod tests;

use codec::{backend, decode, encode};

/// Records as last decoded, by key, with the bytes they were decoded from: a read that finds the
/// same bytes stored takes the decoded record instead of decoding them again, and any change of
/// the stored bytes (a write, a rotation) is a miss. Holds at most `LIMIT` records and starts over
/// when full; only records found in the store are kept.
struct Decodes<K, T, const LIMIT: usize>(
    std::sync::Mutex<std::collections::HashMap<K, (sled::IVec, T)>>,
);

impl<K: std::hash::Hash + Eq, T: Clone, const LIMIT: usize> Decodes<K, T, LIMIT> {
    fn new() -> Self {
        Decodes(std::sync::Mutex::default())
    }

    /// The record `bytes` (stored under `key`) decode to.
    fn of<Q>(
        &self,
        key: &Q,
        bytes: sled::IVec,
        decode: impl FnOnce(&[u8]) -> StoreResult<T>,
    ) -> StoreResult<T>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Ok(decoded) = self.0.lock()
            && let Some((seen, record)) = decoded.get(key)
            && *seen == bytes
        {
            return Ok(record.clone());
        }
        let record = decode(&bytes)?;
        if let Ok(mut decoded) = self.0.lock() {
            if decoded.len() >= LIMIT {
                decoded.clear();
            }
            decoded.insert(key.to_owned(), (bytes, record.clone()));
        }
        Ok(record)
    }
}

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
    /// Held while a rotation checks the newest signing key and adds the next one.
    rotating: std::sync::Mutex<()>,
    audit: Tree,
    /// Per-user MFA state under the user id's 8 bytes: `f`+kind factors, `t`+id ticket index,
    /// `c`+purpose codes, `r` recovery codes, `l` lockout, `p` the passkey list.
    mfa: Tree,
    tickets: Tree,
    sends: Tree,
    /// Organisation id ‖ domain id → domain.
    domains: Tree,
    /// Organisation id ‖ name → domain id (a name once per organisation).
    domain_names: Tree,
    /// Verified domain name → the organisation that verified it.
    verified_domains: Tree,
    /// Session id hash → session.
    sessions: Tree,
    /// User id ‖ session id hash → the session's `created` (8 bytes, big-endian).
    user_sessions: Tree,
    /// Provider ‖ sid ‖ session id hash → nothing, for the sessions signed in through an external
    /// provider that sent a session id ([`codec::idp_index_key`]).
    idp_sessions: Tree,
    /// State hash → a sign-in at an external provider in progress.
    login_flows: Tree,
    /// Credential id → the user id (8 bytes, big-endian) whose passkey list holds it.
    passkey_ids: Tree,
    /// Ceremony id hash → a passkey ceremony in progress.
    passkey_ceremonies: Tree,
    /// Group commit: see [`SledStore::durable`].
    commits: Commits,
    /// Users as last decoded, by id: see [`SledStore::shared_user_at`].
    decoded_users: Decodes<[u8; 8], Arc<User>, DECODED_USERS>,
    /// Sessions as last decoded, by id hash (each request with a session cookie reads one).
    decoded_sessions: Decodes<Vec<u8>, Arc<Session>, DECODED_SESSIONS>,
    /// Rotations hold it shared, and sign-outs that look for sessions in an index hold it alone:
    /// sled's scans are no snapshot, and a rotation that committed while one read could move a
    /// session from a key the scan had not reached to one it had passed.
    sign_outs: std::sync::RwLock<()>,
}

/// Attempts at opening a store whose lock is held, 100 ms apart.
const LOCK_TRIES: u32 = 20;

/// Decoded users kept at most; the set starts over when full.
const DECODED_USERS: usize = 4096;

/// Decoded sessions kept at most; the set starts over when full.
const DECODED_SESSIONS: usize = 8192;

/// How many times a flush lets other tasks run while they keep adding writes to it.
const GATHER_ROUNDS: usize = 8;

/// Writes that asked to be durable, and the flush that made them so. Requests that arrive while a
/// flush runs share the next one, so a burst of writes costs one `fsync`, not one each.
#[derive(Default)]
struct Commits {
    /// Tickets handed out: a write takes one after it is applied, then waits for a flush that
    /// covers it.
    requested: std::sync::atomic::AtomicU64,
    /// Held while flushing; holds the highest ticket known to be on disk.
    flushed: tokio::sync::Mutex<u64>,
    /// Flushes run so far.
    flushes: std::sync::atomic::AtomicU64,
}

/// The id of the audit event stored under `key`.
pub(super) fn audit_id(key: &[u8]) -> StoreResult<u64> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Backend("an audit key is not 8 bytes".into()))
}

impl SledStore {
    /// Opens (or creates) the store in `path`. A store whose lock is still held is tried again
    /// for up to two seconds: sled releases its file lock when its last I/O task ends, which can
    /// be a moment after the process or handle that used it has let go.
    ///
    /// The directory is created 0700 before sled writes into it, and sled's own files (which it
    /// creates 0666 less the umask) are made 0600 once open (SPEC §10).
    pub fn open(path: &Path) -> StoreResult<SledStore> {
        crate::private::create_dir(path)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", path.display())))?;
        let mut tries = 0;
        loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => {
                    crate::private::tighten_store(path);
                    return SledStore::from_db(db);
                }
                // sled reports a held lock as an `Other` I/O error with this message.
                Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                    if tries >= LOCK_TRIES {
                        let shown = std::path::absolute(path).unwrap_or_else(|_| path.into());
                        return Err(StoreError::Backend(format!(
                            "the store in {} is in use: another gatehouse process holds its \
                             lock; stop that one first, or give this one another store.path",
                            shown.display()
                        )));
                    }
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(backend(e)),
            }
        }
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
            rotating: std::sync::Mutex::default(),
            audit: tree("audit")?,
            mfa: tree("mfa")?,
            tickets: tree("tickets")?,
            sends: tree("sends")?,
            domains: tree("domains")?,
            domain_names: tree("domain_names")?,
            verified_domains: tree("verified_domains")?,
            sessions: tree("sessions")?,
            user_sessions: tree("user_sessions")?,
            idp_sessions: tree("idp_sessions")?,
            login_flows: tree("login_flows")?,
            passkey_ids: tree("passkey_ids")?,
            passkey_ceremonies: tree("passkey_ceremonies")?,
            commits: Commits::default(),
            decoded_users: Decodes::new(),
            decoded_sessions: Decodes::new(),
            sign_outs: std::sync::RwLock::new(()),
            db,
        })
    }

    /// The signing keys, oldest first.
    fn signing_keys_now(&self) -> StoreResult<Vec<crate::store::SigningKey>> {
        self.signing_keys
            .iter()
            .values()
            .map(|v| decode(&v.map_err(backend)?))
            .collect()
    }

    /// Read-modify-write of one JSON record with compare-and-swap, retried on contention, so
    /// concurrent updates are never lost. `change` returns the new value (`None` deletes) and
    /// a result for the caller.
    fn cas<T, R>(
        &self,
        tree: &Tree,
        key: &[u8],
        change: impl Fn(Option<T>) -> StoreResult<(Option<T>, R)>,
    ) -> StoreResult<R>
    where
        T: Serialize + DeserializeOwned,
    {
        loop {
            let current = tree.get(key).map_err(backend)?;
            let value = match &current {
                Some(bytes) => Some(decode::<T>(bytes)?),
                None => None,
            };
            let (new, result) = change(value)?;
            let new_bytes = match &new {
                Some(v) => Some(encode(v)?),
                None => None,
            };
            match tree
                .compare_and_swap(key, current.as_deref(), new_bytes)
                .map_err(backend)?
            {
                Ok(()) => return Ok(result),
                Err(_) => continue,
            }
        }
    }

    /// Makes every write applied before this call durable. A flush that starts after the write
    /// covers it; when one has already done so while this call waited its turn, nothing more is
    /// flushed. sled 0.34's `flush_async` can deadlock when several flushes are in flight (sled
    /// issue #1308), so one blocking flush at a time runs on the blocking pool instead.
    async fn durable(&self) -> StoreResult<()> {
        use std::sync::atomic::Ordering;
        let ticket = self.commits.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.commits.flushed.lock().await;
        if *flushed >= ticket {
            return Ok(());
        }
        // Let requests that are ready to run apply their writes first, so that this flush covers
        // them too: one flush for a burst rather than one for every few requests.
        let mut seen = self.commits.requested.load(Ordering::SeqCst);
        for _ in 0..GATHER_ROUNDS {
            tokio::task::yield_now().await;
            let now = self.commits.requested.load(Ordering::SeqCst);
            if now == seen {
                break;
            }
            seen = now;
        }
        // Every ticket up to here belongs to a write already applied: this flush covers them all.
        let covers = self.commits.requested.load(Ordering::SeqCst);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(backend)?
            .map_err(backend)?;
        *flushed = covers;
        self.commits.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The user stored under `key` (its id's bytes). Every call reads the store; decoding, the
    /// costly part of an authenticated request, is skipped when the stored bytes are those
    /// decoded last time.
    fn user_at(&self, key: &[u8]) -> StoreResult<Option<User>> {
        Ok(self.shared_user_at(key)?.map(Arc::unwrap_or_clone))
    }

    /// The user stored under `key`, decoded again only when its stored bytes changed since
    /// the last time; the decoded record is shared, not copied.
    fn shared_user_at(&self, key: &[u8]) -> StoreResult<Option<Arc<User>>> {
        let Some(bytes) = self.users.get(key).map_err(backend)? else {
            return Ok(None);
        };
        let Ok(id) = <[u8; 8]>::try_from(key) else {
            return decode(&bytes).map(|user| Some(Arc::new(user)));
        };
        self.decoded_users
            .of(&id, bytes, |bytes| decode(bytes).map(Arc::new))
            .map(Some)
    }

    /// Removes every WS access key bound to the user (durable with the next flush); how many.
    fn remove_user_ws_keys(&self, user_id: u64) -> StoreResult<u64> {
        let mut removed = 0;
        for entry in self.ws_keys.iter() {
            let (k, bytes) = entry.map_err(backend)?;
            if decode::<crate::store::WsKey>(&bytes)?.user_id == user_id
                && self.ws_keys.remove(k).map_err(backend)?.is_some()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Adds an audit event; durable with the next flush.
    fn insert_audit(&self, event: &AuditEvent) -> StoreResult<()> {
        let id = self.db.generate_id().map_err(backend)?;
        let event = AuditEvent {
            id: None,
            ..event.clone()
        };
        self.audit
            .insert(id.to_be_bytes(), encode(&event)?)
            .map_err(backend)?;
        Ok(())
    }
}
