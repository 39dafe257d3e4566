//! TOTP (RFC 6238) with totp-rs, plus the replay rule gatehouse adds: a code is accepted at most
//! once, and never for a time step at or before the last accepted one.
//! <https://www.rfc-editor.org/rfc/rfc6238>

use totp_rs::{Algorithm, Builder, Totp};

use crate::config::TotpConfig;

/// Bytes of a new TOTP secret: 160 bits, RFC 4226's recommendation.
pub const SECRET_LEN: usize = 20;

/// The parameters every factor of this deployment uses.
#[derive(Debug, Clone)]
pub struct TotpParams {
    pub issuer: String,
    pub algorithm: Algorithm,
    pub digits: u8,
    pub period: u64,
    pub skew: u8,
}

/// The outcome of checking a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Valid for this time step, which is later than any accepted before.
    Accepted(u64),
    /// Valid, but for a step already used (or earlier): a replay.
    Replayed,
    Wrong,
}

impl TotpParams {
    pub fn from_config(config: &TotpConfig) -> TotpParams {
        let algorithm = match config.algorithm.as_str() {
            "SHA256" => Algorithm::SHA256,
            "SHA512" => Algorithm::SHA512,
            _ => Algorithm::SHA1,
        };
        TotpParams {
            issuer: config.issuer.clone(),
            algorithm,
            digits: config.digits,
            period: config.period,
            skew: config.skew,
        }
    }

    fn totp(&self, secret: &[u8], account: &str) -> Result<Totp, String> {
        let mut builder = Builder::new()
            .with_algorithm(self.algorithm)
            .with_digits(self.digits)
            .with_step_duration(self.period)
            .with_skew(u16::from(self.skew))
            .with_secret(secret.to_vec());
        if !account.is_empty() {
            builder = builder
                .with_issuer(Some(self.issuer.as_str()))
                .with_account_name(account.replace(':', "_"));
        }
        builder
            .build()
            .map_err(|e| format!("invalid TOTP parameters: {e:?}"))
    }

    /// The code for Unix time `time`.
    pub fn code_at(&self, secret: &[u8], time: u64) -> Result<String, String> {
        Ok(self.totp(secret, "")?.generate(time).to_string())
    }

    /// Checks `code` at Unix time `now` (± skew), refusing steps at or before `last_step`.
    pub fn check(&self, secret: &[u8], code: &str, now: u64, last_step: Option<u64>) -> Check {
        let code = code.trim();
        if code.len() != usize::from(self.digits) || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Check::Wrong;
        }
        let Ok(totp) = self.totp(secret, "") else {
            return Check::Wrong;
        };
        match totp.check(code, now) {
            Some(step) if last_step.is_some_and(|last| step <= last) => Check::Replayed,
            Some(step) => Check::Accepted(step),
            None => Check::Wrong,
        }
    }

    /// The `otpauth://totp/…` URI authenticator apps scan.
    pub fn uri(&self, secret: &[u8], account: &str) -> Result<String, String> {
        self.totp(secret, account)?
            .to_url()
            .map_err(|e| format!("cannot build the otpauth URI: {e:?}"))
    }
}

