//! JWTs on gatehouse's path: the header and the unverified issuer read before verifying, then
//! verification by gatehouse's own keys. The first byte picks the input's form: a raw token, or
//! `header\nclaims\nsignature` encoded here, or `header\nclaims` signed here with the real key
//! (so that claims checks are reached). `@kid` in a header stands for the real key's id.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gatehouse::clock::FixedClock;
use gatehouse::config::TokensConfig;
use gatehouse::fuzzing::{external_kid_plausible, own_kid_plausible, unverified_issuer};
use gatehouse::secrets::Vault;
use gatehouse::store::sled::SledStore;
use gatehouse::tokens::{LEEWAY, Tokens};
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use ring::signature::Ed25519KeyPair;

const ISSUER: &str = "https://gh.fuzz";
const AUDIENCE: &str = "gatehouse";
const NOW: i64 = 1_800_000_000;

struct Fixture {
    tokens: Tokens,
    pair: Ed25519KeyPair,
    kid: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("a key");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("the key reads");
    let body = STANDARD.encode(pkcs8.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    let file = std::env::temp_dir().join(format!("gatehouse-fuzz-{}.pem", std::process::id()));
    std::fs::write(&file, pem).expect("the key file is written");
    let config = TokensConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        access_ttl: Duration::from_secs(3600),
        signing_key_file: Some(file.clone()),
        rotate_every: None,
        key_prepublish: Duration::from_secs(3600),
    };
    let store = std::sync::Arc::new(SledStore::temporary().expect("a store"));
    let vault = std::sync::Arc::new(Vault::from_master(&[7u8; 32]).expect("a vault"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let tokens = runtime
        .block_on(Tokens::load(&config, store, vault, FixedClock::at(NOW)))
        .expect("tokens load");
    let _ = std::fs::remove_file(file);
    let kid = tokens.jwks()["keys"][0]["kid"]
        .as_str()
        .expect("a kid")
        .to_owned();
    Fixture { tokens, pair, kid }
});

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fuzz_target!(|data: &[u8]| {
    let fixture = &*FIXTURE;
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    let token = match form % 3 {
        0 => match std::str::from_utf8(rest) {
            Ok(token) => token.to_owned(),
            Err(_) => return,
        },
        form => {
            let text = String::from_utf8_lossy(rest).replace("@kid", &fixture.kid);
            let mut parts = text.splitn(3, '\n');
            let header = parts.next().unwrap_or_default();
            let claims = parts.next().unwrap_or_default();
            let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
            let signature = if form == 2 {
                fixture.pair.sign(input.as_bytes()).as_ref().to_vec()
            } else {
                parts.next().unwrap_or_default().as_bytes().to_vec()
            };
            format!("{input}.{}", b64(&signature))
        }
    };

    let header = jsonwebtoken::decode_header(&token);
    let issuer = unverified_issuer(&token);
    if let Ok(Some(kid)) = header.as_ref().map(|h| h.kid.as_deref()) {
        if own_kid_plausible(kid) {
            assert!((1..=64).contains(&kid.len()));
            assert!(kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
        if external_kid_plausible(kid) {
            assert!(!kid.contains("..") && !kid.contains(['/', '\\', '%', ' ']), "{kid:?}");
        }
    }

    if let Ok(claims) = fixture.tokens.verify(&token, AUDIENCE) {
        let header = header.expect("a verified token has a header");
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(fixture.kid.as_str()));
        assert_eq!(claims.iss, ISSUER);
        assert_eq!(claims.aud, AUDIENCE);
        assert!(claims.exp.saturating_add(LEEWAY) >= NOW, "expired: {claims:?}");
        assert!(claims.nbf.saturating_sub(LEEWAY) <= NOW, "not yet valid: {claims:?}");
        // The issuer read before verifying, which picks the verifier, is the one verified.
        assert_eq!(issuer.as_deref(), Some(ISSUER));
    }
});
