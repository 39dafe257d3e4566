//! Passkeys (SPEC §14): one row per credential, the `webauthn` factor row beside them while the
//! user has any. Every change that a rule depends on runs in a transaction holding the user's
//! row, so additions, removals and the factor row take turns per user; a use is one conditional
//! `UPDATE`, which moves the counter only forwards.

use tokio_postgres::types::Json;

use crate::store::{
    Factor, FactorKind, MAX_PASSKEYS, Passkey, PasskeyAdded, PasskeyCeremony, PasskeyGrant,
    PasskeyRemoved, SCHEMA_VERSION, stamp,
};

use super::{Fail, PgStore, doc, exec, key, row, rows, set_recovery_codes};

/// Whether the user has a confirmed factor of any kind.
const ANY_FACTOR: &str = "SELECT EXISTS (SELECT 1 FROM gatehouse_factors WHERE user_id = $1)";

impl PgStore {
    pub(super) async fn passkeys_of(&self, user_id: u64) -> Result<Vec<Passkey>, Fail> {
        let client = self.client().await?;
        rows(
            &client,
            "SELECT doc FROM gatehouse_passkeys WHERE user_id = $1 ORDER BY seq",
            &[&key(user_id)],
        )
        .await?
        .iter()
        .map(doc)
        .collect()
    }

    pub(super) async fn passkey_once(&self, id: &str) -> Result<Option<Passkey>, Fail> {
        let client = self.client().await?;
        row(
            &client,
            "SELECT doc FROM gatehouse_passkeys WHERE id = $1",
            &[&id],
        )
        .await?
        .as_ref()
        .map(doc)
        .transpose()
    }

    pub(super) async fn add_passkey_once(
        &self,
        passkey: &Passkey,
        grant: PasskeyGrant<'_>,
        recovery_hashes: Option<&Vec<String>>,
        now: i64,
    ) -> Result<PasskeyAdded, Fail> {
        let user_id = key(passkey.user_id);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let locked = exec(
            &tx,
            "SELECT 1 FROM gatehouse_users WHERE id = $1 FOR UPDATE",
            &[&user_id],
        )
        .await?;
        if locked == 0 {
            return Ok(PasskeyAdded::Refused);
        }
        match grant {
            PasskeyGrant::Ticket(ticket_id) => {
                let marked = exec(
                    &tx,
                    "UPDATE gatehouse_tickets
                     SET used = true, doc = jsonb_set(doc, ARRAY['used'], 'true'::JSONB)
                     WHERE id = $1 AND user_id = $2 AND NOT used AND expires_at > $3
                       AND doc->>'kind' = 'webauthn'
                       AND (COALESCE((doc->>'second_factor')::BOOL, false)
                            OR NOT EXISTS (SELECT 1 FROM gatehouse_factors WHERE user_id = $2))",
                    &[&ticket_id, &user_id, &now],
                )
                .await?;
                if marked == 0 {
                    return Ok(PasskeyAdded::Refused);
                }
            }
            PasskeyGrant::SecondFactor => {}
            PasskeyGrant::FirstFactor => {
                let has: bool = tx.query_one(ANY_FACTOR, &[&user_id]).await?.try_get(0)?;
                if has {
                    return Ok(PasskeyAdded::Refused);
                }
            }
        }
        let held: i64 = tx
            .query_one(
                "SELECT count(*) FROM gatehouse_passkeys WHERE user_id = $1",
                &[&user_id],
            )
            .await?
            .try_get(0)?;
        if usize::try_from(held).unwrap_or(usize::MAX) >= MAX_PASSKEYS {
            return Ok(PasskeyAdded::Full);
        }
        let inserted = exec(
            &tx,
            "INSERT INTO gatehouse_passkeys (id, user_id, doc) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO NOTHING",
            &[&passkey.id, &user_id, &Json(passkey)],
        )
        .await?;
        if inserted == 0 {
            return Ok(PasskeyAdded::Duplicate);
        }
        // A factor confirmed, however it was granted: the user's pending tickets are void.
        exec(
            &tx,
            "UPDATE gatehouse_tickets
             SET used = true, doc = jsonb_set(doc, ARRAY['used'], 'true'::JSONB)
             WHERE user_id = $1 AND NOT used",
            &[&user_id],
        )
        .await?;
        let marker = Factor {
            v: SCHEMA_VERSION,
            user_id: passkey.user_id,
            kind: FactorKind::Webauthn,
            sealed_secret: None,
            destination: None,
            last_step: None,
            created: stamp(now)?,
        };
        exec(
            &tx,
            "INSERT INTO gatehouse_factors (user_id, kind, last_step, doc)
             VALUES ($1, $2, NULL, $3) ON CONFLICT (user_id, kind) DO NOTHING",
            &[&user_id, &FactorKind::Webauthn.as_str(), &Json(&marker)],
        )
        .await?;
        if let Some(hashes) = recovery_hashes {
            set_recovery_codes(&tx, user_id, hashes).await?;
        }
        tx.commit().await?;
        Ok(PasskeyAdded::Added)
    }

