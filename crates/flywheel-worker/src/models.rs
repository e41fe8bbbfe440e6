//! The model proxy: the worker's side of the agent's model calls.
//!
//! An agent in its sandbox never holds a provider's API key. It sends the
//! request it wants made (provider, path, body); the worker checks that the
//! provider is the workflow's and the path one that provider's API uses for
//! computer use, adds the key, sends it to the base URL configured for the
//! workflow (never one the agent names), and hands back the answer with the
//! key masked. It also counts the tokens.
//!
//! The server's keys (`ANTHROPIC_API_KEY`, …) go only to the base URLs the
//! server's operator configured. A workflow that names a `base_url` of its
//! own brings its own key (`api_key: "{{ secrets.NAME }}"`) or sends none.

use flywheel_model::protocol::WorkerMessage;
use flywheel_model::redact::Redactor;
use flywheel_model::spec::AgentConfig;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long one model call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(180);
/// Largest answer of a model call read (it goes to the agent as one line).
const MAX_ANSWER: usize = 10 * 1024 * 1024;

/// One provider's settings on this server.
#[derive(Debug, Clone, Default)]
pub struct ProviderSettings {
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    pub default_model: Option<String>,
}

/// Every provider's settings, and which one a workflow gets by default.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub default_provider: String,
    pub anthropic: ProviderSettings,
    pub openai: ProviderSettings,
    pub openai_compatible: ProviderSettings,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            default_provider: "anthropic".into(),
            anthropic: ProviderSettings {
                base_url: Some("https://api.anthropic.com".into()),
                api_key: None,
                default_model: Some("claude-sonnet-4-20250514".into()),
            },
            openai: ProviderSettings {
                base_url: Some("https://api.openai.com/v1".into()),
                api_key: None,
                default_model: Some("computer-use-preview".into()),
            },
            openai_compatible: ProviderSettings::default(),
        }
    }
}

/// The model a workflow uses, resolved against the server's settings.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub provider: String,
    pub model: String,
    pub base_url: String,
    pub api_key: Option<String>,
    /// The base URL is the workflow's own, not one the operator configured:
    /// it is called like any address a run names (public addresses only).
    pub workflow_url: bool,
}

