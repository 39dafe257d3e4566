//! Domains and the first signing key: claims and conditional inserts shared by all replicas.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::Json;

use crate::store::{Domain, SigningKey, StoreError};

use super::{Fail, PgStore, doc, exec, next_value, row, rows, unique};

impl PgStore {
    pub(super) async fn create_domain_once(&self, template: &Domain) -> Result<Domain, Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut domain = template.clone();
        // Domain ids are int32 on the wire (seed 002): 1..=i32::MAX, as sled allocates them.
        let n = next_value(&tx, "domain").await?;
        domain.domain_id = (n - 1).rem_euclid(i64::from(i32::MAX)) + 1;
        let owner = row(
            &tx,
            "SELECT organization_id FROM gatehouse_verified_domains WHERE name = $1",
            &[&domain.domain],
        )
        .await?;
        if let Some(owner) = owner
            && owner.try_get::<_, i64>(0)? != domain.organization_id
        {
            return Err(StoreError::Conflict(format!(
                "domain {} (verified by another organization)",
                domain.domain
            ))
            .into());
        }
        exec(
            &tx,
            "INSERT INTO gatehouse_domains (organization_id, domain_id, name, doc)
             VALUES ($1, $2, $3, $4)",
            &[
                &domain.organization_id,
                &domain.domain_id,
                &domain.domain,
                &Json(&domain),
            ],
        )
        .await
        .map_err(|f| match f {
            Fail::Db(e) => unique(e, |_| format!("domain {}", domain.domain)),
            other => other,
        })?;
        tx.commit().await?;
        Ok(domain)
    }

    /// Saving a verified domain claims its name in the same transaction. The no-op `DO UPDATE`
    /// returns the claim that stands, ours or one committed first by another organisation.
    pub(super) async fn save_domain_once(&self, domain: &Domain) -> Result<(), Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let updated = exec(
            &tx,
            "UPDATE gatehouse_domains SET doc = $3 WHERE organization_id = $1 AND domain_id = $2",
            &[&domain.organization_id, &domain.domain_id, &Json(domain)],
        )
        .await?;
        if updated == 0 {
            return Err(StoreError::NotFound(format!("domain {}", domain.domain_id)).into());
        }
        if domain.is_verified {
            let claim = row(
                &tx,
                "INSERT INTO gatehouse_verified_domains (name, organization_id) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE
                 SET organization_id = gatehouse_verified_domains.organization_id
                 RETURNING organization_id",
                &[&domain.domain, &domain.organization_id],
            )
            .await?;
            let owner = match claim {
                Some(r) => r.try_get::<_, i64>(0)?,
                None => domain.organization_id,
            };
            if owner != domain.organization_id {
                return Err(StoreError::Conflict(format!(
                    "domain {} (verified by another organization)",
                    domain.domain
                ))
                .into());
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn delete_domain_once(
        &self,
        organization_id: i64,
        domain_id: i64,
    ) -> Result<bool, Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let deleted = row(
            &tx,
            "DELETE FROM gatehouse_domains WHERE organization_id = $1 AND domain_id = $2
             RETURNING name",
            &[&organization_id, &domain_id],
        )
        .await?;
        let Some(deleted) = deleted else {
            return Ok(false);
        };
        let name: String = deleted.try_get(0)?;
        exec(
            &tx,
            "DELETE FROM gatehouse_verified_domains WHERE name = $1 AND organization_id = $2",
            &[&name, &organization_id],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Adds `signing_key` only to an empty key table. Locking the signing-key counter row, which
    /// every insertion of a key takes, makes the check and the insert one step for all replicas.
    pub(super) async fn init_signing_key_once(
        &self,
        signing_key: &SigningKey,
    ) -> Result<Vec<SigningKey>, Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seq = next_value(&tx, "signing_key").await?;
        let existing = row(&tx, "SELECT seq FROM gatehouse_signing_keys LIMIT 1", &[]).await?;
        if existing.is_none() {
            exec(
                &tx,
                "INSERT INTO gatehouse_signing_keys (seq, kid, doc, activates)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &seq,
                    &signing_key.kid,
                    &Json(signing_key),
                    &signing_key.activates,
                ],
            )
            .await?;
        }
        let stored = rows(
            &tx,
            "SELECT doc FROM gatehouse_signing_keys ORDER BY seq",
            &[],
        )
        .await?;
        let stored = stored.iter().map(doc).collect::<Result<_, _>>()?;
        tx.commit().await?;
        Ok(stored)
    }

    /// [`crate::store::Store::rotate_signing_key`] in one transaction: locking the signing-key
    /// counter row, which every insertion of a key takes, makes finding the newest key and adding
    /// the next one a single step for all replicas.
    pub(super) async fn rotate_signing_key_once(
        &self,
        signing_key: &SigningKey,
        unless_after: i64,
    ) -> Result<SigningKey, Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seq = next_value(&tx, "signing_key").await?;
        let newest = row(
            &tx,
            "SELECT doc FROM gatehouse_signing_keys ORDER BY activates DESC, seq DESC LIMIT 1",
            &[],
        )
        .await?;
        if let Some(newest) = newest {
            let newest: SigningKey = doc(&newest)?;
            if newest.activates > unless_after {
                tx.commit().await?;
                return Ok(newest);
            }
        }
        exec(
            &tx,
            "INSERT INTO gatehouse_signing_keys (seq, kid, doc, activates) VALUES ($1, $2, $3, $4)",
            &[
                &seq,
                &signing_key.kid,
                &Json(signing_key),
                &signing_key.activates,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(signing_key.clone())
    }
}
