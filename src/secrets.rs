//! The master key (SPEC §5) and what is derived from it: AEAD sealing of TOTP secrets at rest, and
//! keyed hashes of short codes (a 6-digit code's plain hash would fall to a dictionary at once).

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::SecretsConfig;

/// Keys derived from the master key.
pub struct Vault {
    aead: LessSafeKey,
    codes: ring::hmac::Key,
    rng: SystemRandom,
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn derive(master: &[u8; 32], info: &[u8]) -> Result<[u8; 32], String> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"gatehouse").extract(master);
    let info = [info];
    let okm = prk
        .expand(&info, Len(32))
        .map_err(|_| "key derivation failed".to_owned())?;
    let mut out = [0u8; 32];
    okm.fill(&mut out)
        .map_err(|_| "key derivation failed".to_owned())?;
    Ok(out)
}

fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| "the master key must be base64".to_owned())?;
    bytes
        .try_into()
        .map_err(|_| "the master key must be 32 bytes".to_owned())
}

/// The configured master key (`secrets.master_key_file`, else `GATEHOUSE_MASTER_KEY`), or else
/// the development key kept in `{dir}/master.key`; `None` when there is neither yet. Errors name
/// where the key came from, never the key.
fn existing_key(config: &SecretsConfig, dir: &Path) -> Result<Option<[u8; 32]>, String> {
    if let Some(secret) = &config.master_key {
        let source = match config.master_key_file {
            Some(_) => "secrets.master_key_file",
            None => "GATEHOUSE_MASTER_KEY",
        };
        return decode_key(secret.expose())
            .map(Some)
            .map_err(|e| format!("{source}: {e}"));
    }
    let path = dir.join("master.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => decode_key(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// What [`Vault::load`] would refuse, without generating anything.
pub fn check(config: &SecretsConfig, dir: &Path) -> Result<(), String> {
    existing_key(config, dir).map(drop)
}

impl Vault {
    /// The vault for the configured master key (`secrets.master_key_file` or
    /// `GATEHOUSE_MASTER_KEY`). Without one, a key is generated into `{dir}/master.key` once and
    /// reused, with a warning: fine for development, not for production.
    pub fn load(config: &SecretsConfig, dir: &Path) -> Result<Vault, String> {
        let path = dir.join("master.key");
        if config.master_key.is_none() {
            tracing::warn!(
                path = %path.display(),
                "no master key configured (secrets.master_key_file or GATEHOUSE_MASTER_KEY); using a generated development key"
            );
        }
        let master = match existing_key(config, dir)? {
            Some(key) => key,
            None => {
                let mut key = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| "the system random source failed".to_owned())?;
                crate::private::create_dir(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                let mut file = crate::private::open_options()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                file.write_all(STANDARD.encode(key).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                key
            }
        };
        Vault::from_master(&master)
    }

    pub fn from_master(master: &[u8; 32]) -> Result<Vault, String> {
        let aead_key = derive(master, b"gatehouse aead v1")?;
        let code_key = derive(master, b"gatehouse codes v1")?;
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &aead_key)
            .map_err(|_| "bad AEAD key".to_owned())?;
        Ok(Vault {
            aead: LessSafeKey::new(unbound),
            codes: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &code_key),
            rng: SystemRandom::new(),
        })
    }

    /// Encrypts `plaintext` bound to `context` (for example the owning user's id), so a sealed
    /// value moved to another record does not open. Output: nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| "the system random source failed".to_owned())?;
        let mut buffer = plaintext.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut buffer,
            )
            .map_err(|_| "encryption failed".to_owned())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        Ok(out)
    }

    /// Decrypts what [`Vault::seal`] produced for the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < aead::NONCE_LEN {
            return Err("sealed value too short".into());
        }
        let (nonce, ciphertext) = sealed.split_at(aead::NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce".to_owned())?;
        let mut buffer = ciphertext.to_vec();
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(context), &mut buffer)
            .map_err(|_| "decryption failed (wrong master key?)".to_owned())?;
        Ok(plain.to_vec())
    }

    /// A keyed hash of a short code, for storage and constant-time comparison.
    pub fn code_hash(&self, purpose: &str, code: &str) -> String {
        let mut ctx = ring::hmac::Context::with_key(&self.codes);
        ctx.update(purpose.as_bytes());
        ctx.update(&[0]);
        ctx.update(code.as_bytes());
        URL_SAFE_NO_PAD.encode(ctx.sign().as_ref())
    }
}

/// Constant-time equality of two hashes.
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_context() {
        let vault = Vault::from_master(&[7u8; 32]).unwrap();
        let sealed = vault.seal(b"totp secret", b"user:1").unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"totp secret"));
        assert_eq!(vault.open(&sealed, b"user:1").unwrap(), b"totp secret");
        assert!(vault.open(&sealed, b"user:2").is_err());
        let other = Vault::from_master(&[8u8; 32]).unwrap();
        assert!(other.open(&sealed, b"user:1").is_err());
    }

    #[test]
    fn development_key_is_generated_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let config = SecretsConfig {
            master_key_file: None,
            master_key: None,
        };
        let first = Vault::load(&config, &dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("master.key")), 0o600);
        let sealed = first.seal(b"x", b"c").unwrap();
        let second = Vault::load(&config, &dir).unwrap();
        assert_eq!(second.open(&sealed, b"c").unwrap(), b"x");
    }

    #[test]
    fn code_hashes_depend_on_key_and_purpose() {
        let vault = Vault::from_master(&[1u8; 32]).unwrap();
        assert_eq!(
            vault.code_hash("sms", "123456"),
            vault.code_hash("sms", "123456")
        );
        assert_ne!(
            vault.code_hash("sms", "123456"),
            vault.code_hash("email", "123456")
        );
        let other = Vault::from_master(&[2u8; 32]).unwrap();
        assert_ne!(
            vault.code_hash("sms", "123456"),
            other.code_hash("sms", "123456")
        );
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