/// Base32 (RFC 4648, no padding) for manual entry.
pub fn base32(secret: &[u8]) -> String {
    totp_rs::Secret::from(secret.to_vec()).to_base32()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn params(algorithm: Algorithm, digits: u8) -> TotpParams {
        TotpParams {
            issuer: "Gatehouse".into(),
            algorithm,
            digits,
            period: 30,
            skew: 1,
        }
    }

    /// RFC 6238 appendix B: the same times under SHA1, SHA256 and SHA512, 8 digits.
    #[test]
    fn rfc6238_appendix_b_vectors() {
        let sha1 = b"12345678901234567890".to_vec();
        let sha256 = b"12345678901234567890123456789012".to_vec();
        let sha512 = b"1234567890123456789012345678901234567890123456789012345678901234".to_vec();
        let vectors: [(u64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (time, c1, c256, c512) in vectors {
            assert_eq!(
                params(Algorithm::SHA1, 8).code_at(&sha1, time).unwrap(),
                c1,
                "{time}"
            );
            assert_eq!(
                params(Algorithm::SHA256, 8).code_at(&sha256, time).unwrap(),
                c256,
                "{time}"
            );
            assert_eq!(
                params(Algorithm::SHA512, 8).code_at(&sha512, time).unwrap(),
                c512,
                "{time}"
            );
        }
    }

    /// RFC 4226 appendix D: HOTP values for counters 0–9, which are TOTP steps 0–9.
    #[test]
    fn rfc4226_appendix_d_vectors() {
        let secret = b"12345678901234567890";
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        let p = params(Algorithm::SHA1, 6);
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(
                p.code_at(secret, counter as u64 * 30).unwrap(),
                *code,
                "counter {counter}"
            );
        }
    }

    #[test]
    fn a_step_is_accepted_once_and_earlier_steps_never() {
        let p = params(Algorithm::SHA1, 6);
        let secret = [9u8; SECRET_LEN];
        let now = 1_800_000_000;
        let code = p.code_at(&secret, now).unwrap();
        let step = now / 30;
        assert_eq!(p.check(&secret, &code, now, None), Check::Accepted(step));
        assert_eq!(p.check(&secret, &code, now, Some(step)), Check::Replayed);
        let previous = p.code_at(&secret, now - 30).unwrap();
        assert_eq!(
            p.check(&secret, &previous, now, Some(step)),
            Check::Replayed
        );
        let next = p.code_at(&secret, now + 30).unwrap();
        assert_eq!(
            p.check(&secret, &next, now, Some(step)),
            Check::Accepted(step + 1)
        );
    }

    #[test]
    fn skew_allows_one_step_either_side_only() {
        let p = params(Algorithm::SHA1, 6);
        let secret = [3u8; SECRET_LEN];
        let now = 1_800_000_015;
        assert!(matches!(
            p.check(&secret, &p.code_at(&secret, now - 30).unwrap(), now, None),
            Check::Accepted(_)
        ));
        assert!(matches!(
            p.check(&secret, &p.code_at(&secret, now + 30).unwrap(), now, None),
            Check::Accepted(_)
        ));
        let far = p.code_at(&secret, now + 90).unwrap();
        if far != p.code_at(&secret, now).unwrap() {
            assert_eq!(p.check(&secret, &far, now, None), Check::Wrong);
        }
        assert_eq!(p.check(&secret, "12345", now, None), Check::Wrong);
        assert_eq!(p.check(&secret, "abcdef", now, None), Check::Wrong);
    }

    /// What `check` must answer, from `code_at` alone: the earliest step of the window
    /// `[now/period - skew, now/period + skew]` whose code is `code` decides; a step at or
    /// before `last` is a replay.
    fn expected(p: &TotpParams, secret: &[u8], code: &str, now: u64, last: Option<u64>) -> Check {
        let origin = now / p.period;
        let skew = u64::from(p.skew);
        let step = (origin.saturating_sub(skew)..=origin + skew)
            .find(|s| p.code_at(secret, s * p.period).unwrap() == code);
        match step {
            None => Check::Wrong,
            Some(s) if last.is_some_and(|l| s <= l) => Check::Replayed,
            Some(s) => Check::Accepted(s),
        }
    }

    fn any_params() -> impl Strategy<Value = TotpParams> {
        (
            prop::sample::select(vec![Algorithm::SHA1, Algorithm::SHA256, Algorithm::SHA512]),
            6u8..=8,
            15u64..=120,
            0u8..=2,
        )
            .prop_map(|(algorithm, digits, period, skew)| TotpParams {
                issuer: "Gatehouse".into(),
                algorithm,
                digits,
                period,
                skew,
            })
    }

    proptest! {
        #[test]
        fn a_code_is_accepted_iff_its_step_is_within_skew_of_now_and_after_the_last(
            p in any_params(),
            secret in prop::collection::vec(any::<u8>(), SECRET_LEN..=64),
            now in 0u64..4_000_000_000,
            offset in -4i64..=4,
            last_offset in proptest::option::of(-4i64..=4),
        ) {
            let origin = now / p.period;
            let Some(step) = origin.checked_add_signed(offset) else {
                return Ok(());
            };
            let code = p.code_at(&secret, step * p.period).unwrap();
            let last = last_offset.and_then(|o| step.checked_add_signed(o));
            let got = p.check(&secret, &code, now, last);
            prop_assert_eq!(got, expected(&p, &secret, &code, now, last));
            // Unless another step of the window happens to share the code, the code's own step
            // alone decides.
            let skew = i64::from(p.skew);
            let shared = (origin.saturating_sub(u64::from(p.skew))..=origin + u64::from(p.skew))
                .any(|s| s != step && p.code_at(&secret, s * p.period).unwrap() == code);
            if !shared {
                let in_window = offset.abs() <= skew;
                let after_last = last.is_none_or(|l| step > l);
                let want = match (in_window, after_last) {
                    (false, _) => Check::Wrong,
                    (true, false) => Check::Replayed,
                    (true, true) => Check::Accepted(step),
                };
                prop_assert_eq!(got, want);
            }
        }

        #[test]
        fn the_window_is_the_same_from_the_first_to_the_last_second_of_a_step(
            p in any_params(),
            secret in prop::collection::vec(any::<u8>(), SECRET_LEN..=SECRET_LEN),
            origin in 10u64..100_000_000,
        ) {
            let skew = u64::from(p.skew);
            let first = origin * p.period;
            let last_second = first + p.period - 1;
            for now in [first, last_second] {
                for step in origin - skew - 1..=origin + skew + 1 {
                    let code = p.code_at(&secret, step * p.period).unwrap();
                    let got = p.check(&secret, &code, now, None);
                    prop_assert_eq!(got, expected(&p, &secret, &code, now, None));
                    if step.abs_diff(origin) <= skew {
                        prop_assert!(matches!(got, Check::Accepted(s) if s <= step), "{:?}", got);
                    }
                }
                // One second either side of the step moves the window by one step.
                let before = p.code_at(&secret, (origin - skew - 1) * p.period).unwrap();
                prop_assert_eq!(
                    p.check(&secret, &before, first - 1, None),
                    expected(&p, &secret, &before, first - 1, None)
                );
                prop_assert!(matches!(p.check(&secret, &before, first - 1, None), Check::Accepted(_)));
                let after = p.code_at(&secret, (origin + skew + 1) * p.period).unwrap();
                prop_assert_eq!(
                    p.check(&secret, &after, last_second + 1, None),
                    expected(&p, &secret, &after, last_second + 1, None)
                );
                prop_assert!(matches!(p.check(&secret, &after, last_second + 1, None), Check::Accepted(_)));
            }
        }

        #[test]
        fn codes_of_the_wrong_shape_are_wrong(
            p in any_params(),
            secret in prop::collection::vec(any::<u8>(), SECRET_LEN..=SECRET_LEN),
            now in 0u64..4_000_000_000,
            code in "[0-9a-z +-]{0,10}",
        ) {
            let digits = usize::from(p.digits);
            let trimmed = code.trim();
            if trimmed.len() != digits || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
                prop_assert_eq!(p.check(&secret, &code, now, None), Check::Wrong);
            }
        }
    }

    /// Under this secret steps 62131182 and 62131183 share the code 273915 (found by search).
    /// The earliest matching step of the window decides, so the code is accepted once, not once
    /// for each step that shares it.
    #[test]
    fn a_code_shared_by_two_steps_of_the_window_is_accepted_only_once() {
        let p = params(Algorithm::SHA1, 6);
        let secret = [9u8; SECRET_LEN];
        let (first, second) = (62_131_182u64, 62_131_183u64);
        assert_eq!(p.code_at(&secret, first * 30).unwrap(), "273915");
        assert_eq!(p.code_at(&secret, second * 30).unwrap(), "273915");
        let now = second * 30 + 5;
        assert_eq!(
            p.check(&secret, "273915", now, Some(first - 1)),
            Check::Accepted(first)
        );
        assert_eq!(
            p.check(&secret, "273915", now, Some(first)),
            Check::Replayed
        );
    }

    #[test]
    fn uri_names_issuer_account_and_secret() {
        let p = params(Algorithm::SHA1, 6);
        let uri = p.uri(&[1u8; SECRET_LEN], "ada@example.com").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/Gatehouse:ada%40example.com?"),
            "{uri}"
        );
        assert!(
            uri.contains(&format!("secret={}", base32(&[1u8; SECRET_LEN]))),
            "{uri}"
        );
        assert!(uri.contains("issuer=Gatehouse"), "{uri}");
    }
}
