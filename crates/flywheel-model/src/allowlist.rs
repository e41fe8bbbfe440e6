//! `url_allowlist`: where an execution may connect.
//!
//! An entry is an origin (`https://portal.example.com`, with an optional
//! port, and optionally a path prefix), a host (`example.com`: any scheme and
//! port), or a host pattern (`*.example.com`: its subdomains and itself).
//! An empty list allows everything. `data:`, `blob:` and `about:` URLs are
//! always allowed: they do not leave the browser.
//!
//! Entries are checked when a specification is saved: `127.0.0.1:8080`
//! (a port without a scheme) would match nothing, so it is refused with a
//! hint instead of being saved silently.
//!
//! The browser checks whole URLs ([`Allowlist::allows`]); the egress proxy
//! sees only a host and a port for tunnels ([`Allowlist::allows_endpoint`]),
//! and lets a private address through only when an entry names its host
//! ([`Allowlist::names`]).

use url::Url;

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Origin { scheme: String, host: String, port: Option<u16>, path: String },
    Host { host: String, subdomains: bool },
}

#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    entries: Vec<Entry>,
}

/// Schemes an origin entry may have.
const SCHEMES: &[&str] = &["http", "https", "ws", "wss"];

/// Parses one entry; the error is a sentence for the user.
fn parse_entry(raw: &str) -> Result<Option<Entry>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.contains("://") {
        let url = Url::parse(raw).map_err(|e| format!("url_allowlist entry {raw:?} is not a URL: {e}"))?;
        if !SCHEMES.contains(&url.scheme()) {
            return Err(format!(
                "url_allowlist entry {raw:?} has the scheme {:?}; use http, https, ws or wss",
                url.scheme()
            ));
        }
        let host = url.host_str().ok_or_else(|| format!("url_allowlist entry {raw:?} has no host"))?;
        return Ok(Some(Entry::Origin {
            scheme: url.scheme().to_owned(),
            host: bare_host(host),
            port: url.port_or_known_default(),
            path: url.path().trim_end_matches('/').to_owned(),
        }));
    }
    let (host, subdomains) = match raw.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (raw.trim_end_matches('/'), false),
    };
    if host.contains([':', '/']) && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "url_allowlist entry {raw:?} has no scheme, so it would match nothing: write http://{raw} or https://{raw} \
             (a bare host such as example.com allows every port and scheme)"
        ));
    }
    let valid = !host.is_empty()
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'));
    if !valid {
        return Err(format!("url_allowlist entry {raw:?} is not a host name, a *.domain pattern or a URL"));
    }
    Ok(Some(Entry::Host { host: bare_host(host), subdomains }))
}

/// The first problem with a list of entries, with the index of the entry.
pub fn check_entries(entries: &[String]) -> Result<(), (usize, String)> {
    for (i, raw) in entries.iter().enumerate() {
        parse_entry(raw).map_err(|e| (i, e))?;
    }
    Ok(())
}

fn host_matches(entry: &Entry, host: &str) -> bool {
    match entry {
        Entry::Origin { host: h, .. } => host == h,
        Entry::Host { host: h, subdomains } => host == h || (*subdomains && host.ends_with(&format!(".{h}"))),
    }
}

