//! The Authorization header: at most one credential, Basic or Bearer, read exactly.
//! Input lines are the values of as many Authorization headers.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gatehouse::auth::{AuthError, Credential, credential};
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=')
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(AUTHORIZATION, value);
        }
    }
    let count = headers.get_all(AUTHORIZATION).iter().count();
    let result = credential(&headers);
    if count >= 2 {
        assert!(matches!(result, Err(AuthError::Malformed(_))), "{result:?}");
    }
    let value = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim();
    match result {
        Ok(None) => assert_eq!(count, 0),
        Ok(Some(Credential::Bearer(token))) => {
            assert_eq!(count, 1);
            assert!(!token.is_empty() && token.bytes().all(token_char), "{token:?}");
            assert!(value.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("bearer")));
            assert!(value.ends_with(&token));
        }
        Ok(Some(Credential::Basic {
            user_name,
            password,
        })) => {
            assert_eq!(count, 1);
            assert!(!user_name.contains(':'));
            assert!(value.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("basic")));
            // Only canonical base64 of `user:password` is read.
            let encoded = STANDARD.encode(format!("{user_name}:{password}"));
            assert!(value.ends_with(&encoded), "{value:?} is not {encoded:?}");
        }
        Err(AuthError::Invalid(_)) => assert_eq!(count, 1),
        Err(AuthError::Malformed(_)) => {}
        Err(AuthError::Unavailable(why)) => panic!("reading a header asked the store: {why}"),
        Err(AuthError::Busy | AuthError::Throttled(_)) => {
            panic!("reading a header hashed or counted a password")
        }
        Err(AuthError::NewUsersLimited(_)) => {
            panic!("reading a header created a trusted issuer's user")
        }
    }
});
