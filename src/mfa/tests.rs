//! The MFA use cases on a fixed clock, a temporary sled store, and the `log` SMS sender's outbox
//! file, which holds every code texted.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use super::service::{Collaborators, Mfa, MfaError, context};
use super::verify::{Codes, Granted};
use crate::auth::{Method, Principal};
use crate::clock::{Clock, FixedClock};
use crate::config::{LockoutConfig, MfaConfig, SmsConfig, SmtpConfig, TokensConfig, TotpConfig};
use crate::meter::Meter;
use crate::notify::Notifier;
use crate::secrets::Vault;
use crate::store::sled::SledStore;
use crate::store::{FactorKind, NewUser, Store};
use crate::tokens::Tokens;

const TICKET_TTL: i64 = 600;
const LOCKOUT: i64 = 900;
const PERIOD: i64 = 30;
const NUMBER: &str = "+14155550123";

fn config() -> MfaConfig {
    MfaConfig {
        default_factor: "otp".into(),
        ticket_ttl: Duration::from_secs(TICKET_TTL as u64),
        code_ttl: Duration::from_secs(300),
        totp: TotpConfig {
            issuer: "Gatehouse".into(),
            algorithm: "SHA1".into(),
            digits: 6,
            period: PERIOD as u64,
            skew: 1,
        },
        lockout: LockoutConfig {
            max_failures: 3,
            window: Duration::from_secs(300),
            duration: Duration::from_secs(LOCKOUT as u64),
        },
        send_limit: 5,
        send_window: Duration::from_secs(3600),
    }
}

/// The service, and Ada: a user with a phone number, signed in with a password only.
struct Fixture {
    mfa: Mfa,
    clock: Arc<FixedClock>,
    outbox: tempfile::TempDir,
    ada: Principal,
}

impl Fixture {
    async fn new() -> Fixture {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let clock = FixedClock::at(1_800_000_000);
        let vault = Arc::new(Vault::from_master(&[7u8; 32]).unwrap());
        let tokens = TokensConfig {
            issuer: "https://gh.test".into(),
            audience: "gatehouse".into(),
            access_ttl: Duration::from_secs(3600),
            signing_key_file: None,
            rotate_every: None,
            key_prepublish: Duration::from_secs(3600),
        };
        let tokens = Tokens::load(&tokens, store.clone(), vault.clone(), clock.clone())
            .await
            .unwrap();
        let outbox = tempfile::tempdir().unwrap();
        let smtp = SmtpConfig {
            url: None,
            from: "gatehouse@example.com".into(),
        };
        let sms = SmsConfig {
            kind: "log".into(),
            url: None,
            from: None,
            account_sid: None,
            auth_token: None,
        };
        let notifier = Notifier::new(&smtp, &sms, outbox.path()).unwrap();
        let new = NewUser {
            user_name: "ada".into(),
            email: Some("ada@example.com".into()),
            phone: Some(NUMBER.into()),
            scopes: vec!["read".into()],
            ..NewUser::default()
        };
        let user = store.create_user(new, clock.unix()).await.unwrap();
        let ada = Principal {
            user_id: user.id.to_string(),
            user_name: user.user_name,
            email: user.email,
            scopes: user.scopes,
            organizations: vec![],
            methods: vec![Method::Pwd],
        };
        let with = Collaborators {
            store,
            vault,
            tokens: Arc::new(tokens),
            notifier: Arc::new(notifier),
            clock: clock.clone(),
            meter: Arc::new(Meter::new()),
        };
        let mfa = Mfa::new(with, &config(), "https://gh.test");
        Fixture {
            mfa,
            clock,
            outbox,
            ada,
        }
    }

    /// A new authenticator-app ticket for Ada, and the secret it holds.
    async fn totp_ticket(&self) -> (String, Vec<u8>) {
        let ticket_id = self
            .mfa
            .enroll(&self.ada, FactorKind::Otp, true)
            .await
            .unwrap()
            .ticket_id;
        let ticket = self.mfa.store.ticket(&ticket_id).await.unwrap().unwrap();
        let sealed = ticket.sealed_secret.unwrap();
        let secret = self.mfa.vault.open(&sealed, &context(ticket.user_id));
        (ticket_id, secret.unwrap())
    }

    /// Ada with a confirmed authenticator app: its secret, and her recovery codes.
    async fn enrolled(&self) -> (Vec<u8>, Vec<String>) {
        let (ticket, secret) = self.totp_ticket().await;
        let code = self.code_at(&secret, 0);
        let confirmed = self.mfa.confirm_ticket(&ticket, &code).await.unwrap();
        (secret, confirmed.recovery_codes.unwrap())
    }

    /// The authenticator's code `steps` periods from now.
    fn code_at(&self, secret: &[u8], steps: i64) -> String {
        let time = self.clock.unix() + steps * PERIOD;
        self.mfa.totp.code_at(secret, time as u64).unwrap()
    }

    /// A code that none of the steps accepted now (the current one and one either side) gives.
    fn wrong_code(&self, secret: &[u8]) -> String {
        let near = [-1, 0, 1].map(|steps| self.code_at(secret, steps));
        (0..)
            .map(|n| format!("{n:06}"))
            .find(|code| !near.contains(code))
            .unwrap()
    }

    async fn verify(&self, otp: &str) -> Result<Granted, MfaError> {
        let codes = Codes {
            otp: Some(otp.into()),
            ..Codes::default()
        };
        self.mfa.verify(&self.ada, &codes).await
    }

