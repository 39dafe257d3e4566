//! What every authenticated request reads from the database (its user, its session, whether its
//! ApplicationToken is registered), kept in memory for at most `auth.revocation_lag` (SPEC §10),
//! so that a replica on PostgreSQL answers such requests without a query.
//!
//! Staleness is bounded three ways:
//! - every entry expires `auth.revocation_lag` after it was read, whatever else happens;
//! - a change this replica makes drops the entries it touches once it is committed, before the
//!   change is answered;
//! - the change is announced on the `gatehouse_cache` channel (`pg_notify`), and every replica
//!   listening there drops the same entries as the notification arrives, so another replica
//!   usually sees it at once rather than after the lag. The replica that made the change waits
//!   (briefly, [`ECHO_WAIT`] at most) until its own listener hears the announcement back before
//!   the change is answered: by then the database has delivered it to the listening
//!   connections, so the window in which another replica still serves what it kept is mostly
//!   closed before the change's answer reaches anyone. The lag is what is guaranteed. Databases
//!   without `LISTEN`/`NOTIFY` (CockroachDB) keep the first two.
//!
//! Only what was found is kept: an unknown id or session costs a query every time, as it did
//! before, so no client can fill the cache with names it made up. A read that overlaps a change
//! keeps nothing (see [`ReadCache::through`]), so a value read before a commit cannot outlive it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use moka::sync::Cache;
use tokio::sync::oneshot;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::store::{Application, Session, StoreResult, User};

/// The channel changes are announced on.
pub(super) const CHANNEL: &str = "gatehouse_cache";

/// The longest announcement sent as it is (NOTIFY refuses 8000 bytes and more).
pub(super) const MAX_PAYLOAD: usize = 7000;

/// How many users, sessions and application tokens a replica keeps at most (each bound on its
/// own); beyond, the least used entries go and are read again when next needed.
const USERS: u64 = 20_000;
const SESSIONS: u64 = 50_000;
const APPLICATIONS: u64 = 1_000;

/// The longest a change waits for its announcement to come back: it normally takes a round trip
/// to the database; longer means the listening connection is slow or dying, and the lag still
/// bounds what other replicas serve.
const ECHO_WAIT: Duration = Duration::from_millis(200);

/// How long the listener waits before connecting again after losing its connection.
const RECONNECT: Duration = Duration::from_secs(1);

/// How often the listening connection is asked to answer, and how long it has to: half the lag,
/// so that a connection that died without a word stops the cache within about the lag.
fn heartbeat(lag: Duration) -> Duration {
    (lag / 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

fn live_lag(cache: &Weak<ReadCache>) -> Duration {
    cache.upgrade().map_or(Duration::from_secs(1), |c| c.lag)
}

/// A change that makes cached entries stale, as it is announced to the other replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// One user's record changed or went.
    User(u64),
    /// One session changed or ended.
    Session(String),
    /// Sessions were ended by a rule (a user's, a provider's, the expired ones).
    Sessions,
    /// Anything may have changed (a user deleted, a snapshot imported).
    Everything,
}

impl Change {
    /// The notification payload: one line per change.
    fn encode(&self) -> String {
        match self {
            Change::User(id) => format!("u {id}"),
            Change::Session(hash) => format!("s {hash}"),
            Change::Sessions => "S".to_owned(),
            Change::Everything => "*".to_owned(),
        }
    }

    /// A payload line; an unknown one (from a newer replica) is taken as [`Change::Everything`].
    fn decode(line: &str) -> Change {
        match line.split_once(' ') {
            Some(("u", id)) => id.parse().map_or(Change::Everything, Change::User),
            Some(("s", hash)) => Change::Session(hash.to_owned()),
            None if line == "S" => Change::Sessions,
            _ => Change::Everything,
        }
    }

    /// The payload of `changes`.
    pub(super) fn payload(changes: &[Change]) -> String {
        changes
            .iter()
            .map(Change::encode)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The cached reads of one replica.
pub(super) struct ReadCache {
    users: Cache<u64, Arc<User>>,
    sessions: Cache<String, Arc<Session>>,
    applications: Cache<String, Application>,
    /// Bumped before every drop of entries: a read that saw it move did not necessarily read
    /// what the change committed, and keeps nothing.
    changes: AtomicU64,
    /// Held shared while a read checks [`ReadCache::changes`] and keeps what it read, and
    /// exclusively while a change is dropped: the two never interleave.
    turn: RwLock<()>,
    /// Whether the listener is connected and listening.
    listening: AtomicBool,
    /// Whether entries are served only while [`ReadCache::listening`]: on a database that
    /// announces changes, a replica that stopped hearing them (the connection lost, the
    /// database down) reads through until it hears them again, so an outage fails closed at
    /// once.
    needs_listener: bool,
    lag: Duration,
    /// This replica's name in the marks of its announcements ([`Echo`]): random, so that one
    /// replica never takes another's mark for its own.
    replica: u64,
    /// The next mark's number.
    next_mark: AtomicU64,
    /// Announcements of this replica whose return is awaited, by mark number. An entry goes
    /// when it is heard or its [`Echo`] is dropped, so there are never more than changes under
    /// way.
    awaited: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// How many of this replica's announcements came back while awaited.
    heard_back: AtomicU64,
}

/// The line that marks an announcement of replica `replica`, numbered `number`.
fn mark_line(replica: u64, number: u64) -> String {
    format!("h {replica:x}.{number}")
}

/// An announcement on its way: its mark, to be sent with it, and the wait for the listener
/// to hear it back.
pub(super) struct Echo<'c> {
    cache: &'c ReadCache,
    number: u64,
    heard: oneshot::Receiver<()>,
}

impl Echo<'_> {
    /// The line to add to the announcement's payload.
    pub(super) fn line(&self) -> String {
        mark_line(self.cache.replica, self.number)
    }

    /// Waits until the listener has heard the announcement back, or [`ECHO_WAIT`] (at most the
    /// lag) has passed: whether it was heard.
    pub(super) async fn heard(mut self) -> bool {
        let within = self.cache.lag.min(ECHO_WAIT);
        matches!(
            tokio::time::timeout(within, &mut self.heard).await,
            Ok(Ok(()))
        )
    }
}

impl Drop for Echo<'_> {
    fn drop(&mut self) {
        self.cache
            .awaited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.number);
    }
}

