//! Applications, organisations and their members, WS file grants and WsAccessKeys.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{Admin, AdminError, AdminResult};
use crate::api;
use crate::auth::secret;
use crate::store::{Application, Membership, Organization, Role, SCHEMA_VERSION, WsKey};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplicationBody {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrganizationBody {
    /// An int32, as seed 002's `organizationId`: larger ids could never reach the domain API.
    id: i32,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MemberBody {
    user_name: String,
    role: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileMemberBody {
    user_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WsKeyBody {
    user_name: String,
    file_id: i64,
}

fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.chars().count()) && !name.chars().any(char::is_control)
}

/// A path segment that must be an integer id.
fn integer(segment: &str, what: &str) -> Result<i64, AdminError> {
    segment
        .parse()
        .map_err(|_| AdminError::Invalid(format!("{what} must be an integer")))
}

fn generate(prefix: &str) -> Result<String, AdminError> {
    secret::generate(prefix).map_err(AdminError::Store)
}

impl Admin {
    pub(super) async fn create_application(&self, req: Request<Incoming>) -> AdminResult {
        let body: ApplicationBody = self.bodies.read_json(req).await?;
        if !valid_name(&body.name) {
            return Err(AdminError::Invalid(
                "name must be 1 to 128 characters without control characters".into(),
            ));
        }
        let token = generate("gha_")?;
        self.store
            .create_application(Application {
                v: SCHEMA_VERSION,
                name: body.name.clone(),
                token_hash: secret::hash_token(&token),
                created: self.now(),
            })
            .await?;
        self.record(
            "application.created",
            None,
            Some(format!("application {}", body.name)),
        )
        .await;
        Ok(api::json(
            StatusCode::CREATED,
            &serde_json::json!({ "name": body.name, "token": token }),
        ))
    }

    pub(super) async fn create_organization(&self, req: Request<Incoming>) -> AdminResult {
        let body: OrganizationBody = self.bodies.read_json(req).await?;
        if !valid_name(&body.name) {
            return Err(AdminError::Invalid(
                "name must be 1 to 128 characters without control characters".into(),
            ));
        }
        let created = self.now();
        self.store
            .create_organization(Organization {
                v: SCHEMA_VERSION,
                id: i64::from(body.id),
                name: body.name.clone(),
                created: created.clone(),
            })
            .await?;
        self.record(
            "organization.created",
            None,
            Some(format!("organization {}", body.id)),
        )
        .await;
        Ok(api::json(
            StatusCode::CREATED,
            &serde_json::json!({ "id": body.id, "name": body.name, "created": created }),
        ))
    }

    pub(super) async fn add_member(&self, id: &str, req: Request<Incoming>) -> AdminResult {
        let organization_id = integer(id, "the organization id")?;
        let body: MemberBody = self.bodies.read_json(req).await?;
        let role = match body.role.as_str() {
            "admin" => Role::Admin,
            "member" => Role::Member,
            _ => {
                return Err(AdminError::Invalid(
                    "role must be `admin` or `member`".into(),
                ));
            }
        };
        let membership = Membership {
            organization_id,
            role,
        };
        let user = self
            .store
            .set_membership(&body.user_name, membership, self.clock.unix())
            .await?;
        self.record(
            "membership.set",
            Some(&user.user_name),
            Some(format!("organization {organization_id} as {}", body.role)),
        )
        .await;
        Ok(api::json(
            StatusCode::CREATED,
            &serde_json::json!({
                "organizationId": organization_id,
                "userName": user.user_name,
                "role": body.role,
            }),
        ))
    }

    pub(super) async fn grant_file(&self, id: &str, req: Request<Incoming>) -> AdminResult {
        let file_id = integer(id, "the file id")?;
        let body: FileMemberBody = self.bodies.read_json(req).await?;
        let user = self
            .store
            .grant_file(&body.user_name, file_id, self.clock.unix())
            .await?;
        self.record(
            "file.granted",
            Some(&user.user_name),
            Some(format!("file {file_id}")),
        )
        .await;
        Ok(api::json(
            StatusCode::CREATED,
            &serde_json::json!({ "fileId": file_id, "userName": user.user_name }),
        ))
    }

    pub(super) async fn create_ws_key(&self, req: Request<Incoming>) -> AdminResult {
        let body: WsKeyBody = self.bodies.read_json(req).await?;
        let Some(user) = self.store.user_by_name(&body.user_name).await? else {
            return Err(AdminError::NotFound(format!("user {}", body.user_name)));
        };
        let key = generate("ghk_")?;
        self.store
            .create_ws_key(WsKey {
                v: SCHEMA_VERSION,
                key_hash: secret::hash_token(&key),
                user_id: user.id,
                file_id: body.file_id,
                created: self.now(),
            })
            .await?;
        self.record(
            "wskey.created",
            Some(&user.user_name),
            Some(format!("file {}", body.file_id)),
        )
        .await;
        Ok(api::json(
            StatusCode::CREATED,
            &serde_json::json!({ "key": key, "userName": user.user_name, "fileId": body.file_id }),
        ))
    }
}
