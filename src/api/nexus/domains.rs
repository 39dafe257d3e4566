//! Domain endpoints of the Nexus family (seed 002 and companions):
//! `/v1/organizations/{organizationId}/domains[/{domainId}[/generate-code|/verify]]`.

use http::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::api;
use crate::api::table::{self, Operation};
use crate::body::Body;
use crate::domains::DomainError;
use crate::problem::Problem;
use crate::store::Domain;

/// What a domain path names; ids still as sent (validated by the handler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPath {
    Collection {
        organization: String,
    },
    Item {
        organization: String,
        domain: String,
    },
    GenerateCode {
        organization: String,
        domain: String,
    },
    Verify {
        organization: String,
        domain: String,
    },
}

const COLLECTION: &str = "/v1/organizations/{organizationId}/domains";
const ITEM: &str = "/v1/organizations/{organizationId}/domains/{domainId}";
const GENERATE_CODE: &str = "/v1/organizations/{organizationId}/domains/{domainId}/generate-code";
const VERIFY: &str = "/v1/organizations/{organizationId}/domains/{domainId}/verify";

/// What the domain endpoints answer, below the Nexus base path.
pub const OPERATIONS: [Operation; 6] = [
    Operation::new("GET", COLLECTION),
    Operation::new("POST", COLLECTION),
    Operation::new("GET", ITEM),
    Operation::new("DELETE", ITEM),
    Operation::new("POST", GENERATE_CODE),
    Operation::new("POST", VERIFY),
];

impl DomainPath {
    /// Parses the part of a path after the family's base path.
    pub fn parse(rest: &str) -> Option<DomainPath> {
        let own = |s: &str| s.to_owned();
        [COLLECTION, ITEM, GENERATE_CODE, VERIFY]
            .into_iter()
            .find_map(|template| {
                let values = table::captures(template, rest)?;
                Some(match (template, values.as_slice()) {
                    (COLLECTION, [org]) => DomainPath::Collection {
                        organization: own(org),
                    },
                    (ITEM, [org, id]) => DomainPath::Item {
                        organization: own(org),
                        domain: own(id),
                    },
                    (GENERATE_CODE, [org, id]) => DomainPath::GenerateCode {
                        organization: own(org),
                        domain: own(id),
                    },
                    (VERIFY, [org, id]) => DomainPath::Verify {
                        organization: own(org),
                        domain: own(id),
                    },
                    _ => return None,
                })
            })
    }

    /// The path template the path matched.
    pub fn template(&self) -> &'static str {
        match self {
            DomainPath::Collection { .. } => COLLECTION,
            DomainPath::Item { .. } => ITEM,
            DomainPath::GenerateCode { .. } => GENERATE_CODE,
            DomainPath::Verify { .. } => VERIFY,
        }
    }

    /// `Ok` when the path answers `method`, else `Err` with the `Allow` value for a 405.
    pub fn allows(&self, method: &Method) -> Result<(), String> {
        table::check_method(&OPERATIONS, self.template(), method)
    }
}

/// An id segment: an int32 (seed 002), else 400.
pub fn id(segment: &str, name: &str) -> Result<i64, Problem> {
    segment.parse::<i32>().map(i64::from).map_err(|_| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
            format!("`{name}` must be an integer, not `{segment}`"),
        )
    })
}

/// The body of `POST …/domains`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    pub domain: Option<String>,
    pub authentication_method: Option<String>,
}

/// Seed 002's domain object: every field, camelCase, date-times in RFC 3339 UTC, ids as integers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DomainObject<'a> {
    domain: &'a str,
    created: &'a str,
    domain_id: i64,
    modified: &'a str,
    created_by: &'a str,
    is_verified: bool,
    modified_by: &'a str,
    organization_id: i64,
    verification_code: Option<&'a str>,
    verification_method: Option<&'a str>,
    owner_organization_id: i64,
    authentication_method: Option<&'a str>,
    verification_code_expires: Option<&'a str>,
}

fn object(d: &Domain) -> DomainObject<'_> {
    DomainObject {
        domain: &d.domain,
        created: &d.created,
        domain_id: d.domain_id,
        modified: &d.modified,
        created_by: &d.created_by,
        is_verified: d.is_verified,
        modified_by: &d.modified_by,
        organization_id: d.organization_id,
        verification_code: d.verification_code.as_deref(),
        verification_method: d.verification_method.as_deref(),
        owner_organization_id: d.owner_organization_id,
        authentication_method: d.authentication_method.as_deref(),
        verification_code_expires: d.verification_code_expires.as_deref(),
    }
}

