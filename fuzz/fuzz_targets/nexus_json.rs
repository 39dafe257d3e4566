//! The Nexus family's JSON bodies: verify-otp / verify-enrollment-otp, and domain creation with
//! the name it carries.
#![no_main]

use gatehouse::api::nexus::domains::CreateBody;
use gatehouse::api::{MAX_JSON_DEPTH, decode_json};
use gatehouse::domains::name::normalise;
use gatehouse::fuzzing::nexus_verify_body;
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::Value;

mod common;
use common::depth;

fuzz_target!(|data: &[u8]| {
    let value = serde_json::from_slice::<Value>(data);
    let verify = nexus_verify_body(data);
    let create = decode_json::<CreateBody>(data);
    if verify.is_ok() || create.is_ok() {
        // JSON in UTF-8. (serde_json's own Value refuses numbers beyond f64, which the grammar
        // allows and a skipped field may hold: syntax is checked without building values.)
        assert!(std::str::from_utf8(data).is_ok(), "decoded, yet not UTF-8");
        assert!(serde_json::from_slice::<IgnoredAny>(data).is_ok(), "decoded, yet not JSON");
        if let Ok(value) = &value {
            assert!(depth(value) <= MAX_JSON_DEPTH, "too deep, yet decoded");
        }
    }
    if let (Ok([otp, oob, access_token]), Ok(Value::Object(map))) = (&verify, &value) {
        for (field, name) in [(otp, "otp"), (oob, "oob"), (access_token, "accessToken")] {
            assert_eq!(field.as_deref(), map.get(name).and_then(Value::as_str), "{name}");
        }
    }
    if let Ok(CreateBody {
        domain: Some(domain),
        ..
    }) = create
        && let Ok(name) = normalise(&domain)
    {
        assert!(name.len() <= 253, "{name}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
            "{name}"
        );
        assert_eq!(normalise(&name).as_deref(), Ok(name.as_str()), "not a fixed point");
    }
});
