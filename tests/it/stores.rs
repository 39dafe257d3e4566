//! One suite of the store's guarantees, run against both backends: sled in a temporary directory
//! and PostgreSQL (a fresh database for every test on the server GATEHOUSE_TEST_DATABASE_URL names).

use std::sync::Arc;

use gatehouse::lockout::{Policy, Reservation};
use gatehouse::store::postgres::PgStore;
use gatehouse::store::sled::SledStore;
use gatehouse::store::*;

use crate::pg::Database;

const NOW: &str = "2026-01-01T00:00:00Z";
/// [`NOW`] in Unix seconds.
const NOW_UNIX: i64 = 1_767_225_600;

/// A store to test, and what keeps it alive (a temporary directory or database).
struct Subject {
    store: Arc<dyn Store>,
    /// A second handle on the same state: for PostgreSQL another pool, as another replica has.
    twin: Arc<dyn Store>,
    _keep: Box<dyn std::any::Any + Send>,
}

async fn sled() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    Subject {
        twin: store.clone(),
        store,
        _keep: Box::new(dir),
    }
}

async fn postgres() -> Subject {
    let db = Database::on_shared_server().await;
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url(), 8).await.unwrap());
    let twin: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url(), 8).await.unwrap());
    Subject {
        store,
        twin,
        _keep: Box::new(db),
    }
}

/// Runs the suite function `$name` once per backend; after `threaded:`, on a runtime with
/// several threads, so that concurrent calls into sled really run at once.
macro_rules! on_both_backends {
    (threaded: $($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sled() {
                    super::$name(super::sled().await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    super::$name(super::postgres().await).await;
                }
            }
        )*
    };
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sled() {
                    super::$name(super::sled().await).await;
                }

                #[tokio::test]
                async fn postgres() {
                    super::$name(super::postgres().await).await;
                }
            }
        )*
    };
}

on_both_backends!(
    user_names_are_unique_regardless_of_case,
    an_external_identity_is_linked_to_one_user_under_concurrency,
    a_ticket_is_confirmed_once_under_concurrency,
    a_totp_step_is_accepted_once_under_concurrency,
    a_confirmed_factor_voids_pending_tickets_and_refuses_password_only_ones,
    of_two_password_only_tickets_confirmed_at_once_one_wins,
    an_mfa_reset_removes_every_pending_ticket,
    concurrent_failures_through_two_handles_are_all_counted,
    concurrent_reservations_through_two_handles_grant_at_most_max_failures,
    a_lock_refuses_reservations_until_cleared,
    a_released_attempt_leaves_the_other_failures_counted,
    a_code_logs_in_once_and_not_after_expiry,
    a_code_logs_in_once_under_concurrency,
    sends_are_limited_within_the_window,
    a_verified_domain_belongs_to_one_organization,
    audit_is_newest_first_and_signing_keys_oldest_first,
    users_are_listed_by_name_in_any_letter_case_a_page_at_a_time,
    a_session_is_created_read_touched_rotated_and_deleted,
    a_user_holds_at_most_the_kept_sessions_the_oldest_going_first,
    signing_out_everywhere_ends_only_that_users_sessions,
    purging_deletes_expired_and_idle_sessions_and_keeps_live_ones,
    deleting_a_user_deletes_their_sessions,
    a_session_keeps_its_provider_link_through_creation_reading_and_rotation,
    a_back_channel_logout_by_sid_ends_that_sids_sessions_at_that_provider_only,
    a_back_channel_logout_by_user_ends_that_users_sessions_at_that_provider_only,
    a_back_channel_logout_by_user_and_sid_ends_only_sessions_matching_both,
    a_login_flow_is_taken_once,
    an_expired_login_flow_is_not_taken_and_is_gone,
    purging_login_flows_removes_only_expired_ones,
);

on_both_backends!(
    threaded: a_session_is_rotated_once_under_concurrency,
    concurrent_sign_ins_leave_the_newest_kept_sessions,
    a_login_flow_is_taken_once_under_concurrency,
    a_back_channel_logout_racing_a_rotation_leaves_no_session_of_that_sid,
    sign_outs_racing_rotations_to_keys_already_passed_leave_no_session,
);

// Signing-key rotation (SPEC §13).
on_both_backends!(
    a_rotation_adds_a_key_only_while_none_is_pending,
    a_scheduled_rotation_happens_once_per_period,
    signing_keys_keep_their_times_and_are_deleted_by_kid,
);

on_both_backends!(threaded: concurrent_rotations_through_two_handles_leave_one_pending_key);

fn new_user(name: &str) -> NewUser {
    NewUser {
        user_name: name.into(),
        ..NewUser::default()
    }
}

