//! Domain names as organisations claim them: IDNA to ASCII (UTS #46), lower case, no trailing dot,
//! RFC 1035 lengths, hostname labels, at least two labels, never an IP literal.

/// Normalises `input` or says what is wrong with it.
pub fn normalise(input: &str) -> Result<String, String> {
    let trimmed = input.trim().trim_end_matches('.');
    if trimmed.is_empty() {
        return Err("the domain is empty".into());
    }
    if trimmed.parse::<std::net::IpAddr>().is_ok() || trimmed.starts_with('[') {
        return Err("an IP address is not a domain".into());
    }
    let ascii = idna::domain_to_ascii(trimmed)
        .map_err(|_| format!("`{input}` is not a valid domain name"))?;
    let ascii = ascii.to_ascii_lowercase();
    if ascii.len() > 253 {
        return Err("the domain is longer than 253 characters".into());
    }
    let labels: Vec<&str> = ascii.split('.').collect();
    if labels.len() < 2 {
        return Err("the domain needs at least two labels, such as example.com".into());
    }
    for label in &labels {
        if label.is_empty() {
            return Err("the domain has an empty label".into());
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(format!("`{label}` is not a valid label"));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("an IP address is not a domain".into());
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_are_normalised() {
        assert_eq!(normalise("Example.COM.").unwrap(), "example.com");
        assert_eq!(
            normalise("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(normalise(" sub.Example.org ").unwrap(), "sub.example.org");
    }

    #[test]
    fn invalid_names_are_refused() {
        for bad in [
            "",
            ".",
            "localhost",
            "127.0.0.1",
            "::1",
            "[::1]",
            "10.0.0.1.",
            "a..b.com",
            "-a.com",
            "a-.com",
            "a_b.com",
            "exa mple.com",
            "1.2.3.4",
        ] {
            assert!(normalise(bad).is_err(), "{bad:?}");
        }
        assert!(normalise(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(normalise(&format!("{}com", "abcdefghi.".repeat(26))).is_err());
    }
}

#[cfg(test)]
mod properties {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_normalised_name_is_a_lower_case_ascii_hostname_and_a_fixed_point(
            input in prop_oneof![
                "\\PC{0,40}",
                "([a-zA-Z0-9-]{0,10}\\.){0,4}[a-zA-Z0-9-]{0,10}\\.?",
                "(xn--[a-z0-9-]{0,12}\\.)?[a-zA-Z\u{e0}-\u{ff}\u{3b1}-\u{3c9}]{1,8}\\.[a-z]{2,4}",
            ],
        ) {
            if let Ok(name) = normalise(&input) {
                prop_assert!(name.len() <= 253, "{}", name);
                prop_assert!(name.split('.').count() >= 2, "{}", name);
                prop_assert!(
                    name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
                    "{}", name
                );
                prop_assert_eq!(normalise(&name), Ok(name.clone()));
            }
        }
    }
}
