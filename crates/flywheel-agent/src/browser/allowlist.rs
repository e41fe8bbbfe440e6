//! `url_allowlist`: which URLs a browser may load.
//!
//! An entry is an origin (`https://portal.example.com`, with an optional
//! port, and optionally a path prefix), a host (`example.com`: any scheme and
//! port), or a host pattern (`*.example.com`: its subdomains and itself).
//! An empty list allows everything. `data:`, `blob:` and `about:` URLs are
//! always allowed: they do not leave the browser.

use reqwest::Url;

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Origin { scheme: String, host: String, port: Option<u16>, path: String },
    Host { host: String, subdomains: bool },
}

#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    entries: Vec<Entry>,
}

impl Allowlist {
    pub fn new(entries: &[String]) -> Result<Allowlist, String> {
        let mut parsed = Vec::new();
        for raw in entries {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            if raw.contains("://") {
                let url = Url::parse(raw).map_err(|e| format!("url_allowlist entry {raw:?} is not a URL: {e}"))?;
                let host = url
                    .host_str()
                    .ok_or_else(|| format!("url_allowlist entry {raw:?} has no host"))?
                    .to_ascii_lowercase();
                parsed.push(Entry::Origin {
                    scheme: url.scheme().to_owned(),
                    host,
                    port: url.port_or_known_default(),
                    path: url.path().trim_end_matches('/').to_owned(),
                });
            } else if let Some(rest) = raw.strip_prefix("*.") {
                parsed.push(Entry::Host { host: rest.to_ascii_lowercase(), subdomains: true });
            } else {
                parsed.push(Entry::Host { host: raw.trim_end_matches('/').to_ascii_lowercase(), subdomains: false });
            }
        }
        Ok(Allowlist { entries: parsed })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the browser may load `url`.
    pub fn allows(&self, url: &str) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        let Ok(url) = Url::parse(url) else { return false };
        if matches!(url.scheme(), "data" | "blob" | "about") {
            return true;
        }
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else { return false };
        self.entries.iter().any(|entry| match entry {
            Entry::Origin { scheme, host: h, port, path } => {
                url.scheme() == scheme
                    && host == *h
                    && url.port_or_known_default() == *port
                    && (path.is_empty() || url.path() == path || url.path().starts_with(&format!("{path}/")))
            }
            Entry::Host { host: h, subdomains } => host == *h || (*subdomains && host.ends_with(&format!(".{h}"))),
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
        assert!(Allowlist::new(&["https://".to_owned()]).is_err());
    }
}
