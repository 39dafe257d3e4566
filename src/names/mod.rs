//! The rules every user name, email and display name obeys wherever it comes from: the admin API,
//! the bootstrap file, a trusted issuer's token (SPEC §10). A value that breaks them is refused,
//! never stored and never repaired, so that the name stored is exactly the name an upstream reads
//! in the identity headers and the one an operator finds with the admin API. Domain names have
//! their own rules ([`domain`]).

pub mod domain;

use std::fmt;

use unicode_normalization::is_nfc;

/// The longest user name, in characters.
pub const USER_NAME_MAX: usize = 128;

/// The longest display name (first, last, nick), in characters.
pub const DISPLAY_NAME_MAX: usize = 256;

/// The longest email address, in bytes (RFC 5321 §4.5.3.1.3 path limit).
pub const EMAIL_MAX: usize = 254;

/// Which rule a value broke; the message says what the rule is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    UserName,
    Email,
    DisplayName,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameError::UserName => {
                "userName must be 1 to 128 characters in Unicode NFC, without `/`, whitespace, control or invisible characters"
            }
            NameError::Email => "email must be an address such as ada@example.com",
            NameError::DisplayName => {
                "names must be at most 256 characters in Unicode NFC without control characters"
            }
        })
    }
}

impl std::error::Error for NameError {}

/// Characters that show nothing or turn the text around them: a name holding one looks like
/// another name (`hank\u{200b}` is shown as `hank`). Unicode's format characters (Cf) that
/// occur in text, and the variation selectors.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
        | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}' | '\u{e0000}'..='\u{e0fff}')
}

/// A user name: 1 to [`USER_NAME_MAX`] characters, NFC, with no `/` (it is a path segment of the
/// admin API), no whitespace anywhere (so there is nothing to trim: an HTTP header value loses
/// its surrounding spaces, and `hank ` would reach the upstream as `hank`), no control and no
/// invisible characters.
pub fn check_user_name(name: &str) -> Result<(), NameError> {
    let ok = (1..=USER_NAME_MAX).contains(&name.chars().count())
        && !name
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control() || invisible(c))
        && is_nfc(name);
    ok.then_some(()).ok_or(NameError::UserName)
}

/// An email address: `local@domain.tld`, at most [`EMAIL_MAX`] bytes, no whitespace and no
/// control characters (it is sent upstream as a header value). The domain has at least two
/// labels and none of them is empty (`ada@.example`, `ada@example..com` are not addresses).
pub fn check_email(email: &str) -> Result<(), NameError> {
    let ok = email.rsplit_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && domain.split('.').all(|l| !l.is_empty())
    }) && email.len() <= EMAIL_MAX
        && !email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || invisible(c))
        && is_nfc(email);
    ok.then_some(()).ok_or(NameError::Email)
}

/// A first, last or nick name: at most [`DISPLAY_NAME_MAX`] characters, NFC, no control
/// characters (spaces inside are fine: "Ada Lovelace").
pub fn check_display_name(name: &str) -> Result<(), NameError> {
    let ok = name.chars().count() <= DISPLAY_NAME_MAX
        && !name.chars().any(char::is_control)
        && is_nfc(name);
    ok.then_some(()).ok_or(NameError::DisplayName)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_exclude_separators_whitespace_controls_and_other_forms() {
        for good in [
            "ada",
            "ada@example.com",
            "Zoë",
            "李",
            "a.b-c_d+e#f",
            &"x".repeat(128),
        ] {
            assert_eq!(check_user_name(good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            "a/b",
            "a b",
            "hank ",
            " hank",
            "hank\t",
            "hank\u{a0}",
            "a\nb",
            "a\rb",
            "a\u{1b}b",
            "a\u{0}b",
            "a\u{85}b",
            "hank\u{200b}",
            "\u{feff}hank",
            "a\u{202e}b",
            "Zoe\u{308}",
            "\u{212b}",
            &"x".repeat(129),
        ] {
            assert_eq!(check_user_name(bad), Err(NameError::UserName), "{bad:?}");
        }
    }

    #[test]
    fn emails_are_addresses_without_whitespace_or_controls() {
        assert_eq!(check_email("ada@example.com"), Ok(()));
        for bad in [
            "ada",
            "@example.com",
            "ada@localhost",
            "ada@example.com.",
            "ada@.example",
            "0@.0",
            "ada@example..com",
            "ada @example.com",
            "ada@example.com\r\nX-Auth-User: root",
            "ada\t@example.com",
            &format!("{}@example.com", "a".repeat(250)),
        ] {
            assert_eq!(check_email(bad), Err(NameError::Email), "{bad:?}");
        }
    }

    #[test]
    fn display_names_may_hold_spaces_but_no_controls() {
        assert_eq!(check_display_name("Ada Lovelace"), Ok(()));
        for bad in ["Ada\nLovelace", "a\u{7f}", "Zoe\u{308}", &"x".repeat(257)] {
            assert_eq!(
                check_display_name(bad),
                Err(NameError::DisplayName),
                "{bad:?}"
            );
        }
    }
}
