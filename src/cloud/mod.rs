//! Rented GPUs: Vast.ai and Clore.ai offers, ranked by price per unit of Blender speed.
//!
//! - [`speed`]: Blender Open Data scores per GPU model, and name normalisation.
//! - [`offers`]: one [`Offer`] shape for every provider; filters, ranking, job estimates (pure).
//! - [`vast`], [`clore`]: the providers' HTTP APIs (see docs/operations.md, "Cloud").
//! - [`config`]: API keys and base URLs from the environment or a private config file.
//!
//! API keys never appear in logs, errors, tickets or gossip: [`config::ApiKey`] has no
//! `Display` and a redacted `Debug`.

pub mod account;
pub mod clore;
pub mod config;
pub mod handle;
pub mod instance;
pub mod manager;
pub mod offers;
pub mod prepare;
pub mod rent;
pub mod rental;
pub mod speed;
pub mod ssh;
pub mod vast;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use config::{ApiKey, CloudConfig};
pub use offers::{Filter, Offer};

/// A GPU rental provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Vast,
    Clore,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Vast => "Vast.ai",
            Provider::Clore => "Clore.ai",
        }
    }

    /// Its short lowercase name (`vast`, `clore`), as on the command line and in JSON.
    pub fn tag(self) -> &'static str {
        match self {
            Provider::Vast => "vast",
            Provider::Clore => "clore",
        }
    }

    /// The environment variable that holds this provider's API key.
    pub fn key_env(self) -> &'static str {
        match self {
            Provider::Vast => "MESHD_VAST_API_KEY",
            Provider::Clore => "MESHD_CLORE_API_KEY",
        }
    }

    /// The environment variable that overrides this provider's base URL.
    pub fn url_env(self) -> &'static str {
        match self {
            Provider::Vast => "MESHD_VAST_URL",
            Provider::Clore => "MESHD_CLORE_URL",
        }
    }
}

/// Why a provider call failed. Every message says what to do, and none holds a key.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error(
        "no {} API key: set {} or put it in {} (mode 0600)",
        .0.name(),
        .0.key_env(),
        config::FILE_HINT
    )]
    MissingKey(Provider),
    #[error("{} rejected the API key: check {} (or the config file) holds a valid key", .0.name(), .0.key_env())]
    BadKey(Provider),
    #[error("{} keeps refusing requests as too frequent: wait a minute and try again", .0.name())]
    RateLimited(Provider),
    #[error("cannot reach {provider} at {url}: {reason} (check the network, or {env})")]
    Unreachable {
        provider: &'static str,
        url: String,
        reason: String,
        env: &'static str,
    },
    #[error("{provider} refused the request: {msg}")]
    Api { provider: &'static str, msg: String },
    #[error(
        "{provider} sent an answer meshd cannot read ({msg}); if {env} points to a proxy, check it"
    )]
    BadAnswer {
        provider: &'static str,
        msg: String,
        env: &'static str,
    },
    #[error("{provider} offer {id} is gone (rented by someone else): list offers again")]
    OfferGone { provider: &'static str, id: u64 },
    /// The provider made the instance but reported a failure (a Vast bid too low leaves a
    /// stopped instance): the caller destroys `id`.
    #[error("{provider} made instance {id} but refused to run it: {msg}")]
    CreatedButFailed {
        provider: &'static str,
        id: u64,
        msg: String,
    },
    #[error("{0}")]
    Config(String),
}

/// Now, Unix seconds (the providers give times so).
pub(crate) fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Waits before retry `attempt` (0-based) of a rate-limited call: `base`, growing 1.5x.
pub(crate) fn backoff(base: Duration, attempt: u32) -> Duration {
    base.mul_f64(1.5f64.powi(attempt as i32))
}

/// Attempts of a rate-limited call before giving up.
pub(crate) const RATE_LIMIT_ATTEMPTS: u32 = 5;

/// How long one HTTP request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A provider's endpoint: its HTTP client, base URL and key (if any).
pub(crate) struct Endpoint {
    provider: Provider,
    http: reqwest::Client,
    base: String,
    key: Option<ApiKey>,
}

impl Endpoint {
    pub(crate) fn new(cfg: &CloudConfig, provider: Provider) -> Result<Self, CloudError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("meshd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CloudError::Config(format!("cannot set up HTTP: {e}")))?;
        Ok(Endpoint {
            provider,
            http,
            base: cfg.url(provider).to_string(),
            key: cfg.key(provider).cloned(),
        })
    }

    /// Sends one request (the key in the provider's auth header) and reads the answer:
    /// its status and body text. Transport failures are [`CloudError::Unreachable`].
    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(reqwest::StatusCode, String), CloudError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = match self.provider {
                Provider::Vast => req.bearer_auth(k.expose()),
                Provider::Clore => req.header("auth", k.expose()),
            };
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| CloudError::Unreachable {
            provider: self.provider.name(),
            url: self.base.clone(),
            reason: transport_reason(e),
            env: self.provider.url_env(),
        })?;
        let status = resp.status();
        Ok((status, resp.text().await.unwrap_or_default()))
    }

    /// The key, or [`CloudError::MissingKey`]: renting and listing need one.
    pub(crate) fn require_key(&self) -> Result<(), CloudError> {
        self.key
            .as_ref()
            .map(|_| ())
            .ok_or(CloudError::MissingKey(self.provider))
    }

    /// An answer that is not what the API documents.
    pub(crate) fn bad_answer(&self, msg: &str) -> CloudError {
        CloudError::BadAnswer {
            provider: self.provider.name(),
            msg: msg.to_string(),
            env: self.provider.url_env(),
        }
    }
}

/// The reason of a transport error, without the URL's query (none of ours carries a key,
/// but a proxy URL from the user might carry credentials).
fn transport_reason(e: reqwest::Error) -> String {
    let e = e.without_url();
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        e.to_string()
    }
}

/// Text from a provider made safe to print on one line: control characters become spaces,
/// at most 300 characters.
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .take(300)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
