//! Organisations' domains and their DNS TXT verification (seed 002 and its companions).

pub mod dns;
pub use crate::names::domain as name;

use std::path::PathBuf;
use std::sync::Arc;

use ring::rand::SecureRandom;

use crate::audit;
use crate::auth::Principal;
use crate::clock::{self, Clock};
use crate::config::DomainsConfig;
use crate::store::{Domain, Role, SCHEMA_VERSION, Store, StoreError};
use dns::{LookupError, TxtResolver};

/// Why a domain operation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainError {
    OrganizationNotFound,
    DomainNotFound,
    /// The caller is not an admin member of the organisation.
    Forbidden,
    Invalid(String),
    Conflict(String),
    /// 409: the bootstrap file declares it, so deleting it would not last; the detail says so.
    Declared(String),
    /// Verification failed; the message names the record looked up.
    NotVerified(String),
    DnsFailed(String),
    Store(String),
    Internal(String),
}

impl From<StoreError> for DomainError {
    fn from(e: StoreError) -> DomainError {
        match e {
            StoreError::Conflict(what) => DomainError::Conflict(what),
            StoreError::NotFound(_) => DomainError::DomainNotFound,
            StoreError::Backend(why) => DomainError::Store(why),
        }
    }
}

pub struct Domains {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    resolver: TxtResolver,
    config: DomainsConfig,
    /// `bootstrap.file`: a domain it declares is not deleted (it would be back at the next start).
    bootstrap: Option<PathBuf>,
}

impl Domains {
    pub fn new(
        config: &DomainsConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        bootstrap: Option<PathBuf>,
    ) -> Result<Domains, String> {
        Ok(Domains {
            resolver: TxtResolver::new(config.resolver)?,
            store,
            clock,
            config: config.clone(),
            bootstrap,
        })
    }

    /// The organisation exists (else 404) and the principal is one of its admins (else 403).
    async fn authorise(
        &self,
        principal: &Principal,
        organization_id: i64,
    ) -> Result<(), DomainError> {
        if self.store.organization(organization_id).await?.is_none() {
            return Err(DomainError::OrganizationNotFound);
        }
        let admin = principal
            .organizations
            .iter()
            .any(|m| m.organization_id == organization_id && m.role == Role::Admin);
        if admin {
            Ok(())
        } else {
            Err(DomainError::Forbidden)
        }
    }

    async fn get(&self, organization_id: i64, domain_id: i64) -> Result<Domain, DomainError> {
        self.store
            .domain(organization_id, domain_id)
            .await?
            .ok_or(DomainError::DomainNotFound)
    }

    async fn audit(&self, event: &str, principal: &Principal, domain: &Domain) {
        audit::record(
            self.store.as_ref(),
            self.clock.as_ref(),
            event,
            Some(&principal.user_name),
            Some(format!(
                "organization {} domain {}",
                domain.organization_id, domain.domain
            )),
        )
        .await;
    }

    pub async fn create(
        &self,
        principal: &Principal,
        organization_id: i64,
        domain: &str,
        authentication_method: Option<String>,
    ) -> Result<Domain, DomainError> {
        self.authorise(principal, organization_id).await?;
        let name = name::normalise(domain).map_err(DomainError::Invalid)?;
        if let Some(method) = &authentication_method
            && (method.is_empty() || method.len() > 64 || method.chars().any(char::is_control))
        {
            return Err(DomainError::Invalid(
                "authenticationMethod must be 1 to 64 characters".into(),
            ));
        }
        let now = clock::rfc3339(self.clock.now());
        let created = self
            .store
            .create_domain(Domain {
                v: SCHEMA_VERSION,
                organization_id,
                domain_id: 0,
                domain: name,
                authentication_method,
                created: now.clone(),
                created_by: principal.user_name.clone(),
                modified: now,
                modified_by: principal.user_name.clone(),
                is_verified: false,
                verification_code: None,
                verification_code_expires: None,
                verification_code_expires_at: None,
                verification_method: None,
                owner_organization_id: organization_id,
            })
            .await?;
        self.audit("domain.created", principal, &created).await;
        Ok(created)
    }

    pub async fn list(
        &self,
        principal: &Principal,
        organization_id: i64,
    ) -> Result<Vec<Domain>, DomainError> {
        self.authorise(principal, organization_id).await?;
        Ok(self.store.domains(organization_id).await?)
    }

