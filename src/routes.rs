//! The route table: which rule applies to a normalised path.
//!
//! Prefixes match whole segments: `/api` matches `/api` and `/api/x` but not `/apix`; a prefix
//! ending in `/` matches everything below it. The longest matching prefix wins; the query never
//! takes part. A path no rule matches gets `proxy.default`.

use crate::config::{Access, Route};

/// Route rules sorted for lookup.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Longest prefix first, so the first match is the longest.
    routes: Vec<Route>,
    default: Route,
}

impl RouteTable {
    pub fn new(routes: &[Route], default: Access) -> RouteTable {
        let mut routes = routes.to_vec();
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        RouteTable {
            routes,
            default: Route {
                path_prefix: "/".into(),
                access: default,
                scopes: Vec::new(),
            },
        }
    }

    /// The rule for a path that [`crate::path::normalize`] produced.
    pub fn rule_for(&self, path: &str) -> &Route {
        self.routes
            .iter()
            .find(|r| prefix_matches(&r.path_prefix, path))
            .unwrap_or(&self.default)
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let route = |p: &str, access| Route {
            path_prefix: p.into(),
            access,
            scopes: vec![],
        };
        RouteTable::new(
            &[
                route("/public/", Access::Public),
                route("/public/private/", Access::Mfa),
                route("/api", Access::Public),
            ],
            Access::Authenticated,
        )
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table();
        assert_eq!(t.rule_for("/public/a").access, Access::Public);
        assert_eq!(t.rule_for("/public/private/a").access, Access::Mfa);
        assert_eq!(t.rule_for("/public/private/").access, Access::Mfa);
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let t = table();
        assert_eq!(t.rule_for("/api").access, Access::Public);
        assert_eq!(t.rule_for("/api/v1").access, Access::Public);
        assert_eq!(t.rule_for("/apix").access, Access::Authenticated);
        assert_eq!(t.rule_for("/public").access, Access::Authenticated);
    }

    #[test]
    fn unmatched_paths_get_the_default() {
        assert_eq!(table().rule_for("/").access, Access::Authenticated);
    }
}