pub fn domain_response(status: StatusCode, domain: &Domain) -> Response<Body> {
    api::json(status, &object(domain))
}

pub fn list_response(domains: &[Domain]) -> Response<Body> {
    let objects: Vec<DomainObject<'_>> = domains.iter().map(object).collect();
    api::json(StatusCode::OK, &objects)
}

/// One mapping from domain outcomes to problems.
pub fn domain_problem(e: &DomainError) -> Problem {
    match e {
        DomainError::OrganizationNotFound => Problem::new(
            StatusCode::NOT_FOUND,
            "organization-not-found",
            "Organization not found",
            "No organization has that id.",
        ),
        DomainError::DomainNotFound => Problem::new(
            StatusCode::NOT_FOUND,
            "domain-not-found",
            "Domain not found",
            "The organization has no domain with that id.",
        ),
        DomainError::Forbidden => Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            "Only the organization's admins manage its domains.",
        ),
        DomainError::Invalid(why) => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
            why.clone(),
        ),
        DomainError::Conflict(what) => Problem::new(
            StatusCode::CONFLICT,
            "conflict",
            "Already claimed",
            format!("{what} already exists."),
        ),
        DomainError::Declared(why) => Problem::new(
            StatusCode::CONFLICT,
            "declared-in-bootstrap",
            "Declared in the bootstrap file",
            why.clone(),
        ),
        DomainError::NotVerified(why) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "domain-not-verified",
            "Domain not verified",
            why.clone(),
        ),
        DomainError::DnsFailed(why) => Problem::new(
            StatusCode::BAD_GATEWAY,
            "dns-unavailable",
            "DNS lookup failed",
            format!("The TXT lookup failed: {why}"),
        ),
        DomainError::Store(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "Store unavailable",
            "Try again shortly; nothing was changed.",
        ),
        DomainError::Internal(_) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "The request failed.",
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn domain_paths_are_recognised() {
        assert_eq!(
            DomainPath::parse("/v1/organizations/7/domains/3/generate-code"),
            Some(DomainPath::GenerateCode {
                organization: "7".into(),
                domain: "3".into()
            })
        );
        assert_eq!(
            DomainPath::parse("/v1/organizations/x/domains"),
            Some(DomainPath::Collection {
                organization: "x".into()
            })
        );
        assert_eq!(
            DomainPath::parse("/v1/organizations/7/domains/3/other"),
            None
        );
        assert_eq!(DomainPath::parse("/v1/organizations/7"), None);
    }

    #[test]
    fn every_parsed_route_answers_a_method_of_the_table() {
        for path in [
            "/v1/organizations/7/domains",
            "/v1/organizations/7/domains/3",
            "/v1/organizations/7/domains/3/generate-code",
            "/v1/organizations/7/domains/3/verify",
        ] {
            let parsed = DomainPath::parse(path).unwrap();
            assert!(
                OPERATIONS.iter().any(|r| r.path == parsed.template()),
                "{path}"
            );
        }
        let item = DomainPath::parse("/v1/organizations/7/domains/3").unwrap();
        assert_eq!(item.allows(&Method::PUT), Err("GET, DELETE".to_owned()));
        assert_eq!(item.allows(&Method::DELETE), Ok(()));
    }

    #[test]
    fn ids_must_be_int32() {
        assert_eq!(id("42", "domainId").unwrap(), 42);
        for bad in ["x", "1.5", "", "2147483648", "0x10"] {
            assert!(id(bad, "domainId").is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod body_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::api::tests::json_like_bytes;
    use proptest::prelude::*;

    #[test]
    fn deeply_nested_create_bodies_are_refused() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        for body in [
            "[".repeat(100_000),
            format!(r#"{{"domain":"example.com","ignored":{deep}}}"#),
        ] {
            assert!(api::decode_json::<CreateBody>(body.as_bytes()).is_err());
        }
    }

    proptest! {
        #[test]
        fn create_bodies_decode_or_fail_without_panicking(bytes in json_like_bytes()) {
            if let Ok(body) = api::decode_json::<CreateBody>(&bytes)
                && let Some(domain) = body.domain
            {
                let _ = crate::domains::name::normalise(&domain);
            }
        }
    }
}