/// The HTTP client of model calls: no redirects (a model API answers, it
/// does not send the worker elsewhere), and with `public_only`, names that
/// resolve to private, loopback or link-local addresses are not reached.
pub fn http_client(public_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("flywheel/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none());
    if public_only {
        builder = builder.dns_resolver(std::sync::Arc::new(PublicOnly));
    }
    builder.build().unwrap_or_default()
}

/// Resolves names to their public addresses only.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<std::net::SocketAddr> =
                found.into_iter().filter(|a| crate::egress::is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!(
                    "{host} resolves to no public address (start the server with --sandbox-allow-private to reach private ones)"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `url` names a non-public IP address literally.
fn names_private_ip(url: &str) -> bool {
    let host = url::Url::parse(url).ok().and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()));
    host.and_then(|h| h.parse::<std::net::IpAddr>().ok()).is_some_and(|ip| !crate::egress::is_public(ip))
}

impl ModelSettings {
    fn provider(&self, name: &str) -> Option<&ProviderSettings> {
        match name {
            "anthropic" => Some(&self.anthropic),
            "openai" => Some(&self.openai),
            "openai-compatible" => Some(&self.openai_compatible),
            _ => None,
        }
    }

    /// The workflow's `agent:` settings over the server's defaults, with the
    /// key of the workflow's own `api_key` secret if it has one. The error
    /// says what to set.
    pub fn resolve(&self, config: Option<&AgentConfig>, workflow_key: Option<String>) -> Result<ResolvedModel, String> {
        let provider = config.and_then(|c| c.provider.clone()).unwrap_or_else(|| self.default_provider.clone());
        let settings = self.provider(&provider).ok_or_else(|| format!("unknown model provider {provider:?}"))?;
        let env = match provider.as_str() {
            "anthropic" => "ANTHROPIC",
            "openai" => "OPENAI",
            _ => "OPENAI_COMPATIBLE",
        };
        let model =
            config.and_then(|c| c.model.clone()).or_else(|| settings.default_model.clone()).ok_or_else(|| {
                format!("no model is set for {provider}: set agent.model in the workflow or {env}_MODEL on the server")
            })?;
        let trim = |url: &str| url.trim_end_matches('/').to_owned();
        let server_url = settings.base_url.as_deref().map(trim);
        let base_url = config
            .and_then(|c| c.base_url.as_deref())
            .map(trim)
            .or_else(|| server_url.clone())
            .ok_or_else(|| {
                format!("no base URL is set for {provider}: set agent.base_url in the workflow or {env}_BASE_URL on the server")
            })?;
        // The server's key is for the server's URL only.
        let own_url = server_url.as_deref() == Some(base_url.as_str());
        let api_key = match workflow_key {
            Some(key) => Some(key),
            None if own_url => settings.api_key.clone(),
            None => None,
        };
        if api_key.is_none() && own_url && provider != "openai-compatible" {
            return Err(format!("{env}_API_KEY is not set on the server, so {provider} models cannot be used"));
        }
        Ok(ResolvedModel { provider, model, base_url, api_key, workflow_url: !own_url })
    }
}

/// The API paths each provider is called on.
fn allowed_path(provider: &str, path: &str) -> bool {
    match provider {
        "anthropic" => path == "/v1/messages",
        "openai" => matches!(path, "/responses" | "/chat/completions"),
        "openai-compatible" => path == "/chat/completions",
        _ => false,
    }
}

/// Headers an agent may set; everything else (the key above all) is the worker's.
const PASSED_HEADERS: &[&str] = &["anthropic-version", "anthropic-beta", "openai-beta"];

/// Tokens a model call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
}

fn usage_of(body: &Value) -> Usage {
    let usage = &body["usage"];
    let n = |keys: &[&str]| keys.iter().find_map(|k| usage[*k].as_i64()).unwrap_or(0);
    Usage {
        input_tokens: n(&["input_tokens", "prompt_tokens"]),
        output_tokens: n(&["output_tokens", "completion_tokens"]),
    }
}

/// A model call the agent asked for.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    pub id: u64,
    pub provider: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

