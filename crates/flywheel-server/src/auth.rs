//! API keys and signed URLs.
//!
//! Keys are random (`fw_` + 40 alphanumerics, about 238 bits) and stored as
//! their SHA-256: a high-entropy token needs no slow hash, and a lookup by
//! hash compares nothing in variable time. A key may come in
//! `Authorization: Bearer`, `X-API-Key` or `kinetic-api-key`. Verified keys
//! are cached briefly so a busy client does not cost a query per request.
//!
//! Artifact URLs (`output_url`, `logs_url`, `video_url`) carry
//! `expires` and an HMAC-SHA256 `signature` over the execution, the name and
//! the expiry, with a key kept in the store, so they work without the API
//! key (in a `<video>` tag, a shared link) until they expire, and only for
//! the one artifact they name.

use crate::error::ApiError;
use crate::App;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use flywheel_store::records::{ApiKeyRecord, NewApiKey};
use flywheel_store::Store;
use hmac::{Hmac, Mac};
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a verified key is trusted without asking the store again.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// Most keys kept in the cache.
const KEY_CACHE_MAX: usize = 10_000;

/// A fresh random API key.
pub fn generate_key() -> String {
    format!("fw_{}", Alphanumeric.sample_string(&mut rand::rng(), 40))
}

/// Hex SHA-256 of a key: what the store keeps.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Registers `key` (if new) as an admin key.
pub async fn register_key(store: &dyn Store, key: &str, name: &str) -> anyhow::Result<bool> {
    let prefix: String = key.chars().take(7).collect();
    Ok(store
        .ensure_api_key(NewApiKey {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            key_hash: hash_key(key),
            prefix,
            role: "admin".to_owned(),
        })
        .await?)
}

/// Recently verified keys, by hash.
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, (ApiKeyRecord, Instant)>>,
}

