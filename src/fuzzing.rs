//! Entry points for the fuzz targets in `fuzz/`: the request-facing parsers that are private to
//! their modules, each behind a plain function. Not an API; nothing else uses it.

use crate::api::manage::envelope::Encoding;
use crate::api::ws::negotiate::Format;
use crate::path::PathError;

pub use crate::api::manage::Endpoint as ManageEndpoint;

/// [`crate::path::normalize`] without its fast path for paths that are already normal.
pub fn resolve_path(raw: &str) -> Result<String, PathError> {
    crate::path::resolve(raw)
}

/// The body of Nexus `verify-otp` and `verify-enrollment-otp`: `[otp, oob, accessToken]`.
pub fn nexus_verify_body(bytes: &[u8]) -> Result<[Option<String>; 3], String> {
    crate::api::decode_json::<crate::api::nexus::VerifyBody>(bytes)
        .map(|body| [body.otp, body.oob, body.access_token])
}

/// The fields of a WS body in JSON or XML under `root`, or the status it is refused with.
pub fn ws_fields(
    bytes: &[u8],
    xml: bool,
    root: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, u16> {
    let format = if xml {
        Format::Xml("application/xml")
    } else {
        Format::Json("application/json")
    };
    crate::api::ws::endpoints::read_fields(bytes, format, root).map_err(|a| a.status.as_u16())
}

/// The fields of a Manage body, `(userName, phoneNumber, otp)`, or the `errorCode` it is
/// refused with.
pub fn manage_fields(
    endpoint: ManageEndpoint,
    protobuf: bool,
    bytes: &[u8],
) -> Result<(String, String, Option<String>), i32> {
    let encoding = if protobuf {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    crate::api::manage::parse_fields(endpoint, encoding, bytes)
        .map(|f| (f.user_name, f.phone_number, f.otp))
        .map_err(|f| f.code.code())
}

/// The `iss` of a JWT read without verifying it, as the authenticator does to pick a verifier.
pub fn unverified_issuer(token: &str) -> Option<String> {
    crate::auth::unverified_issuer(token)
}

/// Whether a `kid` could be one of gatehouse's own keys.
pub fn own_kid_plausible(kid: &str) -> bool {
    crate::tokens::plausible_kid(kid)
}

/// Whether a `kid` may be looked up among a trusted issuer's keys.
pub fn external_kid_plausible(kid: &str) -> bool {
    crate::auth::issuers::plausible_kid(kid)
}