async fn user_names_are_unique_regardless_of_case(s: Subject) {
    let ada = s
        .store
        .create_user(new_user("Ada"), NOW_UNIX)
        .await
        .unwrap();
    assert!(matches!(
        s.twin.create_user(new_user("ada"), NOW_UNIX).await,
        Err(StoreError::Conflict(_))
    ));
    let bob = s
        .store
        .create_user(new_user("bob"), NOW_UNIX)
        .await
        .unwrap();
    assert_ne!(ada.id, bob.id);
    assert_eq!(
        s.twin.user_by_name("ADA").await.unwrap().map(|u| u.id),
        Some(ada.id)
    );
    let renamed = UserPatch {
        user_name: Some("BOB".into()),
        ..UserPatch::default()
    };
    assert!(matches!(
        s.store.update_user("ada", renamed, NOW_UNIX).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.store.delete_user("ada").await.unwrap());
    assert_eq!(s.twin.user_by_id(ada.id).await.unwrap(), None);
}

/// Replicas creating the user of one `(iss, sub)` at once, each under another name (the
/// fallback names are random): one user results, and every handle finds it by the link.
async fn an_external_identity_is_linked_to_one_user_under_concurrency(s: Subject) {
    let mut creations = tokio::task::JoinSet::new();
    for i in 0..20 {
        let store = if i % 2 == 0 { &s.store } else { &s.twin }.clone();
        creations.spawn(async move {
            let new = NewUser {
                user_name: format!("erin#{i}"),
                external: Some(ExternalId {
                    issuer: "https://idp".into(),
                    subject: "42".into(),
                }),
                ..NewUser::default()
            };
            store.create_user(new, NOW_UNIX).await
        });
    }
    let mut created = Vec::new();
    while let Some(result) = creations.join_next().await {
        match result.unwrap() {
            Ok(user) => created.push(user),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(created.len(), 1, "{created:?}");
    for store in [&s.store, &s.twin] {
        let linked = store.user_by_external("https://idp", "42").await.unwrap();
        assert_eq!(linked.map(|u| u.id), Some(created[0].id));
    }
    // Only the winner's name was taken.
    let names: Vec<bool> = names_taken(&s, 20).await;
    assert_eq!(names.iter().filter(|taken| **taken).count(), 1);
}

/// Whether each of `erin#0` … `erin#{n-1}` names a user.
async fn names_taken(s: &Subject, n: usize) -> Vec<bool> {
    let mut taken = Vec::with_capacity(n);
    for i in 0..n {
        taken.push(
            s.store
                .user_by_name(&format!("erin#{i}"))
                .await
                .unwrap()
                .is_some(),
        );
    }
    taken
}

fn ticket(id: &str, user_id: u64, expires_at: i64) -> Ticket {
    Ticket {
        v: SCHEMA_VERSION,
        id: id.into(),
        user_id,
        kind: FactorKind::Otp,
        sealed_secret: Some(vec![1, 2, 3]),
        destination: None,
        created_at: 1000,
        expires_at,
        used: false,
        second_factor: false,
    }
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

async fn a_ticket_is_confirmed_once_under_concurrency(s: Subject) {
    let user = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    s.store
        .create_ticket(ticket("t1", user.id, 2000))
        .await
        .unwrap();
    assert_eq!(
        s.twin
            .newest_pending_ticket(user.id, 1500)
            .await
            .unwrap()
            .map(|t| t.id),
        Some("t1".to_owned())
    );
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = if i % 2 == 0 {
            s.store.clone()
        } else {
            s.twin.clone()
        };
        let user_id = user.id;
        tasks.push(tokio::spawn(async move {
            store
                .confirm_ticket("t1", factor(user_id), Some(vec!["r".into()]), 1500)
                .await
                .unwrap()
        }));
    }
    let mut confirmed = 0;
    for t in tasks {
        confirmed += usize::from(t.await.unwrap());
    }
    assert_eq!(confirmed, 1, "exactly one confirmation wins");
    assert_eq!(s.twin.factors(user.id).await.unwrap().len(), 1);
    assert!(s.twin.consume_recovery_code(user.id, "r").await.unwrap());
    assert!(!s.store.consume_recovery_code(user.id, "r").await.unwrap());

    s.store
        .create_ticket(ticket("t2", user.id, 2000))
        .await
        .unwrap();
    assert!(
        !s.store
            .confirm_ticket("t2", factor(user.id), None, 2000)
            .await
            .unwrap(),
        "an expired ticket confirms nothing"
    );
}

fn stepped_up(mut ticket: Ticket) -> Ticket {
    ticket.second_factor = true;
    ticket
}

async fn a_confirmed_factor_voids_pending_tickets_and_refuses_password_only_ones(s: Subject) {
    let user = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    // An attacker's ticket made with the password alone, before the user enrolled.
    s.store
        .create_ticket(ticket("stale", user.id, 2000))
        .await
        .unwrap();
    s.store
        .create_ticket(ticket("own", user.id, 2000))
        .await
        .unwrap();
    assert!(
        s.twin
            .confirm_ticket("own", factor(user.id), None, 1500)
            .await
            .unwrap()
    );
    let stale = s.store.ticket("stale").await.unwrap().unwrap();
    assert!(stale.used, "confirming a factor voids the other tickets");
    assert!(
        !s.store
            .confirm_ticket("stale", factor(user.id), None, 1500)
            .await
            .unwrap()
    );
    assert_eq!(
        s.twin.newest_pending_ticket(user.id, 1500).await.unwrap(),
        None
    );

    // A ticket made without a second factor beside a confirmed one is refused by the store itself.
    s.store
        .create_ticket(ticket("late", user.id, 2000))
        .await
        .unwrap();
    let mut sms = factor(user.id);
    sms.kind = FactorKind::Sms;
    sms.sealed_secret = None;
    sms.destination = Some("+14155550100".into());
    assert!(
        !s.twin
            .confirm_ticket("late", sms.clone(), None, 1500)
            .await
            .unwrap()
    );
    assert_eq!(
        s.store.factors(user.id).await.unwrap(),
        vec![factor(user.id)]
    );

    // One made with a second factor may add a factor beside it.
    s.store
        .create_ticket(stepped_up(ticket("mfa", user.id, 2000)))
        .await
        .unwrap();
    assert!(s.twin.confirm_ticket("mfa", sms, None, 1500).await.unwrap());
    assert_eq!(s.store.factors(user.id).await.unwrap().len(), 2);
    assert!(s.store.ticket("late").await.unwrap().unwrap().used);
}

async fn of_two_password_only_tickets_confirmed_at_once_one_wins(s: Subject) {
    for round in 0..5 {
        let user = s
            .store
            .create_user(new_user(&format!("ada{round}")), NOW_UNIX)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for (i, kind) in [FactorKind::Otp, FactorKind::Sms].into_iter().enumerate() {
            let id = format!("t{round}-{i}");
            s.store
                .create_ticket(ticket(&id, user.id, 2000))
                .await
                .unwrap();
            let store = if i == 0 {
                s.store.clone()
            } else {
                s.twin.clone()
            };
            let mut f = factor(user.id);
            f.kind = kind;
            tasks.push(tokio::spawn(async move {
                store.confirm_ticket(&id, f, None, 1500).await.unwrap()
            }));
        }
        let mut confirmed = 0;
        for t in tasks {
            confirmed += usize::from(t.await.unwrap());
        }
        assert_eq!(confirmed, 1, "round {round}");
        assert_eq!(s.twin.factors(user.id).await.unwrap().len(), 1);
    }
}

async fn an_mfa_reset_removes_every_pending_ticket(s: Subject) {
    let user = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    s.store
        .create_ticket(ticket("own", user.id, 2000))
        .await
        .unwrap();
    assert!(
        s.store
            .confirm_ticket("own", factor(user.id), None, 1500)
            .await
            .unwrap()
    );
    s.store
        .create_ticket(stepped_up(ticket("pending", user.id, 2000)))
        .await
        .unwrap();
    s.twin.reset_mfa(user.id).await.unwrap();
    assert!(s.store.factors(user.id).await.unwrap().is_empty());
    assert_eq!(s.store.ticket("pending").await.unwrap(), None);
    assert!(
        !s.store
            .confirm_ticket("pending", factor(user.id), None, 1500)
            .await
            .unwrap()
    );
}

async fn a_totp_step_is_accepted_once_under_concurrency(s: Subject) {
    let user = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    s.store
        .create_ticket(ticket("t1", user.id, 2000))
        .await
        .unwrap();
    assert!(
        s.store
            .confirm_ticket("t1", factor(user.id), None, 1500)
            .await
            .unwrap()
    );
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = if i % 2 == 0 {
            s.store.clone()
        } else {
            s.twin.clone()
        };
        let user_id = user.id;
        tasks.push(tokio::spawn(async move {
            store.accept_totp_step(user_id, 50).await.unwrap()
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += usize::from(t.await.unwrap());
    }
    assert_eq!(accepted, 1);
    assert!(!s.twin.accept_totp_step(user.id, 49).await.unwrap());
    assert!(s.twin.accept_totp_step(user.id, 51).await.unwrap());
    assert_eq!(
        s.store.factors(user.id).await.unwrap()[0].last_step,
        Some(51)
    );
}

/// Reserves `n` attempts at once for `user_id`, half through each handle; the grants.
async fn reserve_at_once(s: &Subject, user_id: u64, n: usize, policy: Policy) -> Vec<Reservation> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = if i % 2 == 0 {
            s.store.clone()
        } else {
            s.twin.clone()
        };
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store.reserve_attempt(user_id, 1000, policy).await.unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    outcomes
}

fn granted(outcomes: &[Reservation]) -> usize {
    outcomes
        .iter()
        .filter(|r| matches!(r, Reservation::Granted { .. }))
        .count()
}

async fn concurrent_failures_through_two_handles_are_all_counted(s: Subject) {
    let user = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    let policy = Policy {
        max_failures: 100,
        window: 300,
        duration: 900,
    };
    let outcomes = reserve_at_once(&s, user.id, 50, policy).await;
    assert_eq!(granted(&outcomes), 50);
    s.store.flush().await.unwrap();
    assert_eq!(s.store.lockout(user.id).await.unwrap().failures.len(), 50);
    s.twin.clear_failures(user.id).await.unwrap();
    assert!(s.store.lockout(user.id).await.unwrap().failures.is_empty());
}

async fn concurrent_reservations_through_two_handles_grant_at_most_max_failures(s: Subject) {
    let user = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    let policy = Policy {
        max_failures: 5,
        window: 300,
        duration: 900,
    };
    let outcomes = reserve_at_once(&s, user.id, 50, policy).await;
    assert_eq!(granted(&outcomes), 5, "{outcomes:?}");
    assert_eq!(
        outcomes
            .iter()
            .filter(|r| **r == Reservation::Granted { locks: Some(900) })
            .count(),
        1,
        "exactly one grant is the one that locks: {outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|r| matches!(
            r,
            Reservation::Granted { .. } | Reservation::Refused { retry_after: 900 }
        )),
        "{outcomes:?}"
    );
    let state = s.twin.lockout(user.id).await.unwrap();
    assert_eq!(state.failures.len(), 5);
    assert_eq!(state.retry_after(1000), Some(900));
}

async fn a_lock_refuses_reservations_until_cleared(s: Subject) {
    let user = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    let policy = Policy {
        max_failures: 2,
        window: 300,
        duration: 900,
    };
    assert_eq!(
        s.store
            .reserve_attempt(user.id, 1000, policy)
            .await
            .unwrap(),
        Reservation::Granted { locks: None }
    );
    assert_eq!(
        s.twin.reserve_attempt(user.id, 1001, policy).await.unwrap(),
        Reservation::Granted { locks: Some(900) }
    );
    assert_eq!(
        s.store
            .reserve_attempt(user.id, 1002, policy)
            .await
            .unwrap(),
        Reservation::Refused { retry_after: 899 }
    );
    // A success releases the reservations and the lock.
    s.twin.clear_failures(user.id).await.unwrap();
    assert_eq!(
        s.store
            .reserve_attempt(user.id, 1003, policy)
            .await
            .unwrap(),
        Reservation::Granted { locks: None }
    );
}

/// A right password gives back its own attempt only: the failures counted before it (the
/// second factor's wrong codes) stay, on either handle.
async fn a_released_attempt_leaves_the_other_failures_counted(s: Subject) {
    let user = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    let policy = Policy {
        max_failures: 3,
        window: 300,
        duration: 900,
    };
    for at in [1000, 1001] {
        s.store.reserve_attempt(user.id, at, policy).await.unwrap();
    }
    let locks = match s.twin.reserve_attempt(user.id, 1002, policy).await.unwrap() {
        Reservation::Granted { locks } => locks,
        refused => panic!("{refused:?}"),
    };
    assert_eq!(locks, Some(900));
    s.twin.release_attempt(user.id, 1002, locks).await.unwrap();
    let state = s.store.lockout(user.id).await.unwrap();
    assert_eq!(state.failures, vec![1000, 1001]);
    assert_eq!(state.locked_until, None);
    // The next wrong attempt is the third failure: it locks.
    assert_eq!(
        s.store
            .reserve_attempt(user.id, 1003, policy)
            .await
            .unwrap(),
        Reservation::Granted { locks: Some(900) }
    );
    // Releasing an attempt that did not set the lock leaves it.
    s.twin.release_attempt(user.id, 1001, None).await.unwrap();
    assert_eq!(
        s.store.lockout(user.id).await.unwrap().retry_after(1004),
        Some(899)
    );
}

fn login_event(detail: &str) -> AuditEvent {
    AuditEvent {
        time: NOW.into(),
        event: "manage.otp.validated".into(),
        user_name: Some("ada".into()),
        detail: Some(detail.into()),
        ..Default::default()
    }
}

async fn stored_events(s: &Subject) -> Vec<String> {
    s.twin
        .audit(100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| e.detail)
        .collect()
}

async fn a_code_logs_in_once_and_not_after_expiry(s: Subject) {
    let user = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    let code = OobCode {
        v: SCHEMA_VERSION,
        user_id: user.id,
        purpose: "manage:sms".into(),
        code_hash: "h".into(),
        expires_at: 2000,
    };
    s.store.put_code(code.clone()).await.unwrap();
    let policy = Policy {
        max_failures: 5,
        window: 300,
        duration: 900,
    };
    let _ = s.store.reserve_attempt(user.id, 900, policy).await.unwrap();
    assert_eq!(s.store.lockout(user.id).await.unwrap().failures.len(), 1);
    // The logins below happen at 1000 (Unix seconds), which records write as:
    let login = "1970-01-01T00:16:40Z";
    assert_eq!(
        s.twin
            .login_with_code(user.id, "manage:sms", "x", 1000, &login_event("wrong"))
            .await
            .unwrap(),
        CodeLogin::Wrong
    );
    assert_eq!(
        s.twin
            .login_with_code(user.id, "manage:sms", "h", 2000, &login_event("late"))
            .await
            .unwrap(),
        CodeLogin::Expired
    );
    assert!(
        stored_events(&s).await.is_empty(),
        "a refused code records no login event"
    );
    let CodeLogin::Accepted(after) = s
        .twin
        .login_with_code(user.id, "manage:sms", "h", 1000, &login_event("ok"))
        .await
        .unwrap()
    else {
        panic!("the right code was refused");
    };
    assert_eq!(after.last_login_timestamp.as_deref(), Some(login));
    assert_eq!(
        s.store
            .user_by_id(user.id)
            .await
            .unwrap()
            .unwrap()
            .last_login_timestamp
            .as_deref(),
        Some(login)
    );
    assert!(
        s.store.lockout(user.id).await.unwrap().failures.is_empty(),
        "a login clears the failure count"
    );
    assert_eq!(stored_events(&s).await, ["ok"]);
    assert_eq!(
        s.store
            .login_with_code(user.id, "manage:sms", "h", 1000, &login_event("again"))
            .await
            .unwrap(),
        CodeLogin::Wrong
    );
    assert_eq!(stored_events(&s).await, ["ok"]);
    s.store.put_code(code).await.unwrap();
    assert!(
        s.twin
            .consume_code(user.id, "manage:sms", "h", 1000)
            .await
            .unwrap()
    );
    assert!(
        !s.store
            .consume_code(user.id, "manage:sms", "h", 1000)
            .await
            .unwrap()
    );
}

async fn a_code_logs_in_once_under_concurrency(s: Subject) {
    let user = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    s.store
        .put_code(OobCode {
            v: SCHEMA_VERSION,
            user_id: user.id,
            purpose: "manage:sms".into(),
            code_hash: "h".into(),
            expires_at: 2000,
        })
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = if i % 2 == 0 {
            s.store.clone()
        } else {
            s.twin.clone()
        };
        let user_id = user.id;
        tasks.push(tokio::spawn(async move {
            let event = login_event(&format!("attempt {i}"));
            store
                .login_with_code(user_id, "manage:sms", "h", 1000, &event)
                .await
                .unwrap()
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += usize::from(matches!(t.await.unwrap(), CodeLogin::Accepted(_)));
    }
    assert_eq!(accepted, 1);
    assert_eq!(stored_events(&s).await.len(), 1, "one login, one event");
}

async fn sends_are_limited_within_the_window(s: Subject) {
    for i in 0..3 {
        let store = if i % 2 == 0 { &s.store } else { &s.twin };
        assert!(store.count_send("to:+1", 1000 + i, 60, 3).await.unwrap());
    }
    assert!(!s.store.count_send("to:+1", 1010, 60, 3).await.unwrap());
    assert!(s.twin.count_send("to:+2", 1010, 60, 3).await.unwrap());
    assert!(
        s.store.count_send("to:+1", 1061, 60, 3).await.unwrap(),
        "the window moves"
    );
}

fn domain(organization_id: i64, name: &str) -> Domain {
    Domain {
        v: SCHEMA_VERSION,
        organization_id,
        domain_id: 0,
        domain: name.into(),
        authentication_method: None,
        created: NOW.into(),
        created_by: "ada".into(),
        modified: NOW.into(),
        modified_by: "ada".into(),
        is_verified: false,
        verification_code: None,
        verification_code_expires: None,
        verification_code_expires_at: None,
        verification_method: None,
        owner_organization_id: organization_id,
    }
}

async fn a_verified_domain_belongs_to_one_organization(s: Subject) {
    for id in [1, 2] {
        s.store
            .create_organization(Organization {
                v: SCHEMA_VERSION,
                id,
                name: format!("org {id}"),
                created: NOW.into(),
            })
            .await
            .unwrap();
    }
    let a = s
        .store
        .create_domain(domain(1, "example.com"))
        .await
        .unwrap();
    let b = s
        .twin
        .create_domain(domain(2, "example.com"))
        .await
        .unwrap();
    assert!(matches!(
        s.store.create_domain(domain(1, "example.com")).await,
        Err(StoreError::Conflict(_))
    ));
    s.store
        .save_domain(Domain {
            is_verified: true,
            ..a.clone()
        })
        .await
        .unwrap();
    assert!(matches!(
        s.twin
            .save_domain(Domain {
                is_verified: true,
                ..b.clone()
            })
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.twin
            .create_domain(domain(2, "EXAMPLE.com".to_lowercase().as_str()))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.twin.domains(1).await.unwrap().len(), 1);
    assert!(s.twin.delete_domain(1, a.domain_id).await.unwrap());
    s.store
        .save_domain(Domain {
            is_verified: true,
            ..b
        })
        .await
        .unwrap();
}

async fn audit_is_newest_first_and_signing_keys_oldest_first(s: Subject) {
    for i in 0..3 {
        s.store
            .append_audit(AuditEvent {
                time: NOW.into(),
                event: format!("e{i}"),
                user_name: None,
                detail: None,
                ..Default::default()
            })
            .await
            .unwrap();
        s.twin
            .add_signing_key(SigningKey {
                v: SCHEMA_VERSION,
                kid: format!("k{i}"),
                pkcs8: vec![i],
                created: NOW.into(),
                activates: 0,
            })
            .await
            .unwrap();
    }
    let events: Vec<String> = s
        .twin
        .audit(2)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(events, ["e2", "e1"]);
    let kids: Vec<String> = s
        .store
        .signing_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, ["k0", "k1", "k2"]);
}

async fn names(store: &dyn Store, after: Option<&str>, limit: usize) -> Vec<String> {
    store
        .list_users(after, limit)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.user_name)
        .collect()
}

async fn users_are_listed_by_name_in_any_letter_case_a_page_at_a_time(s: Subject) {
    for name in ["carol", "Ada", "bob", "Émile", "dave", "zoe"] {
        s.store.create_user(new_user(name), NOW_UNIX).await.unwrap();
    }
    assert_eq!(names(s.twin.as_ref(), None, 2).await, ["Ada", "bob"]);
    assert_eq!(
        names(s.twin.as_ref(), Some("bob"), 2).await,
        ["carol", "dave"]
    );
    // The cursor need not be a user, and is compared in any letter case.
    assert_eq!(names(s.twin.as_ref(), Some("BOA"), 1).await, ["bob"]);
    assert_eq!(
        names(s.twin.as_ref(), Some("DAVE"), 10).await,
        ["zoe", "Émile"]
    );
    assert!(names(s.twin.as_ref(), Some("émile"), 10).await.is_empty());
    // A renamed user moves; a deleted one is gone.
    let renamed = UserPatch {
        user_name: Some("Bea".into()),
        ..UserPatch::default()
    };
    s.store.update_user("zoe", renamed, NOW_UNIX).await.unwrap();
    assert!(s.store.delete_user("carol").await.unwrap());
    assert_eq!(
        names(s.twin.as_ref(), None, 10).await,
        ["Ada", "Bea", "bob", "dave", "Émile"]
    );
}

/// A session id hash as the store is given it: 64 lower-case hex digits.
fn hash(n: u64) -> String {
    format!("{n:064x}")
}

fn session(id: u64, user_id: u64, created: i64) -> Session {
    Session {
        id_hash: hash(id),
        user_id,
        methods: vec!["pwd".into()],
        created,
        last_seen: created,
        expires: created + 43_200,
        idp: None,
    }
}

/// Which of the sessions `ids` the store still holds.
async fn held(store: &dyn Store, ids: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut found = Vec::new();
    for id in ids {
        if store.session(&hash(id)).await.unwrap().is_some() {
            found.push(id);
        }
    }
    found
}

async fn a_session_is_created_read_touched_rotated_and_deleted(s: Subject) {
    let ada = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    let first = session(1, ada.id, 1000);
    s.store.create_session(first.clone(), 20).await.unwrap();
    assert_eq!(s.twin.session(&hash(1)).await.unwrap(), Some(first.clone()));
    assert_eq!(s.twin.session(&hash(2)).await.unwrap(), None);

    // `last_seen` only moves forward.
    assert!(s.twin.touch_session(&hash(1), 1500).await.unwrap());
    assert!(s.store.touch_session(&hash(1), 1200).await.unwrap());
    let touched = s.store.session(&hash(1)).await.unwrap().unwrap();
    assert_eq!(
        touched,
        Session {
            last_seen: 1500,
            ..first.clone()
        }
    );
    // Read again through the handle that read it before it changed.
    assert_eq!(
        s.twin.session(&hash(1)).await.unwrap(),
        Some(touched.clone())
    );
    assert!(!s.store.touch_session(&hash(2), 1500).await.unwrap());
    assert_eq!(s.store.session(&hash(2)).await.unwrap(), None);

    // Rotation: the old id is worth nothing after it, and rotates no second time.
    let stepped_up = Session {
        id_hash: hash(3),
        methods: vec!["pwd".into(), "otp".into()],
        last_seen: 1600,
        ..first.clone()
    };
    assert!(
        s.twin
            .replace_session(&hash(1), stepped_up.clone())
            .await
            .unwrap()
    );
    assert_eq!(s.store.session(&hash(1)).await.unwrap(), None);
    assert_eq!(s.twin.session(&hash(1)).await.unwrap(), None);
    assert_eq!(s.store.session(&hash(3)).await.unwrap(), Some(stepped_up));
    assert!(
        !s.store
            .replace_session(&hash(1), session(4, ada.id, 1700))
            .await
            .unwrap()
    );
    assert_eq!(held(s.store.as_ref(), [1, 3, 4]).await, [3]);

    assert!(s.store.delete_session(&hash(3)).await.unwrap());
    assert!(!s.twin.delete_session(&hash(3)).await.unwrap());
    assert_eq!(s.twin.session(&hash(3)).await.unwrap(), None);
    assert!(!s.twin.touch_session(&hash(3), 2000).await.unwrap());
    assert_eq!(s.store.delete_user_sessions(ada.id).await.unwrap(), 0);

    // No session is created for a user who does not exist.
    assert!(matches!(
        s.store
            .create_session(session(5, ada.id + 1000, 1000), 20)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.store.session(&hash(5)).await.unwrap(), None);
}

/// Rotations of one session at once, through two handles (for PostgreSQL, two replicas): one
/// succeeds, and the store then holds its new session only.
async fn a_session_is_rotated_once_under_concurrency(s: Subject) {
    let ada = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    s.store
        .create_session(session(1, ada.id, 1000), 20)
        .await
        .unwrap();
    let n = 16;
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = if i % 2 == 0 { &s.store } else { &s.twin }.clone();
        let barrier = barrier.clone();
        let new = session(100 + i as u64, ada.id, 1000);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store.replace_session(&hash(1), new).await.unwrap()
        }));
    }
    let mut rotated = 0;
    for t in tasks {
        rotated += usize::from(t.await.unwrap());
    }
    assert_eq!(rotated, 1, "exactly one rotation succeeds");
    assert_eq!(held(s.twin.as_ref(), [1]).await, Vec::<u64>::new());
    assert_eq!(
        held(s.store.as_ref(), 100..100 + n as u64).await.len(),
        1,
        "only the winner's new session is stored"
    );
    assert_eq!(
        s.twin.delete_user_sessions(ada.id).await.unwrap(),
        1,
        "the user holds the winner's session and nothing else"
    );
}

