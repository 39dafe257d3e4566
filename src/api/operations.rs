//! Every operation the public listeners answer themselves, collected from the families' tables.

use crate::api::route::{JWKS, Route, forward_auth};
use crate::config::ApisConfig;

/// One operation of the public listeners, its path with the family's configured base path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Operation {
    pub method: &'static str,
    pub path: String,
}

/// Every operation the public listeners answer themselves with `apis`, in the order the gateway
/// tries them; everything else is proxied. A disabled family contributes nothing.
pub fn public(apis: &ApisConfig) -> Vec<Operation> {
    let plain = |routes: &[Route]| -> Vec<Operation> { based("", routes) };
    let mut all = plain(&forward_auth());
    all.extend(plain(&JWKS));
    all.extend(plain(&crate::api::enroll::ROUTES));
    if apis.ws.enabled {
        all.extend(based(
            &apis.ws.base_path,
            &crate::api::ws::endpoints::routes(),
        ));
    }
    if apis.manage.family.enabled {
        all.extend(based(
            &apis.manage.family.base_path,
            &crate::api::manage::routes(),
        ));
    }
    if apis.nexus.enabled {
        all.extend(based(&apis.nexus.base_path, &crate::api::nexus::routes()));
    }
    all
}

fn based(base: &str, routes: &[Route]) -> Vec<Operation> {
    routes
        .iter()
        .map(|r| Operation {
            method: r.method,
            path: format!("{base}{}", r.path),
        })
        .collect()
}
