//! The WS family's JSON bodies: an object of fields, or a 400.
#![no_main]

use gatehouse::api::MAX_JSON_DEPTH;
use gatehouse::fuzzing::ws_fields;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

mod common;
use common::depth;

fuzz_target!(|data: &[u8]| {
    match ws_fields(data, false, "Verify2FAOptInRequest") {
        Ok(fields) => {
            let parsed: Value = serde_json::from_slice(data).expect("what read as fields is JSON");
            let fields = Value::Object(fields);
            assert!(depth(&fields) <= MAX_JSON_DEPTH);
            assert_eq!(parsed, fields);
        }
        Err(status) => assert_eq!(status, 400),
    }
});
