//! The embedded store: sled, one replica. Multi-record changes run in sled transactions;
//! every write is flushed to disk before the call returns.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Db, Transactional, Tree};

use super::{
    Application, AuditEvent, CodeLogin, Domain, Factor, FactorKind, Membership, NewUser,
    OPT_IN_PREFIX, OobCode, Organization, SigningKey, Snapshot, Store, StoreError, StoreResult,
    Ticket, User, UserPatch, WsKey,
};
use crate::mfa::lockout::{LockoutState, Policy, Reservation};

/// A user record as last decoded, with the stored bytes it was decoded from.
type Decoded = (sled::IVec, Arc<User>);

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
    /// Per-user MFA state under the user id's 8 bytes: `f`+kind factors, `t`+id ticket index,
    /// `c`+purpose codes, `r` recovery codes, `l` lockout.
    mfa: Tree,
    tickets: Tree,
    sends: Tree,
    /// Organisation id ‖ domain id → domain.
    domains: Tree,
    /// Organisation id ‖ name → domain id (a name once per organisation).
    domain_names: Tree,
    /// Verified domain name → the organisation that verified it.
    verified_domains: Tree,
    /// Group commit: see [`SledStore::durable`].
    commits: Commits,
    /// Users as last decoded, by id, with the bytes they were decoded from: see
    /// [`SledStore::user_at`].
    decoded_users: std::sync::Mutex<std::collections::HashMap<[u8; 8], Decoded>>,
}

/// Attempts at opening a store whose lock is held, 100 ms apart.
const LOCK_TRIES: u32 = 20;

/// Decoded users kept at most; the set starts over when full.
const DECODED_USERS: usize = 4096;

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

