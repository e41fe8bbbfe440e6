//! Dashboard sessions and CSRF tokens.
//!
//! Signing in with an API key sets `flywheel_session`: the key's id (a
//! random uuid, nothing derived from the key: a copied cookie tells nothing
//! about the key), the time it was issued and a random nonce, signed with
//! the server's key;
//! HttpOnly, SameSite=Strict, Secure when the public URL is https. The key
//! itself is never stored in the cookie. A session lasts [`SESSION_TTL`],
//! or until its key signs out (which ends every session of that key, in
//! the store, so a copied cookie stops working too) or is deleted. Every
//! form carries a CSRF token derived from the session's nonce (the sign-in
//! form from a pre-session nonce cookie), and every POST checks it.

use crate::App;
use axum::http::HeaderMap;
use base64::Engine;
use flywheel_model::time::now_ms;
use std::time::Duration;

pub const SESSION_COOKIE: &str = "flywheel_session";
pub const LOGIN_COOKIE: &str = "flywheel_login";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The id of the key that signed in.
    pub key_id: uuid::Uuid,
    pub nonce: String,
    /// The token forms must carry.
    pub csrf: String,
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// A random token, URL-safe.
pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>())
}

/// The CSRF token for a nonce.
pub fn csrf_for(app: &App, nonce: &str) -> String {
    app.signer.mac_hex("csrf", nonce)[..32].to_owned()
}

/// Whether `token` is the CSRF token for `nonce` (in constant time).
pub fn csrf_matches(app: &App, nonce: &str, token: Option<&String>) -> bool {
    token.is_some_and(|t| t.len() == 32 && app.signer.check_mac_hex("csrf", nonce, t))
}

/// The cookie value of a new session for the key with this id.
pub fn issue(app: &App, key_id: uuid::Uuid) -> (String, Session) {
    let nonce = random_token();
    let payload = b64(&format!("{key_id}:{}:{nonce}", now_ms()));
    let value = format!("{payload}.{}", app.signer.mac_hex("session", &payload));
    let csrf = csrf_for(app, &nonce);
    (value, Session { key_id, nonce, csrf })
}

/// `name=value` of a cookie header, if present.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The session a request carries, if its cookie is genuine and unexpired,
/// and its key still exists and has not signed out since.
pub async fn from_headers(app: &App, headers: &HeaderMap) -> Option<Session> {
    let value = cookie(headers, SESSION_COOKIE)?;
    let (payload, signature) = value.split_once('.')?;
    if signature.len() != 64 || !app.signer.check_mac_hex("session", payload, signature) {
        return None;
    }
    let decoded = String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let mut parts = decoded.splitn(3, ':');
    let (key_id, issued_ms, nonce) =
        (uuid::Uuid::parse_str(parts.next()?).ok()?, parts.next()?.parse::<i64>().ok()?, parts.next()?);
    if issued_ms + SESSION_TTL.as_millis() as i64 <= now_ms() {
        return None;
    }
    let key = app.store.get_api_key(key_id).await.ok().flatten()?;
    if issued_ms <= key.sessions_not_before {
        return None;
    }
    Some(Session { key_id, nonce: nonce.to_owned(), csrf: csrf_for(app, nonce) })
}

/// Signs out: ends every session of this session's key, in every browser.
pub async fn end(app: &App, session: &Session) -> Result<(), flywheel_store::StoreError> {
    app.store.end_sessions(session.key_id, now_ms()).await
}

/// `Set-Cookie` for a cookie with the dashboard's attributes.
pub fn set_cookie(app: &App, name: &str, value: &str, max_age: Duration) -> String {
    let secure = if app.signer.public_url.starts_with("https://") { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", max_age.as_secs())
}

/// `Set-Cookie` that removes a cookie.
pub fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}
