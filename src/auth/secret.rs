//! Secrets gatehouse makes and checks: random tokens (stored as SHA-256 hashes) and argon2id
//! password hashes.

use std::cell::{Cell, RefCell};

use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom;

/// A new random secret of 256 bits, base64url, with a readable prefix (`gha_`, `ghk_`, …) so a
/// leaked one is recognisable in a scanner.
pub fn generate(prefix: &str) -> Result<String, String> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random source failed".to_owned())?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// How a high-entropy secret (ApplicationToken, WsAccessKey) is stored: SHA-256, base64url.
/// A slow hash is not needed: the secret has 256 bits of entropy.
pub fn hash_token(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// argon2id with OWASP's recommended parameters: 19 MiB, 2 iterations, 1 lane.
/// <https://cheatsheetseries.owasp.org/cheatsheets/Password_Storage_Cheat_Sheet.html>
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The most argon2 memory a thread keeps between hashes, in 1 KiB blocks: that of our own
/// parameters. A stored hash that asks for more gets memory of its own for the one computation.
const KEPT_BLOCKS: usize = 19 * 1024;

thread_local! {
    /// This thread's argon2 working memory, reused by every hash it computes: allocating and
    /// freeing 19 MiB per hash made the allocator's heaps grow with each burst of passwords.
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
    /// Only the bounded hashing threads keep it; any other thread that hashes (the bootstrap
    /// file's passwords at start) would otherwise hold 19 MiB for as long as it lives.
    static KEEP: Cell<bool> = const { Cell::new(false) };
}

/// Makes this thread keep its argon2 working memory between hashes (the hashing threads).
pub(crate) fn keep_working_memory() {
    KEEP.with(|keep| keep.set(true));
}

/// Computes the raw argon2 output of `password` and `salt` into `out`.
fn compute(argon: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> bool {
    let count = argon.params().block_count();
    let run = |blocks: &mut [Block], out: &mut [u8]| {
        argon
            .hash_password_into_with_memory(password, salt, out, blocks)
            .is_ok()
    };
    if count <= KEPT_BLOCKS && KEEP.with(Cell::get) {
        let kept = BLOCKS.with(|kept| {
            let mut blocks = kept.try_borrow_mut().ok()?;
            if blocks.len() < count {
                blocks.resize(count, Block::new());
            }
            Some(run(&mut blocks[..count], &mut *out))
        });
        if let Some(done) = kept {
            return done;
        }
    }
    run(&mut vec![Block::new(); count], out)
}

/// Hashes a password into a PHC string (with its own random salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "the system random source failed".to_owned())?;
    let argon = argon2();
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    if !compute(&argon, password.as_bytes(), &salt, &mut out) {
        return Err("cannot hash the password".into());
    }
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params())
            .map_err(|e| format!("cannot hash the password: {e}"))?,
        salt: Some(Salt::new(&salt).map_err(|e| format!("cannot hash the password: {e}"))?),
        hash: Some(Output::new(&out).map_err(|e| format!("cannot hash the password: {e}"))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    compute(&argon, password.as_bytes(), salt, &mut out)
        && bool::from(subtle::ConstantTimeEq::ct_eq(&out[..], expected.as_bytes()))
}

/// Why `hash` cannot be a stored password hash, if it cannot: it must be an argon2id PHC string
/// with its parameters, salt and hash (what [`hash_password`] makes). Never repeats the value.
pub fn check_password_hash(hash: &str) -> Result<(), String> {
    let expected =
        "must be an argon2id PHC string such as `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`";
    let parsed = PasswordHash::new(hash).map_err(|_| expected.to_owned())?;
    let complete = parsed.algorithm.as_str() == Algorithm::Argon2id.ident().as_str()
        && parsed.salt.is_some()
        && parsed.hash.is_some()
        && Params::try_from(&parsed).is_ok();
    if complete {
        Ok(())
    } else {
        Err(expected.to_owned())
    }
}

/// Whether `hash` has the form of [`hash_token`]'s output: 32 bytes in base64url, unpadded.
pub fn is_token_hash(hash: &str) -> bool {
    URL_SAFE_NO_PAD
        .decode(hash)
        .is_ok_and(|bytes| bytes.len() == 32)
}

/// Spends the time of a real verification, so that an unknown user answers no faster than a
/// wrong password (SECURITY.md promise 10).
pub fn verify_nothing(password: &str) {
    static DUMMY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(hash) = DUMMY.get_or_init(|| hash_password("gatehouse-dummy-password").ok()) {
        let _ = verify_password(password, hash);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn password_hash_verifies_only_the_right_password() {
        let hash = hash_password("correct horse").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    /// Hashes made before the working memory was reused (by the argon2 crate's own hasher)
    /// still verify, and ours verify with it.
    #[test]
    fn hashes_agree_with_the_argon2_crates_own() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let theirs = argon2()
            .hash_password(b"correct horse")
            .unwrap()
            .to_string();
        assert!(verify_password("correct horse", &theirs));
        assert!(!verify_password("correct horsf", &theirs));
        let ours = hash_password("correct horse").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(argon2().verify_password(b"correct horse", &parsed).is_ok());
        // Older parameters (argon2i, other costs) still verify.
        let old = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(4096, 3, 1, None).unwrap(),
        )
        .hash_password(b"pw")
        .unwrap()
        .to_string();
        assert!(verify_password("pw", &old));
        assert!(!verify_password("px", &old));
    }

    #[test]
    fn only_the_hashing_threads_keep_argon2_memory_between_hashes() {
        std::thread::spawn(|| {
            let hash = hash_password("correct horse").unwrap();
            assert!(verify_password("correct horse", &hash));
            assert_eq!(BLOCKS.with(|b| b.borrow().capacity()), 0);
            keep_working_memory();
            assert!(verify_password("correct horse", &hash));
            assert_eq!(BLOCKS.with(|b| b.borrow().len()), KEPT_BLOCKS);
            assert!(!verify_password("wrong horse", &hash));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn generated_secrets_are_distinct_and_hash_stably() {
        let a = generate("gha_").unwrap();
        let b = generate("gha_").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("gha_") && a.len() == 4 + 43);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