/// `[::1]` and `::1` name the same host.
fn bare_host(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

impl Allowlist {
    pub fn new(entries: &[String]) -> Result<Allowlist, String> {
        let mut parsed = Vec::new();
        for raw in entries {
            parsed.extend(parse_entry(raw)?);
        }
        Ok(Allowlist { entries: parsed })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `url` may be loaded. Only web URLs ever may (`file:`,
    /// `chrome:`, `view-source:`, `about:` pages other than `about:blank`
    /// never), whatever the list.
    pub fn allows(&self, url: &str) -> bool {
        let Ok(url) = Url::parse(url) else { return false };
        if matches!(url.scheme(), "data" | "blob") || matches!(url.as_str(), "about:blank" | "about:srcdoc") {
            return true;
        }
        if !SCHEMES.contains(&url.scheme()) {
            return false;
        }
        if self.entries.is_empty() {
            return true;
        }
        let Some(host) = url.host_str().map(bare_host) else { return false };
        // An encoded slash, backslash or dot could climb out of a path
        // prefix on a server that decodes before it resolves `..`.
        // (Also full-width and overlong dots and slashes, and `..;`, which
        // some servers resolve as `..`.)
        let lower_path = url.path().to_ascii_lowercase();
        let encoded_escape = ["%2f", "%5c", "%2e", "%ef%bc%8e", "%ef%bc%8f", "%c0%ae", "%c0%af", "%25", "%u"]
            .iter()
            .any(|e| lower_path.contains(e))
            || url.path_segments().is_some_and(|mut segments| segments.any(|s| s.starts_with("..")));
        self.entries.iter().any(|entry| match entry {
            Entry::Origin { scheme, port, path, .. } => {
                url.scheme() == scheme
                    && host_matches(entry, &host)
                    && url.port_or_known_default() == *port
                    && (path.is_empty()
                        || (!encoded_escape && (url.path() == path || url.path().starts_with(&format!("{path}/")))))
            }
            Entry::Host { .. } => host_matches(entry, &host),
        })
    }

    /// Whether a tunnel to `host:port` may be opened. A tunnel hides its
    /// scheme and path, so an origin entry allows its host and port, except
    /// a plain `http://` (or `ws://`) origin with a path prefix: a tunnel
    /// there would reach every path, and plain HTTP can go through the
    /// proxy as requests whose paths are checked. (The path of an
    /// `https://` entry is enforced by the browser only.)
    pub fn allows_endpoint(&self, host: &str, port: u16) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        let host = bare_host(host);
        self.entries.iter().any(|entry| match entry {
            Entry::Origin { scheme, port: p, path, .. } => {
                let plain = scheme == "http" || scheme == "ws";
                host_matches(entry, &host) && *p == Some(port) && (path.is_empty() || !plain)
            }
            Entry::Host { .. } => host_matches(entry, &host),
        })
    }

    /// Whether an entry names `host` itself, so that a private address it
    /// resolves to was chosen, not stumbled on. A `*.domain` pattern names
    /// no host: whoever controls a subdomain's DNS could point it anywhere.
    pub fn names(&self, host: &str) -> bool {
        let host = bare_host(host);
        self.entries.iter().any(|entry| match entry {
            Entry::Host { subdomains: true, .. } => false,
            _ => host_matches(entry, &host),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Allowlist {
        Allowlist::new(&entries.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn origins_hosts_and_patterns() {
        let allow =
            list(&["https://portal.example.com", "cdn.example.net", "*.assets.io", "http://127.0.0.1:8080/app"]);
        assert!(allow.allows("https://portal.example.com/login?x=1"));
        assert!(!allow.allows("http://portal.example.com/"), "scheme matters for origins");
        assert!(!allow.allows("https://portal.example.com.evil.com/"));
        assert!(allow.allows("http://cdn.example.net:81/lib.js"));
        assert!(allow.allows("https://a.b.assets.io/x") && allow.allows("https://assets.io/"));
        assert!(!allow.allows("https://notassets.io/"));
        assert!(allow.allows("http://127.0.0.1:8080/app/page") && allow.allows("http://127.0.0.1:8080/app"));
        assert!(!allow.allows("http://127.0.0.1:8080/application") && !allow.allows("http://127.0.0.1:8080/other"));
        assert!(!allow.allows("http://127.0.0.1:9090/app"));
        assert!(allow.allows("data:text/html,hi") && allow.allows("about:blank"));
        assert!(list(&[]).allows("https://anything.example/"));
        for never in
            ["file:///work/job.json", "chrome://version", "view-source:https://a.example/", "javascript:alert(1)"]
        {
            assert!(!list(&[]).allows(never) && !allow.allows(never), "{never}");
        }
        for never in ["about:version", "about:settings", "about:blank#x"] {
            assert!(!list(&[]).allows(never), "{never}");
        }
        assert!(Allowlist::new(&["https://".to_owned()]).is_err());
    }

    #[test]
    fn endpoints_and_named_hosts() {
        let allow = list(&["https://portal.example.com", "*.assets.io", "http://127.0.0.1:8080/app", "http://[::1]:9"]);
        assert!(allow.allows_endpoint("portal.example.com", 443));
        assert!(!allow.allows_endpoint("portal.example.com", 80));
        assert!(allow.allows_endpoint("x.assets.io", 8443));
        assert!(!allow.allows_endpoint("127.0.0.1", 8080), "a tunnel would bypass the path prefix");
        assert!(allow.allows_endpoint("::1", 9) && allow.allows_endpoint("[::1]", 9));
        assert!(allow.names("127.0.0.1") && allow.names("::1"));
        assert!(!allow.names("10.0.0.1"));
        assert!(!allow.names("cdn.assets.io"), "a pattern names no host");
        for escape in [
            "/app/..%2f..%2fapi",
            "/app/%2e%2e/api",
            "/app/..%5capi",
            "/app/%2E%2E/api",
            "/app/..;/api",
            "/app/%EF%BC%8E%EF%BC%8E/api",
        ] {
            assert!(!allow.allows(&format!("http://127.0.0.1:8080{escape}")), "{escape}");
        }
        assert!(list(&[]).allows_endpoint("10.0.0.1", 22) && !list(&[]).names("10.0.0.1"));
    }

    #[test]
    fn entries_that_would_match_nothing_are_refused_with_a_hint() {
        let err = check_entries(&["https://ok.example".into(), "127.0.0.1:8080".into()]).unwrap_err();
        assert_eq!(err.0, 1);
        assert!(err.1.contains("http://127.0.0.1:8080"), "{}", err.1);
        assert!(check_entries(&["example.com/path".into()]).is_err());
        assert!(check_entries(&["ftp://example.com".into()]).is_err());
        assert!(check_entries(&["exa mple.com".into()]).is_err());
        assert!(check_entries(&["example.com".into(), "*.example.com".into(), " ".into()]).is_ok());
    }
}
