//! The Manage family's protobuf bodies for both endpoints: fields within their limits that
//! encode back to a message reading the same, or errorCode 4000.
#![no_main]

use gatehouse::api::manage::proto::{SendOtpRequest, ValidateOtpRequest};
use gatehouse::fuzzing::{ManageEndpoint, manage_fields};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    for endpoint in [ManageEndpoint::SendOtp, ManageEndpoint::ValidateOtp] {
        match manage_fields(endpoint, true, data) {
            Ok((user_name, phone_number, otp)) => {
                assert!(!user_name.trim().is_empty() && user_name.len() <= 256);
                assert!(!phone_number.trim().is_empty());
                assert_eq!(otp.is_some(), endpoint == ManageEndpoint::ValidateOtp);
                if let Some(otp) = &otp {
                    assert!(!otp.trim().is_empty() && otp.len() <= 64);
                }
                let encoded = match &otp {
                    Some(otp) => ValidateOtpRequest {
                        user_name: user_name.clone(),
                        phone_number: phone_number.clone(),
                        otp: otp.clone(),
                    }
                    .encode_to_vec(),
                    None => SendOtpRequest {
                        user_name: user_name.clone(),
                        phone_number: phone_number.clone(),
                    }
                    .encode_to_vec(),
                };
                assert_eq!(
                    manage_fields(endpoint, true, &encoded),
                    Ok((user_name, phone_number, otp))
                );
            }
            Err(code) => assert_eq!(code, 4000),
        }
    }
});
