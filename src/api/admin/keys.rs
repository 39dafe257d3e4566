//! `/admin/v1/keys…`: the token signing keys (SPEC §13): list them, rotate to the next one.
//!
//! A rotation adds a key that is published in the JWKS at once and signs from `activates`
//! (`tokens.key_prepublish` later). While a key is still pending, rotating again adds nothing and
//! answers 200 with that pending key, so concurrent calls, on any replica, leave one pending key.

use http::StatusCode;
use serde::Serialize;

use super::{Admin, AdminError, AdminResult};
use crate::api;
use crate::tokens::RotateError;

/// The answer to `POST /admin/v1/keys/rotate`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RotationView<'a> {
    kid: &'a str,
    /// Unix seconds from which the key signs.
    activates: i64,
}

impl Admin {
    pub(super) async fn list_keys(&self) -> AdminResult {
        Ok(api::json(StatusCode::OK, &self.tokens.keys()))
    }

    pub(super) async fn rotate_keys(&self) -> AdminResult {
        let rotation = self.tokens.rotate().await.map_err(|e| match e {
            RotateError::KeyFile => AdminError::KeyNotInStore,
            RotateError::Store(e) => AdminError::from(e),
            RotateError::Other(why) => AdminError::Internal(why),
        })?;
        let view = RotationView {
            kid: &rotation.kid,
            activates: rotation.activates,
        };
        if !rotation.added {
            return Ok(api::json(StatusCode::OK, &view));
        }
        self.record(
            "keys.rotated",
            None,
            Some(format!(
                "kid {} activates {}",
                rotation.kid, rotation.activates
            )),
        )
        .await;
        Ok(api::json(StatusCode::CREATED, &view))
    }
}
