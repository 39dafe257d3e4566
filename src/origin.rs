//! Web origins (RFC 6454) as browsers send them in `Origin`: `scheme://host[:port]`, lowercase,
//! without the scheme's default port. Configured origins and the public URL are brought to this
//! form once, so that a request's `Origin` is compared as bytes.

use http::Uri;

/// The origin of an absolute `http(s)` URL (its path and query are not part of it), or `None`.
pub fn of_url(url: &str) -> Option<String> {
    let url = url.trim();
    let uri: Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = uri.authority()?;
    // Userinfo has no place in an origin.
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some(match authority.port_u16() {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Whether the `Origin` a request sent is one of `allowed` (each already in [`of_url`]'s form).
/// `null`, an opaque origin, or a value that is no origin is never allowed.
pub fn is_allowed(sent: &[u8], allowed: &[String]) -> bool {
    let Ok(sent) = std::str::from_utf8(sent) else {
        return false;
    };
    // A browser sends exactly the origin; anything with a path is not one.
    let sent = sent.trim();
    if sent.eq_ignore_ascii_case("null") {
        return false;
    }
    let Some(normal) = of_url(sent) else {
        return false;
    };
    // `https://a.example/` or `https://a.example/x`: a path after the authority is no origin.
    if sent.splitn(4, '/').nth(3).is_some() {
        return false;
    }
    allowed.contains(&normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_lowercase_without_default_ports() {
        assert_eq!(
            of_url("HTTPS://App.Example:443/").as_deref(),
            Some("https://app.example")
        );
        assert_eq!(
            of_url("http://app.example:8080").as_deref(),
            Some("http://app.example:8080")
        );
        assert_eq!(
            of_url("https://[::1]:8443").as_deref(),
            Some("https://[::1]:8443")
        );
        assert_eq!(of_url("ftp://app.example"), None);
        assert_eq!(of_url("app.example"), None);
        assert_eq!(of_url("https://user@app.example"), None);
    }

    #[test]
    fn only_exact_origins_are_allowed() {
        let allowed = vec!["https://app.example".to_owned()];
        assert!(is_allowed(b"https://app.example", &allowed));
        assert!(is_allowed(b"https://APP.example:443", &allowed));
        assert!(!is_allowed(b"https://app.example.evil.example", &allowed));
        assert!(!is_allowed(b"https://evil.example", &allowed));
        assert!(!is_allowed(b"http://app.example", &allowed));
        assert!(!is_allowed(b"https://app.example:8443", &allowed));
        assert!(!is_allowed(b"https://app.example/path", &allowed));
        assert!(!is_allowed(b"null", &allowed));
        assert!(!is_allowed(b"", &allowed));
        assert!(!is_allowed(b"https://user@app.example", &allowed));
    }
}
