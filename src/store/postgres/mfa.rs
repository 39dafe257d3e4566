//! MFA state: tickets, one-time codes, recovery codes, lockout and send limits.

use deadpool_postgres::GenericClient;
use serde::de::DeserializeOwned;
use tokio_postgres::types::{Json, ToSql};

use crate::lockout::{LockoutState, Policy, Reservation};
use crate::store::{AuditEvent, CodeLogin, Factor, StoreError, User};

use super::{Fail, PgStore, doc, exec, insert_audit, key, row, set_recovery_codes, step_column};

impl PgStore {
    /// Marks the ticket used only if it is still pending: the conditional `UPDATE` is what makes a
    /// ticket confirm once, since a concurrent confirmation finds `used` already set.
    pub(super) async fn confirm_ticket_once(
        &self,
        ticket_id: &str,
        factor: &Factor,
        recovery_hashes: Option<&Vec<String>>,
        now: i64,
    ) -> Result<bool, Fail> {
        let user_id = key(factor.user_id);
        let last_step = factor.last_step.map(step_column).transpose()?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Confirmations of one user's tickets take turns on the user's row, so the factors the
        // next one reads include those the previous one stored.
        exec(
            &tx,
            "SELECT 1 FROM gatehouse_users WHERE id = $1 FOR UPDATE",
            &[&user_id],
        )
        .await?;
        let marked = exec(
            &tx,
            "UPDATE gatehouse_tickets
             SET used = true, doc = jsonb_set(doc, ARRAY['used'], 'true'::JSONB)
             WHERE id = $1 AND user_id = $2 AND NOT used AND expires_at > $3
               AND (COALESCE((doc->>'second_factor')::BOOL, false)
                    OR NOT EXISTS (SELECT 1 FROM gatehouse_factors WHERE user_id = $2))",
            &[&ticket_id, &user_id, &now],
        )
        .await?;
        if marked == 0 {
            return Ok(false);
        }
        // The user's other pending tickets were made against the factors before this one.
        exec(
            &tx,
            "UPDATE gatehouse_tickets
             SET used = true, doc = jsonb_set(doc, ARRAY['used'], 'true'::JSONB)
             WHERE user_id = $1 AND NOT used",
            &[&user_id],
        )
        .await?;
        exec(
            &tx,
            "INSERT INTO gatehouse_factors (user_id, kind, last_step, doc) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, kind)
             DO UPDATE SET last_step = excluded.last_step, doc = excluded.doc",
            &[&user_id, &factor.kind.as_str(), &last_step, &Json(factor)],
        )
        .await?;
        if let Some(hashes) = recovery_hashes {
            set_recovery_codes(&tx, user_id, hashes).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn login_with_code_once(
        &self,
        user_id: u64,
        purpose: &str,
        code_hash: &str,
        now: i64,
        login_time: &str,
        event: &AuditEvent,
    ) -> Result<CodeLogin, Fail> {
        let id = key(user_id);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Locked, so two logins with one code cannot both find it.
        let code = row(
            &tx,
            "SELECT code_hash, expires_at FROM gatehouse_codes
             WHERE user_id = $1 AND purpose = $2 FOR UPDATE",
            &[&id, &purpose],
        )
        .await?;
        let Some(code) = code else {
            return Ok(CodeLogin::Wrong);
        };
        let stored: String = code.try_get("code_hash")?;
        let expires_at: i64 = code.try_get("expires_at")?;
        if !crate::secrets::same(&stored, code_hash) {
            return Ok(CodeLogin::Wrong);
        }
        if expires_at <= now {
            return Ok(CodeLogin::Expired);
        }
        let found = row(
            &tx,
            "SELECT doc FROM gatehouse_users WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?;
        let Some(found) = found else {
            return Err(StoreError::NotFound(format!("user {user_id}")).into());
        };
        let mut user: User = doc(&found)?;
        user.last_login_timestamp = Some(login_time.to_owned());
        user.modified = login_time.to_owned();
        exec(
            &tx,
            "UPDATE gatehouse_users SET doc = $2 WHERE id = $1",
            &[&id, &Json(&user)],
        )
        .await?;
        exec(
            &tx,
            "DELETE FROM gatehouse_codes WHERE user_id = $1 AND purpose = $2",
            &[&id, &purpose],
        )
        .await?;
        exec(
            &tx,
            "DELETE FROM gatehouse_lockouts WHERE user_id = $1",
            &[&id],
        )
        .await?;
        insert_audit(&tx, event.clone()).await?;
        tx.commit().await?;
        Ok(CodeLogin::Accepted(Box::new(user)))
    }

    pub(super) async fn consume_recovery_code_once(
        &self,
        user_id: u64,
        hash: &str,
    ) -> Result<bool, Fail> {
        let id = key(user_id);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let found = row(
            &tx,
            "SELECT doc FROM gatehouse_recovery_codes WHERE user_id = $1 FOR UPDATE",
            &[&id],
        )
        .await?;
        let Some(found) = found else {
            return Ok(false);
        };
        let mut codes: Vec<String> = doc(&found)?;
        let Some(i) = codes.iter().position(|c| crate::secrets::same(c, hash)) else {
            return Ok(false);
        };
        codes.remove(i);
        exec(
            &tx,
            "UPDATE gatehouse_recovery_codes SET doc = $2 WHERE user_id = $1",
            &[&id, &Json(&codes)],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Read-modify-write of one JSON document with its row locked, so concurrent changes queue
    /// up and each sees the one before. The no-op `DO UPDATE` both creates a missing row (with the
    /// default document) and takes the lock of an existing one, returning its current state.
    /// `table` and `column` are this module's constants, never input.
    pub(super) async fn locked_change<T, R>(
        &self,
        table: &str,
        column: &str,
        key: &(dyn ToSql + Sync),
        change: impl FnOnce(&mut T) -> R,
    ) -> Result<R, Fail>
    where
        T: serde::Serialize + DeserializeOwned + Default + Sync + std::fmt::Debug,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let locked = row(
            &tx,
            &format!(
                "INSERT INTO {table} ({column}, doc) VALUES ($1, $2)
                 ON CONFLICT ({column}) DO UPDATE SET doc = {table}.doc RETURNING doc"
            ),
            &[key, &Json(T::default())],
        )
        .await?;
        let mut value: T = match locked {
            Some(r) => doc(&r)?,
            None => T::default(),
        };
        let result = change(&mut value);
        exec(
            &tx,
            &format!("UPDATE {table} SET doc = $2 WHERE {column} = $1"),
            &[key, &Json(&value)],
        )
        .await?;
        tx.commit().await?;
        Ok(result)
    }

    /// Reserves an attempt with the user's lockout row locked: concurrent reservations, from any
    /// replica, queue on the row and each sees the failures counted before it.
    pub(super) async fn reserve_attempt_once(
        &self,
        user_id: u64,
        now: i64,
        policy: Policy,
    ) -> Result<Reservation, Fail> {
        self.locked_change(
            "gatehouse_lockouts",
            "user_id",
            &key(user_id),
            |state: &mut LockoutState| state.reserve(now, policy),
        )
        .await
    }

    /// Gives back one reserved attempt with the user's lockout row locked, like the reservation.
    pub(super) async fn release_attempt_once(
        &self,
        user_id: u64,
        reserved_at: i64,
        locks: Option<i64>,
    ) -> Result<(), Fail> {
        self.locked_change(
            "gatehouse_lockouts",
            "user_id",
            &key(user_id),
            |state: &mut LockoutState| state.release(reserved_at, locks),
        )
        .await
    }

    /// Counts a send with its row locked: `false` (and nothing counted) at the limit.
    pub(super) async fn count_send_once(
        &self,
        send_key: &str,
        now: i64,
        window: i64,
        limit: u32,
    ) -> Result<bool, Fail> {
        self.locked_change(
            "gatehouse_sends",
            "send_key",
            &send_key,
            |sent: &mut Vec<i64>| {
                sent.retain(|t| now - t < window);
                let allowed = sent.len() < limit as usize;
                if allowed {
                    sent.push(now);
                }
                allowed
            },
        )
        .await
    }
}
