//! The WS family's XML reader, and its writer reading back what the reader read.
#![no_main]

use gatehouse::api::ws::xml::{read_flat, write_base_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for root in ["Verify2FAOptInRequest", "OptIn2FARequest", "R"] {
        let Ok(fields) = read_flat(data, root) else {
            continue;
        };
        assert!(std::str::from_utf8(data).is_ok(), "only UTF-8 reads");
        // Written back as a response's fields, each value reads back unchanged. Carriage returns
        // are excepted: XML turns them into line feeds on reading.
        let extra: Vec<(&str, String)> = fields
            .iter()
            .filter(|(name, value)| {
                name.as_str() != "StatusMessage"
                    && name.as_str() != "_links"
                    && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
                    && !value.contains('\r')
            })
            .map(|(name, value)| (name.as_str(), value.clone()))
            .collect();
        let xml = write_base_response("ok", &[], &extra);
        let again = read_flat(&xml, "BaseResponseModel")
            .unwrap_or_else(|e| panic!("the writer's own output does not read: {e}"));
        for (name, value) in &extra {
            assert_eq!(again.get(*name), Some(value), "{name}");
        }
    }
});