impl ReadCache {
    pub(super) fn new(lag: Duration, needs_listener: bool) -> ReadCache {
        fn cache<K, V>(capacity: u64, lag: Duration) -> Cache<K, V>
        where
            K: Hash + Eq + Send + Sync + 'static,
            V: Clone + Send + Sync + 'static,
        {
            Cache::builder()
                .max_capacity(capacity)
                .time_to_live(lag)
                .build()
        }
        ReadCache {
            users: cache(USERS, lag),
            sessions: cache(SESSIONS, lag),
            applications: cache(APPLICATIONS, lag),
            changes: AtomicU64::new(0),
            turn: RwLock::new(()),
            listening: AtomicBool::new(false),
            needs_listener,
            lag,
            replica: {
                let mut bytes = [0u8; 8];
                // Without randomness every replica is 0: marks may then be taken for another
                // replica's, which only ends a wait early.
                let _ =
                    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
                u64::from_le_bytes(bytes)
            },
            next_mark: AtomicU64::new(0),
            awaited: Mutex::new(HashMap::new()),
            heard_back: AtomicU64::new(0),
        }
    }

    /// A mark for an announcement about to be sent, whose return can be awaited; none while
    /// the listener is not listening (nothing would hear it).
    pub(super) fn echo(&self) -> Option<Echo<'_>> {
        if !self.listening.load(Ordering::SeqCst) {
            return None;
        }
        let number = self.next_mark.fetch_add(1, Ordering::SeqCst);
        let (tell, heard) = oneshot::channel();
        self.awaited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(number, tell);
        Some(Echo {
            cache: self,
            number,
            heard,
        })
    }

    /// Whether entries may be served and kept now.
    fn serving(&self) -> bool {
        !self.needs_listener || self.listening.load(Ordering::SeqCst)
    }

    pub(super) async fn user<F>(&self, id: u64, read: F) -> StoreResult<Option<Arc<User>>>
    where
        F: Future<Output = StoreResult<Option<Arc<User>>>>,
    {
        self.through(&self.users, &id, || id, read).await
    }

    pub(super) async fn session<F>(
        &self,
        id_hash: &str,
        read: F,
    ) -> StoreResult<Option<Arc<Session>>>
    where
        F: Future<Output = StoreResult<Option<Arc<Session>>>>,
    {
        self.through(&self.sessions, id_hash, || id_hash.to_owned(), read)
            .await
    }

    pub(super) async fn application<F>(
        &self,
        token_hash: &str,
        read: F,
    ) -> StoreResult<Option<Application>>
    where
        F: Future<Output = StoreResult<Option<Application>>>,
    {
        self.through(
            &self.applications,
            token_hash,
            || token_hash.to_owned(),
            read,
        )
        .await
    }

    /// The cached value of `key`, else what `read` finds, kept when it found something and no
    /// change was dropped while it read. Checking the counter and keeping the value is one
    /// step that a drop (counter moved, entries removed) cannot come between: a value is either
    /// kept before a drop, which then removes it, or not kept at all. Nothing read before a
    /// commit stays, and nothing stale is served even for an instant.
    async fn through<K, Q, V, F>(
        &self,
        cache: &Cache<K, V>,
        key: &Q,
        owned: impl FnOnce() -> K,
        read: F,
    ) -> StoreResult<Option<V>>
    where
        K: Hash + Eq + Send + Sync + 'static + std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone + Send + Sync + 'static,
        F: Future<Output = StoreResult<Option<V>>>,
    {
        if !self.serving() {
            return read.await;
        }
        if let Some(found) = cache.get(key) {
            return Ok(Some(found));
        }
        let before = self.changes.load(Ordering::SeqCst);
        let found = read.await?;
        if let Some(value) = &found
            && self.serving()
        {
            let _turn = self.turn.read().unwrap_or_else(|e| e.into_inner());
            if self.changes.load(Ordering::SeqCst) == before {
                cache.insert(owned(), value.clone());
            }
        }
        Ok(found)
    }

    /// Drops what `changes` make stale.
    pub(super) fn drop_changed(&self, changes: &[Change]) {
        let _turn = self.turn.write().unwrap_or_else(|e| e.into_inner());
        self.changes.fetch_add(1, Ordering::SeqCst);
        for change in changes {
            match change {
                Change::User(id) => self.users.invalidate(id),
                Change::Session(hash) => self.sessions.invalidate(hash),
                Change::Sessions => self.sessions.invalidate_all(),
                Change::Everything => self.drop_everything(),
            }
        }
    }

    fn drop_all(&self) {
        let _turn = self.turn.write().unwrap_or_else(|e| e.into_inner());
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.drop_everything();
    }

    fn drop_everything(&self) {
        self.users.invalidate_all();
        self.sessions.invalidate_all();
        self.applications.invalidate_all();
    }

    /// Drops what a notification's payload names, then tells whoever awaits its mark.
    fn drop_announced(&self, payload: &str) {
        let mut marks = Vec::new();
        let changes: Vec<Change> = payload
            .lines()
            .filter(|l| !l.is_empty())
            .filter(|l| match l.strip_prefix("h ") {
                Some(mark) => {
                    marks.push(mark);
                    false
                }
                None => true,
            })
            .map(Change::decode)
            .collect();
        if !changes.is_empty() {
            self.drop_changed(&changes);
        }
        let own = format!("{:x}.", self.replica);
        for mark in marks {
            let Some(number) = mark.strip_prefix(&own).and_then(|n| n.parse().ok()) else {
                continue;
            };
            let awaited = self
                .awaited
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&number);
            if let Some(tell) = awaited {
                self.heard_back.fetch_add(1, Ordering::SeqCst);
                let _ = tell.send(());
            }
        }
    }

    /// Whether changes of other replicas reach this one as they happen.
    #[cfg(test)]
    pub(super) fn listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// How many of this replica's announcements were heard back while awaited.
    #[cfg(test)]
    pub(super) fn heard_back(&self) -> u64 {
        self.heard_back.load(Ordering::SeqCst)
    }
}