    /// The last code texted, as the outbox recorded it.
    fn texted_code(&self) -> String {
        let log = std::fs::read_to_string(self.outbox.path().join("sms-outbox.log")).unwrap();
        let line = log.lines().last().unwrap();
        assert!(line.starts_with(&format!("to={NUMBER} ")), "{line}");
        let (_, after) = line.split_once("code is ").unwrap();
        after[..6].to_owned()
    }
}

#[tokio::test]
async fn an_enrollment_ticket_expires_at_its_ttl() {
    let f = Fixture::new().await;
    let (ticket, secret) = f.totp_ticket().await;
    f.clock.advance(TICKET_TTL - 1);
    assert_eq!(f.mfa.check_ticket(&ticket).await, Ok(()));
    f.clock.advance(1);
    assert_eq!(f.mfa.check_ticket(&ticket).await, Err(MfaError::TicketGone));
    let code = f.code_at(&secret, 0);
    let refused = f.mfa.confirm_ticket(&ticket, &code).await.unwrap_err();
    assert_eq!(refused, MfaError::TicketGone);
}

#[tokio::test]
async fn a_confirmed_ticket_cannot_be_confirmed_twice() {
    let f = Fixture::new().await;
    let (ticket, secret) = f.totp_ticket().await;
    let code = f.code_at(&secret, 0);
    let confirmed = f.mfa.confirm_ticket(&ticket, &code).await.unwrap();
    assert_eq!(confirmed.kind, FactorKind::Otp);
    f.clock.advance(PERIOD);
    let code = f.code_at(&secret, 0);
    let refused = f.mfa.confirm_ticket(&ticket, &code).await.unwrap_err();
    assert_eq!(refused, MfaError::TicketGone);
}

#[tokio::test]
async fn wrong_codes_count_towards_a_lockout_that_lifts_after_its_duration() {
    let f = Fixture::new().await;
    let (secret, _) = f.enrolled().await;
    f.clock.advance(PERIOD);
    let wrong = f.wrong_code(&secret);
    assert_eq!(f.verify(&wrong).await.unwrap_err(), MfaError::WrongCode);
    assert_eq!(f.verify(&wrong).await.unwrap_err(), MfaError::WrongCode);
    assert_eq!(
        f.verify(&wrong).await.unwrap_err(),
        MfaError::Locked(LOCKOUT)
    );
    // While locked, the right code is refused too.
    let right = f.code_at(&secret, 0);
    assert_eq!(
        f.verify(&right).await.unwrap_err(),
        MfaError::Locked(LOCKOUT)
    );
    f.clock.advance(LOCKOUT - 1);
    let right = f.code_at(&secret, 0);
    assert_eq!(f.verify(&right).await.unwrap_err(), MfaError::Locked(1));
    f.clock.advance(1);
    let right = f.code_at(&secret, 0);
    assert!(f.verify(&right).await.is_ok());
}

#[tokio::test]
async fn a_replayed_totp_code_is_refused() {
    let f = Fixture::new().await;
    let (secret, _) = f.enrolled().await;
    f.clock.advance(PERIOD);
    let code = f.code_at(&secret, 0);
    let granted = f.verify(&code).await.unwrap();
    assert_eq!(granted.scope, "read mfa");
    assert_eq!(f.verify(&code).await.unwrap_err(), MfaError::WrongCode);
}

#[tokio::test]
async fn a_recovery_code_works_once() {
    let f = Fixture::new().await;
    let (_, recovery) = f.enrolled().await;
    assert_eq!(recovery.len(), 10);
    assert!(f.verify(&recovery[0]).await.is_ok());
    assert_eq!(
        f.verify(&recovery[0]).await.unwrap_err(),
        MfaError::WrongCode
    );
}

#[tokio::test]
async fn replacing_recovery_codes_invalidates_the_old_ones() {
    let f = Fixture::new().await;
    let (_, old) = f.enrolled().await;
    let stepped_up = Principal {
        methods: vec![Method::Pwd, Method::Otp],
        ..f.ada.clone()
    };
    let new = f.mfa.replace_recovery_codes(&stepped_up).await.unwrap();
    assert_eq!(f.verify(&old[0]).await.unwrap_err(), MfaError::WrongCode);
    assert!(f.verify(&new[0]).await.is_ok());
}

#[tokio::test]
async fn sms_opt_in_verify_with_a_wrong_code_fails() {
    let f = Fixture::new().await;
    let registration = f.mfa.sms_opt_in(&f.ada, NUMBER).await.unwrap();
    let sent = f.texted_code();
    let wrong = if sent == "000000" { "111111" } else { "000000" };
    let verify = |code| f.mfa.sms_opt_in_verify(&f.ada, registration, code);
    assert_eq!(verify(wrong).await, Err(MfaError::WrongCode));
    assert_eq!(verify(&sent).await, Ok(()));
}

#[tokio::test]
async fn a_challenge_for_a_factor_the_user_lacks_is_refused() {
    let f = Fixture::new().await;
    f.enrolled().await;
    for kind in [FactorKind::Sms, FactorKind::Email] {
        assert_eq!(
            f.mfa.challenge(&f.ada, kind).await,
            Err(MfaError::NoFactor(
                "the user has no confirmed factor of that kind"
            ))
        );
    }
    assert!(!f.outbox.path().join("sms-outbox.log").exists());
}
