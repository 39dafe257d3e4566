#![allow(clippy::unwrap_used, clippy::panic)]
use super::*;
use crate::store::{
    Factor, FactorKind, Membership, NewUser, OobCode, Organization, Role, SCHEMA_VERSION, Store,
    Ticket, UserPatch, WsKey,
};

const NOW: &str = "2026-01-01T00:00:00Z";
/// [`NOW`] in Unix seconds.
const NOW_UNIX: i64 = 1_767_225_600;

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
                        ..Default::default()
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
    let ada = store.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    for _ in 0..2 {
        assert_eq!(store.user_by_id(ada.id).await.unwrap(), Some(ada.clone()));
    }
    let patch = UserPatch {
        scopes: Some(vec!["reports".into()]),
        ..UserPatch::default()
    };
    let changed = store.update_user("ada", patch, NOW_UNIX).await.unwrap();
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
async fn memberships_need_an_existing_organization() {
    let store = SledStore::temporary().unwrap();
    store.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    let m = Membership {
        organization_id: 7,
        role: Role::Admin,
    };
    assert!(matches!(
        store.set_membership("ada", m, NOW_UNIX).await,
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
    let user = store.set_membership("ada", m, NOW_UNIX).await.unwrap();
    assert_eq!(user.memberships, vec![m]);
}

#[tokio::test]
async fn deleting_a_user_removes_its_keys() {
    let store = SledStore::temporary().unwrap();
    let user = store.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
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
        store.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
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

fn linked_session(n: u64, user_id: u64, sid: &str) -> crate::store::Session {
    crate::store::Session {
        id_hash: format!("{n:064x}"),
        user_id,
        methods: Vec::new(),
        created: 1000 + n as i64,
        last_seen: 1000 + n as i64,
        expires: 5000,
        idp: Some(crate::store::IdpLink {
            provider: "corp".into(),
            sid: Some(sid.into()),
        }),
    }
}

/// The provider index lists only stored sessions: whichever way a session ends (deletion,
/// rotation, the per-user cap, purging, signing out everywhere, the user's deletion), its entry
/// goes with it.
#[tokio::test]
async fn every_way_a_session_ends_takes_its_provider_index_entry_along() {
    let store = SledStore::temporary().unwrap();
    let ada = store.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    let bob = store.create_user(new_user("bob"), NOW_UNIX).await.unwrap();
    let entries = |store: &SledStore| store.idp_sessions.len();

    store
        .create_session(linked_session(1, ada.id, "a"), 20)
        .await
        .unwrap();
    assert_eq!(entries(&store), 1);
    assert!(store.delete_session(&format!("{:064x}", 1)).await.unwrap());
    assert_eq!(entries(&store), 0);

    store
        .create_session(linked_session(2, ada.id, "a"), 20)
        .await
        .unwrap();
    let mut rotated = linked_session(3, ada.id, "b");
    rotated.idp = None;
    assert!(
        store
            .replace_session(&format!("{:064x}", 2), rotated)
            .await
            .unwrap()
    );
    assert_eq!(entries(&store), 0);

    store
        .create_session(linked_session(4, ada.id, "a"), 20)
        .await
        .unwrap();
    store
        .create_session(linked_session(5, ada.id, "a"), 1)
        .await
        .unwrap();
    assert_eq!(entries(&store), 1, "the cap removed sessions 3 and 4");

    store
        .create_session(linked_session(6, bob.id, "c"), 20)
        .await
        .unwrap();
    assert_eq!(store.purge_sessions(5000, 0).await.unwrap(), 2);
    assert_eq!(entries(&store), 0);

    store
        .create_session(linked_session(7, ada.id, "a"), 20)
        .await
        .unwrap();
    store
        .create_session(linked_session(8, bob.id, "c"), 20)
        .await
        .unwrap();
    assert_eq!(store.delete_user_sessions(ada.id).await.unwrap(), 1);
    assert!(store.delete_user("bob").await.unwrap());
    assert_eq!(entries(&store), 0);
    assert!(store.sessions.is_empty());
}

#[test]
fn decoded_records_are_bounded_and_a_changed_record_is_decoded_again() {
    let decodes: Decodes<Vec<u8>, String, 4> = Decodes::new();
    let decode = |bytes: &[u8]| Ok(String::from_utf8_lossy(bytes).into_owned());
    for i in 0..100u32 {
        let key = i.to_be_bytes();
        decodes
            .of(
                &key[..],
                sled::IVec::from(format!("v{i}").as_bytes()),
                decode,
            )
            .unwrap();
        assert!(decodes.0.lock().unwrap().len() <= 4);
    }
    let key = 7u32.to_be_bytes();
    let first = decodes.of(&key[..], sled::IVec::from(&b"old"[..]), decode);
    assert_eq!(first.unwrap(), "old");
    let again = decodes.of(&key[..], sled::IVec::from(&b"new"[..]), decode);
    assert_eq!(again.unwrap(), "new");
}