async fn a_user_holds_at_most_the_kept_sessions_the_oldest_going_first(s: Subject) {
    let ada = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    let bob = s
        .store
        .create_user(new_user("bob"), NOW_UNIX)
        .await
        .unwrap();
    s.store
        .create_session(session(50, bob.id, 900), 3)
        .await
        .unwrap();
    for (i, id) in [1, 2, 3, 4, 5].into_iter().enumerate() {
        let store = if i % 2 == 0 { &s.store } else { &s.twin };
        store
            .create_session(session(id, ada.id, 1000 + id as i64), 3)
            .await
            .unwrap();
    }
    assert_eq!(held(s.store.as_ref(), 1..=5).await, [3, 4, 5]);
    assert_eq!(
        held(s.store.as_ref(), [50]).await,
        [50],
        "another user's sessions do not count"
    );

    // Sessions created in the same second go in id hash order.
    let carol = s
        .store
        .create_user(new_user("carol"), NOW_UNIX)
        .await
        .unwrap();
    for id in [0x2c, 0x2a, 0x2b] {
        s.twin
            .create_session(session(id, carol.id, 2000), 2)
            .await
            .unwrap();
    }
    assert_eq!(held(s.store.as_ref(), 0x2a..=0x2c).await, [0x2b, 0x2c]);

    // A smaller cap applies at the next sign-in.
    s.store
        .create_session(session(6, ada.id, 1006), 1)
        .await
        .unwrap();
    assert_eq!(held(s.twin.as_ref(), 1..=6).await, [6]);
}

/// Sign-ins of one user at once, through two handles: once they have returned, the user holds
/// the newest `keep` of them.
async fn concurrent_sign_ins_leave_the_newest_kept_sessions(s: Subject) {
    let ada = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    let (n, keep) = (16u64, 4usize);
    let barrier = Arc::new(tokio::sync::Barrier::new(n as usize));
    let mut tasks = Vec::new();
    for id in 1..=n {
        let store = if id % 2 == 0 { &s.store } else { &s.twin }.clone();
        let barrier = barrier.clone();
        let new = session(id, ada.id, 1000 + id as i64);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store.create_session(new, keep).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        held(s.store.as_ref(), 1..=n).await,
        (n - keep as u64 + 1..=n).collect::<Vec<_>>()
    );
    assert_eq!(
        s.twin.delete_user_sessions(ada.id).await.unwrap(),
        keep as u64
    );
}

async fn signing_out_everywhere_ends_only_that_users_sessions(s: Subject) {
    let ada = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    let bob = s
        .store
        .create_user(new_user("bob"), NOW_UNIX)
        .await
        .unwrap();
    for (id, user) in [(1, &ada), (2, &ada), (3, &bob)] {
        s.store
            .create_session(session(id, user.id, 1000), 20)
            .await
            .unwrap();
    }
    assert_eq!(s.twin.delete_user_sessions(ada.id).await.unwrap(), 2);
    assert_eq!(held(s.store.as_ref(), 1..=3).await, [3]);
    assert_eq!(s.store.delete_user_sessions(ada.id).await.unwrap(), 0);
    // Ada signs in again afterwards, unhindered.
    s.twin
        .create_session(session(4, ada.id, 1100), 20)
        .await
        .unwrap();
    assert_eq!(held(s.store.as_ref(), 1..=4).await, [3, 4]);
}

async fn purging_deletes_expired_and_idle_sessions_and_keeps_live_ones(s: Subject) {
    let ada = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    let (now, idle_before) = (10_000, 6_400);
    let sessions = [
        // Used recently, ends later: live.
        (1, 9_000, 20_000),
        // Reached its absolute end.
        (2, 9_900, now),
        // Unused since the idle limit.
        (3, idle_before, 20_000),
        // Used a second after it: live.
        (4, idle_before + 1, 20_000),
        // Both ended.
        (5, 100, 5_000),
    ];
    for (id, last_seen, expires) in sessions {
        s.store
            .create_session(
                Session {
                    last_seen,
                    expires,
                    ..session(id, ada.id, 100)
                },
                20,
            )
            .await
            .unwrap();
    }
    assert_eq!(s.twin.purge_sessions(now, idle_before).await.unwrap(), 3);
    assert_eq!(held(s.store.as_ref(), 1..=5).await, [1, 4]);
    assert_eq!(s.store.purge_sessions(now, idle_before).await.unwrap(), 0);
    // A touch keeps a session from the next purge.
    assert!(s.store.touch_session(&hash(4), 9_000).await.unwrap());
    assert_eq!(
        s.twin
            .purge_sessions(now + 1, idle_before + 1)
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.store.delete_user_sessions(ada.id).await.unwrap(), 2);
}

