//! The operations the local endpoints answer, as (method, path template) tables.
//!
//! Each family keeps its own table beside its handler and matches requests with it, so the table is
//! what the code answers; [`crate::api::operations::public`] and [`crate::api::admin::operations`]
//! collect them, and the test suite checks them against `openapi/openapi.json` in both directions.

/// Where gatehouse publishes the public keys of its tokens.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Forward-auth's endpoint (and, for Envoy, the prefix of the path it describes).
pub const FORWARD_AUTH_PATH: &str = "/auth/verify";

/// One operation of a local API, as OpenAPI names it: an HTTP method and a path template in which
/// a `{name}` segment stands for any one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Operation {
    /// The HTTP method, in upper case.
    pub method: &'static str,
    /// The path template, below the family's base path when it has one.
    pub path: &'static str,
}

impl Operation {
    /// The operation `method` on the path template `path`.
    pub const fn new(method: &'static str, path: &'static str) -> Operation {
        Operation { method, path }
    }
}

/// The methods OpenAPI can name. Forward-auth answers every method (Envoy's `ext_authz` sends the
/// original request's), so its table lists all of these.
const EVERY_METHOD: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
];

/// The JWK Set of gatehouse's token keys; other methods on the path are proxied.
pub const JWKS: [Operation; 2] = [
    Operation::new("GET", JWKS_PATH),
    Operation::new("HEAD", JWKS_PATH),
];

/// Forward-auth with the described request in headers, and Envoy's variant that appends the
/// described path (one or more segments) to [`FORWARD_AUTH_PATH`].
const FORWARD_AUTH_PATHS: [&str; 2] = [FORWARD_AUTH_PATH, "/auth/verify/{describedPath}"];

/// Every forward-auth operation.
pub fn forward_auth() -> Vec<Operation> {
    FORWARD_AUTH_PATHS
        .iter()
        .flat_map(|path| {
            EVERY_METHOD
                .iter()
                .map(|method| Operation::new(method, path))
        })
        .collect()
}

/// The values of the template's `{…}` segments when the path's segments match it; literal
/// segments compare exactly, or in any letter case with `ignore_case`.
pub fn matches<'s>(
    template: &str,
    segments: &[&'s str],
    ignore_case: bool,
) -> Option<Vec<&'s str>> {
    match_segments(template, segments.iter().copied(), ignore_case)
}

/// [`matches`] for a whole path (split at every `/`), literals in any letter case (SPEC §2: local
/// endpoints match as leniently as an upstream would).
pub fn captures<'p>(template: &str, path: &'p str) -> Option<Vec<&'p str>> {
    // The literal text before the first `{…}` settles most mismatches without splitting anything.
    let literal = template.split_once('{').map_or(template, |(head, _)| head);
    crate::path::strip_prefix_ignore_case(path, literal)?;
    match_segments(template, path.split('/'), true)
}

/// Walks template and path together; every proxied request is tried against some templates, so
/// a mismatch costs no allocation.
fn match_segments<'s>(
    template: &str,
    mut segments: impl Iterator<Item = &'s str>,
    ignore_case: bool,
) -> Option<Vec<&'s str>> {
    let mut parts = template.split('/');
    let mut values = Vec::new();
    loop {
        match (parts.next(), segments.next()) {
            (None, None) => return Some(values),
            (Some(part), Some(segment)) => {
                if part.starts_with('{') && part.ends_with('}') {
                    values.push(segment);
                } else if !(part == segment
                    || ignore_case && crate::path::eq_ignore_case(part, segment))
                {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// Every path of `table` below `base`, whole (as an API family's endpoint lookup matches them).
pub fn paths_below<E>(base: &str, table: &[(Operation, E)]) -> Vec<String> {
    table
        .iter()
        .map(|(r, _)| format!("{base}{}", r.path))
        .collect()
}

/// The operations of a family's `(operation, endpoint)` table.
pub fn operations_of<E>(table: &[(Operation, E)]) -> Vec<Operation> {
    table.iter().map(|(r, _)| *r).collect()
}

/// The path template under which `endpoint` sits in a family's table (`""` if it is absent).
pub fn template_of<E: PartialEq>(table: &[(Operation, E)], endpoint: &E) -> &'static str {
    table
        .iter()
        .find(|(_, e)| e == endpoint)
        .map_or("", |(r, _)| r.path)
}

/// `Ok` when `operations` answer `method` on `template`; else `Err` with the methods they answer
/// there, as a 405's `Allow` value.
pub fn check_method(
    operations: &[Operation],
    template: &str,
    method: &http::Method,
) -> Result<(), String> {
    let on_path = || operations.iter().filter(|r| r.path == template);
    if on_path().any(|r| r.method == method.as_str()) {
        return Ok(());
    }
    Err(on_path().map(|r| r.method).collect::<Vec<_>>().join(", "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn placeholders_match_one_segment_and_literals_match_in_any_case() {
        let t = "/v1/organizations/{organizationId}/domains/{domainId}";
        assert_eq!(
            captures(t, "/v1/organizations/7/domains/3"),
            Some(vec!["7", "3"])
        );
        assert_eq!(captures(t, "/v1/organizations/7/domains/3/x"), None);
        assert_eq!(
            captures(t, "/V1/Organizations/7/DOMAINS/Ab"),
            Some(vec!["7", "Ab"])
        );
        assert_eq!(
            matches("/User/x", &["", "user", "X"], true),
            Some(Vec::new())
        );
        assert_eq!(matches("/User/x", &["", "user", "X"], false), None);
    }

    #[test]
    fn a_wrong_method_names_the_ones_answered() {
        let operations = [
            Operation::new("GET", "/a"),
            Operation::new("POST", "/a"),
            Operation::new("PUT", "/b"),
        ];
        assert_eq!(check_method(&operations, "/a", &http::Method::POST), Ok(()));
        assert_eq!(
            check_method(&operations, "/a", &http::Method::DELETE),
            Err("GET, POST".to_owned())
        );
    }

    #[test]
    fn forward_auth_variant_lies_below_the_endpoint() {
        assert!(FORWARD_AUTH_PATHS[1].starts_with(&format!("{FORWARD_AUTH_PATH}/")));
    }
}
