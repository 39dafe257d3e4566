//! The Manage family's JSON bodies for both endpoints: fields within their limits, or errorCode
//! 4000.
#![no_main]

use gatehouse::fuzzing::{ManageEndpoint, manage_fields};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for endpoint in [ManageEndpoint::SendOtp, ManageEndpoint::ValidateOtp] {
        match manage_fields(endpoint, false, data) {
            Ok((user_name, phone_number, otp)) => {
                assert!(!user_name.trim().is_empty() && user_name.len() <= 256);
                assert!(!phone_number.trim().is_empty());
                assert_eq!(otp.is_some(), endpoint == ManageEndpoint::ValidateOtp);
                if let Some(otp) = otp {
                    assert!(!otp.trim().is_empty() && otp.len() <= 64);
                }
                // serde also reads a struct from an array of its fields, in order.
                let parsed: serde_json::Value =
                    serde_json::from_slice(data).expect("what decoded is JSON");
                if parsed.is_object() {
                    assert_eq!(parsed["userName"], user_name.as_str());
                    assert_eq!(parsed["phoneNumber"], phone_number.as_str());
                }
            }
            Err(code) => assert_eq!(code, 4000),
        }
    }
});
