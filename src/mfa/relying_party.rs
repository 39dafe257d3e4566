//! The WebAuthn relying party (SPEC §14) that `server.public_url` names: what the MFA service
//! is built with, beneath the passkey use cases.

use std::time::Duration;

use webauthn_rs::prelude::{Url, Webauthn, WebauthnBuilder};

/// How long a ceremony waits for the browser's answer, in seconds.
pub const CEREMONY_TTL: i64 = 300;

/// The relying party `public_url` names: its host as the relying party id, its origin as the one
/// origin accepted. `None` when the URL's host is no domain name (an IP address cannot be a
/// WebAuthn relying party id).
pub fn relying_party(public_url: &str) -> Option<Webauthn> {
    let url = Url::parse(public_url).ok()?;
    let host = url.domain()?.to_owned();
    let origin = Url::parse(&url.origin().ascii_serialization()).ok()?;
    WebauthnBuilder::new(&host, &origin)
        .ok()?
        .rp_name("Gatehouse")
        .timeout(Duration::from_secs(CEREMONY_TTL.unsigned_abs()))
        .build()
        .ok()
}