    pub(super) async fn use_passkey_once(
        &self,
        id: &str,
        counter: u32,
        credential: &serde_json::Value,
        last_used: &str,
    ) -> Result<bool, Fail> {
        let client = self.client().await?;
        // Under the row lock a concurrent use's counter is seen before the condition is
        // decided, so of two uses with one counter only the first moves it.
        let changed = exec(
            &client,
            "UPDATE gatehouse_passkeys
             SET doc = jsonb_set(jsonb_set(jsonb_set(doc,
                    ARRAY['counter'], to_jsonb($2::INT8)),
                    ARRAY['credential'], $3::JSONB),
                    ARRAY['last_used'], to_jsonb($4::TEXT))
             WHERE id = $1
               AND ($2::INT8 > (doc->>'counter')::INT8
                    OR ($2::INT8 = 0 AND (doc->>'counter')::INT8 = 0))",
            &[&id, &i64::from(counter), &Json(credential), &last_used],
        )
        .await?;
        Ok(changed == 1)
    }

    pub(super) async fn rename_passkey_once(
        &self,
        user_id: u64,
        id: &str,
        name: &str,
    ) -> Result<bool, Fail> {
        let client = self.client().await?;
        let changed = exec(
            &client,
            "UPDATE gatehouse_passkeys SET doc = jsonb_set(doc, ARRAY['name'], to_jsonb($3::TEXT))
             WHERE id = $1 AND user_id = $2",
            &[&id, &key(user_id), &name],
        )
        .await?;
        Ok(changed == 1)
    }

    pub(super) async fn delete_passkey_once(
        &self,
        user_id: u64,
        id: &str,
        keep_a_factor: bool,
    ) -> Result<PasskeyRemoved, Fail> {
        let user = key(user_id);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        exec(
            &tx,
            "SELECT 1 FROM gatehouse_users WHERE id = $1 FOR UPDATE",
            &[&user],
        )
        .await?;
        let removed = exec(
            &tx,
            "DELETE FROM gatehouse_passkeys WHERE id = $1 AND user_id = $2",
            &[&id, &user],
        )
        .await?;
        if removed == 0 {
            return Ok(PasskeyRemoved::NotFound);
        }
        let left: i64 = tx
            .query_one(
                "SELECT count(*) FROM gatehouse_passkeys WHERE user_id = $1",
                &[&user],
            )
            .await?
            .try_get(0)?;
        if left == 0 {
            if keep_a_factor {
                let other: bool = tx
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM gatehouse_factors
                         WHERE user_id = $1 AND kind <> 'webauthn')",
                        &[&user],
                    )
                    .await?
                    .try_get(0)?;
                if !other {
                    return Ok(PasskeyRemoved::LastFactor);
                }
            }
            exec(
                &tx,
                "DELETE FROM gatehouse_factors WHERE user_id = $1 AND kind = 'webauthn'",
                &[&user],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(PasskeyRemoved::Removed)
    }

    pub(super) async fn create_ceremony_once(&self, c: &PasskeyCeremony) -> Result<(), Fail> {
        let client = self.client().await?;
        exec(
            &client,
            "INSERT INTO gatehouse_passkey_ceremonies (id_hash, expires, doc) VALUES ($1, $2, $3)
             ON CONFLICT (id_hash) DO UPDATE SET expires = excluded.expires, doc = excluded.doc",
            &[&c.id_hash, &c.expires, &Json(c)],
        )
        .await?;
        Ok(())
    }

    pub(super) async fn take_ceremony_once(
        &self,
        id_hash: &str,
        now: i64,
    ) -> Result<Option<PasskeyCeremony>, Fail> {
        let client = self.client().await?;
        // The row lock of the delete lets one of concurrent takes have the row.
        let taken = row(
            &client,
            "DELETE FROM gatehouse_passkey_ceremonies WHERE id_hash = $1 RETURNING doc",
            &[&id_hash],
        )
        .await?;
        let ceremony: Option<PasskeyCeremony> = taken.as_ref().map(doc).transpose()?;
        Ok(ceremony.filter(|c| c.expires > now))
    }
}