    pub async fn read(
        &self,
        principal: &Principal,
        organization_id: i64,
        domain_id: i64,
    ) -> Result<Domain, DomainError> {
        self.authorise(principal, organization_id).await?;
        self.get(organization_id, domain_id).await
    }

    /// Deletes a domain, unless the bootstrap file declares it (409: it would be back at the next
    /// start).
    pub async fn delete(
        &self,
        principal: &Principal,
        organization_id: i64,
        domain_id: i64,
    ) -> Result<(), DomainError> {
        self.authorise(principal, organization_id).await?;
        let domain = self.get(organization_id, domain_id).await?;
        if let Some(path) = &self.bootstrap {
            // The file's path is the operator's business, not the organisation admin's: the
            // detail names the file by its role only.
            let declared =
                crate::config::bootstrap_file::declared(path).map_err(DomainError::Internal)?;
            if declared.declares_domain(organization_id, &domain.domain) {
                return Err(DomainError::Declared(format!(
                    "The domain {} is declared in gatehouse's bootstrap file, which would add it \
                     again at the next start; the operator must remove it from that file first.",
                    domain.domain
                )));
            }
        }
        if !self.store.delete_domain(organization_id, domain_id).await? {
            return Err(DomainError::DomainNotFound);
        }
        self.audit("domain.deleted", principal, &domain).await;
        Ok(())
    }

    /// Seed 002: a fresh code, valid for `domains.code_ttl`; the domain is unverified until it is
    /// found in DNS again.
    pub async fn generate_code(
        &self,
        principal: &Principal,
        organization_id: i64,
        domain_id: i64,
    ) -> Result<Domain, DomainError> {
        self.authorise(principal, organization_id).await?;
        let mut domain = self.get(organization_id, domain_id).await?;
        let mut random = [0u8; 20];
        ring::rand::SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| DomainError::Internal("the system random source failed".into()))?;
        // 160 random bits as 32 base32 characters (RFC 4648, no padding).
        let code = totp_rs::Secret::from(random.to_vec()).to_base32();
        let now = self.clock.now();
        let expires = now + self.config.code_ttl;
        domain.verification_code = Some(format!("{}{code}", self.config.code_prefix));
        domain.verification_code_expires = Some(clock::rfc3339(expires));
        domain.verification_code_expires_at = Some(expires.unix_timestamp());
        domain.verification_method = Some("dns-txt".into());
        domain.is_verified = false;
        domain.modified = clock::rfc3339(now);
        domain.modified_by = principal.user_name.clone();
        self.store.save_domain(domain.clone()).await?;
        self.audit("domain.code.generated", principal, &domain)
            .await;
        Ok(domain)
    }

    /// Looks the code up at `{record_name}.{domain}`; an unexpired match verifies the domain.
    pub async fn verify(
        &self,
        principal: &Principal,
        organization_id: i64,
        domain_id: i64,
    ) -> Result<Domain, DomainError> {
        self.authorise(principal, organization_id).await?;
        let mut domain = self.get(organization_id, domain_id).await?;
        let record = format!("{}.{}", self.config.record_name, domain.domain);
        let (Some(code), Some(expires_at)) = (
            &domain.verification_code,
            domain.verification_code_expires_at,
        ) else {
            return Err(DomainError::NotVerified(format!(
                "no verification code has been generated; generate one, then publish it as a TXT record at {record}"
            )));
        };
        if expires_at <= self.clock.unix() {
            return Err(DomainError::NotVerified(format!(
                "the verification code expired; generate a new one and publish it at {record}"
            )));
        }
        let values = match self.resolver.txt(&record).await {
            Ok(values) => values,
            Err(LookupError::NoRecords) => {
                return Err(DomainError::NotVerified(format!(
                    "no TXT record found at {record}"
                )));
            }
            Err(LookupError::Failed(why)) => {
                return Err(DomainError::DnsFailed(format!("{record}: {why}")));
            }
        };
        if !values.iter().any(|v| crate::secrets::same(v, code)) {
            return Err(DomainError::NotVerified(format!(
                "the TXT records at {record} do not contain the verification code"
            )));
        }
        domain.is_verified = true;
        domain.modified = clock::rfc3339(self.clock.now());
        domain.modified_by = principal.user_name.clone();
        self.store.save_domain(domain.clone()).await?;
        self.audit("domain.verified", principal, &domain).await;
        Ok(domain)
    }
}