/// Makes one model call for the agent; returns the message for it and the
/// tokens used.
pub async fn call(
    http: &reqwest::Client,
    model: &ResolvedModel,
    redactor: &Redactor,
    request: &ModelRequest,
    public_only: bool,
) -> (WorkerMessage, Usage) {
    let ModelRequest { id, provider, path, headers, body } = request;
    let (id, provider, path) = (*id, provider.as_str(), path.as_str());
    let refuse = |message: String| (WorkerMessage::ModelError { id, message }, Usage::default());
    if provider != model.provider {
        return refuse(format!("this workflow uses {}, not {provider}", model.provider));
    }
    if !allowed_path(provider, path) {
        return refuse(format!("{path} is not an API path Flywheel calls {provider} on"));
    }
    if model.workflow_url && public_only && names_private_ip(&model.base_url) {
        return refuse(format!(
            "{} is a private, loopback or link-local address (start the server with --sandbox-allow-private to reach it)",
            model.base_url
        ));
    }
    let mut request = http.post(format!("{}{path}", model.base_url)).timeout(CALL_TIMEOUT).json(body);
    for (name, value) in headers {
        if PASSED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            request = request.header(name, value);
        }
    }
    if let Some(key) = &model.api_key {
        request = match provider {
            "anthropic" => request.header("x-api-key", key),
            _ => request.bearer_auth(key),
        };
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) => {
            return refuse(redactor.redact(&format!("could not reach {}: {}", model.base_url, err.without_url())))
        }
    };
    let status = response.status().as_u16();
    let mut kept = BTreeMap::new();
    for name in ["retry-after", "retry-after-ms", "x-request-id", "request-id"] {
        if let Some(value) = response.headers().get(name).and_then(|v| v.to_str().ok()) {
            kept.insert(name.to_owned(), value.to_owned());
        }
    }
    // An answer is read with a cap: a model URL (a workflow's own, even)
    // cannot make the worker hold more.
    let mut response = response;
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() > MAX_ANSWER => {
                return refuse(format!("the answer of {} is larger than {} MiB", model.base_url, MAX_ANSWER >> 20));
            }
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(err) => return refuse(format!("reading the answer of {}: {}", model.base_url, err.without_url())),
        }
    }
    let text = redactor.redact(&String::from_utf8_lossy(&bytes));
    let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
    let usage = if (200..300).contains(&status) { usage_of(&body) } else { Usage::default() };
    (WorkerMessage::ModelResponse { id, status, headers: kept, body }, usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn workflows_override_server_defaults_and_missing_keys_are_explained() {
        let mut settings = ModelSettings::default();
        assert!(settings.resolve(None, None).unwrap_err().contains("ANTHROPIC_API_KEY"));
        settings.anthropic.api_key = Some("k".into());
        let resolved = settings.resolve(None, None).unwrap();
        assert_eq!(
            (resolved.provider.as_str(), resolved.base_url.as_str()),
            ("anthropic", "https://api.anthropic.com")
        );
        let custom = AgentConfig {
            provider: Some("openai-compatible".into()),
            model: Some("qwen".into()),
            base_url: Some("http://gpu:8000/v1/".into()),
            api_key_secret: None,
        };
        let resolved = settings.resolve(Some(&custom), None).unwrap();
        assert_eq!((resolved.model.as_str(), resolved.base_url.as_str()), ("qwen", "http://gpu:8000/v1"));
        let no_url = AgentConfig { base_url: None, ..custom.clone() };
        assert!(settings.resolve(Some(&no_url), None).unwrap_err().contains("OPENAI_COMPATIBLE_BASE_URL"));
    }

    #[test]
    fn the_servers_key_goes_only_to_the_servers_url() {
        let mut settings = ModelSettings::default();
        settings.anthropic.api_key = Some("server-key".into());
        let elsewhere = |url: &str| AgentConfig {
            provider: Some("anthropic".into()),
            model: None,
            base_url: Some(url.into()),
            api_key_secret: None,
        };
        let attacker = settings.resolve(Some(&elsewhere("http://attacker.example")), None).unwrap();
        assert_eq!(attacker.api_key, None, "no key for a URL the operator did not configure");
        assert!(attacker.workflow_url);
        assert!(names_private_ip("http://169.254.169.254/latest") && names_private_ip("http://[::1]:8080"));
        assert!(!names_private_ip("https://api.example.com") && !names_private_ip("http://1.1.1.1"));
        let own = settings.resolve(Some(&elsewhere("https://api.anthropic.com/")), None).unwrap();
        assert_eq!(own.api_key.as_deref(), Some("server-key"), "the configured URL, spelt the workflow's way");
        let brought =
            settings.resolve(Some(&elsewhere("http://gateway.example")), Some("workflow-key".into())).unwrap();
        assert_eq!(brought.api_key.as_deref(), Some("workflow-key"));
    }

    #[test]
    fn paths_and_usage() {
        assert!(allowed_path("anthropic", "/v1/messages"));
        assert!(!allowed_path("anthropic", "/v1/files"));
        assert!(allowed_path("openai", "/responses") && !allowed_path("openai", "/files"));
        assert_eq!(
            usage_of(&json!({"usage": {"input_tokens": 5, "output_tokens": 2}})),
            Usage { input_tokens: 5, output_tokens: 2 }
        );
        assert_eq!(
            usage_of(&json!({"usage": {"prompt_tokens": 7, "completion_tokens": 1}})),
            Usage { input_tokens: 7, output_tokens: 1 }
        );
    }
}
