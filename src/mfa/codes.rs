//! Random values the MFA flows hand out: one-time codes, recovery codes, ticket ids.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random source failed".to_owned())?;
    Ok(bytes)
}

/// Six uniformly random digits (rejection sampling, so no digit string is likelier than another).
pub fn one_time_code() -> Result<String, String> {
    loop {
        let n = u32::from_be_bytes(random::<4>()?);
        // 4_294_000_000 is the largest multiple of 1_000_000 below 2^32.
        if n < 4_294_000_000 {
            return Ok(format!("{:06}", n % 1_000_000));
        }
    }
}

/// A recovery code: 10 characters of Crockford-style base32 (50 bits), shown as `xxxxx-xxxxx`.
pub fn recovery_code() -> Result<String, String> {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let bytes = random::<10>()?;
    let chars: String = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect();
    Ok(format!("{}-{}", &chars[..5], &chars[5..]))
}

/// Normalises what a user typed as a recovery code (case, spaces, missing dash).
pub fn normalise_recovery_code(input: &str) -> String {
    let compact: String = input
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if compact.len() == 10 {
        format!("{}-{}", &compact[..5], &compact[5..])
    } else {
        compact
    }
}

/// An enrollment ticket id: 256 random bits, URL-safe.
pub fn ticket_id() -> Result<String, String> {
    Ok(URL_SAFE_NO_PAD.encode(random::<32>()?))
}

/// Whether `id` has the form [`ticket_id`] gives: 43 base64url characters (256 bits). Anything
/// else (a WS opt-in registration, a guess) is no ticket the enrollment page serves.
pub fn is_ticket_id(id: &str) -> bool {
    id.len() == 43
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A fresh TOTP secret.
pub fn totp_secret() -> Result<[u8; super::totp::SECRET_LEN], String> {
    random()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_time_codes_are_six_digits() {
        for _ in 0..200 {
            let code = one_time_code().unwrap();
            assert_eq!(code.len(), 6);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn recovery_codes_survive_sloppy_typing() {
        let code = recovery_code().unwrap();
        assert_eq!(code.len(), 11);
        assert_eq!(
            normalise_recovery_code(&code.to_uppercase().replace('-', " ")),
            code
        );
    }

    #[test]
    fn ticket_ids_carry_256_bits() {
        let id = ticket_id().unwrap();
        assert_eq!(id.len(), 43);
        assert!(is_ticket_id(&id));
        assert_ne!(id, ticket_id().unwrap());
        assert!(!is_ticket_id("ws-optin-12345"));
        assert!(!is_ticket_id(&format!("{id}A")));
        assert!(!is_ticket_id(&format!("{}.", &id[..42])));
    }
}