async fn deleting_a_user_deletes_their_sessions(s: Subject) {
    let ada = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    let bob = s
        .store
        .create_user(new_user("bob"), NOW_UNIX)
        .await
        .unwrap();
    for (id, user) in [(1, &ada), (2, &ada), (3, &bob)] {
        s.store
            .create_session(session(id, user.id, 1000), 20)
            .await
            .unwrap();
    }
    assert!(s.twin.delete_user("ada").await.unwrap());
    assert_eq!(held(s.store.as_ref(), 1..=3).await, [3]);
    assert!(matches!(
        s.store.create_session(session(4, ada.id, 1100), 20).await,
        Err(StoreError::NotFound(_))
    ));
    // A new user of the same name starts without them.
    let again = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    assert_eq!(s.store.delete_user_sessions(again.id).await.unwrap(), 0);
}

/// A session signed in through `provider`, with the provider's session id `sid`.
fn idp_session(id: u64, user_id: u64, provider: &str, sid: Option<&str>) -> Session {
    Session {
        idp: Some(IdpLink {
            provider: provider.into(),
            sid: sid.map(Into::into),
        }),
        ..session(id, user_id, 1000 + id as i64)
    }
}

async fn a_session_keeps_its_provider_link_through_creation_reading_and_rotation(s: Subject) {
    let ada = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    let first = idp_session(1, ada.id, "corp", Some("sid-1"));
    s.store.create_session(first.clone(), 20).await.unwrap();
    assert_eq!(s.twin.session(&hash(1)).await.unwrap(), Some(first.clone()));
    assert!(s.twin.touch_session(&hash(1), 5000).await.unwrap());
    assert_eq!(
        s.store.session(&hash(1)).await.unwrap().unwrap().idp,
        first.idp
    );

    let rotated = Session {
        id_hash: hash(2),
        methods: vec!["mfa".into()],
        ..first.clone()
    };
    assert!(
        s.twin
            .replace_session(&hash(1), rotated.clone())
            .await
            .unwrap()
    );
    assert_eq!(s.store.session(&hash(2)).await.unwrap(), Some(rotated));

    // Without a sid, and a local session beside it.
    let no_sid = idp_session(3, ada.id, "corp", None);
    s.store.create_session(no_sid.clone(), 20).await.unwrap();
    assert_eq!(s.twin.session(&hash(3)).await.unwrap(), Some(no_sid));
    s.store
        .create_session(session(4, ada.id, 1004), 20)
        .await
        .unwrap();
    assert_eq!(s.twin.session(&hash(4)).await.unwrap().unwrap().idp, None);

    // The rotated session is found by its sid, the old id hash no longer.
    assert_eq!(
        s.store
            .delete_idp_sessions("corp", None, Some("sid-1"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(held(s.twin.as_ref(), 1..=4).await, [3, 4]);
}

/// Ada's and Bob's sessions for the back-channel logout tests:
/// 1, 2: Ada at `corp` with sid A; 3: Ada at `corp` with sid B; 4: Ada at `corp` without a sid;
/// 5: Ada at `home` with sid A; 6: Ada signed in locally; 7: Bob at `corp` with sid A;
/// 8: Bob at `corp` without a sid.
async fn sessions_at_providers(s: &Subject) -> (User, User) {
    let ada = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    let bob = s
        .store
        .create_user(new_user("bob"), NOW_UNIX)
        .await
        .unwrap();
    let sessions = [
        idp_session(1, ada.id, "corp", Some("A")),
        idp_session(2, ada.id, "corp", Some("A")),
        idp_session(3, ada.id, "corp", Some("B")),
        idp_session(4, ada.id, "corp", None),
        idp_session(5, ada.id, "home", Some("A")),
        session(6, ada.id, 1006),
        idp_session(7, bob.id, "corp", Some("A")),
        idp_session(8, bob.id, "corp", None),
    ];
    for (i, session) in sessions.into_iter().enumerate() {
        let store = if i % 2 == 0 { &s.store } else { &s.twin };
        store.create_session(session, 20).await.unwrap();
    }
    (ada, bob)
}

async fn a_back_channel_logout_by_sid_ends_that_sids_sessions_at_that_provider_only(s: Subject) {
    sessions_at_providers(&s).await;
    assert_eq!(
        s.twin
            .delete_idp_sessions("corp", None, Some("A"))
            .await
            .unwrap(),
        3
    );
    assert_eq!(held(s.store.as_ref(), 1..=8).await, [3, 4, 5, 6, 8]);
    assert_eq!(
        s.store
            .delete_idp_sessions("corp", None, Some("A"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.store
            .delete_idp_sessions("nowhere", None, Some("B"))
            .await
            .unwrap(),
        0
    );
    // A sid that begins like another names none of its sessions.
    assert_eq!(
        s.store
            .delete_idp_sessions("corp", None, Some(""))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.store
            .delete_idp_sessions("cor", None, Some("pB"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(held(s.twin.as_ref(), 1..=8).await, [3, 4, 5, 6, 8]);
}

async fn a_back_channel_logout_by_user_ends_that_users_sessions_at_that_provider_only(s: Subject) {
    let (ada, bob) = sessions_at_providers(&s).await;
    assert_eq!(
        s.store
            .delete_idp_sessions("corp", Some(ada.id), None)
            .await
            .unwrap(),
        4
    );
    assert_eq!(held(s.twin.as_ref(), 1..=8).await, [5, 6, 7, 8]);
    assert_eq!(
        s.twin
            .delete_idp_sessions("corp", Some(ada.id), None)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.twin
            .delete_idp_sessions("home", Some(bob.id), None)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.twin
            .delete_idp_sessions("corp", Some(bob.id), None)
            .await
            .unwrap(),
        2
    );
    assert_eq!(held(s.store.as_ref(), 1..=8).await, [5, 6]);
}

async fn a_back_channel_logout_by_user_and_sid_ends_only_sessions_matching_both(s: Subject) {
    let (ada, bob) = sessions_at_providers(&s).await;
    assert_eq!(
        s.twin
            .delete_idp_sessions("corp", Some(ada.id), Some("A"))
            .await
            .unwrap(),
        2
    );
    assert_eq!(held(s.store.as_ref(), 1..=8).await, [3, 4, 5, 6, 7, 8]);
    assert_eq!(
        s.store
            .delete_idp_sessions("corp", Some(bob.id), Some("B"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.store
            .delete_idp_sessions("home", Some(ada.id), Some("A"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(held(s.twin.as_ref(), 1..=8).await, [3, 4, 6, 7, 8]);
}

/// A back-channel logout and a rotation of the session it ends, at once through two handles:
/// whichever commits first, no session of that sid is left.
async fn a_back_channel_logout_racing_a_rotation_leaves_no_session_of_that_sid(s: Subject) {
    let ada = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    for round in 0..24u64 {
        let (old, new) = (2 * round + 1, 2 * round + 2);
        s.store
            .create_session(idp_session(old, ada.id, "corp", Some("A")), 20)
            .await
            .unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let rotate = {
            let (store, barrier) = (s.store.clone(), barrier.clone());
            let next = idp_session(new, ada.id, "corp", Some("A"));
            tokio::spawn(async move {
                barrier.wait().await;
                store.replace_session(&hash(old), next).await.unwrap()
            })
        };
        let logout = {
            let store = s.twin.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .delete_idp_sessions("corp", None, Some("A"))
                    .await
                    .unwrap()
            })
        };
        rotate.await.unwrap();
        assert_eq!(logout.await.unwrap(), 1, "round {round}");
        assert_eq!(
            held(s.store.as_ref(), [old, new]).await,
            Vec::<u64>::new(),
            "round {round}"
        );
    }
}

/// Sign-outs (back-channel by sid, and everywhere) while every session they look for rotates to an
/// id that sorts before its old one, so that a scan of the index that is no snapshot may have
/// passed the new key before the rotation commits and not reach the old one after: none is left.
async fn sign_outs_racing_rotations_to_keys_already_passed_leave_no_session(s: Subject) {
    const SESSIONS: u64 = 8;
    let ada = s
        .store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap();
    for round in 0..16u64 {
        let base = 1_000 * (round + 1);
        let old = move |i: u64| base + 100 + i;
        for i in 0..SESSIONS {
            s.store
                .create_session(idp_session(old(i), ada.id, "corp", Some("A")), 100)
                .await
                .unwrap();
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(SESSIONS as usize + 1));
        let mut rotations = tokio::task::JoinSet::new();
        for i in 0..SESSIONS {
            let (store, barrier) = (s.store.clone(), barrier.clone());
            let next = idp_session(base + i, ada.id, "corp", Some("A"));
            rotations.spawn(async move {
                barrier.wait().await;
                store.replace_session(&hash(old(i)), next).await.unwrap()
            });
        }
        let (twin, barrier) = (s.twin.clone(), barrier.clone());
        let sign_out = tokio::spawn(async move {
            barrier.wait().await;
            if round % 2 == 0 {
                twin.delete_idp_sessions("corp", None, Some("A")).await
            } else {
                twin.delete_user_sessions(ada.id).await
            }
            .unwrap()
        });
        while let Some(rotated) = rotations.join_next().await {
            rotated.unwrap();
        }
        assert_eq!(sign_out.await.unwrap(), SESSIONS, "round {round}");
        let all = (0..SESSIONS).flat_map(|i| [base + i, old(i)]);
        assert_eq!(
            held(s.store.as_ref(), all).await,
            Vec::<u64>::new(),
            "round {round}"
        );
    }
}

fn flow(n: u64, expires: i64) -> LoginFlow {
    LoginFlow {
        state_hash: hash(n),
        provider: "corp".into(),
        nonce: format!("nonce-{n}"),
        pkce_verifier: format!("verifier-{n}"),
        rd: "/app?x=1".into(),
        expires,
    }
}

async fn a_login_flow_is_taken_once(s: Subject) {
    let first = flow(1, 2000);
    s.store.create_login_flow(first.clone()).await.unwrap();
    s.store.create_login_flow(flow(2, 2000)).await.unwrap();
    assert_eq!(s.twin.take_login_flow(&hash(3), 1000).await.unwrap(), None);
    assert_eq!(
        s.twin.take_login_flow(&hash(1), 1999).await.unwrap(),
        Some(first)
    );
    assert_eq!(s.store.take_login_flow(&hash(1), 1000).await.unwrap(), None);
    assert_eq!(s.twin.take_login_flow(&hash(1), 1000).await.unwrap(), None);
    // The other flow is untouched.
    assert_eq!(
        s.store.take_login_flow(&hash(2), 1000).await.unwrap(),
        Some(flow(2, 2000))
    );
}

async fn an_expired_login_flow_is_not_taken_and_is_gone(s: Subject) {
    s.store.create_login_flow(flow(1, 2000)).await.unwrap();
    s.store.create_login_flow(flow(2, 2000)).await.unwrap();
    assert_eq!(s.twin.take_login_flow(&hash(1), 2000).await.unwrap(), None);
    // Gone, not merely refused: asked again at an earlier time, it is not there.
    assert_eq!(s.store.take_login_flow(&hash(1), 1000).await.unwrap(), None);
    assert_eq!(s.store.purge_login_flows(2000).await.unwrap(), 1);
    assert_eq!(s.twin.take_login_flow(&hash(2), 1000).await.unwrap(), None);
}

async fn purging_login_flows_removes_only_expired_ones(s: Subject) {
    for (n, expires) in [(1, 1000), (2, 1500), (3, 1501), (4, 3000)] {
        let store = if n % 2 == 0 { &s.store } else { &s.twin };
        store.create_login_flow(flow(n, expires)).await.unwrap();
    }
    assert_eq!(s.twin.purge_login_flows(1500).await.unwrap(), 2);
    assert_eq!(s.store.purge_login_flows(1500).await.unwrap(), 0);
    assert_eq!(s.store.take_login_flow(&hash(1), 0).await.unwrap(), None);
    assert_eq!(s.store.take_login_flow(&hash(2), 0).await.unwrap(), None);
    assert_eq!(
        s.twin.take_login_flow(&hash(3), 1500).await.unwrap(),
        Some(flow(3, 1501))
    );
    assert_eq!(
        s.twin.take_login_flow(&hash(4), 1500).await.unwrap(),
        Some(flow(4, 3000))
    );
}

/// Takes of one flow at once through two handles (for PostgreSQL, two replicas): exactly one
/// gets it.
async fn a_login_flow_is_taken_once_under_concurrency(s: Subject) {
    s.store.create_login_flow(flow(1, 2000)).await.unwrap();
    let n = 16;
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = if i % 2 == 0 { &s.store } else { &s.twin }.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store.take_login_flow(&hash(1), 1000).await.unwrap()
        }));
    }
    let mut taken = Vec::new();
    for t in tasks {
        taken.extend(t.await.unwrap());
    }
    assert_eq!(taken, [flow(1, 2000)], "exactly one take gets the flow");
}

fn rotated_key(kid: &str, activates: i64) -> SigningKey {
    SigningKey {
        v: SCHEMA_VERSION,
        kid: kid.into(),
        pkcs8: vec![7],
        created: NOW.into(),
        activates,
    }
}

async fn kids(store: &dyn Store) -> Vec<String> {
    store
        .signing_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.kid)
        .collect()
}

async fn a_rotation_adds_a_key_only_while_none_is_pending(s: Subject) {
    let now = NOW_UNIX;
    // An empty store takes the key whatever the condition.
    let first = s
        .store
        .rotate_signing_key(rotated_key("k0", now), now)
        .await;
    assert_eq!(first.unwrap().kid, "k0");
    // The first key signs already: the next one is added, pending for an hour.
    let next = s
        .store
        .rotate_signing_key(rotated_key("k1", now + 3600), now)
        .await
        .unwrap();
    assert_eq!((next.kid.as_str(), next.activates), ("k1", now + 3600));
    // While k1 is pending, rotating (through the other handle too) answers k1 and adds nothing.
    for (store, kid) in [(&s.store, "k2"), (&s.twin, "k3")] {
        let again = store
            .rotate_signing_key(rotated_key(kid, now + 3610), now + 10)
            .await
            .unwrap();
        assert_eq!(again, next);
    }
    assert_eq!(kids(s.store.as_ref()).await, ["k0", "k1"]);
    // Once k1 signs, the next rotation adds a key again.
    let later = s
        .twin
        .rotate_signing_key(rotated_key("k4", now + 7200), now + 3600)
        .await
        .unwrap();
    assert_eq!(later.kid, "k4");
    assert_eq!(kids(s.store.as_ref()).await, ["k0", "k1", "k4"]);
}

async fn a_scheduled_rotation_happens_once_per_period(s: Subject) {
    // Every 100 s, published 10 s ahead: due once the newest key activated 90 s ago.
    let (every, prepublish) = (100, 10);
    let mut now = NOW_UNIX;
    s.store
        .add_signing_key(rotated_key("k0", now))
        .await
        .unwrap();
    let mut added = Vec::new();
    for step in 0..50 {
        let store = if step % 2 == 0 { &s.store } else { &s.twin };
        let newest = newest_signing_key(&store.signing_keys().await.unwrap())
            .unwrap()
            .clone();
        let candidate = rotated_key(&format!("s{step}"), newest.activates + every);
        let kept = store
            .rotate_signing_key(candidate.clone(), now + prepublish - every)
            .await
            .unwrap();
        if kept == candidate {
            added.push(now);
        }
        now += 10;
    }
    // 500 s: due at +90, +190, +290, +390, +490 (from each newest key's activation).
    assert_eq!(
        added,
        [90, 190, 290, 390, 490].map(|t| NOW_UNIX + t).to_vec(),
        "{:?}",
        kids(s.store.as_ref()).await
    );
}

async fn signing_keys_keep_their_times_and_are_deleted_by_kid(s: Subject) {
    for (kid, activates) in [("a", 0), ("b", NOW_UNIX), ("c", NOW_UNIX + 60)] {
        s.store
            .add_signing_key(rotated_key(kid, activates))
            .await
            .unwrap();
    }
    let stored = s.twin.signing_keys().await.unwrap();
    assert_eq!(
        stored.iter().map(|k| k.activates).collect::<Vec<_>>(),
        [0, NOW_UNIX, NOW_UNIX + 60]
    );
    assert_eq!(newest_signing_key(&stored).unwrap().kid, "c");
    assert!(s.twin.delete_signing_key("a").await.unwrap());
    assert!(!s.store.delete_signing_key("a").await.unwrap());
    assert_eq!(kids(s.store.as_ref()).await, ["b", "c"]);
}

async fn concurrent_rotations_through_two_handles_leave_one_pending_key(s: Subject) {
    s.store
        .add_signing_key(rotated_key("k0", NOW_UNIX))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 {
            s.store.clone()
        } else {
            s.twin.clone()
        };
        tasks.push(tokio::spawn(async move {
            store
                .rotate_signing_key(rotated_key(&format!("r{i}"), NOW_UNIX + 3600), NOW_UNIX)
                .await
                .unwrap()
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap().kid);
    }
    let stored = kids(s.store.as_ref()).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(answers.iter().all(|kid| *kid == stored[1]), "{answers:?}");
}

// Passkeys (SPEC §14).
on_both_backends!(
    a_second_factor_grant_adds_a_passkey_beside_any_factor,
    a_first_factor_grant_adds_a_passkey_only_while_the_user_has_no_factor,
    a_webauthn_ticket_adds_one_passkey_and_voids_the_users_other_pending_tickets,
    a_ticket_that_is_not_a_live_webauthn_ticket_of_the_user_refuses_and_changes_nothing,
    a_password_only_ticket_is_refused_once_the_user_has_a_factor,
    the_webauthn_factor_record_lasts_while_the_user_has_a_passkey,
    a_credential_id_registers_once_across_users,
    a_user_holds_at_most_max_passkeys,
    a_use_moves_the_counter_only_forwards_and_stores_what_it_brought,
    a_passkey_is_renamed_and_deleted_only_by_its_owner,
    keeping_a_factor_refuses_to_remove_the_last_one_and_nothing_changes,
    without_keeping_a_factor_the_last_passkey_goes_with_the_factor_record,
    an_mfa_reset_removes_the_passkeys_and_frees_their_ids,
    deleting_a_user_removes_their_passkeys_and_frees_their_ids,
    a_deleted_user_gets_no_passkey,
    a_ceremony_is_taken_once,
    an_expired_ceremony_is_not_taken_and_is_gone,
    purging_ceremonies_removes_only_expired_ones,
    passkeys_survive_an_export_imported_into_postgres,
);

on_both_backends!(
    threaded: a_credential_id_registers_once_under_concurrency,
    concurrent_adds_never_store_more_than_max_passkeys,
    of_concurrent_first_factor_adds_for_one_user_one_wins,
    a_webauthn_ticket_grants_once_under_concurrency,
    of_concurrent_uses_with_one_counter_one_is_accepted,
    a_ceremony_is_taken_once_under_concurrency,
    an_mfa_reset_racing_an_add_leaves_the_factor_record_beside_passkeys_only,
);

/// A passkey with credential id `id` for `user_id`, its counter 0.
fn passkey(id: &str, user_id: u64) -> Passkey {
    Passkey {
        v: SCHEMA_VERSION,
        id: id.into(),
        user_id,
        user_handle: format!("handle-{user_id}"),
        name: format!("key {id}"),
        created: NOW.into(),
        last_used: None,
        counter: 0,
        discoverable: Some(true),
        credential: serde_json::json!({
            "cred": { "cred_id": id, "counter": 0, "public_key": [1, 2, 3] },
            "backup_eligible": false,
        }),
    }
}

/// An enrollment ticket for a passkey, made with the password alone.
fn webauthn_ticket(id: &str, user_id: u64, expires_at: i64) -> Ticket {
    Ticket {
        kind: FactorKind::Webauthn,
        sealed_secret: None,
        ..ticket(id, user_id, expires_at)
    }
}

/// A TOTP factor confirmed for `user_id` (through a ticket, as enrollment does).
async fn confirm_totp(store: &dyn Store, user_id: u64, ticket_id: &str) {
    store
        .create_ticket(stepped_up(ticket(ticket_id, user_id, NOW_UNIX + 600)))
        .await
        .unwrap();
    assert!(
        store
            .confirm_ticket(ticket_id, factor(user_id), None, NOW_UNIX)
            .await
            .unwrap()
    );
}

async fn add(store: &dyn Store, id: &str, user_id: u64, grant: PasskeyGrant<'_>) -> PasskeyAdded {
    store
        .add_passkey(passkey(id, user_id), grant, None, NOW_UNIX)
        .await
        .unwrap()
}

/// The credential ids of the user's passkeys, as stored (oldest first).
async fn passkey_ids(store: &dyn Store, user_id: u64) -> Vec<String> {
    store
        .passkeys(user_id)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect()
}

async fn factor_kinds(store: &dyn Store, user_id: u64) -> Vec<FactorKind> {
    let mut kinds: Vec<FactorKind> = store
        .factors(user_id)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.kind)
        .collect();
    kinds.sort_by_key(|k| k.as_str());
    kinds
}

async fn users(s: &Subject, names: &[&str]) -> Vec<u64> {
    let mut ids = Vec::new();
    for name in names {
        ids.push(
            s.store
                .create_user(new_user(name), NOW_UNIX)
                .await
                .unwrap()
                .id,
        );
    }
    ids
}

async fn a_second_factor_grant_adds_a_passkey_beside_any_factor(s: Subject) {
    let [ada, bob] = users(&s, &["ada", "bob"]).await[..] else {
        unreachable!()
    };
    confirm_totp(s.store.as_ref(), ada, "t-ada").await;
    let added = s
        .twin
        .add_passkey(
            passkey("a1", ada),
            PasskeyGrant::SecondFactor,
            Some(vec!["r1".into()]),
            NOW_UNIX,
        )
        .await
        .unwrap();
    assert_eq!(added, PasskeyAdded::Added);
    assert_eq!(
        add(s.store.as_ref(), "a2", ada, PasskeyGrant::SecondFactor).await,
        PasskeyAdded::Added
    );
    // Without any factor too (the caller vouches for the second factor).
    assert_eq!(
        add(s.twin.as_ref(), "b1", bob, PasskeyGrant::SecondFactor).await,
        PasskeyAdded::Added
    );
    assert_eq!(passkey_ids(s.store.as_ref(), ada).await, ["a1", "a2"]);
    assert_eq!(passkey_ids(s.twin.as_ref(), bob).await, ["b1"]);
    assert_eq!(
        s.store.passkey("a1").await.unwrap(),
        Some(passkey("a1", ada)),
        "stored as given"
    );
    assert_eq!(
        factor_kinds(s.store.as_ref(), ada).await,
        [FactorKind::Otp, FactorKind::Webauthn]
    );
    assert_eq!(
        factor_kinds(s.twin.as_ref(), bob).await,
        [FactorKind::Webauthn]
    );
    // The recovery codes given with it were set.
    assert!(s.store.consume_recovery_code(ada, "r1").await.unwrap());
    assert!(!s.twin.consume_recovery_code(ada, "r1").await.unwrap());
}

async fn a_first_factor_grant_adds_a_passkey_only_while_the_user_has_no_factor(s: Subject) {
    let [ada, bob, cleo] = users(&s, &["ada", "bob", "cleo"]).await[..] else {
        unreachable!()
    };
    // A pending ticket is no factor.
    s.store
        .create_ticket(ticket("pending", ada, NOW_UNIX + 600))
        .await
        .unwrap();
    assert_eq!(
        add(s.store.as_ref(), "a1", ada, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Added
    );
    // Another passkey is a factor: a second first-factor add is refused.
    assert_eq!(
        add(s.twin.as_ref(), "a2", ada, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Refused
    );
    assert_eq!(passkey_ids(s.store.as_ref(), ada).await, ["a1"]);
    assert_eq!(s.store.passkey("a2").await.unwrap(), None);

    // A confirmed TOTP factor refuses it as well, and nothing changes.
    confirm_totp(s.store.as_ref(), bob, "t-bob").await;
    let refused = s
        .twin
        .add_passkey(
            passkey("b1", bob),
            PasskeyGrant::FirstFactor,
            Some(vec!["r".into()]),
            NOW_UNIX,
        )
        .await
        .unwrap();
    assert_eq!(refused, PasskeyAdded::Refused);
    assert!(passkey_ids(s.store.as_ref(), bob).await.is_empty());
    assert_eq!(s.store.passkey("b1").await.unwrap(), None);
    assert_eq!(factor_kinds(s.store.as_ref(), bob).await, [FactorKind::Otp]);
    assert!(!s.store.consume_recovery_code(bob, "r").await.unwrap());

    // The refused credential id is still free.
    assert_eq!(
        add(s.twin.as_ref(), "b1", cleo, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Added
    );
}

async fn a_webauthn_ticket_adds_one_passkey_and_voids_the_users_other_pending_tickets(s: Subject) {
    let [ada, bob] = users(&s, &["ada", "bob"]).await[..] else {
        unreachable!()
    };
    let expires = NOW_UNIX + 600;
    s.store
        .create_ticket(webauthn_ticket("wa", ada, expires))
        .await
        .unwrap();
    s.store
        .create_ticket(ticket("otp", ada, expires))
        .await
        .unwrap();
    s.store
        .create_ticket(webauthn_ticket("wa2", ada, expires))
        .await
        .unwrap();
    s.store
        .create_ticket(webauthn_ticket("bob", bob, expires))
        .await
        .unwrap();
    let added = s
        .twin
        .add_passkey(
            passkey("a1", ada),
            PasskeyGrant::Ticket("wa"),
            Some(vec!["r".into()]),
            NOW_UNIX,
        )
        .await
        .unwrap();
    assert_eq!(added, PasskeyAdded::Added);
    for id in ["wa", "otp", "wa2"] {
        assert!(
            s.store.ticket(id).await.unwrap().unwrap().used,
            "ticket {id} is used or voided"
        );
    }
    assert!(
        !s.store.ticket("bob").await.unwrap().unwrap().used,
        "another user's ticket is left alone"
    );
    assert_eq!(
        s.store.newest_pending_ticket(ada, NOW_UNIX).await.unwrap(),
        None
    );
    assert!(s.store.consume_recovery_code(ada, "r").await.unwrap());
    // Used once: neither it nor a voided ticket adds another.
    for t in ["wa", "wa2"] {
        assert_eq!(
            add(s.store.as_ref(), "a2", ada, PasskeyGrant::Ticket(t)).await,
            PasskeyAdded::Refused,
            "{t}"
        );
    }
    assert_eq!(passkey_ids(s.twin.as_ref(), ada).await, ["a1"]);
    assert_eq!(
        factor_kinds(s.twin.as_ref(), ada).await,
        [FactorKind::Webauthn]
    );
}

async fn a_ticket_that_is_not_a_live_webauthn_ticket_of_the_user_refuses_and_changes_nothing(
    s: Subject,
) {
    let [ada, bob] = users(&s, &["ada", "bob"]).await[..] else {
        unreachable!()
    };
    let expires = NOW_UNIX + 600;
    let mut used = webauthn_ticket("used", ada, expires);
    used.used = true;
    let tickets = [
        ticket("otp", ada, expires),
        webauthn_ticket("expired", ada, NOW_UNIX),
        used,
        webauthn_ticket("bobs", bob, expires),
    ];
    for t in &tickets {
        s.store.create_ticket(t.clone()).await.unwrap();
    }
    for grant in ["otp", "expired", "used", "bobs", "unknown"] {
        let refused = s
            .twin
            .add_passkey(
                passkey("a1", ada),
                PasskeyGrant::Ticket(grant),
                Some(vec!["r".into()]),
                NOW_UNIX,
            )
            .await
            .unwrap();
        assert_eq!(refused, PasskeyAdded::Refused, "{grant}");
    }
    // Nothing changed: no passkey, no factor, no recovery codes, the tickets as they were.
    assert!(passkey_ids(s.store.as_ref(), ada).await.is_empty());
    assert_eq!(s.store.passkey("a1").await.unwrap(), None);
    assert!(factor_kinds(s.store.as_ref(), ada).await.is_empty());
    assert!(!s.store.consume_recovery_code(ada, "r").await.unwrap());
    for t in &tickets {
        assert_eq!(
            s.store.ticket(&t.id).await.unwrap().as_ref(),
            Some(t),
            "{}",
            t.id
        );
    }
    // The live ticket of the user still grants.
    s.store
        .create_ticket(webauthn_ticket("live", ada, expires))
        .await
        .unwrap();
    assert_eq!(
        add(s.twin.as_ref(), "a1", ada, PasskeyGrant::Ticket("live")).await,
        PasskeyAdded::Added
    );
}

async fn a_password_only_ticket_is_refused_once_the_user_has_a_factor(s: Subject) {
    let [ada, bob] = users(&s, &["ada", "bob"]).await[..] else {
        unreachable!()
    };
    let expires = NOW_UNIX + 600;
    // Ada has a TOTP factor.
    confirm_totp(s.store.as_ref(), ada, "t-ada").await;
    s.store
        .create_ticket(webauthn_ticket("pwd", ada, expires))
        .await
        .unwrap();
    assert_eq!(
        add(s.twin.as_ref(), "a1", ada, PasskeyGrant::Ticket("pwd")).await,
        PasskeyAdded::Refused
    );
    assert!(!s.store.ticket("pwd").await.unwrap().unwrap().used);
    assert!(passkey_ids(s.store.as_ref(), ada).await.is_empty());
    assert_eq!(factor_kinds(s.store.as_ref(), ada).await, [FactorKind::Otp]);
    // One made with a second factor adds it.
    s.store
        .create_ticket(stepped_up(webauthn_ticket("mfa", ada, expires)))
        .await
        .unwrap();
    assert_eq!(
        add(s.twin.as_ref(), "a1", ada, PasskeyGrant::Ticket("mfa")).await,
        PasskeyAdded::Added
    );

    // Bob's factor is a passkey: a password-only ticket is refused all the same.
    assert_eq!(
        add(s.store.as_ref(), "b1", bob, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Added
    );
    s.store
        .create_ticket(webauthn_ticket("pwd-bob", bob, expires))
        .await
        .unwrap();
    assert_eq!(
        add(s.twin.as_ref(), "b2", bob, PasskeyGrant::Ticket("pwd-bob")).await,
        PasskeyAdded::Refused
    );
    assert!(!s.store.ticket("pwd-bob").await.unwrap().unwrap().used);
    assert_eq!(passkey_ids(s.store.as_ref(), bob).await, ["b1"]);
}

async fn the_webauthn_factor_record_lasts_while_the_user_has_a_passkey(s: Subject) {
    let [ada] = users(&s, &["ada"]).await[..] else {
        unreachable!()
    };
    assert!(factor_kinds(s.store.as_ref(), ada).await.is_empty());
    assert_eq!(
        add(s.store.as_ref(), "a1", ada, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Added
    );
    let factors = s.twin.factors(ada).await.unwrap();
    assert_eq!(factors.len(), 1);
    assert_eq!(factors[0].kind, FactorKind::Webauthn);
    assert_eq!(factors[0].user_id, ada);
    // One record for all of the user's passkeys.
    for id in ["a2", "a3"] {
        assert_eq!(
            add(s.twin.as_ref(), id, ada, PasskeyGrant::SecondFactor).await,
            PasskeyAdded::Added
        );
    }
    assert_eq!(s.store.factors(ada).await.unwrap(), factors);
    for id in ["a2", "a1"] {
        assert_eq!(
            s.twin.delete_passkey(ada, id, true).await.unwrap(),
            PasskeyRemoved::Removed
        );
        assert_eq!(s.store.factors(ada).await.unwrap(), factors, "{id}");
    }
    assert_eq!(
        s.store.delete_passkey(ada, "a3", false).await.unwrap(),
        PasskeyRemoved::Removed
    );
    assert!(s.twin.factors(ada).await.unwrap().is_empty());
    assert!(passkey_ids(s.twin.as_ref(), ada).await.is_empty());
}

async fn a_credential_id_registers_once_across_users(s: Subject) {
    let [ada, bob] = users(&s, &["ada", "bob"]).await[..] else {
        unreachable!()
    };
    assert_eq!(
        add(s.store.as_ref(), "k", ada, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Added
    );
    assert_eq!(
        add(s.twin.as_ref(), "k", bob, PasskeyGrant::SecondFactor).await,
        PasskeyAdded::Duplicate
    );
    assert_eq!(
        add(s.twin.as_ref(), "k", ada, PasskeyGrant::SecondFactor).await,
        PasskeyAdded::Duplicate
    );
    // A duplicate through a ticket leaves the ticket unused.
    s.store
        .create_ticket(webauthn_ticket("bobs", bob, NOW_UNIX + 600))
        .await
        .unwrap();
    assert_eq!(
        add(s.twin.as_ref(), "k", bob, PasskeyGrant::Ticket("bobs")).await,
        PasskeyAdded::Duplicate
    );
    assert!(!s.store.ticket("bobs").await.unwrap().unwrap().used);
    assert_eq!(s.store.passkey("k").await.unwrap().unwrap().user_id, ada);
    assert_eq!(passkey_ids(s.store.as_ref(), ada).await, ["k"]);
    assert!(passkey_ids(s.store.as_ref(), bob).await.is_empty());
    assert!(factor_kinds(s.store.as_ref(), bob).await.is_empty());
}

async fn a_user_holds_at_most_max_passkeys(s: Subject) {
    let [ada] = users(&s, &["ada"]).await[..] else {
        unreachable!()
    };
    for i in 0..MAX_PASSKEYS {
        let store = if i % 2 == 0 { &s.store } else { &s.twin };
        assert_eq!(
            add(
                store.as_ref(),
                &format!("k{i}"),
                ada,
                PasskeyGrant::SecondFactor
            )
            .await,
            PasskeyAdded::Added,
            "{i}"
        );
    }
    assert_eq!(
        add(s.store.as_ref(), "more", ada, PasskeyGrant::SecondFactor).await,
        PasskeyAdded::Full
    );
    // Full through a ticket: the ticket stays unused.
    s.store
        .create_ticket(stepped_up(webauthn_ticket("t", ada, NOW_UNIX + 600)))
        .await
        .unwrap();
    assert_eq!(
        add(s.twin.as_ref(), "more", ada, PasskeyGrant::Ticket("t")).await,
        PasskeyAdded::Full
    );
    assert!(!s.store.ticket("t").await.unwrap().unwrap().used);
    let expected: Vec<String> = (0..MAX_PASSKEYS).map(|i| format!("k{i}")).collect();
    assert_eq!(passkey_ids(s.twin.as_ref(), ada).await, expected);
    assert_eq!(s.store.passkey("more").await.unwrap(), None);
    // Once one goes, there is room again.
    assert_eq!(
        s.store.delete_passkey(ada, "k3", true).await.unwrap(),
        PasskeyRemoved::Removed
    );
    assert_eq!(
        add(s.twin.as_ref(), "more", ada, PasskeyGrant::Ticket("t")).await,
        PasskeyAdded::Added
    );
    assert_eq!(passkey_ids(s.store.as_ref(), ada).await.len(), MAX_PASSKEYS);
}

async fn a_use_moves_the_counter_only_forwards_and_stores_what_it_brought(s: Subject) {
    let [ada] = users(&s, &["ada"]).await[..] else {
        unreachable!()
    };
    assert_eq!(
        add(s.store.as_ref(), "k", ada, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Added
    );
    let credential = |n: u32| serde_json::json!({ "cred": { "cred_id": "k", "counter": n } });
    let at = |n: u32| format!("2026-01-01T00:00:{n:02}Z");
    // An authenticator without a counter: 0 after 0, each time.
    for (store, n) in [(&s.store, 1), (&s.twin, 2)] {
        assert!(
            store
                .use_passkey("k", 0, credential(0), &at(n))
                .await
                .unwrap()
        );
    }
    let stored = s.store.passkey("k").await.unwrap().unwrap();
    assert_eq!(
        (stored.counter, stored.last_used.as_deref()),
        (0, Some(at(2).as_str()))
    );
    // Forwards only.
    assert!(
        s.twin
            .use_passkey("k", 5, credential(5), &at(3))
            .await
            .unwrap()
    );
    for (counter, why) in [(5, "equal"), (4, "lower"), (0, "zero after a count")] {
        assert!(
            !s.store
                .use_passkey("k", counter, credential(counter), &at(9))
                .await
                .unwrap(),
            "{why}: a cloned authenticator"
        );
    }
    let stored = s.twin.passkey("k").await.unwrap().unwrap();
    assert_eq!(stored.counter, 5);
    assert_eq!(stored.credential, credential(5));
    assert_eq!(stored.last_used, Some(at(3)));
    assert!(
        s.store
            .use_passkey("k", 6, credential(6), &at(4))
            .await
            .unwrap()
    );
    let stored = s.twin.passkeys(ada).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (
            stored[0].counter,
            &stored[0].credential,
            stored[0].last_used.as_deref()
        ),
        (6, &credential(6), Some(at(4).as_str()))
    );
    // The rest of it is untouched.
    let untouched = Passkey {
        counter: 6,
        credential: credential(6),
        last_used: Some(at(4)),
        ..passkey("k", ada)
    };
    assert_eq!(stored[0], untouched);
    assert!(
        !s.store
            .use_passkey("unknown", 1, credential(1), &at(5))
            .await
            .unwrap()
    );
}

async fn a_passkey_is_renamed_and_deleted_only_by_its_owner(s: Subject) {
    let [ada, bob] = users(&s, &["ada", "bob"]).await[..] else {
        unreachable!()
    };
    assert_eq!(
        add(s.store.as_ref(), "k", ada, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Added
    );
    assert_eq!(
        add(s.store.as_ref(), "b", bob, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Added
    );
    assert!(!s.twin.rename_passkey(bob, "k", "mine now").await.unwrap());
    assert!(!s.twin.rename_passkey(ada, "unknown", "x").await.unwrap());
    assert_eq!(s.store.passkey("k").await.unwrap().unwrap().name, "key k");
    assert!(s.twin.rename_passkey(ada, "k", "Laptop").await.unwrap());
    assert_eq!(s.store.passkey("k").await.unwrap().unwrap().name, "Laptop");
    assert_eq!(s.twin.passkeys(ada).await.unwrap()[0].name, "Laptop");

    for keep in [true, false] {
        assert_eq!(
            s.twin.delete_passkey(bob, "k", keep).await.unwrap(),
            PasskeyRemoved::NotFound
        );
    }
    assert_eq!(
        s.twin.delete_passkey(ada, "unknown", false).await.unwrap(),
        PasskeyRemoved::NotFound
    );
    assert_eq!(passkey_ids(s.store.as_ref(), ada).await, ["k"]);
    assert_eq!(passkey_ids(s.store.as_ref(), bob).await, ["b"]);
    assert_eq!(
        factor_kinds(s.store.as_ref(), ada).await,
        [FactorKind::Webauthn]
    );
    assert_eq!(
        s.twin.delete_passkey(ada, "k", false).await.unwrap(),
        PasskeyRemoved::Removed
    );
    assert_eq!(s.store.passkey("k").await.unwrap(), None);
    assert_eq!(passkey_ids(s.store.as_ref(), bob).await, ["b"]);
}

async fn keeping_a_factor_refuses_to_remove_the_last_one_and_nothing_changes(s: Subject) {
    let [ada] = users(&s, &["ada"]).await[..] else {
        unreachable!()
    };
    for id in ["k1", "k2"] {
        assert_eq!(
            add(s.store.as_ref(), id, ada, PasskeyGrant::SecondFactor).await,
            PasskeyAdded::Added
        );
    }
    // Of two passkeys, one may go.
    assert_eq!(
        s.twin.delete_passkey(ada, "k1", true).await.unwrap(),
        PasskeyRemoved::Removed
    );
    // The last one is the last factor.
    for store in [&s.store, &s.twin] {
        assert_eq!(
            store.delete_passkey(ada, "k2", true).await.unwrap(),
            PasskeyRemoved::LastFactor
        );
    }
    assert_eq!(passkey_ids(s.store.as_ref(), ada).await, ["k2"]);
    assert_eq!(
        s.twin.passkey("k2").await.unwrap(),
        Some(passkey("k2", ada))
    );
    assert_eq!(
        factor_kinds(s.store.as_ref(), ada).await,
        [FactorKind::Webauthn]
    );
    // Beside a TOTP factor it is not the last factor.
    confirm_totp(s.store.as_ref(), ada, "t").await;
    assert_eq!(
        s.twin.delete_passkey(ada, "k2", true).await.unwrap(),
        PasskeyRemoved::Removed
    );
    assert!(passkey_ids(s.store.as_ref(), ada).await.is_empty());
    assert_eq!(factor_kinds(s.store.as_ref(), ada).await, [FactorKind::Otp]);
}

async fn without_keeping_a_factor_the_last_passkey_goes_with_the_factor_record(s: Subject) {
    let [ada] = users(&s, &["ada"]).await[..] else {
        unreachable!()
    };
    assert_eq!(
        add(s.store.as_ref(), "k", ada, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Added
    );
    assert_eq!(
        s.twin.delete_passkey(ada, "k", false).await.unwrap(),
        PasskeyRemoved::Removed
    );
    assert_eq!(
        s.store.delete_passkey(ada, "k", false).await.unwrap(),
        PasskeyRemoved::NotFound
    );
    assert!(passkey_ids(s.store.as_ref(), ada).await.is_empty());
    assert_eq!(s.store.passkey("k").await.unwrap(), None);
    assert!(s.twin.factors(ada).await.unwrap().is_empty());
    // The user has no factor again: a first-factor add is allowed, the id free.
    assert_eq!(
        add(s.twin.as_ref(), "k", ada, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Added
    );
}

async fn an_mfa_reset_removes_the_passkeys_and_frees_their_ids(s: Subject) {
    let [ada, bob] = users(&s, &["ada", "bob"]).await[..] else {
        unreachable!()
    };
    confirm_totp(s.store.as_ref(), ada, "t").await;
    for id in ["k1", "k2"] {
        assert_eq!(
            add(s.store.as_ref(), id, ada, PasskeyGrant::SecondFactor).await,
            PasskeyAdded::Added
        );
    }
    assert_eq!(
        add(s.store.as_ref(), "b1", bob, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Added
    );
    s.twin.reset_mfa(ada).await.unwrap();
    assert!(passkey_ids(s.store.as_ref(), ada).await.is_empty());
    assert!(s.store.factors(ada).await.unwrap().is_empty());
    for id in ["k1", "k2"] {
        assert_eq!(s.store.passkey(id).await.unwrap(), None, "{id}");
        assert_eq!(s.twin.passkey(id).await.unwrap(), None, "{id}");
    }
    // Bob's are untouched.
    assert_eq!(passkey_ids(s.twin.as_ref(), bob).await, ["b1"]);
    // The ids are free: another user may register one, and Ada (without a factor now) the other.
    assert_eq!(
        add(s.twin.as_ref(), "k1", bob, PasskeyGrant::SecondFactor).await,
        PasskeyAdded::Added
    );
    assert_eq!(
        add(s.store.as_ref(), "k2", ada, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Added
    );
    assert_eq!(s.twin.passkey("k1").await.unwrap().unwrap().user_id, bob);
    assert_eq!(s.twin.passkey("k2").await.unwrap().unwrap().user_id, ada);
}

async fn deleting_a_user_removes_their_passkeys_and_frees_their_ids(s: Subject) {
    let [ada, bob] = users(&s, &["ada", "bob"]).await[..] else {
        unreachable!()
    };
    for id in ["k1", "k2"] {
        assert_eq!(
            add(s.store.as_ref(), id, ada, PasskeyGrant::SecondFactor).await,
            PasskeyAdded::Added
        );
    }
    assert!(s.twin.delete_user("ada").await.unwrap());
    assert!(passkey_ids(s.store.as_ref(), ada).await.is_empty());
    assert!(s.store.factors(ada).await.unwrap().is_empty());
    for id in ["k1", "k2"] {
        assert_eq!(s.store.passkey(id).await.unwrap(), None, "{id}");
        assert_eq!(
            add(s.twin.as_ref(), id, bob, PasskeyGrant::SecondFactor).await,
            PasskeyAdded::Added,
            "{id} is free again"
        );
    }
    assert_eq!(passkey_ids(s.store.as_ref(), bob).await, ["k1", "k2"]);
}

async fn a_deleted_user_gets_no_passkey(s: Subject) {
    let [ada, bob] = users(&s, &["ada", "bob"]).await[..] else {
        unreachable!()
    };
    assert!(s.store.delete_user("ada").await.unwrap());
    assert_eq!(
        add(s.twin.as_ref(), "k1", ada, PasskeyGrant::SecondFactor).await,
        PasskeyAdded::Refused
    );
    assert_eq!(s.store.passkey("k1").await.unwrap(), None);
    assert!(s.store.factors(ada).await.unwrap().is_empty());
    assert_eq!(
        add(s.store.as_ref(), "k1", bob, PasskeyGrant::SecondFactor).await,
        PasskeyAdded::Added,
        "the id was never taken"
    );
}

fn ceremony(n: u64, expires: i64) -> PasskeyCeremony {
    PasskeyCeremony {
        v: SCHEMA_VERSION,
        id_hash: hash(n),
        purpose: CeremonyPurpose::Register,
        user_id: Some(n),
        ticket: Some(format!("ticket-{n}")),
        name: Some(format!("key {n}")),
        user_handle: Some(format!("handle-{n}")),
        state: serde_json::json!({ "challenge": format!("challenge-{n}") }),
        expires,
    }
}

async fn a_ceremony_is_taken_once(s: Subject) {
    let sign_in = PasskeyCeremony {
        purpose: CeremonyPurpose::SignIn,
        user_id: None,
        ticket: None,
        name: None,
        user_handle: None,
        ..ceremony(1, 2000)
    };
    s.store.create_ceremony(sign_in.clone()).await.unwrap();
    s.store.create_ceremony(ceremony(2, 2000)).await.unwrap();
    assert_eq!(s.twin.take_ceremony(&hash(3), 1000).await.unwrap(), None);
    assert_eq!(
        s.twin.take_ceremony(&hash(1), 1999).await.unwrap(),
        Some(sign_in)
    );
    assert_eq!(s.store.take_ceremony(&hash(1), 1000).await.unwrap(), None);
    assert_eq!(s.twin.take_ceremony(&hash(1), 1000).await.unwrap(), None);
    // The other ceremony is untouched, and kept as it was given.
    assert_eq!(
        s.store.take_ceremony(&hash(2), 1000).await.unwrap(),
        Some(ceremony(2, 2000))
    );
}

async fn an_expired_ceremony_is_not_taken_and_is_gone(s: Subject) {
    s.store.create_ceremony(ceremony(1, 2000)).await.unwrap();
    s.store.create_ceremony(ceremony(2, 2000)).await.unwrap();
    assert_eq!(s.twin.take_ceremony(&hash(1), 2000).await.unwrap(), None);
    // Gone, not merely refused: asked again at an earlier time, it is not there.
    assert_eq!(s.store.take_ceremony(&hash(1), 1000).await.unwrap(), None);
    assert_eq!(s.store.purge_ceremonies(2000).await.unwrap(), 1);
    assert_eq!(s.twin.take_ceremony(&hash(2), 1000).await.unwrap(), None);
}

async fn purging_ceremonies_removes_only_expired_ones(s: Subject) {
    for (n, expires) in [(1, 1000), (2, 1500), (3, 1501), (4, 3000)] {
        let store = if n % 2 == 0 { &s.store } else { &s.twin };
        store.create_ceremony(ceremony(n, expires)).await.unwrap();
    }
    assert_eq!(s.twin.purge_ceremonies(1500).await.unwrap(), 2);
    assert_eq!(s.store.purge_ceremonies(1500).await.unwrap(), 0);
    assert_eq!(s.store.take_ceremony(&hash(1), 0).await.unwrap(), None);
    assert_eq!(s.store.take_ceremony(&hash(2), 0).await.unwrap(), None);
    assert_eq!(
        s.twin.take_ceremony(&hash(3), 1500).await.unwrap(),
        Some(ceremony(3, 1501))
    );
    assert_eq!(
        s.twin.take_ceremony(&hash(4), 1500).await.unwrap(),
        Some(ceremony(4, 3000))
    );
}

/// Exports the subject's passkeys (sled can only export) and imports them into a fresh
/// PostgreSQL store: they arrive unchanged and keep their rules there.
async fn passkeys_survive_an_export_imported_into_postgres(s: Subject) {
    let [ada, bob] = users(&s, &["ada", "bob"]).await[..] else {
        unreachable!()
    };
    for (id, user) in [("a1", ada), ("b1", bob), ("a2", ada)] {
        assert_eq!(
            add(s.store.as_ref(), id, user, PasskeyGrant::SecondFactor).await,
            PasskeyAdded::Added
        );
    }
    assert!(
        s.store
            .use_passkey("a1", 7, serde_json::json!({ "counter": 7 }), NOW)
            .await
            .unwrap()
    );
    assert!(s.twin.rename_passkey(bob, "b1", "Phone").await.unwrap());
    let snapshot = s.twin.export().await.unwrap();
    let exported: Vec<(&str, u64)> = snapshot
        .passkeys
        .iter()
        .map(|p| (p.id.as_str(), p.user_id))
        .collect();
    assert_eq!(exported, [("a1", ada), ("a2", ada), ("b1", bob)]);
    assert_eq!(snapshot.passkeys[0].counter, 7);
    assert_eq!(snapshot.passkeys[2].name, "Phone");
    assert!(
        snapshot
            .factors
            .iter()
            .any(|f| f.user_id == bob && f.kind == FactorKind::Webauthn)
    );

    let db = Database::on_shared_server().await;
    let pg = PgStore::connect(&db.url(), 2).await.unwrap();
    pg.import(snapshot.clone()).await.unwrap();
    assert_eq!(pg.export().await.unwrap(), snapshot, "arrives unchanged");
    assert_eq!(passkey_ids(&pg, ada).await, ["a1", "a2"]);
    assert_eq!(
        pg.passkey("b1").await.unwrap(),
        s.store.passkey("b1").await.unwrap()
    );
    // The rules hold on the imported state.
    assert_eq!(
        add(&pg, "a1", bob, PasskeyGrant::SecondFactor).await,
        PasskeyAdded::Duplicate
    );
    assert_eq!(
        add(&pg, "a3", ada, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Refused
    );
    assert!(
        !pg.use_passkey("a1", 7, serde_json::json!({}), NOW)
            .await
            .unwrap()
    );
    assert_eq!(
        add(&pg, "a3", ada, PasskeyGrant::SecondFactor).await,
        PasskeyAdded::Added
    );
    assert_eq!(passkey_ids(&pg, ada).await, ["a1", "a2", "a3"]);
    assert_eq!(
        pg.delete_passkey(bob, "b1", true).await.unwrap(),
        PasskeyRemoved::LastFactor
    );
}

/// Runs `n` tasks at once (past a barrier), alternating between the two handles; their answers
/// in task order.
async fn at_once<T, F, Fut>(s: &Subject, n: usize, task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = if i % 2 == 0 { &s.store } else { &s.twin }.clone();
        let barrier = barrier.clone();
        let run = task(i, store);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            run.await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

fn count(answers: &[PasskeyAdded], which: PasskeyAdded) -> usize {
    answers.iter().filter(|a| **a == which).count()
}

async fn a_credential_id_registers_once_under_concurrency(s: Subject) {
    let n = 16;
    let names: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let ids = users(&s, &names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let answers = at_once(&s, n, |i, store| {
        let user = ids[i];
        async move { add(store.as_ref(), "shared", user, PasskeyGrant::FirstFactor).await }
    })
    .await;
    assert_eq!(count(&answers, PasskeyAdded::Added), 1, "{answers:?}");
    assert_eq!(
        count(&answers, PasskeyAdded::Duplicate),
        n - 1,
        "{answers:?}"
    );
    let winner = ids[answers
        .iter()
        .position(|a| *a == PasskeyAdded::Added)
        .unwrap()];
    assert_eq!(
        s.twin.passkey("shared").await.unwrap().unwrap().user_id,
        winner
    );
    for user in ids {
        let held = passkey_ids(s.store.as_ref(), user).await;
        let kinds = factor_kinds(s.store.as_ref(), user).await;
        if user == winner {
            assert_eq!((held.len(), kinds.len()), (1, 1));
        } else {
            assert!(
                held.is_empty() && kinds.is_empty(),
                "{user}: {held:?} {kinds:?}"
            );
        }
    }
}

async fn concurrent_adds_never_store_more_than_max_passkeys(s: Subject) {
    let [ada] = users(&s, &["ada"]).await[..] else {
        unreachable!()
    };
    for i in 0..MAX_PASSKEYS - 2 {
        assert_eq!(
            add(
                s.store.as_ref(),
                &format!("k{i}"),
                ada,
                PasskeyGrant::SecondFactor
            )
            .await,
            PasskeyAdded::Added
        );
    }
    let answers = at_once(&s, 16, |i, store| async move {
        add(
            store.as_ref(),
            &format!("new{i}"),
            ada,
            PasskeyGrant::SecondFactor,
        )
        .await
    })
    .await;
    assert_eq!(count(&answers, PasskeyAdded::Added), 2, "{answers:?}");
    assert_eq!(count(&answers, PasskeyAdded::Full), 14, "{answers:?}");
    assert_eq!(passkey_ids(s.twin.as_ref(), ada).await.len(), MAX_PASSKEYS);

    // From empty, many at once: never more than the most.
    let [bob] = users(&s, &["bob"]).await[..] else {
        unreachable!()
    };
    let answers = at_once(&s, 3 * MAX_PASSKEYS, |i, store| async move {
        add(
            store.as_ref(),
            &format!("bob{i}"),
            bob,
            PasskeyGrant::SecondFactor,
        )
        .await
    })
    .await;
    assert_eq!(
        count(&answers, PasskeyAdded::Added),
        MAX_PASSKEYS,
        "{answers:?}"
    );
    assert_eq!(passkey_ids(s.store.as_ref(), bob).await.len(), MAX_PASSKEYS);
}

async fn of_concurrent_first_factor_adds_for_one_user_one_wins(s: Subject) {
    for round in 0..5 {
        let [user] = users(&s, &[&format!("ada{round}")]).await[..] else {
            unreachable!()
        };
        let answers = at_once(&s, 8, |i, store| async move {
            add(
                store.as_ref(),
                &format!("r{round}-{i}"),
                user,
                PasskeyGrant::FirstFactor,
            )
            .await
        })
        .await;
        assert_eq!(
            count(&answers, PasskeyAdded::Added),
            1,
            "round {round}: {answers:?}"
        );
        assert_eq!(
            count(&answers, PasskeyAdded::Refused),
            7,
            "round {round}: {answers:?}"
        );
        assert_eq!(passkey_ids(s.twin.as_ref(), user).await.len(), 1);
        assert_eq!(
            factor_kinds(s.store.as_ref(), user).await,
            [FactorKind::Webauthn]
        );
    }
}

async fn a_webauthn_ticket_grants_once_under_concurrency(s: Subject) {
    let [ada] = users(&s, &["ada"]).await[..] else {
        unreachable!()
    };
    s.store
        .create_ticket(webauthn_ticket("wa", ada, NOW_UNIX + 600))
        .await
        .unwrap();
    let answers = at_once(&s, 10, |i, store| async move {
        add(
            store.as_ref(),
            &format!("k{i}"),
            ada,
            PasskeyGrant::Ticket("wa"),
        )
        .await
    })
    .await;
    assert_eq!(count(&answers, PasskeyAdded::Added), 1, "{answers:?}");
    assert_eq!(count(&answers, PasskeyAdded::Refused), 9, "{answers:?}");
    assert_eq!(passkey_ids(s.twin.as_ref(), ada).await.len(), 1);
    assert!(s.store.ticket("wa").await.unwrap().unwrap().used);
}

async fn of_concurrent_uses_with_one_counter_one_is_accepted(s: Subject) {
    let [ada] = users(&s, &["ada"]).await[..] else {
        unreachable!()
    };
    assert_eq!(
        add(s.store.as_ref(), "k", ada, PasskeyGrant::FirstFactor).await,
        PasskeyAdded::Added
    );
    for counter in [7, 8, 20] {
        let answers = at_once(&s, 16, |i, store| async move {
            let credential = serde_json::json!({ "counter": counter, "by": i });
            store
                .use_passkey("k", counter, credential, NOW)
                .await
                .unwrap()
        })
        .await;
        let accepted: Vec<usize> = (0..answers.len()).filter(|i| answers[*i]).collect();
        assert_eq!(accepted.len(), 1, "counter {counter}: {answers:?}");
        // What is stored is what the accepted use brought.
        let stored = s.twin.passkey("k").await.unwrap().unwrap();
        assert_eq!(stored.counter, counter);
        assert_eq!(
            stored.credential,
            serde_json::json!({ "counter": counter, "by": accepted[0] })
        );
    }
}

async fn a_ceremony_is_taken_once_under_concurrency(s: Subject) {
    s.store.create_ceremony(ceremony(1, 2000)).await.unwrap();
    let answers = at_once(&s, 16, |_, store| async move {
        store.take_ceremony(&hash(1), 1000).await.unwrap()
    })
    .await;
    let taken: Vec<PasskeyCeremony> = answers.into_iter().flatten().collect();
    assert_eq!(taken, [ceremony(1, 2000)], "exactly one take gets it");
}

/// An MFA reset (an administrator's) while the user registers a passkey: afterwards the
/// `webauthn` factor record is there exactly while the user has a passkey.
async fn an_mfa_reset_racing_an_add_leaves_the_factor_record_beside_passkeys_only(s: Subject) {
    for round in 0..100 {
        let [user] = users(&s, &[&format!("ada{round}")]).await[..] else {
            unreachable!()
        };
        let id = format!("r{round}");
        let key = id.clone();
        at_once(&s, 2, |i, store| {
            let id = id.clone();
            async move {
                if i == 0 {
                    add(store.as_ref(), &id, user, PasskeyGrant::SecondFactor).await;
                } else {
                    store.reset_mfa(user).await.unwrap();
                }
            }
        })
        .await;
        let held = passkey_ids(s.store.as_ref(), user).await;
        let kinds = factor_kinds(s.twin.as_ref(), user).await;
        assert_eq!(
            !held.is_empty(),
            kinds == [FactorKind::Webauthn],
            "round {round}: passkeys {held:?}, factors {kinds:?}"
        );
        let found = s.store.passkey(&key).await.unwrap();
        assert_eq!(found.is_some(), !held.is_empty(), "round {round}");
    }
}