fn domain_name_key(organization_id: i64, name: &str) -> Vec<u8> {
    let mut key = organization_id.to_be_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

fn domain_key(organization_id: i64, domain_id: i64) -> Vec<u8> {
    let mut key = organization_id.to_be_bytes().to_vec();
    key.extend_from_slice(&domain_id.to_be_bytes());
    key
}

fn mfa_key(user_id: u64, tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = user_id.to_be_bytes().to_vec();
    key.push(tag);
    key.extend_from_slice(rest);
    key
}

/// Every kind of factor: the keys a transaction names when it must see all of a user's factors.
const FACTOR_KINDS: [FactorKind; 3] = [FactorKind::Otp, FactorKind::Sms, FactorKind::Email];

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
            audit: tree("audit")?,
            mfa: tree("mfa")?,
            tickets: tree("tickets")?,
            sends: tree("sends")?,
            domains: tree("domains")?,
            domain_names: tree("domain_names")?,
            verified_domains: tree("verified_domains")?,
            commits: Commits::default(),
            decoded_users: std::sync::Mutex::default(),
            db,
        })
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
        if let Ok(decoded) = self.decoded_users.lock()
            && let Some((seen, user)) = decoded.get(&id)
            && *seen == bytes
        {
            return Ok(Some(user.clone()));
        }
        let user: Arc<User> = Arc::new(decode(&bytes)?);
        if let Ok(mut decoded) = self.decoded_users.lock() {
            if decoded.len() >= DECODED_USERS {
                decoded.clear();
            }
            decoded.insert(id, (bytes, user.clone()));
        }
        Ok(Some(user))
    }

    /// Adds an audit event; durable with the next flush.
    fn insert_audit(&self, event: &AuditEvent) -> StoreResult<()> {
        let id = self.db.generate_id().map_err(backend)?;
        self.audit
            .insert(id.to_be_bytes(), encode(event)?)
            .map_err(backend)?;
        Ok(())
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
        let user = User::new(id, new, now);
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
            Some(id) => self.user_at(&id),
            None => Ok(None),
        }
    }

    async fn user_by_id(&self, id: u64) -> StoreResult<Option<User>> {
        self.user_at(&id.to_be_bytes())
    }

    async fn shared_user_by_id(&self, id: u64) -> StoreResult<Option<Arc<User>>> {
        self.shared_user_at(&id.to_be_bytes())
    }

    async fn user_by_external(&self, issuer: &str, subject: &str) -> StoreResult<Option<User>> {
        match self
            .user_external
            .get(external_key(issuer, subject))
            .map_err(backend)?
        {
            Some(id) => self.user_at(&id),
            None => Ok(None),
        }
    }

    async fn update_user(&self, user_name: &str, patch: UserPatch, now: &str) -> StoreResult<User> {
        self.modify_user(user_name, now, |user| {
            patch.clone().apply(user);
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
        let keys = self
            .mfa
            .scan_prefix(user_id.to_be_bytes())
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?;
        // One transaction, which also names every key a confirmation writes (factors, recovery
        // codes): a confirmation running meanwhile either lands before the reset (and is
        // removed) or finds its ticket gone.
        let result = (&self.tickets, &self.mfa).transaction(|(tickets, mfa)| {
            for key in &keys {
                if key.get(8) == Some(&b't') {
                    tickets.remove(&key[9..])?;
                }
                mfa.remove(key)?;
            }
            for kind in FACTOR_KINDS {
                mfa.remove(mfa_key(user_id, b'f', &[kind.tag()]))?;
            }
            mfa.remove(mfa_key(user_id, b'r', &[]))?;
            Ok(())
        });
        unwrap_tx(result)?;
        self.durable().await
    }

    async fn create_ticket(&self, ticket: Ticket) -> StoreResult<()> {
        let result = (&self.tickets, &self.mfa).transaction(|(tickets, mfa)| {
            tickets.insert(ticket.id.as_bytes(), tx_encode(&ticket)?)?;
            mfa.insert(
                mfa_key(ticket.user_id, b't', ticket.id.as_bytes()),
                &ticket.created_at.to_be_bytes(),
            )?;
            Ok(())
        });
        unwrap_tx(result)?;
        self.durable().await
    }

    async fn ticket(&self, id: &str) -> StoreResult<Option<Ticket>> {
        match self.tickets.get(id).map_err(backend)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn newest_pending_ticket(&self, user_id: u64, now: i64) -> StoreResult<Option<Ticket>> {
        let mut newest: Option<Ticket> = None;
        for key in self.mfa.scan_prefix(mfa_key(user_id, b't', &[])).keys() {
            let key = key.map_err(backend)?;
            let Some(bytes) = self.tickets.get(&key[9..]).map_err(backend)? else {
                continue;
            };
            let ticket: Ticket = decode(&bytes)?;
            if ticket.used || ticket.expires_at <= now || ticket.id.starts_with(OPT_IN_PREFIX) {
                continue;
            }
            if newest
                .as_ref()
                .is_none_or(|n| ticket.created_at >= n.created_at)
            {
                newest = Some(ticket);
            }
        }
        Ok(newest)
    }

    async fn confirm_ticket(
        &self,
        ticket_id: &str,
        factor: Factor,
        recovery_hashes: Option<Vec<String>>,
        now: i64,
    ) -> StoreResult<bool> {
        // The user's other tickets, voided below. One made after this scan was made against the
        // factors before this confirmation, so the rule checked at its own confirmation holds.
        let others = self
            .mfa
            .scan_prefix(mfa_key(factor.user_id, b't', &[]))
            .keys()
            .map(|key| key.map(|k| k[9..].to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?;
        let result = (&self.tickets, &self.mfa).transaction(|(tickets, mfa)| {
            let Some(bytes) = tickets.get(ticket_id.as_bytes())? else {
                return Ok(false);
            };
            let mut ticket: Ticket = tx_decode(&bytes)?;
            if ticket.used || ticket.expires_at <= now || ticket.user_id != factor.user_id {
                return Ok(false);
            }
            if !ticket.second_factor {
                for kind in FACTOR_KINDS {
                    if mfa
                        .get(mfa_key(factor.user_id, b'f', &[kind.tag()]))?
                        .is_some()
                    {
                        return Ok(false);
                    }
                }
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
            ticket.used = true;
            tickets.insert(ticket_id.as_bytes(), tx_encode(&ticket)?)?;
            mfa.insert(
                mfa_key(factor.user_id, b'f', &[factor.kind.tag()]),
                tx_encode(&factor)?,
            )?;
            if let Some(hashes) = &recovery_hashes {
                mfa.insert(mfa_key(factor.user_id, b'r', &[]), tx_encode(hashes)?)?;
            }
            Ok(true)
        });
        let confirmed = unwrap_tx(result)?;
        self.durable().await?;
        Ok(confirmed)
    }

    async fn factors(&self, user_id: u64) -> StoreResult<Vec<Factor>> {
        self.mfa
            .scan_prefix(mfa_key(user_id, b'f', &[]))
            .values()
            .map(|v| decode(&v.map_err(backend)?))
            .collect()
    }

    async fn accept_totp_step(&self, user_id: u64, step: u64) -> StoreResult<bool> {
        let key = mfa_key(user_id, b'f', &[FactorKind::Otp.tag()]);
        let accepted = self.cas(&self.mfa, &key, |factor: Option<Factor>| match factor {
            Some(mut f) if f.last_step.is_none_or(|last| step > last) => {
                f.last_step = Some(step);
                Ok((Some(f), true))
            }
            other => Ok((other, false)),
        })?;
        self.durable().await?;
        Ok(accepted)
    }

    async fn put_code(&self, code: OobCode) -> StoreResult<()> {
        self.mfa
            .insert(
                mfa_key(code.user_id, b'c', code.purpose.as_bytes()),
                encode(&code)?,
            )
            .map_err(backend)?;
        self.durable().await
    }

    async fn consume_code(
        &self,
        user_id: u64,
        purpose: &str,
        code_hash: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let key = mfa_key(user_id, b'c', purpose.as_bytes());
        let consumed = self.cas(&self.mfa, &key, |code: Option<OobCode>| match code {
            Some(c) if c.expires_at > now && crate::secrets::same(&c.code_hash, code_hash) => {
                Ok((None, true))
            }
            other => Ok((other, false)),
        })?;
        self.durable().await?;
        Ok(consumed)
    }

    async fn login_with_code(
        &self,
        user_id: u64,
        purpose: &str,
        code_hash: &str,
        now: i64,
        login_time: &str,
        event: &AuditEvent,
    ) -> StoreResult<CodeLogin> {
        // Not a sled transaction: sled writes and syncs its log buffer twice for every
        // transaction, which on this path cost more than all the rest. The writes go in an order
        // a crash cannot make unsafe instead. sled recovers a prefix of its log, so a crash before
        // the answer leaves at most the code consumed and nothing else changed (the caller, who
        // saw no answer, asks for a new code); never a login recorded with the code still usable.
        let code_key = mfa_key(user_id, b'c', purpose.as_bytes());
        let Some(stored) = self.mfa.get(&code_key).map_err(backend)? else {
            return Ok(CodeLogin::Wrong);
        };
        let code: OobCode = decode(&stored)?;
        if !crate::secrets::same(&code.code_hash, code_hash) {
            return Ok(CodeLogin::Wrong);
        }
        if code.expires_at <= now {
            return Ok(CodeLogin::Expired);
        }
        // Of concurrent logins with this code, only one removes it; a code replaced meanwhile is
        // no longer the one presented.
        if self
            .mfa
            .compare_and_swap(&code_key, Some(stored), None::<&[u8]>)
            .map_err(backend)?
            .is_err()
        {
            return Ok(CodeLogin::Wrong);
        }
        let user = self.cas(&self.users, &user_id.to_be_bytes(), |user: Option<User>| {
            let Some(mut user) = user else {
                return Err(StoreError::NotFound(format!("user {user_id}")));
            };
            user.last_login_timestamp = Some(login_time.to_owned());
            user.modified = login_time.to_owned();
            Ok((Some(user.clone()), user))
        })?;
        let lockout_key = mfa_key(user_id, b'l', &[]);
        if self.mfa.contains_key(&lockout_key).map_err(backend)? {
            self.mfa.remove(lockout_key).map_err(backend)?;
        }
        self.insert_audit(event)?;
        self.durable().await?;
        Ok(CodeLogin::Accepted(Box::new(user)))
    }

    async fn replace_recovery_codes(&self, user_id: u64, hashes: Vec<String>) -> StoreResult<()> {
        self.mfa
            .insert(mfa_key(user_id, b'r', &[]), encode(&hashes)?)
            .map_err(backend)?;
        self.durable().await
    }

    async fn consume_recovery_code(&self, user_id: u64, hash: &str) -> StoreResult<bool> {
        let key = mfa_key(user_id, b'r', &[]);
        let consumed = self.cas(&self.mfa, &key, |codes: Option<Vec<String>>| {
            let mut codes = codes.unwrap_or_default();
            match codes.iter().position(|c| crate::secrets::same(c, hash)) {
                Some(i) => {
                    codes.remove(i);
                    Ok((Some(codes), true))
                }
                None => Ok((Some(codes), false)),
            }
        })?;
        self.durable().await?;
        Ok(consumed)
    }

    async fn lockout(&self, user_id: u64) -> StoreResult<LockoutState> {
        match self.mfa.get(mfa_key(user_id, b'l', &[])).map_err(backend)? {
            Some(bytes) => decode(&bytes),
            None => Ok(LockoutState::default()),
        }
    }

    async fn reserve_attempt(
        &self,
        user_id: u64,
        now: i64,
        policy: Policy,
    ) -> StoreResult<Reservation> {
        // Not flushed here (see the trait): a success clears the record and flushes, a failure
        // is flushed before it is answered.
        let key = mfa_key(user_id, b'l', &[]);
        self.cas(&self.mfa, &key, |state: Option<LockoutState>| {
            let mut state = state.unwrap_or_default();
            let reservation = state.reserve(now, policy);
            Ok((Some(state), reservation))
        })
    }

    async fn clear_failures(&self, user_id: u64) -> StoreResult<()> {
        self.mfa
            .remove(mfa_key(user_id, b'l', &[]))
            .map_err(backend)?;
        self.durable().await
    }

    async fn count_send(&self, key: &str, now: i64, window: i64, limit: u32) -> StoreResult<bool> {
        let allowed = self.cas(&self.sends, key.as_bytes(), |sent: Option<Vec<i64>>| {
            let mut sent = sent.unwrap_or_default();
            sent.retain(|t| now - t < window);
            if sent.len() >= limit as usize {
                return Ok((Some(sent), false));
            }
            sent.push(now);
            Ok((Some(sent), true))
        })?;
        self.durable().await?;
        Ok(allowed)
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

    async fn create_domain(&self, mut domain: Domain) -> StoreResult<Domain> {
        // Domain ids are int32 on the wire (seed 002).
        let id = self.db.generate_id().map_err(backend)? % u64::from(i32::MAX as u32) + 1;
        domain.domain_id = i64::try_from(id).map_err(backend)?;
        let result = (&self.domains, &self.domain_names, &self.verified_domains).transaction(
            |(domains, names, verified)| {
                if let Some(owner) = verified.get(domain.domain.as_bytes())?
                    && owner.as_ref() != domain.organization_id.to_be_bytes()
                {
                    return abort(StoreError::Conflict(format!(
                        "domain {} (verified by another organization)",
                        domain.domain
                    )));
                }
                let name = domain_name_key(domain.organization_id, &domain.domain);
                if names.get(&name)?.is_some() {
                    return abort(StoreError::Conflict(format!("domain {}", domain.domain)));
                }
                names.insert(name, &domain.domain_id.to_be_bytes())?;
                domains.insert(
                    domain_key(domain.organization_id, domain.domain_id),
                    tx_encode(&domain)?,
                )?;
                Ok(())
            },
        );
        unwrap_tx(result)?;
        self.durable().await?;
        Ok(domain)
    }

    async fn domains(&self, organization_id: i64) -> StoreResult<Vec<Domain>> {
        self.domains
            .scan_prefix(organization_id.to_be_bytes())
            .values()
            .map(|v| decode(&v.map_err(backend)?))
            .collect()
    }

    async fn domain(&self, organization_id: i64, domain_id: i64) -> StoreResult<Option<Domain>> {
        match self
            .domains
            .get(domain_key(organization_id, domain_id))
            .map_err(backend)?
        {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn save_domain(&self, domain: Domain) -> StoreResult<()> {
        let result = (&self.domains, &self.verified_domains).transaction(|(domains, verified)| {
            let key = domain_key(domain.organization_id, domain.domain_id);
            if domains.get(&key)?.is_none() {
                return abort(StoreError::NotFound(format!("domain {}", domain.domain_id)));
            }
            if domain.is_verified {
                let org = domain.organization_id.to_be_bytes();
                match verified.get(domain.domain.as_bytes())? {
                    Some(owner) if owner.as_ref() != org => {
                        return abort(StoreError::Conflict(format!(
                            "domain {} (verified by another organization)",
                            domain.domain
                        )));
                    }
                    _ => {
                        verified.insert(domain.domain.as_bytes(), &org)?;
                    }
                }
            }
            domains.insert(key, tx_encode(&domain)?)?;
            Ok(())
        });
        unwrap_tx(result)?;
        self.durable().await
    }

    async fn delete_domain(&self, organization_id: i64, domain_id: i64) -> StoreResult<bool> {
        let result = (&self.domains, &self.domain_names, &self.verified_domains).transaction(
            |(domains, names, verified)| {
                let Some(bytes) = domains.remove(domain_key(organization_id, domain_id))? else {
                    return Ok(false);
                };
                let domain: Domain = tx_decode(&bytes)?;
                names.remove(domain_name_key(organization_id, &domain.domain))?;
                let org = organization_id.to_be_bytes();
                if verified.get(domain.domain.as_bytes())?.as_deref() == Some(&org[..]) {
                    verified.remove(domain.domain.as_bytes())?;
                }
                Ok(true)
            },
        );
        let deleted = unwrap_tx(result)?;
        self.durable().await?;
        Ok(deleted)
    }

    async fn list_users(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<User>> {
        use std::ops::Bound;
        let start = match after {
            Some(name) => Bound::Excluded(name_key(name)),
            None => Bound::Unbounded,
        };
        let mut users = Vec::new();
        for entry in self
            .user_names
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .values()
        {
            if users.len() >= limit {
                break;
            }
            // An index entry whose user is gone (never left by a committed change) is skipped.
            if let Some(user) = self.user_at(&entry.map_err(backend)?)? {
                users.push(user);
            }
        }
        Ok(users)
    }

    async fn append_audit(&self, event: AuditEvent) -> StoreResult<()> {
        self.insert_audit(&event)?;
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

    async fn export(&self) -> StoreResult<Snapshot> {
        fn all<T: DeserializeOwned>(tree: &Tree) -> StoreResult<Vec<T>> {
            tree.iter()
                .values()
                .map(|v| decode(&v.map_err(backend)?))
                .collect()
        }
        let mut snapshot = Snapshot {
            users: all(&self.users)?,
            applications: all(&self.applications)?,
            organizations: all(&self.organizations)?,
            ws_keys: all(&self.ws_keys)?,
            signing_keys: all(&self.signing_keys)?,
            tickets: all(&self.tickets)?,
            domains: all(&self.domains)?,
            audit: all(&self.audit)?,
            ..Snapshot::default()
        };
        for entry in self.mfa.iter() {
            let (key, value) = entry.map_err(backend)?;
            let (Some(id), Some(tag)) = (key.get(..8), key.get(8)) else {
                continue;
            };
            let mut raw = [0u8; 8];
            raw.copy_from_slice(id);
            let user_id = u64::from_be_bytes(raw);
            match tag {
                b'f' => snapshot.factors.push(decode(&value)?),
                b'c' => snapshot.codes.push(decode(&value)?),
                b'r' => snapshot.recovery_codes.push((user_id, decode(&value)?)),
                b'l' => snapshot.lockouts.push((user_id, decode(&value)?)),
                // `t`: the ticket index, rebuilt from the tickets themselves.
                _ => {}
            }
        }
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::store::Role;
    use crate::store::SCHEMA_VERSION;

    const NOW: &str = "2026-01-01T00:00:00Z";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_durable_writes_share_flushes_and_all_reach_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let writes = 64;
        let tasks: Vec<_> = (0..writes)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .append_audit(AuditEvent {
                            time: NOW.into(),
                            event: format!("e{i}"),
                            user_name: None,
                            detail: None,
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let flushes = store
            .commits
            .flushes
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            (1..writes).contains(&flushes),
            "{flushes} flushes for {writes} concurrent writes"
        );
        drop(store);
        let reopened = SledStore::open(dir.path()).unwrap();
        assert_eq!(reopened.audit(1000).await.unwrap().len(), writes as usize);
    }

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

    #[test]
    fn a_store_released_a_moment_later_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledStore::open(dir.path()).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        let second = SledStore::open(dir.path());
        release.join().unwrap();
        assert!(second.is_ok(), "{:?}", second.err());
    }

    #[tokio::test]
    async fn a_user_read_again_after_a_change_is_the_changed_user() {
        let store = SledStore::temporary().unwrap();
        let ada = store.create_user(new_user("ada"), NOW).await.unwrap();
        for _ in 0..2 {
            assert_eq!(store.user_by_id(ada.id).await.unwrap(), Some(ada.clone()));
        }
        let patch = UserPatch {
            scopes: Some(vec!["reports".into()]),
            ..UserPatch::default()
        };
        let changed = store.update_user("ada", patch, NOW).await.unwrap();
        assert_eq!(changed.scopes, ["reports"]);
        assert_eq!(
            store.user_by_id(ada.id).await.unwrap(),
            Some(changed.clone())
        );
        assert_eq!(store.user_by_name("ADA").await.unwrap(), Some(changed));
        assert!(store.delete_user("ada").await.unwrap());
        assert_eq!(store.user_by_id(ada.id).await.unwrap(), None);
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

    fn factor(user_id: u64) -> Factor {
        Factor {
            v: SCHEMA_VERSION,
            user_id,
            kind: FactorKind::Otp,
            sealed_secret: Some(vec![1, 2, 3]),
            destination: None,
            last_step: None,
            created: NOW.into(),
        }
    }

    fn ticket(id: &str, user_id: u64, created_at: i64) -> Ticket {
        Ticket {
            v: SCHEMA_VERSION,
            id: id.into(),
            user_id,
            kind: FactorKind::Otp,
            sealed_secret: None,
            destination: None,
            created_at,
            expires_at: created_at + 100,
            used: false,
            second_factor: false,
        }
    }

    #[tokio::test]
    async fn a_ticket_confirms_once_and_not_after_expiry() {
        let store = SledStore::temporary().unwrap();
        store.create_ticket(ticket("t1", 1, 1000)).await.unwrap();
        store.create_ticket(ticket("t2", 1, 1001)).await.unwrap();
        assert_eq!(
            store
                .newest_pending_ticket(1, 1050)
                .await
                .unwrap()
                .unwrap()
                .id,
            "t2"
        );
        assert!(
            store
                .confirm_ticket("t2", factor(1), Some(vec!["h".into()]), 1050)
                .await
                .unwrap()
        );
        assert!(
            !store
                .confirm_ticket("t2", factor(1), None, 1050)
                .await
                .unwrap()
        );
        assert!(
            !store
                .confirm_ticket("t1", factor(1), None, 1100)
                .await
                .unwrap(),
            "expired"
        );
        assert!(
            !store
                .confirm_ticket("t1", factor(2), None, 1050)
                .await
                .unwrap(),
            "other user"
        );
        // Confirming t2 voided t1: it was made against the factors before.
        assert!(
            store
                .newest_pending_ticket(1, 1050)
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.ticket("t1").await.unwrap().unwrap().used);
        assert_eq!(store.factors(1).await.unwrap().len(), 1);
        assert!(store.consume_recovery_code(1, "h").await.unwrap());
        assert!(!store.consume_recovery_code(1, "h").await.unwrap());
        store.reset_mfa(1).await.unwrap();
        assert!(store.factors(1).await.unwrap().is_empty());
        assert!(store.ticket("t1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_totp_step_is_accepted_once_even_concurrently() {
        let store = std::sync::Arc::new(SledStore::temporary().unwrap());
        store.create_ticket(ticket("t", 1, 1000)).await.unwrap();
        store
            .confirm_ticket("t", factor(1), None, 1000)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.accept_totp_step(1, 42).await.unwrap()
            }));
        }
        let mut accepted = 0;
        for t in tasks {
            accepted += usize::from(t.await.unwrap());
        }
        assert_eq!(accepted, 1);
        assert!(!store.accept_totp_step(1, 41).await.unwrap());
        assert!(store.accept_totp_step(1, 43).await.unwrap());
    }

    #[tokio::test]
    async fn concurrent_reservations_grant_at_most_max_failures() {
        let store = std::sync::Arc::new(SledStore::temporary().unwrap());
        let policy = Policy {
            max_failures: 5,
            window: 300,
            duration: 900,
        };
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.reserve_attempt(1, 1000, policy).await.unwrap()
            }));
        }
        let mut granted = 0;
        for t in tasks {
            granted += usize::from(matches!(t.await.unwrap(), Reservation::Granted { .. }));
        }
        assert_eq!(granted, 5);
        let state = store.lockout(1).await.unwrap();
        assert_eq!(state.failures.len(), 5);
        assert_eq!(state.retry_after(1000), Some(900));
    }

    #[tokio::test]
    async fn a_code_is_consumed_once_and_only_before_expiry() {
        let store = SledStore::temporary().unwrap();
        let code = OobCode {
            v: SCHEMA_VERSION,
            user_id: 1,
            purpose: "verify:sms".into(),
            code_hash: "abc".into(),
            expires_at: 2000,
        };
        store.put_code(code.clone()).await.unwrap();
        assert!(
            !store
                .consume_code(1, "verify:sms", "abd", 1000)
                .await
                .unwrap()
        );
        assert!(
            store
                .consume_code(1, "verify:sms", "abc", 1000)
                .await
                .unwrap()
        );
        assert!(
            !store
                .consume_code(1, "verify:sms", "abc", 1000)
                .await
                .unwrap()
        );
        store.put_code(code).await.unwrap();
        assert!(
            !store
                .consume_code(1, "verify:sms", "abc", 2000)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn sends_are_limited_within_the_window() {
        let store = SledStore::temporary().unwrap();
        for _ in 0..3 {
            assert!(store.count_send("u1", 1000, 60, 3).await.unwrap());
        }
        assert!(!store.count_send("u1", 1030, 60, 3).await.unwrap());
        assert!(store.count_send("u1", 1061, 60, 3).await.unwrap());
    }
}
