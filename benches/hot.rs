//! Micro-benchmarks of the functions every request or verification runs: access-token
//! verification (first sight and remembered), the identity assertion, TOTP checks, header
//! sanitising and path normalisation. `cargo bench --bench hot`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::auth::{Method, Principal};
use gatehouse::clock::FixedClock;
use gatehouse::config::{TokensConfig, TotpConfig};
use gatehouse::hygiene::{Preset, Sanitizer};
use gatehouse::mfa::totp::TotpParams;
use gatehouse::proxy::headers::IdentityHeaders;
use gatehouse::secrets::Vault;
use gatehouse::store::Store;
use gatehouse::store::sled::SledStore;
use gatehouse::tokens::Tokens;
use http::{HeaderMap, HeaderName, HeaderValue};

fn principal() -> Principal {
    Principal {
        user_id: "42".into(),
        user_name: "ada".into(),
        email: Some("ada@example.com".into()),
        scopes: vec!["read".into(), "write".into()],
        organizations: vec![],
        methods: vec![Method::Pwd, Method::Otp],
    }
}

fn tokens(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let config = TokensConfig {
        issuer: "https://gh.bench".into(),
        audience: "gatehouse".into(),
        access_ttl: Duration::from_secs(3600),
        signing_key_file: None,
        rotate_every: None,
        key_prepublish: Duration::from_secs(3600),
    };
    let vault = Arc::new(Vault::from_master(&[7u8; 32]).unwrap());
    let tokens = runtime
        .block_on(Tokens::load(
            &config,
            store.clone(),
            vault.clone(),
            FixedClock::at(1_800_000_000),
        ))
        .unwrap();
    let principal = principal();
    let token = tokens.issue_access(&principal).unwrap();
    c.bench_function("jwt: verify a remembered access token", |b| {
        b.iter(|| tokens.verify_access(black_box(&token)).unwrap())
    });
    c.bench_function("jwt: verify an access token first seen", |b| {
        // A fresh token each time, so that nothing is remembered.
        let fresh: Vec<String> = (0..64)
            .map(|_| tokens.issue_access(&principal).unwrap())
            .collect();
        let mut i = 0;
        b.iter_batched(
            || {
                i += 1;
                let loaded = runtime
                    .block_on(Tokens::load(
                        &config,
                        store.clone(),
                        vault.clone(),
                        FixedClock::at(1_800_000_000),
                    ))
                    .unwrap();
                (loaded, fresh[i % fresh.len()].clone())
            },
            |(loaded, token)| loaded.verify_access(&token).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("jwt: sign an identity assertion", |b| {
        b.iter(|| tokens.assertion(black_box(&principal), "app").unwrap())
    });
    let identity = IdentityHeaders::new(&Preset::Gatehouse.names());
    c.bench_function(
        "headers: identity headers and assertion of a principal seen before",
        |b| {
            b.iter(|| {
                let mut headers = HeaderMap::new();
                identity
                    .set(&mut headers, black_box(&principal), || {
                        tokens.assertion(&principal, "app")
                    })
                    .unwrap();
                headers
            })
        },
    );
}

fn totp(c: &mut Criterion) {
    let params = TotpParams::from_config(&TotpConfig {
        issuer: "Gatehouse".into(),
        algorithm: "SHA1".into(),
        digits: 6,
        period: 30,
        skew: 1,
    });
    let secret = [3u8; 20];
    c.bench_function("totp: check a wrong code (all three steps tried)", |b| {
        b.iter(|| params.check(black_box(&secret), "000000", 1_800_000_000, Some(1)))
    });
}

fn headers(c: &mut Criterion) {
    let sanitizer = Sanitizer::new(&Preset::Gatehouse.names());
    let mut sent = HeaderMap::new();
    for (name, value) in [
        ("host", "app.example"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-encoding", "gzip, deflate, br"),
        ("authorization", "Bearer abc.def.ghi"),
        ("x-auth-user", "mallory"),
        ("X_Auth_User", "mallory"),
        ("connection", "keep-alive, x-trace"),
        ("x-trace", "1"),
        ("cookie", "a=b; c=d"),
    ] {
        sent.append(
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).unwrap(),
            HeaderValue::from_static(value),
        );
    }
    c.bench_function("headers: sanitise a typical request", |b| {
        b.iter_batched(
            || sent.clone(),
            |mut headers| sanitizer.clean_request(&mut headers, false),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn paths(c: &mut Criterion) {
    c.bench_function("path: normalise a plain path", |b| {
        b.iter(|| gatehouse::path::normalize(black_box("/api/v1/orders/12345/items")).unwrap())
    });
    c.bench_function("path: normalise dot segments and escapes", |b| {
        b.iter(|| {
            gatehouse::path::normalize(black_box("/public/./a//b/../%7Euser/%61pi/x")).unwrap()
        })
    });
}

criterion_group! {
    name = hot;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = tokens, totp, headers, paths
}
criterion_main!(hot);
