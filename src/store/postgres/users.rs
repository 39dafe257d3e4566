//! Users and applications: creation, changes and removal, each one transaction.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::Json;

use crate::store::{Application, StoreError, User};

use super::{
    Fail, PgStore, doc, exec, external_key, key, name_key, next_value, reset_mfa_in, row, unique,
};

impl PgStore {
    pub(super) async fn create_user_once(&self, template: &User) -> Result<User, Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id = next_value(&tx, "user").await?;
        let mut user = template.clone();
        user.id = u64::try_from(id)
            .map_err(|_| StoreError::Backend("the user counter went negative".into()))?;
        let external = user
            .external
            .as_ref()
            .map(|e| external_key(&e.issuer, &e.subject));
        exec(
            &tx,
            "INSERT INTO gatehouse_users (id, name_key, external_key, doc) VALUES ($1, $2, $3, $4)",
            &[&id, &name_key(&user.user_name), &external, &Json(&user)],
        )
        .await
        .map_err(|f| match f {
            Fail::Db(e) => unique(e, |constraint| {
                if constraint.contains("external") {
                    "external user".into()
                } else {
                    format!("user {}", user.user_name)
                }
            }),
            other => other,
        })?;
        tx.commit().await?;
        Ok(user)
    }

    /// Read-modify-write of one user, by name, with the row locked; a rename moves the unique
    /// name key in the same statement.
    pub(super) async fn modify_user_once(
        &self,
        user_name: &str,
        modified: &str,
        change: &(dyn Fn(&mut User) + Sync),
    ) -> Result<User, Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let found = row(
            &tx,
            "SELECT doc FROM gatehouse_users WHERE name_key = $1 FOR UPDATE",
            &[&name_key(user_name)],
        )
        .await?;
        let Some(found) = found else {
            return Err(StoreError::NotFound(format!("user {user_name}")).into());
        };
        let mut user: User = doc(&found)?;
        change(&mut user);
        user.modified = modified.to_owned();
        exec(
            &tx,
            "UPDATE gatehouse_users SET name_key = $2, doc = $3 WHERE id = $1",
            &[&key(user.id), &name_key(&user.user_name), &Json(&user)],
        )
        .await
        .map_err(|f| match f {
            Fail::Db(e) => unique(e, |_| format!("user {}", user.user_name)),
            other => other,
        })?;
        tx.commit().await?;
        Ok(user)
    }

    pub(super) async fn delete_user_once(&self, user_name: &str) -> Result<bool, Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let deleted = row(
            &tx,
            "DELETE FROM gatehouse_users WHERE name_key = $1 RETURNING id",
            &[&name_key(user_name)],
        )
        .await?;
        let Some(deleted) = deleted else {
            return Ok(false);
        };
        let id: i64 = deleted.try_get(0)?;
        for sql in [
            "DELETE FROM gatehouse_ws_keys WHERE user_id = $1",
            "DELETE FROM gatehouse_sessions WHERE user_id = $1",
        ] {
            exec(&tx, sql, &[&id]).await?;
        }
        reset_mfa_in(&tx, id).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn reset_mfa_once(&self, user_id: u64) -> Result<(), Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Changes to a user's factors take turns on the user's row: without it, a passkey added
        // meanwhile could commit between the deletion of the factors and of the passkeys,
        // leaving the `webauthn` factor record without a passkey.
        exec(
            &tx,
            "SELECT 1 FROM gatehouse_users WHERE id = $1 FOR UPDATE",
            &[&key(user_id)],
        )
        .await?;
        reset_mfa_in(&tx, key(user_id)).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn create_application_once(&self, app: &Application) -> Result<(), Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        exec(
            &tx,
            "INSERT INTO gatehouse_applications (name, doc) VALUES ($1, $2)",
            &[&app.name, &Json(app)],
        )
        .await
        .map_err(|f| match f {
            Fail::Db(e) => unique(e, |_| format!("application {}", app.name)),
            other => other,
        })?;
        exec(
            &tx,
            "INSERT INTO gatehouse_application_tokens (token_hash, name) VALUES ($1, $2)
             ON CONFLICT (token_hash) DO UPDATE SET name = excluded.name",
            &[&app.token_hash, &app.name],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