/// Listens for announced changes for as long as `cache` lives, connecting again after a lost
/// connection (everything cached is dropped each time it is listening again: what was announced
/// meanwhile was missed). Ends for good when the database has no `LISTEN`.
pub(super) async fn listen(config: tokio_postgres::Config, tls: bool, cache: Weak<ReadCache>) {
    let mut warned = false;
    loop {
        let result = match tls {
            true => match super::schema::tls() {
                Ok(tls) => listen_once(&config, tls, &cache).await,
                Err(e) => Err(Lost::Unsupported(e.to_string())),
            },
            false => listen_once(&config, NoTls, &cache).await,
        };
        let Some(live) = cache.upgrade() else { return };
        let was_listening = live.listening.swap(false, Ordering::SeqCst);
        // Nothing will hear the announcements under way: their changes need not wait.
        live.awaited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // Nothing kept while nobody listened may be served once somebody does again.
        live.drop_all();
        let needs_listener = live.needs_listener;
        drop(live);
        let meanwhile = match needs_listener {
            true => "users and sessions are read from the database on every request",
            false => "what was read is kept for at most auth.revocation_lag",
        };
        match result {
            Ok(()) => return,
            Err(Lost::Unsupported(why)) => {
                tracing::info!("other replicas' changes cannot be heard ({why}): {meanwhile}");
                return;
            }
            Err(Lost::Connection(why)) => {
                // Once per outage: when it was listening, or at the first failed start.
                if was_listening || !warned {
                    tracing::warn!(
                        "lost the connection that hears other replicas' changes ({why}); until \
                         it is back, {meanwhile}"
                    );
                    warned = true;
                }
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

enum Lost {
    /// The database cannot listen (CockroachDB): no reason to try again.
    Unsupported(String),
    /// The connection failed or ended: try again.
    Connection(String),
}

/// One connection's worth of listening; `Ok` when the cache is gone.
async fn listen_once<T>(
    config: &tokio_postgres::Config,
    tls: T,
    cache: &Weak<ReadCache>,
) -> Result<(), Lost>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config
        .connect(tls)
        .await
        .map_err(|e| Lost::Connection(super::describe(&e).to_string()))?;
    let statement = format!("LISTEN {CHANNEL}");
    {
        let listen = client.batch_execute(&statement);
        tokio::pin!(listen);
        loop {
            tokio::select! {
                done = &mut listen => match done {
                    Ok(()) => break,
                    Err(e) if e.as_db_error().is_some() => {
                        return Err(Lost::Unsupported(super::describe(&e).to_string()));
                    }
                    Err(e) => return Err(Lost::Connection(super::describe(&e).to_string())),
                },
                message = std::future::poll_fn(|cx| connection.poll_message(cx)) => {
                    match message {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            return Err(Lost::Connection(super::describe(&e).to_string()));
                        }
                        None => return Err(Lost::Connection("closed".into())),
                    }
                }
            }
        }
    }
    match cache.upgrade() {
        Some(live) => {
            // Whatever was announced while nobody listened is unknown.
            live.drop_all();
            live.listening.store(true, Ordering::SeqCst);
        }
        None => return Ok(()),
    }
    // A connection can die without a word (a host gone, a network cut): a query on it every
    // `beat`, answered within `beat`, shows it still hears; else it counts as lost.
    let beat = heartbeat(live_lag(cache));
    let mut next_beat = tokio::time::Instant::now() + beat;
    let mut probe: Option<std::pin::Pin<Box<dyn Future<Output = _> + Send + '_>>> = None;
    loop {
        let deadline = next_beat;
        tokio::select! {
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => {
                let Some(live) = cache.upgrade() else {
                    return Ok(());
                };
                match message {
                    Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => {
                        live.drop_announced(n.payload());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        return Err(Lost::Connection(super::describe(&e).to_string()));
                    }
                    None => break,
                }
            }
            answered = async {
                match probe.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            } => {
                probe = None;
                if let Err(e) = answered {
                    return Err(Lost::Connection(super::describe(&e).to_string()));
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                if probe.is_some() {
                    return Err(Lost::Connection("the database stopped answering".into()));
                }
                probe = Some(Box::pin(client.simple_query("")));
                next_beat = tokio::time::Instant::now() + beat;
            }
        }
    }
    drop(probe);
    drop(client);
    Err(Lost::Connection("closed".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn announced_changes_read_back_as_written() {
        let changes = vec![
            Change::User(u64::MAX),
            Change::Session("abc_-".into()),
            Change::Sessions,
            Change::Everything,
        ];
        let payload = Change::payload(&changes);
        let read: Vec<Change> = payload.lines().map(Change::decode).collect();
        assert_eq!(read, changes);
        // A line this version does not know drops everything rather than nothing.
        assert_eq!(Change::decode("x 1"), Change::Everything);
        assert_eq!(Change::decode("u not-a-number"), Change::Everything);
    }

    fn user(id: u64) -> Arc<User> {
        let new = crate::store::NewUser {
            user_name: format!("u{id}"),
            ..Default::default()
        };
        Arc::new(User::new(id, new, "2026-01-01T00:00:00Z"))
    }

    #[tokio::test]
    async fn a_user_is_read_once_until_it_changes() {
        let cache = ReadCache::new(Duration::from_secs(60), false);
        let reads = AtomicU64::new(0);
        let read = || async {
            reads.fetch_add(1, Ordering::SeqCst);
            Ok(Some(user(7)))
        };
        for _ in 0..3 {
            assert!(cache.user(7, read()).await.unwrap().is_some());
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        cache.drop_changed(&[Change::User(7)]);
        cache.user(7, read()).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        cache.drop_announced("u 7\ns x");
        cache.user(7, read()).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_unknown_user_is_not_remembered() {
        let cache = ReadCache::new(Duration::from_secs(60), false);
        let reads = AtomicU64::new(0);
        for _ in 0..3 {
            let found = cache
                .user(9, async {
                    reads.fetch_add(1, Ordering::SeqCst);
                    Ok(None)
                })
                .await
                .unwrap();
            assert!(found.is_none());
        }
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_read_overlapping_a_change_keeps_nothing() {
        let cache = ReadCache::new(Duration::from_secs(60), false);
        // The change is dropped while the read is under way: what it read may predate it.
        let found = cache
            .user(7, async {
                cache.drop_changed(&[Change::User(8)]);
                Ok(Some(user(7)))
            })
            .await
            .unwrap();
        assert!(found.is_some());
        let reads = AtomicU64::new(0);
        cache
            .user(7, async {
                reads.fetch_add(1, Ordering::SeqCst);
                Ok(Some(user(7)))
            })
            .await
            .unwrap();
        assert_eq!(
            reads.load(Ordering::SeqCst),
            1,
            "the overlapping read was kept"
        );
    }

    #[tokio::test]
    async fn nothing_is_served_while_changes_go_unheard() {
        let cache = ReadCache::new(Duration::from_secs(60), true);
        let reads = AtomicU64::new(0);
        let read = || async {
            reads.fetch_add(1, Ordering::SeqCst);
            Ok(Some(user(7)))
        };
        cache.user(7, read()).await.unwrap();
        cache.user(7, read()).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 2, "served without a listener");
        cache.listening.store(true, Ordering::SeqCst);
        cache.user(7, read()).await.unwrap();
        cache.user(7, read()).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_echo_ends_when_its_own_mark_is_heard_and_marks_drop_nothing() {
        let cache = ReadCache::new(Duration::from_millis(300), true);
        assert!(cache.echo().is_none(), "an echo while nothing listens");
        cache.listening.store(true, Ordering::SeqCst);
        let reads = AtomicU64::new(0);
        let read = || async {
            reads.fetch_add(1, Ordering::SeqCst);
            Ok(Some(user(7)))
        };
        cache.user(7, read()).await.unwrap();

        // Its own mark ends it, after the changes beside it are dropped; marks alone drop
        // nothing (user 7 is still kept).
        let echo = cache.echo().unwrap();
        cache.drop_announced(&format!("{}\n{}", mark_line(0, 0), echo.line()));
        assert!(echo.heard().await);
        assert_eq!(cache.heard_back(), 1);
        cache.user(7, read()).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        let echo = cache.echo().unwrap();
        cache.drop_announced(&format!("u 7\n{}", echo.line()));
        assert!(echo.heard().await);
        cache.user(7, read()).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 2);

        // Another replica's mark, or another number of this one's, ends no wait: it gives up
        // after the lag.
        let echo = cache.echo().unwrap();
        let number = echo.number;
        cache.drop_announced(&mark_line(cache.replica ^ 1, number));
        cache.drop_announced(&mark_line(cache.replica, number + 1));
        let started = std::time::Instant::now();
        assert!(!echo.heard().await);
        assert!(started.elapsed() >= ECHO_WAIT);
        assert!(
            cache.awaited.lock().unwrap().is_empty(),
            "a dropped echo stays"
        );
        let next = cache.echo().unwrap();
        assert_ne!(next.number, number, "two echoes share a mark");
    }

    #[tokio::test]
    async fn entries_expire_after_the_lag() {
        let cache = ReadCache::new(Duration::from_millis(50), false);
        let reads = AtomicU64::new(0);
        let read = || async {
            reads.fetch_add(1, Ordering::SeqCst);
            Ok(Some(user(7)))
        };
        cache.user(7, read()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        cache.user(7, read()).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }
}