impl KeyCache {
    async fn verify(&self, store: &dyn Store, key: &str) -> Result<Option<ApiKeyRecord>, ApiError> {
        let hash = hash_key(key);
        if let Some((record, at)) = self.lock().get(&hash) {
            if at.elapsed() < KEY_CACHE_TTL {
                return Ok(Some(record.clone()));
            }
        }
        let found = store.find_api_key(&hash).await?;
        if let Some(record) = &found {
            let mut entries = self.lock();
            if entries.len() >= KEY_CACHE_MAX {
                entries.clear();
            }
            entries.insert(hash, (record.clone(), Instant::now()));
        }
        Ok(found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (ApiKeyRecord, Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The key a request presents, from any of the accepted headers.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        if let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) {
            return Some(token.trim());
        }
    }
    ["x-api-key", "kinetic-api-key"]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// Middleware: lets the request through only with a valid key, or, for
/// reading (GET), a dashboard session (its cookie is SameSite=Strict, so no
/// other site can send it; anything that changes state needs a key or a
/// dashboard form with its CSRF token).
pub async fn require_key(State(app): State<Arc<App>>, request: Request, next: Next) -> Result<Response, ApiError> {
    if request.method() == axum::http::Method::GET
        && presented_key(request.headers()).is_none()
        && crate::dashboard::session::from_headers(&app, request.headers()).await.is_some()
    {
        return Ok(next.run(request).await);
    }
    let Some(key) = presented_key(request.headers()) else {
        return Err(ApiError::Unauthorized(
            "Not authenticated: send an API key in the Authorization: Bearer, X-API-Key or kinetic-api-key header"
                .into(),
        ));
    };
    match app.keys.verify(app.store.as_ref(), key).await? {
        Some(_) => Ok(next.run(request).await),
        None => Err(ApiError::Unauthorized("Invalid API key".into())),
    }
}

/// Whether `headers` carry a valid key (for endpoints that also accept a signature).
pub async fn has_valid_key(app: &App, headers: &HeaderMap) -> Result<bool, ApiError> {
    match presented_key(headers) {
        Some(key) => Ok(app.keys.verify(app.store.as_ref(), key).await?.is_some()),
        None => Ok(false),
    }
}

/// Signs and checks artifact URLs.
pub struct UrlSigner {
    key: Vec<u8>,
    /// Absolute base of the API, e.g. `https://flywheel.example.com`.
    pub public_url: String,
    pub ttl: Duration,
}

type HmacSha256 = Hmac<Sha256>;

impl UrlSigner {
    pub fn new(key: &[u8], public_url: &str, ttl: Duration) -> UrlSigner {
        UrlSigner { key: key.to_vec(), public_url: public_url.trim_end_matches('/').to_owned(), ttl }
    }

    fn mac(&self, execution: Uuid, name: &str, expires: i64) -> HmacSha256 {
        // HMAC accepts keys of any length; this cannot fail.
        let mut mac =
            HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(format!("{execution}/{name}/{expires}").as_bytes());
        mac
    }

    /// An absolute URL for one artifact that works without a key until it
    /// expires. The expiry is rounded up to the minute so the same artifact
    /// gets the same URL for a while (good for caches and for comparing).
    pub fn artifact_url(&self, execution: Uuid, name: &str) -> String {
        let now = chrono_now_secs();
        let expires = (now + self.ttl.as_secs() as i64 + 59) / 60 * 60;
        let signature = hex::encode(self.mac(execution, name, expires).finalize().into_bytes());
        format!(
            "{}/api/executions/{execution}/artifacts/{name}?expires={expires}&signature={signature}",
            self.public_url
        )
    }

    /// An HMAC of `data` under this server's key, for purpose `domain`
    /// (sessions and CSRF tokens use their own domains).
    pub fn mac_hex(&self, domain: &str, data: &str) -> String {
        hex::encode(self.domain_mac(domain, data).finalize().into_bytes())
    }

    fn domain_mac(&self, domain: &str, data: &str) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(domain.as_bytes());
        mac.update(b":");
        mac.update(data.as_bytes());
        mac
    }

    /// Whether `signature_hex` is [`Self::mac_hex`] of `data` for `domain`, or
    /// its first half or more; compared in constant time.
    pub fn check_mac_hex(&self, domain: &str, data: &str, signature_hex: &str) -> bool {
        match hex::decode(signature_hex) {
            Ok(tag) if tag.len() >= 16 => self.domain_mac(domain, data).verify_truncated_left(&tag).is_ok(),
            _ => false,
        }
    }

    /// Whether a signature is valid and unexpired for this artifact.
    pub fn verify(&self, execution: Uuid, name: &str, expires: i64, signature: &str) -> bool {
        if expires < chrono_now_secs() {
            return false;
        }
        let Ok(bytes) = hex::decode(signature) else { return false };
        self.mac(execution, name, expires).verify_slice(&bytes).is_ok()
    }
}

fn chrono_now_secs() -> i64 {
    flywheel_model::time::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_hashed() {
        let a = generate_key();
        assert!(a.starts_with("fw_") && a.len() == 43);
        assert_ne!(a, generate_key());
        assert_eq!(hash_key(&a).len(), 64);
        assert_ne!(hash_key(&a), a);
    }

    #[test]
    fn signatures_bind_execution_name_and_expiry() {
        let signer = UrlSigner::new(b"secret", "http://h:1/", Duration::from_secs(3600));
        let id = Uuid::now_v7();
        let url = signer.artifact_url(id, "output.json");
        assert!(url.starts_with(&format!("http://h:1/api/executions/{id}/artifacts/output.json?expires=")));
        let query = url.split_once('?').unwrap().1;
        let params: HashMap<&str, &str> = query.split('&').filter_map(|p| p.split_once('=')).collect();
        let expires: i64 = params["expires"].parse().unwrap();
        let sig = params["signature"];
        assert!(signer.verify(id, "output.json", expires, sig));
        assert!(!signer.verify(id, "logs.jsonl", expires, sig), "another artifact");
        assert!(!signer.verify(Uuid::now_v7(), "output.json", expires, sig), "another execution");
        assert!(!signer.verify(id, "output.json", expires + 60, sig), "another expiry");
        assert!(!signer.verify(id, "output.json", 1000, sig), "expired");
        let other = UrlSigner::new(b"other", "http://h:1", Duration::from_secs(3600));
        assert!(!other.verify(id, "output.json", expires, sig), "another key");
    }

    #[test]
    fn keys_are_read_from_every_accepted_header() {
        for (name, value) in [("authorization", "Bearer k1"), ("x-api-key", "k1"), ("kinetic-api-key", "k1")] {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.parse().unwrap());
            assert_eq!(presented_key(&headers), Some("k1"));
        }
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }
}
