//! Virtual-host and route lookup. Pure: no I/O, so it is trivially testable.
//!
//! Request flow position: after accept/TLS, before the handler. The host comes
//! from the request (`:authority` or `Host`), the path from `path::normalize`.

use std::borrow::Cow;
use std::collections::HashMap;

use rustc_hash::FxBuildHasher;

/// Host name → site. `S` is whatever the front end keeps per site.
#[derive(Debug)]
pub struct Router<S> {
    /// (Fx: its keys come from the configuration; a client only looks up.)
    by_host: HashMap<String, usize, FxBuildHasher>,
    sites: Vec<S>,
}

impl<S> Router<S> {
    /// Builds the table; `hosts` of each site must already be lowercase and
    /// unique across sites (the configuration guarantees both).
    pub fn new(sites: Vec<(Vec<String>, S)>) -> Router<S> {
        let mut by_host = HashMap::default();
        let mut out = Vec::with_capacity(sites.len());
        for (i, (hosts, site)) in sites.into_iter().enumerate() {
            for h in hosts {
                by_host.entry(h).or_insert(i);
            }
            out.push(site);
        }
        Router {
            by_host,
            sites: out,
        }
    }

    /// The site for a normalised host name (see [`normalize_host`]).
    pub fn site(&self, host: &str) -> Option<(usize, &S)> {
        let &i = self.by_host.get(host)?;
        Some((i, &self.sites[i]))
    }

    pub fn sites(&self) -> &[S] {
        &self.sites
    }
}

/// Lowercases a Host header or authority and strips the port and a trailing dot.
/// Returns None for values that are not a plausible host name or IP literal.
/// A name that is lowercase already is borrowed, not copied.
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: "[::1]:8080" → "[::1]"
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || valid_port(after.strip_prefix(':')?)) {
            return None;
        }
        return Some(Cow::Owned(format!(
            "[{}]",
            rest[..end].to_ascii_lowercase()
        )));
    } else {
        // A byte loop, not string searchers: this runs for every request.
        match raw.bytes().rposition(|b| b == b':') {
            Some(i) if valid_port(&raw[i + 1..]) => &raw[..i],
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let mut upper = false;
    for b in host.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {}
            b'A'..=b'Z' => upper = true,
            _ => return None,
        }
    }
    if host.is_empty() {
        return None;
    }
    Some(if upper {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Index of the route whose prefix matches `path`, longest first. `prefixes` is
/// sorted longest first, without trailing slashes (except "/"). Matching is by
/// whole segments: "/admin" matches "/admin" and "/admin/x", not "/administrator".
pub fn route<'a>(prefixes: impl IntoIterator<Item = &'a str>, path: &str) -> Option<usize> {
    prefixes
        .into_iter()
        .position(|prefix| prefix_matches(prefix, path))
}

/// Whether `path` falls under the route `prefix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_case_insensitive_and_ignore_ports() {
        assert_eq!(
            normalize_host("Alice.TEST:8080").as_deref(),
            Some("alice.test")
        );
        assert_eq!(normalize_host("alice.test.").as_deref(), Some("alice.test"));
        assert_eq!(normalize_host("[::1]:443").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(normalize_host("a b"), None);
        assert_eq!(normalize_host("alice.test:http"), None);
        assert_eq!(normalize_host("alice.test/../x"), None);
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host("a:b:80"), None, "one port");
        assert_eq!(normalize_host(":80"), None);
        assert_eq!(normalize_host("a.test:"), None);
        assert_eq!(normalize_host("a.test:123456"), None);
        assert_eq!(normalize_host(" Alice.test "), Some("alice.test".into()));
        assert!(matches!(
            normalize_host("alice.test"),
            Some(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn router_finds_aliases_and_nothing_else() {
        let r = Router::new(vec![
            (vec!["a.test".into(), "www.a.test".into()], "A"),
            (vec!["b.test".into()], "B"),
        ]);
        assert_eq!(r.site("www.a.test").map(|s| *s.1), Some("A"));
        assert_eq!(r.site("b.test").map(|s| *s.1), Some("B"));
        assert!(r.site("c.test").is_none());
    }

    #[test]
    fn routes_match_whole_segments_longest_first() {
        let prefixes = ["/admin/tools", "/admin", "/"];
        assert_eq!(route(prefixes, "/admin/tools/x"), Some(0));
        assert_eq!(route(prefixes, "/admin"), Some(1));
        assert_eq!(route(prefixes, "/admin/"), Some(1));
        assert_eq!(route(prefixes, "/administrator"), Some(2));
        assert_eq!(route(["/admin"], "/administrator"), None);
    }
}
