//! Every operation the public listeners answer themselves, collected from the families' tables.

use crate::api::table::{JWKS, Operation, forward_auth};
use crate::config::ApisConfig;

/// One operation of the public listeners, its path with the family's configured base path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublicOperation {
    /// The HTTP method, in upper case.
    pub method: &'static str,
    /// The path template, the family's base path included.
    pub path: String,
}

/// Every operation the public listeners answer themselves with `apis`, in the order the gateway
/// tries them; everything else is proxied. A disabled family contributes nothing.
pub fn public(apis: &ApisConfig) -> Vec<PublicOperation> {
    let plain = |operations: &[Operation]| -> Vec<PublicOperation> { based("", operations) };
    let mut all = plain(&forward_auth());
    all.extend(plain(&crate::api::signin::OPERATIONS));
    all.extend(plain(&JWKS));
    all.extend(plain(&crate::api::enroll::OPERATIONS));
    if apis.ws.enabled {
        all.extend(based(
            &apis.ws.base_path,
            &crate::api::ws::endpoints::operations(),
        ));
    }
    if apis.manage.family.enabled {
        all.extend(based(
            &apis.manage.family.base_path,
            &crate::api::manage::operations(),
        ));
    }
    if apis.nexus.enabled {
        all.extend(based(
            &apis.nexus.base_path,
            &crate::api::nexus::operations(),
        ));
    }
    all
}

fn based(base: &str, operations: &[Operation]) -> Vec<PublicOperation> {
    operations
        .iter()
        .map(|r| PublicOperation {
            method: r.method,
            path: format!("{base}{}", r.path),
        })
        .collect()
}
